//! cert-watch under hostile conditions: a reload command that never ends,
//! durations out of range, and many `--once` runs at the same moment.

use crate::support::certs::{pair, Acmetool, Deploy, ONCE_BOUND};
use std::fs;

#[test]
fn a_hanging_reload_command_is_stopped_with_everything_it_started() {
    let d = Deploy::new("");
    let _acme = Acmetool::new(d.path("data/chatmail-acme"), &pair());
    // `; true`: the shell waits for a child of its own, which must be
    // stopped too (it holds the output pipes open).
    let out = d.once(&["--reload-timeout", "1"], "sleep 1000; true");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not finish within 1 s"), "{err}");
    assert!(err.contains("--reload-timeout"), "{err}");
    assert!(
        !d.path("data/.cert-watch-state.json").exists(),
        "nothing recorded as applied"
    );
}

#[test]
fn durations_are_bounded() {
    let d = Deploy::new("");
    let _acme = Acmetool::new(d.path("data/chatmail-acme"), &pair());
    for args in [
        ["--verify-timeout", "0"],
        ["--verify-timeout", "3601"],
        ["--verify-timeout", "18446744073709551615"],
        ["--reload-timeout", "0"],
        ["--reload-timeout", "3601"],
    ] {
        let out = assert_cmd::Command::from_std(d.cmd())
            .args(["cert-watch", "--once"])
            .args(args)
            .args(["--reload-command", "true"])
            .timeout(ONCE_BOUND)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(args[0]), "{args:?}: {err}");
        assert!(err.contains("between 1 and 3600"), "{args:?}: {err}");
    }
}

#[test]
fn concurrent_once_runs_reload_once() {
    let d = Deploy::new("");
    let _acme = Acmetool::new(d.path("data/chatmail-acme"), &pair());
    // Slow enough that the runs overlap.
    let reload = format!("sleep 0.5; echo reload >> '{}'", d.recorder().display());
    let runs: Vec<_> = (0..10)
        .map(|_| {
            let mut c = assert_cmd::Command::from_std(d.cmd());
            c.args(["cert-watch", "--once", "--no-verify", "--reload-command"])
                .arg(&reload)
                .timeout(ONCE_BOUND);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = fs::read_to_string(d.recorder()).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
}
