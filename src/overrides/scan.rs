//! Walking `custom/` and deciding, file by file, what gets mounted where.
//!
//! This is the part that has to be strict: a bind mount is a hole through
//! the container's filesystem, so anything that could expose host files
//! (a symlink leading out of `custom/`), hang the walk (a fifo) or hide the
//! relay's persistent data or systemd itself is refused here, with every
//! problem of the tree listed at once so a user fixes them in one go.
//!
//! The walk is sorted by file name and the result sorted by target, so the
//! same tree always gives the same mounts in the same order.

use anyhow::{Context as _, Result};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Files under `custom/<P>` land at `/opt/chatmail/<P>`: the relay's source
/// tree inside the container.
pub const SOURCE_TREE: &str = "/opt/chatmail";
/// `custom/_root_/<P>` lands at `/<P>`, for files outside the source tree.
pub const ROOT_DIR: &str = "_root_";
/// A directory holding this marker is mounted whole instead of file by file.
pub const MOUNT_DIR_MARKER: &str = ".mount-dir";

/// How a path is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MountKind {
    /// One regular file (or a symlink to one inside `custom/`).
    File,
    /// A whole directory, marked with `.mount-dir`.
    Dir,
}

/// One bind mount of the generated override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Path relative to `custom/` (for messages). Empty for mounts that do
    /// not come from `custom/` (the `/home/vmail` mount).
    pub rel: PathBuf,
    /// Absolute host path handed to Docker.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    pub kind: MountKind,
    pub read_only: bool,
    /// For directory mounts: the files inside, relative to the directory,
    /// sorted; they feed the content hash. Empty for file mounts.
    pub contents: Vec<PathBuf>,
}

/// A file under `custom/` that is deliberately not mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Path relative to `custom/`.
    pub rel: PathBuf,
    pub reason: &'static str,
}

/// A path the appliance's compose file mounts something at (the
/// persistent data, the tmpfs, the cgroup tree): no custom mount may be at
/// it, below it, or above it. Derived from the compose file
/// ([`crate::engine::claimed_mounts`]), so a mount added there is
/// protected without a change here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Absolute container path, normalised, no trailing `/`.
    pub target: String,
    /// What claims it, for messages (`the tmpfs in docker/docker-compose.yaml`).
    pub why: String,
}

/// Paths no custom mount may hide besides the compose files' own mounts
/// ([`Claim`]): what the container needs whatever the compose files say.
/// `below: true` also refuses everything under the path; `below: false`
/// refuses the path itself and its ancestors only (files inside stay
/// allowed).
struct Protected {
    path: &'static str,
    below: bool,
    why: &'static str,
}

const PROTECTED: &[Protected] = &[
    // systemd runs the container: its binaries, its own unit directories
    // and the manager configuration.
    Protected {
        path: "/sbin/init",
        below: true,
        why: "systemd, the container's init",
    },
    Protected {
        path: "/usr/sbin/init",
        below: true,
        why: "systemd, the container's init",
    },
    Protected {
        path: "/bin/systemctl",
        below: true,
        why: "systemd",
    },
    Protected {
        path: "/usr/bin/systemctl",
        below: true,
        why: "systemd",
    },
    Protected {
        path: "/lib/systemd",
        below: true,
        why: "systemd's own units and binaries",
    },
    Protected {
        path: "/usr/lib/systemd",
        below: true,
        why: "systemd's own units and binaries",
    },
    Protected {
        path: "/etc/systemd",
        below: true,
        why: "systemd's configuration",
    },
    // The relay's ini in the container is written at every start from
    // `.env` (a read-only mount there makes the init fail); the deployment
    // directory's chatmail.ini is where it is configured.
    Protected {
        path: "/etc/chatmail/chatmail.ini",
        below: true,
        why: "the relay's chatmail.ini, written from .env at start; \
              edit chatmail.ini in the deployment directory instead",
    },
    // Kernel and runtime filesystems the container needs as they are.
    Protected {
        path: "/proc",
        below: true,
        why: "the kernel's /proc",
    },
    Protected {
        path: "/sys",
        below: true,
        why: "the kernel's /sys and the cgroup mount",
    },
    Protected {
        path: "/dev",
        below: true,
        why: "device nodes",
    },
    Protected {
        path: "/run",
        below: true,
        why: "systemd's runtime directory, a tmpfs",
    },
    // The source tree itself: single files in it are the point of custom/,
    // replacing the whole tree is not.
    Protected {
        path: SOURCE_TREE,
        below: false,
        why: "the relay's whole source tree",
    },
];

