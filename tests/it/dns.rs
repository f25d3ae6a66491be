//! `dns` without an engine: a stand-in `docker` plays the running
//! appliance and answers the in-container script with a report. What the
//! zone file may replace (only a zone file `dns` wrote: never `.env`,
//! `chatmail.ini`, a link or someone's file), and that what the relay
//! reports reaches the terminal escaped while `--json` stays exact.

use crate::support::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

const ID: &str = "c0ffee0c0ffee";

struct Case {
    _t: tempfile::TempDir,
    dir: PathBuf,
    bin: PathBuf,
    report: PathBuf,
}

/// A deployment with `.env` (0600) and `chatmail.ini`, its container
/// running, and the relay's report `zone` for `chat.example.org`.
fn case(zone: &str, required_missing: &[&str]) -> Case {
    let t = tempfile::tempdir().unwrap();
    let dir = minimal_deployment(t.path());
    fs::write(dir.join(".env"), "MAIL_DOMAIN=chat.example.org\n").unwrap();
    fs::set_permissions(dir.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(
        dir.join("chatmail.ini"),
        "[params]\nmail_domain = chat.example.org\n",
    )
    .unwrap();
    let report = t.path().join("report.json");
    fs::write(
        &report,
        serde_json::json!({
            "domain": "chat.example.org",
            "zone": zone,
            "checked": !required_missing.is_empty(),
            "required_missing": required_missing,
            "notes": [],
        })
        .to_string(),
    )
    .unwrap();
    let bin = t.path().join("bin");
    script(
        &bin,
        "docker",
        &format!(
            r#"case "$*" in
  *" ps --status running --quiet chatmail"|*" ps --all --quiet"*) echo {ID};;
  "inspect {ID}") printf '[{{"Id":"{ID}","Name":"/chatmail-chatmail-1","Image":"sha256:0","State":{{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0}},"Config":{{"Image":"chatmail-relay:local","Labels":{{"com.docker.compose.project":"chatmail","com.docker.compose.project.working_dir":"{dir}"}}}}}}]';;
  *" exec -T chatmail "*) cat '{report}';;
esac
exit 0"#,
            dir = dir.display(),
            report = report.display()
        ),
    );
    Case {
        _t: t,
        dir,
        bin,
        report,
    }
}

const ZONE: &str = "; Required DNS entries\nchat.example.org. 3600 IN MX 10 chat.example.org.\n";

impl Case {
    fn run(&self, args: &[&str]) -> std::process::Output {
        bin()
            .env("PATH", path_with(&self.bin))
            .current_dir(&self.dir)
            .arg("--dir")
            .arg(&self.dir)
            .arg("dns")
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap()
    }
}

#[test]
fn the_zonefile_never_replaces_a_file_it_did_not_write() {
    let c = case(ZONE, &[]);
    let d = &c.dir;
    fs::create_dir_all(d.join("keep")).unwrap();
    fs::hard_link(d.join(".env"), d.join("keep/env-link")).unwrap();
    fs::hard_link(d.join("chatmail.ini"), d.join("keep/ini-link")).unwrap();
    symlink(d.join(".env"), d.join("keep/to-env.zone")).unwrap();
    symlink(d.join("keep/absent"), d.join("keep/dangling.zone")).unwrap();
    fs::write(d.join("keep/notes.zone"), "; my own zone, by hand\n").unwrap();
    fs::create_dir_all(d.join("keep/a-directory")).unwrap();
    mkfifo(&d.join("keep/fifo"));
    let snapshot_before = snapshot(d);
    let env_mode = fs::metadata(d.join(".env")).unwrap().mode();
    for (target, needle) in [
        (".env", "is the deployment's .env"),
        ("chatmail.ini", "is the deployment's chatmail.ini"),
        ("keep/env-link", "is the deployment's .env"),
        ("keep/ini-link", "is the deployment's chatmail.ini"),
        ("keep/to-env.zone", "is a symlink"),
        ("keep/dangling.zone", "is a symlink"),
        ("keep/notes.zone", "is no zone file this command wrote"),
        ("keep/a-directory", "is a directory"),
        ("keep/fifo", "is a FIFO"),
    ] {
        for extra in [&[][..], &["--dry-run"], &["--json"]] {
            let mut args = vec!["--no-check", "--zonefile", target];
            args.extend_from_slice(extra);
            let o = c.run(&args);
            let out = output_text(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
            assert!(
                out.contains(&format!("--zonefile {}", d.join(target).display()))
                    && out.contains(needle),
                "{args:?}: no `{needle}` in {out}"
            );
        }
    }
    assert_eq!(snapshot(d), snapshot_before, "nothing was touched");
    assert_eq!(fs::metadata(d.join(".env")).unwrap().mode(), env_mode);
}

#[test]
fn the_zonefile_is_written_marked_and_replaced_atomically() {
    let c = case(ZONE, &[]);
    let zone = c.dir.join("chatmail.zone");
    let o = c.run(&["--no-check", "--zonefile", "chatmail.zone"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let written = fs::read_to_string(&zone).unwrap();
    let mut lines = written.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("; written by chatmail-docker dns --zonefile"),
        "{written}"
    );
    assert_eq!(lines.collect::<Vec<_>>().join("\n") + "\n", ZONE);
    assert_eq!(fs::metadata(&zone).unwrap().mode() & 0o7777, 0o644);
    // Its own file is replaced on the next run (a new inode: renamed over).
    let ino = fs::metadata(&zone).unwrap().ino();
    let newer = ZONE.replace("10 chat", "20 chat");
    let mut report: serde_json::Value =
        serde_json::from_slice(&fs::read(&c.report).unwrap()).unwrap();
    report["zone"] = newer.clone().into();
    fs::write(&c.report, report.to_string()).unwrap();
    let o = c.run(&["--no-check", "--zonefile", zone.to_str().unwrap()]);
    assert!(o.status.success(), "{}", output_text(&o));
    let rewritten = fs::read_to_string(&zone).unwrap();
    assert!(rewritten.ends_with(&newer), "{rewritten}");
    assert_ne!(fs::metadata(&zone).unwrap().ino(), ino);
    // No temporary file is left beside it.
    let names: Vec<String> = fs::read_dir(&c.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("chatmail.zone"))
        .collect();
    assert_eq!(names, vec!["chatmail.zone".to_string()]);
}

#[test]
fn relay_values_are_escaped_on_the_terminal_and_exact_in_json() {
    let evil = "chat.example.org. 3600 IN TXT \"\u{1b}]0;owned\u{7}\u{1b}[2J\"";
    let zone = format!("; Required DNS entries\n{evil}\n");
    let c = case(&zone, &[evil]);
    let o = c.run(&[]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "a required record is missing");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "raw control characters on the terminal: {stdout:?}"
    );
    assert!(
        stdout.contains(r#"TXT "\u{1b}]0;owned\u{7}\u{1b}[2J""#),
        "{stdout}"
    );
    // Twice: in the zone and in the list of missing records.
    assert_eq!(stdout.matches(r"\u{1b}]0;owned").count(), 2, "{stdout}");
    // --json is for programs: exact.
    let o = c.run(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["zone"], zone.as_str());
    assert_eq!(v["required_missing"][0], evil);
}
