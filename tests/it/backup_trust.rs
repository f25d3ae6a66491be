//! `backup` and `restore` as an attacker and a tired administrator use
//! them: every layout of `data/` the relay may run on, destinations inside
//! what is archived, files swapped while a backup runs, crafted archives
//! and chains, retention in directories shared with other relays, and
//! signals while a command is blocked.

use crate::backup::{backed_up, deployment, hand_made_archive, restore_into, run, stand_in, state};
use crate::support::{assert_ok, bin, have_compose_v2, path_with, require, script};

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Everything below `root` (outside a target), as (path, mode, uid, size,
/// content or link) for comparing before and after.
fn snapshot(root: &Path, skip: &Path) -> Vec<(PathBuf, u32, u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        if e.path().starts_with(skip) {
            continue;
        }
        let m = fs::symlink_metadata(e.path()).unwrap();
        let content = if m.file_type().is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        out.push((e.path().to_path_buf(), m.mode(), m.uid(), m.len(), content));
    }
    out
}

// ------------------------------------------------------------ crafted archives

/// One entry of a crafted archive.
#[derive(Clone, Debug)]
pub(crate) enum Craft {
    File(&'static str, &'static [u8], u32),
    Dir(&'static str, u32),
    Link(&'static str, String),
    Hard(&'static str, &'static str),
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// An archive made as `backup` makes one (header, entries, manifest), from
/// `entries`; `edit` changes the manifest before it is written.
pub(crate) fn crafted(
    path: &Path,
    id: &str,
    base: Option<(&str, &str)>,
    entries: &[Craft],
    deleted: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let header = serde_json::json!({
        "format": 2,
        "tool_version": "0.1.0",
        "kind": if base.is_some() { "incremental" } else { "full" },
        "id": id,
        "base": base.map(|(i, f)| serde_json::json!({"id": i, "file": f})),
        "created": "2026-01-01T00:00:00.000Z",
    });
    let mut header = header;
    if base.is_none() {
        header.as_object_mut().unwrap().remove("base");
    }
    let mut listed = Vec::new();
    for e in entries {
        let (p, kind, size, mode, sum, target) = match e {
            Craft::File(p, c, m) => (*p, "file", c.len(), *m, Some(sha(c)), None),
            Craft::Dir(p, m) => (*p, "dir", 0, *m, None, None),
            Craft::Link(p, t) => (*p, "symlink", 0, 0o777, None, Some(t.clone())),
            Craft::Hard(p, t) => (*p, "hardlink", 0, 0o600, None, Some(t.to_string())),
        };
        let mut v = serde_json::json!({
            "path": p, "kind": kind, "size": size, "mtime": 1, "mode": mode,
            "uid": 0, "gid": 0, "stored": true,
        });
        if let Some(s) = sum {
            v["sha256"] = s.into();
        }
        if let Some(t) = target {
            v["target"] = t.into();
        }
        listed.push(v);
    }
    let mut manifest = serde_json::json!({
        "header": header.clone(),
        "consistency": {"notes": []},
        "listing": if base.is_some() { "changes" } else { "all" },
        "entries": listed,
        "deleted": deleted,
    });
    edit(&mut manifest);
    hand_made_archive(path, &serde_json::to_vec(&header).unwrap(), |b| {
        for e in entries {
            let mut h = tar::Header::new_gnu();
            match e {
                Craft::File(p, c, m) => {
                    h.set_size(c.len() as u64);
                    h.set_mode(*m);
                    b.append_data(&mut h, p, *c).unwrap();
                }
                Craft::Dir(p, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(*m);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                Craft::Link(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_mode(0o777);
                    b.append_link(&mut h, p, t).unwrap();
                }
                Craft::Hard(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    h.set_mode(0o600);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        let text = serde_json::to_vec(&manifest).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, ".chatmail-backup/manifest.json", &text[..])
            .unwrap();
    });
}

/// A full archive of `entries` with a manifest that agrees with them.
fn full_archive(path: &Path, id: &str, entries: &[Craft]) {
    crafted(path, id, None, entries, &[], |_| {});
}

/// `restore` (and `restore --dry-run`) of `archive` into `target` must fail
/// saying `says`, leave nothing in `target` and nothing changed in `around`.
fn refused(archive: &Path, target: &Path, around: &Path, says: &str) {
    let before = snapshot(around, target);
    for dry in [true, false] {
        let mut cmd = bin();
        cmd.arg("--dir")
            .arg(target)
            .timeout(Duration::from_secs(60));
        if dry {
            cmd.arg("--dry-run");
        }
        let r = cmd
            .args(["restore", archive.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            !r.status.success(),
            "dry run {dry}: accepted\n{}",
            stderr(&r)
        );
        assert!(stderr(&r).contains(says), "dry run {dry}: {}", stderr(&r));
        assert!(
            !target.exists() || fs::read_dir(target).unwrap().count() == 0,
            "dry run {dry}: something was left in the target"
        );
        assert_eq!(
            before,
            snapshot(around, target),
            "dry run {dry}: outside changed"
        );
    }
}

#[test]
fn a_manifest_naming_host_files_changes_none_of_them() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    fs::write(&victim, "host file").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let target = t.path().join("a/b/target");
    fs::create_dir_all(&target).unwrap();
    for (n, path) in [
        victim.to_str().unwrap().to_string(),
        "data/../../../../victim".to_string(),
        "../../../victim".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let archive = t.path().join(format!("evil{n}.tar.zst"));
        let p = path.clone();
        crafted(
            &archive,
            "e",
            None,
            &[Craft::Dir("data", 0o755)],
            &[],
            move |m| {
                m["entries"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({
                        "path": p, "kind": "file", "size": 9, "mtime": 1, "mode": 0o777,
                        "uid": 4242, "gid": 4242, "sha256": "00", "stored": false,
                    }));
            },
        );
        refused(&archive, &target, t.path(), "unexpected entry");
    }
    assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_chain_that_turns_a_directory_into_a_link_cannot_reach_the_host() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    fs::create_dir_all(victim.join("x")).unwrap();
    fs::write(victim.join("x/precious"), "host data").unwrap();
    let dir = t.path().join("backups");
    fs::create_dir_all(&dir).unwrap();
    crafted(
        &dir.join("full.tar.zst"),
        "f1",
        None,
        &[
            Craft::Dir("data", 0o755),
            Craft::Dir("data/d", 0o755),
            Craft::Dir("data/d/x", 0o755),
            Craft::File("data/d/x/file", b"mail", 0o600),
        ],
        &[],
        |_| {},
    );
    crafted(
        &dir.join("incr.tar.zst"),
        "i1",
        Some(("f1", "full.tar.zst")),
        &[
            Craft::Link("data/d", victim.to_str().unwrap().to_string()),
            Craft::File("data/d/x", b"planted", 0o600),
        ],
        &["data/d/x/file"],
        |_| {},
    );
    let target = t.path().join("target");
    refused(
        &dir.join("incr.tar.zst"),
        &target,
        t.path(),
        "lies below data/d",
    );
    assert_eq!(fs::read(victim.join("x/precious")).unwrap(), b"host data");
}

#[test]
fn top_level_paths_must_be_of_their_kind() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("secret"), "x").unwrap();
    let secret = t.path().join("secret").to_str().unwrap().to_string();
    let cases: Vec<(Vec<Craft>, &str)> = vec![
        (
            vec![Craft::Link(".env", secret.clone())],
            ".env is a symlink",
        ),
        (
            vec![Craft::Link("data", secret.clone())],
            "data is a symlink",
        ),
        (vec![Craft::File("data", b"x", 0o600)], "data is a file"),
        (
            vec![Craft::Dir("chatmail.ini", 0o755)],
            "chatmail.ini is a directory",
        ),
        (
            vec![
                Craft::File("docker-compose.override.yaml", b"x", 0o600),
                Craft::Hard(".env", "docker-compose.override.yaml"),
            ],
            ".env is a hard link",
        ),
    ];
    for (n, (entries, says)) in cases.into_iter().enumerate() {
        let archive = t.path().join(format!("a{n}.tar.zst"));
        crafted(&archive, "k", None, &entries, &[], |_| {});
        refused(&archive, &t.path().join("target"), t.path(), says);
    }
}

#[test]
fn setuid_and_setgid_files_are_refused() {
    let t = tempfile::tempdir().unwrap();
    for (n, mode) in [0o4755u32, 0o2755].into_iter().enumerate() {
        let archive = t.path().join(format!("s{n}.tar.zst"));
        full_archive(
            &archive,
            "s",
            &[
                Craft::Dir("data", 0o755),
                Craft::File("data/tool", b"#!/bin/sh\n", mode),
            ],
        );
        refused(&archive, &t.path().join("target"), t.path(), "bit");
    }
    // Postfix's public/ is a setgid directory: that one is fine.
    let ok = t.path().join("ok.tar.zst");
    full_archive(
        &ok,
        "o",
        &[
            Craft::Dir("data", 0o755),
            Craft::Dir("data/chatmail-postfix", 0o755),
            Craft::Dir("data/chatmail-postfix/public", 0o2710),
        ],
    );
    let target = t.path().join("ok-target");
    let r = restore_into(&target, &ok);
    assert_ok(&r);
    assert_eq!(
        fs::metadata(target.join("data/chatmail-postfix/public"))
            .unwrap()
            .mode()
            & 0o7777,
        0o2710
    );
}

#[test]
fn a_hard_link_to_a_path_outside_or_not_a_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("host"), "h").unwrap();
    for (n, target) in ["../host", "data/d", "data/missing"]
        .into_iter()
        .enumerate()
    {
        let archive = t.path().join(format!("h{n}.tar.zst"));
        full_archive(
            &archive,
            "h",
            &[
                Craft::Dir("data", 0o755),
                Craft::Dir("data/d", 0o755),
                Craft::Hard("data/h", target),
            ],
        );
        let says = if n == 0 {
            "unexpected entry"
        } else {
            "does not lead to a file"
        };
        refused(&archive, &t.path().join("target"), t.path(), says);
    }
}

#[test]
fn oversized_headers_and_non_file_bases_are_refused_before_reading() {
    let t = tempfile::tempdir().unwrap();
    // A header entry of 100 MB (zeros compress to nothing): refused by its
    // size, not read into memory.
    let big = t.path().join("big.tar.zst");
    let f = fs::File::create(&big).unwrap();
    let enc = zstd::stream::Encoder::new(f, 3).unwrap().auto_finish();
    let mut b = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    h.set_size(100 << 20);
    h.set_mode(0o600);
    b.append_data(
        &mut h,
        ".chatmail-backup/header.json",
        std::io::repeat(b' ').take_bytes(100 << 20),
    )
    .unwrap();
    b.finish().unwrap();
    drop(b);
    refused(&big, &t.path().join("target"), t.path(), "more than");

    // An incremental whose base is a FIFO, or a link to an archive
    // elsewhere: an error at once, nothing read.
    let dir = t.path().join("b");
    fs::create_dir_all(&dir).unwrap();
    crafted(
        &dir.join("incr.tar.zst"),
        "i",
        Some(("f", "full.tar.zst")),
        &[],
        &[],
        |_| {},
    );
    crate::support::mkfifo(&dir.join("full.tar.zst"));
    refused(
        &dir.join("incr.tar.zst"),
        &t.path().join("target"),
        t.path(),
        "not a regular file",
    );
    fs::remove_file(dir.join("full.tar.zst")).unwrap();
    crafted(
        &t.path().join("elsewhere.tar.zst"),
        "f",
        None,
        &[Craft::Dir("data", 0o755)],
        &[],
        |_| {},
    );
    symlink(t.path().join("elsewhere.tar.zst"), dir.join("full.tar.zst")).unwrap();
    refused(
        &dir.join("incr.tar.zst"),
        &t.path().join("target"),
        t.path(),
        "not a regular file",
    );
    // A base named by a path, not a file name.
    crafted(
        &dir.join("incr2.tar.zst"),
        "i",
        Some(("f", "../elsewhere.tar.zst")),
        &[],
        &[],
        |_| {},
    );
    refused(
        &dir.join("incr2.tar.zst"),
        &t.path().join("target"),
        t.path(),
        "not a file name",
    );
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

#[test]
fn a_crafted_archive_that_is_consistent_restores_exactly() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("ok.tar.zst");
    full_archive(
        &archive,
        "ok",
        &[
            Craft::Dir("data", 0o755),
            Craft::Dir("data/chatmail", 0o700),
            Craft::File("data/chatmail/m", b"mail", 0o600),
            Craft::Hard("data/chatmail/m2", "data/chatmail/m"),
            Craft::Link("data/chatmail/l", "/etc/passwd".into()),
            Craft::File(".env", b"MAIL_DOMAIN=x\n", 0o600),
        ],
    );
    let target = t.path().join("target");
    let r = restore_into(&target, &archive);
    assert_ok(&r);
    assert_eq!(fs::read(target.join("data/chatmail/m")).unwrap(), b"mail");
    assert_eq!(
        fs::metadata(target.join("data/chatmail/m")).unwrap().ino(),
        fs::metadata(target.join("data/chatmail/m2")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(target.join("data/chatmail/l")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::metadata(target.join(".env")).unwrap().mode() & 0o777,
        0o600
    );
}

// ------------------------------------------------------------ moving aside, running

#[test]
fn two_forced_restores_in_one_second_keep_every_original() {
    let (_t, d, bin_dir, archive) = backed_up("b.tar.zst");
    let mut envs = Vec::new();
    for i in 0..3 {
        let env = format!("MAIL_DOMAIN=edit{i}.org\n");
        fs::write(d.join(".env"), &env).unwrap();
        envs.push(env);
        assert_ok(&run(
            &d,
            &bin_dir,
            &["restore", "--force", archive.to_str().unwrap()],
        ));
    }
    let mut aside: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".env.before-restore-"))
        .map(|n| fs::read_to_string(d.join(n)).unwrap())
        .collect();
    aside.sort();
    assert_eq!(aside, envs);
}

#[test]
fn restoring_into_a_deployment_whose_container_runs_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), true);
    let archive = t.path().join("b.tar.zst");
    assert_ok(&run(&d, &bin_dir, &["backup", archive.to_str().unwrap()]));
    let before = state(&d);
    for args in [
        vec!["restore", "--force"],
        vec!["--dry-run", "restore", "--force"],
    ] {
        let mut a = args.clone();
        a.push(archive.to_str().unwrap());
        let r = run(&d, &bin_dir, &a);
        assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
        assert!(
            stderr(&r).contains("chatmail-chatmail-1") && stderr(&r).contains("down"),
            "{}",
            stderr(&r)
        );
    }
    assert_eq!(before, state(&d));
}

