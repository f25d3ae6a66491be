//! Where the certificates are on the host, and how their paths resolve.
//!
//! `PATH_TO_SSL` in `.env` is a path inside the container. The ACME client
//! writes through a volume mount, so the same files live somewhere on the
//! host; the service's mounts (from `docker compose config`) say where.
//!
//! Symlinks are resolved by hand rather than with `canonicalize`: every hop
//! is a place a renewal can swap (acmetool's `live/<domain>`, certbot's
//! `live/<domain>/*.pem`), so the watcher needs all of them, and a link
//! written inside the container may be absolute in the container's terms
//! (`/var/lib/acme/certs/...`), which only the mount table can translate.

use anyhow::{anyhow, Context as _, Result};
use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use crate::context::Context;
use crate::deployment::relay::TlsMode;
use crate::deployment::Settings;
use crate::engine;

/// The appliance's documented mount for ACME state.
pub const DEFAULT_ACME_CONTAINER: &str = "/var/lib/acme";

/// One volume mount: a container path and the host directory behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub container: PathBuf,
    pub host: PathBuf,
}

/// The directory to watch, on the host.
#[derive(Clone, Debug)]
pub struct Target {
    pub dir: PathBuf,
    /// Mounts used to translate container-absolute symlinks.
    pub mounts: Vec<Mount>,
    /// How the directory was found, for logs.
    pub origin: String,
    /// Ancestors above this are not watched (see [`Walk::floor`]).
    pub floor: Option<PathBuf>,
    /// The certificate and key files when the relay's TLS mode names them
    /// (self-signed, `tls_external_cert_and_key`); otherwise the usual
    /// names are looked for in `dir`.
    pub files: Option<(PathBuf, PathBuf)>,
}

/// Where the appliance keeps the self-signed certificate (`_` domains, IP
/// addresses): the relay's `/etc/ssl/certs/mailserver.pem` and
/// `/etc/ssl/private/mailserver.key` link here (docker/Dockerfile).
pub const SELF_SIGNED_CONTAINER: &str = "/var/lib/chatmail-docker/tls";
pub const SELF_SIGNED_CERT: &str = "mailserver.pem";
pub const SELF_SIGNED_KEY: &str = "mailserver.key";

pub use crate::host::normalize;

/// Map a container path to the host through the mount with the longest
/// matching target.
pub fn map_to_host(container_path: &Path, mounts: &[Mount]) -> Option<PathBuf> {
    let p = normalize(container_path);
    mounts
        .iter()
        .filter(|m| p.starts_with(&m.container))
        .max_by_key(|m| m.container.components().count())
        .map(|m| {
            let rest = p.strip_prefix(&m.container).unwrap_or(Path::new(""));
            if rest.as_os_str().is_empty() {
                m.host.clone()
            } else {
                m.host.join(rest)
            }
        })
}

/// Named volumes whose host directory could not be found: (container
/// path, volume name).
pub type Unresolved = Vec<(PathBuf, String)>;

/// The mounts of the chatmail service, from `docker compose config`.
/// `Ok(None)` when Compose cannot tell (not installed, no compose file).
pub fn compose_mounts(ctx: &Context) -> Result<Option<(Vec<Mount>, Unresolved)>> {
    let project = engine::Project::new(ctx);
    let out = match project
        .cmd(ctx, ["config", "--format", "json"])
        .output(&ctx.shell)
    {
        Ok(o) => o,
        Err(e) => {
            ctx.shell
                .verbose(format!("docker compose is not usable: {e:#}"));
            return Ok(None);
        }
    };
    if !out.success() {
        ctx.shell.verbose(format!(
            "`docker compose config` failed: {}",
            out.stderr.lines().next().unwrap_or("").trim()
        ));
        return Ok(None);
    }
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .context("cannot parse the JSON printed by `docker compose config`")?;
    parse_mounts(ctx, &json).map(Some)
}

