//! The generated override against the real Docker engine: the mounts the
//! engine really creates for awkward file names, and the container being
//! recreated after an edit in `custom/` (the hash label). Containers are
//! created, never started, from an empty image built `FROM scratch`, so no
//! registry is needed.

use crate::support::{assert_ok, require, runs};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;

const IMAGE: &str = "chatmail-docker-overrides-test:scratch";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deployment dir with the generated override, and a compose project
/// name of its own so nothing else on the engine is touched.
struct Engine {
    tmp: tempfile::TempDir,
    project: String,
}

impl Engine {
    fn new(tag: &str) -> Engine {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("img")).unwrap();
        fs::write(d.join("img/Dockerfile"), "FROM scratch\nCMD [\"/none\"]\n").unwrap();
        run(Command::new("docker")
            .args(["build", "-q", "-t", IMAGE])
            .arg(d.join("img")));
        fs::create_dir_all(d.join("docker")).unwrap();
        fs::create_dir_all(d.join("custom")).unwrap();
        fs::write(
            d.join("docker/docker-compose.yaml"),
            format!("services:\n  chatmail:\n    image: {IMAGE}\n"),
        )
        .unwrap();
        Engine {
            tmp,
            project: format!("chatmail-docker-test-{tag}-{}", std::process::id()),
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn generate(&self) {
        let mut c = assert_cmd::Command::cargo_bin("chatmail-docker").unwrap();
        let out = c
            .arg("--dir")
            .arg(self.dir())
            .args(["config", "--override-only"])
            .output()
            .unwrap();
        assert_ok(&out);
        // --override-only writes nothing; write it as `setup` would.
        let ctx = chatmail_docker::Context::new(
            self.dir(),
            chatmail_docker::host::Host::new("/"),
            chatmail_docker::shell::Shell::new(
                chatmail_docker::shell::Verbosity::Quiet,
                chatmail_docker::shell::ColorChoice::Never,
            ),
            false,
        )
        .unwrap();
        let g = chatmail_docker::overrides::generate(&ctx, &Default::default()).unwrap();
        chatmail_docker::overrides::write(&ctx, &g).unwrap();
        assert_eq!(
            fs::read(self.dir().join("docker/compose.generated.yaml")).unwrap(),
            out.stdout
        );
    }

    fn compose(&self) -> Command {
        let mut c = Command::new("docker");
        c.args([
            "compose",
            "--project-name",
            &self.project,
            "--project-directory",
        ])
        .arg(self.dir())
        .arg("--file")
        .arg(self.dir().join("docker/docker-compose.yaml"))
        .arg("--file")
        .arg(self.dir().join("docker/compose.generated.yaml"));
        c
    }

    /// `up --no-start`: create (or recreate) the container without running it.
    fn create(&self) -> Value {
        run(self.compose().args(["up", "--no-start", "--quiet-pull"]));
        let id = run(self.compose().args(["ps", "-a", "-q", "chatmail"]));
        let id = id.trim();
        assert!(!id.is_empty(), "no container created");
        let inspect = run(Command::new("docker").args(["inspect", id]));
        let v: Value = serde_json::from_str(&inspect).unwrap();
        v[0].clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.compose().args(["down", "--remove-orphans"]).output();
    }
}

#[test]
fn engine_mounts_awkward_names_read_only_and_recreates_after_an_edit() {
    if !require(
        runs("docker", &["info", "--format", "{{.ServerVersion}}"])
            && runs("docker", &["compose", "version"]),
        "a Docker engine and `docker compose`",
    ) {
        return;
    }
    let e = Engine::new("mounts");
    let names = [
        "a b",
        "colon:name:ro",
        "dollar $x ${y} $$",
        "#hash",
        "quote ' \"",
        "ünï ✉",
        "new\nline",
        " lead",
        "comma,eq=x",
    ];
    for n in names {
        let p = e.dir().join("custom/www/src").join(n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, n).unwrap();
    }
    fs::create_dir_all(e.dir().join("custom/_root_/etc/postfix")).unwrap();
    fs::write(e.dir().join("custom/_root_/etc/postfix/master.cf"), "cf").unwrap();
    e.generate();
    let c1 = e.create();

    let mut mounts: Vec<(String, String, bool)> = c1["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Source"].as_str().unwrap().to_string(),
                m["Destination"].as_str().unwrap().to_string(),
                m["RW"].as_bool().unwrap(),
            )
        })
        .collect();
    mounts.sort();
    let custom = e.dir().join("custom");
    let mut expected: Vec<(String, String, bool)> = names
        .iter()
        .map(|n| {
            (
                custom.join("www/src").join(n).to_str().unwrap().to_string(),
                format!("/opt/chatmail/www/src/{n}"),
                false,
            )
        })
        .collect();
    expected.push((
        custom
            .join("_root_/etc/postfix/master.cf")
            .to_str()
            .unwrap()
            .to_string(),
        "/etc/postfix/master.cf".to_string(),
        false,
    ));
    expected.sort();
    assert_eq!(mounts, expected);
    let label = c1["Config"]["Labels"][chatmail_docker::overrides::HASH_LABEL].clone();
    assert_eq!(label.as_str().map(str::len), Some(64));

    // Nothing changed: Compose keeps the container.
    e.generate();
    let c2 = e.create();
    assert_eq!(c1["Id"], c2["Id"]);

    // An editor replaces a mounted file (new inode, same size): the label
    // changes and Compose recreates the container, so it sees the new file.
    let f = custom.join("_root_/etc/postfix/master.cf");
    fs::write(custom.join("_root_/etc/postfix/.master.cf.new"), "CF").unwrap();
    fs::rename(custom.join("_root_/etc/postfix/.master.cf.new"), &f).unwrap();
    e.generate();
    let c3 = e.create();
    assert_ne!(c2["Id"], c3["Id"], "container not recreated after an edit");
    assert_ne!(
        c3["Config"]["Labels"][chatmail_docker::overrides::HASH_LABEL],
        label
    );
}
