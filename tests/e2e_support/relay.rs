//! The real relay for the end-to-end suites: the snapshot in
//! `../shared/relay/` unpacked as a git checkout with the offline patch,
//! a deployment directory around it, the tool with the suite's image,
//! and the mail client checks (tests/relay-offline/mailcheck.py).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use super::*;

pub const DOMAIN: &str = "_chat.example.org";
/// The image this suite builds, apart from a user's `chatmail-relay:local`
/// and the stand-in suite's image.
pub const IMAGE: &str = "chatmail-relay:e2e-real";
/// CA certificates the host trusts: on machines whose way to PyPI is a
/// proxy that re-signs TLS, the image build needs them (`--build-ca`).
pub const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The relay snapshot, unpacked as `relay/` the way `git clone` leaves it
/// (a git checkout), with the offline patch applied and committed.
pub fn unpack_relay(dir: &Path) -> String {
    let shared = manifest_dir().join("../shared/relay");
    let tarball = fs::read_dir(&shared)
        .unwrap_or_else(|e| panic!("{}: {e} (the relay snapshot)", shared.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("chatmail-relay-"))
        })
        .unwrap_or_else(|| panic!("no chatmail-relay-*.tar.gz in {}", shared.display()));
    check(
        StdCommand::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir),
        "unpack the relay snapshot",
    );
    let relay = dir.join("relay");
    check(
        StdCommand::new("python3")
            .arg(manifest_dir().join("tests/relay-offline/apply.py"))
            .arg(&relay),
        "replace the relay's downloads",
    );
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.org",
            "commit",
            "-q",
            "-m",
            "relay snapshot, offline downloads",
        ],
    ] {
        check(
            StdCommand::new("git").args(args).current_dir(&relay),
            "make relay/ a git checkout",
        );
    }
    let out = StdCommand::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&relay)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A deployment directory as a user has it after cloning this repository
/// and the relay: the appliance files, relay/, chatmail.ini.
pub fn deployment(parent: &Path) -> (PathBuf, String) {
    let dir = parent.join("deploy");
    fs::create_dir_all(&dir).unwrap();
    copy_tree(&manifest_dir().join("docker"), &dir.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    let commit = unpack_relay(&dir);
    fs::write(dir.join("chatmail.ini"), ini("")).unwrap();
    (dir, commit)
}

/// The suite's chatmail.ini. `max_load_1m`: the relay refuses new accounts
/// above this load, and a test machine building images is busy.
pub fn ini(extra: &str) -> String {
    format!("[params]\nmail_domain = {DOMAIN}\nmax_load_1m = 100\n{extra}")
}

pub fn tool(dir: &Path) -> assert_cmd::Command {
    let mut cmd = tool_with_image(dir, IMAGE);
    cmd.env("CHATMAIL_BUILD_CA", HOST_CA);
    cmd
}

/// `setup --rebuild` on the suite's base image.
pub fn rebuild(dir: &Path, base: &str, what: &str) {
    run_tool(
        tool(dir).env("CHATMAIL_BASE_IMAGE", base).args([
            "setup",
            "--rebuild",
            "--skip-check",
            "cgroup-v2",
        ]),
        0,
        what,
    );
}

pub fn mailcheck(args: &[&str]) -> serde_json::Value {
    let out = StdCommand::new("python3")
        .arg(manifest_dir().join("tests/relay-offline/mailcheck.py"))
        .arg("127.0.0.1")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mailcheck {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("mailcheck output ({e}): {stdout}"))
}

pub fn inbox_has(v: &serde_json::Value, ids: &[String]) {
    let inbox: Vec<&str> = v["inbox"]
        .as_array()
        .unwrap_or_else(|| panic!("no inbox in {v}"))
        .iter()
        .filter_map(|i| i.as_str())
        .collect();
    for id in ids {
        assert!(inbox.contains(&id.as_str()), "{id} not in B's INBOX: {v}");
    }
}
