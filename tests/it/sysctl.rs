//! inotify tuning against a fake /proc/sys and /etc/sysctl.d.

use crate::support::*;
use assert_cmd::Command;
use std::fs;

fn sysctl(root: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("chatmail-docker")
        .unwrap()
        .arg("--root")
        .arg(root)
        .args(extra)
        .arg("sysctl")
        .output()
        .unwrap()
}

const FILE: &str = "etc/sysctl.d/60-chatmail-docker-inotify.conf";

#[test]
fn idempotent_and_never_lowers() {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 524288);
    let out = sysctl(&root, &[]);
    assert_ok(&out);
    let first = fs::read_to_string(root.join(FILE)).unwrap();
    assert!(first.contains("fs.inotify.max_user_instances = 65536"));
    assert!(
        first.contains("fs.inotify.max_user_watches = 524288"),
        "kept the higher value: {first}"
    );
    assert_eq!(
        fs::read_to_string(root.join("proc/sys/fs/inotify/max_user_instances"))
            .unwrap()
            .trim(),
        "65536"
    );
    assert_eq!(
        fs::read_to_string(root.join("proc/sys/fs/inotify/max_user_watches"))
            .unwrap()
            .trim(),
        "524288"
    );

    let out = sysctl(&root, &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already sufficient"));
    assert_eq!(
        fs::read_to_string(root.join(FILE)).unwrap(),
        first,
        "byte-identical"
    );
    for key in ["max_user_instances", "max_user_watches"] {
        assert_eq!(first.matches(key).count(), 1, "no duplicate lines");
    }
    assert_eq!(
        fs::read_dir(root.join("etc/sysctl.d")).unwrap().count(),
        1,
        "no temp files"
    );
}

#[test]
fn dry_run_touches_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    let before = snapshot(&root);
    let out = sysctl(&root, &["--dry-run"]);
    let stdout = ok_stdout(&out);
    assert!(
        stdout.contains("would raise fs.inotify.max_user_instances from 128 to 65536"),
        "{stdout}"
    );
    assert!(stdout.contains("would write"), "{stdout}");
    assert_eq!(snapshot(&root), before);
}

#[test]
fn custom_minimum() {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    let out = Command::cargo_bin("chatmail-docker")
        .unwrap()
        .arg("--root")
        .arg(&root)
        .args(["sysctl", "--max-user-watches", "1048576"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        fs::read_to_string(root.join("proc/sys/fs/inotify/max_user_watches"))
            .unwrap()
            .trim(),
        "1048576"
    );
}

#[test]
fn without_permission_it_says_what_to_run() {
    // A read-only /etc/sysctl.d stands in for "not root".
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        // root ignores directory modes; use a file where the dir should be.
        let t = tempfile::tempdir().unwrap();
        let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
        fs::remove_dir(root.join("etc/sysctl.d")).unwrap();
        fs::write(root.join("etc/sysctl.d"), "").unwrap();
        let out = sysctl(&root, &[]);
        assert_eq!(out.status.code(), Some(1));
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    fs::set_permissions(root.join("etc/sysctl.d"), fs::Permissions::from_mode(0o555)).unwrap();
    let out = sysctl(&root, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sudo tee") && err.contains("sysctl --system"),
        "{err}"
    );
}
