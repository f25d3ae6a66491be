//! End-to-end `upgrade` with the real relay: a local git origin made from
//! the relay snapshot (with the offline patch, as in tests/e2e/relay.rs),
//! a deployment whose `relay/` is a clone of it, and two releases
//! committed on top: 1.13.0 changes the web page's text and adds a unit
//! that uses systemd's sandboxing (DynamicUser=, PrivateTmp=,
//! ProtectSystem=, ...), 1.14.0 fails in the relay's `configure` stage.
//!
//! In order: setup on the snapshot; `--check` finds 1.13.0; the upgrade
//! (both releases deployed beside the relay first) serves the new page,
//! keeps the mail and reports its downtime; `--check` is then quiet; a
//! Ctrl-C during the build of 1.14.0 leaves the relay as it was; 1.14.0
//! fails beside the relay and is never swapped in; with
//! `--no-deploy-beside` it is, and the upgrade rolls back by itself; a
//! Ctrl-C during that swap still ends with a healthy relay; `--rollback`
//! goes back to the snapshot; a container from that deployed image follows
//! new settings and custom/ files, and skips the deploy for its own. Mail
//! is delivered after every step, and the first messages stay readable
//! throughout.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::engine::relay::*;
use crate::support::engine::*;

const GOOD: &str = RELEASE_1_13;
const BROKEN: &str = "1.14.0";
const GOOD_TEXT: &str = RELEASE_1_13_TEXT;
/// The label of an image deployed beside the relay.
const DEPLOYED: &str = "org.chatmail-docker.deployed";

/// The tool's `upgrade` as a child process whose output is collected as
/// it comes, to send it a signal at the right step.
struct Running {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Running {
        let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("chatmail-docker"))
            .env("CHATMAIL_IMAGE", IMAGE)
            .env("CHATMAIL_BUILD_CA", HOST_CA)
            .env("CHATMAIL_BASE_IMAGE", base_image())
            .env("NO_COLOR", "1")
            .envs(filtermail_env(dir))
            .arg("--dir")
            .arg(dir)
            .arg("upgrade")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("  upgrade | {line}");
                    out.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        Running { child, out }
    }

    fn wait_for(&self, text: &str) {
        let start = Instant::now();
        while !self.out.lock().unwrap().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(1200),
                "`{text}` never came:\n{}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn interrupt(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::INT,
        )
        .unwrap();
    }

    fn finish(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let out = self.out.lock().unwrap().clone();
        (status.code().unwrap_or(-1), out)
    }
}