/// The mounts of the service in `docker compose config --format json`
/// output. Named volumes are looked up with `docker volume inspect`.
fn parse_mounts(ctx: &Context, json: &serde_json::Value) -> Result<(Vec<Mount>, Unresolved)> {
    let vols = json
        .pointer(&format!("/services/{}/volumes", engine::SERVICE))
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let mut mounts = Vec::new();
    let mut unresolved = Vec::new();
    for v in vols {
        let kind = v.get("type").and_then(|x| x.as_str()).unwrap_or("");
        let (Some(source), Some(target)) = (
            v.get("source").and_then(|x| x.as_str()),
            v.get("target").and_then(|x| x.as_str()),
        ) else {
            continue;
        };
        let host = match kind {
            "bind" => PathBuf::from(source),
            "volume" => {
                let name = json
                    .pointer(&format!("/volumes/{source}/name"))
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{}_{source}", engine::PROJECT_NAME));
                match volume_mountpoint(ctx, &name) {
                    Some(p) => p,
                    None => {
                        ctx.shell.verbose(format!(
                            "named volume {name} (at {target}) has no known host directory"
                        ));
                        unresolved.push((normalize(Path::new(target)), name));
                        continue;
                    }
                }
            }
            _ => continue,
        };
        mounts.push(Mount {
            container: normalize(Path::new(target)),
            host: normalize(&host),
        });
    }
    Ok((mounts, unresolved))
}

fn volume_mountpoint(ctx: &Context, name: &str) -> Option<PathBuf> {
    engine::volume_dir(ctx, name)
        .ok()
        .filter(|p| !p.as_os_str().is_empty())
}

/// Decide which host directory to watch: `--path`, else `PATH_TO_SSL`
/// mapped through the service's mounts.
pub fn locate(ctx: &Context, path: Option<&Path>, settings: &Settings) -> Result<Target> {
    if let Some(p) = path {
        return given_path(p);
    }
    let explicit_path = settings.path_to_ssl.as_ref();
    // Without PATH_TO_SSL, follow the relay's TLS mode.
    if explicit_path.is_none() {
        if let Some(TlsMode::External { cert, key }) = &settings.tls {
            return external_pair(ctx, cert, key);
        }
    }
    let self_signed = explicit_path.is_none() && settings.tls == Some(TlsMode::SelfSigned);
    let container_path = container_path(ctx, settings, self_signed)?;
    let (mounts, unresolved, origin) = mounts_or_defaults(ctx)?;
    let dir = host_dir(&container_path, &mounts, &unresolved)?;
    // The mount's host directory may be replaced (a restore of data/), so
    // watch from its parent down.
    let floor = mounts
        .iter()
        .filter(|m| dir.starts_with(&m.host))
        .max_by_key(|m| m.host.components().count())
        .and_then(|m| m.host.parent().map(Path::to_path_buf));
    let files = self_signed.then(|| (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY)));
    Ok(Target {
        origin: if self_signed {
            format!("the self-signed certificate ({container_path}) via {origin}")
        } else {
            format!("PATH_TO_SSL={container_path} via {origin}")
        },
        dir,
        mounts,
        floor,
        files,
    })
}

/// `--path DIR`: watched as given (relative to the current directory).
fn given_path(p: &Path) -> Result<Target> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .with_context(|| {
                format!(
                    "cannot resolve --path {}: the current directory is gone; pass an absolute path",
                    p.display()
                )
            })?
            .join(p)
    };
    let dir = normalize(&abs);
    // The directory and its parent may be replaced; what is above is
    // left to the poll timer.
    let floor = dir.parent().and_then(Path::parent).map(Path::to_path_buf);
    Ok(Target {
        dir,
        mounts: Vec::new(),
        origin: "--path".into(),
        floor,
        files: None,
    })
}

/// `tls_external_cert_and_key`: host paths, which the appliance mounts at
/// the same place.
fn external_pair(ctx: &Context, cert: &str, key: &str) -> Result<Target> {
    let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
    if !cert.is_absolute() || !key.is_absolute() {
        return Err(crate::error::usage(format!(
            "tls_external_cert_and_key (TLS_EXTERNAL_CERT_AND_KEY in {}) must name two absolute paths: CERT KEY",
            ctx.deployment.env_file().display()
        )));
    }
    let dir = normalize(cert.parent().unwrap_or(Path::new("/")));
    let floor = dir.parent().and_then(Path::parent).map(Path::to_path_buf);
    Ok(Target {
        dir,
        mounts: Vec::new(),
        origin: "tls_external_cert_and_key".into(),
        floor,
        files: Some((normalize(&cert), normalize(&key))),
    })
}

