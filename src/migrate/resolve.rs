//! Symlinks, resolved the way the relay (and later the container) sees them.
//!
//! Two questions are answered here, both without ever leaving the host
//! root (`--root`):
//!
//! - [`in_root`]: where a host path really is. Every component is looked up
//!   under the root, and a symlink met on the way is followed as if the root
//!   were `/` (an absolute target starts again at the root, `..` stops at
//!   it), like `chroot` or `openat2(RESOLVE_IN_ROOT)`. So `/etc/dkimkeys ->
//!   /srv/dkim` on a mounted disk leads to the disk's `/srv/dkim`, never to
//!   the live host's.
//! - [`contained`]: whether a symlink inside a copied tree still means the
//!   same thing in the copy. The container mounts each tree at the path it
//!   had on the host, so a link is kept as a link only when following it
//!   (and every link met on the way) never leaves the tree; otherwise the
//!   copy gets what the link leads to.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Links followed in one resolution before it counts as a loop (Linux's
/// limit, `MAXSYMLINKS`).
pub const MAX_LINKS: u32 = 40;

/// Why a path does not lead anywhere.
#[derive(Debug)]
pub enum Unresolved {
    /// A component does not exist; the host path up to it.
    Missing(PathBuf),
    /// More than [`MAX_LINKS`] links: a symlink loop; the link last met.
    Loop(PathBuf),
    /// A component that must be a directory is not; the host path up to it.
    NotDir(PathBuf),
    /// Any other error reading the host path.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::show::Shown as _;
        match self {
            Unresolved::Missing(p) => write!(f, "{} does not exist", p.shown()),
            Unresolved::Loop(p) => write!(
                f,
                "symlink loop: following {} leads back to itself",
                p.shown()
            ),
            Unresolved::NotDir(p) => write!(f, "{} is not a directory", p.shown()),
            Unresolved::Io(p, e) => write!(f, "cannot read {}: {e}", p.shown()),
        }
    }
}

impl std::error::Error for Unresolved {}

fn parts(p: &Path) -> impl Iterator<Item = Component<'_>> {
    p.components().filter(|c| {
        !matches!(
            c,
            Component::RootDir | Component::CurDir | Component::Prefix(_)
        )
    })
}

fn join(base: &Path, names: &[OsString]) -> PathBuf {
    let mut p = base.to_path_buf();
    p.extend(names);
    p
}

/// The host path (as the host knows it, `/...`) of `names` below the root.
fn host_path(names: &[OsString]) -> PathBuf {
    join(Path::new("/"), names)
}

/// Where the host path `path` (absolute, as the relay knows it) is under
/// `root`, with every symlink on the way followed inside the root. The
/// result has no symlink in it below `root`; it exists (it may be any kind
/// of file).
pub fn in_root(root: &Path, path: &Path) -> Result<PathBuf, Unresolved> {
    let mut cur: Vec<OsString> = Vec::new();
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let mut links = 0;
    push_front(&mut todo, path);
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let here = join(root, &cur).join(&name);
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(m) => m,
            Err(e) => {
                cur.push(name);
                let at = host_path(&cur);
                return Err(match e.raw_os_error() {
                    Some(libc::ENOENT) => Unresolved::Missing(at),
                    Some(libc::ENOTDIR) => Unresolved::NotDir(at),
                    _ => Unresolved::Io(at, e),
                });
            }
        };
        if !meta.file_type().is_symlink() {
            if !todo.is_empty() && !meta.is_dir() {
                cur.push(name);
                return Err(Unresolved::NotDir(host_path(&cur)));
            }
            cur.push(name);
            continue;
        }
        links += 1;
        let mut at = cur.clone();
        at.push(name);
        if links > MAX_LINKS {
            return Err(Unresolved::Loop(host_path(&at)));
        }
        let target = std::fs::read_link(&here).map_err(|e| Unresolved::Io(host_path(&at), e))?;
        if target.is_absolute() {
            cur.clear();
        }
        push_front(&mut todo, &target);
    }
    Ok(join(root, &cur))
}

/// Put the components of `p` in front of `todo`, in order.
fn push_front(todo: &mut VecDeque<OsString>, p: &Path) {
    let names: Vec<OsString> = parts(p).map(|c| c.as_os_str().to_os_string()).collect();
    for n in names.into_iter().rev() {
        todo.push_front(n);
    }
}

