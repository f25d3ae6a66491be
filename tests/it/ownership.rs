//! One deployment, one container: the Compose project name is fixed, so
//! the project's container may belong to another deployment directory
//! (Compose records it as `com.docker.compose.project.working_dir`). No
//! command acts on such a container; each names it, its directory and
//! `--dir`. A stand-in `docker` plays a container of another directory and
//! records every call; the real engine shows what Compose records.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ID: &str = "f0f0f0f0f0f0";

/// A stand-in `docker` whose project container (running) was created from
/// `owner`, answering preflight's version queries; every call is logged.
fn docker_with_container_of(bin: &Path, log: &Path, owner: &Path) {
    script(
        bin,
        "docker",
        &format!(
            r#"echo "$*" >> '{log}'
case "$*" in
  --version) echo "Docker version 28.2.2, build e6534b4";;
  info*) echo "28.2.2";;
  "compose version"*) echo "v2.40.3";;
  *" ps --all --quiet"|*" ps --all --quiet chatmail"|*" ps --status running --quiet chatmail") echo {ID};;
  "inspect {ID}") printf '[{{"Id":"{ID}","Name":"/chatmail-chatmail-1","Image":"sha256:0","State":{{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0}},"Config":{{"Image":"chatmail-relay:local","Labels":{{"com.docker.compose.project":"chatmail","com.docker.compose.project.working_dir":"{owner}"}}}}}}]';;
esac
exit 0"#,
            log = log.display(),
            owner = owner.display()
        ),
    );
}

struct Case {
    _t: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    other: PathBuf,
    bin: PathBuf,
    log: PathBuf,
}

fn case() -> Case {
    let t = tempfile::tempdir().unwrap();
    let root = fake_root(t.path(), MOUNTINFO_V2, 65536, 65536);
    let dir = minimal_deployment(t.path());
    fs::write(dir.join(".env"), "MAIL_DOMAIN=chat.example.org\n").unwrap();
    fs::set_permissions(dir.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    let other = t.path().join("other-deployment");
    fs::create_dir_all(other.join("docker")).unwrap();
    fs::write(other.join("docker/docker-compose.yaml"), "services: {}\n").unwrap();
    let bin = t.path().join("bin");
    let log = t.path().join("docker.log");
    docker_with_container_of(&bin, &log, &other);
    Case {
        root,
        dir,
        other,
        bin,
        log,
        _t: t,
    }
}

impl Case {
    fn run(&self, args: &[&str]) -> std::process::Output {
        bin()
            .env("PATH", path_with(&self.bin))
            .arg("--root")
            .arg(&self.root)
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// The docker calls other than the queries (ps, inspect, versions).
    fn actions(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                !(l.contains(" ps ")
                    || l.starts_with("inspect ")
                    || l.starts_with("info")
                    || l.starts_with("--version")
                    || l.starts_with("compose version"))
            })
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn no_command_acts_on_another_deployments_container() {
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["down"],
        &["down", "--dry-run"],
        &["restart"],
        &["up"],
        &["logs", "--tail", "5"],
        &["exec", "--", "true"],
        &["dns", "--no-check"],
        &["setup", "--skip-check", "ports"],
        &["setup", "--dry-run", "--skip-check", "ports"],
    ] {
        let c = case();
        let out = c.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}\n{stderr}");
        for needle in [
            "chatmail-chatmail-1",
            &format!("belongs to the deployment in {}", c.other.display()),
            &format!("chatmail-docker --dir {}", c.other.display()),
        ] {
            assert!(
                stderr.contains(needle),
                "{args:?}: no `{needle}` in {stderr}"
            );
        }
        assert_eq!(c.actions(), Vec::<String>::new(), "{args:?} acted on it");
        assert!(
            !c.dir.join("docker/compose.generated.yaml").exists(),
            "{args:?} wrote the override"
        );
    }
}

/// `down` and `up --remove-orphans` remove every container of the
/// project: one of a service only another directory's override declares
/// counts too, though the service's own container does not exist.
#[test]
fn another_deployments_orphan_is_not_removed() {
    let c = case();
    script(
        &c.bin,
        "docker",
        &format!(
            r#"echo "$*" >> '{log}'
case "$*" in
  *" ps --all --quiet") echo b0b0;;
  "inspect b0b0") printf '[{{"Id":"b0b0","Name":"/chatmail-backup-1","Image":"sha256:0","State":{{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0}},"Config":{{"Image":"backup","Labels":{{"com.docker.compose.project.working_dir":"{owner}"}}}}}}]';;
esac
exit 0"#,
            log = c.log.display(),
            owner = c.other.display()
        ),
    );
    for args in [&["down"][..], &["up"]] {
        let out = c.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("chatmail-backup-1") && stderr.contains(&c.other.display().to_string()),
            "{args:?}: {stderr}"
        );
        assert_eq!(c.actions(), Vec::<String>::new(), "{args:?}");
    }
}

#[test]
fn a_container_of_a_vanished_deployment_is_named_with_how_to_remove_it() {
    let c = case();
    fs::remove_dir_all(&c.other).unwrap();
    let out = c.run(&["down"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} holds no deployment any more",
            c.other.display()
        )) && stderr.contains("docker rm -f chatmail-chatmail-1"),
        "{stderr}"
    );
    assert_eq!(c.actions(), Vec::<String>::new());
}

