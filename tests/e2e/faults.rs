//! Faults at any moment, with the real relay: while a mail flow runs
//! (`support::engine::mailflow`: an outside sender on 25, a local account
//! on 587, IMAP on 993, every few hundred milliseconds), a command is
//! killed, the Docker daemon restarts, a disk is full or the host
//! "reboots"; then every message the relay accepted must be in its
//! mailbox, the relay healthy, and nothing temporary left on disk.
//!
//! Kill points are chosen by time: each command is run once undisturbed
//! to measure it, then started again and killed (SIGKILL to its process
//! group: the tool and every `docker` it started, as when its unit or the
//! machine's OOM killer ends it) at fractions `(i + 1/2) / n` of that
//! duration, so the points spread over its whole run whatever its steps
//! are. After each kill the natural next command runs and must succeed:
//! the same again (`backup`, `restore`, `setup`, `upgrade`, followed by
//! `upgrade --rollback` to start the next point from the same release).
//!
//! `CHATMAIL_FAULT_POINTS` sets `n` for every command (the full matrix,
//! `benches/faults.sh`, uses 10); unset, the CI subset kills `backup`,
//! `restore` and `cert-watch` at 2 points, and `setup` and `upgrade` once,
//! 2 s after they said "Deploying" (in their deploy beside the relay; no
//! measured run needed), and restarts the daemon during upgrade's swap
//! only (the full matrix also during setup's). `CHATMAIL_FAULTS` picks
//! groups of faults (`backup,restore,setup,upgrade,daemon,disk,reboot,
//! certwatch,dataroot`). Every fault is a row of the table printed at the
//! end (lines starting `faults|`):
//! seconds from the fault until 25 accepted mail again and 993 greeted
//! again, the longest outage of each after the fault (which tells the
//! fault's own from a swap the next command made later), accepted and
//! delivered messages, what was left on disk. The test fails after the
//! table when any row broke a promise.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod certwatch;
mod dataroot;

use crate::support::engine::mailflow::{self, now, Flow, Record};
use crate::support::engine::relay::*;
use crate::support::engine::*;

/// This suite's image, apart from the other suites'.
const IMAGE_F: &str = "chatmail-relay:e2e-faults";
const GOOD: &str = RELEASE_1_13;
const GOOD_TEXT: &str = RELEASE_1_13_TEXT;
/// The side container of a deploy beside the relay.
const SIDE: &str = "chatmail-upgrade-stage";

/// The full matrix (`benches/faults.sh`: `CHATMAIL_FAULT_POINTS` set), not
/// the CI subset.
fn full_matrix() -> bool {
    std::env::var_os("CHATMAIL_FAULT_POINTS").is_some()
}

