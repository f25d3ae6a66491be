//! `backup` and `restore`: round trips through the real binary and the
//! library, incremental chains, retention, the queue pause with a stand-in
//! `docker` that records its calls (thawed on errors and on SIGTERM), and
//! every way a restore must refuse with nothing written.

use crate::support::{assert_code, assert_ok, bin, path_with, script, SmallDisk};

use chatmail_docker::backup::{self, BackupOptions, Output};
use chatmail_docker::host::Host;
use chatmail_docker::shell::{ColorChoice, Shell, Verbosity};
use chatmail_docker::Context;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A deployment directory with mail, keys, a queue and configuration.
pub(crate) fn deployment(root: &Path) -> PathBuf {
    let d = root.join("deploy");
    let mail = d.join("data/chatmail/vmail/mail/example.org/u@example.org");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(mail.join(sub)).unwrap();
    }
    for i in 0..40 {
        let body: Vec<u8> = (0..(i * 997 % 20000)).map(|b| (b * 31 + i) as u8).collect();
        fs::write(
            mail.join(format!("cur/{}.M{i}.relay:2,S", 1700000000 + i)),
            body,
        )
        .unwrap();
    }
    fs::write(mail.join("password"), "$6$x$y\n").unwrap();
    fs::hard_link(
        mail.join("cur/1700000001.M1.relay:2,S"),
        mail.join("new/1700000099.L1.relay"),
    )
    .unwrap();
    fs::create_dir_all(d.join("data/chatmail-dkimkeys")).unwrap();
    fs::write(d.join("data/chatmail-dkimkeys/opendkim.private"), "KEY").unwrap();
    fs::set_permissions(
        d.join("data/chatmail-dkimkeys/opendkim.private"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::create_dir_all(d.join("data/chatmail-acme/certs/c")).unwrap();
    fs::write(d.join("data/chatmail-acme/certs/c/fullchain"), "CERT").unwrap();
    fs::create_dir_all(d.join("data/chatmail-acme/live")).unwrap();
    std::os::unix::fs::symlink("../certs/c", d.join("data/chatmail-acme/live/example.org"))
        .unwrap();
    fs::create_dir_all(d.join("data/chatmail-postfix/deferred/A")).unwrap();
    fs::write(
        d.join("data/chatmail-postfix/deferred/A/A1B2C3"),
        "queued mail",
    )
    .unwrap();
    fs::write(d.join("data/README.md"), "placeholder").unwrap();
    fs::write(
        d.join("chatmail.ini"),
        "[params]\nmail_domain = example.org\n",
    )
    .unwrap();
    fs::write(d.join(".env"), "MAIL_DOMAIN=example.org\n").unwrap();
    fs::set_permissions(d.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(d.join("custom/www/src")).unwrap();
    fs::write(d.join("custom/www/src/index.md"), "# hello").unwrap();
    fs::write(d.join("docker-compose.override.yaml"), "services: {}\n").unwrap();
    fs::create_dir_all(d.join("docker")).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/docker-compose.yaml"),
        d.join("docker/docker-compose.yaml"),
    )
    .unwrap();
    if rustix::process::geteuid().is_root() {
        // The container's users: ids the host does not know.
        for p in ["data/chatmail", "data/chatmail-dkimkeys/opendkim.private"] {
            std::os::unix::fs::lchown(d.join(p), Some(5998), Some(5998)).unwrap();
        }
    }
    d
}

/// (uid, gid) of the mail directory and the DKIM key.
pub(crate) fn owners_of(d: &Path) -> Vec<(u32, u32)> {
    ["data/chatmail", "data/chatmail-dkimkeys/opendkim.private"]
        .iter()
        .map(|p| {
            let m = fs::symlink_metadata(d.join(p)).unwrap();
            (m.uid(), m.gid())
        })
        .collect()
}

/// A stand-in `docker` that logs its arguments to `log`. `running`: the
/// container runs (answers `ps` and the relay's facts); `extra` runs for
/// any call whose arguments contain `systemctl freeze`.
pub(crate) fn docker(bin_dir: &Path, log: &Path, running: bool, on_freeze: &str) {
    docker_with(bin_dir, log, running, on_freeze, true)
}

/// [`docker`]; `thawer`: whether the waiting thaw shell works (else the
/// tool falls back to a second exec).
pub(crate) fn docker_with(
    bin_dir: &Path,
    log: &Path,
    running: bool,
    on_freeze: &str,
    thawer: bool,
) {
    let ps = if running { "echo c0ffee" } else { ":" };
    let thaw_shell = if thawer {
        format!(
            r#"*"echo ready; read _"*) echo ready; read _; echo "thawed-by-shell" >> '{}'; echo thawed; exit 0;;"#,
            log.display()
        )
    } else {
        String::new()
    };
    script(
        bin_dir,
        "docker",
        &format!(
            r#"echo "$*" >> '{log}'
case "$*" in
  {thaw_shell}
  *" ps "*)
    # The container belongs to the deployment Compose was asked about.
    prev=; for a in "$@"; do [ "$prev" = --project-directory ] && printf '%s' "$a" > '{log}.dir'; prev=$a; done
    {ps}; exit 0;;
  "inspect c0ffee") printf '[{{"Id":"c0ffee","Name":"/chatmail-chatmail-1","Image":"sha256:0","State":{{"Status":"running","Running":true,"StartedAt":"2026-01-01T00:00:00Z","ExitCode":0}},"Config":{{"Image":"chatmail-relay:local","Labels":{{"com.docker.compose.project.working_dir":"%s"}}}}}}]' "$(cat '{log}.dir')"; exit 0;;
  *"sh -c"*) printf 'img-1\n@@\nrelaycommit\n@@\nroot:x:0:0::/:/bin/sh\nvmail:x:{uid}:{uid}::/home/vmail:/bin/false\n@@\nroot:x:0:\nvmail:x:{uid}:\n'; exit 0;;
  *"systemctl freeze"*) {on_freeze}; exit 0;;
  *" config --format json"*) {config};;
