//! chatmail.ini parsing, differentially tested against Python's iniconfig
//! (the library the relay reads its ini with), plus fuzzing for panics.
//!
//! Needs `python3` with `iniconfig` (`pip install iniconfig`). Without them
//! the differential tests are skipped with a reason, except under CI=true.

use crate::support::{feed, require, runs, xorshift};
use chatmail_docker::formats::ini;
use proptest::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// iniconfig's verdict on each file, in order.
fn oracle(paths: &[PathBuf]) -> Vec<Value> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ini2env/iniconfig_oracle.py");
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let out = feed(Command::new("python3").arg(script), list.as_bytes());
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Our verdict in the oracle's shape.
fn ours(bytes: &[u8]) -> Value {
    match ini::parse_bytes(bytes) {
        Ok(parsed) => serde_json::json!({
            "ok": parsed.sections.iter().map(|s| serde_json::json!([
                s.name,
                s.entries.iter().map(|e| serde_json::json!([e.key, e.value])).collect::<Vec<_>>()
            ])).collect::<Vec<_>>()
        }),
        Err(e) if e.message.starts_with("not valid UTF-8") => {
            let offset: usize = e.message["not valid UTF-8 at byte offset ".len()..]
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            serde_json::json!({ "offset": offset })
        }
        Err(e) => serde_json::json!({ "line": e.line }),
    }
}

