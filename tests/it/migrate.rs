//! `migrate` end to end: a fake bare-metal host under a temp root, the real
//! binary, a recording `systemctl` stand-in, and an independent checker
//! (tests/it/support/migrate_check.py, os.lstat based) comparing the trees.

use crate::support::migrate::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn migrate(f: &Fake, extra: &[&str]) -> (i32, String, String) {
    let mut c = f.cmd();
    c.arg("migrate").args(extra);
    run(&mut c)
}

/// Mail of `users` users with `files_per_user` messages each, no big files.
fn mail(users: usize, files_per_user: usize) -> Mail {
    Mail {
        users,
        files_per_user,
        big: vec![],
    }
}

fn small() -> Mail {
    mail(2, 5)
}

/// `migrate` with `extra` must refuse (exit 2): its stderr.
fn refused(f: &Fake, extra: &[&str]) -> String {
    let (code, _, err) = migrate(f, extra);
    assert_eq!(code, 2, "{err}");
    err
}

const TREES: [(&str, &str); 3] = [
    ("/etc/dkimkeys", "data/chatmail-dkimkeys"),
    ("/var/lib/acme", "data/chatmail-acme"),
    ("/home", "data/chatmail"),
];

#[test]
fn migrates_everything_and_a_rerun_copies_nothing() {
    let f = Fake::new(&Mail::default());
    // The last mail activity before the relay stops: a new message, one
    // moved from new/ to cur/, one deleted. The final sync must see all.
    let user = f
        .root
        .join(format!("home/vmail/mail/{DOMAIN}/user001@{DOMAIN}"));
    let moved = fs::read_dir(user.join("new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let deleted = fs::read_dir(user.join("cur"))
        .unwrap()
        .nth(3)
        .unwrap()
        .unwrap()
        .path();
    let hook = format!(
        "#!/bin/sh\nset -e\n[ -e '{m}' ] || exit 0\nprintf 'late mail' > '{new}'\nmv '{m}' '{cur}'\nrm '{d}'\npython3 '{checker}' digest '{root}' > '{out}'\n",
        m = moved.display(),
        new = user.join("new/1800000000.late:2,").display(),
        cur = user.join("cur").join(moved.file_name().unwrap()).display(),
        d = deleted.display(),
        checker = checker().display(),
        root = f.root.display(),
        out = f.tmp.path().join("digest-at-stop").display(),
    );
    let hook_path = f.units.join("on-stop");
    fs::write(&hook_path, hook).unwrap();
    fs::set_permissions(&hook_path, fs::Permissions::from_mode(0o755)).unwrap();

    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for (s, d) in TREES {
        f.check_copy(s, d);
        f.check_with_rsync(s, d);
    }
    assert!(f
        .dest("data/chatmail/vmail/mail")
        .join(format!("{DOMAIN}/user001@{DOMAIN}/new/1800000000.late:2,"))
        .exists());
    assert!(!f
        .dest("data/chatmail")
        .join(deleted.strip_prefix(f.root.join("home")).unwrap())
        .exists());
    // The source was only read (its state right after the hook changed it).
    let at_stop = fs::read_to_string(f.tmp.path().join("digest-at-stop")).unwrap();
    assert_eq!(at_stop.trim(), f.source_digest(), "the source was modified");
    // DKIM key kept secret and owned by opendkim, numerically.
    let key = fs::metadata(f.dest("data/chatmail-dkimkeys/opendkim.private")).unwrap();
    assert_eq!(
        (key.mode() & 0o7777, key.uid(), key.gid()),
        (0o600, OPENDKIM, OPENDKIM_GID)
    );
    // Plan, owners, units and downtime are reported.
    assert!(
        out.contains("/etc/dkimkeys -> data/chatmail-dkimkeys"),
        "{out}"
    );
    assert!(
        out.contains("/etc/dkimkeys owned by opendkim (105:108)"),
        "{out}"
    );
    assert!(
        out.contains("/home/vmail owned by vmail (998:998)"),
        "{out}"
    );
    assert!(
        out.contains("mtail.service") && out.contains("not installed"),
        "{out}"
    );
    assert!(out.contains("Downtime"), "{out}");
    assert!(err.contains("Verified"), "{err}");
    // Units: queried once, active ones stopped, enabled ones disabled.
    let log = f.log();
    assert!(
        log.lines().any(|l| l.starts_with("stop ")
            && l.contains("postfix.service")
            && !l.contains("lastlogin")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("disable ") && l.contains("lastlogin.service")),
        "{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("mtail"))
            .all(|l| l.starts_with("show ")),
        "not-installed units are only queried: {log}"
    );
    assert_eq!(f.unit_state("postfix.service"), "inactive disabled");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dest("data/.migrate-state.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "done");
    assert_eq!(
        fs::metadata(f.dest("data/.migrate-state.json"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );

    // Again: nothing to copy, nothing stopped, destination untouched.
    let before = f.digest(&f.dest("data"));
    let log_len = f.log().len();
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("nothing to copy"), "{out}");
    assert_eq!(f.digest(&f.dest("data")), before);
    assert!(!f.log()[log_len..].contains("stop"), "{}", f.log());

    // The container's data changed afterwards (new mail): a rerun refuses
    // instead of mirroring the old host over it.
    fs::write(f.dest("data/chatmail/vmail/new-in-container"), "x").unwrap();
    let err = refused(&f, &["--yes"]);
    assert!(err.contains("already migrated"), "{err}");
    assert!(f.dest("data/chatmail/vmail/new-in-container").exists());

    // Rollback after completion needs a confirmation...
    refused(&f, &["--rollback"]);
    assert_eq!(f.unit_state("postfix.service"), "inactive disabled");
    // ...and with it restores exactly what was there before.
    let (code, out, err) = migrate(&f, &["--rollback", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(f.unit_state("postfix.service"), "active enabled");
    assert_eq!(f.unit_state("lastlogin.service"), "inactive enabled");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let f = Fake::new(&mail(3, 10));
    let src = f.source_digest();
    let (code, out, err) = migrate(&f, &["--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("Migration plan") && out.contains("/home -> data/chatmail"),
        "{out}"
    );
    assert!(
        out.contains("postfix.service") && out.contains("stop + disable"),
        "{out}"
    );
    assert!(out.contains("free space"), "{out}");
    assert!(!f.dest("data").exists() && !f.dest(".env").exists());
    assert!(
        f.log().lines().all(|l| l.starts_with("show ")),
        "{}",
        f.log()
    );
    assert_eq!(src, f.source_digest());
}

#[test]
fn without_a_terminal_and_without_yes_it_refuses() {
    let f = Fake::new(&small());
    let err = refused(&f, &[]);
    assert!(err.contains("--yes"), "{err}");
    assert!(!f.dest("data").exists() && !f.dest(".env").exists());
    assert!(!f.log().contains("stop"));
}

#[test]
fn a_foreign_destination_is_refused_and_kept() {
    let f = Fake::new(&small());
    fs::create_dir_all(f.dest("data/chatmail/vmail")).unwrap();
    fs::write(f.dest("data/chatmail/vmail/from-another-host"), "mail").unwrap();
    let err = refused(&f, &["--yes"]);
    assert!(err.contains("data/chatmail is not empty"), "{err}");
    assert_eq!(
        fs::read_to_string(f.dest("data/chatmail/vmail/from-another-host")).unwrap(),
        "mail"
    );
    assert!(!f.log().contains("stop"));
    assert!(!f.dest("data/chatmail-dkimkeys").exists());
}

#[test]
fn a_missing_ini_is_a_usage_error() {
    let f = Fake::new(&mail(1, 1));
    fs::remove_file(f.root.join("usr/local/lib/chatmaild/chatmail.ini")).unwrap();
    let err = refused(&f, &["--yes"]);
    assert!(
        err.contains("chatmail.ini") && err.contains("--ini"),
        "{err}"
    );
    assert!(!f.dest("data").exists());
}

#[test]
fn an_unreadable_source_file_stops_before_any_unit_is_touched() {
    // Root reads everything; drop the capabilities that allow it, so the
    // permission check is real.
    if !found_or_skipped("setpriv", "the test") {
        return;
    }
    let f = Fake::new(&mail(0, 0));
    // Without DAC override every directory must be traversable by "others".
    for e in walkdir::WalkDir::new(&f.root) {
        let e = e.unwrap();
        if e.file_type().is_dir() {
            let mode = e.metadata().unwrap().mode() & 0o7777;
            fs::set_permissions(e.path(), fs::Permissions::from_mode(mode | 0o005)).unwrap();
        } else if e.file_type().is_file() {
            let mode = e.metadata().unwrap().mode() & 0o7777;
            fs::set_permissions(e.path(), fs::Permissions::from_mode(mode | 0o004)).unwrap();
        }
    }
    let secret = f.root.join("home/vmail/mail/locked:2,S");
    fs::write(&secret, "no peeking").unwrap();
    std::os::unix::fs::lchown(&secret, Some(VMAIL), Some(VMAIL)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let src = f.source_digest();

    let mut c = Command::new("setpriv");
    c.args([
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    ])
    .arg(assert_cmd::cargo::cargo_bin("chatmail-docker"));
    f.env(&mut c);
    c.args(["migrate", "--yes"]);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("locked:2,S") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!f.log().contains("stop"), "{}", f.log());
    assert!(!f.dest("data/chatmail/vmail/mail/locked:2,S").exists());
    // No temporaries left behind either.
    for p in files(&f.dest("data")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !(name.starts_with(".migrate-") && name.ends_with(".tmp")),
            "{}",
            p.display()
        );
    }
    assert_eq!(src, f.source_digest());
}

#[test]
fn a_failing_stop_is_an_error_and_rollback_restarts_what_was_stopped() {
    let f = Fake::new(&small());
    fs::write(f.units.join("dovecot.service.fail"), "").unwrap();
    let (code, _, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--rollback"), "{err}");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dest("data/.migrate-state.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "stopped");
    assert!(state["stopped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["unit"] == "postfix.service"));

    fs::remove_file(f.units.join("dovecot.service.fail")).unwrap();
    fs::write(f.units.join("postfix.service"), "inactive enabled\n").unwrap();
    let (code, out, err) = migrate(&f, &["--rollback"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(f.unit_state("postfix.service"), "active enabled");
    let log = f.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("start ") && l.contains("postfix.service")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("start ") && l.contains("lastlogin")),
        "{log}"
    );
    // What a run killed while it saved its state left: removed by a
    // rollback that has nothing to roll back (it writes no state then);
    // a file of the administrator's beside it is not.
    let stale = f.dest("data/.migrate-state.json.chatmail-docker.Zq3x9A.tmp");
    let theirs = f.dest("data/.migrate-state.json.keep");
    fs::write(&stale, "{}").unwrap();
    fs::write(&theirs, "{}").unwrap();
    let (code, out, _) = migrate(&f, &["--rollback"]);
    assert_eq!(code, 0);
    assert!(out.contains("Nothing to roll back"), "{out}");
    assert!(!stale.exists() && theirs.exists());
    fs::remove_file(&theirs).unwrap();

    // Trying again after a rollback starts over with a pre-sync.
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("Pre-synced"), "{err}");
    f.check_copy("/home", "data/chatmail");
}

#[test]
fn mount_vmail_copies_no_mail_and_leaves_a_marker() {
    let f = Fake::new(&small());
    let (code, out, err) = migrate(&f, &["--yes", "--mount-vmail"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(f.dest("data/.mount-vmail").is_file());
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dest("data/.migrate-state.json")).unwrap()).unwrap();
    assert!(
        state["source_owners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["source"] == "/home/vmail" && o["uid"] == VMAIL && o["user"] == "vmail"),
        "{state}"
    );
    assert!(!f.dest("data/chatmail").exists());
    f.check_copy("/etc/dkimkeys", "data/chatmail-dkimkeys");
    f.check_copy("/var/lib/acme", "data/chatmail-acme");
}

#[test]
fn presync_only_keeps_the_relay_running() {
    let f = Fake::new(&small());
    let (code, out, err) = migrate(&f, &["--yes", "--presync-only"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!f.log().contains("stop"));
    f.check_copy("/home", "data/chatmail");
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("nothing to copy"), "{err}");
    assert_eq!(f.unit_state("postfix.service"), "inactive disabled");
}

/// A second `migrate` (or a rollback) while one runs is refused before it
/// looks at anything; once the first has ended, it runs.
#[test]
fn one_migration_at_a_time() {
    let f = Fake::new(&small());
    fs::create_dir_all(&f.dir).unwrap();
    // What a running migrate holds: the deployment directory, locked.
    let held = fs::File::open(&f.dir).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    for args in [&["--yes"][..], &["--rollback", "--yes"]] {
        let (code, out, err) = migrate(&f, args);
        assert_eq!(code, 1, "{args:?}: {out}\n{err}");
        assert!(
            err.contains("another `chatmail-docker migrate` runs for"),
            "{err}"
        );
    }
    assert!(!f.log().contains("stop"), "{}", f.log());
    assert!(!f.dest("data").exists());
    drop(held);
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    f.check_copy("/home", "data/chatmail");
}

/// Files under a copy's temporary name (`.migrate-*.tmp`) below `dir`.
fn temporaries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files(dir)
        .into_iter()
        .filter(|rel| {
            let name = rel.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(".migrate-") && name.ends_with(".tmp")
        })
        .collect()
}

/// [`temporaries`] of a file's copy (`.migrate-PID-N.tmp`), not of a save
/// of the state file (`.migrate-state.json.chatmail-docker.XXXXXX.tmp`).
fn copy_temporaries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    temporaries(dir)
        .into_iter()
        .filter(|rel| !rel.to_string_lossy().contains(".chatmail-docker."))
        .collect()
}

/// `kill -9` at pseudo-random moments, then resume: the result is exact,
/// and no file under its final name is ever partial.
#[test]
fn killed_at_random_points_it_resumes_to_an_identical_copy() {
    let f = Fake::new(&Mail {
        big: vec![24 << 20, 8 << 20],
        ..mail(20, 150)
    });
    let src = f.source_digest();
    let mut seed: u64 = 0x5eed_1234;
    let mut killed = 0;
    for round in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + seed % 400);
        let mut c = f.cmd();
        c.args(["migrate", "--yes", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        killed += usize::from(status.code().is_none());
        let phase = crate::support::json_string(&f.dest("data/.migrate-state.json"), "phase");
        eprintln!(
            "round {round}: killed after {delay:?} ({status}), phase {phase}, {} files copied",
            files(&f.dest("data/chatmail")).len()
        );
        // Every file under a final name is complete (the source never changes here).
        let dst = f.dest("data/chatmail");
        for rel in files(&dst) {
            let name = rel.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(".migrate-") && name.ends_with(".tmp") {
                continue;
            }
            let a = fs::read(f.root.join("home").join(&rel)).unwrap();
            let b = fs::read(dst.join(&rel)).unwrap();
            assert!(
                a == b,
                "round {round} ({delay:?}, {status}): partial file {}",
                rel.display()
            );
        }
    }
    assert!(
        killed > 0,
        "no run was interrupted: the test proved nothing"
    );
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (s, d) in TREES {
        f.check_copy(s, d);
        f.check_with_rsync(s, d);
    }
    assert_eq!(src, f.source_digest(), "the source was modified");
    // Nothing a killed run wrote under a temporary name is left.
    for (_, d) in TREES {
        let left = temporaries(&f.dest(d));
        assert!(left.is_empty(), "temporary files left in {d}: {left:?}");
    }
    let (code, out, _) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to copy"), "{out}");
}

/// When a killed `migrate` in `killed_at_any_moment_a_rollback_brings_the_relay_back`
/// gets its SIGKILL.
enum KillAt {
    /// This long after the start.
    After(Duration),
    /// As soon as the test sees this state (polling as fast as it can).
    Seen(&'static str, fn(&Fake) -> bool),
}

/// `migrate` killed (SIGKILL to its process group: the tool and the
/// copies it started, as its unit or the OOM killer would) at moments
/// spread over a measured run, and at the two moments that matter most,
/// aimed at by watching for them (in the middle of a file's copy, and
/// while the relay's units are stopped), then the other natural next
/// command, `migrate --rollback`: the relay's units run again as before,
/// the source is untouched, nothing temporary is left beside the copy.
#[test]
fn killed_at_any_moment_a_rollback_brings_the_relay_back() {
    let shape = || Mail {
        big: vec![8 << 20, 4 << 20],
        ..mail(10, 100)
    };
    let took = {
        let f = Fake::new(&shape());
        let started = std::time::Instant::now();
        let (code, out, err) = migrate(&f, &["--yes", "-q"]);
        assert_eq!(code, 0, "{out}\n{err}");
        started.elapsed()
    };
    // One killed run and its rollback; returns (killed while the units
    // were stopped, killed in the middle of a file's copy).
    let point = |label: &str, at: &KillAt| -> (bool, bool) {
        let f = Fake::new(&shape());
        let src = f.source_digest();
        let mut c = f.cmd();
        c.args(["migrate", "--yes", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let started = std::time::Instant::now();
        let mut child = c.spawn().unwrap();
        match at {
            KillAt::After(d) => std::thread::sleep(*d),
            KillAt::Seen(_, seen) => {
                while !seen(&f) && child.try_wait().unwrap().is_none() {
                    std::thread::yield_now();
                }
            }
        }
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::KILL,
        );
        let killed_after = started.elapsed();
        let status = child.wait().unwrap();
        let killed = status.code().is_none();
        let stopped = f.unit_state("postfix.service") != "active enabled";
        let mid_copy = !copy_temporaries(&f.dest("data")).is_empty();
        eprintln!(
            "{label}: killed {killed_after:?} in ({status}); the relay's units {}{}",
            if stopped { "stopped" } else { "running" },
            if mid_copy { "; a copy under way" } else { "" }
        );
        let (code, out, err) = migrate(&f, &["--rollback", "--yes"]);
        assert_eq!(code, 0, "{label}: --rollback failed\n{out}\n{err}");
        for unit in ["postfix.service", "dovecot.service", "nginx.service"] {
            assert_eq!(
                f.unit_state(unit),
                "active enabled",
                "{label}: {unit} after the rollback"
            );
        }
        assert_eq!(f.unit_state("lastlogin.service"), "inactive enabled");
        assert_eq!(src, f.source_digest(), "{label}: the source changed");
        let left = temporaries(&f.dest("data"));
        assert!(left.is_empty(), "{label}: temporary files left: {left:?}");
        (killed && stopped, killed && mid_copy)
    };
    for i in 0..10 {
        let at = took.mul_f64((i as f64 + 0.5) / 10.0);
        point(&format!("point {i}"), &KillAt::After(at));
    }
    // The moments a spread of times may miss on a fast or a slow machine:
    // each is watched for until a kill lands in it (a copy can finish
    // between the look and the kill, so a few tries are allowed).
    let aimed = [
        KillAt::Seen("a file's copy under way", |f| {
            !copy_temporaries(&f.dest("data")).is_empty()
        }),
        KillAt::Seen("the relay's units stopped", |f| {
            f.unit_state("postfix.service").starts_with("inactive")
        }),
    ];
    for (k, at) in aimed.iter().enumerate() {
        let KillAt::Seen(what, _) = at else {
            unreachable!()
        };
        let hit = (0..10).any(|t| {
            let (stopped, mid_copy) = point(&format!("aimed at {what}, try {t}"), at);
            if k == 0 {
                mid_copy
            } else {
                stopped
            }
        });
        assert!(hit, "no kill in ten tries landed while {what}");
    }
}

/// A real small filesystem (a tmpfs mounted in a private mount namespace)
/// as the deployment dir: the plan must refuse with the numbers, before
/// writing anything or stopping anything.
#[test]
fn insufficient_space_is_refused_with_numbers() {
    let f = Fake::new(&Mail {
        big: vec![30 << 20],
        ..mail(2, 5)
    });
    let probe = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m none \"$0\"",
        ])
        .arg(&f.dir)
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs `unshare --mount` and tmpfs mounts (CAP_SYS_ADMIN)"
        );
        eprintln!("skipped: cannot mount a tmpfs in a private mount namespace here");
        return;
    }
    // 80 MiB: less than 30 MiB of mail plus the 64 MiB headroom.
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "sh",
        "-c",
        "mount -t tmpfs -o size=80m none \"$0\" && exec \"$@\"",
    ])
    .arg(&f.dir)
    .arg(assert_cmd::cargo::cargo_bin("chatmail-docker"));
    f.env(&mut c);
    c.args(["migrate", "--yes"]);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains("not enough free space")
            && err.contains("needed")
            && err.contains("80.0 MiB available"),
        "{err}"
    );
    assert!(out.contains("Migration plan"), "{out}");
    assert!(!f.log().contains("stop"), "{}", f.log());
    // The tmpfs is gone with the namespace; nothing was written under it
    // either way, and nothing at all on the real disk.
    assert!(!f.dest("data").exists() && !f.dest(".env").exists());
}

#[test]
fn start_outside_a_deployment_dir_fails_before_anything_changes() {
    let f = Fake::new(&mail(1, 2));
    let err = refused(&f, &["--yes", "--start"]);
    assert!(err.contains("docker-compose.yaml"), "{err}");
    assert!(f.log().is_empty(), "{}", f.log());
    assert!(!f.dest("data").exists());
}

#[test]
fn start_with_another_deployments_container_fails_before_anything_changes() {
    let f = Fake::new(&mail(1, 2));
    fs::create_dir_all(f.dir.join("docker")).unwrap();
    fs::write(
        f.dir.join("docker/docker-compose.yaml"),
        "services:\n  chatmail:\n    image: chatmail-docker-test-absent:never\n",
    )
    .unwrap();
    // A stand-in docker: the project's container was created from another
    // directory; any other call is recorded.
    let calls = f.tmp.path().join("docker.calls");
    let docker = f.bin.join("docker");
    fs::write(
        &docker,
        format!(
            r#"#!/bin/sh
case "$*" in
  *" ps --all --quiet"|*" ps --all --quiet chatmail") echo f0f0; exit 0;;
  "inspect f0f0") printf '[{{"Id":"f0f0","Name":"/chatmail-chatmail-1","Image":"sha256:0","State":{{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0}},"Config":{{"Image":"x","Labels":{{"com.docker.compose.project.working_dir":"/srv/other-relay"}}}}}}]'; exit 0;;
esac
echo "$*" >> '{}'
exit 0"#,
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&docker, fs::Permissions::from_mode(0o755)).unwrap();
    let err = refused(&f, &["--yes", "--start"]);
    assert!(
        err.contains("/srv/other-relay") && err.contains("nothing was done to it"),
        "{err}"
    );
    assert!(f.log().is_empty(), "units touched: {}", f.log());
    assert!(!calls.exists(), "{}", fs::read_to_string(&calls).unwrap());
    assert!(!f.dest("data").exists());
}

