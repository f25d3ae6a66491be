//! The default reload through `docker exec` in the deployment's container
//! (a stand-in `docker` first on PATH records its calls and plays a
//! container that is up, stopped, absent, or whose dovecot refuses to
//! reload), and retrying with backoff while the container is down or a
//! custom command asks to try later.

use crate::support::certs::*;
use crate::support::{assert_ok, path_with, script};

use std::fs;
use std::path::{Path, PathBuf};

/// A stand-in `docker`: `compose config` fails (so the default mount is
/// used), `ps` on Compose's labels finds the container when `up` or
/// `stopped` exists (another deployment's, by its label, when `foreign`
/// exists too; `stopped`: exited), `exec` fails when it is not up, and
/// dovecot's reload fails when `fail-dovecot` exists.
fn fake_docker(d: &Deploy) -> (PathBuf, PathBuf) {
    let bin = d.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = d.path("docker.calls");
    let state = d.path("fake");
    fs::create_dir_all(&state).unwrap();
    let body = format!(
        r#"echo "$*" >> '{calls}'
S='{state}'
case "$*" in
  *" config --format json"*) echo "no compose file" >&2; exit 1 ;;
  "ps --no-trunc --all --filter label=com.docker.compose.project=chatmail --filter label=com.docker.compose.service=chatmail --filter label=com.docker.compose.oneoff=False --format "*)
    {{ [ -f "$S/up" ] || [ -f "$S/stopped" ]; }} || exit 0
    D='{dir}'; [ -f "$S/foreign" ] && D=/srv/other-deployment
    T=running; [ -f "$S/up" ] || T=exited
    printf '["0123abcd","chatmail-chatmail-1","%s","%s"]\n' "$T" "$D"; exit 0 ;;
  "inspect 0123abcd") D='{dir}'; [ -f "$S/foreign" ] && D=/srv/other-deployment
    R=true; T=running; [ -f "$S/up" ] || {{ R=false; T=exited; }}
    printf '[{{"Id":"0123abcd","Name":"/chatmail-chatmail-1","Image":"sha256:0","State":{{"Status":"%s","Running":%s,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0}},"Config":{{"Image":"chatmail-relay:local","Labels":{{"com.docker.compose.project.working_dir":"%s"}}}}}}]' "$T" "$R" "$D"; exit 0 ;;
  "exec 0123abcd "*)
    [ -f "$S/up" ] || {{ echo 'Error response from daemon: container 0123abcd is not running' >&2; exit 1; }}
    # `vanish`: the container stops while the reload runs.
    [ -f "$S/vanish" ] && {{ rm -f "$S/vanish" "$S/up"; touch "$S/stopped"; echo 'Error response from daemon: container 0123abcd is not running' >&2; exit 1; }}
    case "$*" in
      *"systemctl reload"*dovecot*) [ -f "$S/fail-dovecot" ] && {{ echo "Job for dovecot.service failed" >&2; exit 1; }} ;;
    esac
    exit 0 ;;
esac
exit 0
"#,
        calls = calls.display(),
        state = state.display(),
        dir = d.dir.display()
    );
    script(&bin, "docker", &body);
    (bin, state)
}

