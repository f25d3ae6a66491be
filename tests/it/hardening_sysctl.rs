//! `sysctl` and the boot: values the kernel cannot take, and sysctl files
//! read after the managed one that lower the limits again at boot.

use crate::support::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

const FILE: &str = "etc/sysctl.d/60-chatmail-docker-inotify.conf";

fn run(root: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .arg("--root")
        .arg(root)
        .arg("--dir")
        .arg(dir)
        .args(["--color", "never"])
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

#[test]
fn a_value_beyond_the_kernel_s_maximum_is_refused_and_not_persisted() {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    let out = run(
        &root,
        t.path(),
        &["sysctl", "--max-user-watches", "9223372036854775808"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("kernel's maximum"), "{err}");
    assert!(!root.join(FILE).exists());
    assert_eq!(
        fs::read_to_string(root.join("proc/sys/fs/inotify/max_user_instances"))
            .unwrap()
            .trim(),
        "128",
        "nothing raised"
    );
}

#[test]
fn a_later_file_that_lowers_a_limit_at_boot_is_named() {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    fs::write(
        root.join("etc/sysctl.d/99-tuning.conf"),
        "fs.inotify.max_user_watches = 8192\n",
    )
    .unwrap();
    let out = run(&root, t.path(), &["sysctl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("/etc/sysctl.d/99-tuning.conf sets fs.inotify.max_user_watches = 8192"),
        "{err}"
    );
    assert!(err.contains("wins at boot"), "{err}");

    // Live values are now enough; preflight still names the file.
    let d = t.path().join("deploy");
    fs::create_dir_all(&d).unwrap();
    let out = run(&root, &d, &["preflight", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = check(&v, "inotify");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(message(c).contains("/etc/sysctl.d/99-tuning.conf"), "{c}");
}