#[test]
fn every_unit_the_relay_installs_is_stopped_by_its_real_name() {
    let f = Fake::new(&small());
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let log = f.log();
    for unit in ["turnserver.service", "filtermail-transport.service"] {
        assert!(
            log.lines()
                .any(|l| l.starts_with("stop ") && l.contains(unit)),
            "{unit} not stopped: {log}"
        );
    }
    assert!(!log.contains("chatmail-turn"), "{log}");
}

#[test]
fn rollback_passes_only_the_relays_units_to_systemctl() {
    let f = Fake::new(&small());
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // A state file naming other units (edited, or written by something
    // else) makes the rollback refuse, before systemctl runs.
    let file = f.dest("data/.migrate-state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    for bad in ["sshd.service", "--no-block", "-H"] {
        state["stopped"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "unit": bad, "was_active": true, "was_enabled": true
            }));
    }
    fs::write(&file, serde_json::to_vec(&state).unwrap()).unwrap();
    let before = f.log().len();
    let (code, out, err) = migrate(&f, &["--rollback", "--yes"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("sshd.service") && err.contains("--no-block"),
        "{err}"
    );
    let after = &f.log()[before..];
    assert!(
        !after.contains("start") && !after.contains("enable"),
        "{after}"
    );
}

#[test]
fn sparse_files_stay_sparse() {
    let f = Fake::new(&small());
    let p = f.root.join(format!(
        "home/vmail/mail/{DOMAIN}/user000@{DOMAIN}/dovecot.index.cache"
    ));
    let file = fs::File::create(&p).unwrap();
    file.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"data in the middle", 100 << 20).unwrap();
    drop(file);
    if fs::metadata(&p).unwrap().blocks() * 512 >= 1 << 20 {
        eprintln!("skipped: this filesystem has no sparse files");
        return;
    }
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let copy = f
        .dest("data/chatmail")
        .join(p.strip_prefix(f.root.join("home")).unwrap());
    let m = fs::metadata(&copy).unwrap();
    assert_eq!(m.len(), 256 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "the copy occupies {} bytes",
        m.blocks() * 512
    );
    f.check_copy("/home", "data/chatmail");
}