esac
exit 0"#,
            log = log.display(),
            uid = rustix::process::geteuid().as_raw() + 5000,
            config = compose_config_answer(),
        ),
    );
}

/// How a stand-in `docker` answers `compose config --format json`: the
/// real Compose's answer where there is one, else the appliance's own
/// mounts below the project directory (what the real one would say).
pub(crate) fn compose_config_answer() -> String {
    let real = crate::support::real_docker();
    match real {
        Some(r) if crate::support::have_compose_v2() => format!("exec '{}' \"$@\"", r.display()),
        _ => {
            let binds: Vec<String> = chatmail_docker::deployment::STATE_MOUNTS
                .iter()
                .map(|(a, t)| format!(r#"{{"type":"bind","source":"%s/{a}","target":"{t}"}}"#))
                .collect();
            let n = binds.len();
            format!(
                r#"prev=; for a in "$@"; do [ "$prev" = --project-directory ] && dir=$a; prev=$a; done; printf '{{"services":{{"chatmail":{{"volumes":[{}]}}}}}}' {}; exit 0"#,
                binds.join(","),
                vec!["\"$dir\""; n].join(" ")
            )
        }
    }
}

/// path -> (kind, mode, size, content or link, mtime) for everything a
/// backup holds.
pub(crate) fn state(d: &Path) -> BTreeMap<String, (String, u32, u64, Vec<u8>, i64)> {
    let mut out = BTreeMap::new();
    for top in [
        "data",
        "chatmail.ini",
        ".env",
        "custom",
        "docker-compose.override.yaml",
    ] {
        if fs::symlink_metadata(d.join(top)).is_err() {
            continue;
        }
        for e in walkdir::WalkDir::new(d.join(top)).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(d)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "data/README.md" {
                continue;
            }
            let m = fs::symlink_metadata(e.path()).unwrap();
            let (kind, content) = if m.file_type().is_symlink() {
                (
                    "link",
                    fs::read_link(e.path())
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if m.is_dir() {
                ("dir", vec![])
            } else {
                ("file", fs::read(e.path()).unwrap())
            };
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            out.insert(
                rel,
                (
                    kind.to_string(),
                    m.mode(),
                    if m.is_dir() { 0 } else { m.len() },
                    content,
                    mtime,
                ),
            );
        }
    }
    out
}

pub(crate) fn run(dir: &Path, bin_dir: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .env("PATH", path_with(bin_dir))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// The stand-in `docker` ([`docker`], no hook on freeze) in `t/bin`,
/// logging to `t/docker.log`: (its directory, the log).
pub(crate) fn stand_in(t: &Path, running: bool) -> (PathBuf, PathBuf) {
    let (bin_dir, log) = (t.join("bin"), t.join("docker.log"));
    docker(&bin_dir, &log, running, ":");
    (bin_dir, log)
}

pub(crate) fn archives(dir: &Path) -> Vec<PathBuf> {
    chatmail_docker::archive::archives_in(dir).unwrap()
}

/// `restore ARCHIVE` into `target` (no stand-in: no container runs there).
pub(crate) fn restore_into(target: &Path, archive: &Path) -> std::process::Output {
    bin()
        .arg("--dir")
        .arg(target)
        .arg("restore")
        .arg(archive)
        .output()
        .unwrap()
}

/// A deployment in a temp dir with the stand-in docker (relay stopped),
/// backed up once into `dest` below the temp dir (an archive's name, or a
/// directory's ending in `/`): the temp dir, the deployment, the stand-in's
/// directory and the destination.
pub(crate) fn backed_up(dest: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let to = t.path().join(dest.trim_end_matches('/'));
    let arg = format!(
        "{}{}",
        to.display(),
        if dest.ends_with('/') { "/" } else { "" }
    );
    assert_ok(&run(&d, &bin_dir, &["backup", &arg]));
    (t, d, bin_dir, to)
}

#[test]
fn full_then_incremental_then_restore_of_the_chain() {
    let (t, d, bin_dir, out) = backed_up("backups/");
    let out_s = format!("{}/", out.display());
    let first = archives(&out);
    assert_eq!(first.len(), 1);
    assert!(first[0].to_string_lossy().ends_with("-full.tar.zst"));
    assert_eq!(fs::metadata(&first[0]).unwrap().mode() & 0o777, 0o600);

    // Mail arrives, a message is read (renamed), one is expunged.
    let mail = d.join("data/chatmail/vmail/mail/example.org/u@example.org");
    fs::write(mail.join("new/1800000000.N1.relay"), "new mail").unwrap();
    fs::rename(
        mail.join("cur/1700000003.M3.relay:2,S"),
        mail.join("cur/1700000003.M3.relay:2,RS"),
    )
    .unwrap();
    fs::remove_file(mail.join("cur/1700000004.M4.relay:2,S")).unwrap();
    fs::remove_dir_all(d.join("custom/www")).unwrap();
    let out2 = run(&d, &bin_dir, &["backup", "--json", &out_s]);
    assert_ok(&out2);
    let summary: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_eq!(summary["kind"], "incremental");
    // The new message and the renamed one; nothing else is read again.
    assert_eq!(summary["stored_files"], 2, "{summary}");
    // The old name of the renamed message, the expunged one, custom/www/...
    assert_eq!(summary["deleted"], 5, "{summary}");
    assert_eq!(archives(&out).len(), 2);

    let target = t.path().join("fresh");
    fs::create_dir_all(target.join("data")).unwrap();
    fs::write(target.join("data/README.md"), "placeholder").unwrap();
    let r = run(&target, &bin_dir, &["restore", &out_s]);
    assert_ok(&r);
    assert_eq!(state(&d), state(&target));
    assert_eq!(owners_of(&d), owners_of(&target));
    // The checkout's placeholder stays; no temporary directory is left.
    assert!(target.join("data/README.md").exists());
    assert!(!fs::read_dir(&target).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".chatmail-restore")));
    // Hard links stay hard links.
    let tm = target.join("data/chatmail/vmail/mail/example.org/u@example.org");
    assert_eq!(
        fs::metadata(tm.join("cur/1700000001.M1.relay:2,S"))
            .unwrap()
            .ino(),
        fs::metadata(tm.join("new/1700000099.L1.relay"))
            .unwrap()
            .ino()
    );
}

#[test]
fn the_queue_is_copied_while_postfix_is_frozen() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, log) = stand_in(t.path(), true);
    let archive = t.path().join("b.tar.zst");
    assert_ok(&run(&d, &bin_dir, &["backup", archive.to_str().unwrap()]));
    let calls = fs::read_to_string(&log).unwrap();
    let pos = |s: &str| {
        calls
            .find(s)
            .unwrap_or_else(|| panic!("no `{s}` in {calls}"))
    };
    assert!(pos("systemd-run") < pos("systemctl freeze postfix@-.service"));
    assert!(pos("echo ready; read _") < pos("systemctl freeze postfix@-.service"));
    assert!(pos("systemctl freeze") < pos("thawed-by-shell"));
    assert!(pos("thawed-by-shell") < pos("systemctl stop chatmail-backup-thaw.timer"));
    let m = chatmail_docker::archive::chain::load_manifest(&ctx(&d), &archive, &Default::default())
        .unwrap();
    assert_eq!(m.image_version.as_deref(), Some("img-1"));
    assert_eq!(m.relay_commit.as_deref(), Some("relaycommit"));
    assert!(m.consistency.queue_pause_ms.is_some());
    assert!(
        m.consistency.notes.iter().any(|n| n.contains("frozen")),
        "{:?}",
        m.consistency.notes
    );
    let q = m
        .entries
        .iter()
        .find(|e| e.path == "data/chatmail-postfix/deferred/A/A1B2C3")
        .unwrap();
    assert!(q.stored && q.sha256.is_some());
    // Owners are named as the container names them.
    let uid = rustix::process::geteuid().as_raw();
    let root_named = m.entries.iter().find(|e| e.uid == uid).unwrap();
    assert_eq!(
        root_named.user.as_deref(),
        if uid == 0 { Some("root") } else { None }
    );
}

