//! A directory tree reached only through file descriptors.
//!
//! A [`Tree`] is a directory opened once. Every path below it is looked up
//! by the kernel relative to that descriptor, never following a symlink on
//! the way and never leaving the tree (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`; on kernels before 5.6, one `openat(O_NOFOLLOW)`
//! per component, which gives the same guarantee). The last component is
//! never followed either: a symlink is handled as the link itself.
//!
//! This is how `backup` reads what it scanned (a file swapped for a symlink
//! or a FIFO meanwhile is refused, never followed, never blocks) and how
//! `restore` writes an archive's entries (a symlink an archive made can
//! never lead a later entry, a mode or an owner outside the tree).
//!
//! Paths given to a tree are relative and `/`-separated; `.`, `..`, empty
//! components and a leading `/` are refused before the kernel sees them.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// A directory and everything below it.
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
    /// Where it is, for messages.
    shown: PathBuf,
}

/// Whether the kernel has `openat2` (0: not known yet, 1: yes, 2: no).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// The directory `name` in `at`, itself no link.
fn open_dir_at<P: rustix::path::Arg>(at: BorrowedFd<'_>, name: P) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// The error for a relative path a tree refuses.
fn bad_path(rel: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{rel:?} is not a plain relative path"),
    )
}

/// Whether `rel` is `a/b/c`: relative, no `.`/`..`/empty components, no NUL.
pub fn is_plain(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `rel` split into its parent directory (`None`: the tree itself) and
/// its last component.
fn split(rel: &str) -> io::Result<(Option<&str>, &OsStr)> {
    if !is_plain(rel) {
        return Err(bad_path(rel));
    }
    Ok(match rel.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), OsStr::new(name)),
        None => (None, OsStr::new(rel)),
    })
}

/// A directory descriptor: the tree's own, or one opened below it.
pub enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Below(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Below(fd) => fd.as_fd(),
        }
    }
}

