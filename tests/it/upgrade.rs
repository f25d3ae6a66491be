//! `upgrade` without an engine: a real git origin with release tags and a
//! clone as `relay/`, a stand-in `docker` that records its calls. What
//! must hold before any container is touched: `--check` exit codes, the
//! plan (commits, `[params]` keys), refusals (local edits, a ref that does
//! not exist, an unreachable origin) that change nothing, and a failed or
//! interrupted build that puts the checkout and the image name back. The
//! swap, the rollback and the probes run against the real relay in
//! tests/e2e/relay.rs.

use crate::support::{clone_repo, git, minimal_deployment, output_text, path_with, script};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A relay "release": the relay's two Python projects (what a release
/// must hold), chatmaild's config.py reading these keys.
fn commit_release(origin: &Path, keys: &[(&str, &str)], tag: Option<&str>) -> String {
    let py = origin.join("chatmaild/src/chatmaild");
    fs::create_dir_all(&py).unwrap();
    fs::create_dir_all(origin.join("cmdeploy/src/cmdeploy")).unwrap();
    fs::write(origin.join("cmdeploy/src/cmdeploy/__init__.py"), "").unwrap();
    for project in ["chatmaild", "cmdeploy"] {
        fs::write(
            origin.join(project).join("pyproject.toml"),
            format!("[project]\nname = \"{project}\"\n"),
        )
        .unwrap();
    }
    let mut text = String::from("class Config:\n    def __init__(self, params):\n");
    for (k, d) in keys {
        if d.is_empty() {
            text.push_str(&format!("        self.{k} = params.pop(\"{k}\")\n"));
        } else {
            text.push_str(&format!("        self.{k} = params.pop(\"{k}\", {d})\n"));
        }
    }
    fs::write(py.join("config.py"), text).unwrap();
    git(origin, &["add", "-A"]);
    git(
        origin,
        &["commit", "-q", "--allow-empty", "-m", tag.unwrap_or("work")],
    );
    if let Some(t) = tag {
        git(origin, &["tag", t]);
    }
    git(origin, &["rev-parse", "HEAD"])
}

struct Fixture {
    _t: tempfile::TempDir,
    origin: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    log: PathBuf,
    first: String,
}

/// An origin with release 1.0.0, a deployment whose relay/ is a clone of
/// it, and a stand-in docker. `build` is the shell run for `compose build`.
fn fixture(build: &str) -> Fixture {
    fixture_with(build, "")
}

/// [`fixture`] with more `case` arms for the stand-in docker, first.
fn fixture_with(build: &str, arms: &str) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let origin = t.path().join("origin");
    fs::create_dir_all(&origin).unwrap();
    git(&origin, &["init", "-q"]);
    let first = commit_release(
        &origin,
        &[("mail_domain", ""), ("max_user_send_per_minute", "60")],
        Some("1.0.0"),
    );
    let dir = minimal_deployment(t.path());
    clone_repo(&origin, &dir.join("relay"));
    fs::write(
        dir.join("chatmail.ini"),
        "[params]\nmail_domain = chat.example.org\nold_knob = 1\n",
    )
    .unwrap();
    let (bin, log) = (t.path().join("bin"), t.path().join("docker.log"));
    script(
        &bin,
        "docker",
        &format!(
            r#"echo "$*" >> '{log}'
case "$*" in
  {arms}
  *" config --images"*) echo chatmail-relay:local;;
  *" ps "*) :;;
  "image inspect --format {{{{.Id}}}} chatmail-relay:local") echo sha256:old;;
  "image inspect --format {{{{.Id}}}} "*) exit 1;;
  "image inspect --format {{{{.Size}}}} "*) echo 1000;;
  "image inspect --format {{{{json .Config.Labels}}}} "*) echo null;;
  "info --format "*) echo /;;
  *" build "*) {build};;
esac
exit 0"#,
            log = log.display(),
        ),
    );
    Fixture {
        _t: t,
        origin,
        dir,
        bin,
        log,
        first,
    }
}