/// Exceptions to [`PROTECTED`]: admins customise services with unit files
/// and drop-ins in `/etc/systemd/system/`, so files and directories strictly
/// below it are allowed (the directory itself is not).
const ALLOWED_BELOW: &[&str] = &["/etc/systemd/system"];

/// Whether `path` is `dir` or lies below it. Both are normalised absolute
/// paths (no `.`, `..`, `//` or trailing `/`), as [`target_of`] builds them;
/// plain string work keeps the check cheap for 10,000 files.
fn is_within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || dir == "/")
}

/// Why a container path may not be a mount target, if it may not: the
/// compose files' own mounts (`claims`), then the fixed list `PROTECTED`.
pub fn refuse_target(target: &str, claims: &[Claim]) -> Option<String> {
    let t = match target.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    if t == "/" {
        return Some("it would replace the container's whole filesystem".into());
    }
    for c in claims {
        if is_within(t, &c.target) {
            return Some(format!("it would shadow {} ({})", c.target, c.why));
        }
        if is_within(&c.target, t) {
            return Some(format!("it would hide {} ({}) beneath it", c.target, c.why));
        }
    }
    for allowed in ALLOWED_BELOW {
        if is_within(t, allowed) && t != *allowed {
            return None;
        }
    }
    for p in PROTECTED {
        if t == p.path || (p.below && is_within(t, p.path)) {
            return Some(format!("it would shadow {} ({})", p.path, p.why));
        }
        if is_within(p.path, t) {
            return Some(format!("it would hide {} ({}) beneath it", p.path, p.why));
        }
    }
    None
}

/// Editor and desktop droppings that are never mounted: backup files
/// (`*~`), vim swap files (`.*.swp`, `.swo`, `.swx`), Emacs autosave and
/// lock files (`#*#`, `.#*`) and macOS `.DS_Store`.
pub fn dropping(name: &str) -> Option<&'static str> {
    if name == ".DS_Store" {
        Some("macOS metadata file")
    } else if matches!(
        name,
        ".git" | ".gitignore" | ".gitkeep" | ".gitattributes" | ".hgignore"
    ) {
        Some("version control file")
    } else if name.ends_with('~') {
        Some("editor backup file")
    } else if name.starts_with('.')
        && (name.ends_with(".swp") || name.ends_with(".swo") || name.ends_with(".swx"))
    {
        Some("vim swap file")
    } else if name.starts_with(".#")
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
    {
        Some("Emacs autosave or lock file")
    } else {
        None
    }
}

/// The container path for a path relative to `custom/`.
fn target_of(rel: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                match n.to_str() {
                    Some(s) => parts.push(s),
                    None => return Err(
                        "its name is not valid UTF-8; Compose files cannot express it, rename it"
                            .into(),
                    ),
                }
            }
            _ => return Err("unexpected path component".into()),
        }
    }
    if parts.first() == Some(&ROOT_DIR) {
        Ok(format!("/{}", parts[1..].join("/")))
    } else {
        Ok(format!("{SOURCE_TREE}/{}", parts.join("/")))
    }
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Scan {
    pub mounts: Vec<Mount>,
    pub skipped: Vec<Skipped>,
}

/// Show a path relative to `custom/` the way users type it.
pub fn shown(rel: &Path) -> String {
    Path::new("custom").join(rel).display().to_string()
}