/// Kill points for a command: `CHATMAIL_FAULT_POINTS` for every command
/// when set (the full matrix), else the CI subset's `ci`.
fn points(ci: usize) -> usize {
    std::env::var("CHATMAIL_FAULT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(ci)
}

/// Whether the group of faults `name` runs: `CHATMAIL_FAULTS` lists the
/// groups (`backup,restore,setup,upgrade,daemon,disk,reboot,certwatch,
/// dataroot`);
/// unset, all.
fn want(name: &str) -> bool {
    match std::env::var("CHATMAIL_FAULTS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|g| g.trim() == name),
        _ => true,
    }
}

/// `(i + 1/2) / n` for i in 0..n.
fn fractions(n: usize) -> Vec<f64> {
    (0..n).map(|i| (i as f64 + 0.5) / n as f64).collect()
}

/// When a kill falls: a time after the command started, or a time after
/// it first printed a text (the CI subset's one point in a chosen step,
/// which needs no measured run).
#[derive(Clone, Copy)]
enum At {
    Time(Duration),
    Said(&'static str, Duration),
}

/// The kill points of a command with their row names: spread over the
/// duration `measure` returns (the full matrix, `CHATMAIL_FAULT_POINTS`
/// set), else the CI subset's one point, `ci`.
fn kill_points(what: &str, ci: (&str, At), measure: impl FnOnce() -> f64) -> Vec<(String, At)> {
    if !full_matrix() {
        return vec![(format!("{what} killed {}", ci.0), ci.1)];
    }
    let t = measure();
    fractions(points(1))
        .into_iter()
        .map(|f| {
            (
                format!("{what} killed at {:.0}%", f * 100.0),
                At::Time(Duration::from_secs_f64(t * f)),
            )
        })
        .collect()
}

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(base_image)
}

/// The suite's chatmail.ini: the flow's account sends more than the
/// relay's default 60 messages a minute; `n` makes a changed setting.
fn faults_ini(n: u32) -> String {
    ini(&format!("max_user_send_per_minute = {n}\n"))
}

/// The tool as a child process in its own process group, its output
/// collected as it comes.
struct Run {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
    started: Instant,
    what: String,
}

impl Run {
    fn start(dir: &Path, args: &[&str], what: &str) -> Run {
        let mut cmd = StdCommand::new(assert_cmd::cargo::cargo_bin("chatmail-docker"));
        cmd.env("CHATMAIL_IMAGE", IMAGE_F)
            .env("CHATMAIL_BUILD_CA", HOST_CA)
            .env("CHATMAIL_BASE_IMAGE", base())
            .env("NO_COLOR", "1")
            .env_remove("CMDEPLOY_STAGES")
            .env_remove("RECREATE_VENV")
            .env_remove("FORCE_REINIT_INI_FILE")
            .env_remove("DEBUG_COMMANDS_ENABLED")
            .envs(filtermail_env(dir))
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let tag = what.to_string();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            let tag = tag.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("  {tag} | {line}");
                    out.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        Run {
            child,
            out,
            started: Instant::now(),
            what: what.to_string(),
        }
    }

    /// Whether `text` came within `limit` (not once the command ended
    /// without it).
    fn wait_for(&mut self, text: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while !self.out.lock().unwrap().contains(text) {
            if start.elapsed() > limit || self.ended() {
                // What it printed last may still be on its way.
                std::thread::sleep(Duration::from_millis(200));
                return self.out.lock().unwrap().contains(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Whether it ended by itself already.
    fn ended(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGKILL to the tool and everything it started.
    fn kill(&self) {
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::KILL,
        );
    }

    /// SIGTERM to the tool and everything it started (how its unit is
    /// stopped).
    fn term(&self) {
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
    }

    /// The exit code (`None`: killed) and the output.
    fn finish(mut self) -> (Option<i32>, String, f64) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let out = self.out.lock().unwrap().clone();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "--- {}: exit {:?} after {secs:.1}s",
            self.what,
            status.code()
        );
        (status.code(), out, secs)
    }
}

/// Run the tool to its end: (exit code, output, seconds).
fn run(dir: &Path, args: &[&str], what: &str) -> (Option<i32>, String, f64) {
    Run::start(dir, args, what).finish()
}

/// Run the tool, which must succeed; its output and duration.
fn must(dir: &Path, args: &[&str], what: &str) -> (String, f64) {
    let (code, out, secs) = run(dir, args, what);
    assert_eq!(code, Some(0), "{what} failed:\n{out}");
    (out, secs)
}

/// What a fault did (`None`: never served again, or not known).
#[derive(Default)]
struct Row {
    fault: String,
    back_25: Option<f64>,
    back_993: Option<f64>,
    /// The longest outage after the fault on 25 and on 993.
    out_25: Option<f64>,
    out_993: Option<f64>,
    accepted: usize,
    delivered: usize,
    leftovers: Vec<String>,
}

struct Suite {
    dir: PathBuf,
    tmp: PathBuf,
    backups: PathBuf,
    rows: Vec<Row>,
    problems: Vec<String>,
    /// Deployed images without a name before the suite began.
    dangling_before: Vec<String>,
}

/// Deployed images without a name (what a deploy beside killed between
/// its commit and its tag would leave), each with when it was made (Unix
/// seconds).
fn dangling_deployed() -> Vec<(String, f64)> {
    let out = StdCommand::new("docker")
        .args([
            "images",
            "--quiet",
            "--no-trunc",
            "--filter",
            "dangling=true",
            "--filter",
            "label=org.chatmail-docker.deployed",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|id| {
            let made = StdCommand::new("docker")
                .args(["image", "inspect", "--format", "{{.Created}}", id])
                .output()
                .ok()
                .and_then(|o| {
                    humantime::parse_rfc3339_weak(String::from_utf8_lossy(&o.stdout).trim()).ok()
                })
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            (id.to_string(), made)
        })
        .collect()
}

/// Temporary files, directories and containers a run may leave: in each
/// directory and its `data/`.
fn leftovers_in(dirs: &[&Path]) -> Vec<String> {
    let mut found = Vec::new();
    for d in dirs {
        let lock = d.join("relay/.git/index.lock");
        if lock.exists() {
            found.push(lock.display().to_string());
        }
        for sub in [d.to_path_buf(), d.join("data"), d.join("backups")] {
            let Ok(list) = fs::read_dir(&sub) else {
                continue;
            };
            for e in list.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".chatmail-restore.")
                    || name.ends_with(".partial")
                    || (name.contains(".chatmail-docker.") && name.ends_with(".tmp"))
                    || name == ".upgrade-stage"
                {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    let out = StdCommand::new("docker")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("name=^{SIDE}$"),
        ])
        .output()
        .unwrap();
    if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
        found.push(format!("container {SIDE}"));
    }
    found
}

/// The relay's container once healthy, by itself (bounded by a number of
/// looks, not by a time in an assertion); `None` when it never was.
fn healthy(dir: &Path, looks: usize) -> Option<String> {
    for _ in 0..looks {
        let out = tool_with_image(dir, IMAGE_F)
            .args(["status", "--json"])
            .output()
            .unwrap();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if v["health"] == "healthy" && v["state"] == "running" {
                if let Some(c) = v["container"].as_str() {
                    return Some(c.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    None
}

impl Suite {
    fn problem(&mut self, what: String) {
        eprintln!("faults: PROBLEM: {what}");
        self.problems.push(what);
    }

    /// The row of a fault at `fault` (Unix seconds) whose flow is `rec`:
    /// the relay healthy, Postfix asked to try deferred mail now, every
    /// accepted message looked for, what was left on disk.
    fn row(&mut self, fault: &str, at: f64, rec: Result<Record, String>, extra: &[&Path]) {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                self.problem(format!("{fault}: {e}"));
                self.rows.push(Row {
                    fault: fault.to_string(),
                    ..Row::default()
                });
                return;
            }
        };
        let Some(container) = healthy(&self.dir, 120) else {
            self.problem(format!("{fault}: the relay is not healthy afterwards"));
            // The next faults need a relay: `setup` brings it back.
            let _ = run(
                &self.dir,
                &["setup", "--skip-check", "cgroup-v2"],
                "setup to recover",
            );
            self.rows.push(Row {
                fault: fault.to_string(),
                accepted: rec.accepted().len(),
                ..Row::default()
            });
            return;
        };
        mailflow::flush_queue(&container);
        let d = rec.delivery(120);
        let mut dirs: Vec<&Path> = vec![&self.dir, &self.backups];
        dirs.extend(extra);
        let mut left = leftovers_in(&dirs);
        let files_left = !left.is_empty();
        // An unnamed deployed image (what a kill during the deploy's
        // `docker commit` leaves once the daemon finishes that commit) is
        // reported in the table but fails no row: the next deploy that
        // names its image removes it, and the count is the daemon's, not
        // this row's alone (a commit may finish after this row looked).
        let dangling = dangling_deployed();
        for (id, made) in &dangling {
            if !self.dangling_before.contains(id) {
                left.push(format!(
                    "an unnamed deployed image ({}) made {:.0} s {} the fault",
                    id.trim_start_matches("sha256:").get(..12).unwrap_or(id),
                    (made - at).abs(),
                    if *made < at { "before" } else { "after" }
                ));
            }
        }
        self.dangling_before = dangling.into_iter().map(|(id, _)| id).collect();
        let row = Row {
            fault: fault.to_string(),
            back_25: rec.back_after(25, at),
            back_993: rec.back_after(993, at),
            out_25: rec.longest_outage(25, at),
            out_993: rec.longest_outage(993, at),
            accepted: d.accepted,
            delivered: d.delivered,
            leftovers: left,
        };
        eprintln!(
            "faults: {fault}: 25 back after {:?} s, 993 after {:?} s (longest outages {:?} s and {:?} s), {}/{} delivered ({} and {} failed attempts on 25/587), left: {:?}",
            row.back_25,
            row.back_993,
            row.out_25,
            row.out_993,
            row.delivered,
            row.accepted,
            rec.failures(25),
            rec.failures(587),
            row.leftovers
        );
        if d.accepted == 0 {
            self.problem(format!("{fault}: the flow had no message accepted"));
        }
        if !d.missing.is_empty() {
            self.problem(format!(
                "{fault}: accepted but not delivered: {:?}",
                d.missing
            ));
        }
        if files_left {
            self.problem(format!("{fault}: left behind: {:?}", row.leftovers));
        }
        if row.back_25.is_none() || row.back_993.is_none() {
            self.problem(format!("{fault}: 25 or 993 never served again"));
        }
        self.rows.push(row);
    }

    fn table(&self) {
        eprintln!("faults|fault|25 back (s)|993 back (s)|longest outage 25/993 (s)|accepted|delivered|left on disk");
        let secs = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.1}"));
        for r in &self.rows {
            eprintln!(
                "faults|{}|{}|{}|{}/{}|{}|{}|{}",
                r.fault,
                secs(r.back_25),
                secs(r.back_993),
                secs(r.out_25),
                secs(r.out_993),
                r.accepted,
                r.delivered,
                if r.leftovers.is_empty() {
                    "nothing".to_string()
                } else {
                    r.leftovers.join(", ")
                }
            );
        }
    }

    /// Start `args`, SIGKILL it at `at` (unless it ended before), then run `next`, which must succeed; a flow runs
    /// throughout. Returns whether the kill hit, and what the next command
    /// said.
    fn kill_then(
        &mut self,
        name: &str,
        dir: &Path,
        args: &[&str],
        at: At,
        next: &[&str],
        extra: &[&Path],
    ) -> (bool, String) {
        let flow = Flow::start(name);
        std::thread::sleep(Duration::from_secs(2));
        let mut killed = Run::start(dir, args, name);
        match at {
            At::Time(t) => std::thread::sleep(t),
            At::Said(text, t) => {
                if !killed.wait_for(text, Duration::from_secs(1200)) {
                    self.problem(format!("{name}: it never said {text:?}"));
                }
                std::thread::sleep(t);
            }
        }
        let hit = !killed.ended();
        let fault = now();
        killed.kill();
        let (code, out, _) = killed.finish();
        if !hit {
            eprintln!("faults: {name}: the command ended before the kill ({code:?})");
        }
        // A run that finished before the kill needs nothing after it (a
        // restore again would rightly refuse the restored directory).
        let (ncode, nout) = if !hit && code == Some(0) {
            (Some(0), String::new())
        } else {
            let (c, o, _) = run(dir, next, &format!("{name}: then"));
            (c, o)
        };
        if ncode != Some(0) {
            self.problem(format!(
                "{name}: the next command {next:?} failed ({ncode:?}):\n{}\n(the killed run said:\n{})",
                tail(&nout, 30),
                tail(&out, 10)
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
        let rec = flow.stop();
        let label = if hit {
            name.to_string()
        } else {
            format!("{name} (ended before the kill)")
        };
        self.row(&label, fault, rec, extra);
        (hit, nout)
    }
}

/// `docker` answers.
fn daemon_answers() -> bool {
    runs("docker", &["version", "--format", "{{.Server.Version}}"])
}

fn dockerd_pid() -> Option<i32> {
    let out = StdCommand::new("pidof").arg("dockerd").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Stops the Docker daemon (`signal`, then waits for it to exit) and
/// starts it again as `.ci/run` does; started again when dropped, so a
/// failing test never leaves the machine without its daemon.
struct Daemon;

impl Daemon {
    fn stop(signal: rustix::process::Signal) -> Daemon {
        let pid = dockerd_pid().expect("a running dockerd (the tests start it as a plain process)");
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), signal)
            .unwrap();
        for _ in 0..1200 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "dockerd {pid} did not exit"
        );
        Daemon
    }

    /// Start it again; the moment it answers (Unix seconds).
    fn start(self) -> f64 {
        let at = start_daemon();
        std::mem::forget(self);
        at
    }
}

fn start_daemon() -> f64 {
    if !daemon_answers() {
        StdCommand::new("sh")
            .args(["-c", "setsid dockerd >>/tmp/dockerd.log 2>&1 </dev/null &"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .status()
            .unwrap();
    }
    for _ in 0..600 {
        if daemon_answers() {
            return now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("dockerd did not answer after its start (see /tmp/dockerd.log)");
}

impl Drop for Daemon {
    fn drop(&mut self) {
        start_daemon();
    }
}

/// The names of files in `dir` (sorted), for a listing in a message.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|l| {
            l.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Files (path, size) of a restored deployment, for comparing two
/// restores of the same archive.
fn tree_of(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

fn page() -> String {
    mailcheck(&["--page"])["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn upgrade_phase(dir: &Path) -> String {
    crate::support::json_string(&dir.join("data/.upgrade-state.json"), "phase")
}

/// Mail of an account no one logs into, `mib` MiB of files that do not
/// compress, in the relay's mailboxes: backups and restores then take
/// long enough to be killed in the middle of their work.
fn bulk_mail(dir: &Path, mib: usize) {
    let cur = dir.join(format!(
        "data/chatmail/vmail/mail/{DOMAIN}/bulk@{DOMAIN}/cur"
    ));
    fs::create_dir_all(&cur).unwrap();
    let mut next = xorshift(0x0b17_da7a);
    for i in 0..mib * 4 {
        let body: Vec<u8> = (0..(256 << 10) / 8)
            .flat_map(|_| next().to_le_bytes())
            .collect();
        fs::write(cur.join(format!("1700000000.M{i}.bulk:2,S")), body).unwrap();
    }
}

#[test]
fn faults() {
    let Some((_engine, total, _, tmp)) = engine_test("chatmail-e2e-faults") else {
        return;
    };
    // The origin: the snapshot on main; the deployment's relay/ a clone.
    let (origin, dir, first) = origin_and_deployment(tmp.path());
    fs::write(dir.join("chatmail.ini"), faults_ini(1000)).unwrap();
    let _down = Down::new(&dir, IMAGE_F);
    let mut s = Suite {
        dir: dir.clone(),
        tmp: tmp.path().to_path_buf(),
        backups: tmp.path().join("backups"),
        rows: Vec::new(),
        problems: Vec::new(),
        dangling_before: dangling_deployed().into_iter().map(|(id, _)| id).collect(),
    };
    let backups = s.backups.display().to_string() + "/";
    must(
        &dir,
        &["setup", "--rebuild", "--skip-check", "cgroup-v2"],
        "setup",
    );
    healthy(&dir, 30).expect("healthy after setup");

    // backup, killed: the next backup completes and removes what the
    // killed one left; the directory's newest chain restores.
    bulk_mail(&dir, 128);
    // Full backups: every run does the same work, so the measured one
    // spreads the points over the killed ones.
    let (_, t_backup) = must(&dir, &["backup", "--full", &backups], "backup (measured)");
    for f in fractions(points(2)).into_iter().filter(|_| want("backup")) {
        let name = format!("backup killed at {:.0}%", f * 100.0);
        s.kill_then(
            &name,
            &dir,
            &["backup", "--full", &backups],
            At::Time(Duration::from_secs_f64(t_backup * f)),
            &["backup", "--full", &backups],
            &[],
        );
        let check_dir = tmp.path().join("check");
        let _ = fs::remove_dir_all(&check_dir);
        fs::create_dir_all(&check_dir).unwrap();
        let (code, out, _) = run(
            &check_dir,
            &["restore", "--dry-run", &backups],
            "restore --dry-run of the backups",
        );
        if code != Some(0) {
            s.problem(format!("{name}: the backups do not restore: {out}"));
        }
    }

    // restore, killed: the same again completes, into the same directory,
    // the same tree as an undisturbed restore, nothing temporary left.
    let clean = tmp.path().join("restored-clean");
    fs::create_dir_all(&clean).unwrap();
    let (_, t_restore) = must(&clean, &["restore", &backups], "restore (measured)");
    let clean_tree = tree_of(&clean);
    for (i, f) in fractions(points(2))
        .into_iter()
        .enumerate()
        .filter(|_| want("restore"))
    {
        let target = tmp.path().join(format!("restored-{i}"));
        fs::create_dir_all(&target).unwrap();
        let name = format!("restore killed at {:.0}%", f * 100.0);
        s.kill_then(
            &name,
            &target,
            &["restore", &backups],
            At::Time(Duration::from_secs_f64(t_restore * f)),
            &["restore", &backups],
            &[&target],
        );
        if tree_of(&target) != clean_tree {
            s.problem(format!(
                "{name}: the restore differs from an undisturbed one: {:?}",
                names_in(&target)
            ));
        }
    }

    // setup with changed settings (deploy beside, swap), killed: setup
    // again completes and the container has the new settings.
    let setup_points = if want("setup") {
        kill_points(
            "setup",
            (
                "2 s into its deploy beside",
                At::Said("Deploying", Duration::from_secs(2)),
            ),
            || {
                fs::write(dir.join("chatmail.ini"), faults_ini(1001)).unwrap();
                must(
                    &dir,
                    &["setup", "--skip-check", "cgroup-v2"],
                    "setup (measured)",
                )
                .1
            },
        )
    } else {
        Vec::new()
    };
    for (i, (name, at)) in setup_points.into_iter().enumerate() {
        let value = 1002 + i as u32;
        fs::write(dir.join("chatmail.ini"), faults_ini(value)).unwrap();
        let (hit, next) = s.kill_then(
            &name,
            &dir,
            &["setup", "--skip-check", "cgroup-v2"],
            at,
            &["setup", "--skip-check", "cgroup-v2"],
            &[],
        );
        // The killed run had written the new settings to .env: the next
        // one still deploys them beside the relay before the swap, not in
        // the new container while the relay is down.
        if hit && matches!(at, At::Said(..)) && !next.contains("Deploying") {
            s.problem(format!(
                "{name}: the next setup did not deploy beside the relay:\n{}",
                tail(&next, 15)
            ));
        }
        if let Some(c) = healthy(&dir, 5) {
            let ini_in = exec(&c, &["cat", "/etc/chatmail/chatmail.ini"]);
            if !ini_in.contains(&format!("max_user_send_per_minute = {value}")) {
                s.problem(format!("{name}: the container runs old settings"));
            }
        }
    }

    // Release 1.13.0: the upgrade suite's tree, so one image build serves
    // both suites.
    release(&origin, GOOD, release_1_13);
    let restore_point = format!("{IMAGE_F}-relay-{}", &first[..12]);
    // The Docker daemon restarted during upgrade's swap: the relay comes
    // back by itself; the tool says what happened and what to run. This
    // first upgrade also builds and deploys what later ones find in
    // Docker's cache.
    if want("daemon") {
        let name = "dockerd restarted during upgrade's swap";
        let flow = Flow::start(name);
        std::thread::sleep(Duration::from_secs(2));
        let mut run_up = Run::start(&dir, &["upgrade"], "upgrade");
        assert!(
            run_up.wait_for("Swapping", Duration::from_secs(1200)),
            "no swap"
        );
        std::thread::sleep(Duration::from_secs(1));
        let fault = now();
        let daemon = Daemon::stop(rustix::process::Signal::TERM);
        daemon.start();
        let (code, out, _) = run_up.finish();
        let by_itself = healthy(&dir, 60).is_some();
        if !by_itself {
            s.problem(format!("{name}: the relay did not come back by itself"));
        }
        if code != Some(0) && !out.contains("chatmail-docker") {
            s.problem(format!(
                "{name}: exit {code:?} without naming what to run next:\n{}",
                tail(&out, 15)
            ));
        }
        if code != Some(0) {
            let (c2, o2, _) = run(&dir, &["upgrade"], "upgrade again");
            if c2 != Some(0) {
                s.problem(format!("{name}: upgrade again failed: {}", tail(&o2, 20)));
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let rec = flow.stop();
        s.row(name, fault, rec, &[]);
        must(&dir, &["upgrade", "--rollback"], "upgrade --rollback");
    }

    // upgrade, killed: upgrade again completes (the new release serves,
    // the restore point is there, the state says done), then --rollback.
    if want("upgrade") && !want("daemon") {
        // The first upgrade builds and deploys what later ones find in
        // Docker's cache.
        must(&dir, &["upgrade"], "upgrade (first)");
        must(
            &dir,
            &["upgrade", "--rollback"],
            "upgrade --rollback (first)",
        );
    }
    let upgrade_points = if want("upgrade") {
        kill_points(
            "upgrade",
            (
                "2 s into its deploy beside",
                At::Said("Deploying", Duration::from_secs(2)),
            ),
            || {
                let t = must(&dir, &["upgrade"], "upgrade (measured)").1;
                must(
                    &dir,
                    &["upgrade", "--rollback"],
                    "upgrade --rollback (measured)",
                );
                t
            },
        )
    } else {
        Vec::new()
    };
    for (name, at) in upgrade_points {
        s.kill_then(&name, &dir, &["upgrade"], at, &["upgrade"], &[]);
        if !page().contains(GOOD_TEXT) {
            s.problem(format!("{name}: the new release does not serve"));
        }
        if image_id(&restore_point).is_none() {
            s.problem(format!("{name}: the restore point {restore_point} is gone"));
        }
        if upgrade_phase(&dir) != "done" {
            s.problem(format!(
                "{name}: the upgrade state says {:?}",
                upgrade_phase(&dir)
            ));
        }
        let (code, out, _) = run(&dir, &["upgrade", "--rollback"], "upgrade --rollback");
        if code != Some(0) || page().contains(GOOD_TEXT) {
            s.problem(format!(
                "{name}: --rollback afterwards failed: {}",
                tail(&out, 20)
            ));
        }
    }

    // The Docker daemon restarted during setup's swap: the full matrix
    // only (the CI subset restarts it during upgrade's swap, above, which
    // ends in the same `docker compose up`).
    if want("daemon") && full_matrix() {
        let name = "dockerd restarted during setup's swap";
        fs::write(dir.join("chatmail.ini"), faults_ini(1100)).unwrap();
        let flow = Flow::start(name);
        std::thread::sleep(Duration::from_secs(2));
        let mut run_setup = Run::start(&dir, &["setup", "--skip-check", "cgroup-v2"], "setup");
        assert!(
            run_setup.wait_for("Starting", Duration::from_secs(1200)),
            "setup never started the container"
        );
        let fault = now();
        let daemon = Daemon::stop(rustix::process::Signal::TERM);
        daemon.start();
        let (code, out, _) = run_setup.finish();
        let by_itself = healthy(&dir, 60).is_some();
        if code != Some(0) && !out.contains("chatmail-docker") {
            s.problem(format!(
                "{name}: exit {code:?} without naming what to run next:\n{}",
                tail(&out, 15)
            ));
        }
        if code != Some(0) || !by_itself {
            let (c2, o2, _) = run(&dir, &["setup", "--skip-check", "cgroup-v2"], "setup again");
            if c2 != Some(0) {
                s.problem(format!("{name}: setup again failed: {}", tail(&o2, 20)));
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let rec = flow.stop();
        s.row(name, fault, rec, &[]);
    }

    // A full disk under a backup, then under a restore: failed cleanly,
    // named; the relay serves on; nothing partial left.
    for (name, sub, what) in [
        ("backup onto a full disk", "full-backups", "backup"),
        ("restore onto a full disk", "full-restore", "restore"),
    ] {
        if !want("disk") {
            break;
        }
        let full = tmp.path().join(sub);
        let _disk = SmallDisk::mount(&full, "256k").expect("root, to mount a small tmpfs");
        let flow = Flow::start(name);
        std::thread::sleep(Duration::from_secs(2));
        let fault = now();
        let (code, out, _) = if what == "backup" {
            let f = full.display().to_string() + "/";
            run(&dir, &["backup", &f], name)
        } else {
            run(&full, &["restore", &backups], name)
        };
        if code == Some(0) {
            s.problem(format!("{name}: the {what} succeeded on a 256 KiB disk"));
        }
        if !(out.contains("no space") && out.contains(&full.display().to_string())) {
            s.problem(format!(
                "{name}: the message does not name the full disk:\n{}",
                tail(&out, 10)
            ));
        }
        if !names_in(&full).is_empty() {
            s.problem(format!("{name}: left {:?}", names_in(&full)));
        }
        std::thread::sleep(Duration::from_secs(2));
        let rec = flow.stop();
        s.row(name, fault, rec, &[&full]);
    }

    // A reboot, as after a power cut: the daemon and the container's init
    // killed, the daemon started again; mail that waited in Postfix's
    // queue (delivery held by stopping Dovecot) is delivered, and the
    // relay is healthy without any command.
    if want("reboot") {
        let name = "reboot (dockerd and the container killed)";
        let container = healthy(&dir, 30).expect("healthy before the reboot");
        let flow = Flow::start(name);
        std::thread::sleep(Duration::from_secs(2));
        exec(&container, &["systemctl", "stop", "dovecot"]);
        std::thread::sleep(Duration::from_secs(3));
        let waiting = mailflow::queued(&container);
        eprintln!("faults: {waiting} messages in Postfix's queue at the power cut");
        if waiting == 0 {
            s.problem(format!("{name}: no mail waited in the queue"));
        }
        let init = StdCommand::new("docker")
            .args(["inspect", "--format", "{{.State.Pid}}", &container])
            .output()
            .unwrap();
        let init: i32 = String::from_utf8_lossy(&init.stdout)
            .trim()
            .parse()
            .unwrap();
        let fault = now();
        let daemon = Daemon::stop(rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(init).unwrap(),
            rustix::process::Signal::KILL,
        );
        std::thread::sleep(Duration::from_secs(1));
        let answered = daemon.start();
        let back = healthy(&dir, 90);
        if back.is_none() {
            s.problem(format!("{name}: the relay did not come back by itself"));
        }
        std::thread::sleep(Duration::from_secs(3));
        let rec = flow.stop();
        eprintln!(
            "faults: {name}: the daemon answered {:.1} s after the fault",
            answered - fault
        );
        s.row(name, fault, rec, &[]);
    }

    // cert-watch killed during a certificate change.
    if want("certwatch") {
        certwatch::phase(&mut s, &dir);
    }

    // Docker's data root on a small disk (a second daemon): last, since
    // the relay moves onto that daemon for it.
    if want("dataroot") {
        s.dangling_before.clear();
        dataroot::phase(&mut s, &dir, base());
    }

    s.table();
    // This suite's images.
    remove_restore_points(IMAGE_F);
    eprintln!("faults: whole suite {:.0?}", total.elapsed());
    let _ = &s.tmp;
    assert!(
        s.problems.is_empty(),
        "faults found:\n{}",
        s.problems.join("\n")
    );
}