#[test]
fn a_container_of_this_directory_by_another_path_is_ours() {
    let c = case();
    // Compose recorded this directory through a symlink.
    let link = c.dir.parent().unwrap().join("link-to-deploy");
    std::os::unix::fs::symlink(&c.dir, &link).unwrap();
    docker_with_container_of(&c.bin, &c.log, &link);
    let out = c.run(&["restart"]);
    assert_ok(&out);
    assert!(
        c.actions().iter().any(|a| a.ends_with("restart chatmail")),
        "{:?}",
        c.actions()
    );
}

/// A fake /proc where `pid` listens on tcp port 25 from inside container
/// `id`.
fn listener_in_container(root: &Path, pid: u32, id: &str) {
    let net = root.join("proc/net");
    fs::create_dir_all(&net).unwrap();
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    fs::write(
        net.join("tcp"),
        format!("{header}   0: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 100 0 0 10 0\n"),
    )
    .unwrap();
    for f in ["tcp6", "udp", "udp6"] {
        fs::write(net.join(f), header).unwrap();
    }
    let p = root.join(format!("proc/{pid}"));
    fs::create_dir_all(p.join("fd")).unwrap();
    std::os::unix::fs::symlink("socket:[424242]", p.join("fd/3")).unwrap();
    fs::write(p.join("comm"), "master\n").unwrap();
    fs::write(
        p.join("cgroup"),
        format!("0::/system.slice/docker-{id}.scope/system.slice/postfix.service\n"),
    )
    .unwrap();
}

fn ports_check(c: &Case) -> serde_json::Value {
    let out = c.run(&["preflight", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad json ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    check(&v, "ports").clone()
}

#[test]
fn preflight_does_not_count_another_deployments_ports_as_ours() {
    let c = case();
    listener_in_container(&c.root, 4242, ID);
    let check = ports_check(&c);
    let msg = message(&check);
    assert_eq!(check["status"], "warn", "{check}");
    assert!(!msg.contains("running appliance"), "{msg}");
    assert!(
        msg.contains("25/tcp") && msg.contains(&c.other.display().to_string()),
        "{msg}"
    );

    // The same listener in this deployment's own container is ours.
    docker_with_container_of(&c.bin, &c.log, &c.dir);
    let check = ports_check(&c);
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        message(&check).contains("in use by the running appliance"),
        "{check}"
    );
}

/// What Compose v2 really records: the project directory as given
/// (absolute, cleaned, symlinks kept), which the tool resolves before
/// comparing. The container is created, never started, from an empty
/// image, in a project of its own, and removed.
#[test]
fn compose_records_the_project_directory_the_tool_compares() {
    if !require(
        runs("docker", &["info", "--format", "{{.ServerVersion}}"]) && have_compose_v2(),
        "a Docker engine and `docker compose` v2",
    ) {
        return;
    }
    const IMAGE: &str = "chatmail-docker-overrides-test:scratch";
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    fs::create_dir_all(&img).unwrap();
    fs::write(img.join("Dockerfile"), "FROM scratch\nCMD [\"/none\"]\n").unwrap();
    assert_ok(
        &std::process::Command::new("docker")
            .args(["build", "-q", "-t", IMAGE])
            .arg(&img)
            .output()
            .unwrap(),
    );
    let real = t.path().join("deploy");
    fs::create_dir_all(real.join("docker")).unwrap();
    fs::write(
        real.join("docker/docker-compose.yaml"),
        format!("services:\n  chatmail:\n    image: {IMAGE}\n    network_mode: none\n"),
    )
    .unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let project = format!("chatmail-docker-test-owner-{}", std::process::id());
    let compose = |args: &[&str]| {
        let mut c = std::process::Command::new("docker");
        c.args(["compose", "--project-name", &project, "--project-directory"])
            .arg(link.join("."))
            .arg("--file")
            .arg(link.join("docker/docker-compose.yaml"))
            .args(args);
        c.output().unwrap()
    };
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _down = Down(|| {
        let _ = compose(&["down", "--remove-orphans"]);
    });
    assert_ok(&compose(&["create", "--quiet-pull"]));
    let ps = compose(&["ps", "--all", "--quiet", "chatmail"]);
    assert_ok(&ps);
    let id = String::from_utf8_lossy(&ps.stdout).trim().to_string();
    let out = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .unwrap();
    assert_ok(&out);
    let mut list: Vec<chatmail_docker::engine::Inspect> =
        serde_json::from_slice(&out.stdout).unwrap();
    let c = list.pop().unwrap();
    use chatmail_docker::engine::container::{owner_of, Owner};
    assert_eq!(c.working_dir(), Some(link.to_str().unwrap()));
    assert_eq!(owner_of(&c, &real), Owner::This);
    assert_eq!(owner_of(&c, &link), Owner::This);
    let elsewhere = t.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    assert_eq!(owner_of(&c, &elsewhere), Owner::Other(Some(link.clone())));
}
