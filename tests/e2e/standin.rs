//! End-to-end: the real `chatmail-docker` binary drives the appliance built
//! from `docker/` on the machine's Docker engine, with the relay stand-in
//! (`tests/relay-standin`) as the relay source. Everything but the relay is
//! real: Docker engine, Compose v2, systemd as PID 1 in the container,
//! Debian's nginx, Postfix and Dovecot, the tool's own binary.
//!
//! The real relay is the judge (`tests/e2e/relay.rs`; its acmetool
//! certificates, renewal and cert-watch in `tests/e2e/acme.rs`); the
//! stand-in stays here only for what the real relay cannot do on a machine
//! without internet: run its install stage at container start
//! (`--reinstall`: the real one reaches PyPI from inside the container).
//!
//! The scenarios that need the engine run in order inside one test, since
//! they share the host's mail ports (network_mode: host) and the fixed
//! compose project name. Without a Docker daemon they are skipped with a
//! printed reason, except under CI=true where that is a failure.
//!
//! The base image is built from Debian packages by
//! `tests/images/build-base.sh` (cached by content hash), because no image
//! registry is assumed to be reachable.

use crate::support::engine::*;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;

const DOMAIN: &str = "chat.e2e-test.example";
/// The image the suite builds, apart from a user's `chatmail-relay:local`.
const IMAGE: &str = "chatmail-relay:e2e";

/// `chatmail-docker --dir DIR ...` with the suite's image settings.
fn tool(dir: &Path, base: &str) -> Command {
    let mut cmd = tool_with_image(dir, IMAGE);
    cmd.env("CHATMAIL_BASE_IMAGE", base);
    cmd
}

/// A deployment directory as an administrator has it: the appliance files,
/// the relay source, chatmail.ini and .env from docker/example.env.
fn deployment(parent: &Path, name: &str, ini: Option<&str>) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    copy_tree(&manifest_dir().join("docker"), &dir.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    copy_tree(
        &manifest_dir().join("tests/relay-standin"),
        &dir.join("relay"),
        &|p| {
            p.file_name()
                .is_some_and(|n| n == "__pycache__" || n.to_string_lossy().ends_with(".egg-info"))
        },
    );
    if let Some(ini) = ini {
        fs::write(dir.join("chatmail.ini"), ini).unwrap();
        let env = fs::read_to_string(dir.join("docker/example.env"))
            .unwrap()
            .replace("\nMAIL_DOMAIN=\n", &format!("\nMAIL_DOMAIN={DOMAIN}\n"));
        fs::write(dir.join(".env"), env).unwrap();
        fs::set_permissions(dir.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

/// The running container's name, from `status --json`, checking that it is
/// healthy.
fn healthy_container(dir: &Path, base: &str) -> String {
    healthy_container_of(&mut tool(dir, base))
}

fn host_has_ipv6() -> bool {
    fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| !s.trim().is_empty())
}

fn host_is_cgroup2() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let (left, right) = l.split_once(" - ").unwrap_or(("", ""));
            left.split_whitespace().nth(4) == Some("/sys/fs/cgroup")
                && right.split_whitespace().next() == Some("cgroup2")
        })
    })
}

