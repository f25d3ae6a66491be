//! Docker's data root on a small disk: a second Docker daemon whose data
//! root is an ext4 filesystem of the test's own (a sparse file on a loop
//! device; a tmpfs where there is none), the relay moved onto it with its
//! images. Its disk fills (a
//! file of the test's takes what is free) before an upgrade, at the start
//! of an upgrade's build and during a deploy beside the relay: each is
//! refused or fails cleanly, names the full data root and the command to
//! run next, and the relay serves on; `status` shows the full disk; with
//! space freed, the next `setup` completes.
//!
//! The machine's own daemon and its data root are not touched; the relay
//! on the machine's daemon is stopped for the phase (both would serve the
//! same ports on the host's network).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use super::{faults_ini, healthy, leftovers_in, now, run, tail, Flow, Run, Suite, IMAGE_F};
use crate::support::engine::*;

const MIB: u64 = 1 << 20;

/// The second daemon's exec root (short: containerd's sockets live
/// below it and a socket's path has at most 107 bytes).
const EXEC_ROOT: &str = "/run/chatmail-e2e-dataroot";
/// Its bridge and that bridge's address. A bridge of its own: with
/// `--bridge none` dockerd deletes the host's `docker0`, the machine's
/// daemon's bridge.
const BRIDGE: &str = "cm-e2e-dr0";
const BRIDGE_ADDR: &str = "10.231.77.1/24";

