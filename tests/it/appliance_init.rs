//! The appliance's in-container init script (`docker/files/chatmail-init`)
//! on odd input, run with the host's python3 and no Docker engine: the
//! script's paths are pointed into a temp dir by a small harness that loads
//! it as a module.
//!
//! Needs `python3`; without it the tests are skipped with a reason, except
//! under CI.

use crate::support::{have, ini_params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/files/chatmail-init")
}

/// `chatmail-init render-ini` with exactly `vars` as its environment.
fn render_ini(vars: &[(&str, &str)]) -> String {
    let out = Command::new("python3")
        .arg(script())
        .arg("render-ini")
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render-ini failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `chatmail-init prepare` with `env` as the container's environment
/// and every path it touches under `dir`; returns (exit code, output).
fn prepare(dir: &Path, env: &[(&str, &str)]) -> (i32, String) {
    in_init(
        dir,
        env,
        r#"sys.exit(ci.main(["chatmail-init", "prepare"]))"#,
    )
}

/// Runs python `body` with the init loaded as `ci`, every path it touches
/// under `dir` (as `d`) and `env` as the container's environment.
fn in_init(dir: &Path, env: &[(&str, &str)], body: &str) -> (i32, String) {
    let harness = r#"
import importlib.machinery, importlib.util, json, os, pathlib, sys
loader = importlib.machinery.SourceFileLoader("chatmail_init", sys.argv[1])
spec = importlib.util.spec_from_loader("chatmail_init", loader)
ci = importlib.util.module_from_spec(spec)
loader.exec_module(ci)
d = pathlib.Path(sys.argv[2])
ci.INI = d / "etc/chatmail/chatmail.ini"
ci.FAILED = d / "run/chatmail-init.failed"
ci.DONE = d / "run/chatmail-init.done"
ci.DKIM_DIR = d / "etc/dkimkeys"
ci.VMAIL_HOME = d / "home/vmail"
ci.STATE = d / "var/lib/chatmail-docker"
ci.TLS_DIR = ci.STATE / "tls"
ci.RESOLV_SAVED = ci.STATE / "resolv.conf"
ci.RESOLV_DEPLOYED = d / "etc/chatmail/resolv.conf"
ci.STAGE_ENV = ci.STATE / "stage-env.json"
ci.INI_SOURCE = d / "etc/chatmail/.ini-source"
ci.RESOLV = d / "etc/resolv.conf"
ci.HOSTS = d / "etc/hosts"
ci.hostname = lambda: "relay-host"
ci.SPOOL = d / "var/spool/postfix"
ci.SPOOL_DIRS = d / "postfix-spool-dirs"
(d / "run").mkdir(exist_ok=True)
env = json.loads(sys.argv[3])
ci.container_env = lambda: env
# No opendkim-genkey: generating the DKIM key fails like a broken tool.
os.environ["PATH"] = str(d / "no-such-bin")
"#
    .to_string()
        + body;
    let env_json = serde_json::to_string(
        &env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(&harness)
        .arg(script())
        .arg(dir)
        .arg(env_json)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn hand_set_values_with_other_line_breaks_keep_the_ini_readable() {
    if !have("python3", &["--version"]) {
        return;
    }
    // Only chatmail-docker's own .env lines are known to hold `\n` alone;
    // a value set by hand may hold any line break Python splits at.
    let text = render_ini(&[
        ("MAIL_DOMAIN", "chat.example.org"),
        ("PRIVACY_MAIL", "a\rb\u{2028}c\x0cd"),
        ("ACME_EMAIL", ""),
    ]);
    let ini = chatmail_docker::formats::ini::parse_str(&text)
        .unwrap_or_else(|e| panic!("the written ini does not parse ({e}):\n{text}"));
    let params = ini.section("params").unwrap();
    assert_eq!(params.get("privacy_mail"), Some("a\nb\nc\nd"), "{text}");
    assert_eq!(params.get("acme_email"), Some(""), "{text}");
    assert_eq!(params.get("mail_domain"), Some("chat.example.org"));
}

#[test]
fn a_mail_domain_that_is_a_path_is_refused_before_touching_anything() {
    if !have("python3", &["--version"]) {
        return;
    }
    for bad in ["/etc", "../../etc", "..", "chat example.org"] {
        let d = tempfile::tempdir().unwrap();
        let (code, out) = prepare(d.path(), &[("MAIL_DOMAIN", bad)]);
        assert_eq!(code, 1, "{bad}: {out}");
        let failed = std::fs::read_to_string(d.path().join("run/chatmail-init.failed")).unwrap();
        assert!(
            failed.contains("is not a domain name") && failed.contains("MAIL_DOMAIN"),
            "{bad}: {failed}"
        );
        assert!(
            !d.path().join("etc").exists() && !d.path().join("home").exists(),
            "{bad}: nothing may be written"
        );
    }
}

#[test]
fn an_unexpected_failure_is_recorded_for_the_health_check() {
    if !have("python3", &["--version"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (code, out) = prepare(d.path(), &[("MAIL_DOMAIN", "chat.example.org")]);
    assert_eq!(code, 1, "{out}");
    // The ini was written (atomically: no temporary file left behind)
    // before the DKIM key generation failed.
    let ini = d.path().join("etc/chatmail/chatmail.ini");
    let text = std::fs::read_to_string(&ini).unwrap();
    assert!(text.contains("mail_domain = chat.example.org"), "{text}");
    assert!(!d.path().join("etc/chatmail/.chatmail.ini.tmp").exists());
    let failed = std::fs::read_to_string(d.path().join("run/chatmail-init.failed")).unwrap();
    assert!(
        failed.starts_with("prepare failed: FileNotFoundError")
            && failed.contains("opendkim-genkey"),
        "{failed}"
    );
    assert!(
        out.contains("Traceback"),
        "the traceback goes to the log: {out}"
    );
}

fn ini_text(d: &Path) -> String {
    std::fs::read_to_string(d.join("etc/chatmail/chatmail.ini")).unwrap()
}

#[test]
fn the_ini_follows_the_settings_of_each_new_container() {
    if !have("python3", &["--version"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let base = [
        ("MAIL_DOMAIN", "chat.example.org"),
        ("CHATMAIL_HOST_IPV6", "true"),
    ];
    prepare(
        d.path(),
        &[base[0], base[1], ("MAX_USER_SEND_PER_MINUTE", "60")],
    );
    assert!(ini_text(d.path()).contains("max_user_send_per_minute = 60"));
    // A container from an image made after a deploy has that ini; other
    // settings rewrite it.
    let (_, out) = prepare(
        d.path(),
        &[base[0], base[1], ("MAX_USER_SEND_PER_MINUTE", "7")],
    );
    let text = ini_text(d.path());
    assert!(text.contains("max_user_send_per_minute = 7"), "{text}");
    assert!(out.contains("(the settings changed)"), "{out}");
    // The same settings keep it, edits by hand included.
    std::fs::write(
        d.path().join("etc/chatmail/chatmail.ini"),
        format!("{text}# by hand\n"),
    )
    .unwrap();
    prepare(
        d.path(),
        &[base[0], base[1], ("MAX_USER_SEND_PER_MINUTE", "7")],
    );
    assert!(ini_text(d.path()).ends_with("# by hand\n"));
    // An ini from before the source was recorded is kept, as it always was.
    std::fs::remove_file(d.path().join("etc/chatmail/.ini-source")).unwrap();
    prepare(
        d.path(),
        &[base[0], base[1], ("MAX_USER_SEND_PER_MINUTE", "9")],
    );
    assert!(ini_text(d.path()).contains("max_user_send_per_minute = 7"));
}

#[test]
fn an_upgrade_side_container_takes_its_settings_from_the_stage_file() {
    if !have("python3", &["--version"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("var/lib/chatmail-docker");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("stage-env.json"),
        r#"{"MAIL_DOMAIN": "chat.example.org", "MAX_USER_SEND_PER_MINUTE": "42", "CHATMAIL_HOST_IPV6": "false", "UNSET": null}"#,
    )
    .unwrap();
    // The container's own environment has none of them.
    prepare(d.path(), &[]);
    let text = ini_text(d.path());
    assert!(text.contains("mail_domain = chat.example.org"), "{text}");
    assert!(text.contains("max_user_send_per_minute = 42"), "{text}");
    assert!(
        text.contains("disable_ipv6 = True"),
        "the host has no IPv6, as told: {text}"
    );
}

#[test]
fn the_fingerprint_covers_mounted_files_but_not_state() {
    if !have("python3", &["--version"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let custom = d.path().join("custom");
    std::fs::create_dir_all(custom.join("www")).unwrap();
    std::fs::write(custom.join("www/index.md"), "one").unwrap();
    std::fs::write(custom.join("extra.cf"), "x = 1").unwrap();
    let mail = d.path().join("home");
    std::fs::create_dir_all(&mail).unwrap();
    std::fs::write(mail.join("message"), "mail").unwrap();
    let info = format!(
        "1 0 0:1 / / rw - overlay overlay rw\n\
         2 1 8:1 /a {www} ro - ext4 /dev/sda1 rw\n\
         3 1 8:1 /b {extra} ro - ext4 /dev/sda1 rw\n\
         4 1 8:1 /c /home rw - ext4 /dev/sda1 rw\n\
         5 1 0:5 / /proc rw - proc proc rw\n\
         6 1 8:1 /d /etc/resolv.conf rw - ext4 /dev/sda1 rw\n",
        www = custom.join("www").display(),
        extra = custom.join("extra.cf").display(),
    );
    std::fs::write(d.path().join("mountinfo"), &info).unwrap();
    let digest = |d: &Path| {
        let (code, out) = in_init(
            d,
            &[],
            // The test's files are below /tmp, which the init leaves out.
            "ci.SYSTEM_TREES = ('/proc', '/sys')\nprint(ci.mounted_files_digest((d / 'mountinfo').read_text()))",
        );
        assert_eq!(code, 0, "{out}");
        out.trim().to_string()
    };
    let first = digest(d.path());
    assert_eq!(first.len(), 16, "{first}");
    // Mail and Docker's own mounts do not count ...
    std::fs::write(mail.join("message"), "more mail").unwrap();
    assert_eq!(digest(d.path()), first);
    // ... a mounted file's content does, in a directory too.
    std::fs::write(custom.join("www/index.md"), "two").unwrap();
    let second = digest(d.path());
    assert_ne!(second, first);
    std::fs::write(custom.join("extra.cf"), "x = 2").unwrap();
    assert_ne!(digest(d.path()), second);
}

// ---------------------------------------------------------------------------
// The in-container init's half of the round trip, without the engine:
// environment -> chatmail.ini, parsed back with iniconfig's rules.

/// A value as iniconfig can hold it: lines without surrounding whitespace,
/// continuation lines neither empty nor starting a comment.
fn ini_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    // No control characters or line/paragraph separators anywhere (Python
    // splits lines at some of them), no whitespace at either end.
    let first = "[^\\s\\p{Cc}\\p{Z}]([^\\p{Cc}\\p{Zl}\\p{Zp}]{0,30}[^\\s\\p{Cc}\\p{Z}])?";
    let cont = "[^\\s#;\\p{Cc}\\p{Z}]([^\\p{Cc}\\p{Zl}\\p{Zp}]{0,30}[^\\s\\p{Cc}\\p{Z}])?";
    prop_oneof![
        Just(String::new()),
        (first, proptest::collection::vec(cont, 0..4)).prop_map(|(f, rest)| {
            std::iter::once(f)
                .chain(rest)
                .collect::<Vec<_>>()
                .join("\n")
        }),
    ]
}

#[test]
fn init_writes_env_params_back_exactly() {
    use proptest::prelude::*;
    if !have("python3", &["--version"]) {
        return;
    }
    let keys = [
        "privacy_postal",
        "privacy_mail",
        "max_message_size",
        "disable_ipv6",
        "acme_email",
        "tls_external_cert_and_key",
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec(proptest::option::of(ini_value()), keys.len());
    runner
        .run(&strategy, |values| {
            let mut vars = vec![("MAIL_DOMAIN".to_string(), "chat.example.org".to_string())];
            let mut want =
                BTreeMap::from([("mail_domain".to_string(), "chat.example.org".to_string())]);
            for (k, v) in keys.iter().zip(values) {
                if let Some(v) = v {
                    vars.push((k.to_uppercase(), v.clone()));
                    want.insert(k.to_string(), v);
                }
            }
            // Variables that are not [params] keys stay out of the ini.
            vars.push(("PATH".into(), "/usr/bin:/bin".into()));
            vars.push(("CMDEPLOY_STAGES".into(), "configure,activate".into()));
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let text = render_ini(&vars);
            prop_assert_eq!(ini_params(&text), want, "rendered:\n{}", text);
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_container_s_host_name_is_named_in_etc_hosts_once() {
    if !have("python3", &["--version"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("etc")).unwrap();
    let hosts = d.join("etc/hosts");
    // As Docker writes it for the host's network: the host's copy, which
    // does not name the host (no line break at the end either).
    std::fs::write(
        &hosts,
        "127.0.0.1\tlocalhost\n# relay-host\n::1\tlocalhost ip6-localhost",
    )
    .unwrap();
    let run = || in_init(d, &[], "ci.name_this_host()");
    let (code, out) = run();
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&hosts).unwrap();
    assert_eq!(
        text,
        "127.0.0.1\tlocalhost\n# relay-host\n::1\tlocalhost ip6-localhost\n127.0.1.1\trelay-host\n"
    );
    // Named already: left as it is.
    let (code, out) = run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), text);
    std::fs::write(&hosts, "10.0.0.5 relay-host.example.org relay-host\n").unwrap();
    let (code, out) = run();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "10.0.0.5 relay-host.example.org relay-host\n"
    );
}
