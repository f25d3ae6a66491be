//! `setup` before it reaches the engine: the dry-run plan, and refusals
//! that must happen before Docker is touched.

use crate::support::*;
use assert_cmd::Command;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A `.env` for a relay with a domain name.
const ENV: &str = "MAIL_DOMAIN=chat.example.org\n";

fn setup(root: &Path, dir: &Path, path: Option<&str>, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::cargo_bin("chatmail-docker").unwrap();
    cmd.arg("--root")
        .arg(root)
        .arg("--dir")
        .arg(dir)
        .arg("setup")
        .args(extra);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

/// A docker stand-in that answers the preflight queries like a v2 install
/// and records every call.
fn recording_docker(bin: &Path, log: &Path) {
    script(
        bin,
        "docker",
        &format!(
            r#"echo "$*" >> {log}
case "$1" in
  --version) echo "Docker version 28.2.2, build e6534b4";;
  info) echo "28.2.2";;
  compose) [ "$2" = version ] && echo "v2.40.3";;
esac
exit 0"#,
            log = log.display()
        ),
    );
}

/// In `t`: a fake host root with `mountinfo` and ample inotify limits, and
/// a minimal deployment holding `file` with `content`.
fn host_with(t: &Path, mountinfo: &str, file: &str, content: &str) -> (PathBuf, PathBuf) {
    let root = fake_root(t, mountinfo, 65536, 65536);
    let d = minimal_deployment(t);
    fs::write(d.join(file), content).unwrap();
    (root, d)
}

/// [`recording_docker`] in `t`: a PATH that holds only it, and its log.
fn recording_docker_path(t: &Path) -> (String, PathBuf) {
    let bin = t.join("bin");
    let log = t.join("docker.log");
    recording_docker(&bin, &log);
    (isolated_path(&bin), log)
}

/// `setup` refused before touching Docker (exit 3): its stdout.
fn refused(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    if !require(have_compose_v2(), "docker compose v2") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 128, 8192);
    let d = minimal_deployment(t.path());
    fs::write(d.join(".env"), ENV).unwrap();
    fs::write(
        d.join("chatmail.ini"),
        "[params]\nmail_domain = chat.example.org\nmax_message_size = 1000\n",
    )
    .unwrap();
    fs::create_dir_all(d.join("custom/www/src")).unwrap();
    fs::write(d.join("custom/www/src/index.md"), "# hello\n").unwrap();
    fs::create_dir_all(d.join("relay")).unwrap();
    let before = (snapshot(&d), snapshot(&root));
    let path = path_with_no_containers(&t.path().join("bin"));
    let out = setup(&root, &d, Some(&path), &["--dry-run", "--reinstall"]);
    let stdout = ok_stdout(&out);
    for needle in [
        "would raise fs.inotify.max_user_instances from 128 to 65536",
        "would write",
        "build chatmail",
        "CMDEPLOY_STAGES=… docker compose",
        "up --detach",
        "would wait up to 900s",
        "dry run: nothing was changed",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
    // A one-shot start deploys in the container; otherwise the
    // configuration is deployed in a side container first.
    assert!(!stdout.contains("side container"), "{stdout}");
    let staged = ok_stdout(&setup(&root, &d, Some(&path), &["--dry-run"]));
    assert!(
        staged.contains("would deploy the configuration in a side container first"),
        "{staged}"
    );
    let plain = ok_stdout(&setup(
        &root,
        &d,
        Some(&path),
        &["--dry-run", "--no-deploy-beside"],
    ));
    assert!(!plain.contains("side container"), "{plain}");
    assert_eq!(
        (snapshot(&d), snapshot(&root)),
        before,
        "dry run changed files"
    );
}