/// The certificates' directory in the container: PATH_TO_SSL, else the
/// self-signed directory or acmetool's for the mail domain.
fn container_path(ctx: &Context, settings: &Settings, self_signed: bool) -> Result<String> {
    let domain = settings.mail_domain.as_ref();
    let path = match settings.path_to_ssl.as_ref() {
        Some(p) => p.clone(),
        None if self_signed => SELF_SIGNED_CONTAINER.to_string(),
        None => match domain {
            Some(d) => format!("{DEFAULT_ACME_CONTAINER}/live/{d}"),
            None => {
                return Err(crate::error::usage(format!(
                    "neither PATH_TO_SSL nor MAIL_DOMAIN is set in {}; set MAIL_DOMAIN (run `chatmail-docker ini2env`) or pass --path DIR",
                    ctx.deployment.env_file().display()
                )))
            }
        },
    };
    // `.env` may carry the documented default literally; Compose would
    // interpolate it, so do the same for the one variable it uses.
    let path = match domain {
        Some(d) => path.replace("${MAIL_DOMAIN}", d).replace("$MAIL_DOMAIN", d),
        None => path,
    };
    if path.contains('$') {
        return Err(crate::error::usage(format!(
            "PATH_TO_SSL={path} in {} still contains a variable; write the path out",
            ctx.deployment.env_file().display()
        )));
    }
    if !Path::new(&path).is_absolute() {
        return Err(crate::error::usage(format!(
            "PATH_TO_SSL={path} in {} must be an absolute path inside the container",
            ctx.deployment.env_file().display()
        )));
    }
    Ok(path)
}

/// The service's mounts as Compose reports them, else the appliance's
/// defaults; with the named volumes whose host directory is unknown and
/// where the mounts came from.
fn mounts_or_defaults(ctx: &Context) -> Result<(Vec<Mount>, Unresolved, &'static str)> {
    if let Some((m, u)) = compose_mounts(ctx)? {
        return Ok((
            m,
            u,
            "the chatmail service's volumes (docker compose config)",
        ));
    }
    ctx.shell.verbose(format!(
        "using the appliance's default mounts {} <-> {DEFAULT_ACME_CONTAINER}, {} <-> {SELF_SIGNED_CONTAINER}",
        ctx.deployment.acme_dir().display(),
        ctx.deployment.self_signed_dir().display()
    ));
    Ok((
        vec![
            Mount {
                container: PathBuf::from(DEFAULT_ACME_CONTAINER),
                host: ctx.deployment.acme_dir(),
            },
            Mount {
                container: PathBuf::from(SELF_SIGNED_CONTAINER),
                host: ctx.deployment.self_signed_dir(),
            },
        ],
        Unresolved::default(),
        "the default mounts under data/ (docker compose config unavailable)",
    ))
}

/// The host directory of `container_path` through `mounts`, or an error
/// that names what keeps the host from seeing it.
fn host_dir(container_path: &str, mounts: &[Mount], unresolved: &Unresolved) -> Result<PathBuf> {
    let cpath = Path::new(container_path);
    if let Some(dir) = map_to_host(cpath, mounts) {
        return Ok(dir);
    }
    if let Some((target, name)) = unresolved.iter().find(|(t, _)| cpath.starts_with(t)) {
        return Err(crate::error::usage(format!(
            "PATH_TO_SSL={container_path} is on the named volume {name} (mounted at {}), whose host directory is unknown: start the appliance once so Docker creates it (`docker volume inspect {name}`), or bind-mount a host directory there in docker-compose.override.yaml",
            target.display()
        )));
    }
    let list = if mounts.is_empty() {
        "none".to_string()
    } else {
        mounts
            .iter()
            .map(|m| format!("{} <- {}", m.container.display(), m.host.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(crate::error::usage(format!(
        "PATH_TO_SSL={container_path} is under none of the chatmail service's volume mounts ({list}), so the host cannot see the certificates; mount its directory in docker-compose.override.yaml or pass --path DIR"
    )))
}

/// The outcome of resolving one path.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// Every path looked at on the way (each component, each symlink): an
    /// event on any of them may change the outcome.
    pub visited: BTreeSet<PathBuf>,
    /// Directories that hold those paths: where to put watches.
    pub dirs: BTreeSet<PathBuf>,
    /// Ancestors above this directory are only watched where needed (the
    /// directory holding a symlink or a final file, the deepest existing
    /// one of a missing path). Watching `/`, `/tmp` or `/etc` would wake the
    /// watcher for every unrelated file there; a replacement that high up is
    /// left to the poll timer.
    pub floor: Option<PathBuf>,
}

impl Walk {
    /// Resolve `path` through symlinks. Returns the real path when it
    /// exists. Absolute link targets under a mount's container path are
    /// translated to the host.
    pub fn resolve(&mut self, path: &Path, mounts: &[Mount]) -> Result<Option<PathBuf>> {
        let mut todo: VecDeque<OsString> = VecDeque::new();
        push_front(&mut todo, path);
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            if part == "/" {
                cur = PathBuf::from("/");
                continue;
            }
            if part == "." {
                continue;
            }
            if part == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&part);
            self.visited.insert(next.clone());
            let meta = std::fs::symlink_metadata(&next);
            let needed = todo.is_empty()
                || meta.as_ref().map_or(true, |m| m.file_type().is_symlink())
                || self.floor.as_ref().is_none_or(|f| cur.starts_with(f));
            if needed {
                self.dirs.insert(cur.clone());
            }
            match meta {
                Err(e)
                    if e.kind() == ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot look at {}", next.display()))
                }
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > 40 {
                        return Err(anyhow!(
                            "{} is a symlink loop (more than 40 links to follow); point the link at a file",
                            path.display()
                        ));
                    }
                    let target = std::fs::read_link(&next)
                        .with_context(|| format!("cannot read the symlink {}", next.display()))?;
                    let target = if target.is_absolute() && !mounts.is_empty() {
                        let inside = mounts.iter().any(|m| next.starts_with(&m.host));
                        match map_to_host(&target, mounts) {
                            Some(h) if inside => h,
                            _ => target,
                        }
                    } else {
                        target
                    };
                    push_front(&mut todo, &target);
                }
                Ok(_) => cur = next,
            }
        }
        Ok(Some(cur))
    }
}