impl Fixture {
    /// `upgrade ARGS` against the stand-in docker (which sees the
    /// deployment directory as `$DEPLOY`).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("chatmail-docker"));
        c.env("PATH", path_with(&self.bin))
            .env("DEPLOY", &self.dir)
            .env_remove("CHATMAIL_BUILD_CA")
            .arg("--dir")
            .arg(&self.dir)
            .arg("upgrade")
            .args(args);
        c
    }

    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.command(args))
    }

    /// The tool running in the background, its output piped.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Wait (up to 30 s) until the tool has called docker with `call`.
    fn wait_for_call(&self, call: &str) {
        let start = Instant::now();
        while !self.docker_calls().contains(call) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no `{call}` yet: {}",
                self.docker_calls()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn head(&self) -> String {
        git(&self.dir.join("relay"), &["rev-parse", "HEAD"])
    }

    /// An upgrade (no backup, no deploy beside) SIGKILLed while the
    /// stand-in hangs in the docker call `call` (the file `hang` exists
    /// meanwhile), when its state file says `phase`: nothing of the
    /// tool's own cleanup runs. The number of docker calls logged so far.
    fn killed_at(&self, call: &str, phase: &str) -> usize {
        fs::write(self.dir.join("hang"), "").unwrap();
        let mut child = self.spawn(&["--no-backup", "--no-deploy-beside"]);
        self.wait_for_call(call);
        child.kill().unwrap();
        child.wait().unwrap();
        let state = fs::read_to_string(self.dir.join("data/.upgrade-state.json")).unwrap();
        assert!(state.contains(&format!("\"{phase}\"")), "{state}");
        fs::remove_file(self.dir.join("hang")).unwrap();
        self.docker_calls().len()
    }

    /// The upgrade after a killed one: it says `says` (never "nothing to
    /// upgrade"); the docker calls it made (those after the first `since`
    /// bytes of the log).
    fn next_after_kill(&self, says: &str, since: usize) -> String {
        let out = output_text(&self.run(&["--no-backup", "--no-deploy-beside"]));
        assert!(out.contains(says), "{out}");
        assert!(!out.contains("nothing to upgrade"), "{out}");
        self.docker_calls()[since..].to_string()
    }

    /// Run the upgrade with `args`; it must exit with `code`. What it
    /// wrote.
    fn run_exit(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {out}");
        out
    }

    /// [`Fixture::run_exit`], and what it wrote must contain `says`.
    fn run_says(&self, args: &[&str], code: i32, says: &str) -> String {
        let out = self.run_exit(args, code);
        assert!(out.contains(says), "{out}");
        out
    }

    fn docker_calls(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// SIGTERM to the tool; its exit status and what it wrote to stderr.
fn terminate(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn check_says_whether_a_release_is_available() {
    let f = fixture("exit 0");
    let o = f.run(&["--check"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("up to date"),
        "{}",
        output_text(&o)
    );

    commit_release(
        &f.origin,
        &[("mail_domain", ""), ("max_user_send_per_minute", "60")],
        None,
    );
    let release = commit_release(
        &f.origin,
        &[
            ("mail_domain", ""),
            ("max_user_send_per_minute", "60"),
            ("max_load_1m", "\"20\""),
        ],
        Some("1.1.0"),
    );
    let out = f.run_exit(&["--check"], 0);
    assert!(out.contains("1.0.0") && out.contains("-> 1.1.0"), "{out}");
    assert!(out.contains("2 new commits"), "{out}");
    assert!(
        out.contains("new key max_load_1m (default \"20\")"),
        "{out}"
    );
    // Nothing moved, nothing was built or tagged.
    assert_eq!(f.head(), f.first);
    assert_eq!(f.docker_calls(), "");

    // JSON for monitoring.
    let o = f.run(&["--check", "--json", "--no-fetch"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["to"]["commit"], release.as_str());
    assert_eq!(v["to"]["version"], "1.1.0");
    assert_eq!(v["up_to_date"], false);
}

#[test]
fn a_dry_run_shows_the_plan_and_changes_nothing() {
    let f = fixture("exit 0");
    commit_release(
        &f.origin,
        &[("mail_domain", ""), ("new_knob", "5")],
        Some("1.1.0"),
    );
    let out = f.run_exit(&["--dry-run"], 0);
    assert!(
        out.contains("-> 1.1.0") && out.contains("1 new commit"),
        "{out}"
    );
    assert!(out.contains("new key new_knob (default 5)"), "{out}");
    assert!(
        out.contains("would tag the running image as chatmail-relay:local-relay-"),
        "{out}"
    );
    assert!(out.contains("would recreate the container"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    // A key chatmail.ini still sets that the release no longer reads.
    assert!(out.contains("max_user_send_per_minute is gone"), "{out}");
    assert_eq!(f.head(), f.first);
    assert!(!f.dir.join("data/.upgrade-state.json").exists());
    let calls = f.docker_calls();
    assert!(
        !calls.contains(" build") && !calls.contains("image tag"),
        "{calls}"
    );
}

#[test]
fn a_key_the_ini_still_sets_is_warned_about() {
    let f = fixture("exit 0");
    // The running release reads old_knob (chatmail.ini sets it); the next does not.
    commit_release(&f.origin, &[("mail_domain", ""), ("old_knob", "0")], None);
    git(&f.dir.join("relay"), &["pull", "-q"]);
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    f.run_says(
        &["--dry-run"],
        0,
        "no longer reads `old_knob`, which chatmail.ini sets",
    );
}

#[test]
fn local_edits_are_refused_unless_allowed() {
    let f = fixture("exit 0");
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    fs::write(
        f.dir.join("relay/chatmaild/src/chatmaild/config.py"),
        "# mine\n",
    )
    .unwrap();
    let out = f.run_exit(&[], 2);
    assert!(
        out.contains("local changes") && out.contains("config.py"),
        "{out}"
    );
    assert!(out.contains("--allow-dirty"), "{out}");
    assert_eq!(f.head(), f.first);
    assert_eq!(f.docker_calls().matches("image tag").count(), 0);
}

#[test]
fn a_ref_that_does_not_exist_is_named() {
    let f = fixture("exit 0");
    let out = f.run_says(
        &["--ref", "9.9.9"],
        2,
        "--ref 9.9.9: no such tag, branch or commit",
    );
    assert!(out.contains("newest releases: 1.0.0"), "{out}");
    assert_eq!(f.head(), f.first);
}

#[test]
fn an_unreachable_origin_changes_nothing() {
    let f = fixture("exit 0");
    let relay = f.dir.join("relay");
    // Nothing listens on the discard port: no network to the origin.
    git(
        &relay,
        &[
            "remote",
            "set-url",
            "origin",
            "http://127.0.0.1:9/relay.git",
        ],
    );
    // `--check` cannot tell: neither 0 (available) nor 1 (up to date).
    for (args, code) in [(&["--check"][..], 4), (&[], 1)] {
        let o = f.run(args);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {out}");
        assert!(
            out.contains("cannot fetch the relay's releases from origin"),
            "{out}"
        );
        assert!(
            out.contains("127.0.0.1:9") && out.contains("nothing was changed"),
            "{out}"
        );
    }
    assert_eq!(f.head(), f.first);
    let calls = f.docker_calls();
    assert!(
        !calls.contains("image tag") && !calls.contains(" build ") && !calls.contains(" up "),
        "{calls}"
    );
}

#[test]
fn the_newest_release_is_no_upgrade_for_a_checkout_past_it() {
    let f = fixture("exit 0");
    let past = commit_release(&f.origin, &[("mail_domain", "")], None);
    git(&f.dir.join("relay"), &["pull", "-q"]);
    let out = f.run_exit(&[], 0);
    assert!(out.contains("nothing to upgrade"), "{out}");
    assert_eq!(f.head(), past);
    // Asked for explicitly, the older release is a downgrade, and says so.
    let o = f.run(&["--ref", "1.0.0", "--dry-run"]);
    assert!(
        output_text(&o).contains("a downgrade"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn a_failed_build_puts_everything_back() {
    let f = fixture("echo 'no space left on device' >&2; exit 1");
    let target = commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    let out = f.run_exit(&["--no-backup"], 1);
    assert!(
        out.contains("did not build") && out.contains("kept serving"),
        "{out}"
    );

    assert_eq!(f.head(), f.first, "relay/ is back where it was");
    let calls = f.docker_calls();
    let restore = format!("chatmail-relay:local-relay-{}", &f.first[..12]);
    // Restore point first, the build, then the name back on the old image.
    let tag = calls
        .find(&format!("image tag sha256:old {restore}"))
        .expect(&calls);
    let build = calls.find(" build ").expect(&calls);
    let back = calls
        .find("image tag sha256:old chatmail-relay:local\n")
        .expect(&calls);
    assert!(tag < build && build < back, "{calls}");
    assert!(
        !calls.contains(" up "),
        "the container was never touched: {calls}"
    );
    assert!(!f.dir.join("data/.upgrade-state.json").exists());
    assert_ne!(f.head(), target);
}

#[test]
fn a_full_disk_under_the_backup_before_the_swap_puts_everything_back() {
    let f = fixture("exit 0");
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    // Mail that does not compress, more than the backup disk holds.
    let cur = f
        .dir
        .join("data/chatmail/vmail/mail/chat.example.org/u@chat.example.org/cur");
    fs::create_dir_all(&cur).unwrap();
    let mut next = crate::support::xorshift(11);
    let noise: Vec<u8> = (0..(1 << 20)).map(|_| next() as u8).collect();
    fs::write(cur.join("1700000500.M9.relay:2,S"), &noise).unwrap();
    let backups = f.dir.join("backups");
    let Some(_disk) = crate::support::SmallDisk::mount(&backups, "256k") else {
        return;
    };
    let out = f.run_exit(&["--no-deploy-beside"], 1);
    assert!(
        out.contains("the backup before the swap failed")
            && out.contains("kept serving")
            && out.contains("no space left on")
            && out.contains(&backups.display().to_string()),
        "{out}"
    );
    assert_eq!(f.head(), f.first, "relay/ is back where it was");
    let calls = f.docker_calls();
    assert!(
        !calls.contains(" up "),
        "the container was never touched: {calls}"
    );
    assert!(!f.dir.join("data/.upgrade-state.json").exists());
    let left: Vec<_> = fs::read_dir(&backups).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the backup directory: {left:?}");
}

#[test]
fn an_interrupted_build_puts_everything_back() {
    let f = fixture("exec sleep 30");
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    // `--no-stage`: the earlier name of --no-deploy-beside, still accepted.
    let child = f.spawn(&["--no-backup", "--no-stage"]);
    let start = Instant::now();
    f.wait_for_call(" build ");
    // While the build runs, relay/ is at the new release.
    assert_ne!(f.head(), f.first);
    let (status, err) = terminate(child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted during the build"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "the build was not stopped"
    );
    assert_eq!(f.head(), f.first);
    let calls = f.docker_calls();
    assert!(
        calls.contains("image tag sha256:old chatmail-relay:local\n"),
        "{calls}"
    );
    assert!(!calls.contains(" up "), "{calls}");
}

#[test]
fn an_upgrade_killed_during_its_build_is_put_back_and_done_by_the_next() {
    // The build hangs while the file `hang` exists; the running image has
    // an id of the real shape (the state file is checked when read).
    let f = fixture_with(
        r#"[ -e "$DEPLOY/hang" ] && exec sleep 30; exit 0"#,
        &format!(
            r#""image inspect --format {{{{.Id}}}} chatmail-relay:local") echo {OLD_ID}; exit 0;;
  "image inspect --format {{{{.Id}}}} {OLD_ID}") echo {OLD_ID}; exit 0;;"#
        ),
    );
    let target = commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    let killed_calls = f.killed_at(" build ", "building");
    assert_eq!(f.head(), target, "the killed run left relay/ at the target");

    // The next upgrade puts back what the killed one changed, then
    // upgrades afresh (not "up to date": the relay still runs 1.0.0).
    let calls = f.next_after_kill(
        "an earlier upgrade to 1.1.0 was stopped before its swap",
        killed_calls,
    );
    let back = calls
        .find(&format!("image tag {OLD_ID} chatmail-relay:local\n"))
        .expect(&calls);
    let build = calls.find(" build ").expect(&calls);
    assert!(
        back < build,
        "the name is put back before the new build: {calls}"
    );
    assert!(calls.contains(" up "), "this time it swaps: {calls}");
}

#[test]
fn an_upgrade_killed_during_its_swap_is_finished_by_the_next() {
    // `docker compose up` hangs while the file `hang` exists.
    let f = fixture_with(
        "exit 0",
        &format!(
            r#""image inspect --format {{{{.Id}}}} chatmail-relay:local") echo {OLD_ID}; exit 0;;
  "image inspect --format {{{{.Id}}}} {OLD_ID}") echo {OLD_ID}; exit 0;;
  *" up "*) [ -e "$DEPLOY/hang" ] && exec sleep 30; exit 0;;"#
        ),
    );
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    let killed_calls = f.killed_at(" up ", "swapping");

    // The next upgrade finishes the swap (here the stand-in's container
    // never shows up, so it rolls back), instead of "nothing to upgrade".
    let calls = f.next_after_kill(
        "an earlier upgrade to 1.1.0 was stopped while swapping the container; finishing its swap",
        killed_calls,
    );
    assert!(calls.contains(" up "), "the swap is done again: {calls}");
    assert!(
        !calls.contains(" build "),
        "nothing is built again: {calls}"
    );
}

#[test]
fn what_a_killed_deploy_beside_left_is_removed_by_the_next_upgrade() {
    let f = fixture_with(
        "exit 0",
        r#""ps --all --quiet --filter name=^chatmail-upgrade-stage$") [ -e "$DEPLOY/stage-gone" ] || echo stale-id; exit 0;;
  "rm --force --volumes chatmail-upgrade-stage") touch "$DEPLOY/stage-gone"; exit 0;;"#,
    );
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    // A side container still there, and its copies of the keys.
    let copies = f.dir.join("data/.upgrade-stage/etc-dkimkeys");
    fs::create_dir_all(&copies).unwrap();
    fs::write(copies.join("opendkim.private"), "secret").unwrap();
    let o = f.run(&["--no-backup", "--no-deploy-beside"]);
    let out = output_text(&o);
    assert!(
        out.contains("removed what a deploy beside the relay that was stopped left (the side container chatmail-upgrade-stage"),
        "{out}"
    );
    assert!(!f.dir.join("data/.upgrade-stage").exists(), "{out}");
    assert!(
        f.docker_calls()
            .contains("rm --force --volumes chatmail-upgrade-stage"),
        "{}",
        f.docker_calls()
    );
}

#[test]
fn rollback_without_an_upgrade_is_refused() {
    let f = fixture("exit 0");
    let out = f.run_exit(&["--rollback"], 2);
    assert!(out.contains("no upgrade to roll back"), "{out}");
}

#[test]
fn a_relay_that_is_no_git_checkout_is_explained() {
    let f = fixture("exit 0");
    fs::remove_dir_all(f.dir.join("relay/.git")).unwrap();
    for (args, code) in [(&["--check"][..], 4), (&["--dry-run"], 2)] {
        let o = f.run(args);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {out}");
        assert!(
            out.contains("is not a git checkout") && out.contains("git clone"),
            "{out}"
        );
    }
}

#[test]
fn an_interrupted_deploy_beside_the_relay_leaves_nothing_behind() {
    // The side container never becomes healthy; the tool is stopped while
    // it waits.
    let arms = r#"*" config --format json"*) printf '{"services":{"chatmail":{"environment":{"MAIL_DOMAIN":"chat.example.org"},"tmpfs":["/tmp"],"volumes":[{"type":"bind","source":"'"$DEPLOY"'/data/chatmail-dkimkeys","target":"/etc/dkimkeys"},{"type":"bind","source":"'"$DEPLOY"'/data/chatmail-state","target":"/var/lib/chatmail-docker"},{"type":"bind","source":"'"$DEPLOY"'/data/chatmail","target":"/home"}]}}}'; exit 0;;
  "image inspect --format {{.Id}} sha256:old") echo sha256:old; exit 0;;
  "run --detach"*) echo stage-id; exit 0;;
  "inspect chatmail-upgrade-stage") printf '[{"Id":"stage-id","Name":"/chatmail-upgrade-stage","Image":"sha256:old","State":{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0,"Health":{"Status":"starting","Log":[]}},"Config":{"Image":"sha256:old","Labels":{}}}]'; exit 0;;"#;
    let f = fixture_with("exit 0", arms);
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    let keys = f.dir.join("data/chatmail-dkimkeys");
    fs::create_dir_all(&keys).unwrap();
    fs::write(keys.join("opendkim.private"), "secret").unwrap();
    let child = f.spawn(&["--no-backup"]);
    f.wait_for_call("run --detach");
    // The copies of the keys are there while it runs ...
    let copies = f.dir.join("data/.upgrade-stage");
    assert!(copies.join("etc-dkimkeys/opendkim.private").exists());
    let (status, err) = terminate(child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted before the build; nothing was changed"),
        "{err}"
    );
    // ... and gone with the side container afterwards.
    assert!(!copies.exists(), "the copies of the keys are removed");
    let calls = f.docker_calls();
    let run = calls.find("run --detach").unwrap();
    let rm = calls
        .rfind("rm --force --volumes chatmail-upgrade-stage")
        .expect(&calls);
    assert!(rm > run, "the side container is removed: {calls}");
    assert!(
        !calls.contains("image tag") && !calls.contains(" build "),
        "{calls}"
    );
    assert_eq!(f.head(), f.first);
    assert!(!f.dir.join("data/.upgrade-state.json").exists());
}

// ------------------------------------------------------------ --check

#[test]
fn check_that_cannot_check_has_its_own_exit_code() {
    let f = fixture("exit 0");
    // Any failure of the check, not only the network: a ref that does
    // not resolve, a release that is not there.
    for args in [
        &["--check", "--ref", "9.9.9"][..],
        &["--check", "--no-fetch", "--ref", "no-such-branch"],
    ] {
        let o = f.run(args);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {out}");
        assert!(
            out.contains("could not check whether an upgrade is available"),
            "{out}"
        );
        assert!(out.contains("no such tag, branch or commit"), "{out}");
    }
    // The help says what each code means.
    let o = f.run(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("exit 0 when one is, 1 when up to date, 4 when it could not be checked"),
        "{help}"
    );
}

// ------------------------------------------------------------ --ref

/// An origin A(1.0.0) - B; relay/ cloned at B on `main`; then C and D on
/// the origin's main. Returns (A, B, C, D).
fn diverged(f: &Fixture) -> (String, String, String, String) {
    let b = commit_release(&f.origin, &[("mail_domain", ""), ("b", "1")], None);
    git(&f.dir.join("relay"), &["pull", "-q"]);
    let c = commit_release(&f.origin, &[("mail_domain", ""), ("c", "1")], None);
    let d = commit_release(&f.origin, &[("mail_domain", ""), ("d", "1")], None);
    (f.first.clone(), b, c, d)
}

/// `upgrade --check --json ARGS`: the target commit.
fn target_of(f: &Fixture, args: &[&str]) -> String {
    let mut all = vec!["--check", "--json"];
    all.extend_from_slice(args);
    let o = f.run(&all);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{args:?}: {}",
        output_text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["to"]["commit"].as_str().unwrap().to_string()
}

#[test]
fn a_ref_resolves_in_the_checkout_and_a_branch_name_is_the_remotes() {
    let f = fixture("exit 0");
    let (a, b, c, d) = diverged(&f);
    assert_eq!(f.head(), b);
    // The checkout's HEAD~1, not the remote's (origin/HEAD~1 is C).
    assert_eq!(target_of(&f, &["--ref", "HEAD~1"]), a);
    assert_eq!(target_of(&f, &["--no-fetch", "--ref", "HEAD~1"]), a);
    // A branch of the remote is that branch as just fetched, not the
    // local `main` that lags behind ...
    assert_eq!(target_of(&f, &["--ref", "main"]), d);
    // ... while revision syntax on it is git's in the checkout: the
    // local main's parent; the remote's is named as such.
    assert_eq!(target_of(&f, &["--ref", "main~1"]), a);
    assert_eq!(target_of(&f, &["--ref", "origin/main~1"]), c);
    // A tag, and a commit.
    assert_eq!(target_of(&f, &["--ref", "1.0.0"]), a);
    assert_eq!(target_of(&f, &["--ref", &c[..10]]), c);
    // The plan says where it goes.
    let out = f.run_exit(&["--dry-run", "--ref", "HEAD~1"], 0);
    assert!(
        out.contains(&format!("-> 1.0.0 ({})", &a[..12])) && out.contains("a downgrade"),
        "{out}"
    );
    // Nothing that looks like an option reaches git as one.
    for bad in ["--orphan=x", "-f", "--output=/tmp/x"] {
        let o = f.run(&["--check", &format!("--ref={bad}")]);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(4), "{bad}: {out}");
        assert!(out.contains("no such tag, branch or commit"), "{out}");
    }
    assert_eq!(f.head(), b);
}

// ------------------------------------------------------------ releases

/// Commit in the origin what `change` does to its tree, tagged `tag`.
fn commit_tree(origin: &Path, tag: &str, change: impl FnOnce(&Path)) -> String {
    change(origin);
    git(origin, &["add", "-A"]);
    git(origin, &["commit", "-q", "--allow-empty", "-m", tag]);
    git(origin, &["tag", tag]);
    git(origin, &["rev-parse", "HEAD"])
}

#[test]
fn a_tag_without_the_relays_code_is_no_release() {
    let f = fixture("exit 0");
    let good = commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    // Newer tags on commits that could not be built: no cmdeploy/ at all;
    // chatmaild/pyproject.toml a symlink; a tag on a tree.
    let gone = commit_tree(&f.origin, "1.3.0", |o| {
        fs::remove_dir_all(o.join("cmdeploy")).unwrap()
    });
    git(&f.origin, &["reset", "-q", "--hard", &good]);
    commit_tree(&f.origin, "1.2.0", |o| {
        let p = o.join("chatmaild/pyproject.toml");
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
    });
    git(&f.origin, &["reset", "-q", "--hard", &good]);
    git(&f.origin, &["tag", "1.4.0", &format!("{good}^{{tree}}")]);

    let o = f.run(&["--check", "--json"]);
    let out = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["to"]["commit"], good.as_str(), "{out}");
    assert_eq!(v["to"]["version"], "1.1.0", "{out}");
    for (tag, why) in [
        ("1.3.0", "cmdeploy/pyproject.toml, cmdeploy/src/cmdeploy"),
        ("1.2.0", "chatmaild/pyproject.toml"),
        ("1.4.0", "does not point at a commit"),
    ] {
        assert!(
            out.contains(&format!(
                "the tag {tag} is no release of the relay, passed over"
            )) && out.contains(why),
            "{tag}: {out}"
        );
    }
    // Asked for by name, it is refused with the reason.
    let out = f.run_exit(&["--ref", "1.3.0", "--no-backup"], 2);
    assert!(
        out.contains(&format!(
            "--ref 1.3.0: its commit {} lacks the relay's code",
            &gone[..12]
        )),
        "{out}"
    );
    assert_eq!(f.head(), f.first);
    let calls = f.docker_calls();
    assert!(
        !calls.contains("image tag") && !calls.contains(" build "),
        "{calls}"
    );
}

// ------------------------------------------------------------ --rollback

const OLD_ID: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A deployment after an upgrade from 1.0.0 to 1.1.0: relay/ on `main`
/// at 1.1.0, whose config.py differs, the restore point of 1.0.0 an
/// image, and the state file that upgrade wrote. `tag_fails`: the shell
/// run for `docker image tag` of the restore point back to the image's
/// name. Returns the fixture, 1.1.0's commit and the state.
fn upgraded(tag_fails: &str) -> (Fixture, String, serde_json::Value) {
    // Restore points (and forged names) are images when listed in `images`
    // beside the deployment.
    let arms = format!(
        r#""image inspect --format {{{{.Id}}}} chatmail-relay:local-relay-"*|"image inspect --format {{{{.Id}}}} busybox"*) grep -qxF -- "$5" "$DEPLOY/../images" && echo {OLD_ID} && exit 0; exit 1;;
  "image tag chatmail-relay:local-relay-"*" chatmail-relay:local") {tag_fails};;"#
    );
    let f = fixture_with("exit 0", &arms);
    let new = commit_release(
        &f.origin,
        &[("mail_domain", ""), ("new", "1")],
        Some("1.1.0"),
    );
    git(&f.dir.join("relay"), &["pull", "-q"]);
    fs::write(
        f.dir.join("../images"),
        format!(
            "chatmail-relay:local-relay-{}\nbusybox:latest\nbusybox:latest-relay-{}\n",
            &f.first[..12],
            &f.first[..12]
        ),
    )
    .unwrap();
    let state = serde_json::json!({
        "phase": "done",
        "image": "chatmail-relay:local",
        "previous": {
            "position": {"commit": f.first, "branch": "main"},
            "release": {"commit": f.first, "version": "1.0.0"},
            "image_tag": format!("chatmail-relay:local-relay-{}", &f.first[..12]),
            "image_id": OLD_ID,
        },
        "target": {"commit": new, "version": "1.1.0"},
        "started": "2026-01-01T03:00:00Z",
    });
    (f, new, state)
}

