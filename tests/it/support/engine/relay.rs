//! The real relay for the end-to-end suites: the snapshot in
//! `../shared/relay/` unpacked as a git checkout with the offline patch,
//! a deployment directory around it, the tool with the suite's image,
//! and the mail client checks (tests/relay-offline/mailcheck.py).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use super::*;

pub const DOMAIN: &str = "_chat.example.org";
/// The image this suite builds, apart from a user's `chatmail-relay:local`
/// and the stand-in suite's image.
pub const IMAGE: &str = "chatmail-relay:e2e-real";
/// CA certificates the host trusts: on machines whose way to PyPI is a
/// proxy that re-signs TLS, the image build needs them (`--build-ca`).
pub const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the real filtermail binary lies inside the relay checkout when it
/// reaches the relay through the relay's hook (`CHATMAIL_FILTERMAIL_BINARY`,
/// a path inside the checkout for the appliance's build).
pub const FILTERMAIL_IN_RELAY: &str = "offline-build/filtermail";

/// How the real filtermail reaches the relay (no suite has a stand-in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtermail {
    /// Built by `tests/filtermail/build.sh` in the appliance's filtermail
    /// stage (cached by the tarball's hash) and given to the relay's install stage through its
    /// hook, `CHATMAIL_FILTERMAIL_BINARY`.
    Hook,
    /// Its source in `relay/filtermail/`, as upstream moves it into the
    /// relay repository: the image builds it in a build stage.
    Source,
}

/// `shared/` beside the checkout (`CHATMAIL_SHARED_DIR` names another).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("CHATMAIL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../shared"))
}

