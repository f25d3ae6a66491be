//! What the compose files mount in the service, read from the files as
//! Compose merges them (for the override generator's refusals and for the
//! restore's warnings about what hides the state).

use anyhow::Result;
use std::path::{Path, PathBuf};

use super::SERVICE;
use crate::error;

/// A path in the container that a compose file mounts something at: a
/// bind mount, a volume or a tmpfs of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedMount {
    /// Absolute path in the container, without a trailing `/`.
    pub target: String,
    /// What is mounted there, for messages: `the tmpfs`, `the bind mount of
    /// ./data/chatmail`, `the volume acme`.
    pub what: String,
    /// The compose file that mounts it.
    pub file: PathBuf,
}

/// The service's mounts and tmpfs in the compose files the administrator
/// and the appliance wrote (the generated override is left out: it is
/// made from these). Read from the files, in order, as Compose merges
/// them: `!reset` and `!override` on `volumes` or `tmpfs` drop what the
/// files before said. Variables in paths are not interpolated. A missing
/// file is skipped; one that is not YAML is an error naming it.
pub fn claimed_mounts(files: &[PathBuf]) -> Result<Vec<ClaimedMount>> {
    let mut out: Vec<(&'static str, ClaimedMount)> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(error::usage(format!("cannot read {}: {e}", file.display()))),
        };
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
            error::usage(format!(
                "{} is not a valid compose file: {e}",
                file.display()
            ))
        })?;
        let Some(service) = doc.get("services").and_then(|s| s.get(SERVICE)) else {
            continue;
        };
        for key in ["volumes", "tmpfs"] {
            let Some(value) = service.get(key) else {
                continue;
            };
            let value = match value {
                serde_yaml::Value::Tagged(t) => {
                    let tag = t.tag.to_string();
                    if tag == "!reset" || tag == "!override" {
                        out.retain(|(k, _)| *k != key);
                    }
                    &t.value
                }
                v => v,
            };
            let entries: Vec<&serde_yaml::Value> = match value {
                serde_yaml::Value::Sequence(seq) => seq.iter().collect(),
                serde_yaml::Value::Null => Vec::new(),
                one => vec![one],
            };
            for entry in entries {
                if let Some((target, what)) = mount_entry(key, entry) {
                    // `/var/lib/./acme/` is `/var/lib/acme`.
                    let target = crate::host::normalize(Path::new(&target))
                        .to_string_lossy()
                        .into_owned();
                    let target = match target.trim_end_matches('/') {
                        "" => "/".to_string(),
                        t => t.to_string(),
                    };
                    out.push((
                        key,
                        ClaimedMount {
                            target,
                            what,
                            file: file.clone(),
                        },
                    ));
                }
            }
        }
    }
    Ok(out.into_iter().map(|(_, m)| m).collect())
}

/// The target and description of one `volumes` or `tmpfs` entry, short or
/// long syntax.
fn mount_entry(key: &str, entry: &serde_yaml::Value) -> Option<(String, String)> {
    if let Some(s) = entry.as_str() {
        if key == "tmpfs" {
            // `/run` or `/run:size=64m`
            let target = s.split(':').next().unwrap_or(s);
            return Some((target.to_string(), "the tmpfs".into()));
        }
        // `SOURCE:TARGET[:MODE]` or `TARGET` (an anonymous volume).
        let parts: Vec<&str> = s.split(':').collect();
        return match parts.as_slice() {
            [target] => Some((target.to_string(), "an anonymous volume".into())),
            [source, target, ..] => Some((target.to_string(), describe(None, source))),
            [] => None,
        };
    }
    let target = entry.get("target")?.as_str()?;
    let kind = entry.get("type").and_then(|t| t.as_str());
    let source = entry.get("source").and_then(|t| t.as_str()).unwrap_or("");
    Some((target.to_string(), describe(kind, source)))
}

fn describe(kind: Option<&str>, source: &str) -> String {
    let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    match kind {
        Some("tmpfs") => "the tmpfs".into(),
        Some("bind") => format!("the bind mount of {source}"),
        Some("volume") | None if !source.is_empty() && !bind => format!("the volume {source}"),
        None if bind => format!("the bind mount of {source}"),
        Some(k) => format!("a {k} mount"),
        None => "an anonymous volume".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_mounts_of_the_appliance_and_an_override() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.yaml");
        let over = d.path().join("override.yaml");
        std::fs::write(
            &base,
            "services:\n  chatmail:\n    tmpfs:\n      - /tmp\n      - /run:size=64m\n    volumes:\n      - ./data/a:/home\n      - type: bind\n        source: ./data/b\n        target: /var/lib/./acme/\n      - acme:/srv/vol:ro\n      - /anon\n      - type: tmpfs\n        target: /var/cache/x\n  other:\n    volumes: [./x:/other]\n",
        )
        .unwrap();
        std::fs::write(
            &over,
            "services:\n  chatmail:\n    tmpfs: !reset []\n    volumes:\n      - /srv/host:/opt/extra\n",
        )
        .unwrap();
        let got: Vec<(String, String)> =
            claimed_mounts(&[base.clone(), d.path().join("missing.yaml"), over.clone()])
                .unwrap()
                .into_iter()
                .map(|m| (m.target, m.what))
                .collect();
        let want: Vec<(String, String)> = [
            ("/home", "the bind mount of ./data/a"),
            ("/var/lib/acme", "the bind mount of ./data/b"),
            ("/srv/vol", "the volume acme"),
            ("/anon", "an anonymous volume"),
            ("/var/cache/x", "the tmpfs"),
            ("/opt/extra", "the bind mount of /srv/host"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        std::fs::write(&over, "services: [\n").unwrap();
        let err = claimed_mounts(&[over]).unwrap_err().to_string();
        assert!(
            err.contains("override.yaml is not a valid compose file"),
            "{err}"
        );
    }
}