/// Walk `custom` (an absolute path) and decide every entry. All problems
/// are collected and returned together as one error.
pub fn scan(custom: &Path, claims: &[Claim]) -> Result<Scan> {
    // 1. custom/ itself: absent is nothing to mount.
    let Some(real_custom) = open_custom(custom)? else {
        return Ok(Scan::default());
    };
    let mut scanner = Scanner {
        custom,
        claims,
        real_custom,
        out: Scan::default(),
        problems: Vec::new(),
        in_dir_mount: None,
    };
    if fs::symlink_metadata(custom.join(MOUNT_DIR_MARKER)).is_ok() {
        scanner.problem(
            Path::new(MOUNT_DIR_MARKER),
            "custom/ itself cannot be mounted whole (it would replace /opt/chatmail); put .mount-dir into a subdirectory",
        );
    }

    // 2. Every entry, in name order.
    let mut walk = walkdir::WalkDir::new(custom)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let p = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(anyhow::Error::new(e)).with_context(|| format!("cannot read {p}"));
            }
        };
        if scanner.visit(&entry) == Descend::No {
            walk.skip_current_dir();
        }
    }

    // 3. Mounts that get in each other's way.
    let Scanner {
        mut out,
        mut problems,
        ..
    } = scanner;
    out.mounts.sort_by(|a, b| a.target.cmp(&b.target));
    problems.extend(conflicts(&out.mounts));

    // 4. Every problem at once, or the mounts.
    if !problems.is_empty() {
        return Err(refusal(problems));
    }
    Ok(out)
}

/// `custom/`'s real path, or `None` when it does not exist.
fn open_custom(custom: &Path) -> Result<Option<PathBuf>> {
    let meta = match fs::metadata(custom) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", custom.display())),
    };
    if !meta.is_dir() {
        return Err(crate::error::usage(format!(
            "{} is not a directory; custom/ holds the files to mount into the container",
            custom.display()
        )));
    }
    fs::canonicalize(custom)
        .map(Some)
        .with_context(|| format!("cannot resolve {}", custom.display()))
}

/// Whether the walk goes into a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Descend {
    Yes,
    No,
}

/// The walk's state: what is decided so far.
struct Scanner<'a> {
    custom: &'a Path,
    /// The compose files' own mounts.
    claims: &'a [Claim],
    /// `custom` with symlinks resolved: where symlinks must stay inside.
    real_custom: PathBuf,
    out: Scan,
    problems: Vec<String>,
    /// Index into `out.mounts` of the directory mount being walked, if any.
    in_dir_mount: Option<usize>,
}

