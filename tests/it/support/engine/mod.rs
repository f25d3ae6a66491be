//! The support kit's engine part, for the end-to-end suites that drive the
//! appliance on the machine's Docker engine: the engine rule (skip with a
//! reason, fail under CI=true), the base image, the tool with a suite's
//! image name, the container's health, `docker exec`; the real relay
//! ([`relay`]), its online test suite ([`online`]) and the mail flow of the
//! fault tests ([`mailflow`]).

pub use super::*;

pub mod mailflow;
pub mod online;
pub mod relay;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a Docker daemon and Compose v2 answer; skip (or fail in CI,
/// the kit's one rule) otherwise.
pub fn engine_or_skip() -> bool {
    require(
        runs("docker", &["version", "--format", "{{.Server.Version}}"]) && have_compose_v2(),
        "a Docker daemon and `docker compose` v2 (the end-to-end suite)",
    )
}

/// What every end-to-end test starts from: the engine held for the whole
/// test, its clock, the base image and a temp dir named for the suite.
pub type EngineTest = (fs::File, Instant, String, tempfile::TempDir);

/// [`EngineTest`] for a suite whose temp dir starts with `prefix`; `None`
/// when the test is skipped (no engine, outside CI).
pub fn engine_test(prefix: &str) -> Option<EngineTest> {
    if !engine_or_skip() {
        return None;
    }
    let engine = engine_lock();
    remove_earlier_runs();
    let total = Instant::now();
    let base = base_image();
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    Some((engine, total, base, tmp))
}

/// Containers of the Compose project `chatmail` that an earlier run of
/// these suites left behind (killed before its guards ran): those whose
/// project directory lies in this machine's temp dir under a suite's
/// prefix. A relay that is not a test's is never touched.
fn remove_earlier_runs() {
    let prefix = std::env::temp_dir().join("chatmail-e2e");
    let prefix = prefix.to_string_lossy();
    let Ok(out) = StdCommand::new("docker")
        .args([
            "ps",
            "--all",
            "--filter",
            "label=com.docker.compose.project=chatmail",
        ])
        .args([
            "--format",
            "{{.ID}} {{.Label \"com.docker.compose.project.working_dir\"}}",
        ])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((id, dir)) = line.split_once(' ') else {
            continue;
        };
        if dir.starts_with(prefix.as_ref()) {
            eprintln!("removing the container {id} an earlier test run left ({dir})");
            let _ = StdCommand::new("docker")
                .args(["rm", "--force", "--volumes", id])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// The base image tag, built when missing (cached by content hash).
pub fn base_image() -> String {
    let script = manifest_dir().join("tests/images/build-base.sh");
    let out = StdCommand::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let tag = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        tag.starts_with("chatmail-docker-test-base:"),
        "unexpected tag {tag:?}"
    );
    tag
}

/// `chatmail-docker --dir DIR` with a suite's image name and no one-shot
/// switches inherited from the caller's environment.
pub fn tool_with_image(dir: &Path, image: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("chatmail-docker").unwrap();
    cmd.env("CHATMAIL_IMAGE", image)
        .env("NO_COLOR", "1")
        .env_remove("CMDEPLOY_STAGES")
        .env_remove("RECREATE_VENV")
        .env_remove("FORCE_REINIT_INI_FILE")
        .env_remove("DEBUG_COMMANDS_ENABLED")
        .arg("--dir")
        .arg(dir)
        .timeout(Duration::from_secs(1800));
    cmd
}

/// Run the tool, print its output (the test log is the user's view), and
/// panic with it when the exit code is not the expected one.
pub fn run_tool(cmd: &mut assert_cmd::Command, expect: i32, what: &str) -> (String, String) {
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!(
        "--- {what}: exit {:?} after {:.1?}\n{stdout}{stderr}",
        out.status.code(),
        started.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(expect),
        "{what}: unexpected exit code"
    );
    (stdout, stderr)
}

/// Run a helper command; panic with its output when it fails.
pub fn check(cmd: &mut StdCommand, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The running container's name from `status --json`, checking that it is
/// healthy.
pub fn healthy_container_of(tool: &mut assert_cmd::Command) -> String {
    let (stdout, _) = run_tool(tool.args(["status", "--json"]), 0, "status --json");
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {stdout}"));
    assert_eq!(v["health"], "healthy", "status --json: {v}");
    assert_eq!(v["state"], "running", "status --json: {v}");
    v["container"]
        .as_str()
        .unwrap_or_else(|| panic!("status --json names no container: {v}"))
        .to_string()
}

/// Wait until Docker reports the container healthy (bounded by a number of
/// checks, not by a time in an assertion).
pub fn wait_healthy(container: &str) {
    let mut last = String::new();
    for _ in 0..600 {
        let out = StdCommand::new("docker")
            .args(["inspect", "--format", "{{.State.Health.Status}}", container])
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if last == "healthy" {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{container} did not become healthy (last: {last})");
}

fn docker_exec(container: &str, args: &[&str]) -> std::process::Output {
    StdCommand::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .output()
        .unwrap()
}

/// Run a command in the container: (success, stdout + stderr).
pub fn exec_status(container: &str, args: &[&str]) -> (bool, String) {
    let out = docker_exec(container, args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn exec_ok(container: &str, args: &[&str]) -> bool {
    exec_status(container, args).0
}

/// Run a command in the container, returning stdout; panics on failure.
pub fn exec(container: &str, args: &[&str]) -> String {
    let out = docker_exec(container, args);
    assert!(
        out.status.success(),
        "docker exec {container} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) {
    for e in walkdir::WalkDir::new(from)
        .into_iter()
        .filter_entry(|e| !skip(e.path()))
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        if e.file_type().is_dir() {
            fs::create_dir_all(&dest).unwrap();
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The leaf certificate served with TLS on a port of this host, as PEM.
pub fn served_cert_pem(port: u16) -> Option<String> {
    served_cert(port, None, None)
}

/// The leaf certificate served on a port of this host, as PEM, asked for
/// `servername` (SNI) and after `starttls` (the protocol to start TLS in).
pub fn served_cert(port: u16, servername: Option<&str>, starttls: Option<&str>) -> Option<String> {
    let mut cmd = StdCommand::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    if let Some(name) = servername {
        cmd.args(["-servername", name]);
    }
    if let Some(p) = starttls {
        cmd.args(["-starttls", p]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let marker = "-----END CERTIFICATE-----";
    let end = text[start..].find(marker)? + start + marker.len();
    Some(text[start..end].to_string())
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Takes the appliance down (compose directly, so it works even when the
/// tool does not) when a scenario ends, failed or not.
pub struct Down {
    dir: PathBuf,
    image: String,
}

impl Down {
    pub fn new(dir: &Path, image: &str) -> Down {
        Down {
            dir: dir.to_path_buf(),
            image: image.to_string(),
        }
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = StdCommand::new("docker")
            .args([
                "compose",
                "--project-name",
                "chatmail",
                "--project-directory",
            ])
            .arg(&self.dir)
            .arg("--file")
            .arg(self.dir.join("docker/docker-compose.yaml"))
            .args(["down", "--remove-orphans", "--timeout", "30"])
            .env("CHATMAIL_IMAGE", &self.image)
            .status();
    }
}

/// Remove the restore points of `image` (`IMAGE-relay-COMMIT`) a suite
/// made.
pub fn remove_restore_points(image: &str) {
    let out = StdCommand::new("docker")
        .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .unwrap();
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        if name.starts_with(&format!("{image}-relay-")) {
            let _ = StdCommand::new("docker")
                .args(["image", "rm", name])
                .status();
        }
    }
}

/// The id of a local image, if present.
pub fn image_id(name: &str) -> Option<String> {
    let out = StdCommand::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", name])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The container's id and start time: the same only for the same
/// container, never restarted.
pub fn started_at(container: &str) -> String {
    let out = StdCommand::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.Id}} {{.State.StartedAt}}",
            container,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
