//! Round trip through the real `docker compose` (v2): every value we write
//! into `.env` must be what Compose hands the container, byte for byte —
//! both when the file is a service's `env_file:` and when it is the
//! project's `--env-file` used for `${VAR}` interpolation.
//!
//! `docker compose config` needs no daemon. Without Compose v2 the tests are
//! skipped with a reason, except under CI=true.

use crate::support::{have_compose_v2, require, xorshift};
use assert_cmd::Command as BinCommand;
use chatmail_docker::formats::{dotenv, ini};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `env_file: values.env` on the service.
    EnvFile,
    /// `--env-file values.env` and `environment: {K: ${K}}`.
    Interpolated,
}

/// The environment Compose gives the service when `values.env` holds
/// `env_text`. `keys` are the variables to ask for in interpolated mode.
fn compose_env(
    env_text: &str,
    keys: &[String],
    mode: Mode,
) -> Result<BTreeMap<String, String>, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("values.env"), env_text).unwrap();
    let mut yaml = String::from("services:\n  s:\n    image: scratch\n");
    match mode {
        Mode::EnvFile => yaml.push_str("    env_file: values.env\n"),
        Mode::Interpolated => {
            yaml.push_str("    environment:\n");
            for k in keys {
                yaml.push_str(&format!("      {k}: ${{{k}}}\n"));
            }
        }
    }
    std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
    let mut cmd = Command::new("docker");
    cmd.env_clear();
    for var in ["PATH", "HOME", "DOCKER_CONFIG", "DOCKER_HOST"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.arg("compose")
        .arg("--project-directory")
        .arg(dir.path())
        .arg("--project-name")
        .arg("roundtrip");
    if let Mode::Interpolated = mode {
        cmd.arg("--env-file").arg(dir.path().join("values.env"));
    }
    let out = cmd.args(["config", "--format", "json"]).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env = json["services"]["s"]["environment"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // `config` prints a literal `$` as `$$` so its output stays loadable.
    Ok(env
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or("").replace("$$", "$")))
        .collect())
}

fn tricky_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "plain",
        "example.org",
        "500M",
        "a b",
        "it's",
        "\"double\"",
        "'single'",
        "\"",
        "'",
        "'\"",
        "$",
        "$HOME",
        "${HOME}",
        "${X:-default}",
        "$$",
        "a$",
        "$1",
        "#",
        "a #b",
        "a#b",
        "# leading",
        "\\",
        "a\\",
        "\\a",
        "\\'",
        "\\\"",
        "a\\\\b",
        "\\n",
        "\\$HOME",
        "\\0123",
        " leading",
        "trailing ",
        "  both  ",
        "\t",
        "a\tb",
        "\ttab\t",
        "line\nbreak",
        "two\n\nblank",
        "\n",
        "ends\n",
        "cr\rlf\r\n",
        "ünïcödé ✓ 📬",
        "100%",
        "%(x)s",
        "%%",
        "a=b",
        "a: b",
        "export X=1",
        "{}",
        "${",
        "}",
        "`cmd`",
        "~/path",
        "*?[]",
        "a;b",
        "a&b|c",
        "\u{a0}nbsp\u{a0}",
        "\u{85}nel",
        "\u{2028}",
        "\u{3000}wide\u{3000}",
        "\x0b\x0c",
        "\x07bell",
        "\x1b[31mred",
        "quote at end\"",
        "it's \"mixed\" $X \\ # %",
        "privacy@example.org",
        "https://example.org/a?b=c&d=e#frag",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every printable ASCII character alone and between letters.
    for b in 0x20u8..0x7f {
        let c = b as char;
        v.push(c.to_string());
        v.push(format!("a{c}b"));
        v.push(format!("{c}{c}"));
    }
    v
}

fn round_trip(values: &[String]) {
    let mut text = String::new();
    let mut keys = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let k = format!("V{i}");
        text.push_str(&format!(
            "{k}={}  # chatmail.ini:00000000\n",
            dotenv::quote(v).unwrap()
        ));
        keys.push(k);
    }
    for mode in [Mode::EnvFile, Mode::Interpolated] {
        let got = compose_env(&text, &keys, mode)
            .unwrap_or_else(|e| panic!("{mode:?}: compose rejected:\n{e}\n{text}"));
        let mut bad = Vec::new();
        for (k, v) in keys.iter().zip(values) {
            if got.get(k) != Some(v) {
                bad.push(format!(
                    "{k}: wrote {v:?} as {:?}, compose read {:?}",
                    dotenv::quote(v).unwrap(),
                    got.get(k)
                ));
            }
        }
        assert!(bad.is_empty(), "{mode:?}:\n{}", bad.join("\n"));
    }
}

#[test]
fn every_corpus_value_reads_back_verbatim() {
    if !require(have_compose_v2(), "`docker compose` (v2)") {
        return;
    }
    round_trip(&tricky_values());
}

