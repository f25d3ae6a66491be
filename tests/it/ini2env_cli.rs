//! `chatmail-docker ini2env` as a user runs it: real files in a temp
//! deployment directory, the real binary.

use assert_cmd::Command;
use predicates::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const INI: &str = "[params]\nmail_domain = chat.example.org\nmax_mailbox_size = 2G\n\
                   max_message_size = 31457280\nprivacy_mail = it's \"me\" $HOME\nprivacy_postal =\n  \
                   Street 1\n  City\n\n[other]\nx = 1\n";

fn cmd(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("chatmail-docker").unwrap();
    c.env_remove("CHATMAIL_DOCKER_DIR")
        .env("NO_COLOR", "1")
        .arg("--dir")
        .arg(dir);
    c
}

fn setup(ini: &str, env: Option<&str>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("chatmail.ini"), ini).unwrap();
    if let Some(e) = env {
        fs::write(d.path().join(".env"), e).unwrap();
        fs::set_permissions(d.path().join(".env"), fs::Permissions::from_mode(0o644)).unwrap();
    }
    d
}

fn read(d: &Path, name: &str) -> String {
    fs::read_to_string(d.join(name)).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file's name, bytes and mode: to show a command changed nothing.
fn snapshot(d: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (fs::read(&p).unwrap(), mode(&p)),
            )
        })
        .collect()
}

#[test]
fn creates_env_with_only_non_default_values_mode_0600() {
    let d = setup(INI, None);
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .success()
        .stdout(predicate::str::contains("add MAX_MAILBOX_SIZE"))
        .stdout(predicate::str::contains("it's").not())
        .stderr(predicate::str::contains("[other] (line 10) ignored"))
        .stderr(predicate::str::contains("previous version").not());
    let env = read(d.path(), ".env");
    assert!(
        env.contains("MAIL_DOMAIN=chat.example.org  # chatmail.ini:"),
        "{env}"
    );
    assert!(
        env.contains("MAX_MAILBOX_SIZE=2G  # chatmail.ini:"),
        "{env}"
    );
    assert!(
        env.contains("PRIVACY_POSTAL=\"Street 1\\nCity\"  # chatmail.ini:"),
        "{env}"
    );
    assert!(
        env.contains("PRIVACY_MAIL=\"it's \\\"me\\\" \\$HOME\"  # chatmail.ini:"),
        "{env}"
    );
    assert!(
        !env.contains("MAX_MESSAGE_SIZE"),
        "default values are left out: {env}"
    );
    assert!(!env.contains("X="), "only [params]: {env}");
    assert_eq!(mode(&d.path().join(".env")), 0o600);
    assert!(!d.path().join(".env.bak").exists(), "nothing to back up");

    cmd(d.path()).args(["ini2env", "--all"]).assert().success();
    assert!(read(d.path(), ".env").contains("MAX_MESSAGE_SIZE=31457280  # chatmail.ini:"));
}

#[test]
fn merge_keeps_user_lines_and_rerun_is_byte_identical() {
    let user = "# my settings\nDEBUG_COMMANDS_ENABLED=true # on for now\n\n\
                export CMDEPLOY_STAGES=\"configure,activate\"\nMAIL_DOMAIN=chat.example.org\n# end\n";
    let d = setup(INI, Some(user));
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .success()
        .stdout(predicate::str::contains("adopt MAIL_DOMAIN"))
        .stderr(predicate::str::contains("(previous version in "));
    let first = read(d.path(), ".env");
    assert!(
        first.starts_with(
            "# my settings\nDEBUG_COMMANDS_ENABLED=true # on for now\n\n\
             export CMDEPLOY_STAGES=\"configure,activate\"\nMAIL_DOMAIN=chat.example.org  # chatmail.ini:"
        ),
        "{first}"
    );
    assert!(first.contains("\n# end\n"), "{first}");
    assert_eq!(read(d.path(), ".env.bak"), user);
    assert_eq!(mode(&d.path().join(".env")), 0o600);
    assert_eq!(mode(&d.path().join(".env.bak")), 0o600);

    let before = snapshot(d.path());
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .success()
        .stderr(predicate::str::contains("matches chatmail.ini"));
    assert_eq!(snapshot(d.path()), before, "a rerun changes nothing");

    // The ini changes: managed lines follow in place; a key back at its
    // default disappears; user lines stay.
    let ini2 = INI
        .replace("max_mailbox_size = 2G", "max_mailbox_size = 500M")
        .replace("chat.example.org", "relay.example.net");
    fs::write(d.path().join("chatmail.ini"), ini2).unwrap();
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .success()
        .stdout(predicate::str::contains("update MAIL_DOMAIN"))
        .stdout(predicate::str::contains("remove MAX_MAILBOX_SIZE"));
    let second = read(d.path(), ".env");
    assert!(
        second.contains("\nMAIL_DOMAIN=relay.example.net  # chatmail.ini:"),
        "{second}"
    );
    assert!(!second.contains("MAX_MAILBOX_SIZE"), "{second}");
    assert!(second.starts_with("# my settings\nDEBUG_COMMANDS_ENABLED=true # on for now\n"));
    assert_eq!(read(d.path(), ".env.bak"), first);
}