/// The sandboxed unit runs, inside its sandbox: a dynamic user, a
/// read-only system, no /home, its own /tmp and /dev; the health check
/// covers it.
fn sandboxed_unit_runs(container: &str) {
    let (ok, out) = exec_status(container, &["systemctl", "is-active", PROBE]);
    assert!(
        ok,
        "{PROBE} runs: {out}\n{}",
        exec_status(container, &["journalctl", "--no-pager", "-u", PROBE]).1
    );
    let units = exec(container, &["cat", "/etc/chatmail/relay-units"]);
    assert!(
        units.lines().any(|l| l == format!("{PROBE}.service")),
        "the health check covers {PROBE}: {units}"
    );
    let read = |name: &str| {
        let path = format!("/var/lib/private/{PROBE}/{name}");
        for _ in 0..40 {
            let (ok, out) = exec_status(container, &["cat", &path]);
            if ok && !out.trim().is_empty() {
                return out.trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{PROBE} wrote no {path}");
    };
    let uid: u32 = read("uid").parse().unwrap();
    assert!(
        (61184..=65519).contains(&uid),
        "{PROBE} runs as a dynamic user: uid {uid}"
    );
    assert_eq!(read("etc"), "read-only", "ProtectSystem=strict");
    assert_eq!(read("home"), "0", "ProtectHome=yes");
    assert!(
        exec_ok(container, &["test", "-e", "/dev/console"]),
        "the container has a console"
    );
    assert_eq!(
        read("dev-console"),
        "no",
        "PrivateDevices=yes: its own /dev"
    );
    assert!(
        !exec_ok(container, &["test", "-e", "/tmp/probe-private"]),
        "PrivateTmp=yes: the probe's /tmp is its own"
    );
    let dropins = exec(
        container,
        &["systemctl", "show", "-p", "DropInPaths", "--value", PROBE],
    );
    eprintln!(
        "e2e-upgrade: {PROBE} (uid {uid}) runs sandboxed; drop-ins: {}",
        dropins.trim()
    );
}

/// The suite's base image: an upgrade builds from it like `setup` did.
fn upgrade(dir: &Path, args: &[&str], expect: i32, what: &str) -> (String, String) {
    run_tool(
        tool(dir)
            .env("CHATMAIL_BASE_IMAGE", base_image())
            .arg("upgrade")
            .args(args),
        expect,
        what,
    )
}

fn status(dir: &Path) -> serde_json::Value {
    let (stdout, _) = run_tool(tool(dir).args(["status", "--json"]), 0, "status --json");
    serde_json::from_str(&stdout).unwrap()
}

fn page() -> String {
    mailcheck(&["--page"])["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// New accounts, mail over 587, 465 and 25, all of it in the INBOX.
fn mail_flows(when: &str) -> serde_json::Value {
    let v = mailcheck(&[]);
    let sent: Vec<String> = ["587", "465", "25"]
        .iter()
        .map(|p| v["sent"][p].as_str().unwrap().to_string())
        .collect();
    inbox_has(&v, &sent);
    filtermail_enforces(&v);
    eprintln!("e2e-upgrade: mail delivered {when}");
    v
}

/// A Go template of `docker image inspect`, evaluated.
fn inspect_image(image: &str, format: &str) -> String {
    let out = StdCommand::new("docker")
        .args(["image", "inspect", "--format", format, image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `setup` (no build: the image is there); the healthy container.
fn setup(dir: &Path, what: &str) -> String {
    run_tool(
        tool(dir).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        what,
    );
    healthy_container_of(&mut tool(dir))
}

fn container_id(dir: &Path) -> String {
    let out = StdCommand::new("docker")
        .args([
            "compose",
            "--project-name",
            "chatmail",
            "--project-directory",
        ])
        .arg(dir)
        .arg("--file")
        .arg(dir.join("docker/docker-compose.yaml"))
        .args(["ps", "--all", "--quiet"])
        .env("CHATMAIL_IMAGE", IMAGE)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn real_relay_upgrade() {
    let Some((_engine, total, base_image, tmp)) = engine_test("chatmail-e2e-upgrade") else {
        return;
    };
    // The origin: the snapshot (with the offline patch) on main; the
    // deployment: the appliance files and a clone of the origin.
    let (origin, dir, base) = origin_and_deployment(tmp.path());
    fs::write(dir.join("chatmail.ini"), ini("")).unwrap();
    let _down = Down::new(&dir, IMAGE);

    // 1. The relay at the snapshot, and the first mail.
    rebuild(&dir, &base_image, "setup on the snapshot");
    let first = mail_flows("on the snapshot");
    let b = &first["b"];
    let b_login = format!(
        "{}:{}",
        b["email"].as_str().unwrap(),
        b["password"].as_str().unwrap()
    );
    let first_ids: Vec<String> = ["587", "465", "25"]
        .iter()
        .map(|p| first["sent"][p].as_str().unwrap().to_string())
        .collect();
    let first_ids = first_ids.join(",");
    let s = status(&dir);
    assert_eq!(s["relay"]["running"]["commit"], base.as_str(), "{s}");
    assert!(s["relay"]["newer"].is_null(), "{s}");

    // 2. Release 1.13.0: --check finds it, status knows it after a fetch.
    let good = release(&origin, GOOD, release_1_13);
    let (out, _) = upgrade(&dir, &["--check"], 0, "upgrade --check (1.13.0 is out)");
    assert!(out.contains(&format!("-> {GOOD}")), "{out}");
    assert_eq!(git(&dir.join("relay"), &["rev-parse", "HEAD"]), base);
    let s = status(&dir);
    assert_eq!(s["relay"]["newer"], GOOD, "status after the fetch: {s}");

    // 3. The upgrade: new page, old mail, new mail, downtime measured.
    let before = container_id(&dir);
    let (out, _) = upgrade(&dir, &["--json"], 0, "upgrade to 1.13.0");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["outcome"], "upgraded", "{summary}");
    assert_eq!(summary["to"]["version"], GOOD, "{summary}");
    let downtime = summary["downtime_seconds"].as_f64().unwrap_or(0.0);
    eprintln!(
        "e2e-upgrade: build {:.0}s while serving, swap downtime {downtime:.1}s",
        summary["build_seconds"].as_f64().unwrap_or(0.0)
    );
    assert!(
        summary["backup"]
            .as_str()
            .is_some_and(|p| Path::new(p).exists()),
        "a backup before the swap: {summary}"
    );
    assert_ne!(container_id(&dir), before, "the container was replaced");
    assert!(page().contains(GOOD_TEXT), "the new release's page");
    let old = mailcheck(&["--read", &b_login, "--wait-ids", &first_ids]);
    inbox_has(
        &old,
        &first_ids.split(',').map(str::to_string).collect::<Vec<_>>(),
    );
    mail_flows("after the upgrade");
    sandboxed_unit_runs(&container_id(&dir));
    let s = status(&dir);
    assert_eq!(s["relay"]["running"]["version"], GOOD, "{s}");
    assert!(s["relay"]["newer"].is_null(), "{s}");
    let restore = format!("{IMAGE}-relay-{}", &base[..12]);
    assert!(image_id(&restore).is_some(), "the restore point {restore}");
    // Both releases were deployed beside the relay: the images carry the
    // deploy, and none of the settings in their configuration.
    for img in [restore.as_str(), IMAGE] {
        let label = inspect_image(img, &format!("{{{{index .Config.Labels \"{DEPLOYED}\"}}}}"));
        assert!(
            !label.is_empty() && label != "<no value>",
            "{img} is deployed: {label}"
        );
        let env = inspect_image(img, "{{json .Config.Env}}");
        assert!(
            !env.contains("MAIL_DOMAIN"),
            "{img} has settings baked in: {env}"
        );
    }
    assert!(
        summary["deploy_aside_seconds"].as_f64().is_some(),
        "deployed beside the relay: {summary}"
    );
    upgrade(&dir, &["--check"], 1, "upgrade --check (up to date)");

    // 4. Release 1.14.0 fails in configure. A Ctrl-C during its build
    // leaves everything as it was.
    release(&origin, BROKEN, |o| {
        let f = o.join("cmdeploy/src/cmdeploy/basedeploy.py");
        let text = fs::read_to_string(&f).unwrap();
        let anchor = "def configure_remote_units(deployer, mail_domain, units) -> None:\n";
        assert!(
            text.contains(anchor),
            "the relay's configure_remote_units moved"
        );
        fs::write(
            &f,
            text.replace(
                anchor,
                &format!("{anchor}    raise RuntimeError(\"release {BROKEN} cannot configure\")\n"),
            ),
        )
        .unwrap();
    });
    let serving = container_id(&dir);
    let run = Running::start(&dir, &[]);
    run.wait_for("Building");
    std::thread::sleep(Duration::from_secs(3));
    run.interrupt();
    let (code, out) = run.finish();
    assert_eq!(code, 130, "Ctrl-C during the build:\n{out}");
    assert!(out.contains("interrupted during the build"), "{out}");
    assert_eq!(git(&dir.join("relay"), &["rev-parse", "HEAD"]), good);
    assert_eq!(container_id(&dir), serving, "the relay was not touched");
    healthy_container_of(&mut tool(&dir));

    // 5. Its deploy beside the relay fails: nothing is swapped.
    let (_, err) = upgrade(&dir, &[], 1, "upgrade to the broken 1.14.0");
    assert!(err.contains("nothing was swapped"), "{err}");
    assert!(
        err.contains("cannot configure"),
        "the side container's log: {err}"
    );
    assert_eq!(container_id(&dir), serving, "the relay was not touched");
    assert_eq!(git(&dir.join("relay"), &["rev-parse", "HEAD"]), good);
    assert!(page().contains(GOOD_TEXT), "1.13.0 serves on");

    // 6. Swapped in without that check, it fails in the new container and
    // the upgrade rolls back by itself.
    let (out, err) = upgrade(
        &dir,
        &["--no-deploy-beside", "--json"],
        1,
        "upgrade --no-deploy-beside to the broken 1.14.0",
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["outcome"], "rolled-back", "{summary}");
    let rollback = summary["rollback_seconds"].as_f64().unwrap_or(0.0);
    eprintln!(
        "e2e-upgrade: automatic rollback {rollback:.1}s, mail downtime {:.1}s",
        summary["downtime_seconds"].as_f64().unwrap_or(0.0)
    );
    assert!(err.contains("rolled back by itself"), "{err}");
    assert!(
        err.contains("cannot configure"),
        "the new container's log: {err}"
    );
    assert_eq!(git(&dir.join("relay"), &["rev-parse", "HEAD"]), good);
    healthy_container_of(&mut tool(&dir));
    assert!(page().contains(GOOD_TEXT), "1.13.0 serves again");
    mail_flows("after the automatic rollback");

    // 7. A Ctrl-C during that swap waits for the swap and the rollback.
    let run = Running::start(&dir, &["--no-deploy-beside"]);
    run.wait_for("Swapping");
    std::thread::sleep(Duration::from_secs(1));
    run.interrupt();
    let (code, out) = run.finish();
    assert_eq!(code, 130, "Ctrl-C during the swap:\n{out}");
    assert!(out.contains("rolled back by itself"), "{out}");
    healthy_container_of(&mut tool(&dir));
    assert!(
        page().contains(GOOD_TEXT),
        "1.13.0 serves after the interrupted swap"
    );

    // 8. --rollback by hand: back to the snapshot (the last good upgrade
    // came from there; the failed ones left that restore point alone).
    upgrade(&dir, &["--rollback"], 0, "upgrade --rollback");
    assert_eq!(git(&dir.join("relay"), &["rev-parse", "HEAD"]), base);
    assert!(!page().contains(GOOD_TEXT), "the snapshot's page again");
    let s = status(&dir);
    assert_eq!(s["relay"]["running"]["commit"], base.as_str(), "{s}");
    let old = mailcheck(&["--read", &b_login, "--wait-ids", &first_ids]);
    inbox_has(
        &old,
        &first_ids.split(',').map(str::to_string).collect::<Vec<_>>(),
    );
    mail_flows("after --rollback");

    // 9. New settings and custom/ files on the rolled-back relay: setup
    // deploys them beside the relay first (from the image the restore
    // point was deployed from), and the new container only starts its
    // services.
    let custom = dir.join("custom/www/src/index.md");
    fs::create_dir_all(custom.parent().unwrap()).unwrap();
    fs::write(&custom, "# Our own page\n\nCUSTOM-AFTER-ROLLBACK\n").unwrap();
    fs::write(
        dir.join("chatmail.ini"),
        ini("max_user_send_per_minute = 61\n"),
    )
    .unwrap();
    let started = Instant::now();
    let container = setup(&dir, "setup with new settings on the deployed image");
    eprintln!(
        "e2e-upgrade: setup with changed settings (deploy aside + swap): {:.1?}",
        started.elapsed()
    );
    assert!(page().contains("CUSTOM-AFTER-ROLLBACK"), "the custom page");
    let ini_in = exec(&container, &["cat", "/etc/chatmail/chatmail.ini"]);
    assert!(ini_in.contains("max_user_send_per_minute = 61"), "{ini_in}");
    let log = StdCommand::new("docker")
        .args(["logs", &container])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("skipping cmdeploy run"),
        "the deploy was skipped: {}",
        tail(&log, 30)
    );
    let s = status(&dir);
    assert_eq!(s["relay"]["running"]["commit"], base.as_str(), "{s}");

    // The restore points this suite made.
    remove_restore_points(IMAGE);
    eprintln!("e2e-upgrade: whole sequence {:.0?}", total.elapsed());
}