/// Write a file the way editors do: a new file renamed over the old one
/// (a new inode, which a single-file bind mount does not follow).
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("e2e-tmp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// GET a path over plain HTTP from the host's port 80.
fn http_get(path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", 80)).expect("connect to 127.0.0.1:80");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {DOMAIN}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The host's chatmail.ini: only values that differ from the relay's
/// defaults, so that `.env` carries every key and the round trip can be
/// compared exactly.
fn host_ini() -> String {
    format!(
        "[params]\n\
         mail_domain = {DOMAIN}\n\
         # a multi-line value, as a postal address is\n\
         privacy_postal = Example Relay e.V.\n    Hauptstrasse 1\n    12345 Berlin\n\
         privacy_mail = privacy@{DOMAIN}\n\
         privacy_pdo = Jane Doe, pdo@{DOMAIN}\n\
         privacy_supervisor = Data protection authority\n    of the example state\n\
         max_message_size = 1000000\n\
         delete_mails_after = 40\n"
    )
}

/// Scenarios 1-5, in order, on the real engine.
#[test]
fn appliance_end_to_end() {
    let Some((_engine, total, base, tmp)) = engine_test("chatmail-e2e") else {
        return;
    };
    let dir = deployment(tmp.path(), "deploy", Some(&host_ini()));
    let guard = Down::new(&dir, IMAGE);

    // A custom landing page, mounted over the relay source's.
    let page = dir.join("custom/www/src/index.md");
    fs::create_dir_all(page.parent().unwrap()).unwrap();
    fs::write(&page, "# e2e landing page, version one\n").unwrap();

    // 1. setup in a fresh deployment dir -> healthy.
    if !host_is_cgroup2() {
        let (stdout, stderr) = run_tool(
            tool(&dir, &base).arg("setup"),
            3,
            "setup on a cgroup v1 host without the override",
        );
        let stderr = stdout + &stderr;
        assert!(
            stderr.contains("cgroup"),
            "the refusal names cgroups: {stderr}"
        );
        assert!(
            stderr.contains("systemd.unified_cgroup_hierarchy=1"),
            "the refusal says how to switch to cgroups v2: {stderr}"
        );
    }
    let previous_image = image_id(IMAGE);
    let setup_started = Instant::now();
    run_tool(
        tool(&dir, &base).args(["setup", "--rebuild", "--skip-check", "cgroup-v2"]),
        0,
        "setup (build + first start)",
    );
    // setup removes the image a rebuild replaced (asserted in step 3);
    // should one from an earlier run still be there, drop it.
    if let Some(old) = previous_image.filter(|old| image_id(IMAGE).as_ref() != Some(old)) {
        let _ = StdCommand::new("docker")
            .args(["rmi", &old])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    eprintln!(
        "e2e: setup (with image build) to healthy: {:.1?}",
        setup_started.elapsed()
    );
    let container = healthy_container(&dir, &base);

    // The container's chatmail.ini equals the host's ([params], parsed).
    let mut inside = ini_params(&exec(&container, &["cat", "/etc/chatmail/chatmail.ini"]));
    let host = ini_params(&fs::read_to_string(dir.join("chatmail.ini")).unwrap());
    if !host_has_ipv6() && !host.contains_key("disable_ipv6") {
        assert_eq!(
            inside.remove("disable_ipv6").as_deref(),
            Some("True"),
            "no IPv6: disabled in the ini"
        );
    }
    assert_eq!(
        inside, host,
        "container chatmail.ini differs from the host's"
    );
    assert!(
        host["privacy_postal"].contains('\n'),
        "the multi-line value survived"
    );
    let stages = exec(
        &container,
        &["tail", "-n1", "/var/lib/chatmail-standin/stages.log"],
    );
    assert!(
        stages.trim().ends_with(" configure,activate"),
        "first start: {stages}"
    );

    // 2. custom/www/src is what the container sees at /opt/chatmail/www/src.
    let seen = exec(&container, &["cat", "/opt/chatmail/www/src/index.md"]);
    assert_eq!(seen, "# e2e landing page, version one\n");
    assert!(
        http_get("/index.html").contains("version one"),
        "the page is served"
    );
    replace_file(&page, "# e2e landing page, version two\n");
    // Until the container is recreated it sees the old file: status says so.
    let (_, stderr) = run_tool(
        tool(&dir, &base).arg("status"),
        0,
        "status after editing a custom file",
    );
    assert!(
        stderr.contains("changed since the container started") && stderr.contains("index.md"),
        "status warns about the edited file: {stderr}"
    );
    // The setup of step 3 recreates the container: the edit reaches it
    // there (the real relay's suite checks a plain setup after an edit).

    // 3. A change in the relay source, `--rebuild --reinstall`: a new image,
    // the one it replaced removed once the container is healthy; the
    // install stage runs once; the next setup does not run it.
    let before = image_id(IMAGE).expect("the image from step 1");
    fs::write(
        dir.join("relay/REBUILD-e2e"),
        format!("a change in the relay source {:?}\n", Instant::now()),
    )
    .unwrap();
    let (_, stderr) = run_tool(
        tool(&dir, &base).args([
            "setup",
            "--rebuild",
            "--reinstall",
            "--skip-check",
            "cgroup-v2",
        ]),
        0,
        "setup --rebuild --reinstall after a relay source change",
    );
    let after = image_id(IMAGE).expect("the rebuilt image");
    assert_ne!(before, after, "the relay source changed: a new image");
    assert!(
        image_id(&before).is_none(),
        "the replaced image {before} is still there: {stderr}"
    );
    assert!(
        stderr.contains("the image the rebuild replaced"),
        "{stderr}"
    );
    let container = healthy_container(&dir, &base);
    let seen = exec(&container, &["cat", "/opt/chatmail/www/src/index.md"]);
    assert_eq!(
        seen, "# e2e landing page, version two\n",
        "the edit reached the container"
    );
    assert!(
        http_get("/index.html").contains("version two"),
        "the new page is served"
    );
    let stages = exec(
        &container,
        &["tail", "-n1", "/var/lib/chatmail-standin/stages.log"],
    );
    assert!(
        stages.trim().ends_with(" install,configure,activate"),
        "after --reinstall: {stages}"
    );
    run_tool(
        tool(&dir, &base).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup after --reinstall",
    );
    let container = healthy_container(&dir, &base);
    let stages = exec(
        &container,
        &["tail", "-n1", "/var/lib/chatmail-standin/stages.log"],
    );
    assert!(
        stages.trim().ends_with(" configure,activate"),
        "after plain setup: {stages}"
    );
    assert!(
        !stages.contains("install"),
        "plain setup ran the install stage: {stages}"
    );
    // Re-running setup on a healthy, unchanged deployment changes nothing.
    let started = exec(&container, &["sh", "-c", "cut -d' ' -f22 /proc/1/stat"]);
    let (_, stderr) = run_tool(
        tool(&dir, &base).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup on an unchanged, healthy deployment",
    );
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert_eq!(
        healthy_container(&dir, &base),
        container,
        "the same container"
    );
    assert_eq!(
        exec(&container, &["sh", "-c", "cut -d' ' -f22 /proc/1/stat"]),
        started,
        "PID 1 was not restarted"
    );

    // 4. `down` and the next setup keep mail, keys and the queue: the
    // real relay's suite (`relay.rs`, step 7). A mailbox with a message,
    // for the metrics.
    let maildir = format!("/home/vmail/mail/{DOMAIN}/alice@{DOMAIN}/cur");
    let msg = format!("{maildir}/1700000000.e2e:2,S");
    exec(
        &container,
        &["sh", "-c", &format!(
            "mkdir -p {maildir} && printf 'Subject: kept\\n\\nhello\\n' > {msg} && chown -R vmail:vmail /home/vmail/mail/{DOMAIN}/alice@{DOMAIN}"
        )],
    );
    metrics_of_the_running_appliance(&dir, &base);
    drop(guard);

    // 5. migrate from a bare-metal host, then setup.
    migrate_then_setup(tmp.path(), &base);

    eprintln!("e2e: scenarios 1-5 took {:.1?}", total.elapsed());
}

/// Scenario 5b: `metrics` against the running appliance: the relay up and
/// healthy, its units active, the certificate the endpoints serve (the
/// stand-in serves 443, 25 and 143), the queue and alice's mailbox read on
/// the host; the text passes promtool when it is there. Prints the time of
/// a few runs (measured, not judged).
fn metrics_of_the_running_appliance(dir: &Path, base: &str) {
    let args = ["metrics", "--tls-ports", "443,25,143"];
    let mut took = Vec::new();
    let mut text = String::new();
    for _ in 0..5 {
        let t = Instant::now();
        text = run_tool(tool(dir, base).args(args), 0, "metrics").0;
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "e2e: metrics took {:.0?} (min), {:.0?} (median), {:.0?} (max)",
        took[0], took[2], took[4]
    );
    let value = |series: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for probe in [
        "probe=\"relay\"",
        "probe=\"units\"",
        "probe=\"tls\",target=\"443\"",
        "probe=\"tls\",target=\"25\"",
        "probe=\"tls\",target=\"143\"",
        "probe=\"postfix_queue\"",
        "probe=\"mailboxes\"",
        "probe=\"filesystem\",target=\"docker\"",
    ] {
        assert_eq!(
            value(&format!("chatmail_docker_probe_up{{{probe}}}")),
            1.0,
            "{probe}:\n{text}"
        );
    }
    for one in [
        "chatmail_docker_relay_up",
        "chatmail_docker_relay_healthy",
        "chatmail_docker_unit_active{unit=\"postfix\",enabled=\"enabled\"}",
        "chatmail_docker_unit_active{unit=\"dovecot\",enabled=\"enabled\"}",
        "chatmail_docker_unit_active{unit=\"nginx\",enabled=\"enabled\"}",
        "chatmail_docker_tls_certificates_consistent",
        "chatmail_docker_tls_certificates_distinct",
    ] {
        assert_eq!(value(one), 1.0, "{one}:\n{text}");
    }
    let pem = served_cert_pem(443).expect("443 serves a certificate");
    let served = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .expect("a PEM certificate")
        .as_ref()
        .to_vec();
    let (_, leaf) = x509_parser::parse_x509_certificate(&served).unwrap();
    let expiry = leaf.validity().not_after.timestamp() as f64;
    for port in ["443", "25", "143"] {
        let series =
            format!("chatmail_docker_tls_certificate_expiry_timestamp_seconds{{port=\"{port}\"}}");
        assert_eq!(value(&series), expiry, "{series}");
    }
    assert!(value("chatmail_docker_mailboxes") >= 1.0, "alice's mailbox");
    assert!(value("chatmail_docker_mailboxes_size_bytes") >= 20.0);
    assert_eq!(
        value("chatmail_docker_postfix_queue_messages{queue=\"deferred\"}"),
        0.0
    );
    let textfile = tempfile::tempdir().unwrap();
    run_tool(
        tool(dir, base)
            .args(args)
            .arg("--textfile")
            .arg(textfile.path()),
        0,
        "metrics --textfile",
    );
    let written = fs::read_to_string(textfile.path().join("chatmail-docker.prom")).unwrap();
    assert!(
        written.contains("chatmail_docker_relay_healthy 1\n"),
        "{written}"
    );
    if StdCommand::new("promtool")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = feed(
            StdCommand::new("promtool").args(["check", "metrics"]),
            written.as_bytes(),
        );
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Scenario 5: a fake bare-metal host (files owned by uids the container's
/// users do not have) -> `migrate --root` -> `setup` -> the maildir and the
/// DKIM key are in the container, owned by vmail and opendkim.
fn migrate_then_setup(parent: &Path, base: &str) {
    let root = parent.join("bare-metal");
    let dkim = root.join("etc/dkimkeys");
    fs::create_dir_all(&dkim).unwrap();
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    fs::write(dkim.join("opendkim.private"), &key).unwrap();
    fs::write(
        dkim.join("opendkim.txt"),
        "opendkim._domainkey IN TXT ( \"v=DKIM1; k=rsa; p=e2e\" )\n",
    )
    .unwrap();
    let cur = root.join(format!("home/vmail/mail/{DOMAIN}/bob@{DOMAIN}/cur"));
    fs::create_dir_all(&cur).unwrap();
    let mail = cur.join("1690000000.migrated:2,S");
    fs::write(&mail, "Subject: migrated\n\nfrom bare metal\n").unwrap();
    fs::create_dir_all(root.join("var/lib/acme")).unwrap();
    let ini_dir = root.join("usr/local/lib/chatmaild");
    fs::create_dir_all(&ini_dir).unwrap();
    fs::write(ini_dir.join("chatmail.ini"), host_ini()).unwrap();
    // Owners that exist on no container: 4242 for the key, 4343 for mail.
    for e in walkdir::WalkDir::new(&dkim) {
        std::os::unix::fs::lchown(e.unwrap().path(), Some(4242), Some(4242)).unwrap();
    }
    for e in walkdir::WalkDir::new(root.join("home/vmail")) {
        std::os::unix::fs::lchown(e.unwrap().path(), Some(4343), Some(4343)).unwrap();
    }
    // The bare-metal host's systemctl: every relay unit installed, enabled
    // and running until migrate stops and disables it; calls are recorded.
    let bin = parent.join("bare-metal-bin");
    let calls = parent.join("systemctl.calls");
    let state = parent.join("bare-metal-units");
    fs::create_dir_all(&state).unwrap();
    script(&bin, "systemctl", &fake_systemctl(&state, &calls));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let dir = deployment(parent, "migrated", None);
    let _guard = Down::new(&dir, IMAGE);
    run_tool(
        tool(&dir, base)
            .env("PATH", &path)
            .arg("--root")
            .arg(&root)
            .args(["migrate", "--yes"]),
        0,
        "migrate --root <bare-metal host>",
    );
    let env = fs::read_to_string(dir.join(".env")).expect("migrate wrote .env");
    assert!(
        env.contains(&format!("MAIL_DOMAIN={DOMAIN}")),
        ".env has MAIL_DOMAIN: {env}"
    );
    run_tool(
        tool(&dir, base).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup after migrate",
    );
    let container = healthy_container(&dir, base);
    let inside_mail = format!("/home/vmail/mail/{DOMAIN}/bob@{DOMAIN}/cur/1690000000.migrated:2,S");
    assert_eq!(
        exec(&container, &["cat", &inside_mail]),
        "Subject: migrated\n\nfrom bare metal\n"
    );
    assert_eq!(
        exec(&container, &["stat", "-c", "%U:%G", &inside_mail]).trim(),
        "vmail:vmail"
    );
    assert_eq!(
        exec(&container, &["cat", "/etc/dkimkeys/opendkim.private"]),
        key,
        "the migrated key, not a new one"
    );
    assert_eq!(
        exec(
            &container,
            &["stat", "-c", "%U:%G", "/etc/dkimkeys/opendkim.private"]
        )
        .trim(),
        "opendkim:opendkim"
    );
    // The host side follows the container's users now.
    let host_key = dir.join("data/chatmail-dkimkeys/opendkim.private");
    assert_ne!(
        fs::metadata(&host_key).unwrap().uid(),
        4242,
        "ownership fixed on the mounted key"
    );
}

/// A `systemctl` for a fake bare-metal host: units are loaded, and their
/// active and enablement states live in files under `state`.
fn fake_systemctl(state: &Path, calls: &Path) -> String {
    format!(
        r#"state='{state}'
echo "$*" >> '{calls}'
cmd=$1; shift
units=""
while [ $# -gt 0 ]; do
  case $1 in
    -p|--property) shift 2; continue;;
    -*) shift; continue;;
  esac
  units="$units $1"; shift
done
set_all() {{ for u in $units; do echo "$2" > "$state/$u.$1"; done; }}
case $cmd in
  show)
    first=1
    for u in $units; do
      [ $first = 1 ] || echo
      first=0
      a=$(cat "$state/$u.active" 2>/dev/null || echo active)
      f=$(cat "$state/$u.file" 2>/dev/null || echo enabled)
      printf 'Id=%s\nLoadState=loaded\nActiveState=%s\nUnitFileState=%s\n' "$u" "$a" "$f"
    done;;
  stop|kill) set_all active inactive;;
  start|restart|reload-or-restart) set_all active active;;
  disable|mask) set_all file disabled;;
  enable|unmask) set_all file enabled;;
  is-active)
    rc=0
    for u in $units; do
      a=$(cat "$state/$u.active" 2>/dev/null || echo active); echo "$a"
      [ "$a" = active ] || rc=3
    done
    exit $rc;;