/// Run `c` like [`run`], but kill it and fail when it has not finished in
/// `limit`: a bound on hangs (an endless walk), not a timing assertion.
fn run_bounded(c: &mut Command, limit: Duration) -> (i32, String, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut so, &mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut se, &mut s).unwrap();
        s
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("migrate did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

fn is_symlink(p: &std::path::Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// Messages in a fake of [`small`] size: 5 per user, and one shared by
/// hard link with the previous user.
const SMALL_MESSAGES: usize = 2 * 5 + 1;

#[test]
fn mail_behind_symlinks_to_other_disks_is_copied_as_the_relay_sees_it() {
    let f = Fake::new(&small());
    // /home/vmail on another disk (absolute link, so also resolved inside
    // --root), and its mail/ on a third one (relative link).
    f.move_behind_link("home/vmail", "srv/disk1/vmail", "/srv/disk1/vmail");
    f.move_behind_link("srv/disk1/vmail/mail", "srv/disk2/mail", "../../disk2/mail");
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("{SMALL_MESSAGES} messages")), "{out}");
    let vmail = f.dest("data/chatmail/vmail");
    assert!(
        !is_symlink(&vmail) && vmail.is_dir(),
        "vmail was copied as a link"
    );
    assert!(
        !is_symlink(&vmail.join("mail")),
        "mail was copied as a link"
    );
    let messages = files(&vmail.join("mail"))
        .into_iter()
        .filter(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|d| d == "cur" || d == "new")
        })
        .count();
    assert_eq!(messages, SMALL_MESSAGES);
    f.check_copy("/srv/disk2/mail", "data/chatmail/vmail/mail");
    // Links that stay inside the tree are still links.
    assert!(is_symlink(
        &vmail.join(format!("mail/{DOMAIN}/user000@{DOMAIN}/dovecot.sieve"))
    ));
    // A rerun sees the same tree: nothing to do.
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Already migrated"), "{out}\n{err}");
}

