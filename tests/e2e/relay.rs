//! End-to-end with the real chatmail relay: the snapshot of upstream's
//! repository in `../shared/relay/` (what `git clone` gives a user), built
//! into the appliance by the real `chatmail-docker`, started under systemd
//! on the machine's Docker engine, and checked the way a user would: the
//! relay's own web page, accounts from `POST /new`, mail over 587, 465 and
//! 25 read back over IMAP 993.
//!
//! Only the relay's internet downloads are replaced (`tests/relay-offline/`:
//! the machines that run this have no internet but the package
//! registries). The relay runs in self-signed mode (`_` domain): no DNS or
//! ACME is reachable here.
//!
//! The scenarios share the host's mail ports (network_mode: host) and run in
//! order inside one test. Without a Docker daemon the test is skipped with a
//! printed reason, except under CI=true where that is a failure.

use std::fs;
use std::process::Command as StdCommand;
use std::time::Instant;

use crate::support::engine::relay::*;
use crate::support::engine::*;

/// Leave two messages for `to` in Postfix's queue, as a relay has them when
/// its container is replaced: one deferred (Dovecot is stopped, delivery
/// fails and waits for a retry) and one in maildrop (Postfix itself is
/// stopped, `sendmail` leaves it there). Returns their Message-IDs.
fn queue_two_messages(container: &str, to: &str, tag: &str) -> Vec<String> {
    let deferred = format!("{tag}-deferred@test");
    let dropped = format!("{tag}-maildrop@test");
    exec(container, &["systemctl", "stop", "dovecot"]);
    // The queue lists senders, not Message-IDs: one sender per message.
    let sender = format!("{tag}.deferred@{DOMAIN}");
    inject(container, &sender, to, &deferred);
    let waiting = |queue: &str| {
        queue
            .lines()
            .any(|l| l.contains("\"deferred\"") && l.contains(&format!("\"{sender}\"")))
    };
    let mut queue = String::new();
    for _ in 0..240 {
        queue = exec(container, &["postqueue", "-j"]);
        if waiting(&queue) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(
        waiting(&queue),
        "{deferred} waits in the deferred queue: {queue}"
    );
    exec(container, &["systemctl", "stop", "postfix"]);
    // `postfix stop` returns while its daemons wind down; a pickup still
    // running would take the message at once.
    for _ in 0..240 {
        if !exec_ok(container, &["pgrep", "-x", "master|pickup|qmgr"]) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    inject(container, &format!("{tag}.maildrop@{DOMAIN}"), to, &dropped);
    let maildrop = exec(container, &["ls", "-A", "/var/spool/postfix/maildrop"]);
    assert!(!maildrop.trim().is_empty(), "{dropped} waits in maildrop");
    vec![deferred, dropped]
}

/// `sendmail` in the container: a local submission, as cron or a script
/// on the relay makes one.
fn inject(container: &str, from: &str, to: &str, msgid: &str) {
    use std::io::Write;
    let mut child = StdCommand::new("docker")
        .args(["exec", "-i", container, "/usr/sbin/sendmail", "-i"])
        .arg(format!("-f{from}"))
        .arg(to)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    write!(
        child.stdin.take().unwrap(),
        "From: {from}\r\nTo: {to}\r\nSubject: queued\r\nMessage-ID: <{msgid}>\r\n\r\nwaited in the queue\r\n"
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "sendmail {msgid}");
}

fn served_cert_sha(port: u16) -> String {
    let pem = served_cert_pem(port).unwrap_or_else(|| panic!("no certificate served on {port}"));
    sha256_hex(pem.as_bytes())
}

/// The image's filtermail build stage where it cannot run (nothing
/// reachable: no toolchain from Debian, no crates): the build fails and says what is
/// missing and how to fall back to the relay's download; with that
/// fallback (`CHATMAIL_FILTERMAIL=download`) the stage builds nothing and
/// succeeds.
fn filtermail_stage_unreachable(parent: &std::path::Path, base: &str) {
    let ctx = parent.join("filtermail-offline");
    copy_tree(&manifest_dir().join("docker"), &ctx.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    fs::create_dir_all(ctx.join("relay")).unwrap();
    check(
        StdCommand::new("tar")
            .arg("-xzf")
            .arg(shared_file("filtermail-"))
            .arg("-C")
            .arg(ctx.join("relay")),
        "unpack filtermail's source",
    );
    // Not the source the suite's image was built from: no cached layer.
    let main_rs = ctx.join("relay/filtermail/src/main.rs");
    let mut text = fs::read_to_string(&main_rs).unwrap();
    text.push_str("\n// a local change\n");
    fs::write(&main_rs, text).unwrap();
    // Compose builds with BuildKit as `setup` does. The build's way out
    // is a proxy that refuses every connection (Docker's predefined proxy
    // arguments do not enter the layer cache: the stages before are
    // reused), so neither Debian's mirror nor crates.io is reachable.
    let build = |mode: &str| {
        let image = "chatmail-docker-test-filtermail-offline";
        fs::write(
            ctx.join("build.yaml"),
            format!(
                "services:\n  filtermail:\n    image: {image}\n    build:\n      context: .\n      dockerfile: docker/Dockerfile\n      target: filtermail\n      args:\n        BASE_IMAGE: {base}\n        FILTERMAIL: {mode}\n        http_proxy: http://127.0.0.1:9\n        https_proxy: http://127.0.0.1:9\n"
            ),
        )
        .unwrap();
        let out = StdCommand::new("docker")
            .args([
                "compose",
                "--progress",
                "plain",
                "-p",
                "chatmail-filtermail-offline",
            ])
            .args(["-f", "build.yaml", "build"])
            .current_dir(&ctx)
            .output()
            .unwrap();
        let _ = StdCommand::new("docker")
            .args(["image", "rm", image])
            .output();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let started = Instant::now();
    let (ok, out) = build("auto");
    eprintln!(
        "e2e-relay: filtermail stage with nothing reachable failed in {:.1?}",
        started.elapsed()
    );
    assert!(
        !ok,
        "the filtermail stage cannot build with nothing reachable:\n{out}"
    );
    assert!(
        out.contains("filtermail: cannot build relay/filtermail")
            && (out.contains("could not be installed") || out.contains("could not be downloaded"))
            && out.contains("set CHATMAIL_FILTERMAIL=download"),
        "the build says what is missing and how to fall back:\n{}",
        tail(&out, 40)
    );
    let (ok, out) = build("download");
    assert!(
        ok && out.contains("CHATMAIL_FILTERMAIL=download: not built"),
        "with the fallback the stage builds nothing:\n{}",
        tail(&out, 40)
    );
}

#[test]
fn real_relay_end_to_end() {
    let Some((_engine, total, base, tmp)) = engine_test("chatmail-e2e-relay") else {
        return;
    };
    // filtermail's source in relay/filtermail/, as upstream moves it into
    // the relay repository: the image builds it (no stand-in, no download).
    let (dir, commit) = deployment_with(tmp.path(), Filtermail::Source);
    let _down = Down::new(&dir, IMAGE);

    // 1. setup in a fresh deployment directory: build, start, healthy.
    let started = Instant::now();
    rebuild(&dir, &base, "setup (build + first start)");
    eprintln!(
        "e2e-relay: setup with image build to healthy: {:.1?}",
        started.elapsed()
    );
    let container = healthy_container_of(&mut tool(&dir));
    // A healthy relay gives `status` nothing to warn about: its TLS mode's
    // certificate is found, socket-activated services idle.
    let (stdout, _) = run_tool(tool(&dir).args(["status", "--json"]), 0, "status --json");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        status["warnings"],
        serde_json::json!([]),
        "status: {status}"
    );
    assert!(
        status["certificate"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("data/chatmail-state/tls")),
        "status finds the self-signed certificate: {status}"
    );

    // 2. The image: built from the relay as cloned, without its .git, the
    // compilers its install stage needed, or unbound-anchor (the relay
    // removes it); the relay's commit where the relay records it; nothing
    // of the mail stack enabled before the relay's deploy.
    assert_eq!(
        exec(&container, &["cat", "/etc/chatmail-version"]).trim(),
        commit,
        "/etc/chatmail-version holds the relay commit"
    );
    for absent in [
        "/opt/chatmail/.git",
        "/usr/bin/gcc",
        "/usr/sbin/unbound-anchor",
        "/usr/bin/cargo",
        "/usr/bin/rustc",
    ] {
        assert!(
            !exec_ok(&container, &["test", "-e", absent]),
            "{absent} is in the image"
        );
    }
    // The image setup runs was deployed beside the relay (its services
    // enabled by the relay's deploy); the image it was deployed from, the
    // one built, enables none.
    let label = |key: &str| {
        let out = StdCommand::new("docker")
            .args(["image", "inspect", "--format"])
            .arg(format!("{{{{index .Config.Labels \"{key}\"}}}}"))
            .arg(IMAGE)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        label("org.chatmail-docker.deployed").len() == 16,
        "setup deployed the configuration beside the relay"
    );
    let built = label("org.chatmail-docker.deployed-from");
    assert!(built.starts_with("sha256:"), "deployed from {built:?}");
    let enabled = StdCommand::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "systemctl",
            &built,
            "is-enabled",
        ])
        .args(["postfix", "dovecot", "nginx", "opendkim", "unbound"])
        .output()
        .unwrap();
    let enabled = String::from_utf8_lossy(&enabled.stdout);
    assert!(
        enabled.lines().all(|l| l.trim() == "disabled"),
        "the image starts no mail service before the deploy: {enabled}"
    );

    filtermail_stage_unreachable(tmp.path(), &base);

    // 3. What a user checks: the relay's page, accounts, mail on 587, 465
    // and 25 (STARTTLS) arriving over IMAP; 25 without STARTTLS refused.
    let v = mailcheck(&[]);
    let title = v["title"].as_str().unwrap_or_default();
    assert!(
        title.contains(DOMAIN),
        "the relay's own page: <title>{title}</title>"
    );
    for who in ["a", "b"] {
        let email = v[who]["email"].as_str().unwrap_or_default();
        assert!(email.ends_with(&format!("@{DOMAIN}")), "POST /new: {v}");
    }
    let sent: Vec<String> = ["587", "465", "25"]
        .iter()
        .map(|p| v["sent"][p].as_str().unwrap().to_string())
        .collect();
    inbox_has(&v, &sent);
    assert!(
        v["plain_25_refused"].is_string(),
        "25 without STARTTLS must be refused: {v}"
    );
    // The real filtermail, built by the image from relay/filtermail/: it
    // passes encrypted mail and refuses what a chatmail relay refuses.
    filtermail_enforces(&v);
    assert_eq!(
        exec(
            &container,
            &["cat", "/usr/local/lib/chatmail-docker/filtermail-provided"]
        )
        .trim(),
        "built from relay/filtermail",
        "the image built filtermail from the relay's source"
    );
    assert_eq!(
        exec(
            &container,
            &["head", "-c", "4", "/usr/local/bin/filtermail"]
        )
        .as_bytes(),
        b"\x7fELF",
        "filtermail is a compiled binary"
    );
    // The 587 message was signed by the relay's opendkim on its way (the
    // relay strips the signature from locally delivered copies). Its
    // queue id is Postfix's after filtermail handed it back (the reply to
    // the client is filtermail's): found by its Message-ID in the log.
    let msgid = &sent[0];
    let postfix_log = exec(
        &container,
        &[
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-t",
            "postfix/cleanup",
        ],
    );
    let qid = postfix_log
        .lines()
        .find(|l| l.contains(&format!("message-id=<{msgid}>")))
        .and_then(|l| l.split(':').next())
        .map(|q| q.trim().to_string())
        .unwrap_or_else(|| {
            panic!(
                "Postfix's cleanup never saw {msgid}: {}",
                tail(&postfix_log, 20)
            )
        });
    let journal = exec(&container, &["journalctl", "--no-pager", "-u", "opendkim"]);
    assert!(
        journal.contains(&format!(
            "{qid}: DKIM-Signature field added (s=opendkim, d={DOMAIN})"
        )),
        "opendkim signed {qid}: {}",
        tail(&journal, 20)
    );
    let b = format!(
        "{}:{}",
        v["b"]["email"].as_str().unwrap(),
        v["b"]["password"].as_str().unwrap()
    );

    // 4. The health check covers every unit the relay enabled, including
    // filtermail-transport, which carries all outgoing mail.
    let units = exec(&container, &["cat", "/etc/chatmail/relay-units"]);
    for unit in [
        "filtermail-transport.service",
        "postfix.service",
        "dovecot.service",
        "doveauth.service",
    ] {
        assert!(
            units.lines().any(|l| l == unit),
            "{unit} not recorded: {units}"
        );
    }
    // The tool's manifest of the relay (status, migrate, preflight) knows
    // every unit this relay release enabled.
    for unit in units.lines() {
        assert!(
            chatmail_docker::deployment::relay::is_relay_unit(unit),
            "{unit} was enabled by the relay's deploy but is missing from src/deployment/relay.rs"
        );
    }
    exec(&container, &["systemctl", "stop", "filtermail-transport"]);
    let (ok, out) = exec_status(&container, &["/usr/local/lib/chatmail-docker/healthcheck"]);
    assert!(
        !ok && out.contains("filtermail-transport"),
        "health with filtermail-transport stopped: {out}"
    );
    exec(&container, &["systemctl", "start", "filtermail-transport"]);

    // The relay's own online test suite (`cmdeploy test`), inside the
    // container as on a relay host: all of it passes but what needs the
    // internet or a second relay.
    let outcomes = crate::support::engine::online::run_online_suite(
        &container,
        &dir.join("relay"),
        DOMAIN,
        &crate::support::engine::online::Run::default(),
    );
    crate::support::engine::online::assert_online_outcomes(&outcomes, false);

    // 5. A deploy that fails leaves the running relay as it was.
    let ini_path = "/etc/chatmail/chatmail.ini";
    let good_ini = exec(&container, &["cat", ini_path]);
    exec(
        &container,
        &[
            "sh",
            "-c",
            &format!("echo 'max_message_size = not-a-number' >> {ini_path}"),
        ],
    );
    let (ok, _) = exec_status(&container, &["systemctl", "restart", "chatmail-deploy"]);
    assert!(!ok, "the deploy with a broken ini must fail");
    let (_, health) = exec_status(&container, &["/usr/local/lib/chatmail-docker/healthcheck"]);
    assert!(
        health.starts_with("init failed"),
        "health says why: {health}"
    );
    for unit in ["postfix", "dovecot", "nginx", "opendkim", "filtermail"] {
        assert!(
            exec_ok(&container, &["systemctl", "is-active", "--quiet", unit]),
            "{unit} stopped by a failed deploy"
        );
    }
    inbox_has(&mailcheck(&["--read", &b]), &sent);
    exec(
        &container,
        &[
            "sh",
            "-c",
            &format!("cat > {ini_path} <<'EOF'\n{good_ini}EOF"),
        ],
    );
    let (ok, out) = exec_status(&container, &["systemctl", "restart", "chatmail-deploy"]);
    assert!(ok, "deploy with the good ini again: {out}");

    // 6. A restart (no deploy: nothing changed) is healthy again, with the
    // relay's resolver (its unbound) in effect, not Docker's copy.
    let started = Instant::now();
    check(
        StdCommand::new("docker").args(["restart", "--time", "60", &container]),
        "docker restart",
    );
    wait_healthy(&container);
    eprintln!("e2e-relay: restart to healthy: {:.1?}", started.elapsed());
    let resolv = exec(&container, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.lines().next() == Some("nameserver 127.0.0.1"),
        "the relay's resolver after a restart: {resolv}"
    );

    // 7. down + setup: a new container with the same certificate, DKIM key
    // and mailboxes (passwords included), and the mail that waited in
    // Postfix's queue (deferred, and in maildrop) delivered.
    let cert = served_cert_sha(443);
    let dkim = fs::read(dir.join("data/chatmail-dkimkeys/opendkim.private")).unwrap();
    let b_email = v["b"]["email"].as_str().unwrap().to_string();
    let queued = queue_two_messages(&container, &b_email, "down");
    run_tool(tool(&dir).arg("down"), 0, "down");
    let started = Instant::now();
    run_tool(
        tool(&dir).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup after down",
    );
    eprintln!(
        "e2e-relay: setup with the image present to healthy: {:.1?}",
        started.elapsed()
    );
    let container = healthy_container_of(&mut tool(&dir));
    assert_eq!(
        served_cert_sha(443),
        cert,
        "the self-signed certificate survives a recreate"
    );
    assert_eq!(
        fs::read(dir.join("data/chatmail-dkimkeys/opendkim.private")).unwrap(),
        dkim,
        "the DKIM key survives"
    );
    inbox_has(&mailcheck(&["--read", &b]), &sent);
    inbox_has(
        &mailcheck(&["--read", &b, "--wait-ids", &queued.join(",")]),
        &queued,
    );

    // A custom/ edit and a change in the relay source, then `setup
    // --rebuild`: a new image, a new container; the queue survives that
    // too, and the relay builds its page from the custom file. (A plain
    // `setup` after a custom/ edit: the upgrade suite, its last step.)
    let queued = queue_two_messages(&container, &b_email, "rebuild");
    let page = dir.join("custom/www/src/index.md");
    fs::create_dir_all(page.parent().unwrap()).unwrap();
    fs::write(
        &page,
        "# A page of our own\n\nserved by the relay, edited in custom/\n",
    )
    .unwrap();
    let image_before = image_id(IMAGE);
    let readme = dir.join("relay/README.md");
    let mut text = fs::read_to_string(&readme).unwrap();
    text.push_str("\nA local note, so the image is built anew.\n");
    fs::write(&readme, text).unwrap();
    rebuild(
        &dir,
        &base,
        "setup --rebuild after a custom/ edit and a relay change",
    );
    assert_ne!(image_id(IMAGE), image_before, "a new image");
    let container = healthy_container_of(&mut tool(&dir));
    inbox_has(
        &mailcheck(&["--read", &b, "--wait-ids", &queued.join(",")]),
        &queued,
    );
    let v = mailcheck(&["--page"]);
    assert!(
        v["body"]
            .as_str()
            .unwrap_or_default()
            .contains("edited in custom/"),
        "the relay's page from custom/www/src/index.md: {v}"
    );

    // The DNS records to publish, as the relay computes them, carry the
    // public half of the DKIM key it signs with.
    let zone_file = tmp.path().join("chatmail.zone");
    let (stdout, _) = run_tool(
        tool(&dir)
            .args(["dns", "--no-check", "--zonefile"])
            .arg(&zone_file),
        0,
        "dns --no-check --zonefile",
    );
    let zone = fs::read_to_string(&zone_file).unwrap();
    let pubkey = StdCommand::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(dir.join("data/chatmail-dkimkeys/opendkim.private"))
        .output()
        .unwrap();
    let pubkey: String = String::from_utf8_lossy(&pubkey.stdout)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(pubkey.len() > 200, "the DKIM public key: {pubkey}");
    let joined = zone.replace("\" \"", "");
    assert!(
        joined.contains(&format!("opendkim._domainkey.{DOMAIN}."))
            && joined.contains(&format!("p={pubkey};")),
        "the zone's DKIM record is the relay's key:\n{zone}"
    );
    for record in [
        format!("IN  MX     10 {DOMAIN}."),
        format!("IN  SRV    0 1 587 {DOMAIN}."),
        format!("IN  SRV    0 1 993 {DOMAIN}."),
    ] {
        assert!(zone.contains(&record), "{record} in the zone:\n{zone}");
    }
    assert!(
        stdout.contains(&format!("IN  MX     10 {DOMAIN}.")),
        "dns prints the zone: {stdout}"
    );

    // 8. A configuration the relay rejects: setup stops as soon as the
    // deploy has failed (in the side container it deploys in first; the
    // test's own timeout bounds it, far below the default 900 s wait),
    // says why, and leaves the running relay alone.
    let serving_since = started_at(&container);
    fs::write(
        dir.join("chatmail.ini"),
        ini("max_message_size = not-a-number\n"),
    )
    .unwrap();
    let (stdout, stderr) = run_tool(
        tool(&dir)
            .args(["setup", "--skip-check", "cgroup-v2"])
            .timeout(std::time::Duration::from_secs(300)),
        1,
        "setup with a value the relay rejects",
    );
    let said = stdout + &stderr;
    assert!(
        said.contains("init failed") && said.contains("cmdeploy run failed"),
        "setup names the failed deploy: {said}"
    );
    assert!(
        said.contains("the running relay was left as it is"),
        "{said}"
    );
    assert_eq!(
        started_at(&healthy_container_of(&mut tool(&dir))),
        serving_since,
        "the relay kept serving, never restarted"
    );
    drop(container);

    // 9. A container start needs no internet: configure,activate with no
    // network at all (an override of the user's own) becomes healthy.
    fs::write(dir.join("chatmail.ini"), ini("")).unwrap();
    fs::write(
        dir.join("docker-compose.override.yaml"),
        "services:\n  chatmail:\n    network_mode: none\n",
    )
    .unwrap();
    run_tool(
        tool(&dir).args([
            "setup",
            "--skip-check",
            "cgroup-v2",
            "--skip-check",
            "ports",
        ]),
        0,
        "setup without any network",
    );
    let container = healthy_container_of(&mut tool(&dir));
    assert_eq!(
        exec(&container, &["sh", "-c", "ls /sys/class/net"]).trim(),
        "lo",
        "the container has no network but loopback"
    );
    fs::remove_file(dir.join("docker-compose.override.yaml")).unwrap();

    // 10. A full backup while the relay serves, more mail, an incremental
    // one; then the first deployment goes down and the chain is restored
    // into a fresh deployment directory (another host): the same DKIM key
    // and certificate, every message readable with the old passwords.
    run_tool(
        tool(&dir).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup on the host network again",
    );
    // A directory: incremental chains (a path that does not exist yet
    // would be an archive file).
    let backups = tmp.path().join("backups");
    fs::create_dir_all(&backups).unwrap();
    let pause_of = |out: &str, what: &str| {
        let summary: serde_json::Value = serde_json::from_str(out).unwrap();
        let ms = summary["queue_pause_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: Postfix was not paused: {summary}"));
        eprintln!("e2e-relay: {what}: Postfix frozen for {ms} ms");
    };
    let (out, _) = run_tool(
        tool(&dir).args(["backup", "--json"]).arg(&backups),
        0,
        "backup (full)",
    );
    pause_of(&out, "full backup");
    let v2 = mailcheck(&[]);
    filtermail_enforces(&v2);
    let later: Vec<String> = ["587", "465", "25"]
        .iter()
        .map(|p| v2["sent"][p].as_str().unwrap().to_string())
        .collect();
    let b2 = format!(
        "{}:{}",
        v2["b"]["email"].as_str().unwrap(),
        v2["b"]["password"].as_str().unwrap()
    );
    let (out, _) = run_tool(
        tool(&dir).args(["backup", "--json"]).arg(&backups),
        0,
        "backup (incremental)",
    );
    pause_of(&out, "incremental backup");
    let archives = fs::read_dir(&backups)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar.zst"))
        .count();
    assert_eq!(
        archives,
        2,
        "a full and an incremental archive in {}",
        backups.display()
    );
    let cert = served_cert_sha(443);
    run_tool(tool(&dir).arg("down"), 0, "down (the old host)");

    let dir2 = tmp.path().join("restored");
    copy_tree(&manifest_dir().join("docker"), &dir2.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    let _down2 = Down::new(&dir2, IMAGE);
    run_tool(
        tool(&dir2).arg("restore").arg(&backups),
        0,
        "restore the chain",
    );
    assert_eq!(
        fs::read(dir2.join("data/chatmail-dkimkeys/opendkim.private")).unwrap(),
        dkim,
        "the restored DKIM key is the relay's"
    );
    run_tool(
        tool(&dir2).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup of the restored relay",
    );
    healthy_container_of(&mut tool(&dir2));
    assert_eq!(
        served_cert_sha(443),
        cert,
        "the restored relay serves the same certificate"
    );
    inbox_has(&mailcheck(&["--read", &b]), &sent);
    inbox_has(&mailcheck(&["--read", &b2]), &later);

    eprintln!("e2e-relay: total {:.1?}", total.elapsed());
}