esac
exit 0"#,
        state = state.display(),
        calls = calls.display()
    )
}

// ---------------------------------------------------------------------------
// 7. Bad input: setup refuses before touching Docker, with the fix.

/// A PATH whose `docker` records every call, then runs the real one.
fn recording_docker(dir: &Path) -> (String, PathBuf) {
    let real = crate::support::real_docker().map(|p| p.display().to_string());
    let log = dir.join("docker.calls");
    let bin = dir.join("bin");
    let body = match real {
        Some(real) => format!("echo \"$*\" >> '{}'\nexec '{real}' \"$@\"", log.display()),
        None => format!("echo \"$*\" >> '{}'\nexit 1", log.display()),
    };
    script(&bin, "docker", &body);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, log)
}

/// Docker calls that change something (build, start, create, pull...).
fn changing_calls(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            ["build", "up", "create", "run", "start", "pull", "import"]
                .iter()
                .any(|w| words.contains(w))
        })
        .map(str::to_string)
        .collect()
}

/// `setup` in `dir` with `path` as PATH (and `--root` when given), as a
/// refusal test runs it: (exit code, what the user sees in either stream).
fn refused_setup(
    dir: &Path,
    path: &str,
    root: Option<&Path>,
    extra: &[&str],
) -> (Option<i32>, String) {
    let mut cmd = Command::cargo_bin("chatmail-docker").unwrap();
    cmd.env("PATH", path)
        .env("NO_COLOR", "1")
        .arg("--dir")
        .arg(dir);
    if let Some(root) = root {
        cmd.arg("--root").arg(root);
    }
    let out = cmd.arg("setup").args(extra).output().unwrap();
    let seen = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), seen)
}