/// Remove what a second daemon leaves on the host: its network
/// namespace's mount below the exec root, the exec root, the bridge.
fn remove_host_leftovers() {
    let _ = StdCommand::new("umount")
        .arg(format!("{EXEC_ROOT}/netns/default"))
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(EXEC_ROOT);
    let _ = StdCommand::new("ip")
        .args(["link", "delete", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

/// The second daemon, its data root on a loop-mounted ext4; while it
/// lives, `DOCKER_HOST` names it, so the tool and every `docker` the
/// suite starts talk to it. Dropped: its containers removed, the daemon
/// stopped, the filesystem unmounted, `DOCKER_HOST` unset.
pub(super) struct SmallRoot {
    mount: PathBuf,
    daemon: std::process::Child,
}

/// Free bytes on the filesystem at `path`.
fn free(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bavail * st.f_frsize
}

fn image_size(name: &str) -> u64 {
    let out = StdCommand::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no size for the image {name}"))
}

impl SmallRoot {
    /// Make a `mib` MiB filesystem under `tmp`, start a daemon on it with
    /// the storage driver of the machine's daemon, and give it `images`
    /// (saved from the machine's daemon).
    fn start(tmp: &Path, mib: u64, images: &[&str]) -> SmallRoot {
        let driver = String::from_utf8(
            StdCommand::new("docker")
                .args(["info", "--format", "{{.Driver}}"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let file = tmp.join("dataroot.img");
        let mount = tmp.join("dataroot");
        fs::create_dir_all(&mount).unwrap();
        check(
            StdCommand::new("truncate")
                .arg("-s")
                .arg(format!("{mib}M"))
                .arg(&file),
            "make the data root's file",
        );
        check(
            StdCommand::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&file),
            "make its filesystem",
        );
        let looped = StdCommand::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        if !looped {
            // No loop device here: a tmpfs of the same size (what the
            // filler takes is then memory, for the phase only).
            eprintln!("faults: no loop device; the small data root is a tmpfs");
            let _ = fs::remove_file(&file);
            check(
                StdCommand::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={mib}m,mode=0711"),
                        "tmpfs",
                    ])
                    .arg(&mount),
                "mount a tmpfs as the data root",
            );
        }
        let config = tmp.join("dataroot-daemon.json");
        fs::write(
            &config,
            serde_json::json!({ "storage-driver": driver.trim() }).to_string(),
        )
        .unwrap();
        remove_host_leftovers();
        check(
            StdCommand::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]),
            "make the second daemon's bridge",
        );
        check(
            StdCommand::new("ip").args(["addr", "add", BRIDGE_ADDR, "dev", BRIDGE]),
            "give it an address",
        );
        check(
            StdCommand::new("ip").args(["link", "set", BRIDGE, "up"]),
            "bring it up",
        );
        let sock = tmp.join("dataroot.sock");
        let log = fs::File::create(tmp.join("dataroot-dockerd.log")).unwrap();
        let daemon = StdCommand::new("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(mount.join("docker"))
            .args(["--exec-root", EXEC_ROOT])
            .arg("--pidfile")
            .arg(tmp.join("dataroot-dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge", BRIDGE, "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let host = format!("unix://{}", sock.display());
        let small = SmallRoot { mount, daemon };
        let answers = || {
            StdCommand::new("docker")
                .args(["-H", &host, "version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        for _ in 0..300 {
            if answers() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            answers(),
            "the second dockerd did not answer (see {})",
            tmp.join("dataroot-dockerd.log").display()
        );
        // The images, from the machine's daemon into this one.
        check(
            StdCommand::new("sh").args([
                "-c",
                &format!(
                    "docker save {} | docker -H {host} load --quiet",
                    images.join(" ")
                ),
            ]),
            "move the relay's images onto the small data root",
        );
        // From here on every `docker` the suite or the tool starts talks
        // to this daemon. (Process-wide: the other tests of this binary
        // wait for the engine lock this suite holds.)
        std::env::set_var("DOCKER_HOST", &host);
        small
    }

    fn free(&self) -> u64 {
        free(&self.mount)
    }

    /// Take what is free but `leave` bytes with a file of the test's.
    fn fill(&self, leave: u64) {
        let filler = self.mount.join("filler");
        let have = fs::metadata(&filler).map(|m| m.len()).unwrap_or(0);
        let size = (have + self.free()).saturating_sub(leave);
        check(
            StdCommand::new("fallocate")
                .args(["-l", &size.to_string()])
                .arg(&filler),
            "fill the data root",
        );
        eprintln!("faults: the data root has {} MiB free", self.free() / MIB);
    }

    /// Free what [`SmallRoot::fill`] took.
    fn empty(&self) {
        let _ = fs::remove_file(self.mount.join("filler"));
    }
}

impl Drop for SmallRoot {
    fn drop(&mut self) {
        let ids = StdCommand::new("docker")
            .args(["ps", "--all", "--quiet"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = StdCommand::new("docker")
                .args(["rm", "--force", "--volumes", id])
                .status();
        }
        std::env::remove_var("DOCKER_HOST");
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.daemon),
            rustix::process::Signal::TERM,
        );
        let _ = self.daemon.wait();
        let _ = StdCommand::new("umount").arg(&self.mount).status();
        remove_host_leftovers();
    }
}

/// The relay/ checkout's commit.
fn head(dir: &Path) -> String {
    git(&dir.join("relay"), &["rev-parse", "HEAD"])
}

/// Start `args` and fill the data root `after` once its output says
/// `when`; the command must fail naming the full data root and `next`.
/// The moment of the fill.
fn full_during(
    s: &mut Suite,
    small: &SmallRoot,
    dir: &Path,
    name: &str,
    args: &[&str],
    (when, after): (&str, Duration),
    next: &str,
) -> f64 {
    let mut cmd = Run::start(dir, args, name);
    let started = cmd.wait_for(when, Duration::from_secs(300));
    std::thread::sleep(after);
    let fault = now();
    small.fill(MIB);
    let (code, out, _) = cmd.finish();
    if !started || code == Some(0) {
        s.problem(format!(
            "{name}: {} (exit {code:?})",
            if started {
                "it succeeded on a full disk"
            } else {
                "the step never started"
            }
        ));
    }
    if !(out.contains("ran out of space") && out.contains(next)) {
        s.problem(format!(
            "{name}: the message names neither the full disk nor `{next}`:\n{}",
            tail(&out, 10)
        ));
    }
    fault
}

/// The phase: the relay (`dir`, running the first release, the next one
/// tagged in its origin) moved onto a small data root, its disk filled
/// before and during an upgrade and during a deploy beside.
pub(super) fn phase(s: &mut Suite, dir: &Path, base: &str) {
    // The relay on the machine's daemon stops: the one on the small data
    // root serves the same ports.
    drop(Down::new(dir, IMAGE_F));
    let docker0 = Path::new("/sys/class/net/docker0");
    let had_docker0 = docker0.exists();
    let size = image_size(IMAGE_F);
    // The images, one upgrade's build beside them (the tool's own check:
    // the running image's size and 1 GiB) and room for the relay's
    // container and a deploy beside.
    let mib = (2 * size + (5 << 30) / 2) / MIB;
    let small = SmallRoot::start(&s.tmp, mib, &[IMAGE_F, base]);
    eprintln!(
        "faults: a data root of {mib} MiB, {} MiB free with the images ({} MiB)",
        small.free() / MIB,
        size / MIB
    );
    let (code, out, _) = run(
        dir,
        &["setup", "--skip-check", "cgroup-v2"],
        "setup on the small data root",
    );
    assert_eq!(code, Some(0), "setup on the small data root:\n{out}");
    healthy(dir, 60).expect("healthy on the small data root");
    let first = head(dir);
    let root = small.mount.join("docker").display().to_string();

    // Full before the upgrade: refused up front, nothing changed.
    let name = "upgrade on a full data root (refused)";
    small.fill(512 * MIB);
    let flow = Flow::start(name);
    std::thread::sleep(Duration::from_secs(2));
    let fault = now();
    let (code, out, _) = run(dir, &["upgrade"], name);
    if code == Some(0) || !(out.contains("not enough disk space") && out.contains(&root)) {
        s.problem(format!(
            "{name}: not refused naming {root} (exit {code:?}):\n{}",
            tail(&out, 10)
        ));
    }
    if head(dir) != first {
        s.problem(format!("{name}: relay/ moved"));
    }
    let status = tool_with_image(dir, IMAGE_F)
        .arg("status")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned()
        + &String::from_utf8_lossy(&status.stderr);
    if !(status.contains("Docker's data root") && status.contains(&root)) {
        s.problem(format!(
            "{name}: `status` does not show the full data root:\n{status}"
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rec = flow.stop();
    s.row(name, fault, rec, &[]);
    small.empty();

    // Full from the moment the build starts: the build fails, the cause
    // and the next command are named, relay/ goes back, the relay serves.
    let name = "data root full at the start of upgrade's build";
    let flow = Flow::start(name);
    std::thread::sleep(Duration::from_secs(2));
    let fault = full_during(
        s,
        &small,
        dir,
        name,
        &["upgrade"],
        ("Building", Duration::ZERO),
        "chatmail-docker upgrade",
    );
    if head(dir) != first {
        s.problem(format!("{name}: relay/ is not back at {first}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rec = flow.stop();
    s.row(name, fault, rec, &[]);
    small.empty();

    // Full during a deploy beside the relay (`setup` with a changed
    // setting): it fails, names the full disk, the relay serves on with
    // the old settings; with space freed, setup again completes.
    let name = "data root full during setup's deploy beside";
    fs::write(dir.join("chatmail.ini"), faults_ini(1200)).unwrap();
    let flow = Flow::start(name);
    std::thread::sleep(Duration::from_secs(2));
    // Three seconds into the side container's deploy, which writes in
    // its layer.
    let fault = full_during(
        s,
        &small,
        dir,
        name,
        &["setup", "--skip-check", "cgroup-v2"],
        ("Deploying", Duration::from_secs(3)),
        "chatmail-docker setup",
    );
    if let Some(c) = healthy(dir, 5) {
        let ini_in = exec(&c, &["cat", "/etc/chatmail/chatmail.ini"]);
        if ini_in.contains("max_user_send_per_minute = 1200") {
            s.problem(format!(
                "{name}: the new settings replaced the serving relay"
            ));
        }
    }
    if !leftovers_in(&[dir]).is_empty() {
        s.problem(format!(
            "{name}: left {:?} on the full disk",
            leftovers_in(&[dir])
        ));
    }
    small.empty();
    let (code, out, _) = run(
        dir,
        &["setup", "--skip-check", "cgroup-v2"],
        &format!("{name}: then"),
    );
    if code != Some(0) {
        s.problem(format!(
            "{name}: setup with space freed failed:\n{}",
            tail(&out, 20)
        ));
    }
    if let Some(c) = healthy(dir, 30) {
        let ini_in = exec(&c, &["cat", "/etc/chatmail/chatmail.ini"]);
        if !ini_in.contains("max_user_send_per_minute = 1200") {
            s.problem(format!(
                "{name}: setup again did not apply the new settings"
            ));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let rec = flow.stop();
    s.row(name, fault, rec, &[]);
    drop(Down::new(dir, IMAGE_F));
    drop(small);
    if had_docker0 && !docker0.exists() {
        s.problem("the machine's daemon lost its bridge docker0".to_string());
    }
}