impl Fixture {
    fn write_state(&self, state: &serde_json::Value) {
        fs::create_dir_all(self.dir.join("data")).unwrap();
        fs::write(
            self.dir.join("data/.upgrade-state.json"),
            serde_json::to_vec_pretty(state).unwrap(),
        )
        .unwrap();
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.dir.join("data/.upgrade-state.json")).unwrap())
            .unwrap()
    }

    fn branch(&self) -> String {
        git(
            &self.dir.join("relay"),
            &["rev-parse", "--abbrev-ref", "HEAD"],
        )
    }
}

#[test]
fn a_rollback_trusts_no_state_file_it_did_not_write() {
    let (f, new, good) = upgraded("exit 0");
    // A valid file passes every check (the dry run runs them all).
    f.write_state(&good);
    f.run_says(
        &["--rollback", "--dry-run"],
        0,
        "would tag chatmail-relay:local-relay-",
    );

    // A local edit the forged files must not discard.
    let config = f.dir.join("relay/chatmaild/src/chatmaild/config.py");
    fs::write(&config, "# mine\n").unwrap();
    let other_hex = "0123456789abcdef0123456789abcdef01234567";
    let forged: Vec<(&str, &str, serde_json::Value)> = vec![
        // `git checkout --detach --force`: the local edit would be gone.
        (
            "previous.position.commit",
            "/previous/position/commit",
            "--force".into(),
        ),
        ("image", "/image", "busybox:latest".into()),
        (
            "previous.image_tag",
            "/previous/image_tag",
            "busybox:latest".into(),
        ),
        (
            "previous.image_tag",
            "/previous/image_tag",
            "chatmail-relay:local".into(),
        ),
        (
            "previous.position.commit",
            "/previous/position/commit",
            "HEAD".into(),
        ),
        (
            "previous.position.commit",
            "/previous/position/commit",
            other_hex.into(),
        ),
        (
            "previous.position.branch",
            "/previous/position/branch",
            "-f".into(),
        ),
        (
            "previous.position.branch",
            "/previous/position/branch",
            "a..b".into(),
        ),
        (
            "previous.position.branch",
            "/previous/position/branch",
            "@{-1}".into(),
        ),
        (
            "previous.release.commit",
            "/previous/release/commit",
            "--force".into(),
        ),
        ("previous.image_id", "/previous/image_id", "--help".into()),
        ("target.version", "/target/version", "1.1\u{1b}[2J".into()),
        ("started", "/started", "yesterday".into()),
    ];
    for (field, pointer, value) in forged {
        let mut st = good.clone();
        *st.pointer_mut(pointer).unwrap() = value.clone();
        if field == "image" {
            // Its own restore point, consistently forged too.
            st["previous"]["image_tag"] = format!("busybox:latest-relay-{}", &f.first[..12]).into();
        }
        f.write_state(&st);
        let before = fs::read(f.dir.join("data/.upgrade-state.json")).unwrap();
        let o = f.run(&["--rollback", "--wait-timeout", "1"]);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{field}={value}: {out}");
        assert!(
            out.contains("data/.upgrade-state.json: `") && out.contains(&format!("`{field}`")),
            "{field}={value}: {out}"
        );
        assert!(!out.contains('\u{1b}'), "raw escape: {out:?}");
        // Nothing changed: the image names, the checkout, the edit, the file.
        let calls = f.docker_calls();
        assert!(
            !calls.contains("image tag") && !calls.contains(" up "),
            "{field}={value}: {calls}"
        );
        assert_eq!(f.head(), new, "{field}={value}");
        assert_eq!(fs::read_to_string(&config).unwrap(), "# mine\n");
        assert_eq!(
            fs::read(f.dir.join("data/.upgrade-state.json")).unwrap(),
            before
        );
    }
    // Not even the shape of a state file: a usage error naming it.
    f.write_state(&serde_json::json!({"phase": "exploded"}));
    f.run_says(
        &["--rollback"],
        2,
        "data/.upgrade-state.json is not an upgrade state file",
    );
}