#[test]
fn hand_set_conflict_is_reported_and_force_lets_the_ini_win() {
    let user = "MAX_MAILBOX_SIZE=5G\n";
    let d = setup(INI, Some(user));
    let before = snapshot(d.path());
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("MAX_MAILBOX_SIZE"))
        .stderr(predicate::str::contains("--force"))
        .stderr(predicate::str::contains("5G").not());
    assert_eq!(snapshot(d.path()), before, "nothing written on a conflict");

    cmd(d.path())
        .args(["ini2env", "--force"])
        .assert()
        .success()
        .stdout(predicate::str::contains("replaces a value set by hand"));
    assert!(read(d.path(), ".env").starts_with("MAX_MAILBOX_SIZE=2G  # chatmail.ini:"));

    // Editing a generated line by hand is a conflict too.
    let edited = read(d.path(), ".env").replace("MAX_MAILBOX_SIZE=2G", "MAX_MAILBOX_SIZE=3G");
    fs::write(d.path().join(".env"), edited).unwrap();
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("edited by hand"));
}

#[test]
fn check_shows_a_redacted_diff_and_changes_nothing() {
    let d = setup(INI, Some("TOKEN=s3cret\n"));
    let before = snapshot(d.path());
    cmd(d.path())
        .args(["ini2env", "--check"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("+MAX_MAILBOX_SIZE=…"))
        .stdout(predicate::str::contains("2G").not())
        .stdout(predicate::str::contains("s3cret").not())
        .stderr(predicate::str::contains("out of date"));
    assert_eq!(snapshot(d.path()), before);
    cmd(d.path())
        .args(["ini2env", "--check", "--show-values"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("+MAX_MAILBOX_SIZE=2G"));

    cmd(d.path()).arg("ini2env").assert().success();
    cmd(d.path())
        .args(["ini2env", "--check"])
        .assert()
        .success()
        .stdout("");
}

#[test]
fn keys_leaving_the_ini_are_removed_and_modes_are_fixed() {
    let d = setup(INI, None);
    cmd(d.path()).arg("ini2env").assert().success();
    let ini2 = INI.replace("privacy_mail = it's \"me\" $HOME\n", "");
    fs::write(d.path().join("chatmail.ini"), ini2).unwrap();
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "remove PRIVACY_MAIL (no longer in chatmail.ini)",
        ));
    assert!(!read(d.path(), ".env").contains("PRIVACY_MAIL"));

    // Up to date but readable by others: only the mode changes.
    let env = d.path().join(".env");
    let text = read(d.path(), ".env");
    fs::set_permissions(&env, fs::Permissions::from_mode(0o644)).unwrap();
    cmd(d.path()).args(["ini2env", "--check"]).assert().code(1);
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .success()
        .stdout(predicate::str::contains("set the mode"));
    assert_eq!(mode(&env), 0o600);
    assert_eq!(read(d.path(), ".env"), text);
}

