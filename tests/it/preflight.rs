//! Preflight against fake hosts: cgroup layouts from mountinfo, Docker and
//! Compose present in various versions or missing (stand-in scripts on a
//! temp PATH), and the real `docker compose` when it is installed.

use crate::support::*;
use assert_cmd::Command;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn report(root: &Path, dir: &Path, path: Option<&str>) -> (i32, serde_json::Value) {
    let mut cmd = Command::cargo_bin("chatmail-docker").unwrap();
    cmd.arg("--root")
        .arg(root)
        .arg("--dir")
        .arg(dir)
        .args(["preflight", "--json"]);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

fn deployment(t: &Path) -> PathBuf {
    let d = t.join("deploy");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(".env"), "MAIL_DOMAIN=chat.example.org\n").unwrap();
    fs::set_permissions(d.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    d
}

/// A deployment and a host root in `t` that pass every check that reads
/// the root (cgroups v2, enough inotify instances and watches).
fn healthy_host(t: &Path) -> (PathBuf, PathBuf) {
    (deployment(t), fake_root(t, MOUNTINFO_V2, 65536, 65536))
}

/// A stand-in `docker` in `bin` that reports `version` (and `build`) and
/// answers `docker compose` with `compose`, a shell command.
fn docker_stand_in(bin: &Path, version: &str, build: &str, compose: &str) {
    script(
        bin,
        "docker",
        &format!(
            r#"case "$1" in
  --version) echo "Docker version {version}, build {build}";;
  info) echo "{short}";;
  compose) {compose};;
esac"#,
            short = version.split('+').next().unwrap()
        ),
    );
}

#[test]
fn cgroup_layouts() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    for (info, status, needle) in [
        (MOUNTINFO_V2, "ok", "cgroups v2"),
        (MOUNTINFO_HYBRID, "fail", "hybrid"),
        (MOUNTINFO_V1, "fail", "v1 only"),
    ] {
        let r = tempfile::tempdir().unwrap();
        let root = fake_root(r.path(), info, 65536, 65536);
        let (code, v) = report(&root, &d, None);
        let c = check(&v, "cgroup-v2");
        assert_eq!(c["status"], status, "{c}");
        assert!(message(c).contains(needle), "{c}");
        if status == "fail" {
            assert_eq!(code, 3);
            assert!(c["fix"]
                .as_str()
                .unwrap()
                .contains("systemd.unified_cgroup_hierarchy=1"));
        }
    }
}

#[test]
fn compose_v1_only_fails_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let (d, root) = healthy_host(t.path());
    let bin = t.path().join("bin");
    // A docker without the compose plugin, and Compose v1 standalone.
    docker_stand_in(
        &bin,
        "20.10.24+dfsg1",
        "297e128",
        r#"echo "docker: 'compose' is not a docker command." >&2; exit 1"#,
    );
    script(
        &bin,
        "docker-compose",
        r#"echo "docker-compose version 1.29.2, build unknown""#,
    );
    let (code, v) = report(&root, &d, Some(&isolated_path(&bin)));
    assert_eq!(code, 3);
    let c = check(&v, "compose-v2");
    assert_eq!(c["status"], "fail");
    let msg = message(c);
    assert!(
        msg.contains("1.29.2") && msg.contains("cgroup: host"),
        "{msg}"
    );
    assert!(c["fix"].as_str().unwrap().contains("cli-plugins"));
    assert_eq!(check(&v, "docker-engine")["status"], "ok");
}

#[test]
fn docker_missing_and_podman() {
    let t = tempfile::tempdir().unwrap();
    let (d, root) = healthy_host(t.path());
    let empty = t.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let (code, v) = report(&root, &d, Some(&isolated_path(&empty)));
    assert_eq!(code, 3);
    assert_eq!(check(&v, "docker-engine")["status"], "fail");
    assert_eq!(check(&v, "compose-v2")["status"], "fail");

    let bin = t.path().join("podbin");
    script(
        &bin,
        "podman",
        r#"[ "$1" = compose ] && echo "podman-compose version 1.0.6" ; exit 0"#,
    );
    let (_, v) = report(&root, &d, Some(&isolated_path(&bin)));
    let e = check(&v, "docker-engine");
    assert_eq!(e["status"], "warn");
    assert!(message(e).contains("Podman"));
    assert_eq!(check(&v, "compose-v2")["status"], "warn");
}