#[test]
fn a_rollback_checks_the_checkout_before_changing_anything() {
    let (f, new, good) = upgraded("exit 0");
    f.write_state(&good);
    // An edit that conflicts with the commit to go back to.
    let config = f.dir.join("relay/chatmaild/src/chatmaild/config.py");
    fs::write(&config, "# mine\n").unwrap();
    let out = f.run_exit(&["--rollback", "--wait-timeout", "1"], 2);
    assert!(
        out.contains("has local changes") && out.contains("config.py") && out.contains("stash"),
        "{out}"
    );
    let calls = f.docker_calls();
    assert!(
        !calls.contains("image tag") && !calls.contains(" up "),
        "the image was not renamed: {calls}"
    );
    assert_eq!(f.head(), new);
    assert_eq!(fs::read_to_string(&config).unwrap(), "# mine\n");
    assert_eq!(f.state(), good, "the state file is as it was");
}

#[test]
fn a_rollback_step_that_fails_puts_back_what_it_changed() {
    // Renaming the restore point back to the image fails.
    let (f, new, good) = upgraded("echo 'no space left on device' >&2; exit 1");
    f.write_state(&good);
    let out = f.run_exit(&["--rollback", "--wait-timeout", "1"], 1);
    assert!(
        out.contains("could not name the previous release's image")
            && out.contains("nothing was changed"),
        "{out}"
    );
    // The checkout had moved back to 1.0.0: it is on main at 1.1.0 again.
    assert_eq!(f.head(), new);
    assert_eq!(f.branch(), "main");
    assert_eq!(f.state(), good, "the state file is as it was");
    let calls = f.docker_calls();
    assert!(!calls.contains(" up "), "{calls}");
    // The restore-point name the rollback added for 1.1.0 is gone again,
    // and the image's name points where it did.
    let forward = format!("chatmail-relay:local-relay-{}", &new[..12]);
    assert!(calls.contains(&format!("image rm {forward}")), "{calls}");
    let failed = calls
        .find(&format!(
            "image tag chatmail-relay:local-relay-{} chatmail-relay:local",
            &f.first[..12]
        ))
        .expect(&calls);
    let back = calls
        .rfind("image tag sha256:old chatmail-relay:local\n")
        .expect(&calls);
    assert!(failed < back, "{calls}");
}

