//! The integration tests' support kit: the one rule for a missing tool,
//! fake host roots, stand-in programs on a temp PATH, tree snapshots, and
//! (in [`certs`]) certificates and ACME layouts for the cert-watch tests,
//! (in [`migrate`]) fake bare-metal hosts for the migration tests, (in
//! [`engine`]) what the end-to-end suites (`tests/e2e/`) need of the
//! Docker engine and the real relay. Both test binaries use this one kit.
#![allow(dead_code)]

pub mod certs;
pub mod engine;
pub mod migrate;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const MOUNTINFO_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

pub const MOUNTINFO_HYBRID: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
";

pub const MOUNTINFO_V1: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:33 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
";

/// A fake host root with the given mountinfo and inotify values.
pub fn fake_root(dir: &Path, mountinfo: &str, instances: u64, watches: u64) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("proc/self")).unwrap();
    fs::write(root.join("proc/self/mountinfo"), mountinfo).unwrap();
    let ino = root.join("proc/sys/fs/inotify");
    fs::create_dir_all(&ino).unwrap();
    fs::write(ino.join("max_user_instances"), format!("{instances}\n")).unwrap();
    fs::write(ino.join("max_user_watches"), format!("{watches}\n")).unwrap();
    fs::create_dir_all(root.join("etc/sysctl.d")).unwrap();
    root
}

/// Write an executable stand-in script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A PATH holding only `bin`: the stand-ins are `#!/bin/sh` scripts using
/// builtins, and nothing else (the real docker) can be found.
pub fn isolated_path(bin: &Path) -> String {
    bin.display().to_string()
}

/// A PATH with `bin` first, then the test process's own PATH: for
/// stand-ins of some programs while the rest stay real. Pass it to one
/// command; the test process's environment is never changed.
pub fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Snapshot a tree: relative path -> (mode, size, content) for comparing
/// before and after a command that must change nothing.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let content = if m.is_file() {
            fs::read(e.path()).unwrap()
        } else if m.file_type().is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            Vec::new()
        };
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        out.insert(rel, (m.mode(), m.size(), content));
    }
    out
}

/// The real `docker` on this process's `PATH` (what a stand-in passes
/// the calls it does not answer itself on to).
pub fn real_docker() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("docker"))
        .find(|p| p.is_file())
}

/// A PATH whose `docker` is the real one, except that `docker compose ...
/// ps` finds no container: for tests that need the real Compose while a
/// container of the project `chatmail` from another directory (an
/// end-to-end run) may exist on the engine, which the tool would rightly
/// refuse to act on. The stand-in is written to `bin`.
pub fn path_with_no_containers(bin: &Path) -> String {
    let real = real_docker().unwrap_or_else(|| PathBuf::from("/usr/bin/docker"));
    script(
        bin,
        "docker",
        &format!(
            "[ \"$1\" = compose ] && case \" $* \" in *\" ps \"*) exit 0;; esac\nexec '{}' \"$@\"",
            real.display()
        ),
    );
    path_with(bin)
}

/// Held while a test drives the appliance on the machine's Docker engine:
/// the appliance uses the host's network (ports 25, 443, ...) and the
/// Compose project `chatmail`, so two such tests, from this run or from
/// another checkout's, would take each other's ports and container. An
/// exclusive lock on a file every checkout shares; released when the guard
/// is dropped (or the process dies).
pub fn engine_lock() -> fs::File {
    let path = std::env::temp_dir().join("chatmail-docker-engine.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    if f.try_lock().is_err() {
        eprintln!("waiting for the Docker engine ({} is held)", path.display());
        f.lock()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    }
    f
}

/// Whether CI wants every tool: `CI` set to anything but empty, `false` or
/// `0` (`CI=true` in .ci/run and on hosted runners).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "false" | "0"))
}

/// Whether `program args` starts and succeeds (output discarded).
pub fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The real `docker compose` v2, if available.
pub fn have_compose_v2() -> bool {
    std::process::Command::new("docker")
        .args(["compose", "version", "--short"])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .trim_start_matches('v')
                    .starts_with('2')
        })
        .unwrap_or(false)
}

