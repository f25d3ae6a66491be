//! The appliance's systemd generator (`docker/files/sandbox-generator`):
//! which of the relay's units get `PrivateUsers=yes`, run with the host's
//! python3 on unit files in a temp dir.
//!
//! Needs `python3`; without it the tests are skipped with a reason, except
//! under CI.

use crate::support::have;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/files/sandbox-generator")
}

/// Run the generator on `units` (name, content; a name with `/` is a
/// drop-in); the names of the units it gave a drop-in.
fn generate(units: &[(&str, &str)], force: bool) -> Vec<String> {
    let d = tempfile::tempdir().unwrap();
    let unit_dir = d.path().join("etc");
    for (name, text) in units {
        let p = unit_dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    let out_dir = d.path().join("gen");
    let mut cmd = Command::new("python3");
    cmd.arg(script())
        .arg(&out_dir)
        .arg(d.path().join("early"))
        .arg(d.path().join("late"))
        .env("CHATMAIL_SANDBOX_UNIT_DIR", &unit_dir);
    if force {
        // The tests run as root, with CAP_SYS_ADMIN: without this the
        // generator rightly leaves the units alone.
        cmd.env("CHATMAIL_SANDBOX_FORCE", "1");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut made: Vec<String> = fs::read_dir(&out_dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| {
                    let dropin = e.path().join("50-chatmail-docker-private-users.conf");
                    let text = fs::read_to_string(&dropin).unwrap();
                    assert!(text.contains("[Service]\nPrivateUsers=yes\n"), "{text}");
                    e.file_name()
                        .to_string_lossy()
                        .trim_end_matches(".d")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    made.sort();
    made
}

#[test]
fn unprivileged_sandboxed_units_get_a_private_user_namespace() {
    if !have("python3", &["--version"]) {
        return;
    }
    let made = generate(
        &[
            (
                "dynamic.service",
                "[Unit]\nDescription=x\n[Service]\nDynamicUser=yes\nExecStart=/bin/true\n",
            ),
            (
                "vmail-tmp.service",
                "[Service]\nUser=vmail\nPrivateTmp=true\nExecStart=/bin/true\n",
            ),
            (
                "vmail-paths.service",
                "[Service]\nUser=vmail\nReadWritePaths=/var/lib/x\n",
            ),
            // Runs as root: left alone (it would lose the host's ports).
            (
                "root.service",
                "[Service]\nProtectSystem=strict\nPrivateTmp=yes\n",
            ),
            // Nothing that needs a mount namespace.
            ("plain.service", "[Service]\nUser=vmail\nRestart=always\n"),
            (
                "off.service",
                "[Service]\nUser=vmail\nPrivateTmp=no\nProtectSystem=no\n",
            ),
            // Its own choice stands.
            (
                "own.service",
                "[Service]\nDynamicUser=yes\nPrivateUsers=no\n",
            ),
            // A drop-in of the relay's that adds sandboxing counts.
            ("dropped.service", "[Service]\nUser=vmail\n"),
            (
                "dropped.service.d/10-harden.conf",
                "[Service]\nProtectHome=yes\n",
            ),
            // An empty assignment in a drop-in resets.
            (
                "reset.service",
                "[Service]\nDynamicUser=yes\nPrivateTmp=yes\n",
            ),
            ("reset.service.d/10-x.conf", "[Service]\nDynamicUser=\n"),
            // The key is in [Service], not elsewhere.
            (
                "section.service",
                "[Unit]\nDynamicUser=yes\n[Service]\nUser=root\n",
            ),
            // Templates too.
            ("tpl@.service", "[Service]\nDynamicUser=yes\n"),
            ("other.timer", "[Timer]\nDynamicUser=yes\n"),
        ],
        true,
    );
    assert_eq!(
        made,
        [
            "dropped.service",
            "dynamic.service",
            "tpl@.service",
            "vmail-paths.service",
            "vmail-tmp.service",
        ]
    );
}

#[test]
fn with_cap_sys_admin_systemd_sets_up_namespaces_itself() {
    if !have("python3", &["--version"]) {
        return;
    }
    let caps = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let sys_admin = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|v| v >> 21 & 1 == 1);
    let made = generate(
        &[("dynamic.service", "[Service]\nDynamicUser=yes\n")],
        false,
    );
    if sys_admin {
        assert!(made.is_empty(), "{made:?}");
    } else {
        assert_eq!(made, ["dynamic.service"]);
    }
}