#[test]
fn postfix_is_thawed_when_the_backup_fails_during_the_pause() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let bin_dir = t.path().join("bin");
    let log = t.path().join("docker.log");
    // While frozen, a queue file appears that a manifest cannot name.
    let q = d.join("data/chatmail-postfix/deferred/A");
    docker(
        &bin_dir,
        &log,
        true,
        &format!("touch \"{}/$(printf 'Q\\377')\"", q.display()),
    );
    let out = t.path().join("backups");
    let r = run(&d, &bin_dir, &["backup", &format!("{}/", out.display())]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not UTF-8"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let calls = fs::read_to_string(&log).unwrap();
    assert!(
        calls.find("systemctl freeze").unwrap() < calls.find("thawed-by-shell").expect("thawed")
    );
    // No archive, not even a partial one.
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn postfix_is_thawed_and_nothing_kept_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let bin_dir = t.path().join("bin");
    let log = t.path().join("docker.log");
    // SIGTERM to the tool while Postfix is frozen.
    docker(&bin_dir, &log, true, "kill -TERM $PPID");
    let out = t.path().join("backups");
    let r = run(&d, &bin_dir, &["backup", &format!("{}/", out.display())]);
    assert_code(&r, 130);
    assert!(String::from_utf8_lossy(&r.stderr).contains("interrupted"));
    let calls = fs::read_to_string(&log).unwrap();
    assert!(calls.contains("thawed-by-shell"), "{calls}");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn restore_refuses_what_it_cannot_trust_and_writes_nothing() {
    let (t, d, bin_dir, archive) = backed_up("b.tar.zst");
    let bytes = fs::read(&archive).unwrap();
    let target = t.path().join("fresh");
    fs::create_dir_all(&target).unwrap();

    let truncated = t.path().join("truncated.tar.zst");
    fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let corrupt = t.path().join("corrupt.tar.zst");
    fs::write(&corrupt, &flipped).unwrap();
    for (bad, says) in [(&truncated, "truncated or corrupt"), (&corrupt, "corrupt")] {
        let r = run(&target, &bin_dir, &["restore", bad.to_str().unwrap()]);
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains(says) && err.contains(bad.to_str().unwrap()),
            "{err}"
        );
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "{err}");
    }

    // An archive from a newer tool: refused before anything is read.
    let newer = t.path().join("newer.tar.zst");
    hand_made_archive(
        &newer,
        br#"{"format":99,"tool_version":"9.0.0","kind":"full","id":"x","created":"now"}"#,
        |_| {},
    );
    let r = run(&target, &bin_dir, &["restore", newer.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("install a newer chatmail-docker"));
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);

    // A deployment with state: refused, then moved aside with --force.
    let r = run(&d, &bin_dir, &["restore", archive.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    fs::write(d.join(".env"), "MAIL_DOMAIN=changed.org\n").unwrap();
    let before = state(&d);
    assert_ok(&run(
        &d,
        &bin_dir,
        &["restore", "--force", archive.to_str().unwrap()],
    ));
    let aside: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".before-restore-"))
        .collect();
    assert_eq!(aside.len(), 5, "{aside:?}");
    let env_aside = aside.iter().find(|n| n.starts_with(".env.")).unwrap();
    assert_eq!(
        fs::read_to_string(d.join(env_aside)).unwrap(),
        "MAIL_DOMAIN=changed.org\n"
    );
    assert_eq!(
        fs::read_to_string(d.join(".env")).unwrap(),
        "MAIL_DOMAIN=example.org\n"
    );
    assert_ne!(before, state(&d));
}