#[test]
fn absolute_links_resolve_inside_the_root_not_on_the_live_host() {
    let f = Fake::new(&small());
    // The same absolute path exists on the live host (a decoy key) and
    // under --root (the relay's real key): only the latter may be copied.
    let elsewhere = f.tmp.path().join("keys");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("opendkim.private"), "live host's key").unwrap();
    let in_root = f.root.join(elsewhere.strip_prefix("/").unwrap());
    let link = elsewhere.to_str().unwrap().to_string();
    f.move_behind_link(
        "etc/dkimkeys",
        in_root.strip_prefix(&f.root).unwrap().to_str().unwrap(),
        &link,
    );
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        fs::read(f.dest("data/chatmail-dkimkeys/opendkim.private")).unwrap(),
        fs::read(in_root.join("opendkim.private")).unwrap()
    );
    f.check_copy(
        in_root.strip_prefix(&f.root).unwrap().to_str().unwrap(),
        "data/chatmail-dkimkeys",
    );
}

#[test]
fn a_symlink_loop_is_named_as_such_before_anything_changes() {
    let f = Fake::new(&small());
    fs::remove_dir_all(f.root.join("etc/dkimkeys")).unwrap();
    std::os::unix::fs::symlink("dkimkeys", f.root.join("etc/dkimkeys")).unwrap();
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("symlink loop"), "{err}");
    assert!(!err.contains("not found"), "{err}");
    assert!(!f.log().contains("stop"), "{}", f.log());
    assert!(!f.dest("data").exists());
}