/// The systemctl parts of the recorded `docker exec` calls.
fn exec_calls(d: &Deploy) -> Vec<String> {
    fs::read_to_string(d.path("docker.calls"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("exec 0123abcd ").map(str::to_string))
        .collect()
}

/// `cert-watch --once` with the stand-in docker in `bin` first on PATH.
fn once_with(d: &Deploy, bin: &Path) -> std::process::Output {
    d.cmd()
        .env("PATH", path_with(bin))
        .args(["cert-watch", "--once", "--no-verify"])
        .output()
        .unwrap()
}

#[test]
fn reload_restarts_a_unit_whose_reload_fails() {
    let d = Deploy::new("");
    let (bin, state) = fake_docker(&d);
    fs::write(state.join("up"), "").unwrap();
    let a = pair();
    let mut acme = Acmetool::new(d.path("data/chatmail-acme"), &a);
    // `cert-watch --once` with the stand-in docker; what it wrote to stderr.
    let once = || {
        let out = once_with(&d, &bin);
        assert_ok(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    once();
    assert_eq!(
        exec_calls(&d),
        vec!["systemctl reload nginx dovecot postfix"]
    );
    // Straight to the engine: no `docker compose` process on the reload's
    // way (Compose is asked once, at start, where the certificate is).
    let calls = fs::read_to_string(d.path("docker.calls")).unwrap();
    assert!(
        calls
            .lines()
            .filter(|l| l.starts_with("compose "))
            .all(|l| l.ends_with(" config --format json")),
        "{calls}"
    );

    // Next certificate: dovecot refuses to reload and is restarted.
    fs::write(state.join("fail-dovecot"), "").unwrap();
    fs::remove_file(d.path("docker.calls")).unwrap();
    acme.rotate(&pair());
    let err = once();
    assert_eq!(
        exec_calls(&d),
        vec![
            "systemctl reload nginx dovecot postfix",
            "systemctl reload nginx",
            "systemctl reload dovecot",
            "systemctl restart dovecot",
            "systemctl reload postfix",
        ]
    );
    assert!(
        err.contains("restarted dovecot (its reload failed)"),
        "{err}"
    );
}

#[test]
fn another_deployments_container_is_never_reloaded() {
    let d = Deploy::new("");
    let (bin, state) = fake_docker(&d);
    fs::write(state.join("up"), "").unwrap();
    fs::write(state.join("foreign"), "").unwrap();
    let a = pair();
    Acmetool::new(d.path("data/chatmail-acme"), &a);
    let out = once_with(&d, &bin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("/srv/other-deployment") && err.contains("nothing was done to it"),
        "{err}"
    );
    assert_eq!(exec_calls(&d), Vec::<String>::new(), "{err}");
    assert!(!d.path("data/.cert-watch-state.json").exists());
}

#[test]
fn container_down_is_retried_until_it_is_back() {
    let d = Deploy::new("");
    let (bin, state) = fake_docker(&d);
    let a = pair();
    Acmetool::new(d.path("data/chatmail-acme"), &a);
    let log = d.path("watch.log");
    let mut c = d.cmd();
    c.env("PATH", path_with(&bin))
        .args(["cert-watch", "--no-verify", "--poll-interval", "3600"])
        .stdin(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let mut w = Watcher {
        child: c.spawn().unwrap(),
        log,
    };
    // No container, then a stopped one: nothing is run in it.
    wait_log(&w, "container is not running (there is none)", 1);
    fs::write(state.join("stopped"), "").unwrap();
    wait_log(&w, "container is not running (exited)", 1);
    assert_eq!(exec_calls(&d), Vec::<String>::new());
    assert!(!d.path("data/.cert-watch-state.json").exists());
    // It runs, and stops while the reload runs: a container that is down,
    // retried, not a failed reload.
    fs::write(state.join("vanish"), "").unwrap();
    fs::write(state.join("up"), "").unwrap();
    wait_log(&w, "not running (Error response from daemon", 1);
    assert!(!d.path("data/.cert-watch-state.json").exists());
    fs::write(state.join("up"), "").unwrap();
    wait_for("the state file after the container came back", &w, || {
        d.path("data/.cert-watch-state.json").exists()
    });
    let calls = exec_calls(&d);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls
        .iter()
        .all(|c| c == "systemctl reload nginx dovecot postfix"));
    assert!(w.log().contains("retrying in 1 s"), "{}", w.log());
    assert!(!w.log().contains("reload failed"), "{}", w.log());
    assert_eq!(w.terminate().code(), Some(0));
}

#[test]
fn custom_command_exit_75_means_try_again_later() {
    let d = Deploy::new("");
    let a = pair();
    let dir = d.plain_at("ssl", &a);
    let count = d.path("attempts");
    let cmd = format!(
        "echo x >> '{c}'; [ $(wc -l < '{c}') -ge 2 ] || exit 75; {rec}",
        c = count.display(),
        rec = d.record_cmd()
    );
    let log = d.path("watch.log");
    let mut c = d.cmd();
    c.args([
        "cert-watch",
        "--no-verify",
        "--poll-interval",
        "3600",
        "--path",
    ])
    .arg(&dir)
    .arg("--reload-command")
    .arg(cmd)
    .stdin(std::process::Stdio::null())
    .stderr(fs::File::create(&log).unwrap());
    let w = Watcher {
        child: c.spawn().unwrap(),
        log,
    };
    wait_for("the reload after one retry", &w, || !d.reloads().is_empty());
    assert_eq!(d.reloaded_leaves(), vec![a.leaf]);
    assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 2);
    assert!(w.log().contains("exited with 75"), "{}", w.log());
}
