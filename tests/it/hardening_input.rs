//! Input that is not what it claims, files the tool writes, and what
//! reaches the terminal: FIFOs, devices and huge files as configuration,
//! symlinked backups, the output named as the input, temp files a killed
//! run left, and control characters in values.

use crate::support::certs::{pair, put, Deploy};
use crate::support::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on any command here: a read that blocks fails the test instead
/// of hanging it.
const BOUND: Duration = Duration::from_secs(60);

fn deploy(t: &Path) -> PathBuf {
    let d = t.join("deploy");
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("chatmail.ini"),
        "[params]\nmail_domain = chat.example.org\n",
    )
    .unwrap();
    d
}

fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin()
        .arg("--dir")
        .arg(dir)
        .args(["--color", "never"])
        .args(args)
        .timeout(BOUND)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `config --override-only` with `custom/www/<name>` as `make` leaves it:
/// it must fail. Its stderr.
fn custom_refused(d: &Path, name: &str, make: impl FnOnce(&Path)) -> String {
    fs::create_dir_all(d.join("custom/www")).unwrap();
    make(&d.join("custom/www").join(name));
    let (code, _, err) = run(d, &["config", "--override-only"]);
    assert_ne!(code, Some(0), "{err}");
    err
}

/// `cert-watch --once <extra>` (reload command `true`) in `d`: it must
/// fail. Its stderr.
fn once_fails(d: &Deploy, extra: &[&str]) -> String {
    let out = d.once(extra, "true");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "{err}");
    err
}

/// What the input can be instead of a regular file, and the word the
/// message must use for it.
fn impostors(t: &Path) -> Vec<(PathBuf, &'static str)> {
    let fifo = t.join("fifo");
    mkfifo(&fifo);
    let to_fifo = t.join("link-to-fifo");
    symlink(&fifo, &to_fifo).unwrap();
    let looped = t.join("loop");
    symlink(&looped, &looped).unwrap();
    let dir = t.join("a-directory");
    fs::create_dir(&dir).unwrap();
    // Sparse: larger than any configuration file without using the disk.
    let huge = t.join("huge");
    fs::File::create(&huge).unwrap().set_len(64 << 20).unwrap();
    vec![
        (fifo, "FIFO"),
        (to_fifo, "FIFO"),
        (PathBuf::from("/dev/zero"), "character device"),
        (looped, "symlink loop"),
        (dir, "directory"),
        (huge, "larger than the limit of"),
    ]
}

#[test]
fn ini2env_refuses_every_input_that_is_not_a_regular_file() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    for (bad, word) in impostors(t.path()) {
        let b = bad.to_str().unwrap();
        for args in [
            vec!["ini2env", "--ini", b],
            vec!["ini2env", "--stdout", "--ini", b],
            vec!["ini2env", "--env", b],
            vec!["ini2env", "--check", "--env", b],
        ] {
            let (code, _, err) = run(&d, &args);
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(err.contains(word), "{args:?}: {err}");
            assert!(err.contains(b), "names the file: {args:?}: {err}");
        }
    }
}

#[test]
fn preflight_and_cert_watch_do_not_hang_on_a_fifo_env() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    mkfifo(&d.join(".env"));
    let (_, out, _) = run(&d, &["preflight", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let env = check(&v, "env-file");
    assert_eq!(env["status"], "fail", "{env}");
    assert!(message(env).contains("FIFO"), "{env}");
    let (code, _, err) = run(&d, &["cert-watch", "--once", "--no-verify"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("FIFO"), "{err}");
    // A FIFO as chatmail.ini with no .env: preflight reads it for MAIL_DOMAIN.
    fs::remove_file(d.join(".env")).unwrap();
    fs::remove_file(d.join("chatmail.ini")).unwrap();
    mkfifo(&d.join("chatmail.ini"));
    let (_, out, _) = run(&d, &["preflight", "--json"]);
    assert!(out.contains("\"checks\""), "{out}");
}

#[test]
fn cert_watch_refuses_a_fifo_as_certificate_and_names_a_symlink_loop() {
    let d = Deploy::new("");
    let dir = d.path("certs");
    fs::create_dir_all(&dir).unwrap();
    let p = pair();
    put(&dir.join("privkey.pem"), &p.key);
    mkfifo(&dir.join("fullchain.pem"));
    let out = d.once(&["--path", dir.to_str().unwrap()], "true");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("FIFO"), "{err}");

    // Explicit files (TLS_EXTERNAL_CERT_AND_KEY): a loop is not "missing".
    let cert = d.path("loop.pem");
    symlink(&cert, &cert).unwrap();
    fs::write(
        d.path(".env"),
        format!(
            "MAIL_DOMAIN=example.org\nTLS_EXTERNAL_CERT_AND_KEY='{} {}'\n",
            cert.display(),
            dir.join("privkey.pem").display()
        ),
    )
    .unwrap();
    let err = once_fails(&d, &[]);
    assert!(err.contains("symlink loop"), "{err}");
}

#[test]
fn a_custom_file_that_is_a_fifo_is_refused_not_read() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    let err = custom_refused(&d, "index.html", mkfifo);
    assert!(err.contains("index.html"), "{err}");
}

