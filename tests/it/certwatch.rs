//! `cert-watch` against real files: each ACME layout and way of replacing
//! files, invalid states that must not be reloaded into, bursts, `--once`
//! and signals. Reloads are recorded by `--reload-command` into a file; the
//! tests wait on that file (or on the log) with a generous bound and assert
//! only what was recorded.

use crate::support::certs::*;
use crate::support::{assert_ok, have, json_string, ok_stdout};

use std::fs;
use std::path::PathBuf;

/// The watcher reloads once at start (no state yet): wait for it, so the
/// watches are in place before the test changes anything.
fn started(d: &Deploy, w: &Watcher, first: &Pair) {
    wait_for("the initial reload to be recorded", w, || {
        d.path("data/.cert-watch-state.json").exists()
    });
    assert_eq!(d.reloaded_leaves(), vec![first.leaf.clone()]);
}

fn wait_reloads(d: &Deploy, w: &Watcher, n: usize) {
    wait_for(&format!("{n} reloads"), w, || d.reloads().len() >= n);
}

/// Wait for as many reloads as `pairs`, then check they were into those
/// pairs, in order.
fn assert_reloaded(d: &Deploy, w: &Watcher, pairs: &[&Pair]) {
    wait_reloads(d, w, pairs.len());
    let leaves: Vec<String> = pairs.iter().map(|p| p.leaf.clone()).collect();
    assert_eq!(d.reloaded_leaves(), leaves);
}

/// Plain files holding `first` in `rel` under the deployment, and a watcher
/// on them (with `extra` arguments) that has made its initial reload.
fn watch_plain(d: &Deploy, rel: &str, first: &Pair, extra: &[&str]) -> (PathBuf, Watcher) {
    let dir = d.plain_at(rel, first);
    let mut args = vec!["--path", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let w = d.watch(&args);
    started(d, &w, first);
    (dir, w)
}

/// `cert-watch --once` with recorded reloads in `d`, no --path: where the
/// certificate is comes from `.env` alone.
fn once_from_env(d: &Deploy) -> std::process::Output {
    d.once(&[], &d.record_cmd())
}

/// `cert-watch --once --path dir` with recorded reloads.
fn once_on(d: &Deploy, dir: &std::path::Path) -> std::process::Output {
    d.once(&["--path", dir.to_str().unwrap()], &d.record_cmd())
}

/// The failed run `out` exited with `code` and said `needle` on stderr.
fn assert_fails(out: &std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "{err}");
}

#[test]
fn acmetool_symlink_swap_via_path_to_ssl_default_mount() {
    // No compose file: PATH_TO_SSL's default maps through data/chatmail-acme.
    let d = Deploy::new("");
    let (a, b, c) = (pair(), pair(), pair());
    let mut acme = Acmetool::new(d.path("data/chatmail-acme"), &a);
    let mut w = d.watch(&[]);
    started(&d, &w, &a);
    acme.rotate(&b);
    wait_reloads(&d, &w, 2);
    acme.rotate(&c);
    assert_reloaded(&d, &w, &[&a, &b, &c]);
    assert!(w.terminate().success());
    let state = fs::read_to_string(d.path("data/.cert-watch-state.json")).unwrap();
    assert!(state.contains(&c.leaf), "{state}");
}

#[test]
fn certbot_archive_live_layout() {
    let d = Deploy::new("");
    let (a, b, c) = (pair(), pair(), pair());
    let mut cb = Certbot::new(d.path("letsencrypt"), &a);
    let live = cb.live().display().to_string();
    let w = d.watch(&["--path", &live]);
    started(&d, &w, &a);
    cb.rotate(&b);
    wait_reloads(&d, &w, 2);
    cb.rotate(&c);
    // certbot moves the links one by one; the half-moved states never
    // reach the reload command.
    assert_reloaded(&d, &w, &[&a, &b, &c]);
}

#[test]
fn plain_files_replaced_by_rename() {
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let (dir, w) = watch_plain(&d, "ssl", &a, &[]);
    plain(&dir, &b);
    assert_reloaded(&d, &w, &[&a, &b]);
}

#[test]
fn files_rewritten_in_place() {
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let (dir, w) = watch_plain(&d, "ssl", &a, &[]);
    rewrite(&dir.join("privkey.pem"), &b.key);
    rewrite(&dir.join("fullchain.pem"), &b.cert);
    assert_reloaded(&d, &w, &[&a, &b]);
}