// ------------------------------------------------------------ what a backup holds

/// A stand-in `docker` whose `compose config` is the real Compose's (the
/// mounts the backup reads), the container not running.
fn compose_stand_in(t: &Path) -> Option<PathBuf> {
    if !require(have_compose_v2(), "`docker compose` v2") {
        return None;
    }
    let real = crate::support::real_docker().unwrap();
    let bin_dir = t.join("bin-compose");
    script(
        &bin_dir,
        "docker",
        &format!(
            "case \" $* \" in *\" config \"*) exec '{}' \"$@\";; esac\nexit 0",
            real.display()
        ),
    );
    Some(bin_dir)
}

/// A deployment in `t` with the appliance's compose file and
/// [`compose_stand_in`]: (the deployment, the stand-in's directory).
fn compose_deployment(t: &Path) -> Option<(PathBuf, PathBuf)> {
    let bin_dir = compose_stand_in(t)?;
    let d = deployment(t);
    appliance_compose(&d);
    Some((d, bin_dir))
}

/// The appliance's own compose file in `d/docker/`.
fn appliance_compose(d: &Path) {
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/docker-compose.yaml"),
        d.join("docker/docker-compose.yaml"),
    )
    .unwrap();
}

#[test]
fn a_backup_into_data_holds_the_mail_and_the_keys() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let before = state(&d);
    for dest in ["data/", "data/chatmail/", "data/backups/"] {
        let out = format!("{}/{dest}", d.display());
        let r = run(&d, &bin_dir, &["backup", "--full", "--json", &out]);
        assert_ok(&r);
        let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let archive = PathBuf::from(summary["archive"].as_str().unwrap());
        let target = t
            .path()
            .join(format!("restored-{}", dest.replace('/', "-")));
        assert_ok(&run(
            &target,
            &bin_dir,
            &["restore", archive.to_str().unwrap()],
        ));
        // Everything but the backups themselves.
        let mut got = state(&target);
        got.retain(|k, _| !k.contains("chatmail-backup-") && !k.starts_with("data/backups"));
        let mut want = before.clone();
        want.retain(|k, _| !k.starts_with("data/backups"));
        for k in [
            "data/chatmail/vmail/mail/example.org/u@example.org/password",
            "data/chatmail-dkimkeys/opendkim.private",
        ] {
            assert!(got.contains_key(k), "{dest}: {k} missing");
        }
        // The backup id is made by the first backup.
        got.retain(|k, _| k != "data/.chatmail-backup-id");
        want.retain(|k, _| k != "data/.chatmail-backup-id");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{dest}"
        );
    }
}