/// The one file in `shared/relay/` whose name starts with `prefix`.
pub fn shared_file(prefix: &str) -> PathBuf {
    let shared = shared_dir().join("relay");
    fs::read_dir(&shared)
        .unwrap_or_else(|e| panic!("{}: {e} (the relay snapshot)", shared.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {prefix}*.tar.gz in {}", shared.display()))
}

/// The real filtermail, built from its source tarball with cargo once per
/// tarball content (tests/filtermail/build.sh).
pub fn filtermail_binary() -> PathBuf {
    let started = std::time::Instant::now();
    let script = manifest_dir().join("tests/filtermail/build.sh");
    let out = StdCommand::new(&script)
        .arg(shared_file("filtermail-"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let path = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    assert!(path.is_file(), "no filtermail at {}", path.display());
    eprintln!(
        "e2e: filtermail binary ready in {:.1?}: {}",
        started.elapsed(),
        path.display()
    );
    path
}

/// The relay snapshot, unpacked as `relay/` the way `git clone` leaves it
/// (a git checkout), with the offline patch applied and the real
/// filtermail (its binary, or its source), committed.
pub fn unpack_relay(dir: &Path) -> String {
    unpack_relay_with(dir, Filtermail::Hook)
}

pub fn unpack_relay_with(dir: &Path, filtermail: Filtermail) -> String {
    let tarball = shared_file("chatmail-relay-");
    check(
        StdCommand::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir),
        "unpack the relay snapshot",
    );
    let relay = dir.join("relay");
    check(
        StdCommand::new("python3")
            .arg(manifest_dir().join("tests/relay-offline/apply.py"))
            .arg(&relay),
        "replace the relay's downloads",
    );
    match filtermail {
        Filtermail::Hook => {
            let dest = relay.join(FILTERMAIL_IN_RELAY);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(filtermail_binary(), &dest).unwrap();
        }
        Filtermail::Source => check(
            StdCommand::new("tar")
                .arg("-xzf")
                .arg(shared_file("filtermail-"))
                .arg("-C")
                .arg(&relay),
            "unpack filtermail's source into relay/filtermail",
        ),
    }
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.org",
            "commit",
            "-q",
            "-m",
            "relay snapshot, offline downloads",
        ],
    ] {
        check(
            StdCommand::new("git").args(args).current_dir(&relay),
            "make relay/ a git checkout",
        );
    }
    let out = StdCommand::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&relay)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A deployment directory as a user has it after cloning this repository
/// and the relay: the appliance files, relay/, chatmail.ini.
pub fn deployment(parent: &Path) -> (PathBuf, String) {
    deployment_with(parent, Filtermail::Hook)
}

pub fn deployment_with(parent: &Path, filtermail: Filtermail) -> (PathBuf, String) {
    let dir = parent.join("deploy");
    fs::create_dir_all(&dir).unwrap();
    copy_tree(&manifest_dir().join("docker"), &dir.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    let commit = unpack_relay_with(&dir, filtermail);
    fs::write(dir.join("chatmail.ini"), ini("")).unwrap();
    (dir, commit)
}

/// The suite's chatmail.ini. `max_load_1m`: the relay refuses new accounts
/// above this load, and a test machine building images is busy.
pub fn ini(extra: &str) -> String {
    format!("[params]\nmail_domain = {DOMAIN}\nmax_load_1m = 100\n{extra}")
}

pub fn tool(dir: &Path) -> assert_cmd::Command {
    let mut cmd = tool_with_image(dir, IMAGE);
    cmd.env("CHATMAIL_BUILD_CA", HOST_CA);
    for (k, v) in filtermail_env(dir) {
        cmd.env(k, v);
    }
    cmd
}

/// The build variable that hands the relay checkout's filtermail binary to
/// the relay's hook, when the checkout has one (Filtermail::Hook).
pub fn filtermail_env(dir: &Path) -> Vec<(&'static str, &'static str)> {
    if dir.join("relay").join(FILTERMAIL_IN_RELAY).is_file() {
        vec![("CHATMAIL_FILTERMAIL_BINARY", FILTERMAIL_IN_RELAY)]
    } else {
        vec![]
    }
}

/// `setup --rebuild` on the suite's base image.
pub fn rebuild(dir: &Path, base: &str, what: &str) {
    run_tool(
        tool(dir).env("CHATMAIL_BASE_IMAGE", base).args([
            "setup",
            "--rebuild",
            "--skip-check",
            "cgroup-v2",
        ]),
        0,
        what,
    );
}

pub fn mailcheck(args: &[&str]) -> serde_json::Value {
    let out = StdCommand::new("python3")
        .arg(manifest_dir().join("tests/relay-offline/mailcheck.py"))
        .arg("127.0.0.1")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mailcheck {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("mailcheck output ({e}): {stdout}"))
}

pub fn inbox_has(v: &serde_json::Value, ids: &[String]) {
    let inbox: Vec<&str> = v["inbox"]
        .as_array()
        .unwrap_or_else(|| panic!("no inbox in {v}"))
        .iter()
        .filter_map(|i| i.as_str())
        .collect();
    for id in ids {
        assert!(inbox.contains(&id.as_str()), "{id} not in B's INBOX: {v}");
    }
}

/// What the relay's filtermail must do with what mailcheck.py sent: the
/// encrypted message arrived whole (B decrypts it), plain text to another
/// address and a forged From are refused on submission, encrypted mail on
/// 25 from a domain that did not sign it (DKIM) is refused.
pub fn filtermail_enforces(v: &serde_json::Value) {
    assert_eq!(
        v["decrypted_587"].as_str(),
        Some("hello from an end-to-end test"),
        "B decrypts the encrypted message: {v}"
    );
    let refused = |what: &str, code: &str, text: &str| {
        let reply = v["refused"][what].as_str().unwrap_or_default();
        assert!(
            reply.starts_with(code) && reply.contains(text),
            "{what}: the relay must refuse with {code} {text}, answered {:?}",
            v["refused"][what]
        );
    };
    refused("plain_587", "523", "Encryption Needed");
    refused("forged_from_587", "500", "Invalid FROM");
    refused("unsigned_25", "554", "No DKIM signature found");
}

/// Commit what `change` does in the relay's origin and tag it `tag`: a
/// release; its commit.
pub fn release(origin: &Path, tag: &str, change: impl FnOnce(&Path)) -> String {
    change(origin);
    git(origin, &["add", "-A"]);
    git(origin, &["commit", "-q", "-m", &format!("release {tag}")]);
    git(origin, &["tag", tag]);
    git(origin, &["rev-parse", "HEAD"])
}

/// The test release 1.13.0 of the relay, one tree for the suites that
/// upgrade to it (the upgrade and the fault suites): one image build, in
/// Docker's cache for both.
pub const RELEASE_1_13: &str = "1.13.0";
/// The line release 1.13.0 adds to the relay's web page.
pub const RELEASE_1_13_TEXT: &str = "This relay runs the test release 1.13.0.";

/// What release 1.13.0 changes in the relay checkout `origin`: a line on
/// the web page and a sandboxed unit ([`PROBE`]).
pub fn release_1_13(origin: &Path) {
    let page = origin.join("www/src/index.md");
    let mut text = fs::read_to_string(&page).unwrap();
    text.push_str(&format!("\n{RELEASE_1_13_TEXT}\n"));
    fs::write(&page, text).unwrap();
    add_sandboxed_unit(origin);
}

/// The unit release 1.13.0 adds: a small service with systemd's
/// sandboxing, as upstream's next releases have (DynamicUser= and
/// friends), deployed by the relay's own code like its other units. It
/// writes down what its sandbox looks like from inside.
pub const PROBE: &str = "chatmail-sandbox-probe";
pub const PROBE_UNIT: &str = "[Unit]
Description=Sandboxed probe of test release 1.13.0

[Service]
DynamicUser=yes
StateDirectory=chatmail-sandbox-probe
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
PrivateDevices=yes
ReadWritePaths=/var/lib/chatmail-sandbox-probe
ExecStart=/bin/sh -c 'cd /var/lib/chatmail-sandbox-probe && id -u > uid && (touch /etc/probe 2>/dev/null && echo writable || echo read-only) > etc && (ls -A /home 2>/dev/null | wc -l) > home && touch /tmp/probe-private && (test -e /dev/console && echo yes || echo no) > dev-console && exec sleep infinity'
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
";

fn add_sandboxed_unit(origin: &Path) {
    let src = origin.join("cmdeploy/src/cmdeploy");
    fs::write(src.join(format!("service/{PROBE}.service.f")), PROBE_UNIT).unwrap();
    let f = src.join("deployers.py");
    let text = fs::read_to_string(&f).unwrap();
    let anchor = "            \"lastlogin\",\n";
    assert!(
        text.contains(anchor),
        "the relay's ChatmailVenvDeployer units moved"
    );
    fs::write(
        &f,
        text.replacen(anchor, &format!("{anchor}            \"{PROBE}\",\n"), 1),
    )
    .unwrap();
}

/// A git origin of the relay snapshot on `main` in `parent/origin/relay`
/// and a deployment in `parent/deploy` (the appliance's files, `relay/` a
/// clone of the origin): (the origin, the deployment, the first commit).
pub fn origin_and_deployment(parent: &Path) -> (PathBuf, PathBuf, String) {
    let origin_parent = parent.join("origin");
    fs::create_dir_all(&origin_parent).unwrap();
    let first = unpack_relay(&origin_parent);
    let origin = origin_parent.join("relay");
    git(&origin, &["branch", "-M", "main"]);
    let dir = parent.join("deploy");
    fs::create_dir_all(&dir).unwrap();
    copy_tree(&manifest_dir().join("docker"), &dir.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    clone_repo(&origin, &dir.join("relay"));
    (origin, dir, first)
}