#[test]
fn cgroup_v1_host_refuses_before_touching_docker() {
    let t = tempfile::tempdir().unwrap();
    let (root, d) = host_with(t.path(), MOUNTINFO_HYBRID, ".env", ENV);
    fs::set_permissions(d.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    let (path, log) = recording_docker_path(t.path());
    let before = snapshot(&d);
    let out = setup(&root, &d, Some(&path), &[]);
    let stdout = refused(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("systemd.unified_cgroup_hierarchy=1"),
        "{stdout}"
    );
    assert!(stderr.contains("--skip-check"), "{stderr}");
    let calls = fs::read_to_string(&log).unwrap_or_default();
    for word in ["build", "up", "create", "run"] {
        assert!(
            !calls
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == word)),
            "docker was used: {calls}"
        );
    }
    assert_eq!(snapshot(&d), before);
    // sysctl was not touched either.
    assert!(!root
        .join("etc/sysctl.d/60-chatmail-docker-inotify.conf")
        .exists());
}

#[test]
fn missing_mail_domain_refuses_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let (root, d) = host_with(t.path(), MOUNTINFO_V2, ".env", "# nothing here\n");
    let (path, _) = recording_docker_path(t.path());
    let stdout = refused(&setup(&root, &d, Some(&path), &[]));
    assert!(stdout.contains("MAIL_DOMAIN is not set"), "{stdout}");
    assert!(
        stdout.contains("mail_domain = chat.example.org"),
        "{stdout}"
    );
}

#[test]
fn compose_v1_only_refuses() {
    let t = tempfile::tempdir().unwrap();
    let (root, d) = host_with(t.path(), MOUNTINFO_V2, ".env", ENV);
    let bin = t.path().join("bin");
    script(
        &bin,
        "docker",
        r#"case "$1" in --version) echo "Docker version 20.10";; info) echo 20.10;; *) exit 1;; esac"#,
    );
    script(
        &bin,
        "docker-compose",
        r#"echo "docker-compose version 1.29.2, build unknown""#,
    );
    let stdout = refused(&setup(&root, &d, Some(&isolated_path(&bin)), &[]));
    assert!(
        stdout.contains("Compose v1") && stdout.contains("docker-compose-plugin"),
        "{stdout}"
    );
}

#[test]
fn dry_run_on_a_fresh_directory_with_only_chatmail_ini() {
    let t = tempfile::tempdir().unwrap();
    let (root, d) = host_with(
        t.path(),
        MOUNTINFO_V2,
        "chatmail.ini",
        "[params]\nmail_domain = _test\n",
    );
    let (path, _) = recording_docker_path(t.path());
    let before = snapshot(&d);
    let out = setup(&root, &d, Some(&path), &["--dry-run"]);
    let stdout = ok_stdout(&out);
    assert!(stdout.contains("dry run: nothing was changed"), "{stdout}");
    assert_eq!(snapshot(&d), before);
}

/// A build that fails on a full Docker data root (a small tmpfs where the
/// stand-in `docker info` says the root is) names the data root and the
/// command to run again; nothing was started.
#[test]
fn a_build_on_a_full_data_root_names_it() {
    if !require(have_compose_v2(), "docker compose v2") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (root, d) = host_with(t.path(), MOUNTINFO_V2, ".env", ENV);
    fs::create_dir_all(d.join("relay/cmdeploy")).unwrap();
    let Some(_disk) = SmallDisk::mount(&root.join("var/lib/docker"), "64k") else {
        return;
    };
    let real = real_docker().expect("docker");
    let bin = t.path().join("bin");
    let log = t.path().join("docker.log");
    script(
        &bin,
        "docker",
        &format!(
            r#"echo "$*" >> '{log}'
case "$*" in
  *"{{{{.DockerRootDir}}}}"*) echo /var/lib/docker; exit 0;;
  compose*" build "*) echo "failed to solve: write /var/lib/docker/x: no space left on device" >&2; exit 1;;
  compose*" ps "*|compose*" up "*) exit 0;;
esac
exec '{real}' "$@""#,
            log = log.display(),
            real = real.display()
        ),
    );
    let out = setup(
        &root,
        &d,
        Some(&path_with(&bin)),
        &["--skip-check", "ports", "--skip-check", "disk-space"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let shown = root.join("var/lib/docker").display().to_string();
    assert!(
        err.contains("the appliance image did not build")
            && err.contains(&format!("Docker's data root {shown} ran out of space"))
            && err.contains("then run `chatmail-docker setup` again"),
        "{err}"
    );
    let calls = fs::read_to_string(&log).unwrap();
    assert!(!calls.contains(" up "), "nothing was started: {calls}");
}