impl Scanner<'_> {
    fn problem(&mut self, rel: &Path, why: &str) {
        self.problems.push(format!("{}: {why}", shown(rel)));
    }

    /// Decide one entry.
    fn visit(&mut self, entry: &walkdir::DirEntry) -> Descend {
        let path = entry.path();
        let rel = relative(path, self.custom);
        let ft = entry.file_type();
        if self.inside_dir_mount(path, &rel, ft) {
            return Descend::Yes;
        }
        let name = entry.file_name().to_string_lossy();
        if ft.is_dir() {
            return self.directory(path, rel, &name);
        }
        self.file(entry.depth(), path, rel, &name, ft);
        Descend::Yes
    }

    /// Inside a whole-directory mount: validate and record, mount nothing.
    /// Returns whether the entry was inside one.
    fn inside_dir_mount(&mut self, path: &Path, rel: &Path, ft: fs::FileType) -> bool {
        let Some(i) = self.in_dir_mount else {
            return false;
        };
        let dir_rel = self.out.mounts[i].rel.clone();
        if !rel.starts_with(&dir_rel) {
            self.in_dir_mount = None;
            return false;
        }
        let inner = rel.strip_prefix(&dir_rel).unwrap_or(rel).to_path_buf();
        if ft.is_dir() {
            return true;
        } else if ft.is_file() {
            self.out.mounts[i].contents.push(inner);
        } else if ft.is_symlink() {
            match check_symlink(path, &self.real_custom) {
                Ok(_) => self.out.mounts[i].contents.push(inner),
                Err(why) => self.problem(rel, &why),
            }
        } else {
            self.problem(rel, &special_file(path));
        }
        true
    }

    /// A directory: skipped (version control), mounted whole (`.mount-dir`)
    /// or walked into.
    fn directory(&mut self, path: &Path, rel: PathBuf, name: &str) -> Descend {
        if matches!(name, ".git" | ".hg" | ".svn") {
            // custom/ kept in version control: its metadata is not a
            // customisation of the relay.
            self.out.skipped.push(Skipped {
                rel,
                reason: "version control metadata",
            });
            return Descend::No;
        }
        if !fs::symlink_metadata(path.join(MOUNT_DIR_MARKER)).is_ok_and(|m| m.is_file()) {
            return Descend::Yes;
        }
        let target = match target_of(&rel) {
            Ok(t) => t,
            Err(why) => {
                self.problem(&rel, &why);
                return Descend::No;
            }
        };
        if let Some(why) = refuse_target(&target, self.claims) {
            // Walk on file by file, so problems inside are reported too.
            self.problem(&rel, &format!("cannot be mounted at {target}: {why}"));
            return Descend::Yes;
        }
        self.out.mounts.push(Mount {
            rel,
            source: path.to_path_buf(),
            target,
            kind: MountKind::Dir,
            read_only: true,
            contents: Vec::new(),
        });
        self.in_dir_mount = Some(self.out.mounts.len() - 1);
        Descend::Yes
    }

    /// Anything but a directory: skipped, refused, or mounted as a file.
    fn file(&mut self, depth: usize, path: &Path, rel: PathBuf, name: &str, ft: fs::FileType) {
        if let Some(reason) = dropping(name) {
            self.out.skipped.push(Skipped { rel, reason });
            return;
        }
        if depth == 1 && name == "README.md" {
            self.out.skipped.push(Skipped {
                rel,
                reason: "the README of custom/ itself",
            });
            return;
        }
        if depth == 1 && name == ROOT_DIR {
            self.problem(
                &rel,
                "_root_ must be a directory: custom/_root_/etc/x is mounted at /etc/x",
            );
            return;
        }
        if name == MOUNT_DIR_MARKER {
            // A marker that is not a regular file, or in custom/ itself
            // (reported above); a regular one was handled with its directory.
            if !ft.is_file() {
                self.problem(&rel, "the .mount-dir marker must be a regular file");
            }
            return;
        }
        let source = match self.file_source(path, ft) {
            Ok(s) => s,
            Err(why) => return self.problem(&rel, &why),
        };
        let target = match target_of(&rel) {
            Ok(t) => t,
            Err(why) => return self.problem(&rel, &why),
        };
        if let Some(why) = refuse_target(&target, self.claims) {
            return self.problem(&rel, &format!("cannot be mounted at {target}: {why}"));
        }
        self.out.mounts.push(Mount {
            rel,
            source,
            target,
            kind: MountKind::File,
            read_only: true,
            contents: Vec::new(),
        });
    }

    /// What a file mount's source is: the file, or the regular file a
    /// symlink inside `custom/` leads to.
    fn file_source(&self, path: &Path, ft: fs::FileType) -> Result<PathBuf, String> {
        if ft.is_file() {
            return Ok(path.to_path_buf());
        }
        if !ft.is_symlink() {
            return Err(special_file(path));
        }
        let real = check_symlink(path, &self.real_custom)?;
        if real.is_file() {
            Ok(real)
        } else if !real.is_dir() {
            Err(format!(
                "is a symlink to {}, {}; {ONLY_REGULAR}",
                real.display(),
                special_kind(&real)
            ))
        } else {
            Err("is a symlink to a directory; only symlinks to files are mounted (to mount a directory whole, put a .mount-dir file into it)".into())
        }
    }
}

