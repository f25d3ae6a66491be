//! The compose runner: the command line it builds, signal forwarding, exit
//! codes, `-v` showing commands. A stand-in `docker` records what it gets.

use crate::support::*;
use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A temp dir with a minimal deployment, and the directory for stand-ins
/// in it (made by the first [`script`]).
fn deployment_and_bin() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = minimal_deployment(t.path());
    let bin = t.path().join("bin");
    (t, d, bin)
}

/// The binary for the deployment `d`, finding only the stand-ins in `bin`.
fn with_stand_in(d: &Path, bin: &Path) -> Command {
    let mut c = Command::cargo_bin("chatmail-docker").unwrap();
    c.env("PATH", isolated_path(bin)).arg("--dir").arg(d);
    c
}

#[test]
fn runs_compose_with_the_project_files_and_shows_it_with_v() {
    let (t, d, bin) = deployment_and_bin();
    fs::write(d.join(".env"), "MAIL_DOMAIN=chat.example.org\n").unwrap();
    fs::write(d.join("docker-compose.override.yaml"), "services: {}\n").unwrap();
    let log = t.path().join("calls");
    script(
        &bin,
        "docker",
        &format!("printf '%s\\n' \"$@\" > {}; exit 0", log.display()),
    );
    let out = with_stand_in(&d, &bin)
        .args(["-v", "restart"])
        .output()
        .unwrap();
    assert_ok(&out);
    let args: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let expected: Vec<String> = [
        "compose",
        "--project-name",
        "chatmail",
        "--project-directory",
        d.to_str().unwrap(),
        "--file",
        d.join("docker/docker-compose.yaml").to_str().unwrap(),
        "--file",
        d.join("docker-compose.override.yaml").to_str().unwrap(),
        "--env-file",
        d.join(".env").to_str().unwrap(),
        "restart",
        "chatmail",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(args, expected);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("$ docker compose --project-name chatmail"),
        "{stderr}"
    );
}

#[test]
fn exit_codes_pass_through() {
    let (_t, d, bin) = deployment_and_bin();
    script(&bin, "docker", "echo boom >&2; exit 7");
    with_stand_in(&d, &bin)
        .args(["exec", "--", "false"])
        .assert()
        .code(7);
    with_stand_in(&d, &bin)
        .arg("down")
        .assert()
        .code(1)
        .stderr(predicates::str::contains("failed with exit status 7"));
}

#[test]
fn sigterm_is_forwarded_to_compose() {
    let (t, d, bin) = deployment_and_bin();
    let got = t.path().join("got-term");
    let ready = t.path().join("ready");
    // The stand-in answers the container query (no container), then waits
    // until it is terminated and records the signal.
    script(
        &bin,
        "docker",
        &format!(
            "case \"$*\" in *' ps '*) exit 0;; esac\ntrap 'echo TERM > {got}; exit 143' TERM\n: > {ready}\nwhile :; do read -t 1 _ </dev/null 2>/dev/null; done",
            got = got.display(),
            ready = ready.display()
        ),
    );
    let exe = assert_cmd::cargo::cargo_bin("chatmail-docker");
    let mut child = std::process::Command::new(exe)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .arg("--dir")
        .arg(&d)
        .args(["logs", "-f"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ready.exists(), "stand-in did not start");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), "TERM");
    assert_eq!(status.code(), Some(143));
}