fn push_front(todo: &mut VecDeque<OsString>, p: &Path) {
    let parts: Vec<OsString> = p
        .components()
        .map(|c| match c {
            Component::RootDir => OsString::from("/"),
            other => other.as_os_str().to_os_string(),
        })
        .collect();
    for part in parts.into_iter().rev() {
        todo.push_front(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn longest_mount_wins() {
        let m = vec![
            Mount {
                container: "/var/lib".into(),
                host: "/h/lib".into(),
            },
            Mount {
                container: "/var/lib/acme".into(),
                host: "/h/acme".into(),
            },
        ];
        assert_eq!(
            map_to_host(Path::new("/var/lib/acme/live/x"), &m),
            Some(PathBuf::from("/h/acme/live/x"))
        );
        assert_eq!(
            map_to_host(Path::new("/var/lib/acme"), &m),
            Some(PathBuf::from("/h/acme"))
        );
        assert_eq!(map_to_host(Path::new("/etc/ssl"), &m), None);
        // A prefix of a component is no match.
        assert_eq!(map_to_host(Path::new("/var/libx"), &m), None);
    }

    #[test]
    fn resolves_relative_and_container_absolute_links() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("acme/certs/abc")).unwrap();
        std::fs::create_dir_all(root.join("acme/live")).unwrap();
        std::fs::write(root.join("acme/certs/abc/fullchain"), "x").unwrap();
        symlink("../certs/abc", root.join("acme/live/d1")).unwrap();
        symlink("/var/lib/acme/certs/abc", root.join("acme/live/d2")).unwrap();
        let mounts = vec![Mount {
            container: "/var/lib/acme".into(),
            host: root.join("acme"),
        }];
        let mut w = Walk::default();
        let r = w
            .resolve(&root.join("acme/live/d1/fullchain"), &mounts)
            .unwrap();
        assert_eq!(r, Some(root.join("acme/certs/abc/fullchain")));
        assert!(w.visited.contains(&root.join("acme/live/d1")));
        assert!(w.dirs.contains(&root.join("acme/live")));
        assert!(w.dirs.contains(&root.join("acme/certs/abc")));
        let r = w
            .resolve(&root.join("acme/live/d2/fullchain"), &mounts)
            .unwrap();
        assert_eq!(r, Some(root.join("acme/certs/abc/fullchain")));
        assert_eq!(
            w.resolve(&root.join("acme/live/nope/fullchain"), &mounts)
                .unwrap(),
            None
        );
        // Without a floor every ancestor is a watch directory.
        assert!(w.dirs.contains(Path::new("/")));

        // With one, ancestors above it are left out, but not the
        // directories that hold links or final files.
        let mut w = Walk {
            floor: Some(root.join("acme")),
            ..Walk::default()
        };
        w.resolve(&root.join("acme/live/d1/fullchain"), &mounts)
            .unwrap();
        assert!(!w.dirs.contains(Path::new("/")));
        assert!(!w.dirs.contains(root.parent().unwrap()));
        for d in ["acme", "acme/live", "acme/certs", "acme/certs/abc"] {
            assert!(w.dirs.contains(&root.join(d)), "{d}: {:?}", w.dirs);
        }
    }
}