#[test]
fn linked_data_directories_and_the_queue_behind_a_link_are_archived() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let original = state(&d);
    // The mail and the queue on another disk, linked from data/.
    let disk = t.path().join("disk2");
    fs::create_dir_all(&disk).unwrap();
    for sub in ["chatmail", "chatmail-postfix"] {
        fs::rename(d.join("data").join(sub), disk.join(sub)).unwrap();
        symlink(disk.join(sub), d.join("data").join(sub)).unwrap();
    }
    let archive = t.path().join("b.tar.zst");
    assert_ok(&run(&d, &bin_dir, &["backup", archive.to_str().unwrap()]));
    let target = t.path().join("fresh");
    assert_ok(&run(
        &target,
        &bin_dir,
        &["restore", archive.to_str().unwrap()],
    ));
    let mut got = state(&target);
    got.retain(|k, _| k != "data/.chatmail-backup-id");
    let mut want = original;
    // data/ itself changed when the links were made in it.
    if let (Some(g), Some(w)) = (got.get("data"), want.get_mut("data")) {
        w.4 = g.4;
    }
    assert_eq!(got, want);
}

#[test]
fn the_mount_vmail_layout_is_archived_with_the_mail_it_mounts() {
    let t = tempfile::tempdir().unwrap();
    let Some((d, bin_dir)) = compose_deployment(t.path()) else {
        return;
    };
    // migrate --mount-vmail: the mail stays in the host's /home/vmail (under
    // a test root), the marker makes the generated override mount it.
    let root = t.path().join("root");
    fs::create_dir_all(root.join("home")).unwrap();
    fs::rename(d.join("data/chatmail/vmail"), root.join("home/vmail")).unwrap();
    fs::write(d.join("data/.mount-vmail"), "# mounted\n").unwrap();
    let on_root = |args: &[&str]| {
        bin()
            .env("PATH", path_with(&bin_dir))
            .arg("--root")
            .arg(&root)
            .arg("--dir")
            .arg(&d)
            .args(args)
            .output()
            .unwrap()
    };
    let gen = on_root(&["config", "--override-only"]);
    assert_ok(&gen);
    fs::write(d.join("docker/compose.generated.yaml"), &gen.stdout).unwrap();
    let archive = t.path().join("b.tar.zst");
    assert_ok(&on_root(&["backup", archive.to_str().unwrap()]));
    let target = t.path().join("fresh");
    let r = run(&target, &bin_dir, &["restore", archive.to_str().unwrap()]);
    assert_ok(&r);
    assert!(stderr(&r).contains("/home/vmail"), "{}", stderr(&r));
    let m = "data/chatmail/vmail/mail/example.org/u@example.org/cur/1700000005.M5.relay:2,S";
    assert_eq!(
        fs::read(target.join(m)).unwrap(),
        fs::read(
            root.join("home/vmail/mail/example.org/u@example.org/cur/1700000005.M5.relay:2,S")
        )
        .unwrap()
    );
    assert!(!target.join("data/.mount-vmail").exists());
}