/// Whether the symlink with target `target`, in the directory `parent`
/// (relative to the tree's real root `tree`), stays inside the tree when
/// followed, through any number of further links. `mounted_at` is the path
/// the tree has on the host and in the container (`/var/lib/acme`): an
/// absolute target below it is inside; without it, any absolute target
/// leaves the tree. A target that does not exist inside the tree (a dangling
/// link, a loop) counts as inside: the copy is the same link, leading to the
/// same nothing.
pub fn contained(tree: &Path, mounted_at: Option<&Path>, parent: &Path, target: &Path) -> bool {
    let mut cur: Vec<OsString> = parts(parent)
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let mut links = 0;
    let mut target = target.to_path_buf();
    loop {
        if target.is_absolute() {
            match mounted_at.and_then(|m| target.strip_prefix(m).ok()) {
                Some(rest) => {
                    cur.clear();
                    push_front(&mut todo, rest);
                }
                None => return false,
            }
        } else {
            push_front(&mut todo, &target);
        }
        let next = loop {
            let Some(name) = todo.pop_front() else {
                return true;
            };
            if name == ".." {
                if cur.pop().is_none() {
                    return false;
                }
                continue;
            }
            let here = join(tree, &cur).join(&name);
            match std::fs::symlink_metadata(&here) {
                Err(_) => return true,
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return true;
                    }
                    match std::fs::read_link(&here) {
                        Ok(t) => break t,
                        Err(_) => return true,
                    }
                }
                Ok(m) => {
                    if !todo.is_empty() && !m.is_dir() {
                        return true;
                    }
                    cur.push(name);
                }
            }
        };
        target = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_stay_in_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        crate::host::write_tree(r, &[("srv/dkim/", ""), ("etc/", "")]);
        symlink("/srv/dkim", r.join("etc/dkimkeys")).unwrap();
        symlink("../../../../../srv", r.join("up")).unwrap();
        assert_eq!(
            in_root(r, Path::new("/etc/dkimkeys")).unwrap(),
            r.join("srv/dkim")
        );
        assert_eq!(
            in_root(r, Path::new("/up/dkim")).unwrap(),
            r.join("srv/dkim")
        );
        symlink("loop", r.join("loop")).unwrap();
        assert!(matches!(
            in_root(r, Path::new("/loop/x")),
            Err(Unresolved::Loop(_))
        ));
        assert!(matches!(
            in_root(r, Path::new("/etc/nope")),
            Err(Unresolved::Missing(p)) if p == Path::new("/etc/nope")
        ));
    }

    /// The kernel's answer: `openat2(RESOLVE_IN_ROOT)`, as (dev, ino), or
    /// None when it finds nothing; Err when openat2 is unavailable here.
    fn kernel(root: &Path, path: &Path) -> Result<Option<(u64, u64)>, ()> {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
        use std::os::unix::fs::MetadataExt;
        let dir = fs::File::open(root).unwrap();
        // EAGAIN: a rename anywhere on the system (other tests) raced a
        // `..`; the kernel asks to try again.
        let open = || {
            openat2(
                &dir,
                path,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            )
        };
        let mut r = open();
        while r.as_ref().err() == Some(&rustix::io::Errno::AGAIN) {
            r = open();
        }
        match r {
            Ok(fd) => {
                let m = fs::File::from(fd).metadata().unwrap();
                Ok(Some((m.dev(), m.ino())))
            }
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => Err(()),
            Err(_) => Ok(None),
        }
    }

    const NAMES: [&str; 4] = ["a", "b", "c", ".."];

    /// A path of 1-4 components from [`NAMES`], absolute or relative.
    fn path_of(parts: &[u8], absolute: bool) -> PathBuf {
        let mut p = PathBuf::from(if absolute { "/" } else { "" });
        for &i in parts {
            p.push(NAMES[i as usize % NAMES.len()]);
        }
        p
    }

    proptest::proptest! {
        /// Random layouts of directories, files and symlinks (absolute,
        /// relative, escaping, dangling, looping): in_root finds what the
        /// kernel finds with the same root, or, where the kernel finds
        /// nothing, an error.
        #[test]
        fn in_root_agrees_with_the_kernel(
            layout in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 1..3), 0u8..3,
                 proptest::collection::vec(0u8..4, 1..5), proptest::bool::ANY),
                1..12,
            ),
            queries in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 1..5), proptest::bool::ANY),
                1..12,
            ),
        ) {
            use std::os::unix::fs::MetadataExt;
            let t = tempfile::tempdir().unwrap();
            let r = t.path();
            for (at, kind, target, absolute) in &layout {
                let p = r.join(path_of(at, false));
                // Never through a symlink: it could lead off the root.
                let parent_ok = p.parent().unwrap().ancestors()
                    .take_while(|a| a.starts_with(r) && *a != r)
                    .all(|a| fs::symlink_metadata(a).is_ok_and(|m| m.is_dir()));
                if !parent_ok || fs::symlink_metadata(&p).is_ok() {
                    continue;
                }
                match kind {
                    0 => fs::create_dir(&p).unwrap(),
                    1 => fs::write(&p, b"x").unwrap(),
                    _ => symlink(path_of(target, *absolute), &p).unwrap(),
                }
            }
            for (q, absolute) in &queries {
                let q = path_of(q, *absolute);
                let Ok(k) = kernel(r, &q) else { return Ok(()) };
                let ours = in_root(r, &q)
                    .ok()
                    .and_then(|p| fs::metadata(p).ok())
                    .map(|m| (m.dev(), m.ino()));
                proptest::prop_assert_eq!(ours, k, "{}", q.display());
            }
        }
    }

    #[test]
    fn containment_follows_links_inside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        crate::host::write_tree(r, &[("certs/a/", ""), ("live/", "")]);
        symlink("../certs/a", r.join("live/d")).unwrap();
        let m = Some(Path::new("/var/lib/acme"));
        assert!(contained(r, m, Path::new("live"), Path::new("../certs/a")));
        assert!(contained(r, m, Path::new("x"), Path::new("../live/d/../a")));
        assert!(contained(
            r,
            m,
            Path::new(""),
            Path::new("/var/lib/acme/live/d")
        ));
        assert!(!contained(r, m, Path::new(""), Path::new("/srv/x")));
        assert!(!contained(
            r,
            None,
            Path::new(""),
            Path::new("/var/lib/acme/live")
        ));
        assert!(!contained(r, m, Path::new("live"), Path::new("../../x")));
        // Through a link that leaves the tree: not the same in the copy.
        symlink("/srv", r.join("out")).unwrap();
        assert!(!contained(r, m, Path::new(""), Path::new("out/../certs")));
        assert!(contained(r, m, Path::new(""), Path::new("dangling")));
    }
}