impl Tree {
    /// Open the directory `path`; symlinks in `path` itself are followed
    /// (the caller chose it), nothing below it ever is.
    pub fn open(path: &Path) -> io::Result<Tree> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Tree {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// A tree from a directory descriptor (`shown` names it in messages).
    pub fn from_fd(fd: OwnedFd, shown: PathBuf) -> Tree {
        Tree { fd, shown }
    }

    /// Where the tree is, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// `rel` under the tree, for messages.
    pub fn show(&self, rel: &str) -> PathBuf {
        self.shown.join(rel)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open `rel` below `dir` with `flags`, no symlink anywhere on the way
    /// or at the end (`O_NOFOLLOW` is always added).
    fn open_below(
        dir: BorrowedFd<'_>,
        rel: &str,
        flags: OFlags,
        mode: Mode,
    ) -> io::Result<OwnedFd> {
        if !is_plain(rel) {
            return Err(bad_path(rel));
        }
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if OPENAT2.load(Ordering::Relaxed) != 2 {
            match rustix::fs::openat2(
                dir,
                rel,
                flags,
                mode,
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::NOSYS) => OPENAT2.store(2, Ordering::Relaxed),
                // A seccomp filter (older Docker profiles) may answer EPERM.
                Err(rustix::io::Errno::PERM) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                    OPENAT2.store(2, Ordering::Relaxed)
                }
                other => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return other.map_err(errno);
                }
            }
        }
        // One component at a time, none followed.
        let (parent, name) = split(rel)?;
        let mut cur: Option<OwnedFd> = None;
        if let Some(parent) = parent {
            for comp in parent.split('/') {
                let at = cur.as_ref().map_or(dir, |f| f.as_fd());
                cur = Some(open_dir_at(at, comp)?);
            }
        }
        let at = cur.as_ref().map_or(dir, |f| f.as_fd());
        rustix::fs::openat(at, name, flags, mode).map_err(errno)
    }

    /// The directory holding `rel` and `rel`'s last component.
    pub fn parent<'a>(&self, rel: &'a str) -> io::Result<(DirFd<'_>, &'a OsStr)> {
        let (parent, name) = split(rel)?;
        Ok(match parent {
            None => (DirFd::Root(self.fd.as_fd()), name),
            Some(p) => (
                DirFd::Below(Self::open_below(
                    self.fd.as_fd(),
                    p,
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )?),
                name,
            ),
        })
    }

    /// The subdirectory `rel` as a tree of its own.
    pub fn subtree(&self, rel: &str) -> io::Result<Tree> {
        let fd = Self::open_below(
            self.fd.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok(Tree {
            fd,
            shown: self.show(rel),
        })
    }

    /// `lstat` of `rel`; `None` when nothing is there.
    pub fn stat(&self, rel: &str) -> io::Result<Option<rustix::fs::Stat>> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Open the regular file `rel` for reading. Never blocks and never
    /// follows: a symlink, FIFO, socket or device there is an error of kind
    /// [`io::ErrorKind::InvalidData`] saying what it is (a FIFO is opened
    /// non-blocking, seen for what it is and closed).
    pub fn open_file(&self, rel: &str) -> io::Result<(File, rustix::fs::Stat)> {
        let fd = match Self::open_below(
            self.fd.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // O_NOFOLLOW on a symlink, or a symlink on the way.
            Err(e)
                if e.raw_os_error() == Some(libc::ELOOP)
                    || e.raw_os_error() == Some(libc::EXDEV) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is a symlink (or is reached through one) now",
                ))
            }
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it is a {} now", super::kind_name(kind)),
            ));
        }
        // Reads block again (a regular file never blocks anyway).
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(errno)?;
        Ok((File::from(fd), st))
    }

    /// Create the regular file `rel` (it must not exist) with `mode`.
    pub fn create_file(&self, rel: &str, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Make the directory `rel` (its parent must exist); an existing
    /// directory is fine, anything else there is an error.
    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                let st =
                    rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    Ok(())
                } else {
                    Err(errno(rustix::io::Errno::EXIST))
                }
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// Make `rel` and every directory above it that is missing.
    pub fn mkdir_all(&self, rel: &str, mode: u32) -> io::Result<()> {
        if !is_plain(rel) {
            return Err(bad_path(rel));
        }
        for (i, c) in rel.char_indices() {
            if c == '/' {
                self.mkdir(&rel[..i], mode)?;
            }
        }
        self.mkdir(rel, mode)
    }

    /// The symlink `rel` with the text `target` (never followed here).
    pub fn symlink(&self, target: &OsStr, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(errno)
    }

    /// The text of the symlink `rel`.
    pub fn read_link(&self, rel: &str) -> io::Result<std::ffi::OsString> {
        let (dir, name) = self.parent(rel)?;
        let t = rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(errno)?;
        Ok(std::ffi::OsString::from_vec(t.into_bytes()))
    }

    /// A second name `rel` for the file `existing` of this tree (the link
    /// itself, never what a symlink there leads to).
    pub fn hard_link(&self, existing: &str, rel: &str) -> io::Result<()> {
        let (from_dir, from) = self.parent(existing)?;
        let (to_dir, to) = self.parent(rel)?;
        rustix::fs::linkat(&from_dir, from, &to_dir, to, AtFlags::empty()).map_err(errno)
    }

    /// Remove `rel` and, for a directory, everything below it; symlinks are
    /// removed, never followed. Nothing there is fine.
    pub fn remove_all(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        remove_at(dir.as_fd(), name)
    }

    /// Set the owner of `rel` (a symlink's own).
    pub fn chown(&self, rel: &str, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::chownat(
            &dir,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno)
    }

    /// Set the mode of `rel`, which must not be a symlink (Linux cannot
    /// change a link's mode; `chmod` would change what it leads to).
    pub fn chmod(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        // The object itself, as a handle that follows nothing.
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a symlink has no mode of its own",
            ));
        }
        // Through the handle: the inode just checked, whatever the name
        // points to by now.
        let proc = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
        match rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(mode)) {
            Ok(()) => Ok(()),
            // No /proc (a minimal chroot): by name, still without following
            // a symlink on the way (the last component was checked above).
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(errno)
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// Set the modification (and access) time of `rel` (a symlink's own).
    pub fn set_mtime(&self, rel: &str, secs: i64, nsecs: u32) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nsecs as _,
        };
        rustix::fs::utimensat(
            &dir,
            name,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno)
    }
}