/// The one rule for a test that needs a tool: `true` when it is
/// `available`; otherwise a failure under CI ([`in_ci`]), elsewhere `false`
/// with the reason printed, and the test returns early (skipped).
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if in_ci() {
        panic!("{what} is required in CI but missing");
    }
    eprintln!("skipping: {what} is not available");
    false
}

/// [`require`] for a tool that answers `tool args`.
pub fn have(tool: &str, args: &[&str]) -> bool {
    require(runs(tool, args), tool)
}

/// A small tmpfs mounted at a directory, unmounted when dropped.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` (the test skips; a failure under CI) unless we may mount.
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        if !require(
            rustix::process::geteuid().is_root(),
            "root (to mount a small tmpfs)",
        ) {
            return None;
        }
        fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        Some(SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fail with what the command wrote to stderr unless it succeeded.
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fail with what the command wrote unless it succeeded; its stdout.
pub fn ok_stdout(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Fail with what the command wrote to stderr unless it exited with `code`.
pub fn assert_code(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the command wrote, stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `cmd` with `input` on its stdin; its output (stdout and stderr
/// captured).
pub fn feed(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The check `id` in a `preflight --json` report.
pub fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}"))
}

/// The message of a check in a `preflight --json` report.
pub fn message(check: &serde_json::Value) -> &str {
    check["message"].as_str().unwrap()
}

/// A xorshift generator started at `seed`: random enough for generated
/// test inputs, and the same every run, so failures reproduce.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// The binary under test.
pub fn bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("chatmail-docker").unwrap()
}

/// A minimal deployment directory: a compose file of the appliance's shape.
pub fn minimal_deployment(dir: &Path) -> PathBuf {
    let d = dir.join("deploy");
    fs::create_dir_all(d.join("docker")).unwrap();
    fs::write(
        d.join("docker/docker-compose.yaml"),
        "services:\n  chatmail:\n    image: chatmail-docker-test-absent:never\n    build:\n      context: ${RELAY_SRC:-./relay}\n    env_file: .env\n    environment:\n      CMDEPLOY_STAGES: ${CMDEPLOY_STAGES:-configure,activate}\n",
    )
    .unwrap();
    d
}

/// [params] of an ini text with iniconfig's rules: `#`/`;` comments, blank
/// lines ignored, indented lines continue the previous value (joined with
/// "\n"), surrounding whitespace stripped.
pub fn ini_params(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    let mut last: Option<String> = None;
    for raw in text.lines() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                let v: &mut String = out.get_mut(k).unwrap();
                if !v.is_empty() {
                    v.push('\n');
                }
                v.push_str(t);
            }
            continue;
        }
        if let Some(s) = t.strip_prefix('[') {
            section = s.split(']').next().unwrap_or_default().to_string();
            last = None;
            continue;
        }
        if section != "params" {
            continue;
        }
        if let Some((k, v)) = t.split_once('=').or_else(|| t.split_once(':')) {
            let k = k.trim().to_string();
            out.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    out
}

/// Make a FIFO at `p` (mode 0600): what a reader must refuse, never block on.
pub fn mkfifo(p: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// `git ARGS` in `dir` with a test identity, `main` as the first branch and
/// `git clone -q ORIGIN DEST` (run in DEST's parent).
pub fn clone_repo(origin: &Path, dest: &Path) {
    git(
        dest.parent().unwrap(),
        &[
            "clone",
            "-q",
            origin.to_str().unwrap(),
            dest.to_str().unwrap(),
        ],
    );
}

/// no detached-HEAD advice; its output, trimmed (a failure fails the test).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
        .args(["-c", "init.defaultBranch=main"])
        .args(["-c", "advice.detachedHead=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The string `key` of the JSON object in the file `path`; "" when the
/// file, the key or a string there is missing (a state file a killed run
/// may not have written yet).
pub fn json_string(path: &Path, key: &str) -> String {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v[key].as_str().map(str::to_string))
        .unwrap_or_default()
}
