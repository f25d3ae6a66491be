//! The tool's manifest of the relay (`src/deployment/relay.rs`: units and ports)
//! against the relay's own source, the snapshot in `../shared/relay/`: a
//! relay release that ships another unit or binds another port fails here
//! until the manifest knows it. (What a deploy really enables is checked
//! against the manifest by the real-relay end-to-end suite.)

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use chatmail_docker::deployment::relay;

fn relay_source() -> (tempfile::TempDir, PathBuf) {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/relay");
    let tarball = fs::read_dir(&shared)
        .unwrap_or_else(|e| panic!("{}: {e} (the relay snapshot)", shared.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap_or_else(|| panic!("no relay snapshot in {}", shared.display()));
    let tmp = tempfile::tempdir().unwrap();
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot unpack {}", tarball.display());
    let src = tmp.path().join("relay/cmdeploy/src/cmdeploy");
    (tmp, src)
}

fn python_files(dir: &Path) -> Vec<(PathBuf, String)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "py")
                && !e.path().components().any(|c| c.as_os_str() == "tests")
        })
        .map(|e| {
            (
                e.path().to_path_buf(),
                fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Units the relay ships but does not enable: started by a timer or a path
/// unit, or removed by the relay itself.
const NOT_ENABLED: &[&str] = &[
    "chatmail-expire.service",
    "chatmail-fsreport.service",
    "acmetool-reconcile.service",
    "tls-cert-reload.service",
    "mta-sts-daemon.service",
];

#[test]
fn every_unit_the_relay_ships_is_in_the_manifest() {
    let (_tmp, src) = relay_source();
    let mut shipped = BTreeSet::new();
    for e in walkdir::WalkDir::new(&src)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().to_string();
        let name = name.trim_end_matches(".j2").trim_end_matches(".f");
        if [".service", ".timer", ".path", ".socket"]
            .iter()
            .any(|s| name.ends_with(s))
            && !e.path().components().any(|c| c.as_os_str() == "tests")
        {
            shipped.insert(name.to_string());
        }
    }
    assert!(shipped.contains("doveauth.service"), "found: {shipped:?}");
    for unit in &shipped {
        if NOT_ENABLED.contains(&unit.as_str()) {
            continue;
        }
        assert!(
            relay::is_relay_unit(unit),
            "the relay ships {unit}; add it to src/deployment/relay.rs UNITS (or to NOT_ENABLED here if the relay does not enable it)"
        );
    }
}

#[test]
fn every_service_the_relay_enables_is_in_the_manifest() {
    let (_tmp, src) = relay_source();
    let mut enabled = BTreeSet::new();
    for (path, text) in python_files(&src) {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("ensure_service(") {
            rest = &rest[i + "ensure_service(".len()..];
            let call = &rest[..rest.find(')').unwrap_or(rest.len())];
            let Some(name) = call
                .trim_start()
                .strip_prefix('"')
                .and_then(|c| c.split('"').next())
            else {
                continue;
            };
            if call.contains("running=False") || name == "systemd-journald.service" {
                continue;
            }
            enabled.insert((name.to_string(), path.display().to_string()));
        }
    }
    assert!(
        enabled.iter().any(|(n, _)| n == "postfix.service"),
        "found: {enabled:?}"
    );
    for (unit, file) in &enabled {
        assert!(
            relay::is_relay_unit(unit),
            "{file} enables {unit}; add it to src/deployment/relay.rs UNITS"
        );
    }
}

#[test]
fn every_port_the_relay_checks_is_in_the_manifest() {
    let (_tmp, src) = relay_source();
    let deployers = fs::read_to_string(src.join("deployers.py")).unwrap();
    let config =
        fs::read_to_string(src.join("../../../chatmaild/src/chatmaild/config.py")).unwrap();
    let start = deployers
        .find("port_services = [")
        .expect("the relay's port check (port_services) in deployers.py");
    let end = start
        + deployers[start..]
            .find("for service, port in port_services")
            .expect("the loop over port_services");
    let block = &deployers[start..end];
    let mut ports = BTreeSet::new();
    for line in block.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        // `("nginx", 443),` or `(["master", "smtpd"], config.postfix_reinject_port),`
        let Some(arg) = line
            .rsplit(',')
            .find(|p| !p.trim().trim_end_matches(')').is_empty())
        else {
            continue;
        };
        let arg = arg.trim().trim_end_matches(')').trim();
        if let Ok(p) = arg.parse::<u16>() {
            ports.insert(p);
        } else if let Some(key) = arg.strip_prefix("config.") {
            let pat = format!("params.pop(\"{key}\", ");
            let i = config
                .find(&pat)
                .unwrap_or_else(|| panic!("no default for {key} in chatmaild's config.py"));
            let default: String = config[i + pat.len()..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit())
                .collect();
            ports.insert(default.parse().unwrap());
        }
    }
    assert!(
        ports.contains(&25) && ports.contains(&10025),
        "found: {ports:?}"
    );
    let known = relay::all_default_ports();
    for p in &ports {
        assert!(
            known.contains(p),
            "the relay checks port {p} before deploying; add it to src/deployment/relay.rs PORTS"
        );
    }
}