/// The on-stop hook rewrites one message with the same size and mtime: the
/// quick check of the final sync cannot see it; verification does.
fn rewrite_in_place_on_stop(f: &Fake, extra: &str) -> std::path::PathBuf {
    let user = f
        .root
        .join(format!("home/vmail/mail/{DOMAIN}/user001@{DOMAIN}/cur"));
    let msg = fs::read_dir(&user).unwrap().next().unwrap().unwrap().path();
    // Its scratch files live outside the host root: the directory's
    // mtime does not change either.
    let hook = format!(
        "#!/bin/sh\nset -e\nm='{m}'\nt='{t}'\n[ -e \"$t.done\" ] && exit 0\n\
         touch -r \"$m\" \"$t.ref\"\ntr 'a-zA-Z0-9' 'b-zA-Z0-9a' < \"$m\" > \"$t.new\"\n\
         cat \"$t.new\" > \"$m\"\ntouch -r \"$t.ref\" \"$m\"\n: > \"$t.done\"\n{extra}\n",
        m = msg.display(),
        t = f.tmp.path().join("rewrite").display(),
    );
    let hook_path = f.units.join("on-stop");
    fs::write(&hook_path, hook).unwrap();
    fs::set_permissions(&hook_path, fs::Permissions::from_mode(0o755)).unwrap();
    msg
}