/// Mounts (sorted by target) that cannot go together: two at one target,
/// or one inside a whole-directory mount, which would need a mount point
/// in a read-only directory the container cannot create it in.
fn conflicts(mounts: &[Mount]) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in mounts.windows(2) {
        if pair[0].target == pair[1].target {
            problems.push(format!(
                "{} and {} would both be mounted at {}; remove one of them",
                shown(&pair[0].rel),
                shown(&pair[1].rel),
                pair[0].target
            ));
        }
    }
    let dirs: Vec<&Mount> = mounts.iter().filter(|m| m.kind == MountKind::Dir).collect();
    for m in mounts {
        for d in &dirs {
            let inside = m
                .target
                .strip_prefix(d.target.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
            if inside {
                problems.push(format!(
                    "{} would be mounted at {}, inside the directory mount of {} ({}); put the file into that directory instead",
                    shown(&m.rel),
                    m.target,
                    shown(&d.rel),
                    d.target
                ));
            }
        }
    }
    problems
}

/// One usage error listing every problem.
fn refusal(problems: Vec<String>) -> anyhow::Error {
    let n = problems.len();
    let mut msg = format!(
        "custom/ cannot be mounted: {n} problem{} (nothing was written)",
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        msg.push_str("\n  - ");
        msg.push_str(&p);
    }
    crate::error::usage(msg)
}

/// `path` relative to `base`, which walkdir built it from. Slicing the
/// bytes avoids a component-wise comparison per entry.
fn relative(path: &Path, base: &Path) -> PathBuf {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (p, b) = (path.as_os_str().as_bytes(), base.as_os_str().as_bytes());
    if p.len() > b.len() + 1 && p.starts_with(b) && p[b.len()] == b'/' {
        PathBuf::from(OsStr::from_bytes(&p[b.len() + 1..]))
    } else {
        path.strip_prefix(base).unwrap_or(path).to_path_buf()
    }
}

/// Resolve a symlink and make sure it stays inside `custom/`; returns the
/// resolved path.
fn check_symlink(path: &Path, real_custom: &Path) -> Result<PathBuf, String> {
    let link = fs::read_link(path)
        .map(|l| l.display().to_string())
        .unwrap_or_else(|_| "?".into());
    match fs::canonicalize(path) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(format!(
            "is a symlink to {link}, which is a symlink loop; point it at a file in custom/"
        )),
        Err(_) => Err(format!(
            "is a symlink to {link}, which does not exist; remove it or fix its target"
        )),
        Ok(real) if !real.starts_with(real_custom) => Err(format!(
            "is a symlink to {link}, which is outside custom/; copy the file into custom/ instead \
             (mounting it would expose {} to the container)",
            real.display()
        )),
        Ok(real) => Ok(real),
    }
}

/// What kind of non-regular file `path` is, for messages.
fn special_kind(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => "a fifo (named pipe)",
        Ok(m) if m.file_type().is_socket() => "a socket",
        Ok(m) if m.file_type().is_block_device() => "a block device",
        Ok(m) if m.file_type().is_char_device() => "a character device",
        _ => "not a regular file",
    }
}

const ONLY_REGULAR: &str = "only regular files and directories can be mounted, remove it";