#[test]
fn compose_v2_stand_in_and_real() {
    let t = tempfile::tempdir().unwrap();
    let (d, root) = healthy_host(t.path());
    let bin = t.path().join("bin");
    docker_stand_in(&bin, "28.2.2", "e6534b4", r#"echo "v2.29.1""#);
    let (_, v) = report(&root, &d, Some(&isolated_path(&bin)));
    assert_eq!(check(&v, "compose-v2")["status"], "ok");
    assert!(message(check(&v, "compose-v2")).contains("2.29.1"));

    if require(have_compose_v2(), "docker compose v2") {
        let (_, v) = report(&root, &d, None);
        assert_eq!(check(&v, "compose-v2")["status"], "ok", "{v}");
    }
}

#[test]
fn mail_domain_forms_and_env_mode() {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 65536, 65536);
    let d = t.path().join("deploy");
    fs::create_dir_all(&d).unwrap();
    let env = d.join(".env");
    for (value, ok) in [
        ("chat.example.org", true),
        ("203.0.113.7", true),
        ("_testrelay", true),
        ("not a domain", false),
        ("localhost", false),
    ] {
        fs::write(&env, format!("MAIL_DOMAIN={value}\n")).unwrap();
        fs::set_permissions(&env, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, v) = report(&root, &d, None);
        let c = check(&v, "mail-domain");
        assert_eq!(c["status"], if ok { "ok" } else { "fail" }, "{value}: {c}");
        // The world-readable .env was tightened and the user told.
        assert_eq!(
            fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    fs::write(&env, "OTHER=1\n").unwrap();
    let (code, v) = report(&root, &d, None);
    assert_eq!(code, 3);
    let c = check(&v, "mail-domain");
    assert!(message(c).contains("MAIL_DOMAIN is not set"));
}

#[test]
fn inotify_low_is_a_warning_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    let (_, v) = report(&root, &d, None);
    let c = check(&v, "inotify");
    assert_eq!(c["status"], "warn");
    assert!(c["fix"]
        .as_str()
        .unwrap()
        .contains("chatmail-docker sysctl"));
}

#[test]
fn skipped_checks_are_reported_loudly() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let root = fake_root(t.path(), MOUNTINFO_V1, 65536, 65536);
    let out = Command::cargo_bin("chatmail-docker")
        .unwrap()
        .arg("--root")
        .arg(&root)
        .arg("--dir")
        .arg(&d)
        .args(["preflight", "--skip-check", "cgroup-v2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("skip"), "{stdout}");
    assert!(stderr.contains("SKIPPED"), "{stderr}");
}

#[test]
fn env_syntax_error_is_reported_with_its_line() {
    let t = tempfile::tempdir().unwrap();
    let (d, root) = healthy_host(t.path());
    fs::write(
        d.join(".env"),
        "MAIL_DOMAIN=chat.example.org\n# fine\nBROKEN='never closed\nOTHER=1\n",
    )
    .unwrap();
    let (code, v) = report(&root, &d, None);
    assert_eq!(code, 3, "{v}");
    let c = check(&v, "env-file");
    assert_eq!(c["status"], "fail", "{c}");
    let msg = message(c);
    assert!(msg.contains(".env:3"), "the line is not named: {msg}");
}

#[test]
fn unreadable_proc_net_makes_the_ports_unknown() {
    let t = tempfile::tempdir().unwrap();
    let (d, root) = healthy_host(t.path());
    // No /proc/net at all under the root: nothing can be told.
    let (_, v) = report(&root, &d, None);
    let c = check(&v, "ports");
    let msg = message(c);
    assert_eq!(c["status"], "warn", "{c}");
    assert!(
        msg.contains("unknown") && msg.contains("proc/net/tcp") && !msg.contains("free"),
        "{msg}"
    );
    // Readable tables without IPv6 (tcp6 and udp6 absent): the ports are free.
    let net = root.join("proc/net");
    fs::create_dir_all(&net).unwrap();
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    fs::write(net.join("tcp"), header).unwrap();
    fs::write(net.join("udp"), header).unwrap();
    let (_, v) = report(&root, &d, None);
    let c = check(&v, "ports");
    assert_eq!(c["status"], "ok", "{c}");
    assert!(message(c).contains("ports free"), "{c}");
    // One table that exists but cannot be read: unknown again, naming it.
    fs::remove_file(net.join("udp")).unwrap();
    fs::create_dir(net.join("udp")).unwrap();
    let (_, v) = report(&root, &d, None);
    let c = check(&v, "ports");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(message(c).contains("proc/net/udp"), "{c}");
}