#[test]
fn setup_refuses_without_mail_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = deployment(tmp.path(), "deploy", None);
    fs::copy(dir.join("docker/example.env"), dir.join(".env")).unwrap();
    fs::set_permissions(dir.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    let (path, log) = recording_docker(tmp.path());
    // What the user sees: the check report and the error, in either stream.
    let (code, stderr) = refused_setup(&dir, &path, None, &["--skip-check", "cgroup-v2"]);
    assert!(matches!(code, Some(2) | Some(3)), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("MAIL_DOMAIN"),
        "names the variable: {stderr}"
    );
    assert!(stderr.contains(".env"), "says where to set it: {stderr}");
    assert_eq!(
        changing_calls(&log),
        Vec::<String>::new(),
        "setup touched Docker"
    );
    assert!(
        !dir.join("data/chatmail").exists(),
        "no data directories were created"
    );
}

#[test]
fn setup_refuses_on_cgroup_v1_host() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = deployment(tmp.path(), "deploy", Some(&host_ini()));
    let root = fake_root(tmp.path(), MOUNTINFO_V1, 65536, 65536);
    let (path, log) = recording_docker(tmp.path());
    // What the user sees: the check report and the error, in either stream.
    let (code, stderr) = refused_setup(&dir, &path, Some(&root), &[]);
    assert_eq!(code, Some(3), "preflight failure: {stderr}");
    assert!(stderr.contains("cgroup"), "names the problem: {stderr}");
    assert!(
        stderr.contains("systemd.unified_cgroup_hierarchy=1"),
        "gives the fix: {stderr}"
    );
    assert_eq!(
        changing_calls(&log),
        Vec::<String>::new(),
        "setup touched Docker"
    );
}