#[test]
fn dry_runs_change_nothing_and_retention_keeps_chains() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, log) = stand_in(t.path(), true);
    let out = t.path().join("backups");
    let out_s = format!("{}/", out.display());
    let r = run(&d, &bin_dir, &["--dry-run", "backup", &out_s]);
    assert_ok(&r);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        text.contains("would run: docker compose") && text.contains("systemctl freeze"),
        "{text}"
    );
    assert!(!out.exists());
    assert!(!fs::read_to_string(&log).unwrap().contains("freeze"));

    assert_ok(&run(&d, &bin_dir, &["backup", &out_s]));
    fs::write(
        d.join("chatmail.ini"),
        "[params]\nmail_domain = example.org\n# edited\n",
    )
    .unwrap();
    assert_ok(&run(&d, &bin_dir, &["backup", &out_s]));
    assert_ok(&run(
        &d,
        &bin_dir,
        &["backup", "--full", "--keep", "1", &out_s],
    ));
    let left = archives(&out);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].to_string_lossy().ends_with("-full.tar.zst"));
    // Sidecars go with their archives.
    assert_eq!(fs::read_dir(&out).unwrap().count(), 2);

    let target = t.path().join("fresh");
    let r = run(&target, &bin_dir, &["--dry-run", "restore", &out_s]);
    assert_ok(&r);
    assert!(String::from_utf8_lossy(&r.stdout).contains("verified"));
    assert!(!target.exists() || fs::read_dir(&target).unwrap().count() == 0);
}