/// Remove `name` in `dir`; a directory with everything below it, through
/// descriptors only.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(errno(e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        };
    }
    let sub = open_dir_at(dir, name)?;
    let mut names = Vec::new();
    {
        let mut list = rustix::fs::Dir::read_from(&sub).map_err(errno)?;
        for item in list.by_ref() {
            let item = item.map_err(errno)?;
            let n = item.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
            }
        }
    }
    for n in &names {
        remove_at(sub.as_fd(), n)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Read, Write};

    fn tree() -> (tempfile::TempDir, Tree) {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("t/a")).unwrap();
        fs::write(d.path().join("t/a/f"), "data").unwrap();
        fs::create_dir_all(d.path().join("outside")).unwrap();
        fs::write(d.path().join("outside/secret"), "host").unwrap();
        std::os::unix::fs::symlink("../outside", d.path().join("t/up")).unwrap();
        std::os::unix::fs::symlink("a/f", d.path().join("t/lf")).unwrap();
        let t = Tree::open(&d.path().join("t")).unwrap();
        (d, t)
    }

    #[test]
    fn paths_that_are_not_plain_are_refused_before_the_kernel_sees_them() {
        for p in ["", "/etc", "a/../b", "./a", "a//b", "a/", "..", "a\0b"] {
            assert!(!is_plain(p), "{p:?}");
        }
        assert!(is_plain("a/b.c/d"));
        let (_d, t) = tree();
        assert!(t.stat("../outside").is_err());
        assert!(t.create_file("/tmp/x", 0o600).is_err());
    }

    #[test]
    fn nothing_is_followed_on_the_way_or_at_the_end() {
        let (d, t) = tree();
        let mut s = String::new();
        t.open_file("a/f")
            .unwrap()
            .0
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "data");
        let err = t.open_file("lf").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(t.open_file("up/secret").is_err());
        assert!(t.create_file("up/new", 0o600).is_err());
        assert!(t.mkdir_all("up/x/y", 0o700).is_err());
        assert!(t.symlink(OsStr::new("/etc"), "up/l").is_err());
        assert!(t.chmod("lf", 0o777).is_err());
        assert!(t.chown("up/secret", 0, 0).is_err());
        assert!(t.hard_link("up/secret", "h").is_err());
        t.remove_all("up").unwrap();
        assert_eq!(fs::read(d.path().join("outside/secret")).unwrap(), b"host");
        assert!(fs::symlink_metadata(d.path().join("t/up")).is_err());
    }

    #[test]
    fn a_fifo_is_seen_for_what_it_is_and_never_blocks() {
        let (d, t) = tree();
        crate::host::mkfifo(&d.path().join("t/a/fifo"));
        let err = t.open_file("a/fifo").unwrap_err();
        assert!(err.to_string().to_lowercase().contains("fifo"), "{err}");
    }

    #[test]
    fn writes_stay_inside_and_remove_all_follows_nothing() {
        let (d, t) = tree();
        t.mkdir_all("x/y/z", 0o755).unwrap();
        t.create_file("x/y/z/f", 0o600)
            .unwrap()
            .write_all(b"1")
            .unwrap();
        assert!(t.create_file("x/y/z/f", 0o600).is_err(), "O_EXCL");
        t.hard_link("x/y/z/f", "x/h").unwrap();
        t.symlink(OsStr::new("../outside"), "x/y/out").unwrap();
        assert_eq!(t.read_link("x/y/out").unwrap(), "../outside");
        t.chmod("x/y/z/f", 0o640).unwrap();
        t.set_mtime("x/y/out", 7, 8).unwrap();
        assert_eq!(t.stat("x/y/out").unwrap().unwrap().st_mtime, 7);
        t.remove_all("x").unwrap();
        assert!(t.stat("x").unwrap().is_none());
        assert!(d.path().join("outside/secret").exists());
    }
}