#[test]
fn setup_refuses_with_compose_v1_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = deployment(tmp.path(), "deploy", Some(&host_ini()));
    let root = fake_root(tmp.path(), MOUNTINFO_V2, 65536, 65536);
    let bin = tmp.path().join("bin");
    let calls = tmp.path().join("calls");
    // A Docker CLI without the compose plugin, and the old standalone tool.
    script(
        &bin,
        "docker",
        &format!(
            "echo \"docker $*\" >> '{c}'\n\
             case \"$1\" in\n\
               compose) echo \"docker: 'compose' is not a docker command.\" >&2; exit 1;;\n\
               info) echo '{{\"ServerVersion\":\"20.10.24\"}}'; exit 0;;\n\
               version) echo '20.10.24'; exit 0;;\n\
             esac\n\
             exit 0",
            c = calls.display()
        ),
    );
    script(
        &bin,
        "docker-compose",
        &format!(
            "echo \"docker-compose $*\" >> '{c}'\n\
             case \"$*\" in *short*) echo 1.29.2;; *) echo 'docker-compose version 1.29.2, build unknown';; esac",
            c = calls.display()
        ),
    );
    let path = format!("{}:/usr/bin:/bin", bin.display());
    // What the user sees: the check report and the error, in either stream.
    let (code, stderr) = refused_setup(&dir, &path, Some(&root), &[]);
    assert_eq!(code, Some(3), "preflight failure: {stderr}");
    assert!(
        stderr.contains("Compose v2") || stderr.contains("docker compose"),
        "explains v2 is needed: {stderr}"
    );
    assert!(
        stderr.contains("docker-compose-plugin") || stderr.contains("cli-plugins"),
        "says how to install it: {stderr}"
    );
    let recorded = fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        changing_calls(&calls),
        Vec::<String>::new(),
        "setup touched Docker: {recorded}"
    );
}