#[test]
fn stdout_streams_a_full_archive_that_restores_from_stdin() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let r = run(&d, &bin_dir, &["-q", "backup", "-"]);
    assert_ok(&r);
    assert!(
        r.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let target = t.path().join("fresh");
    let out = bin()
        .env("PATH", path_with(&bin_dir))
        .arg("--dir")
        .arg(&target)
        .args(["restore", "-"])
        .write_stdin(r.stdout)
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(state(&d), state(&target));
}

// ------------------------------------------------------------ round trip

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>, u32),
    Dir(u32),
    Link(String),
    Hard(usize),
}

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        Just("ünï código".to_string()),
        Just("日本語".to_string()),
        Just("msg:2,S".to_string()),
        Just(".hidden".to_string()),
        Just("x".repeat(120)),
    ]
}

fn nodes() -> impl Strategy<Value = Vec<(Vec<String>, Node)>> {
    let node = prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            prop_oneof![Just(0o600u32), Just(0o644), Just(0o755), Just(0o750)]
        )
            .prop_map(|(b, m)| Node::File(b, m)),
        prop_oneof![Just(0o700u32), Just(0o755), Just(0o1777)].prop_map(Node::Dir),
        names().prop_map(Node::Link),
        (0usize..50).prop_map(Node::Hard),
    ];
    proptest::collection::vec((proptest::collection::vec(names(), 1..4), node), 1..25)
}