fn compare(cases: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let p = dir.path().join(format!("case{i}.ini"));
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect();
    let expected = oracle(&paths);
    assert_eq!(expected.len(), cases.len());
    let mut failures = Vec::new();
    for (case, want) in cases.iter().zip(&expected) {
        let got = ours(case);
        if &got != want {
            failures.push(format!(
                "input {:?}\n  iniconfig: {want}\n  ours:      {got}",
                String::from_utf8_lossy(case)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Hand-written corner cases.
fn corpus() -> Vec<Vec<u8>> {
    let text: &[&str] = &[
        "",
        "[params]\n",
        "[params]\nmail_domain = example.org\n",
        "[params]\nkey=value\nkey2 =value\nkey3= value\n  \nkey4   =   spaced   out   \n",
        "[params]\na: b\nc : d = e\nf = g : h\ni:j=k\nurl = http://x:80/a=b\n",
        "[params]\nk =\n  line one\n  line two\n\tline three\n",
        "[params]\nk = first\n  # comment inside\n\n  second\n; other\n   third\n",
        "[params]\nk =\n\n  only\n",
        "[params]\na = 1\na = 2\n",
        "[params]\n[params]\n",
        "[a]\nx = 1\n[b]\nx = 2\n[a]\n",
        "orphan = 1\n[params]\n",
        "  indented before anything\n",
        "[params]\n  continuation of nothing\n",
        "[params]\nno separator here\n",
        "[]\n",
        "[params] # comment\nk = v # not a comment\nl = v ; nor this\n",
        "[params ; c]\n",
        "[a#b]\nk = v\n",
        "[params]\nk = v\n[a#b]\n",
        "[params]\nk = v\n[unterminated\n",
        "[ params ]\nk = v\n",
        "[params]]\nk = v\n",
        "[params]\n  [indented]\n",
        "[params]\nk = v\n  [indented]\n",
        "[params]\nempty =\nalso:\n= no key\n:also no key\n",
        "[params]\nCase = 1\ncase = 2\nCASE = 3\n",
        "[params]\nünï = cödé ✓\nemoji = 📬 mail\n",
        "[params]\r\nk = v\r\n  more\r\n",
        "[params]\rk = v\r  more\r",
        "\u{feff}[params]\nk = v\n",
        "\u{feff}\u{feff}[params]\n",
        "[params]\nk = a\x0bb = c\n",
        "[params]\nk = a\x0cb\n",
        "[params]\nk = a\x1cb\x1dc\x1ed\x1fe\n",
        "[params]\nk = \x1fpad\x1f\n",
        "[params]\nk = a\u{85}b\n",
        "[params]\nk = a\u{2028}b\u{2029}c\n",
        "[params]\nk = \u{a0}nbsp\u{a0}\n\u{a0}cont\n",
        "[params]\nk = v\n\u{3000}ideographic continuation\n",
        "[params]\n\x1fk = v\n",
        "[params]\nk\t=\tv\t\n",
        "[params]\nk = $HOME ${X} %(y)s \"q\" 'q' \\ \\n #\n",
        "[params]\nk = v\n#\n;\n   #x\n",
        "# only a comment",
        "[params]\nk = v",
        "[params]\nk = line\n    with = sign\n    and: colon\n",
        "[params]\nk = v\n\t\n\t# tab comment\n\tx\n",
        "[params]\nk\n",
        "[p]\n=\n",
        "[p]\n:\n",
        "[p]\n[\n",
        "[p]\nk = v\n[\n",
        "[p]]]\n",
        "[p]x\n",
    ];
    let mut cases: Vec<Vec<u8>> = text.iter().map(|t| t.as_bytes().to_vec()).collect();
    cases.push(b"[params]\nk = \xff\xfe\n".to_vec());
    cases.push(b"[params]\nk = caf\xc3\n".to_vec());
    cases.push(b"\xef\xbb[params]\n".to_vec());
    let data = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "tests/data/ini2env/chatmail.ini",
        "src/chatmail-ini-defaults.ini",
    ] {
        cases.push(std::fs::read(data.join(f)).unwrap());
    }
    cases
}

/// [`require`] for the reference parser.
fn have_iniconfig() -> bool {
    require(
        runs("python3", &["-c", "import iniconfig"]),
        "python3 with iniconfig (pip install iniconfig)",
    )
}

#[test]
fn corpus_matches_iniconfig() {
    if !have_iniconfig() {
        return;
    }
    compare(&corpus());
}

/// Random inputs built from the characters that matter to the grammar,
/// compared in one batch (a seeded generator, so failures reproduce).
#[test]
fn generated_inputs_match_iniconfig() {
    if !have_iniconfig() {
        return;
    }
    const PIECES: &[&str] = &[
        "[params]", "[x]", "[", "]", "k", "v", "K", "=", ":", " ", "  ", "\t", "\n", "\n", "\n",
        "\r\n", "\r", "#", ";", "é", "\u{a0}", "\x1f", "\x0c", "\u{2028}", "\u{feff}", "$", "\"",
        "'", "\\", "%",
    ];
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let cases: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let mut s = String::new();
            if next().is_multiple_of(2) {
                s.push_str("[params]\n");
            }
            for _ in 0..(next() % 40) {
                s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            s.into_bytes()
        })
        .collect();
    compare(&cases);
}

proptest! {
    #[test]
    fn ini_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ini::parse_bytes(&bytes);
    }

    #[test]
    fn ini_parser_never_panics_on_text(s in "(\\[|\\]|=|:|#|;|[ \t\r\n]|\u{feff}|\u{2028}|[a-zé])*") {
        let _ = ini::parse_str(&s);
    }

    #[test]
    fn dotenv_parser_never_panics(s in "(['\"\\\\$#={}:\\- \t\r\n]|export|[a-zA-Z0-9_]|é|\u{85}|\u{a0})*") {
        let _ = chatmail_docker::formats::dotenv::parse(&s);
    }

    #[test]
    fn quoted_values_read_back(v in "\\PC*|[\\x01-\\x7f]*") {
        if let Ok(q) = chatmail_docker::formats::dotenv::quote(&v) {
            let st = chatmail_docker::formats::dotenv::parse(&format!("K={q}\n")).unwrap();
            prop_assert_eq!(&st[0].value, &v);
        } else {
            prop_assert!(v.contains('\0'));
        }
    }
}

fn merge_vars(ini: &str) -> Vec<chatmail_docker::ini2env::Var<'_>> {
    chatmail_docker::ini2env::vars(
        ini::parse_str(ini).unwrap(),
        Path::new("chatmail.ini"),
        false,
    )
    .unwrap()
}

fn merge_ini(values: &[String]) -> String {
    // Two keys at the relay's default: hand-set lines for them are removed
    // under --force.
    let mut ini = String::from(
        "[params]\nmail_domain = x.org\nmax_mailbox_size = 500M\nmax_message_size = 31457280\n",
    );
    for (i, v) in values.iter().enumerate() {
        ini.push_str(&format!("k{i} = {v}\n"));
    }
    ini
}

proptest! {
    /// Whatever the user's .env holds, merging never panics; with --force
    /// it always succeeds, reads back as the ini says and is stable.
    #[test]
    fn merge_is_total_and_idempotent(
        lines in proptest::collection::vec(prop_oneof![
            Just("A=1".to_string()),
            Just("# comment".to_string()),
            Just(String::new()),
            Just("MAIL_DOMAIN=other.org".to_string()),
            Just("K0='hand set'".to_string()),
            Just("export K1=\"a\\nb\"  # mine".to_string()),
            Just("K2=zz  # chatmail.ini:deadbeef".to_string()),
            Just("B='x' K3=y".to_string()),
            Just("K0='a' USER=me".to_string()),
            Just("MAX_MAILBOX_SIZE='1G' MAX_MESSAGE_SIZE=5 K4=z".to_string()),
            Just("MAIL_DOMAIN=\"x.org\"USER2=me".to_string()),
            "[A-Z]{1,3}=[a-z $#'\"]{0,6}",
        ], 0..8),
        values in proptest::collection::vec("[a-z0-9 '\"$#\\\\]{0,8}", 0..5),
        crlf in any::<bool>(),
    ) {
        let mut old = lines.join(if crlf { "\r\n" } else { "\n" });
        if !old.is_empty() && crlf {
            old.push_str("\r\n");
        }
        let ini = merge_ini(&values);
        let vars = merge_vars(&ini);
        let _ = chatmail_docker::ini2env::merge(&old, ".env", &vars, false);
        if chatmail_docker::formats::dotenv::parse(&old).is_ok() {
            let m = chatmail_docker::ini2env::merge(&old, ".env", &vars, true).unwrap();
            // Variables that are not the ini's stay.
            let keys = |text: &str| -> std::collections::BTreeSet<String> {
                chatmail_docker::formats::dotenv::parse(text)
                    .unwrap()
                    .into_iter()
                    .map(|s| s.key)
                    .filter(|k| !k.starts_with('K') && !k.starts_with("MA"))
                    .collect()
            };
            prop_assert_eq!(keys(&m.text), keys(&old), "{}", m.text);
            let again = chatmail_docker::ini2env::merge(&m.text, ".env", &vars, false).unwrap();
            prop_assert_eq!(&again.text, &m.text);
            prop_assert!(again.actions.is_empty(), "{:?}", again.actions);
        }
    }
}