// ------------------------------------------------------------ file options

#[test]
fn file_options_are_checked_before_anything_changes() {
    let f = fixture("exit 0");
    commit_release(&f.origin, &[("mail_domain", "")], Some("1.1.0"));
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("fifo");
    crate::support::mkfifo(&fifo);
    let file = t.path().join("file");
    fs::write(&file, "x").unwrap();
    let missing = t.path().join("missing.pem");
    let below = file.join("below");
    let bounded = |args: &[&str], env: Option<&Path>| {
        let mut c = f.cmd(args);
        if let Some(ca) = env {
            c.env("CHATMAIL_BUILD_CA", ca);
        }
        c.timeout(Duration::from_secs(60)).output().unwrap()
    };
    let cases: Vec<(Vec<&str>, Option<&Path>, String)> = vec![
        (
            vec!["--no-backup", "--build-ca", missing.to_str().unwrap()],
            None,
            format!("--build-ca {}", missing.display()),
        ),
        (
            vec!["--no-backup", "--build-ca", fifo.to_str().unwrap()],
            None,
            "is a FIFO, not a regular file".into(),
        ),
        (
            vec!["--no-backup"],
            Some(&missing),
            format!("CHATMAIL_BUILD_CA {}", missing.display()),
        ),
        (
            vec!["--backup-dir", file.to_str().unwrap()],
            None,
            format!(
                "--backup-dir {}: is a regular file, not a directory",
                file.display()
            ),
        ),
        (
            vec!["--backup-dir", below.to_str().unwrap()],
            None,
            format!(
                "--backup-dir {}/below: {} is a regular file",
                file.display(),
                file.display()
            ),
        ),
    ];
    for (args, env, needle) in cases {
        let o = bounded(&args, env);
        let out = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(&needle), "{args:?}: no `{needle}` in {out}");
        let calls = f.docker_calls();
        assert!(
            !calls.contains("image tag") && !calls.contains(" build "),
            "{args:?}: {calls}"
        );
        assert_eq!(f.head(), f.first);
    }
}