fn build(root: &Path, spec: &[(Vec<String>, Node)]) {
    let data = root.join("data");
    fs::create_dir_all(&data).unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for (parts, node) in spec {
        let p: PathBuf = parts.iter().fold(data.clone(), |p, n| p.join(n));
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        // Parents that exist as something else: skip this node.
        let mut ok = true;
        let mut a = data.clone();
        for n in &parts[..parts.len() - 1] {
            a = a.join(n);
            match fs::symlink_metadata(&a) {
                Ok(m) if !m.is_dir() => ok = false,
                _ => {}
            }
        }
        if !ok {
            continue;
        }
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match node {
            Node::File(b, m) => {
                fs::write(&p, b).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
                files.push(p);
            }
            Node::Dir(m) => {
                fs::create_dir(&p).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
            }
            Node::Link(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            Node::Hard(i) => {
                if let Some(f) = files.get(i % files.len().max(1)) {
                    fs::hard_link(f, &p).unwrap();
                }
            }
        }
    }
    fs::write(root.join(".env"), "A=1\n").unwrap();
}

/// Change what is there: the `k`-th path of `data/` (by name, modulo their
/// number) is removed, grown (files; directories and links get a new mode
/// or target), given another name (a hard link, files) or replaced by
/// something of another kind.
fn mutate(root: &Path, changes: &[(usize, u8)]) {
    for &(k, op) in changes {
        let all: Vec<PathBuf> = walkdir::WalkDir::new(root.join("data"))
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .collect();
        if all.is_empty() {
            return;
        }
        let p = &all[k % all.len()];
        let m = fs::symlink_metadata(p).unwrap();
        let is_file = m.is_file();
        match op % 4 {
            0 if m.is_dir() => fs::remove_dir_all(p).unwrap(),
            0 => fs::remove_file(p).unwrap(),
            1 if is_file => {
                let mut b = fs::read(p).unwrap();
                b.extend_from_slice(b"grown");
                fs::write(p, b).unwrap();
            }
            1 if m.is_dir() => fs::set_permissions(p, fs::Permissions::from_mode(0o750)).unwrap(),
            1 => {
                fs::remove_file(p).unwrap();
                std::os::unix::fs::symlink("elsewhere", p).unwrap();
            }
            2 if is_file => {
                let other = p.with_file_name(format!("0-link-{k}"));
                let _ = fs::hard_link(p, other);
            }
            2 => {}
            _ if m.is_dir() => {
                fs::remove_dir_all(p).unwrap();
                fs::write(p, b"was a directory").unwrap();
            }
            _ => {
                fs::remove_file(p).unwrap();
                fs::create_dir(p).unwrap();
                fs::write(p.join("inside"), b"was a file").unwrap();
            }
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn inodes(root: &Path) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root.join("data")) {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_file() && m.nlink() > 1 {
            groups
                .entry(m.ino())
                .or_default()
                .push(e.path().strip_prefix(root).unwrap().display().to_string());
        }
    }
    let mut v: Vec<Vec<String>> = groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    v.sort();
    v
}

fn ctx(dir: &Path) -> Context {
    Context::new(
        dir,
        Host::new("/"),
        Shell::new(Verbosity::Quiet, ColorChoice::Never),
        false,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Any tree of files, directories, symlinks and hard links, with any
    /// modes and names, comes back identical, also through a chain of
    /// incrementals after paths were added, removed, changed, linked or
    /// replaced by another kind.
    #[test]
    fn round_trip(
        first in nodes(),
        steps in proptest::collection::vec(
            (nodes(), proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)),
            2,
        ),
    ) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        build(&src, &first);
        let out = t.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let opts = BackupOptions { output: Output::Dir(out.clone()), ..Default::default() };
        backup::run(&ctx(&src), &opts).unwrap();
        // Two incrementals: the second builds on the first's changes.
        let mut states = vec![];
        for (next, changes) in &steps {
            mutate(&src, changes);
            build(&src, next);
            // A changed file keeps its size and mtime second: a new mtime.
            backup::run(&ctx(&src), &opts).unwrap();
            states.push((state(&src), inodes(&src)));
            // The chain's manifests, folded, give every file's hash.
            let mut folded: Option<chatmail_docker::archive::manifest::Manifest> = None;
            for a in chatmail_docker::archive::archives_in(&out).unwrap() {
                let m = chatmail_docker::archive::chain::load_manifest(&ctx(&src), &a, &Default::default()).unwrap();
                match &mut folded {
                    None => folded = Some(m),
                    Some(f) => f.fold(m),
                }
            }
            let folded = folded.unwrap();
            let now = state(&src);
            let mut listed: Vec<&String> = folded.entries.iter().map(|e| &e.path).collect();
            listed.sort();
            prop_assert_eq!(listed, now.keys().collect::<Vec<_>>());
            for e in folded.entries.iter().filter(|e| e.kind == chatmail_docker::archive::manifest::EntryKind::File) {
                let content = &now[&e.path].3;
                prop_assert_eq!(e.sha256.clone(), Some(sha256_hex(content)), "{}", e.path);
            }
        }
        prop_assert_eq!(chatmail_docker::archive::archives_in(&out).unwrap().len(), 3);
        // Every archive of the chain restores the deployment as it was.
        for (n, (st, ino)) in states.iter().enumerate() {
            let dst = t.path().join(format!("dst{n}"));
            let last = &chatmail_docker::archive::archives_in(&out).unwrap()[n + 1];
            chatmail_docker::restore::run(&ctx(&dst), &chatmail_docker::restore::RestoreOptions {
                archive: last.clone(), force: false, json: false, keys: Default::default(),
            }).unwrap();
            prop_assert_eq!(st, &state(&dst));
            prop_assert_eq!(ino, &inodes(&dst));
        }
    }
}

#[test]
fn encrypted_chains_restore_with_the_identity_and_refuse_without() {
    use age::secrecy::ExposeSecret;
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let id = age::x25519::Identity::generate();
    let key = t.path().join("key.txt");
    fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let public = id.to_public().to_string();
    let out = t.path().join("backups");
    let out_s = format!("{}/", out.display());
    assert_ok(&run(
        &d,
        &bin_dir,
        &["backup", "--recipient", &public, &out_s],
    ));
    // The incrementals need no key: the chain's manifests are kept
    // locally, one per archive, readable by root only.
    for (n, name) in ["new-file", "newer-file"].iter().enumerate() {
        fs::write(d.join("data/chatmail").join(name), "new").unwrap();
        assert_ok(&run(
            &d,
            &bin_dir,
            &["backup", "--recipient", &public, &out_s],
        ));
        let local = d.join(".chatmail-backup-manifests");
        assert_eq!(fs::metadata(&local).unwrap().mode() & 0o777, 0o700);
        let copies: Vec<_> = fs::read_dir(&local)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(copies.len(), n + 2, "{copies:?}");
        for c in &copies {
            assert_eq!(fs::metadata(c).unwrap().mode() & 0o777, 0o600);
        }
    }
    let list = archives(&out);
    assert_eq!(list.len(), 3);
    for a in &list {
        let bytes = fs::read(a).unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1"));
        // Neither the archive nor its manifest beside it shows a name.
        let side = fs::read(format!("{}.manifest.json", a.display())).unwrap();
        assert!(!String::from_utf8_lossy(&side).contains("opendkim"));
    }
    let target = t.path().join("fresh");
    let r = run(&target, &bin_dir, &["restore", &out_s]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("is encrypted"));
    let wrong = age::x25519::Identity::generate();
    let wrong_key = t.path().join("wrong.txt");
    fs::write(&wrong_key, wrong.to_string().expose_secret()).unwrap();
    let r = run(
        &target,
        &bin_dir,
        &["restore", "--identity", wrong_key.to_str().unwrap(), &out_s],
    );
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("wrong passphrase or identity"));
    assert!(!target.exists() || fs::read_dir(&target).unwrap().count() == 0);
    assert_ok(&run(
        &target,
        &bin_dir,
        &["restore", "--identity", key.to_str().unwrap(), &out_s],
    ));
    assert_eq!(state(&d), state(&target));
    // A new chain keeps only its own copy; without encryption, none.
    assert_ok(&run(
        &d,
        &bin_dir,
        &["backup", "--full", "--recipient", &public, &out_s],
    ));
    let local = d.join(".chatmail-backup-manifests");
    let copies: Vec<_> = fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1);
    // The single copy earlier versions kept is read, and joins the others.
    let legacy = d.join(".chatmail-backup-last.json");
    fs::rename(&copies[0], &legacy).unwrap();
    fs::remove_dir(&local).unwrap();
    fs::write(d.join("data/chatmail/legacy-file"), "new").unwrap();
    assert_ok(&run(
        &d,
        &bin_dir,
        &["backup", "--recipient", &public, &out_s],
    ));
    assert!(!legacy.exists());
    assert_eq!(fs::read_dir(&local).unwrap().count(), 2);
    // Unencrypted incrementals on them still find the encrypted ones'.
    for _ in 0..2 {
        fs::write(d.join("data/chatmail/new-file"), "changed").unwrap();
        assert_ok(&run(&d, &bin_dir, &["backup", &out_s]));
        assert_eq!(fs::read_dir(&local).unwrap().count(), 2);
    }
    assert_ok(&run(&d, &bin_dir, &["backup", "--full", &out_s]));
    assert!(!local.exists());
}