#[test]
fn a_state_mount_the_host_cannot_read_fails_the_backup() {
    let t = tempfile::tempdir().unwrap();
    let Some((d, bin_dir)) = compose_deployment(t.path()) else {
        return;
    };
    fs::write(
        d.join("docker-compose.override.yaml"),
        "services:\n  chatmail:\n    volumes:\n      - type: tmpfs\n        target: /var/spool/postfix\n",
    )
    .unwrap();
    let out = t.path().join("b.tar.zst");
    let r = run(&d, &bin_dir, &["backup", out.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("/var/spool/postfix"), "{}", stderr(&r));
    assert!(!out.exists());
}

// ------------------------------------------------------------ retention

fn archive_list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.zst"))
        .collect();
    v.sort();
    v
}

#[test]
fn retention_removes_only_this_deployments_chains_never_the_new_one() {
    let (t, d, bin_dir, out) = backed_up("backups/");
    let out_s = format!("{}/", out.display());
    let ours = archive_list(&out);
    // Another relay's archives in the same directory, one dated in the
    // future; a file named like an archive; a copy of ours under a future
    // name is still ours (same header) and may go.
    let other = t.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let d2 = deployment(&other);
    assert_ok(&run(&d2, &bin_dir, &["backup", &out_s]));
    let theirs: Vec<String> = archive_list(&out)
        .into_iter()
        .filter(|n| !ours.contains(n))
        .collect();
    fs::rename(
        out.join(&theirs[0]),
        out.join("chatmail-backup-29991231T000000.000Z-full.tar.zst"),
    )
    .unwrap();
    fs::write(
        out.join("chatmail-backup-29990101T000000.000Z-full.tar.zst"),
        "not an archive",
    )
    .unwrap();
    for _ in 0..2 {
        assert_ok(&run(
            &d,
            &bin_dir,
            &["backup", "--full", "--keep", "1", &out_s],
        ));
    }
    let left = archive_list(&out);
    assert!(
        left.contains(&"chatmail-backup-29991231T000000.000Z-full.tar.zst".to_string()),
        "{left:?}"
    );
    assert!(
        left.contains(&"chatmail-backup-29990101T000000.000Z-full.tar.zst".to_string()),
        "{left:?}"
    );
    let mine: Vec<&String> = left
        .iter()
        .filter(|n| !n.starts_with("chatmail-backup-2999"))
        .collect();
    assert_eq!(mine.len(), 1, "{left:?}");
    assert!(
        !ours.contains(mine[0]),
        "the newest chain is kept, not the first"
    );

    // An incremental never builds on another relay's archive, whatever its
    // name says.
    let r = run(&d, &bin_dir, &["backup", "--json", &out_s]);
    assert_ok(&r);
    let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(s["base"].as_str(), Some(mine[0].as_str()), "{s}");
}

#[test]
fn a_killed_backups_partial_file_goes_with_the_next_backup() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let out = t.path().join("backups");
    fs::create_dir_all(&out).unwrap();
    let stale = out.join(".chatmail-backup-20260101T000000.000Z-full.tar.zst.Xy12Ab.partial");
    fs::write(&stale, vec![0u8; 4096]).unwrap();
    let foreign = out.join(".somebody-elses.partial");
    fs::write(&foreign, "x").unwrap();
    assert_ok(&run(
        &d,
        &bin_dir,
        &["backup", &format!("{}/", out.display())],
    ));
    assert!(!stale.exists());
    assert!(foreign.exists());
}

#[test]
fn resource_options_are_bounded() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let (bin_dir, _) = stand_in(t.path(), false);
    let r = run(&d, &bin_dir, &["backup", "--threads", "100000", "-"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("--threads"), "{}", stderr(&r));
}

// ------------------------------------------------------------ signals