#[test]
fn check_without_env_file_is_out_of_date() {
    let d = setup(INI, None);
    cmd(d.path())
        .args(["ini2env", "--check"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("+MAIL_DOMAIN=…"));
    assert!(!d.path().join(".env").exists());
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let d = setup(INI, Some("A=1\n"));
    let before = snapshot(d.path());
    cmd(d.path())
        .args(["--dry-run", "ini2env"])
        .assert()
        .success()
        .stdout(predicate::str::contains("add MAIL_DOMAIN"))
        .stderr(predicate::str::contains("not changed"));
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn stdout_prints_variables_and_touches_nothing() {
    let d = setup(INI, None);
    let before = snapshot(d.path());
    cmd(d.path())
        .args(["ini2env", "--stdout"])
        .assert()
        .success()
        .stdout(
            "MAIL_DOMAIN=chat.example.org\nMAX_MAILBOX_SIZE=2G\n\
             PRIVACY_MAIL=\"it's \\\"me\\\" \\$HOME\"\nPRIVACY_POSTAL=\"Street 1\\nCity\"\n",
        );
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn explicit_paths() {
    let d = setup(INI, None);
    let ini = d.path().join("chatmail.ini");
    let env = d.path().join("custom.env");
    Command::cargo_bin("chatmail-docker")
        .unwrap()
        .arg("ini2env")
        .arg("--ini")
        .arg(&ini)
        .arg("--env")
        .arg(&env)
        .assert()
        .success();
    assert!(read(d.path(), "custom.env").contains("MAIL_DOMAIN=chat.example.org"));
    assert!(!d.path().join(".env").exists());
}

#[test]
fn bad_input_is_a_clear_error() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"[params]\nmail_domain = a\nmail_domain = b\n",
            "chatmail.ini:3: duplicate key `mail_domain` in [params] (first at line 2)",
        ),
        (
            b"mail_domain = a\n",
            "chatmail.ini:1: key `mail_domain` comes before any section",
        ),
        (
            b"[params]\nmail_domain = a\nmax-size = 1\n",
            "chatmail.ini:3: key `max-size` cannot become an environment variable",
        ),
        (
            b"[params]\nmail_domain = caf\xe9\n",
            "not valid UTF-8 at byte offset 26",
        ),
        (
            b"[params]\nmail_domain = a\x00b\n",
            "the value of mail_domain holds a NUL",
        ),
        (
            b"[params]\nmax_mailbox_size = 1G\n",
            "[params] has no mail_domain",
        ),
        (
            b"[params]\n  stray\n",
            "chatmail.ini:2: indented line continues no value",
        ),
    ];
    for (ini, message) in cases {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("chatmail.ini"), ini).unwrap();
        cmd(d.path())
            .arg("ini2env")
            .assert()
            .code(2)
            .stderr(predicate::str::contains(*message));
        assert!(!d.path().join(".env").exists());
    }
    let d = tempfile::tempdir().unwrap();
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no chatmail.ini at"));

    // A .env Compose would reject is not rewritten.
    let d = setup(INI, Some("OK=1\nBAD KEY=1\n"));
    cmd(d.path())
        .arg("ini2env")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(".env:2:"));
    assert_eq!(read(d.path(), ".env"), "OK=1\nBAD KEY=1\n");
}

#[test]
fn sync_env_is_the_library_entry_point() {
    use chatmail_docker::{
        host::Host,
        ini2env,
        shell::{Shell, Verbosity},
        Context,
    };
    let d = setup(INI, None);
    let shell = Shell::new(Verbosity::Quiet, chatmail_docker::shell::ColorChoice::Never);
    let dry = Context::new(d.path(), Host::new("/"), shell.clone(), true).unwrap();
    let ini = d.path().join("chatmail.ini");
    let env = d.path().join(".env");
    let r = ini2env::sync_env(&dry, &ini, &env, &ini2env::Options::default()).unwrap();
    assert!(r.changed && !env.exists());
    assert!(
        r.lines
            .iter()
            .any(|l| l == "add MAX_MAILBOX_SIZE (chatmail.ini line 3)"),
        "{:?}",
        r.lines
    );
    let real = Context::new(d.path(), Host::new("/"), shell, false).unwrap();
    assert!(
        ini2env::sync_env(&real, &ini, &env, &ini2env::Options::default())
            .unwrap()
            .changed
    );
    assert!(
        !ini2env::sync_env(&real, &ini, &env, &ini2env::Options::default())
            .unwrap()
            .changed
    );
}