#[test]
fn content_changed_without_size_or_mtime_is_copied_again_and_verified() {
    let f = Fake::new(&small());
    let msg = rewrite_in_place_on_stop(&f, "");
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rel = msg.strip_prefix(f.root.join("home")).unwrap();
    assert_eq!(
        fs::read(&msg).unwrap(),
        fs::read(f.dest("data/chatmail").join(rel)).unwrap()
    );
    f.check_copy("/home", "data/chatmail");
    assert!(err.contains("again"), "{err}");
}

#[test]
fn a_copy_that_stays_different_restarts_the_old_relay() {
    let f = Fake::new(&small());
    let dest_cur = f
        .dest("data/chatmail")
        .join(format!("vmail/mail/{DOMAIN}/user001@{DOMAIN}/cur"));
    // Copying again cannot fix it: the copy's directory became immutable.
    let msg = rewrite_in_place_on_stop(&f, &format!("chattr +i '{}'", dest_cur.display()));
    if Command::new("chattr").arg("-V").output().is_err() {
        eprintln!("skipped: chattr not found");
        return;
    }
    let (code, out, err) = migrate(&f, &["--yes"]);
    let _ = Command::new("chattr").arg("-i").arg(&dest_cur).status();
    if err.contains("chattr") && err.contains("Operation not supported") {
        eprintln!("skipped: no immutable files on this filesystem");
        return;
    }
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("content differs"), "{err}");
    assert!(err.contains("started again"), "{err}");
    assert!(!out.contains("Migration complete"), "{out}");
    assert_eq!(f.unit_state("postfix.service"), "active enabled");
    assert_eq!(f.unit_state("lastlogin.service"), "inactive enabled");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dest("data/.migrate-state.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "rolled-back", "{state}");
    assert!(msg.exists());
}