/// A backup blocked where it cannot look for a signal (a `docker` call
/// that never returns, here while Postfix is paused) ends on SIGTERM
/// within the deadline, exit 130, its partial file removed.
#[test]
fn a_blocked_backup_ends_on_sigterm_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = deployment(t.path());
    let bin_dir = t.path().join("bin");
    let log = t.path().join("docker.log");
    crate::backup::docker(&bin_dir, &log, true, "sleep 600");
    let out = t.path().join("backups");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("chatmail-docker"))
        .env("PATH", path_with(&bin_dir))
        .arg("--dir")
        .arg(&d)
        .args(["backup", &format!("{}/", out.display())])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the freeze hangs.
    for _ in 0..600 {
        if fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("freeze")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    // The test's own bound: a hang fails here, not a timing.
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("backup did not end on SIGTERM");
    };
    let out_err = {
        let mut s = String::new();
        use std::io::Read;
        child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(status.code(), Some(130), "{out_err}");
    let left: Vec<_> = fs::read_dir(&out)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

// ------------------------------------------------------------ random archives

mod random_archives {
    use super::*;
    use proptest::prelude::*;

    /// One node a valid archive holds: its path below `data/` or `custom/`
    /// (components from a small alphabet), what it is.
    #[derive(Clone, Debug)]
    struct Node {
        top: bool,
        path: Vec<u8>,
        kind: u8,
        pick: u8,
        mode: u8,
    }

    /// Something a hostile archive does.
    #[derive(Clone, Debug)]
    enum Attack {
        /// An entry with a path that leaves the target.
        Path(u8),
        /// An entry below a symlink of the archive.
        BelowLink(u8),
        /// A hard link to a path outside, or to no file.
        Hard(u8),
        /// A setuid or setgid file.
        SetId(u8),
        /// A top-level path of the wrong kind.
        TopKind(u8),
        /// The manifest drops an entry, adds one, changes a kind or
        /// deletes a path it should not.
        Lie(u8, u8),
    }

    const PARTS: &[&str] = &["a", "b", "c"];
    const LINKS: &[&str] = &[
        "../../outside",
        "OUTSIDE",
        "a",
        "../a",
        "/etc",
        "data/../..",
    ];
    const HOSTILE: &[&str] = &[
        "../x",
        "/tmp/x",
        "data/../../x",
        "data/./a",
        ".chatmail-backup/x",
        "data//a",
        "relay/x",
        "OUTSIDE",
    ];

    fn node() -> impl Strategy<Value = Node> {
        (
            any::<bool>(),
            prop::collection::vec(0u8..3, 1..4),
            0u8..6,
            any::<u8>(),
            0u8..4,
        )
            .prop_map(|(top, path, kind, pick, mode)| Node {
                top,
                path,
                kind,
                pick,
                mode,
            })
    }

    fn attack() -> impl Strategy<Value = Attack> {
        prop_oneof![
            any::<u8>().prop_map(Attack::Path),
            any::<u8>().prop_map(Attack::BelowLink),
            any::<u8>().prop_map(Attack::Hard),
            any::<u8>().prop_map(Attack::SetId),
            any::<u8>().prop_map(Attack::TopKind),
            (0u8..4, any::<u8>()).prop_map(|(a, b)| Attack::Lie(a, b)),
        ]
    }

    /// A tar entry: path, kind, mode, content or link target.
    #[derive(Clone, Debug)]
    struct E {
        path: String,
        kind: &'static str,
        mode: u32,
        data: Vec<u8>,
    }

    fn outside_text(t: &str, outside: &Path) -> String {
        if t == "OUTSIDE" {
            outside.display().to_string()
        } else {
            t.to_string()
        }
    }

    /// The entries of a valid archive from `nodes`, parents first.
    fn valid(
        nodes: &[Node],
        with_tops: bool,
        have: &mut std::collections::BTreeMap<String, &'static str>,
        outside: &Path,
    ) -> Vec<E> {
        let mut out = Vec::new();
        let add = |out: &mut Vec<E>,
                   have: &mut std::collections::BTreeMap<String, &'static str>,
                   e: E| {
            have.insert(e.path.clone(), e.kind);
            out.push(e);
        };
        if with_tops {
            for top in ["data", "custom"] {
                add(
                    &mut out,
                    have,
                    E {
                        path: top.into(),
                        kind: "dir",
                        mode: 0o755,
                        data: vec![],
                    },
                );
            }
            add(
                &mut out,
                have,
                E {
                    path: ".env".into(),
                    kind: "file",
                    mode: 0o600,
                    data: b"MAIL_DOMAIN=x\n".to_vec(),
                },
            );
        }
        for n in nodes {
            let top = if n.top { "data" } else { "custom" };
            let parts: Vec<&str> = n.path.iter().map(|i| PARTS[*i as usize]).collect();
            // Parents: directories, made when missing; a node below a
            // non-directory is left out (that is an attack of its own).
            let mut p = top.to_string();
            let mut ok = have.get(top) == Some(&"dir");
            for part in &parts[..parts.len() - 1] {
                p = format!("{p}/{part}");
                match have.get(&p) {
                    Some(&"dir") => {}
                    Some(_) => ok = false,
                    None if ok => add(
                        &mut out,
                        have,
                        E {
                            path: p.clone(),
                            kind: "dir",
                            mode: 0o755,
                            data: vec![],
                        },
                    ),
                    None => {}
                }
            }
            let path = format!("{p}/{}", parts[parts.len() - 1]);
            if !ok || have.contains_key(&path) {
                continue;
            }
            let modes = [0o600u32, 0o644, 0o750, 0o1777];
            let e = match n.kind {
                0 | 1 => E {
                    path,
                    kind: "file",
                    mode: modes[n.mode as usize % 3],
                    data: format!("mail {}", n.pick).into_bytes(),
                },
                2 => E {
                    path,
                    kind: "dir",
                    mode: [0o700, 0o755, 0o2750, 0o1777][n.mode as usize],
                    data: vec![],
                },
                3 | 4 => E {
                    path,
                    kind: "symlink",
                    mode: 0o777,
                    data: outside_text(LINKS[n.pick as usize % LINKS.len()], outside).into_bytes(),
                },
                _ => {
                    let files: Vec<String> = have
                        .iter()
                        .filter(|(_, k)| **k == "file")
                        .map(|(p, _)| p.clone())
                        .collect();
                    if files.is_empty() {
                        continue;
                    }
                    E {
                        path,
                        kind: "hardlink",
                        mode: 0o600,
                        data: files[n.pick as usize % files.len()].clone().into_bytes(),
                    }
                }
            };
            add(&mut out, have, e);
        }
        out
    }

    /// Apply `a` to an archive's entries (and later its manifest).
    fn hostile(entries: &mut Vec<E>, a: &Attack, outside: &Path) {
        let at = |i: u8, len: usize| if len == 0 { 0 } else { i as usize % (len + 1) };
        match a {
            Attack::Path(i) => {
                let path = outside_text(HOSTILE[*i as usize % HOSTILE.len()], outside);
                let pos = at(*i, entries.len());
                entries.insert(
                    pos,
                    E {
                        path,
                        kind: "file",
                        mode: 0o600,
                        data: b"planted".to_vec(),
                    },
                );
            }
            Attack::BelowLink(i) => {
                let links: Vec<String> = entries
                    .iter()
                    .filter(|e| e.kind == "symlink")
                    .map(|e| e.path.clone())
                    .collect();
                let l = links
                    .get(*i as usize % links.len().max(1))
                    .cloned()
                    .unwrap_or_else(|| {
                        entries.push(E {
                            path: "data/l".into(),
                            kind: "symlink",
                            mode: 0o777,
                            data: outside.display().to_string().into_bytes(),
                        });
                        "data/l".into()
                    });
                entries.push(E {
                    path: format!("{l}/planted"),
                    kind: "file",
                    mode: 0o600,
                    data: b"planted".to_vec(),
                });
            }
            Attack::Hard(i) => {
                let t =
                    ["../outside/a/file", "data", "data/missing", "/etc/passwd"][*i as usize % 4];
                entries.push(E {
                    path: "data/h".into(),
                    kind: "hardlink",
                    mode: 0o600,
                    data: t.as_bytes().to_vec(),
                });
            }
            Attack::SetId(i) => {
                let mode = [0o4755, 0o2755, 0o6755][*i as usize % 3];
                entries.push(E {
                    path: "data/tool".into(),
                    kind: "file",
                    mode,
                    data: b"#!/bin/sh\n".to_vec(),
                });
            }
            Attack::TopKind(i) => {
                let (p, k) = [
                    (".env", "symlink"),
                    ("data", "symlink"),
                    ("chatmail.ini", "dir"),
                    ("custom", "file"),
                ][*i as usize % 4];
                entries.retain(|e| e.path != p && !e.path.starts_with(&format!("{p}/")));
                entries.insert(
                    0,
                    E {
                        path: p.into(),
                        kind: k,
                        mode: 0o755,
                        data: outside.display().to_string().into_bytes(),
                    },
                );
            }
            Attack::Lie(..) => {}
        }
    }

    fn write_archive(
        path: &Path,
        id: &str,
        base: Option<(&str, &str)>,
        entries: &[E],
        deleted: &[String],
        lies: &[(u8, u8)],
    ) {
        let mut header = serde_json::json!({
            "format": 2, "tool_version": "0.1.0",
            "kind": if base.is_some() { "incremental" } else { "full" },
            "id": id, "created": "2026-01-01T00:00:00.000Z",
        });
        if let Some((i, f)) = base {
            header["base"] = serde_json::json!({"id": i, "file": f});
        }
        let mut listed: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::json!({
                    "path": e.path, "kind": e.kind,
                    "size": if e.kind == "file" { e.data.len() } else { 0 },
                    "mtime": 1, "mode": e.mode, "uid": 0, "gid": 0, "stored": true,
                });
                if e.kind == "file" {
                    v["sha256"] = sha(&e.data).into();
                }
                if e.kind == "symlink" || e.kind == "hardlink" {
                    v["target"] = String::from_utf8(e.data.clone()).unwrap().into();
                }
                v
            })
            .collect();
        let mut deleted: Vec<String> = deleted.to_vec();
        for (how, i) in lies {
            let n = listed.len();
            match how {
                0 if n > 0 => {
                    listed.remove(*i as usize % n);
                }
                1 => listed.push(serde_json::json!({
                    "path": (["../../victim", "/etc/passwd", "data/x", "data/../.."][*i as usize % 4]),
                    "kind": "file", "size": 0, "mtime": 1, "mode": 0o777, "uid": 4242, "gid": 4242, "stored": false,
                })),
                2 if n > 0 => listed[*i as usize % n]["kind"] = "dir".into(),
                3 => deleted.push(["data", "../x", "custom/a", "/etc"][*i as usize % 4].into()),
                _ => {}
            }
        }
        let manifest = serde_json::json!({
            "header": header.clone(), "consistency": {"notes": []},
            "listing": if base.is_some() { "changes" } else { "all" },
            "entries": listed, "deleted": deleted,
        });
        hand_made_archive(path, &serde_json::to_vec(&header).unwrap(), |b| {
            for e in entries {
                let mut h = tar::Header::new_gnu();
                h.set_mode(e.mode);
                // Names the tar crate refuses to write (`..`, absolute)
                // go in raw, as a hostile archive would have them.
                if h.set_path(&e.path).is_err() {
                    let n = e.path.len().min(99);
                    h.as_old_mut().name[..n].copy_from_slice(&e.path.as_bytes()[..n]);
                }
                let ty = match e.kind {
                    "file" => tar::EntryType::Regular,
                    "dir" => tar::EntryType::Directory,
                    "symlink" => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                h.set_entry_type(ty);
                if ty == tar::EntryType::Regular {
                    h.set_size(e.data.len() as u64);
                    h.set_cksum();
                    b.append(&h, &e.data[..]).unwrap();
                } else {
                    h.set_size(0);
                    if matches!(ty, tar::EntryType::Symlink | tar::EntryType::Link) {
                        let t = String::from_utf8(e.data.clone()).unwrap();
                        if h.set_link_name(&t).is_err() {
                            let n = t.len().min(99);
                            h.as_old_mut().linkname[..n].copy_from_slice(&t.as_bytes()[..n]);
                        }
                    }
                    h.set_cksum();
                    b.append(&h, std::io::empty()).unwrap();
                }
            }
            let text = serde_json::to_vec(&manifest).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, ".chatmail-backup/manifest.json", &text[..])
                .unwrap();
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever a chain of archives holds (mostly what `backup` makes,
        /// with attacks mixed in: paths out of the target, entries below
        /// links, hard links out, setuid files, top-level paths of the
        /// wrong kind, manifests that disagree with the entries), nothing
        /// outside the target changes, the dry run refuses what the real
        /// run refuses, and a restore that succeeds made exactly the tree
        /// the chain's manifests describe.
        #[test]
        fn nothing_outside_the_target_changes(
            full in prop::collection::vec(node(), 0..12),
            full_attacks in prop::collection::vec(attack(), 0..2),
            incr in prop::option::of((prop::collection::vec(node(), 0..8), prop::collection::vec(0u8..3, 0..3), prop::collection::vec(attack(), 0..2))),
        ) {
            let t = tempfile::tempdir().unwrap();
            let sandbox = t.path().join("sandbox");
            let outside = sandbox.join("outside");
            fs::create_dir_all(outside.join("a/b")).unwrap();
            fs::write(outside.join("a/b/file"), "host").unwrap();
            fs::write(outside.join("a/file"), "host").unwrap();
            fs::set_permissions(outside.join("a/file"), fs::Permissions::from_mode(0o600)).unwrap();
            symlink("/etc", outside.join("etc-link")).unwrap();
            let dir = sandbox.join("backups");
            fs::create_dir_all(&dir).unwrap();
            let mut have = std::collections::BTreeMap::new();
            let mut entries = valid(&full, true, &mut have, &outside);
            let mut lies = Vec::new();
            for a in &full_attacks {
                hostile(&mut entries, a, &outside);
                if let Attack::Lie(x, y) = a { lies.push((*x, *y)); }
            }
            write_archive(&dir.join("full.tar.zst"), "f", None, &entries, &[], &lies);
            let last = match &incr {
                Some((nodes, deletes, attacks)) => {
                    // Some paths of the full archive deleted, some new or
                    // replaced (a directory by a link, ...).
                    let known: Vec<String> = have.keys().filter(|p| p.contains('/')).cloned().collect();
                    let deleted: Vec<String> = deletes.iter().filter_map(|i| known.get(*i as usize % known.len().max(1)).cloned()).collect();
                    for d in &deleted {
                        have.retain(|p, _| p != d && !p.starts_with(&format!("{d}/")));
                    }
                    let mut e2 = valid(nodes, false, &mut have, &outside);
                    let mut lies = Vec::new();
                    for a in attacks {
                        hostile(&mut e2, a, &outside);
                        if let Attack::Lie(x, y) = a { lies.push((*x, *y)); }
                    }
                    write_archive(&dir.join("incr.tar.zst"), "i", Some(("f", "full.tar.zst")), &e2, &deleted, &lies);
                    dir.join("incr.tar.zst")
                }
                None => dir.join("full.tar.zst"),
            };
            let target = sandbox.join("deploy/target");
            fs::create_dir_all(sandbox.join("deploy")).unwrap();
            let before = snapshot(&sandbox, &target);
            let dry = bin().arg("--dir").arg(&target).arg("--dry-run")
                .args(["restore", last.to_str().unwrap()])
                .timeout(Duration::from_secs(60)).output().unwrap();
            let real = bin().arg("--dir").arg(&target)
                .args(["restore", last.to_str().unwrap()])
                .timeout(Duration::from_secs(60)).output().unwrap();
            if std::env::var_os("SHOW_OUTCOMES").is_some() {
                eprintln!("OUTCOME {} {}", real.status.success(), stderr(&real).lines().next().unwrap_or(""));
            }
            prop_assert_eq!(&before, &snapshot(&sandbox, &target), "outside changed: {}", stderr(&real));
            // The dry run refuses exactly what the real run refuses.
            prop_assert_eq!(dry.status.success(), real.status.success(),
                "dry: {} / real: {}", stderr(&dry), stderr(&real));
            if real.status.success() {
                let want = folded(&dir, &last);
                let mut got = std::collections::BTreeMap::new();
                for e in walkdir::WalkDir::new(&target).min_depth(1) {
                    let e = e.unwrap();
                    let rel = e.path().strip_prefix(&target).unwrap().to_string_lossy().into_owned();
                    let ft = fs::symlink_metadata(e.path()).unwrap().file_type();
                    let k = if ft.is_symlink() {
                        format!("symlink {}", fs::read_link(e.path()).unwrap().display())
                    } else if ft.is_dir() {
                        "dir".to_string()
                    } else {
                        format!("file {}", sha(&fs::read(e.path()).unwrap()))
                    };
                    got.insert(rel, k);
                }
                prop_assert_eq!(got, want);
            } else {
                prop_assert!(
                    !target.exists() || fs::read_dir(&target).unwrap().count() == 0,
                    "a refused restore left something"
                );
            }
        }
    }

    /// path -> what it is ("dir", "file SHA", "symlink TARGET") after the
    /// chain ending in `last`, read back with the library. A hard link has
    /// the content of the file it named when its archive was made (that
    /// name may be deleted later; the file stays).
    fn folded(dir: &Path, last: &Path) -> std::collections::BTreeMap<String, String> {
        use chatmail_docker::archive::manifest::{EntryKind, Manifest};
        let keys = Default::default();
        let chain = chatmail_docker::archive::chain::headers(last, &keys).unwrap();
        let mut state: Option<Manifest> = None;
        let mut content: std::collections::BTreeMap<String, String> = Default::default();
        for (p, _) in chain {
            let m = chatmail_docker::archive::read::read_manifest(
                &dir.join(p.file_name().unwrap()),
                &keys,
            )
            .unwrap();
            for e in &m.entries {
                match e.kind {
                    EntryKind::File => {
                        content.insert(e.path.clone(), e.sha256.clone().unwrap_or_default());
                    }
                    EntryKind::Hardlink => {
                        let c = content
                            .get(e.target.as_deref().unwrap_or(""))
                            .cloned()
                            .unwrap_or_default();
                        content.insert(e.path.clone(), c);
                    }
                    _ => {}
                }
            }
            match &mut state {
                None => state = Some(m),
                Some(s) => s.fold(m),
            }
        }
        state
            .unwrap()
            .entries
            .iter()
            .map(|e| {
                let k = match e.kind {
                    EntryKind::Dir => "dir".to_string(),
                    EntryKind::Symlink => {
                        format!("symlink {}", e.target.clone().unwrap_or_default())
                    }
                    EntryKind::File | EntryKind::Hardlink => {
                        format!("file {}", content.get(&e.path).cloned().unwrap_or_default())
                    }
                };
                (e.path.clone(), k)
            })
            .collect()
    }
}

// ------------------------------------------------------------ random layouts

mod random_layouts {
    use super::*;
    use proptest::prelude::*;

    /// Where the container mounts the state (the appliance's compose file).
    const STATE: &[(&str, &str)] = &[
        ("data/chatmail", "/home"),
        ("data/chatmail-acme", "/var/lib/acme"),
        ("data/chatmail-dkimkeys", "/etc/dkimkeys"),
        ("data/chatmail-postfix", "/var/spool/postfix"),
        ("data/chatmail-state", "/var/lib/chatmail-docker"),
    ];

    /// A node of a random tree: files, directories, and links of every
    /// kind the container may meet.
    #[derive(Clone, Debug)]
    enum N {
        File(u8),
        Dir(Vec<(u8, N)>),
        /// 0: relative inside the tree, 1: absolute into another state
        /// tree, 2: into the administrator's mount, 3: dangling, 4: the
        /// image's own file, 5: a host path the container does not have.
        Link(u8),
    }

    fn node() -> impl Strategy<Value = N> {
        let leaf = prop_oneof![
            2 => any::<u8>().prop_map(N::File),
            1 => (0u8..6).prop_map(N::Link),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop::collection::vec((0u8..6, inner), 0..4).prop_map(N::Dir)
        })
    }

    fn link_text(k: u8, host: &Path) -> String {
        match k {
            0 => "../n1".into(),
            1 => "/var/lib/acme/n0".into(),
            2 => "/srv/extra/n0".into(),
            3 => "nothing-here".into(),
            4 => "/etc/debian_version".into(),
            _ => host.join("extra").display().to_string(),
        }
    }

    fn build(at: &Path, n: &N, host: &Path) {
        match n {
            N::File(b) => fs::write(at, vec![*b; (*b as usize) * 3]).unwrap(),
            N::Link(k) => symlink(link_text(*k, host), at).unwrap(),
            N::Dir(children) => {
                fs::create_dir_all(at).unwrap();
                for (name, c) in children {
                    let p = at.join(format!("n{name}"));
                    if fs::symlink_metadata(&p).is_err() {
                        build(&p, c, host);
                    }
                }
            }
        }
    }

    /// What a process in a container with these mounts sees below the
    /// state's mount points, following links as it would: every path it
    /// can name there (to a depth past any tree's own), with its type, mode
    /// and owner, and each file's content. A directory reached again
    /// through a link loop is walked again, as a process naming that path
    /// would find it (`find -L` stops where it meets the same inode twice,
    /// and a copy in the restored tree is another inode with the same
    /// content, so its cut-off would fall elsewhere for the same view).
    /// Walking stops after a fixed number of entries in walk order: two
    /// views that are the same are cut at the same entry.
    fn view(image: &str, mounts: &[(PathBuf, &str)]) -> String {
        let mut cmd = std::process::Command::new("docker");
        cmd.args(["run", "--rm", "--network", "none", "--hostname", "view"]);
        for (src, target) in mounts {
            // Read-write: Docker makes a mount point below another mount
            // in its source, as it does for the relay.
            cmd.arg("-v").arg(format!("{}:{target}", src.display()));
        }
        let targets: Vec<&str> = STATE.iter().map(|(_, t)| *t).collect();
        // A link that leads nowhere, whether to nothing or around a loop
        // of links: the relay finds nothing there either way (N).
        let walk = r#"
shopt -s dotglob nullglob
walk() {
    local p=$1 depth=$2 c
    if ! stat -L -c '%n|%F|%a|%u:%g' -- "$p" 2>/dev/null; then
        echo "$p|N"
        return
    fi
    if [ -f "$p" ]; then
        echo "$p|$(sha256sum < "$p" | cut -c1-64)"
    elif [ -d "$p" ] && [ "$depth" -lt 12 ]; then
        for c in "$p"/*; do walk "$c" $((depth + 1)); done
    fi
}
for t in "$@"; do walk "$t" 0; done | head -n 20000
"#;
        cmd.args([image, "bash", "-c", walk, "view"]).args(&targets);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines.join("\n")
    }

    fn base_image() -> Option<String> {
        if !require(
            crate::support::runs("docker", &["version", "--format", "{{.Server.Version}}"])
                && have_compose_v2(),
            "a Docker engine and `docker compose` v2",
        ) {
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/build-base.sh");
        let out = std::process::Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success());
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap()
                .trim()
                .to_string(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Any layout of `data/` (state trees linked to other disks, links
        /// at any depth, a mail directory mounted from the host, links into
        /// the administrator's own mount), backed up and restored into a
        /// fresh directory: a container of the restored deployment sees
        /// what the original one saw.
        #[test]
        fn the_restored_relay_sees_what_the_original_saw(
            trees in prop::collection::vec(node(), 5),
            linked in prop::collection::vec(any::<bool>(), 5),
            vmail in prop::option::of(node()),
            extra in node(),
        ) {
            let Some(image) = base_image() else { return Ok(()); };
            let t = tempfile::tempdir().unwrap();
            let host = t.path().to_path_buf();
            let Some(bin_dir) = compose_stand_in(&host) else { return Ok(()); };
            let d = host.join("dep");
            fs::create_dir_all(d.join("data")).unwrap();
            fs::create_dir_all(d.join("docker")).unwrap();
            appliance_compose(&d);
            fs::write(d.join(".env"), "MAIL_DOMAIN=example.org\n").unwrap();
            let mut mounts: Vec<(PathBuf, &str)> = Vec::new();
            for (i, ((apath, target), tree)) in STATE.iter().zip(&trees).enumerate() {
                let src = if linked[i] { host.join("disk").join(i.to_string()) } else { d.join(apath) };
                build(&src, &N::Dir(vec![(0, tree.clone()), (1, N::File(7))]), &host);
                if linked[i] {
                    symlink(&src, d.join(apath)).unwrap();
                }
                mounts.push((d.join(apath), target));
            }
            build(&host.join("extra"), &N::Dir(vec![(0, extra.clone())]), &host);
            let mut override_yaml = format!(
                "services:\n  chatmail:\n    volumes:\n      - {}:/srv/extra\n",
                host.join("extra").display()
            );
            mounts.push((host.join("extra"), "/srv/extra"));
            if let Some(v) = &vmail {
                build(&host.join("hostvmail"), &N::Dir(vec![(0, v.clone())]), &host);
                override_yaml.push_str(&format!("      - {}:/home/vmail\n", host.join("hostvmail").display()));
                mounts.push((host.join("hostvmail"), "/home/vmail"));
            }
            fs::write(d.join("docker-compose.override.yaml"), &override_yaml).unwrap();
            let before = view(&image, &mounts);
            if std::env::var_os("SHOW_VIEW").is_some() {
                eprintln!("VIEW\n{before}");
            }

            let archive = host.join("b.tar.zst");
            let r = run(&d, &bin_dir, &["backup", archive.to_str().unwrap()]);
            if !r.status.success() && stderr(&r).contains("the tree would contain itself") {
                // A link that makes a directory contain itself (through the
                // administrator's mount): refused, naming it.
                prop_assert!(!archive.exists());
                return Ok(());
            }
            prop_assert!(r.status.success(), "backup: {}", stderr(&r));
            let restored_dir = host.join("restored");
            let r = run(&restored_dir, &bin_dir, &["restore", archive.to_str().unwrap()]);
            prop_assert!(r.status.success(), "restore: {}", stderr(&r));
            // The restored deployment in the appliance's own layout; the
            // administrator's mount is not needed to see the same.
            let restored: Vec<(PathBuf, &str)> = STATE
                .iter()
                .map(|(apath, target)| (target_dir(&restored_dir, apath), *target))
                .collect();
            let after = view(&image, &restored);
            prop_assert_eq!(before, after);
        }
    }

    fn target_dir(t: &Path, apath: &str) -> PathBuf {
        let p = t.join(apath);
        // Docker makes a missing bind source; so does the appliance.
        fs::create_dir_all(&p).unwrap();
        p
    }
}
