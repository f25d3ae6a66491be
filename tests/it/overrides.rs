//! `custom/` mounts, the generated override and `config`, checked with the
//! real binary and the real `docker compose config` (v2).

use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::support::{assert_ok, have_compose_v2, require};
use chatmail_docker::overrides::{self, OneShot, OverrideOptions};
use chatmail_docker::{host::Host, shell, Context};

/// The appliance's compose file, reduced to the parts these tests touch:
/// the one-shot variables default in the compose file and can be set per run
/// in the process environment.
const COMPOSE: &str = r#"services:
  chatmail:
    image: chatmail-relay:test
    env_file: .env
    environment:
      MAIL_DOMAIN: ${MAIL_DOMAIN}
      CMDEPLOY_STAGES: ${CMDEPLOY_STAGES:-configure,activate}
      RECREATE_VENV: ${RECREATE_VENV:-false}
      FORCE_REINIT_INI_FILE: ${FORCE_REINIT_INI_FILE:-false}
      DEBUG_COMMANDS_ENABLED: ${DEBUG_COMMANDS_ENABLED:-false}
    volumes:
      - ./data/chatmail:/home
      - ./data/chatmail-dkimkeys:/etc/dkimkeys
      - ./data/chatmail-acme:/var/lib/acme
"#;

const ONE_SHOT_VARS: [&str; 4] = [
    "CMDEPLOY_STAGES",
    "RECREATE_VENV",
    "FORCE_REINIT_INI_FILE",
    "DEBUG_COMMANDS_ENABLED",
];

/// Each `(path, reason)` of `expected` stands together on one line of
/// `err`; a failure names `what` first.
fn assert_each_on_a_line(err: &str, what: &str, expected: &[(&str, &str)]) {
    for (rel, needle) in expected {
        assert!(
            err.lines().any(|l| l.contains(rel) && l.contains(needle)),
            "{what}expected {rel:?} with {needle:?} in:\n{err}"
        );
    }
}

/// A temporary deployment directory.
struct Deploy {
    tmp: tempfile::TempDir,
}