#[test]
fn control_characters_from_the_host_never_reach_the_terminal() {
    let f = Fake::new(&small());
    // A user-provided value...
    let err = refused(&f, &["--yes", "--ini", "/nowhere/\x1b[2Jchatmail.ini"]);
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(err.contains("\\u{1b}[2J"), "{err:?}");
    // ...and a file name that the verification reports (its content
    // changes at the stop, keeping size and mtime).
    let msg = f.root.join(format!(
        "home/vmail/mail/{DOMAIN}/user001@{DOMAIN}/cur/\x1b]0;owned\x07evil:2,S"
    ));
    fs::write(&msg, "x").unwrap();
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 0);
    filetime::set_file_mtime(&msg, t).unwrap();
    let hook = format!(
        "#!/bin/sh\nif [ ! -e '{done}' ]; then printf y > \"$MSG\"; touch -d @1700000000 \"$MSG\"; : > '{done}'; fi\n",
        done = f.tmp.path().join("done").display()
    );
    fs::write(f.units.join("on-stop"), hook).unwrap();
    fs::set_permissions(f.units.join("on-stop"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = f.cmd();
    c.env("MSG", &msg).args(["migrate", "--yes"]);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("evil"), "{err:?}");
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains("\\u{1b}]0;owned\\u{7}evil"), "{err:?}");
}

