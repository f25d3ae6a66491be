//! Files named by options of `backup` and `restore` (the passphrase, the
//! recipients, identities, the archive an incremental builds on): the
//! same mistake gets the same answer. Missing, unreadable, a directory or
//! a FIFO is a usage error (exit 2) naming the option, or the environment
//! variable that gave it, before anything is read or written; a FIFO
//! never blocks. (`upgrade --build-ca` and `--backup-dir`: tests/it/upgrade.rs.)

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An environment variable for one command.
type Env<'a> = Option<(&'a str, &'a Path)>;

struct Case {
    t: tempfile::TempDir,
    dir: PathBuf,
    bin: PathBuf,
}

fn case() -> Case {
    let t = tempfile::tempdir().unwrap();
    let dir = minimal_deployment(t.path());
    fs::create_dir_all(dir.join("data")).unwrap();
    fs::write(
        dir.join("chatmail.ini"),
        "[params]\nmail_domain = chat.example.org\n",
    )
    .unwrap();
    // No container: nothing to pause, nothing to ask.
    let bin = t.path().join("bin");
    script(&bin, "docker", "exit 0");
    let files = t.path().join("files");
    fs::create_dir_all(files.join("a-directory")).unwrap();
    fs::write(files.join("file"), "x\n").unwrap();
    crate::support::mkfifo(&files.join("fifo"));
    fs::write(files.join("no-access"), "x\n").unwrap();
    fs::set_permissions(files.join("no-access"), fs::Permissions::from_mode(0o000)).unwrap();
    Case { t, dir, bin }
}

impl Case {
    fn files(&self) -> PathBuf {
        self.t.path().join("files")
    }

    /// The bad files, each with what the message says about it.
    fn bad(&self) -> Vec<(PathBuf, &'static str)> {
        let f = self.files();
        let mut v = vec![
            (f.join("missing"), "does not exist"),
            (f.join("a-directory"), "is a directory, not a regular file"),
            (f.join("fifo"), "is a FIFO, not a regular file"),
            // Unreadable: a path through a file.
            (f.join("file/below"), "cannot read"),
        ];
        // Root reads a file of mode 000.
        if !rustix::process::geteuid().is_root() {
            v.push((f.join("no-access"), "cannot read"));
        }
        v
    }

    fn run(&self, args: &[&str], env: Env) -> (Option<i32>, String) {
        let mut c = bin();
        c.env("PATH", path_with(&self.bin))
            .env_remove("CHATMAIL_BACKUP_PASSPHRASE_FILE")
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .timeout(Duration::from_secs(60));
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        (o.status.code(), output_text(&o))
    }
}

#[test]
fn a_bad_file_for_an_option_is_a_usage_error_naming_it() {
    let c = case();
    let out = c.t.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let archive = out.join("a.tar.zst");
    let archive = archive.to_str().unwrap();
    let out = format!("{}/", out.display());
    for (bad, says) in c.bad() {
        let bad_s = bad.to_str().unwrap();
        let commands: Vec<(Vec<&str>, Env, &str)> = vec![
            (
                vec!["backup", &out, "--passphrase-file", bad_s],
                None,
                "--passphrase-file",
            ),
            (
                vec!["backup", &out, "--recipients-file", bad_s],
                None,
                "--recipients-file",
            ),
            (
                vec!["backup", &out, "--identity", bad_s],
                None,
                "--identity",
            ),
            (vec!["backup", archive, "--since", bad_s], None, "--since"),
            (
                vec!["backup", &out],
                Some(("CHATMAIL_BACKUP_PASSPHRASE_FILE", &bad)),
                "CHATMAIL_BACKUP_PASSPHRASE_FILE",
            ),
            (
                vec!["restore", archive, "--passphrase-file", bad_s],
                None,
                "--passphrase-file",
            ),
            (
                vec!["restore", archive, "--identity", bad_s],
                None,
                "--identity",
            ),
            (
                vec!["restore", archive],
                Some(("CHATMAIL_BACKUP_PASSPHRASE_FILE", &bad)),
                "CHATMAIL_BACKUP_PASSPHRASE_FILE",
            ),
        ];
        for (args, env, name) in commands {
            let (code, text) = c.run(&args, env);
            assert_eq!(code, Some(2), "{args:?} {env:?}: {text}");
            assert!(
                text.contains(&format!("{name}: ")) && text.contains(bad_s) && text.contains(says),
                "{args:?} {env:?}: no `{name}: ... {says}` in {text}"
            );
        }
    }
    // Nothing was written.
    assert_eq!(fs::read_dir(c.t.path().join("out")).unwrap().count(), 0);
    assert!(!c.dir.join(".env").exists());
}