#[test]
fn an_archive_cannot_write_outside_the_restore_through_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let evil = t.path().join("evil.tar.zst");
    hand_made_archive(
        &evil,
        br#"{"format":1,"tool_version":"0.1.0","kind":"full","id":"x","created":"now"}"#,
        |b| {
            let mut l = tar::Header::new_gnu();
            l.set_entry_type(tar::EntryType::Symlink);
            l.set_size(0);
            b.append_link(&mut l, "data/x", &outside).unwrap();
            let mut f = tar::Header::new_gnu();
            f.set_size(4);
            f.set_mode(0o644);
            b.append_data(&mut f, "data/x/planted", &b"evil"[..])
                .unwrap();
        },
    );
    let target = t.path().join("fresh");
    let r = restore_into(&target, &evil);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("symlink"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn without_the_waiting_shell_postfix_is_thawed_by_a_second_exec() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let bin_dir = t.path().join("bin");
    let log = t.path().join("docker.log");
    docker_with(&bin_dir, &log, true, ":", false);
    let archive = t.path().join("b.tar.zst");
    assert_ok(&run(&d, &bin_dir, &["backup", archive.to_str().unwrap()]));
    let calls = fs::read_to_string(&log).unwrap();
    let freeze = calls.find("chatmail systemctl freeze").unwrap();
    let thaw = calls
        .find("chatmail systemctl thaw postfix@-.service")
        .expect("thawed");
    assert!(freeze < thaw, "{calls}");
}

/// `restore -` into `target`, started with the first half of `archive`
/// on its stdin: the process, its stdin (to write the rest, or not) and
/// the archive's bytes.
fn restore_half_fed(
    target: &Path,
    archive: &Path,
) -> (std::process::Child, std::process::ChildStdin, Vec<u8>) {
    use std::io::Write;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("chatmail-docker"))
        .arg("--dir")
        .arg(target)
        .args(["restore", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = fs::read(archive).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    stdin.flush().unwrap();
    (child, stdin, bytes)
}

#[test]
fn an_interrupted_restore_leaves_nothing() {
    let (t, _, _, archive) = backed_up("b.tar.zst");
    // A slow reader: SIGTERM arrives while the archive is being read.
    let target = t.path().join("fresh");
    fs::create_dir_all(&target).unwrap();
    let (child, mut stdin, bytes) = restore_half_fed(&target, &archive);
    std::thread::sleep(std::time::Duration::from_millis(300));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    std::io::Write::write_all(&mut stdin, &bytes[bytes.len() / 2..]).ok();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 130);
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
}

/// The `.chatmail-restore.*` directories in `dir`.
fn staging_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".chatmail-restore."))
        .collect();
    v.sort();
    v
}

