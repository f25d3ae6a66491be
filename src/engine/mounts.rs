//! What the relay's container mounts: as the running container has it
//! (`docker inspect`), as Compose would give it (`docker compose config`),
//! and as the compose files claim it, read from the files as Compose merges
//! them (for the override generator's refusals and for the restore's
//! warnings about what hides the state).

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

use super::SERVICE;
use crate::deployment::{Deployment, STATE_MOUNTS};
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

/// What kind of mount the container has at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A host directory (or file) bound in, or a named volume (its data
    /// directory on the host): readable from the host.
    Host,
    /// Memory (`tmpfs`) or anything else the host cannot read.
    Other(String),
}

/// One mount of the relay's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The path in the container, absolute, without a trailing `/`.
    pub target: String,
    /// Where it comes from on the host (absolute; [`MountKind::Host`]).
    pub source: PathBuf,
    pub kind: MountKind,
}

/// Where the layout was read from (for the manifest's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutFrom {
    /// `docker inspect` of the running container.
    Container,
    /// `docker compose config` of the deployment.
    Compose,
}

/// The container's mounts.
#[derive(Clone, Debug)]
pub struct Layout {
    pub mounts: Vec<Mount>,
    pub from: LayoutFrom,
}

fn clean_target(t: &str) -> String {
    let n = crate::host::normalize(Path::new(t))
        .to_string_lossy()
        .into_owned();
    match n.trim_end_matches('/') {
        "" => "/".to_string(),
        t => t.to_string(),
    }
}

impl Layout {
    /// From `docker inspect`'s `Mounts` of the container.
    pub fn from_inspect(mounts: &serde_json::Value) -> Result<Layout> {
        let list = mounts
            .as_array()
            .context("`docker inspect` gave no list of mounts")?;
        let mut out = Vec::new();
        for m in list {
            let s = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            let target = clean_target(s("Destination"));
            let kind = match s("Type") {
                "bind" | "volume" => MountKind::Host,
                other => MountKind::Other(other.to_string()),
            };
            out.push(Mount {
                target,
                source: PathBuf::from(s("Source")),
                kind,
            });
        }
        Ok(Layout {
            mounts: out,
            from: LayoutFrom::Container,
        })
    }

    /// From `docker compose config --format json`: the service's volumes
    /// and tmpfs. A named volume's data directory is asked from Docker by
    /// `volume_dir`.
    pub fn from_compose(
        config: &serde_json::Value,
        service: &str,
        volume_dir: impl Fn(&str) -> Result<PathBuf>,
    ) -> Result<Layout> {
        let svc = config
            .get("services")
            .and_then(|s| s.get(service))
            .with_context(|| format!("the Compose configuration has no service {service}"))?;
        let mut out = Vec::new();
        if let Some(vols) = svc.get("volumes").and_then(|v| v.as_array()) {
            for v in vols {
                let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
                let target = clean_target(s("target"));
                let (source, kind) = match s("type") {
                    "bind" => (PathBuf::from(s("source")), MountKind::Host),
                    "volume" if !s("source").is_empty() => {
                        let name = config
                            .get("volumes")
                            .and_then(|x| x.get(s("source")))
                            .and_then(|x| x.get("name"))
                            .and_then(|x| x.as_str())
                            .unwrap_or(s("source"))
                            .to_string();
                        (volume_dir(&name)?, MountKind::Host)
                    }
                    other => (PathBuf::new(), MountKind::Other(other.to_string())),
                };
                out.push(Mount {
                    target,
                    source,
                    kind,
                });
            }
        }
        if let Some(t) = svc.get("tmpfs") {
            let list: Vec<&str> = match t {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                _ => vec![],
            };
            for s in list {
                out.push(Mount {
                    target: clean_target(s.split(':').next().unwrap_or(s)),
                    source: PathBuf::new(),
                    kind: MountKind::Other("tmpfs".into()),
                });
            }
        }
        Ok(Layout {
            mounts: out,
            from: LayoutFrom::Compose,
        })
    }
}

/// The layout of a deployment whose container is not running and whose
/// Compose cannot be asked: the appliance's own mounts (docker/docker-compose.yaml),
/// the host's `/home/vmail` when `migrate --mount-vmail` left its marker.
pub fn default_layout(dep: &Deployment, host: &crate::host::Host) -> Layout {
    let mut mounts: Vec<Mount> = STATE_MOUNTS
        .iter()
        .map(|(apath, target)| Mount {
            target: target.to_string(),
            source: dep.path(apath),
            kind: MountKind::Host,
        })
        .collect();
    if dep.vmail_marker().exists() {
        mounts.push(Mount {
            target: "/home/vmail".into(),
            source: host.path("/home/vmail"),
            kind: MountKind::Host,
        });
    }
    Layout {
        mounts,
        from: LayoutFrom::Compose,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_mounts_of_the_appliance_and_an_override() {
        let d = tempfile::tempdir().unwrap();
        crate::host::write_tree(
            d.path(),
            &[
                ("base.yaml", "services:\n  chatmail:\n    tmpfs:\n      - /tmp\n      - /run:size=64m\n    volumes:\n      - ./data/a:/home\n      - type: bind\n        source: ./data/b\n        target: /var/lib/./acme/\n      - acme:/srv/vol:ro\n      - /anon\n      - type: tmpfs\n        target: /var/cache/x\n  other:\n    volumes: [./x:/other]\n"),
                ("override.yaml", "services:\n  chatmail:\n    tmpfs: !reset []\n    volumes:\n      - /srv/host:/opt/extra\n"),
            ],
        );
        let (base, over) = (d.path().join("base.yaml"), d.path().join("override.yaml"));
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