impl Deploy {
    fn new() -> Deploy {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("docker")).unwrap();
        fs::create_dir_all(d.join("custom")).unwrap();
        fs::create_dir_all(d.join("data")).unwrap();
        fs::write(d.join("docker/docker-compose.yaml"), COMPOSE).unwrap();
        fs::write(d.join(".env"), "MAIL_DOMAIN=chat.example.org\n").unwrap();
        fs::write(d.join("custom/README.md"), "# custom/\n").unwrap();
        Deploy { tmp }
    }

    /// [`Deploy::new`] where `docker compose` (v2) runs; `None` (the test
    /// is skipped, see [`require`]) where it does not.
    fn with_compose() -> Option<Deploy> {
        require(have_compose_v2(), "`docker compose` (v2)").then(Deploy::new)
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn custom(&self) -> PathBuf {
        self.dir().join("custom")
    }

    fn generated(&self) -> PathBuf {
        self.dir().join("docker/compose.generated.yaml")
    }

    /// Create `custom/<rel>` with `content`.
    fn put(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.custom().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    /// Run the binary with `args`: it must succeed. Its stdout, parsed as
    /// JSON, and its stderr.
    fn json(&self, args: &[&str]) -> (Value, String) {
        let out = self.cmd().args(args).output().unwrap();
        assert_ok(&out);
        let v = serde_json::from_slice(&out.stdout).unwrap();
        (v, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Run the binary with `args`: it must exit 2. Its stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        err
    }

    /// The binary, pointed at this deployment, with no one-shot variable
    /// inherited from the test's environment.
    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("chatmail-docker").unwrap();
        c.arg("--dir").arg(self.dir()).arg("--color").arg("never");
        for v in ONE_SHOT_VARS {
            c.env_remove(v);
        }
        c.env_remove("CHATMAIL_DOCKER_ROOT");
        c
    }

    fn ctx(&self, root: &Path) -> Context {
        Context::new(
            self.dir(),
            Host::new(root),
            shell::Shell::new(shell::Verbosity::Quiet, shell::ColorChoice::Never),
            false,
        )
        .unwrap()
    }

    /// `chatmail-docker config --json`, parsed; `env` is set on the process.
    fn config_json(&self, env: &[(&str, String)]) -> Value {
        let mut c = self.cmd();
        c.args(["config", "--json"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "config --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Every file and directory in the deployment, with a hash of files.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        walkdir::WalkDir::new(self.dir())
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                let ft = e.file_type();
                let v = if ft.is_file() {
                    sha(&fs::read(e.path()).unwrap())
                } else if ft.is_symlink() {
                    format!("-> {}", fs::read_link(e.path()).unwrap().display())
                } else {
                    String::from("dir")
                };
                (e.path().to_path_buf(), v)
            })
            .collect()
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A bind volume as `docker compose config --json` shows it, with Compose's
/// `$$` output escaping undone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Vol {
    source: String,
    target: String,
    read_only: bool,
    kind: String,
}

fn volumes(config: &Value) -> Vec<Vol> {
    config["services"]["chatmail"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| Vol {
            source: v["source"].as_str().unwrap_or("").replace("$$", "$"),
            target: v["target"].as_str().unwrap_or("").replace("$$", "$"),
            read_only: v["read_only"].as_bool().unwrap_or(false),
            kind: v["type"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

fn service(config: &Value) -> Value {
    config["services"]["chatmail"].clone()
}

fn label(config: &Value) -> Option<String> {
    service(config)["labels"][overrides::HASH_LABEL]
        .as_str()
        .map(String::from)
}

/// Awkward names: every character Compose's short syntax or interpolation
/// would trip over, unicode, deep nesting, and 1,000 files.
fn awkward_tree(d: &Deploy) -> Vec<(String, String)> {
    let mut rels: Vec<String> = vec![
        "www/src/index.md".into(),
        "www/src/with space.md".into(),
        "www/src/colon:name:ro".into(),
        "www/src/dollar $HOME ${X} $$.txt".into(),
        "www/src/#hash # comment".into(),
        "www/src/quote ' and \" both".into(),
        "www/src/ünïcödé ✉ 邮件.md".into(),
        "www/src/-leading-dash".into(),
        "www/src/yes".into(),
        "www/src/~tilde".into(),
        "www/src/back\\slash".into(),
        "www/src/new\nline".into(),
        "www/src/ leading and trailing space ".into(),
        "_root_/etc/postfix/master.cf".into(),
        "_root_/etc/systemd/system/postfix.service.d/override.conf".into(),
    ];
    let deep: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    rels.push(format!("{}/deep file", deep.join("/")));
    for i in 0..1000 {
        rels.push(format!("many/{:02}/file {i:04}: $v#.txt", i % 37));
    }
    rels.iter()
        .map(|rel| {
            let p = d.put(rel, &format!("content of {rel}\n"));
            let target = match rel.strip_prefix("_root_/") {
                Some(r) => format!("/{r}"),
                None => format!("/opt/chatmail/{rel}"),
            };
            (p.to_str().unwrap().to_string(), target)
        })
        .collect()
}

#[test]
fn awkward_names_are_all_mounted_read_only_and_nothing_else_changes() {
    let Some(d) = Deploy::with_compose() else {
        return;
    };
    let before = d.config_json(&[]);
    let base_vols = volumes(&before);
    assert_eq!(
        base_vols.len(),
        3,
        "the appliance's own mounts: {base_vols:?}"
    );

    let files = awkward_tree(&d);
    assert_eq!(files.len(), 1016);
    let after = d.config_json(&[]);

    let mut expected: Vec<Vol> = files
        .iter()
        .map(|(source, target)| Vol {
            source: source.clone(),
            target: target.clone(),
            read_only: true,
            kind: "bind".into(),
        })
        .collect();
    expected.extend(base_vols.iter().cloned());
    expected.sort();
    let mut got = volumes(&after);
    got.sort();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }

    // Ours ask Compose not to create missing sources, which also makes it
    // use the engine's structured mounts (names with `:` survive).
    let raw = after["services"]["chatmail"]["volumes"].as_array().unwrap();
    let ours: Vec<&Value> = raw.iter().filter(|v| v["read_only"] == true).collect();
    assert_eq!(ours.len(), files.len());
    // (`config` leaves out the false value but keeps the `bind` object.)
    assert!(ours.iter().all(|v| v["bind"].is_object()
        && matches!(
            v["bind"].get("create_host_path"),
            None | Some(Value::Bool(false))
        )));

    // Apart from the mounts and the hash label, the service is unchanged.
    let (mut s0, mut s1) = (service(&before), service(&after));
    for s in [&mut s0, &mut s1] {
        let o = s.as_object_mut().unwrap();
        o.remove("volumes");
        o.remove("labels");
    }
    assert_eq!(s0, s1);
    assert_eq!(label(&before).map(|l| l.len()), Some(64));
    assert_ne!(label(&before), label(&after));

    // The generated file is the tool's: marked on its first line.
    let text = fs::read_to_string(d.generated()).unwrap();
    assert!(text.starts_with("# generated by chatmail-docker, do not edit"));
}

#[test]
fn same_tree_gives_byte_identical_output_and_no_rewrite() {
    let d = Deploy::new();
    awkward_tree(&d);
    let ctx = d.ctx(Path::new("/"));
    let a = overrides::generate(&ctx, &OverrideOptions::default()).unwrap();
    let b = overrides::generate(&ctx, &OverrideOptions::default()).unwrap();
    assert_eq!(a.yaml, b.yaml);
    assert!(overrides::write(&ctx, &a).unwrap());
    let first = fs::read(d.generated()).unwrap();
    assert!(
        !overrides::write(&ctx, &b).unwrap(),
        "unchanged content is not rewritten"
    );
    assert_eq!(fs::read(d.generated()).unwrap(), first);
    assert_eq!(a.skipped.len(), 1, "custom/README.md: {:?}", a.skipped);

    // The mounts are in target order.
    let targets: Vec<&String> = a.mounts.iter().map(|m| &m.target).collect();
    let mut sorted = targets.clone();
    sorted.sort();
    assert_eq!(targets, sorted);
}

#[test]
fn hash_follows_content_not_timestamps() {
    let d = Deploy::new();
    let f = d.put("www/src/index.md", "hello\n");
    let ctx = d.ctx(Path::new("/"));
    let h0 = overrides::generate(&ctx, &OverrideOptions::default())
        .unwrap()
        .hash;
    filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(1_000_000, 0)).unwrap();
    let h1 = overrides::generate(&ctx, &OverrideOptions::default())
        .unwrap()
        .hash;
    assert_eq!(h0, h1, "touching a file does not change the hash");
    fs::write(&f, "hellO\n").unwrap();
    let h2 = overrides::generate(&ctx, &OverrideOptions::default())
        .unwrap()
        .hash;
    assert_ne!(h1, h2, "an edit of the same size changes the hash");
}

#[test]
fn a_removed_custom_file_loses_its_mount_and_changes_the_hash() {
    let d = Deploy::new();
    let page = d.put("www/src/index.md", "# Our own page\n");
    d.put("www/src/other.md", "two\n");
    let ctx = d.ctx(Path::new("/"));
    let before = overrides::generate(&ctx, &OverrideOptions::default()).unwrap();
    assert!(overrides::write(&ctx, &before).unwrap());
    fs::remove_file(&page).unwrap();
    let after = overrides::generate(&ctx, &OverrideOptions::default()).unwrap();
    let targets: Vec<&str> = after.mounts.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(targets, ["/opt/chatmail/www/src/other.md"]);
    assert_ne!(before.hash, after.hash, "the next setup sees the change");
    assert!(overrides::write(&ctx, &after).unwrap());
    let written = fs::read_to_string(d.generated()).unwrap();
    assert!(!written.contains("index.md"), "{written}");
    assert!(written.contains("other.md"), "{written}");
}

#[test]
fn changed_since_start_lists_replaced_files() {
    let d = Deploy::new();
    let f = d.put("www/src/index.md", "one\n");
    d.put("www/src/other.md", "two\n");
    d.put("www/static/.mount-dir", "");
    d.put("www/static/logo.svg", "<svg/>");
    let ctx = d.ctx(Path::new("/"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let started = std::time::SystemTime::now();
    let generated = || overrides::generate(&ctx, &Default::default()).unwrap();
    assert!(overrides::changed_since_start(&generated(), started).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Replace the file the way editors do: write a new one, rename it over.
    let tmp = f.with_extension("tmp");
    fs::write(&tmp, "ONE\n").unwrap();
    fs::rename(&tmp, &f).unwrap();
    // Inside a directory mount the container sees edits at once: not listed.
    d.put("www/static/logo.svg", "<svg></svg>");
    assert_eq!(
        overrides::changed_since_start(&generated(), started),
        vec![PathBuf::from("custom/www/src/index.md")]
    );
}

#[test]
fn symlinks_inside_are_mounted_resolved_and_escapes_are_refused() {
    let d = Deploy::new();
    let real = d.put("shared/footer.html", "footer");
    symlink("shared/footer.html", d.custom().join("www_footer.html")).unwrap();
    let ctx = d.ctx(Path::new("/"));
    let g = overrides::generate(&ctx, &OverrideOptions::default()).unwrap();
    let m = g
        .mounts
        .iter()
        .find(|m| m.target == "/opt/chatmail/www_footer.html")
        .expect("symlink inside custom/ is mounted");
    assert_eq!(m.source, fs::canonicalize(&real).unwrap());

    // Now an escape: nothing may be written, the error names the file.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), "x").unwrap();
    fs::create_dir_all(d.custom().join("www")).unwrap();
    symlink(outside.path().join("secret"), d.custom().join("www/evil")).unwrap();
    symlink("/etc/passwd", d.custom().join("passwd")).unwrap();
    let snap = d.snapshot();
    let err = d.refused(&["config", "--override-only"]);
    assert!(err.contains("custom/www/evil: is a symlink to"), "{err}");
    assert!(
        err.contains("custom/passwd: is a symlink to /etc/passwd, which is outside custom/"),
        "{err}"
    );
    assert!(err.contains("2 problems"), "{err}");
    d.refused(&["config"]);
    assert_eq!(d.snapshot(), snap, "nothing written");
    assert!(!d.generated().exists());
}

#[test]
fn shadowing_targets_are_refused_with_every_problem_named() {
    let d = Deploy::new();
    let bad = [
        "_root_/home/vmail/x@chat.example.org/cur/mail",
        "_root_/etc/dkimkeys/opendkim.private",
        "_root_/var/lib/acme/live/chat.example.org/fullchain",
        "_root_/lib/systemd/system/postfix.service",
        "_root_/usr/lib/systemd/systemd",
        "_root_/etc/systemd/system.conf",
        "_root_/sbin/init",
        "_root_/usr/bin/systemctl",
        "_root_/run/systemd/notify",
        "_root_/var/lib/.mount-dir",
        "_root_/etc/.mount-dir",
        "_root_/.mount-dir",
        ".mount-dir",
    ];
    for rel in bad {
        d.put(rel, "x");
    }
    // Allowed next to them: a systemd drop-in and an ordinary config file.
    d.put(
        "_root_/etc/systemd/system/postfix.service.d/override.conf",
        "[Service]\n",
    );
    d.put("www/src/index.md", "hi");
    // An earlier good override stays as it was.
    fs::write(
        d.generated(),
        format!("{}\nservices: {{}}\n", overrides::HEADER),
    )
    .unwrap();
    let snap = d.snapshot();
    let err = d.refused(&["config"]);
    let expected = [
        ("_root_/home/vmail", "it would shadow /home"),
        (
            "_root_/etc/dkimkeys/opendkim.private",
            "it would shadow /etc/dkimkeys",
        ),
        ("_root_/var/lib/acme/live", "it would shadow /var/lib/acme"),
        (
            "_root_/lib/systemd/system/postfix.service",
            "it would shadow /lib/systemd",
        ),
        (
            "_root_/usr/lib/systemd/systemd",
            "it would shadow /usr/lib/systemd",
        ),
        (
            "_root_/etc/systemd/system.conf",
            "it would shadow /etc/systemd",
        ),
        ("_root_/sbin/init", "it would shadow /sbin/init"),
        (
            "_root_/usr/bin/systemctl",
            "it would shadow /usr/bin/systemctl",
        ),
        ("_root_/run/systemd/notify", "it would shadow /run"),
        ("_root_/var/lib:", "it would hide /var/lib/acme"),
        ("_root_/etc:", "it would hide /etc/dkimkeys"),
        ("_root_:", "whole filesystem"),
        (
            "custom/.mount-dir:",
            "custom/ itself cannot be mounted whole",
        ),
    ];
    assert_each_on_a_line(&err, "", &expected);
    assert!(!err.contains("postfix.service.d"), "{err}");
    assert!(!err.contains("index.md"), "{err}");
    assert_eq!(d.snapshot(), snap, "nothing written");
}

/// Every target the appliance's compose file mounts is refused before
/// anything is written, naming the custom/ path and the mount: its tmpfs
/// and data mounts, and a mount and tmpfs added to it. (A mount of the
/// administrator's override at a custom target wins instead: see
/// `user_override_is_untouched_and_wins`.)
#[test]
fn targets_the_compose_files_mount_are_refused() {
    let d = Deploy::new();
    let appliance = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/docker-compose.yaml");
    let mut compose = fs::read_to_string(appliance).unwrap();
    // A mount and a tmpfs the hand-kept lists never heard of.
    compose = compose.replace(
        "    tmpfs:\n",
        "    tmpfs:\n      - /var/cache/relay:size=16m\n",
    );
    compose = compose.replace(
        "    volumes:\n",
        "    volumes:\n      - ./data/extra:/srv/extra\n",
    );
    fs::write(d.dir().join("docker/docker-compose.yaml"), compose).unwrap();
    for rel in [
        "_root_/tmp/.mount-dir",
        "_root_/tmp/notes.txt",
        "_root_/var/cache/relay/x",
        "_root_/srv/extra/file",
        "_root_/var/lib/chatmail-docker/tls/mailserver.pem",
    ] {
        d.put(rel, "x");
    }
    d.put("www/src/index.md", "hi");
    let snap = d.snapshot();
    let bin = tempfile::tempdir().unwrap();
    let path = crate::support::path_with_no_containers(bin.path());
    for args in [
        &["config", "--override-only"][..],
        &["config"],
        &["up", "--dry-run"],
    ] {
        let out = d.cmd().env("PATH", &path).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let expected = [
            (
                "custom/_root_/tmp:",
                "it would shadow /tmp (the tmpfs in docker/docker-compose.yaml)",
            ),
            (
                "custom/_root_/var/cache/relay/x:",
                "it would shadow /var/cache/relay (the tmpfs in docker/docker-compose.yaml)",
            ),
            (
                "custom/_root_/srv/extra/file:",
                "it would shadow /srv/extra (the bind mount of ./data/extra in docker/docker-compose.yaml)",
            ),
            (
                "custom/_root_/var/lib/chatmail-docker/tls/mailserver.pem:",
                "it would shadow /var/lib/chatmail-docker (the bind mount of ./data/chatmail-state",
            ),
        ];
        assert_each_on_a_line(&err, &format!("{args:?}: "), &expected);
        assert!(!err.contains("index.md"), "{err}");
        assert_eq!(d.snapshot(), snap, "{args:?}: nothing written");
    }
}

#[test]
fn fifos_and_sockets_are_refused() {
    let d = Deploy::new();
    d.put("www/src/index.md", "hi");
    let fifo = d.custom().join("www/src/pipe");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let _sock = std::os::unix::net::UnixListener::bind(d.custom().join("sock")).unwrap();
    symlink("www/src/pipe", d.custom().join("pipe-link")).unwrap();
    let snap = d.snapshot();
    let err = d.refused(&["config"]);
    assert!(
        err.contains("custom/www/src/pipe: is a fifo (named pipe)"),
        "{err}"
    );
    assert!(err.contains("custom/sock: is a socket"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("custom/pipe-link: is a symlink to") && l.contains("a fifo")),
        "{err}"
    );
    assert_eq!(d.snapshot(), snap, "nothing written");
}

#[test]
fn same_target_twice_is_refused() {
    let d = Deploy::new();
    d.put("www/src/index.md", "a");
    d.put("_root_/opt/chatmail/www/src/index.md", "b");
    let err = d.refused(&["config", "--override-only"]);
    assert!(
        err.contains("would both be mounted at /opt/chatmail/www/src/index.md"),
        "{err}"
    );
}

#[test]
fn non_utf8_names_are_refused_by_name() {
    use std::os::unix::ffi::OsStrExt;
    let d = Deploy::new();
    let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
    fs::write(d.custom().join(name), "x").unwrap();
    let err = d.refused(&["config", "--override-only"]);
    assert!(
        err.contains("custom/bad") && err.contains("not valid UTF-8"),
        "{err}"
    );
}

#[test]
fn editor_droppings_are_skipped_and_named_with_verbose() {
    let d = Deploy::new();
    d.put("www/src/index.md", "hi");
    for junk in [
        "www/src/index.md~",
        "www/src/.index.md.swp",
        ".DS_Store",
        "www/#index.md#",
    ] {
        d.put(junk, "junk");
    }
    let out = d
        .cmd()
        .args(["-v", "config", "--override-only"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(yaml.matches("type: bind").count(), 1, "{yaml}");
    for junk in [
        "index.md~",
        ".index.md.swp",
        ".DS_Store",
        "#index.md#",
        "custom/README.md",
    ] {
        assert!(
            err.contains("not mounting custom/") && err.contains(junk),
            "{junk}: {err}"
        );
    }
    assert!(!d.generated().exists(), "--override-only writes nothing");
}

#[test]
fn directory_marker_mounts_the_directory_whole() {
    let Some(d) = Deploy::with_compose() else {
        return;
    };
    d.put("www/src/.mount-dir", "");
    d.put("www/src/index.md", "hi");
    d.put("www/src/sub/page.md", "page");
    d.put("www/other.md", "other");
    let cfg = d.config_json(&[]);
    let vols = volumes(&cfg);
    let custom = d.custom();
    let src_dir = custom.join("www/src").to_str().unwrap().to_string();
    assert!(vols.contains(&Vol {
        source: src_dir,
        target: "/opt/chatmail/www/src".into(),
        read_only: true,
        kind: "bind".into()
    }));
    assert!(
        !vols.iter().any(|v| v.target.ends_with("index.md")),
        "{vols:?}"
    );
    assert!(vols
        .iter()
        .any(|v| v.target == "/opt/chatmail/www/other.md"));
    // An edit inside the mounted directory changes the hash too.
    let h0 = label(&cfg);
    d.put("www/src/sub/page.md", "Page");
    assert_ne!(label(&d.config_json(&[])), h0);
}

#[test]
fn user_override_is_untouched_and_wins() {
    let Some(d) = Deploy::with_compose() else {
        return;
    };
    d.put("www/src/index.md", "ours");
    let user = d.dir().join("docker-compose.override.yaml");
    let user_text = "# my own settings\nservices:\n  chatmail:\n    environment:\n      CMDEPLOY_STAGES: configure\n    labels:\n      org.chatmail-docker.custom-hash: mine\n    volumes:\n      - type: bind\n        source: /srv/landing/index.md\n        target: /opt/chatmail/www/src/index.md\n        read_only: true\n";
    fs::write(&user, user_text).unwrap();
    let before = sha(&fs::read(&user).unwrap());
    let cfg = d.config_json(&[]);
    assert_eq!(
        sha(&fs::read(&user).unwrap()),
        before,
        "user override untouched"
    );
    assert!(d.generated().exists());
    let s = service(&cfg);
    assert_eq!(s["environment"]["CMDEPLOY_STAGES"], "configure");
    assert_eq!(label(&cfg).as_deref(), Some("mine"));
    let index: Vec<Vol> = volumes(&cfg)
        .into_iter()
        .filter(|v| v.target == "/opt/chatmail/www/src/index.md")
        .collect();
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0].source, "/srv/landing/index.md");
    // A second run leaves it alone too.
    d.config_json(&[]);
    assert_eq!(sha(&fs::read(&user).unwrap()), before);
}

#[test]
fn reinstall_applies_to_one_run_only() {
    let Some(d) = Deploy::with_compose() else {
        return;
    };
    let stages = |cfg: &Value| service(cfg)["environment"]["CMDEPLOY_STAGES"].clone();
    let reinstall = OneShot::from_flags(true, None, true, false, false).unwrap();
    let env: Vec<(&str, String)> = reinstall.env();
    let cfg = d.config_json(&env);
    assert_eq!(stages(&cfg), "install,configure,activate");
    assert_eq!(service(&cfg)["environment"]["RECREATE_VENV"], "true");
    // Nothing was persisted: the next run is back to the defaults.
    let env_file = fs::read_to_string(d.dir().join(".env")).unwrap();
    assert!(!env_file.contains("CMDEPLOY_STAGES"), "{env_file}");
    let generated = fs::read_to_string(d.generated()).unwrap();
    assert!(!generated.contains("CMDEPLOY_STAGES"), "{generated}");
    let cfg = d.config_json(&[]);
    assert_eq!(stages(&cfg), "configure,activate");
    assert_eq!(service(&cfg)["environment"]["RECREATE_VENV"], "false");

    let some = OneShot::from_flags(
        false,
        Some(overrides::parse_stages("install,activate").unwrap()),
        false,
        true,
        true,
    )
    .unwrap();
    let cfg = d.config_json(&some.env());
    assert_eq!(stages(&cfg), "install,activate");
    assert_eq!(
        service(&cfg)["environment"]["FORCE_REINIT_INI_FILE"],
        "true"
    );
    assert_eq!(
        service(&cfg)["environment"]["DEBUG_COMMANDS_ENABLED"],
        "true"
    );
}

#[test]
fn dry_run_shows_the_result_and_writes_nothing() {
    let Some(d) = Deploy::with_compose() else {
        return;
    };
    d.put("www/src/index.md", "hi");
    let snap = d.snapshot();
    let (cfg, err) = d.json(&["--dry-run", "config", "--json"]);
    assert!(volumes(&cfg)
        .iter()
        .any(|v| v.target == "/opt/chatmail/www/src/index.md"));
    assert!(
        err.contains("Would write docker/compose.generated.yaml"),
        "{err}"
    );
    assert_eq!(d.snapshot(), snap, "dry run touched the deployment");
}

#[test]
fn mount_vmail_marker_mounts_home_vmail_read_write() {
    let d = Deploy::new();
    let root = tempfile::tempdir().unwrap();
    fs::write(d.dir().join("data/.mount-vmail"), "").unwrap();
    // Without the host directory: a clear error, nothing written.
    let err = d.refused(&["--root", root.path().to_str().unwrap(), "config"]);
    assert!(
        err.contains("data/.mount-vmail") && err.contains("/home/vmail"),
        "{err}"
    );
    assert!(!d.generated().exists());

    fs::create_dir_all(root.path().join("home/vmail")).unwrap();
    let g = overrides::generate(&d.ctx(root.path()), &OverrideOptions::default()).unwrap();
    assert!(g.vmail);
    let m = g.mounts.iter().find(|m| m.target == "/home/vmail").unwrap();
    assert_eq!(m.source, root.path().join("home/vmail"));
    assert!(!m.read_only);
    if !require(have_compose_v2(), "`docker compose` (v2)") {
        return;
    }
    let (cfg, _) = d.json(&["--root", root.path().to_str().unwrap(), "config", "--json"]);
    assert!(volumes(&cfg).contains(&Vol {
        source: root.path().join("home/vmail").to_str().unwrap().into(),
        target: "/home/vmail".into(),
        read_only: false,
        kind: "bind".into(),
    }));
}

#[test]
fn a_foreign_generated_file_is_not_replaced() {
    let d = Deploy::new();
    d.put("www/src/index.md", "hi");
    fs::write(d.generated(), "services: {}\n").unwrap();
    let err = d.refused(&["config"]);
    assert!(
        err.contains("was not generated by chatmail-docker"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(d.generated()).unwrap(), "services: {}\n");
}

#[test]
fn missing_compose_file_is_a_clear_error() {
    let d = Deploy::new();
    fs::remove_file(d.dir().join("docker/docker-compose.yaml")).unwrap();
    let err = d.refused(&["config"]);
    assert!(
        err.contains("docker/docker-compose.yaml not found"),
        "{err}"
    );
}

#[test]
fn stages_are_validated_with_clear_errors() {
    let err = overrides::parse_stages("configure,install").unwrap_err();
    assert!(
        err.to_string()
            .contains("install must come before configure"),
        "{err}"
    );
    assert_eq!(chatmail_docker::error::exit_code(&err), 2);
}

#[test]
fn override_only_json_is_the_generated_override() {
    let d = Deploy::new();
    d.put("www/src/index.md", "hi");
    let (v, _) = d.json(&["config", "--override-only", "--json"]);
    let vols = v["services"]["chatmail"]["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0]["target"], "/opt/chatmail/www/src/index.md");
    assert_eq!(vols[0]["read_only"], true);
    assert_eq!(vols[0]["bind"]["create_host_path"], false);
    assert!(label(&v).is_some());
    assert!(!d.generated().exists(), "--override-only writes nothing");
}

#[test]
fn tls_external_cert_and_key_are_mounted_where_the_host_has_them() {
    // certbot's layout: live/<domain>/*.pem are links into archive/<domain>/.
    let d = Deploy::new();
    let root = tempfile::tempdir().unwrap();
    let le = "/etc/letsencrypt";
    let host = |p: &str| root.path().join(p.trim_start_matches('/'));
    // The override for TLS_EXTERNAL_CERT_AND_KEY='<cert> <key>'.
    let generate_for = |cert_and_key: &str| {
        fs::write(
            d.dir().join(".env"),
            format!("MAIL_DOMAIN=chat.example.org\nTLS_EXTERNAL_CERT_AND_KEY='{cert_and_key}'\n"),
        )
        .unwrap();
        overrides::generate(&d.ctx(root.path()), &OverrideOptions::default())
    };
    let refusal = |cert_and_key: &str| generate_for(cert_and_key).unwrap_err().to_string();
    fs::create_dir_all(host(&format!("{le}/archive/chat.example.org"))).unwrap();
    fs::create_dir_all(host(&format!("{le}/live/chat.example.org"))).unwrap();
    for (name, n) in [("fullchain", 3), ("privkey", 3)] {
        fs::write(
            host(&format!("{le}/archive/chat.example.org/{name}{n}.pem")),
            "pem",
        )
        .unwrap();
        symlink(
            format!("../../archive/chat.example.org/{name}{n}.pem"),
            host(&format!("{le}/live/chat.example.org/{name}.pem")),
        )
        .unwrap();
    }
    let g = generate_for(&format!(
        "{le}/live/chat.example.org/fullchain.pem {le}/live/chat.example.org/privkey.pem"
    ))
    .unwrap();
    let tls: Vec<(&str, &Path, bool)> = g
        .mounts
        .iter()
        .map(|m| (m.target.as_str(), m.source.as_path(), m.read_only))
        .collect();
    let live = host(&format!("{le}/live/chat.example.org"));
    let archive = host(&format!("{le}/archive/chat.example.org"));
    assert_eq!(
        tls,
        vec![
            (
                "/etc/letsencrypt/archive/chat.example.org",
                archive.as_path(),
                true
            ),
            (
                "/etc/letsencrypt/live/chat.example.org",
                live.as_path(),
                true
            ),
        ],
        "the files' directory and the one their links lead to, read-only, at the same paths"
    );

    // Files in the container's own trust store cannot be mounted over it.
    fs::create_dir_all(host("/etc/ssl/certs")).unwrap();
    fs::write(host("/etc/ssl/certs/relay.pem"), "pem").unwrap();
    fs::write(host("/etc/ssl/certs/relay.key"), "pem").unwrap();
    let err = refusal("/etc/ssl/certs/relay.pem /etc/ssl/certs/relay.key");
    assert!(
        err.contains("/etc/ssl/certs") && err.contains("trust store"),
        "{err}"
    );

    // A file that is not there yet: the relay would fail to start.
    let err = refusal("/srv/tls/cert.pem /srv/tls/key.pem");
    assert!(
        err.contains("/srv/tls/cert.pem") && err.contains("does not exist"),
        "{err}"
    );
}