#[test]
fn directory_deleted_and_recreated() {
    let d = Deploy::new("");
    let (a, b, c) = (pair(), pair(), pair());
    let (dir, w) = watch_plain(&d, "ssl/live", &a, &[]);
    fs::remove_dir_all(&dir).unwrap();
    wait_log(&w, "does not exist", 1);
    plain(&dir, &b);
    wait_reloads(&d, &w, 2);
    // The parent goes too, and comes back.
    fs::remove_dir_all(d.path("ssl")).unwrap();
    wait_log(&w, "does not exist", 2);
    plain(&dir, &c);
    assert_reloaded(&d, &w, &[&a, &b, &c]);
}

#[test]
fn key_written_before_cert_is_not_reloaded_until_the_cert_follows() {
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let (dir, w) = watch_plain(&d, "ssl", &a, &[]);
    put(&dir.join("privkey.pem"), &b.key);
    wait_log(&w, "does not belong to the certificate", 1);
    assert_eq!(d.reloads().len(), 1, "no reload into a half-updated pair");
    put(&dir.join("fullchain.pem"), &b.cert);
    assert_reloaded(&d, &w, &[&a, &b]);
}

#[test]
fn mismatched_pair_and_expired_cert_are_never_reloaded() {
    let d = Deploy::new("");
    let (a, other, c) = (pair(), pair(), pair());
    let expired = expired_pair();
    let wrong_name = pair_for(&["other.example.net"]);
    let (dir, w) = watch_plain(&d, "ssl", &a, &[]);

    put(&dir.join("privkey.pem"), &other.key);
    wait_log(&w, "does not belong to the certificate", 1);
    plain(&dir, &expired);
    wait_log(&w, "expired on 2020-04-01", 1);
    plain(&dir, &wrong_name);
    wait_log(&w, "but MAIL_DOMAIN is example.org", 1);
    // Each invalid state was looked at and refused; a valid one follows.
    plain(&dir, &c);
    assert_reloaded(&d, &w, &[&a, &c]);
}

#[test]
fn burst_of_twenty_writes_reloads_exactly_once() {
    let d = Deploy::new("");
    let (a, b, c) = (pair(), pair(), pair());
    let (dir, w) = watch_plain(&d, "ssl", &a, &[]);
    // An ACME client rewriting its files several times in a row: truncated,
    // mixed and complete states follow each other within milliseconds.
    for i in 0..20 {
        if i % 2 == 0 {
            rewrite(&dir.join("privkey.pem"), &b.key);
        } else {
            rewrite(&dir.join("fullchain.pem"), &b.cert);
        }
    }
    wait_reloads(&d, &w, 2);
    // A later, separate change proves nothing else was queued in between.
    plain(&dir, &c);
    assert_reloaded(&d, &w, &[&a, &b, &c]);
    // And touching files without changing content reloads nothing. The
    // pause outlasts the debounce, so a wrong reload would happen before
    // the next real change instead of merging with it; it cannot make the
    // test fail when the watcher is right.
    rewrite(&dir.join("fullchain.pem"), &c.cert);
    put(&dir.join("privkey.pem"), &c.key);
    fs::write(dir.join("unrelated"), "x").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let d_leaf = pair();
    plain(&dir, &d_leaf);
    assert_reloaded(&d, &w, &[&a, &b, &c, &d_leaf]);
}

#[test]
fn poll_timer_catches_a_change_no_watch_sees() {
    // Ancestors well above the certificate directory are not watched (they
    // would wake the watcher for unrelated files); replacing one is caught
    // by the poll timer instead.
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let (_, w) = watch_plain(&d, "srv/tls/example/live", &a, &["--poll-interval", "1"]);
    plain(&d.path("srv-new/tls/example/live"), &b);
    fs::rename(d.path("srv"), d.path("srv-old")).unwrap();
    fs::rename(d.path("srv-new"), d.path("srv")).unwrap();
    assert_reloaded(&d, &w, &[&a, &b]);
}

