//! The command line as users meet it: help, versions, usage errors.

use assert_cmd::Command;
use predicates::prelude::*;

fn bin() -> Command {
    Command::cargo_bin("chatmail-docker").unwrap()
}

const COMMANDS: &[&str] = &[
    "preflight",
    "sysctl",
    "setup",
    "up",
    "down",
    "restart",
    "status",
    "logs",
    "exec",
    "ini2env",
    "config",
    "migrate",
    "cert-watch",
    "completions",
];

#[test]
fn every_command_has_help_with_an_example() {
    for c in COMMANDS {
        bin()
            .args([c, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage: chatmail-docker"))
            .stdout(predicate::str::contains("Example"));
    }
    bin()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes"));
}

#[test]
fn version() {
    bin()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("chatmail-docker "));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    bin()
        .args(["setup", "--no-such-flag"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--no-such-flag"));
    bin().arg("frobnicate").assert().code(2);
    bin()
        .args(["--color", "purple", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("purple"));
    bin()
        .args(["preflight", "--skip-check", "nonsense"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cgroup-v2"));
    bin()
        .args([
            "setup",
            "--stages",
            "activate,install",
            "--dir",
            "/nonexistent",
        ])
        .assert()
        .code(2);
}

#[test]
fn commands_outside_a_deployment_dir_say_so() {
    let d = tempfile::tempdir().unwrap();
    bin()
        .args(["--dir"])
        .arg(d.path())
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "docker/docker-compose.yaml not found",
        ));
}

#[test]
fn completions_are_generated() {
    for sh in ["bash", "zsh", "fish"] {
        bin()
            .args(["completions", sh])
            .assert()
            .success()
            .stdout(predicate::str::contains("chatmail-docker"));
    }
}
