//! The command line as users meet it: help, versions, usage errors.

use crate::support::{bin, have};
use predicates::prelude::*;

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
    "metrics",
    "man",
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

#[test]
fn global_options_go_before_or_after_the_command_name() {
    let missing = |args: &[&str], dir: &str| {
        bin()
            .current_dir(std::env::temp_dir())
            .env_remove("CHATMAIL_DOCKER_DIR")
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "no chatmail.ini at {dir}/chatmail.ini"
            )));
    };
    missing(
        &["--dir", "/nowhere-a", "ini2env", "--stdout"],
        "/nowhere-a",
    );
    missing(
        &["ini2env", "--dir", "/nowhere-b", "--stdout"],
        "/nowhere-b",
    );
    // Both: the later one, after the command name, wins.
    missing(
        &[
            "--dir",
            "/nowhere-a",
            "ini2env",
            "--dir",
            "/nowhere-c",
            "--stdout",
        ],
        "/nowhere-c",
    );
    // The environment is the default for both positions.
    bin()
        .env("CHATMAIL_DOCKER_DIR", "/nowhere-env")
        .args(["--dir", "/nowhere-top", "ini2env", "--stdout"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nowhere-top/chatmail.ini"));
    // -q and -v conflict wherever they are.
    for args in [["-q", "ini2env", "-v"], ["ini2env", "-q", "-v"]] {
        bin()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("cannot be used with"));
    }
    // Flags after the command name take effect: --dry-run writes nothing.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("chatmail.ini"),
        "[params]\nmail_domain = x.org\n",
    )
    .unwrap();
    bin()
        .args(["ini2env", "--dry-run", "--dir"])
        .arg(d.path())
        .assert()
        .success();
    assert!(!d.path().join(".env").exists());
}

/// The executable is linked statically (see .cargo/config.toml): it starts
/// without the dynamic loader, which the ini2env benchmark depends on.
#[test]
fn the_executable_is_static() {
    if !have("readelf", &["--version"]) {
        return;
    }
    let out = std::process::Command::new("readelf")
        .args(["-lW", env!("CARGO_BIN_EXE_chatmail-docker")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("LOAD"), "{text}");
    assert!(
        !text.contains("INTERP"),
        "the executable asks for a program interpreter:\n{text}"
    );
}

/// Each command's own help starts with the description the command list
/// gives it (an argument struct's doc comment must not replace it).
#[test]
fn command_help_starts_with_its_description() {
    let out = bin().arg("--help").output().unwrap();
    let top = String::from_utf8(out.stdout).unwrap();
    for c in COMMANDS {
        let listed = top
            .lines()
            .find_map(|l| {
                let l = l.trim_start();
                let rest = l.strip_prefix(c)?;
                rest.starts_with(' ').then(|| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{c} is not in the command list:\n{top}"));
        for flag in ["-h", "--help"] {
            let out = bin().args([c, flag]).output().unwrap();
            let help = String::from_utf8(out.stdout).unwrap();
            // The list may wrap a long description: compare its start.
            let start: String = listed.chars().take(30).collect();
            assert!(
                help.starts_with(&start),
                "`{c} {flag}` does not start with `{start}`:\n{help}"
            );
        }
    }
}

/// `status --json` of the deployment `d` with the stand-in programs of
/// `bin_dir` first on `PATH`.
fn status_json(d: &std::path::Path, bin_dir: &std::path::Path) -> serde_json::Value {
    let out = bin()
        .env("PATH", crate::support::path_with(bin_dir))
        .arg("--dir")
        .arg(d)
        .args(["status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn status_names_a_full_disk_under_data_and_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let d = crate::support::minimal_deployment(t.path());
    let data = d.join("data");
    let Some(_disk) = crate::support::SmallDisk::mount(&data, "64k") else {
        return;
    };
    // The disk fills up.
    let _ = std::fs::write(data.join("fill"), vec![0u8; 128 << 10]);
    // No container (a stand-in docker that finds none): status still
    // names the disk.
    let bin_dir = t.path().join("bin");
    crate::support::script(&bin_dir, "docker", "exit 0");
    let v = status_json(&d, &bin_dir);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("free on the disk of") && warnings.contains(&data.display().to_string()),
        "{v}"
    );
    assert!(warnings.contains("df -h"), "{v}");
}

#[test]
fn status_names_a_full_docker_data_root_and_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let d = crate::support::minimal_deployment(t.path());
    let root = t.path().join("docker-root");
    let Some(_disk) = crate::support::SmallDisk::mount(&root, "64k") else {
        return;
    };
    // A stand-in docker whose data root is that small disk; no container.
    let bin_dir = t.path().join("bin");
    crate::support::script(
        &bin_dir,
        "docker",
        &format!(
            "case \"$*\" in \"info --format \"*) echo '{}';; esac\nexit 0",
            root.display()
        ),
    );
    let v = status_json(&d, &bin_dir);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("Docker's data root")
            && warnings.contains(&root.display().to_string())
            && warnings.contains("docker image prune"),
        "{v}"
    );
    // The disk of data/ is not the full one.
    assert!(!warnings.contains("the relay defers mail"), "{v}");
}