#[test]
fn a_symlinked_backup_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    fs::write(d.join(".env"), "OWN=1\n").unwrap();
    let victim = t.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    symlink(&victim, d.join(".env.bak")).unwrap();
    let (code, _, err) = run(&d, &["ini2env"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    let bak = fs::symlink_metadata(d.join(".env.bak")).unwrap();
    assert!(bak.is_file(), "the link itself was replaced");
    assert_eq!(bak.permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_to_string(d.join(".env.bak")).unwrap(), "OWN=1\n");
}

#[test]
fn the_output_is_never_the_input() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    let ini = fs::read(d.join("chatmail.ini")).unwrap();
    // The same file by name, through a symlink, and as a hard link.
    symlink(d.join("chatmail.ini"), d.join("ini-link")).unwrap();
    fs::hard_link(d.join("chatmail.ini"), d.join("ini-hard")).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    for env in [
        "chatmail.ini",
        "sub/../chatmail.ini",
        "ini-link",
        "ini-hard",
    ] {
        let env = d.join(env);
        let (code, _, err) = run(&d, &["ini2env", "--env", env.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("can never be the input"), "{err}");
        assert_eq!(fs::read(d.join("chatmail.ini")).unwrap(), ini);
    }
}

#[test]
fn temp_files_a_killed_run_left_are_removed_on_the_next_write() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    fs::write(d.join(".env"), "OWN=1\n").unwrap();
    // What a run killed between writing and renaming leaves: a full copy.
    let stale = d.join(".env.chatmail-docker.Ab12Cd.tmp");
    fs::write(&stale, "SECRET=hunter2\n").unwrap();
    // One a live writer holds locked stays; so do files that are not ours.
    let live = d.join(".env.chatmail-docker.LiVe00.tmp");
    fs::write(&live, "x").unwrap();
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let other = d.join(".env.other.tmp");
    fs::write(&other, "mine").unwrap();
    let (code, _, err) = run(&d, &["ini2env"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!stale.exists(), "the stale copy is gone");
    assert!(live.exists(), "a locked one is in use");
    assert!(other.exists());
    drop(held);
    let names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("chatmail-docker") && n != ".env.chatmail-docker.LiVe00.tmp")
        .collect();
    assert!(
        names.is_empty(),
        "no temp file of this run is left: {names:?}"
    );
}

#[test]
fn control_characters_in_values_and_names_are_escaped_on_the_terminal() {
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    fs::write(
        d.join(".env"),
        "MAIL_DOMAIN=\"chat\\nFAKE ok line\u{1b}[2J.example.org\"\n",
    )
    .unwrap();
    fs::set_permissions(d.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
    let (_, out, err) = run(&d, &["preflight"]);
    for text in [&out, &err] {
        assert!(!text.contains('\u{1b}'), "raw ESC: {text}");
        assert!(!text.contains("\nFAKE"), "forged line: {text}");
    }
    assert!(out.contains("\\u{1b}[2J"), "{out}");
    // A file name with an escape in an error message.
    let name = d.join("bad\u{1b}]0;title\u{7}.ini");
    mkfifo(&name);
    let (_, out, err) = run(&d, &["ini2env", "--ini", name.to_str().unwrap()]);
    assert!(!err.contains('\u{1b}') && !out.contains('\u{1b}'), "{err}");
    assert!(err.contains("\\u{1b}]0;title\\u{7}"), "{err}");
}

#[test]
fn a_symlink_loop_is_named_as_one_not_as_missing() {
    // In custom/.
    let t = tempfile::tempdir().unwrap();
    let d = deploy(t.path());
    let err = custom_refused(&d, "loop.html", |p| symlink("loop.html", p).unwrap());
    assert!(err.contains("symlink loop"), "{err}");
    assert!(!err.contains("does not exist"), "{err}");

    // As cert-watch's directory.
    let c = Deploy::new("");
    let dir = c.path("certs");
    symlink(&dir, &dir).unwrap();
    let err = once_fails(&c, &["--path", dir.to_str().unwrap()]);
    assert!(err.contains("symlink loop"), "{err}");
    assert!(!err.contains("does not exist"), "{err}");
}