#[test]
fn the_plan_counts_only_what_is_left_to_copy() {
    let f = Fake::new(&small());
    let (code, out, err) = migrate(&f, &["--yes", "--presync-only"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = migrate(&f, &["--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("nothing left to copy"), "{out}");
    assert!(!out.contains("KiB to copy"), "{out}");
}

#[test]
fn the_stop_report_counts_the_units_once() {
    let f = Fake::new(&small());
    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let stopped = err.lines().find(|l| l.contains("Stopped")).unwrap_or("");
    assert!(
        !stopped.contains("unit(s)") && stopped.contains("units, disabled"),
        "{err}"
    );
}

/// What a process sees below `start` when `root` is its `/` (every path
/// resolved by the kernel with `RESOLVE_IN_ROOT`): directories, and files
/// with their content, `depth` levels deep (links to ancestors repeat).
fn view(
    root: &std::path::Path,
    start: &str,
    depth: usize,
) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    fn walk(
        root: &fs::File,
        path: String,
        depth: usize,
        out: &mut std::collections::BTreeMap<String, Option<Vec<u8>>>,
    ) {
        let open = || {
            openat2(
                root,
                path.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            )
        };
        // EAGAIN: a rename anywhere on the system raced a `..`; try again.
        let mut r = open();
        while r.as_ref().err() == Some(&rustix::io::Errno::AGAIN) {
            r = open();
        }
        let Ok(fd) = r else {
            return; // missing, a loop, not a directory: nothing to see
        };
        let file = fs::File::from(fd);
        let meta = file.metadata().unwrap();
        if meta.is_file() {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut v).unwrap();
            out.insert(path, Some(v));
        } else if meta.is_dir() {
            out.insert(path.clone(), None);
            if depth == 0 {
                return;
            }
            let mut names: Vec<String> = rustix::fs::Dir::read_from(&file)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "." && n != "..")
                .collect();
            names.sort();
            for n in names {
                walk(root, format!("{path}/{n}"), depth - 1, out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(
        &fs::File::open(root).unwrap(),
        start.to_string(),
        depth,
        &mut out,
    );
    out
}

/// Places in and around the trees that random layouts put things at.
const NODES: [&str; 11] = [
    "etc/dkimkeys",
    "etc/dkimkeys/k",
    "home/a",
    "home/a/b",
    "home/vmail",
    "home/vmail/mail",
    "home/vmail/mail/m",
    "srv",
    "srv/d",
    "srv/d/e",
    "srv/d/e/f",
];

/// A relative path from the directory `from` to `to` (both root-relative).
fn relative(from: &str, to: &str) -> String {
    let up = from.split('/').filter(|c| !c.is_empty()).count();
    format!("{}{to}", "../".repeat(up))
}

/// Apply one random operation to `NODES[i]`: keep, a directory, a file, or
/// a symlink (moving a directory that is there behind the link).
fn apply(f: &Fake, decoy: &std::path::Path, i: usize, op: u8, seed: u8, target: u8, to: usize) {
    let node = NODES[i];
    let p = f.root.join(node);
    let parent = node.rsplit_once('/').map_or("", |(d, _)| d);
    // Never create through a symlink: it could lead to the live host.
    let mut at = f.root.clone();
    for c in parent.split('/').filter(|c| !c.is_empty()) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return,
            Err(_) => fs::create_dir(&at).unwrap(),
        }
    }
    let exists = fs::symlink_metadata(&p).is_ok();
    match op % 4 {
        0 => {}
        1 if !exists => fs::create_dir(&p).unwrap(),
        2 if !exists => fs::write(&p, bytes(seed as u64, 10 + seed as usize)).unwrap(),
        3 => {
            let text = match target % 7 {
                0 => format!("/{}", NODES[to]),
                1 => relative(parent, NODES[to]),
                2 => format!("{}{}", "../".repeat(6), NODES[to]),
                3 => decoy.display().to_string(),
                4 => node.rsplit('/').next().unwrap().to_string(),
                5 => "nope".to_string(),
                _ => format!("/{}/../{}", NODES[to], NODES[(to + 3) % NODES.len()]),
            };
            if exists {
                let moved = format!("disk/moved{i}");
                f.move_behind_link(node, &moved, &text);
            } else {
                std::os::unix::fs::symlink(&text, &p).unwrap();
            }
        }
        _ => {}
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 40,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random symlink layouts (links in and out of the trees, absolute and
    /// relative, escaping the root, dangling, loops, pointing at the live
    /// host): either the migration refuses before any unit is stopped, or
    /// the container sees exactly what the relay saw.
    #[test]
    fn the_container_sees_what_the_relay_saw(
        ops in proptest::collection::vec(
            (0u8..4, proptest::prelude::any::<u8>(), 0u8..7, 0usize..NODES.len()),
            NODES.len(),
        )
    ) {
        let f = Fake::new(&mail(1, 2));
        let decoy = f.tmp.path().join("decoy");
        fs::create_dir_all(&decoy).unwrap();
        fs::write(decoy.join("k"), "live host").unwrap();
        for (i, (op, seed, target, to)) in ops.into_iter().enumerate() {
            apply(&f, &decoy, i, op, seed, target, to);
        }
        let relay = (view(&f.root, "/home", 7), view(&f.root, "/etc/dkimkeys", 7));
        let mut c = f.cmd();
        c.args(["migrate", "--yes"]);
        let (code, out, err) = run_bounded(&mut c, Duration::from_secs(120));
        if code != 0 {
            proptest::prop_assert!(!f.log().contains("stop "), "{out}\n{err}\n{}", f.log());
            proptest::prop_assert!(err.contains("error:"), "{err}");
            return Ok(());
        }
        // The container's / : the copies where the container mounts them.
        let c = f.tmp.path().join("container");
        fs::create_dir_all(c.join("etc")).unwrap();
        fs::rename(f.dest("data/chatmail"), c.join("home")).unwrap();
        fs::rename(f.dest("data/chatmail-dkimkeys"), c.join("etc/dkimkeys")).unwrap();
        let container = (view(&c, "/home", 7), view(&c, "/etc/dkimkeys", 7));
        proptest::prop_assert!(relay.0 == container.0, "/home differs:\n{:?}\n{:?}\n{out}\n{err}", relay.0.keys().collect::<Vec<_>>(), container.0.keys().collect::<Vec<_>>());
        proptest::prop_assert!(relay.1 == container.1, "/etc/dkimkeys differs:\n{:?}\n{:?}", relay.1, container.1);
    }
}

#[test]
fn the_postfix_queue_is_carried_with_mail_that_arrived_during_the_stop() {
    // The relay's own migration guide copies /var/spool/postfix with the
    // keys and the mail: a message the relay accepted and has not
    // delivered yet belongs to it.
    let f = Fake::new(&small());
    let spool = f.root.join("var/spool/postfix");
    for d in ["active", "deferred/A", "maildrop", "public", "incoming"] {
        fs::create_dir_all(spool.join(d)).unwrap();
    }
    fs::write(spool.join("deferred/A/A1B2C3D4E5"), "deferred message").unwrap();
    fs::write(
        spool.join("maildrop/F6A7B8C9D0"),
        "dropped while postfix was down",
    )
    .unwrap();
    // Postfix's own sockets are not data; they are made again at start.
    let sock = std::os::unix::net::UnixListener::bind(spool.join("public/pickup")).unwrap();
    // The last message Postfix accepts before it stops.
    let hook = format!(
        "#!/bin/sh\nprintf 'last one in' > '{}'\n",
        spool.join("incoming/1234567890").display()
    );
    let hook_path = f.units.join("on-stop");
    fs::write(&hook_path, hook).unwrap();
    fs::set_permissions(&hook_path, fs::Permissions::from_mode(0o755)).unwrap();

    let (code, out, err) = migrate(&f, &["--yes"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    drop(sock);
    assert!(
        out.contains("/var/spool/postfix"),
        "the plan names the queue: {out}"
    );
    let dest = f.dest("data/chatmail-postfix");
    for (rel, content) in [
        ("deferred/A/A1B2C3D4E5", "deferred message"),
        ("maildrop/F6A7B8C9D0", "dropped while postfix was down"),
        ("incoming/1234567890", "last one in"),
    ] {
        assert_eq!(
            fs::read_to_string(dest.join(rel)).unwrap_or_default(),
            content,
            "{rel} in data/chatmail-postfix"
        );
    }
    assert!(
        !dest.join("public/pickup").exists(),
        "sockets are not copied"
    );
}