#[test]
fn restart_does_not_reload_an_applied_certificate() {
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let (dir, mut w) = watch_plain(&d, "ssl", &a, &[]);
    assert!(w.terminate().success());
    let w = d.watch(&["--path", dir.to_str().unwrap()]);
    wait_log(&w, "Watching", 1);
    plain(&dir, &b);
    assert_reloaded(&d, &w, &[&a, &b]);
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    let d = Deploy::new("");
    let a = pair();
    let (dir, mut w) = watch_plain(&d, "ssl", &a, &[]);
    assert!(d.path("data/.cert-watch.pid").exists());
    // A second watcher for the same deployment refuses to start.
    let out = d
        .cmd()
        .args(["cert-watch", "--no-verify", "--path"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_fails(&out, 2, "cert-watch already runs");
    let st = w.terminate();
    assert_eq!(st.code(), Some(0), "{}", w.log());
    assert!(!d.path("data/.cert-watch.pid").exists(), "pid file removed");

    let mut w = d.watch(&["--path", dir.to_str().unwrap()]);
    wait_log(&w, "Watching", 1);
    unsafe {
        libc::kill(w.child.id() as i32, libc::SIGINT);
    }
    let start = std::time::Instant::now();
    let st = loop {
        if let Some(st) = w.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < PATIENCE, "SIGINT ignored");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(st.code(), Some(0));
}

#[test]
fn once_reloads_only_when_the_content_changed() {
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let mut acme = Acmetool::new(d.path("data/chatmail-acme"), &a);
    let once = || once_from_env(&d);
    let out = once();
    assert_ok(&out);
    assert_eq!(d.reloaded_leaves(), vec![a.leaf.clone()]);
    let out = once();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unchanged"));
    assert_eq!(d.reloads().len(), 1);
    // Same content under a new path: still nothing to do.
    acme.rotate(&a);
    assert!(once().status.success());
    assert_eq!(d.reloads().len(), 1);
    acme.rotate(&b);
    assert!(once().status.success());
    assert_eq!(d.reloaded_leaves(), vec![a.leaf.clone(), b.leaf.clone()]);

    // An invalid pair fails with the reason, reloads nothing, keeps state.
    let other = pair();
    acme.rotate(&Pair {
        key: other.key,
        ..pair()
    });
    let out = once();
    assert_fails(&out, 1, "does not belong");
    assert_eq!(d.reloads().len(), 2);
}

/// A pair for example.org in `dir` (`fullchain.pem`, `privkey.pem`) that
/// expires in `days` days.
fn short_lived(dir: &std::path::Path, days: u32) {
    fs::create_dir_all(dir).unwrap();
    openssl_self_signed(
        dir,
        days,
        "/CN=example.org",
        &["-addext", "subjectAltName=DNS:example.org"],
        "privkey.pem",
        "fullchain.pem",
    );
}

/// `cert-watch --once --path dir` with recorded reloads: its stderr.
fn once_at(d: &Deploy, dir: &std::path::Path) -> String {
    let out = once_on(d, dir);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn a_certificate_close_to_expiry_is_applied_with_a_warning() {
    if !have("openssl", &["version"]) {
        return;
    }
    let d = Deploy::new("");
    let dir = d.path("ssl");
    short_lived(&dir, 5);
    let err = once_at(&d, &dir);
    assert!(err.contains("the certificate expires in 4 days"), "{err}");
    assert_eq!(d.reloads().len(), 1);
    // Unchanged on the next run (a daily cron job): nothing to reload, but
    // the renewal is still failing, so the warning comes again.
    let err = once_at(&d, &dir);
    assert!(err.contains("already applied"), "{err}");
    assert!(err.contains("the certificate expires in 4 days"), "{err}");
    assert_eq!(d.reloads().len(), 1);
}

#[test]
fn the_watcher_reminds_of_an_applied_certificate_close_to_expiry() {
    if !have("openssl", &["version"]) {
        return;
    }
    let d = Deploy::new("");
    let dir = d.path("ssl");
    short_lived(&dir, 5);
    once_at(&d, &dir);
    // The watcher finds the certificate already applied, warns once at
    // start and not again on every poll (it polls every second here).
    let mut w = d.watch(&["--path", dir.to_str().unwrap(), "--poll-interval", "1"]);
    wait_log(&w, "the certificate expires in 4 days", 1);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(w.terminate().success());
    let log = w.log();
    assert_eq!(log.matches("expires in 4 days").count(), 1, "{log}");
    assert!(!log.contains("Changed"), "{log}");
    assert_eq!(d.reloads().len(), 1);
}

/// Run openssl with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_ok(&out);
}

#[test]
fn pkcs1_rsa_and_sec1_ec_keys_wildcards_and_separate_chain_files() {
    if !have("openssl", &["version"]) {
        return;
    }
    let d = Deploy::new("");
    // RSA key in PKCS#1 form, leaf in `cert` with an empty `chain` (no
    // fullchain), the way older acmetool directories look.
    let rsa = d.path("rsa");
    fs::create_dir_all(&rsa).unwrap();
    openssl(&rsa, &["genrsa", "-traditional", "-out", "privkey", "2048"]);
    openssl(
        &rsa,
        &[
            "req",
            "-x509",
            "-key",
            "privkey",
            "-subj",
            "/CN=example.org",
            "-addext",
            "subjectAltName=DNS:example.org",
            "-days",
            "30",
            "-out",
            "cert",
        ],
    );
    fs::write(rsa.join("chain"), "").unwrap();
    // EC key in SEC1 form, certificate for a wildcard only.
    let ec = d.path("ec");
    fs::create_dir_all(&ec).unwrap();
    openssl(
        &ec,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ],
    );
    openssl(
        &ec,
        &[
            "req",
            "-x509",
            "-key",
            "key.pem",
            "-subj",
            "/CN=wild",
            "-addext",
            "subjectAltName=DNS:*.example.org",
            "-days",
            "30",
            "-out",
            "cert.pem",
        ],
    );
    let run = |dir: &std::path::Path, domain: &str| {
        fs::write(d.path(".env"), format!("MAIL_DOMAIN={domain}\n")).unwrap();
        let _ = fs::remove_file(d.path("data/.cert-watch-state.json"));
        once_on(&d, dir)
    };
    let out = run(&rsa, DOMAIN);
    assert_ok(&out);
    let out = run(&ec, "mail.example.org");
    assert_ok(&out);
    assert_eq!(d.reloads().len(), 2);
    // The wildcard covers one label only.
    let out = run(&ec, DOMAIN);
    assert_fails(&out, 1, "is for *.example.org");
    // A key that is no key at all.
    fs::write(ec.join("key.pem"), "not a key\n").unwrap();
    let out = run(&ec, "mail.example.org");
    assert_fails(&out, 1, "holds no private key");
    assert_eq!(d.reloads().len(), 2);
}

#[test]
fn once_with_a_failing_reload_command_keeps_the_old_state() {
    let d = Deploy::new("");
    let dir = d.plain_at("ssl", &pair());
    let out = d.once(&["--path", dir.to_str().unwrap()], "exit 3");
    assert_fails(&out, 1, "exited with status 3");
    assert!(!d.path("data/.cert-watch-state.json").exists());
}

#[test]
fn dry_run_reports_and_touches_nothing() {
    let d = Deploy::new("");
    let a = pair();
    Acmetool::new(d.path("data/chatmail-acme"), &a);
    let out = d
        .cmd()
        .args(["--dry-run", "cert-watch", "--reload-command"])
        .arg(d.record_cmd())
        .output()
        .unwrap();
    let stdout = ok_stdout(&out);
    assert!(stdout.contains("would reload"), "{stdout}");
    assert!(stdout.contains(&a.leaf[..16]), "{stdout}");
    assert!(d.reloads().is_empty());
    assert!(!d.path("data/.cert-watch-state.json").exists());

    // A pair the watcher would refuse is not announced as a reload.
    let dir = d.plain_at("ssl", &a);
    put(&dir.join("privkey.pem"), &pair().key);
    let out = d
        .cmd()
        .args(["--dry-run", "cert-watch", "--path", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = ok_stdout(&out);
    assert!(
        stdout.contains("does not belong to the certificate"),
        "{stdout}"
    );
    assert!(stdout.contains("but invalid: would not reload"), "{stdout}");
    assert!(!stdout.contains(": would reload"), "{stdout}");
}

#[test]
fn configuration_errors_exit_2() {
    // No .env and no --path.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("chatmail-docker"))
        .arg("--dir")
        .arg(tmp.path())
        .args(["cert-watch", "--once"])
        .output()
        .unwrap();
    assert_fails(&out, 2, ".env does not exist");

    // PATH_TO_SSL outside every mount (default mount used without compose).
    let d = Deploy::new("PATH_TO_SSL=/etc/ssl/private\n");
    let out = d.cmd().args(["cert-watch", "--once"]).output().unwrap();
    assert_fails(&out, 2, "PATH_TO_SSL=/etc/ssl/private is under none");

    let d = Deploy::new("CERTS_MONITORING_TIMEOUT=soon\n");
    let out = d.cmd().args(["cert-watch", "--once"]).output().unwrap();
    assert_fails(&out, 2, "CERTS_MONITORING_TIMEOUT=soon");

    let d = Deploy::new("");
    let out = d
        .cmd()
        .args(["cert-watch", "--once", "--verify-ports", "443,https"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // Intervals that would overflow the timers are refused, not a panic,
    // and the message names where the value came from.
    let d = Deploy::new("CERTS_MONITORING_TIMEOUT=18446744073709551615\n");
    for (args, needle) in [
        (vec![], "CERTS_MONITORING_TIMEOUT=18446744073709551615 in"),
        (vec!["--poll-interval", "0"], "--poll-interval 0"),
        (
            vec!["--poll-interval", "18446744073709551615"],
            "--poll-interval 18446744073709551615",
        ),
        (
            vec![
                "--poll-interval",
                "5",
                "--debounce-ms",
                "18446744073709551615",
            ],
            "--debounce-ms 18446744073709551615",
        ),
    ] {
        let out = d
            .cmd()
            .args(["cert-watch", "--once"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn path_to_ssl_is_mapped_through_the_compose_volumes() {
    if !have("docker", &["compose", "version"]) {
        return;
    }
    let d = Deploy::new("PATH_TO_SSL=/etc/tls/current\n");
    let host_certs = d.path("elsewhere/tls");
    // A volume name nobody has: its host directory is unknown.
    let volume = format!("cert-watch-test-{}-absent", std::process::id());
    fs::create_dir_all(d.path("docker")).unwrap();
    fs::write(
        d.path("docker/docker-compose.yaml"),
        format!(
            "services:\n  chatmail:\n    image: chatmail-test:none\n    volumes:\n      - {}:/etc/tls\n      - certs:/var/lib/acme\nvolumes:\n  certs:\n    name: {}\n",
            host_certs.display(),
            volume
        ),
    )
    .unwrap();
    let a = pair();
    plain(&host_certs.join("current"), &a);
    assert_ok(&once_from_env(&d));
    assert_eq!(d.reloaded_leaves(), vec![a.leaf]);

    // Under no mount: exit 2 naming the mounts.
    fs::write(
        d.path(".env"),
        "MAIL_DOMAIN=example.org\nPATH_TO_SSL=/srv/certs\n",
    )
    .unwrap();
    let once = || {
        d.cmd()
            .args(["cert-watch", "--once", "--no-verify"])
            .output()
            .unwrap()
    };
    assert_fails(&once(), 2, "/etc/tls <- ");

    // On a named volume Docker has not created: say so.
    fs::write(d.path(".env"), "MAIL_DOMAIN=example.org\n").unwrap();
    assert_fails(&once(), 2, &format!("is on the named volume {volume}"));
}

#[test]
fn self_signed_mode_watches_the_appliance_s_own_certificate() {
    // `_` domains (and IP addresses) run the relay with a self-signed
    // certificate, which the appliance keeps in data/chatmail-state/tls.
    let d = Deploy::new("");
    let domain = "_chat.example.org";
    fs::write(d.path(".env"), format!("MAIL_DOMAIN={domain}\n")).unwrap();
    let p = pair_for(&[domain, &format!("www.{domain}")]);
    let tls = d.path("data/chatmail-state/tls");
    fs::create_dir_all(&tls).unwrap();
    put(&tls.join("mailserver.key"), &p.key);
    let out = once_from_env(&d);
    assert_eq!(out.status.code(), Some(1), "no certificate yet");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mailserver.pem"),
        "names the missing file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    put(&tls.join("mailserver.pem"), &p.cert);
    assert_ok(&once_from_env(&d));
    assert_eq!(d.reloaded_leaves(), vec![p.leaf.clone()]);
}

#[test]
fn tls_external_cert_and_key_are_watched_where_they_are() {
    let d = Deploy::new("");
    let outside = tempfile::tempdir().unwrap();
    let (cert, key) = (
        outside.path().join("certs/fullchain.pem"),
        outside.path().join("keys/relay.key"),
    );
    fs::create_dir_all(cert.parent().unwrap()).unwrap();
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    let p = pair();
    put(&cert, &p.cert);
    put(&key, &p.key);
    fs::write(
        d.path(".env"),
        format!(
            "MAIL_DOMAIN={DOMAIN}\nTLS_EXTERNAL_CERT_AND_KEY='{} {}'\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    assert_ok(&once_from_env(&d));
    assert_eq!(d.reloaded_leaves(), vec![p.leaf.clone()]);
    // A renewal of the files is applied.
    let q = pair();
    put(&cert, &q.cert);
    put(&key, &q.key);
    assert_ok(&once_from_env(&d));
    assert_eq!(d.reloaded_leaves(), vec![p.leaf.clone(), q.leaf.clone()]);

    fs::write(
        d.path(".env"),
        format!(
            "MAIL_DOMAIN={DOMAIN}\nTLS_EXTERNAL_CERT_AND_KEY=certs/fullchain.pem keys/relay.key\n"
        ),
    )
    .unwrap();
    assert_fails(&once_from_env(&d), 2, "absolute paths");
}

/// A watcher in a process group of its own whose reload command takes
/// 300 ms (as a real reload does), so that a kill can land in it.
fn watch_slowly(d: &Deploy, dir: &std::path::Path) -> Watcher {
    use std::os::unix::process::CommandExt;
    let log = d.path("watch.log");
    let mut c = d.cmd();
    c.args(["-v", "cert-watch", "--no-verify", "--poll-interval", "3600"])
        .arg("--path")
        .arg(dir)
        .arg("--reload-command")
        .arg(format!("sleep 0.3; {}", d.record_cmd()))
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(d.path("watch.out")).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .process_group(0);
    Watcher {
        child: c.spawn().unwrap(),
        log,
    }
}

/// The leaf the state file says was applied.
fn applied_leaf(d: &Deploy) -> String {
    json_string(&d.path("data/.cert-watch-state.json"), "leaf_sha256")
}

/// Files a write in progress leaves under a temporary name.
fn temporaries(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL to the watcher's whole process group (as systemd ends its unit,
/// or the OOM killer the watcher) at 10 moments spread over a certificate
/// change: before it is noticed, during the debounce, during the reload,
/// after it. The next watcher starts despite the dead one's pid file and
/// applies the certificate on disk: the last reload recorded is of it,
/// the state file names it, and no temporary file is left.
#[test]
fn killed_at_any_moment_the_next_watcher_applies_the_certificate_on_disk() {
    const POINTS: usize = 10;
    let d = Deploy::new("");
    let first = pair();
    let dir = d.plain_at("ssl", &first);
    let mut w = watch_slowly(&d, &dir);
    started(&d, &w, &first);

    // One undisturbed change, to measure how long a change takes to apply.
    let measured = pair();
    let t0 = std::time::Instant::now();
    plain(&dir, &measured);
    wait_for("the measured change to be applied", &w, || {
        applied_leaf(&d) == measured.leaf
    });
    let span = t0.elapsed();
    assert!(w.terminate().success(), "{}", w.log());

    let mut before_reload = 0;
    for i in 0..POINTS {
        let w = watch_slowly(&d, &dir);
        wait_log(&w, "Watching", 1);
        let next = pair();
        // Over a quarter more than the measured change, so that the last
        // points fall after the reload even when this one runs slower.
        let at = span.mul_f64(1.25 * (i as f64 + 0.5) / POINTS as f64);
        let t0 = std::time::Instant::now();
        plain(&dir, &next);
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        unsafe {
            libc::kill(-(w.child.id() as i32), libc::SIGKILL);
        }
        drop(w);
        let recorded = d.reloaded_leaves().last() == Some(&next.leaf);
        before_reload += usize::from(!recorded);

        let mut w = watch_slowly(&d, &dir);
        wait_for(
            &format!("point {i} ({at:?}): the certificate on disk applied"),
            &w,
            || applied_leaf(&d) == next.leaf && d.reloaded_leaves().last() == Some(&next.leaf),
        );
        // Started up (signals handled) before it is asked to stop: with
        // nothing left to apply it may not have got that far yet.
        wait_log(&w, "Watching", 1);
        assert!(w.terminate().success(), "{}", w.log());
        for place in [d.path("data"), dir.clone()] {
            let left = temporaries(&place);
            assert!(
                left.is_empty(),
                "point {i}: left in {}: {left:?}",
                place.display()
            );
        }
        assert!(
            !d.path("data/.cert-watch.pid").exists(),
            "point {i}: pid file"
        );
    }
    // The points really spread over the change: some kills landed before
    // the reload was recorded, so the next watcher had the work to do, and
    // some after it.
    assert!(
        before_reload > 0 && before_reload < POINTS,
        "{before_reload} of {POINTS} kills landed before the reload: the points did not spread over it"
    );
}