#[test]
fn random_values_read_back_verbatim() {
    if !require(have_compose_v2(), "`docker compose` (v2)") {
        return;
    }
    const ALPHABET: &[char] = &[
        'a', 'Z', '0', ' ', '\t', '\n', '\r', '\'', '"', '\\', '$', '{', '}', '#', '=', ':', '%',
        '`', 'é', '✓', '\u{a0}', '\u{85}', '\u{2028}', '\x0b', '\x01', '-', '_', '.', '/', '\x0c',
        '\x1b', '\x1f', '\x7f', '\u{feff}', '\u{2029}', '\u{3000}', '😀', '0', '8',
    ];
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let values: Vec<String> = (0..1000)
        .map(|_| {
            (0..next() % 12)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect()
        })
        .collect();
    round_trip(&values);
}

/// Hand-written `.env` lines: [`dotenv::load`] must read what Compose reads.
#[test]
fn load_reads_like_compose() {
    if !require(have_compose_v2(), "`docker compose` (v2)") {
        return;
    }
    let text = "# comment\n\nB=bee\nexport C = 'x y' # c\nD=\"a\\tb\\n\\$B $B\"\nE=${B:-x}${Y:-y}$B.z\n\
                F=a #b\nG=a#b\nH= # h\nI='multi\nline'\nJ=\"q\\\"q\"\nK=$$B\nL=${X:-a}}\nM: yaml\n\
                N=\"\\0123\\0\\01\"\nO=\"\\c\\q\\\\\"\nP=${B:+alt}${Q+set}\n  R=indented\t \nS=\u{a0}nb\n\
                T=\"\\08\\0477\\0\"\nU=$ $- $1 $\nV=${B:?set}${Q-unset}${B-x}\nW=\"end\\0134\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user.env");
    std::fs::write(&path, text).unwrap();
    let ours = dotenv::load(&std::fs::read(&path).unwrap(), &path).unwrap();
    let keys: Vec<String> = ours.keys().cloned().collect();
    let theirs = compose_env(text, &keys, Mode::EnvFile).unwrap();
    assert_eq!(ours, theirs);
}

/// Files Compose rejects, we reject too (and name the line).
#[test]
fn load_rejects_what_compose_rejects() {
    if !require(have_compose_v2(), "`docker compose` (v2)") {
        return;
    }
    for text in [
        "A B=1\n",
        "OK=1\nA\"=1\n",
        "A=\"open\n",
        "A='open\n",
        "A=${X:?needed}\n",
        "A=${\n",
        "A=${B\n",
        "A=${1}\n",
        "A=${B:=x}\n",
        "A=\"${B x}\"\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.env");
        std::fs::write(&path, text).unwrap();
        assert!(
            compose_env(text, &[], Mode::EnvFile).is_err(),
            "compose accepts {text:?}"
        );
        let err = dotenv::load(&std::fs::read(&path).unwrap(), &path).unwrap_err();
        assert!(format!("{err:#}").contains("user.env:"), "{err:#}");
    }
}

/// The whole command: a tricky chatmail.ini becomes a `.env` from which
/// Compose reproduces every [params] value exactly.
#[test]
fn ini2env_output_reproduces_the_ini_through_compose() {
    if !require(have_compose_v2(), "`docker compose` (v2)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ini2env/chatmail.ini");
    let ini_path = dir.path().join("chatmail.ini");
    std::fs::copy(&data, &ini_path).unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# mine\nDEBUG_COMMANDS_ENABLED=false\n",
    )
    .unwrap();
    BinCommand::cargo_bin("chatmail-docker")
        .unwrap()
        .args(["--dir"])
        .arg(dir.path())
        .args(["ini2env", "--all"])
        .assert()
        .success();
    let env_text = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    let ini_text = chatmail_docker::deployment::read_ini(&ini_path).unwrap();
    let params = ini::parse_file(&ini_text, &ini_path)
        .unwrap()
        .section("params")
        .unwrap()
        .clone();
    let keys: Vec<String> = params
        .entries
        .iter()
        .map(|e| e.key.to_uppercase())
        .collect();
    for mode in [Mode::EnvFile, Mode::Interpolated] {
        let got = compose_env(&env_text, &keys, mode).unwrap();
        for e in &params.entries {
            assert_eq!(
                got.get(&e.key.to_uppercase()).map(String::as_str),
                Some(e.value.as_ref()),
                "{mode:?} {}",
                e.key
            );
        }
        if let Mode::EnvFile = mode {
            assert_eq!(
                got.get("DEBUG_COMMANDS_ENABLED").map(String::as_str),
                Some("false")
            );
        }
    }
    assert!(
        params.get("privacy_postal").unwrap().contains('\n'),
        "the corpus has a multi-line value"
    );
}