fn special_file(path: &Path) -> String {
    format!("is {}; {ONLY_REGULAR}", special_kind(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            target_of(Path::new("www/src/index.md")).unwrap(),
            "/opt/chatmail/www/src/index.md"
        );
        assert_eq!(
            target_of(Path::new("_root_/etc/postfix/master.cf")).unwrap(),
            "/etc/postfix/master.cf"
        );
    }

    /// The appliance's own compose file's mounts.
    fn appliance_claims() -> Vec<Claim> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::deployment::COMPOSE_FILE);
        crate::engine::claimed_mounts(&[file])
            .unwrap()
            .into_iter()
            .map(|m| Claim {
                target: m.target,
                why: m.what,
            })
            .collect()
    }

    #[test]
    fn protected_targets() {
        let claims = appliance_claims();
        for bad in [
            "/tmp",
            "/tmp/x",
            "/var/lib/chatmail-docker/tls",
            "/sys/fs/cgroup",
            "/home/vmail/x",
            "/home",
            "/etc/dkimkeys/k.private",
            "/var/lib/acme/live/x/fullchain",
            "/var/lib",
            "/var",
            "/etc",
            "/lib/systemd/system/postfix.service",
            "/usr/lib/systemd/systemd",
            "/etc/systemd/system.conf",
            "/etc/systemd/system",
            "/sbin/init",
            "/run/x",
            "/opt/chatmail",
            "/opt",
            "/etc/chatmail/chatmail.ini",
            "/etc/chatmail",
            "/",
        ] {
            assert!(
                refuse_target(bad, &claims).is_some(),
                "{bad} should be refused"
            );
        }
        for good in [
            "/etc/postfix/master.cf",
            "/opt/chatmail/www/src/index.md",
            "/opt/chatmail/www",
            "/etc/systemd/system/postfix.service.d/override.conf",
            "/var/lib/foo",
            "/homepage",
            "/etc/chatmail/other.conf",
        ] {
            assert_eq!(
                refuse_target(good, &claims),
                None,
                "{good} should be allowed"
            );
        }
    }

    #[test]
    fn within() {
        assert!(is_within("/home/vmail", "/home"));
        assert!(is_within("/home", "/home"));
        assert!(!is_within("/homepage", "/home"));
        assert!(is_within("/etc", "/"));
        assert_eq!(refuse_target("/etc/", &[]), refuse_target("/etc", &[]));
        assert!(refuse_target("", &[]).is_some());
        assert_eq!(
            relative(Path::new("/a/custom/x/y"), Path::new("/a/custom")),
            PathBuf::from("x/y")
        );
    }

    #[test]
    fn droppings() {
        for d in [
            "a~",
            ".x.swp",
            ".x.swo",
            ".DS_Store",
            "#a#",
            ".#a",
            ".gitignore",
            ".git",
        ] {
            assert!(dropping(d).is_some(), "{d}");
        }
        for f in ["index.md", "#", "a#", "swp", "x.swp"] {
            assert!(dropping(f).is_none(), "{f}");
        }
    }

    #[test]
    fn version_control_metadata_is_not_mounted() {
        let d = tempfile::tempdir().unwrap();
        let custom = d.path().join("custom");
        crate::host::write_tree(
            &custom,
            &[
                (".git/objects/", ""),
                (".git/HEAD", "ref: refs/heads/main\n"),
                (".gitignore", "*.bak\n"),
                ("www/src/index.md", "# hi\n"),
                ("www/src/.gitkeep", ""),
            ],
        );
        let scan = scan(&custom, &[]).unwrap();
        let targets: Vec<&str> = scan.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, vec!["/opt/chatmail/www/src/index.md"]);
        let skipped: Vec<String> = scan
            .skipped
            .iter()
            .map(|s| s.rel.display().to_string())
            .collect();
        for s in [".git", ".gitignore", "www/src/.gitkeep"] {
            assert!(skipped.iter().any(|k| k == s), "{s} not in {skipped:?}");
        }
    }

    #[test]
    fn mounts_inside_a_directory_mount_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let custom = d.path().join("custom");
        crate::host::write_tree(
            &custom,
            &[
                ("www/.mount-dir", ""),
                ("www/index.md", "# hi\n"),
                ("_root_/opt/chatmail/www/src/extra.md", "x"),
                ("www-theme/a.css", "x"),
            ],
        );
        let err = format!("{:#}", scan(&custom, &[]).unwrap_err());
        assert!(
            err.contains("inside the directory mount of custom/www"),
            "{err}"
        );
        assert!(err.contains("extra.md"), "{err}");
        assert!(
            !err.contains("a.css"),
            "a sibling with a common prefix is fine: {err}"
        );
    }
}