#[test]
fn a_restore_killed_with_sigkill_is_cleaned_up_and_done_by_the_next() {
    let (t, d, bin_dir, archive) = backed_up("b.tar.zst");
    let target = t.path().join("fresh");
    fs::create_dir_all(&target).unwrap();
    // Another restore's directory, in use (locked): left alone.
    let held = target.join(".chatmail-restore.held");
    fs::create_dir_all(held.join("data")).unwrap();
    let held_lock = fs::File::open(&held).unwrap();
    rustix::fs::flock(&held_lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // Half the archive on stdin, then SIGKILL: nothing can clean up.
    let (mut child, stdin, _) = restore_half_fed(&target, &archive);
    // The killed run's directory exists once it started reading.
    for _ in 0..100 {
        if staging_dirs(&target).len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let left = staging_dirs(&target);
    assert_eq!(
        left.len(),
        2,
        "the killed restore left its directory: {left:?}"
    );
    assert!(
        !target.join("data").exists(),
        "nothing was moved into place"
    );

    // The same again: the killed run's directory removed, the held one
    // kept, the restore done.
    let out = run(&target, &bin_dir, &["restore", archive.to_str().unwrap()]);
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed 1 temporary directory of an earlier restore that was killed"),
        "{stderr}"
    );
    assert_eq!(
        staging_dirs(&target),
        vec![".chatmail-restore.held".to_string()]
    );
    assert_eq!(state(&d), state(&target));
    drop(held_lock);
}

#[test]
fn a_full_disk_under_backup_or_restore_is_named_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    // Mail that does not compress: the archive needs its size.
    let mut next = crate::support::xorshift(7);
    let noise: Vec<u8> = (0..(1 << 20)).map(|_| next() as u8).collect();
    fs::write(
        d.join("data/chatmail/vmail/mail/example.org/u@example.org/cur/1700000500.M9.relay:2,S"),
        &noise,
    )
    .unwrap();
    let (bin_dir, _) = stand_in(t.path(), false);
    let full = t.path().join("full");
    let Some(_disk) = SmallDisk::mount(&full, "256k") else {
        return;
    };
    let dest = format!("{}/", full.display());
    let o = run(&d, &bin_dir, &["backup", &dest]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("no space left on {}", full.display()))
            && err.contains(&format!("chatmail-docker backup {dest}")),
        "{err}"
    );
    assert_eq!(fs::read_dir(&full).unwrap().count(), 0, "nothing is left");

    // A restore into a deployment directory on the small disk.
    let archive = t.path().join("b.tar.zst");
    assert_ok(&run(&d, &bin_dir, &["backup", archive.to_str().unwrap()]));
    let o = run(&full, &bin_dir, &["restore", archive.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("no space left on {}", full.display())) && err.contains("restore"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&full).unwrap().count(), 0, "nothing is left");
}

/// An archive written by hand (not by `backup`): the header entry, then
/// whatever `add` appends, zstd-compressed.
pub(crate) fn hand_made_archive(
    path: &Path,
    header: &[u8],
    add: impl FnOnce(&mut tar::Builder<zstd::stream::AutoFinishEncoder<'static, fs::File>>),
) {
    let f = fs::File::create(path).unwrap();
    let enc = zstd::stream::Encoder::new(f, 3).unwrap().auto_finish();
    let mut b = tar::Builder::new(enc);
    let mut hd = tar::Header::new_gnu();
    hd.set_size(header.len() as u64);
    hd.set_mode(0o600);
    b.append_data(&mut hd, ".chatmail-backup/header.json", header)
        .unwrap();
    add(&mut b);
    b.finish().unwrap();
}

#[test]
fn an_incremental_against_an_archive_with_no_manifest_beside_it() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let full = t.path().join("b/full.tar.zst");
    let full_s = full.to_str().unwrap();
    assert_ok(&run(&d, &bin_dir, &["backup", full_s]));
    // A single file: no sidecar, the base's manifest is read from it.
    assert!(!t.path().join("b/full.tar.zst.manifest.json").exists());
    fs::write(d.join("data/chatmail/new-file"), "new").unwrap();
    let incr = t.path().join("b/incr.tar.zst");
    let out = run(
        &d,
        &bin_dir,
        &[
            "backup",
            "--json",
            "--since",
            full_s,
            incr.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["kind"], "incremental", "{summary}");
    assert_eq!(summary["stored_files"], 1, "{summary}");
    let target = t.path().join("fresh");
    assert_ok(&run(
        &target,
        &bin_dir,
        &["restore", incr.to_str().unwrap()],
    ));
    assert_eq!(state(&d), state(&target));
}
