//! The copy engine: mirror one source tree into one destination tree,
//! preserving everything a mail server cares about, fast and restartably.
//!
//! A sync is: walk both trees in parallel (one `statx` per entry relative to
//! its open directory, no per-file processes), pair source and destination
//! entries by a merge join over the two sorted walks, delete at the
//! destination what the source no longer has, create directories, copy
//! regular files whose size, mtime, mode or owner differ (kernel-side
//! `copy_file_range` through `std::io::copy`, which also reflinks where the
//! filesystem can), recreate symlinks, then hard links, and finally set
//! directory metadata after their children.
//!
//! Like rsync's quick check, a file rewritten with the same size and the
//! same mtime (to the nanosecond) is not noticed by a sync; the verifier
//! hashes every file and would report it.
//!
//! Durability: no fsync per file (that would dominate the run time); the
//! caller flushes the whole destination filesystem once (`syncfs`, see
//! [`flush`]) before it records a phase as done.
//!
//! Crash safety: every file and symlink is written under a temporary name in
//! its destination directory, given its owner, mode, xattrs and times, and
//! only then renamed over the final name. A `kill -9` at any point leaves
//! complete files under final names and, at worst, temporaries that the next
//! run deletes (they are not in the source). A re-run skips files whose size,
//! mtime (ns), mode and numeric owner already match.
//!
//! Source symlinks: a link that stays inside the tree is copied as a link;
//! one that leads out of it is followed and its target copied in its place
//! ([`walk_source`]), because the container sees only the copied trees.
//!
//! Sparse files stay sparse: only the data regions (`SEEK_DATA`) are copied.
//!
//! Hard links: regular files with `st_nlink > 1` are grouped by (dev, ino);
//! the first path of a group (in sorted order) is copied, the others are
//! linked to it in a second pass, so the result does not depend on thread
//! scheduling.
//!
//! The source is only ever read: it is opened with `O_NOATIME` where the
//! kernel allows it, so not even access times move.

use anyhow::{anyhow, Context as _, Result};
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::resolve;
use super::show::Shown as _;

/// One entry of a tree, relative to its root ("" is the root itself).
#[derive(Clone, Debug)]
pub struct Entry {
    pub rel: PathBuf,
    /// The entry's metadata; for a followed symlink, its target's.
    pub meta: Metadata,
    /// Set when the entry is, or lies below, a symlink the walk followed:
    /// its content is read from there (see [`Tree::source_path`]).
    pub from: Option<Arc<Followed>>,
}

/// A symlink the walk followed to its content, because the link leads out
/// of the tree (where the container would find nothing).
#[derive(Debug)]
pub struct Followed {
    /// Where the link is in the tree.
    pub rel: PathBuf,
    /// Where its target really is (no symlink in it below the host root).
    pub real: PathBuf,
}

/// Kind of an entry as far as copying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// Sockets, fifos, devices: not part of a relay's data; reported, not copied.
    Special,
}

impl Kind {
    /// The kind in words, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Special => "socket, fifo or device",
        }
    }
}

pub fn kind(meta: &Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else if t.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Special
    }
}

/// A walked tree, entries sorted so a directory precedes its contents.
#[derive(Debug, Default)]
pub struct Tree {
    pub root: PathBuf,
    pub entries: Vec<Entry>,
}

/// Totals of a tree, for plans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub special: u64,
    /// Apparent size of regular files, hard links counted once.
    pub bytes: u64,
    /// Space the files occupy (st_blocks), hard links counted once.
    pub alloc: u64,
    /// Messages: regular files in a maildir's `cur/` or `new/`.
    pub messages: u64,
    /// Symlinks leading out of the tree, counted as what they lead to.
    pub followed: u64,
}

/// Whether a file at `rel` is a message (in a maildir's `cur/` or `new/`).
pub fn is_message(rel: &Path) -> bool {
    rel.parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "cur" || d == "new")
}

/// The inode of a file entry.
fn inode(e: &Entry) -> (u64, u64) {
    (e.meta.dev(), e.meta.ino())
}

/// Which files of a tree may share their inode with another entry: hard
/// links, and files reached through a followed symlink (which may be
/// reached by another path too: two links to one file, or a link to a
/// directory that is also in the tree).
struct Sharing(HashSet<(u64, u64)>);

impl Sharing {
    fn of<'a>(entries: impl Iterator<Item = &'a Entry>) -> Sharing {
        Sharing(
            entries
                .filter(|e| e.from.is_some() && kind(&e.meta) == Kind::File)
                .map(inode)
                .collect(),
        )
    }

    fn may_share(&self, e: &Entry) -> bool {
        e.meta.nlink() > 1 || (!self.0.is_empty() && self.0.contains(&inode(e)))
    }
}

impl Tree {
    /// Where the content of `e` is read from: below the root, or below the
    /// target of the followed link it lies in.
    pub fn source_path(&self, e: &Entry) -> PathBuf {
        match &e.from {
            None => self.root.join(&e.rel),
            Some(f) => match e.rel.strip_prefix(&f.rel) {
                Ok(rest) if rest.as_os_str().is_empty() => f.real.clone(),
                Ok(rest) => f.real.join(rest),
                Err(_) => self.root.join(&e.rel),
            },
        }
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut seen = HashSet::new();
        let sharing = Sharing::of(self.entries.iter());
        for e in &self.entries {
            t.followed += u64::from(e.from.as_ref().is_some_and(|f| f.rel == e.rel));
            match kind(&e.meta) {
                Kind::Dir => t.dirs += 1,
                Kind::Symlink => t.symlinks += 1,
                Kind::Special => t.special += 1,
                Kind::File => {
                    t.files += 1;
                    t.messages += u64::from(is_message(&e.rel));
                    if sharing.may_share(e) && !seen.insert(inode(e)) {
                        continue;
                    }
                    t.bytes += e.meta.len();
                    t.alloc += e.meta.blocks() * 512;
                }
            }
        }
        t
    }
}

/// Walk the destination `root` in parallel, never following a symlink
/// below it. A missing root is an empty tree when `missing_ok`; entries
/// vanishing during the walk are left out.
pub fn walk(root: &Path, missing_ok: bool) -> Result<Tree> {
    // The root itself may be a symlink (`data/chatmail` on a bigger disk):
    // follow it there, and only there.
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && missing_ok => {
            return Ok(Tree {
                root: root.to_path_buf(),
                entries: Vec::new(),
            })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.shown())),
    };
    walk_from(root, meta, None)
}

/// The source tree the relay sees at `host_path` (`/home`) on the host
/// whose filesystem is at `host_root` (`/`, or `--root`).
///
/// Every path is resolved inside the host root. Symlinks that stay inside
/// the tree are entries of their own (the copy is the same link); a symlink
/// that leads out of it (`/home/vmail -> /srv/vmail` on another disk) is
/// followed, at any depth, and its target's content takes its place, since
/// the container would find nothing there. A followed directory that
/// contains itself is an error, before anything was changed.
pub fn walk_source(host_root: &Path, host_path: &Path) -> Result<Tree> {
    let real = resolve::in_root(host_root, host_path).map_err(|e| {
        anyhow!(
            "{}: {e} (looked under {})",
            host_path.shown(),
            host_root.shown()
        )
    })?;
    let meta =
        fs::symlink_metadata(&real).with_context(|| format!("cannot read {}", real.shown()))?;
    let follow = Follow {
        host_root: host_root.to_path_buf(),
        mounted_at: host_path.to_path_buf(),
    };
    walk_from(&real, meta, Some(&follow))
}

/// How a source walk treats symlinks (a destination walk has none).
struct Follow {
    host_root: PathBuf,
    /// The tree's path on the host and in the container.
    mounted_at: PathBuf,
}

/// Where the walk is: which real directory, and the zone it belongs to
/// (the tree itself, or the target of a followed link).
#[derive(Clone)]
struct At<'a> {
    follow: Option<&'a Follow>,
    /// The real directory being listed.
    dir: PathBuf,
    /// Its path in the tree.
    rel: PathBuf,
    /// The followed link this part of the tree comes from (None: the tree).
    from: Option<Arc<Followed>>,
    /// (dev, ino) of every directory from the root down to `dir`.
    ancestors: Vec<(u64, u64)>,
}

fn walk_from(root: &Path, meta: Metadata, follow: Option<&Follow>) -> Result<Tree> {
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", root.shown());
    }
    let at = At {
        follow,
        dir: root.to_path_buf(),
        rel: PathBuf::new(),
        from: None,
        ancestors: vec![(meta.dev(), meta.ino())],
    };
    let mut entries = vec![Entry {
        rel: PathBuf::new(),
        meta,
        from: None,
    }];
    entries.extend(walk_dir(&at)?);
    debug_assert!(entries
        .windows(2)
        .all(|w| tree_order(&w[0].rel, &w[1].rel).is_lt()));
    Ok(Tree {
        root: root.to_path_buf(),
        entries,
    })
}

/// Path order with `/` below every other byte: the same order as comparing
/// components (a directory, then everything inside it, then its next
/// sibling), at the cost of a byte comparison.
fn tree_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::os::unix::ffi::OsStrExt;
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    a.iter().map(key).cmp(b.iter().map(key))
}

/// A symlink at `real` (named `rel` in the tree) met by a source walk in the
/// zone of `at`: `None` to keep it as a link, or the entry and the zone of
/// its target when it leads out of the tree.
fn follow_link<'a>(
    at: &At<'a>,
    real: &Path,
    rel: &Path,
) -> Result<Option<(Entry, Option<At<'a>>)>> {
    let Some(follow) = at.follow else {
        return Ok(None);
    };
    let target = match fs::read_link(real) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read the link {}", real.shown())),
    };
    // The zone: the tree (mounted at its host path) or a followed target.
    let (zone, mounted_at, parent) = match &at.from {
        None => (
            at_root(at),
            Some(follow.mounted_at.as_path()),
            at.rel.clone(),
        ),
        Some(f) => (
            f.real.clone(),
            None,
            at.rel
                .strip_prefix(&f.rel)
                .unwrap_or(Path::new(""))
                .to_path_buf(),
        ),
    };
    if resolve::contained(&zone, mounted_at, &parent, &target) {
        return Ok(None);
    }
    // Out of the tree: what the relay sees there, resolved in the host root.
    let host_dir = Path::new("/").join(at.dir.strip_prefix(&follow.host_root).unwrap_or(&at.dir));
    let real_target = match resolve::in_root(&follow.host_root, &host_dir.join(&target)) {
        Ok(t) => t,
        // Dangling or a loop: the relay sees nothing there, nor will the
        // container; the link is copied as it is.
        Err(resolve::Unresolved::Missing(_))
        | Err(resolve::Unresolved::NotDir(_))
        | Err(resolve::Unresolved::Loop(_)) => return Ok(None),
        Err(e) => return Err(anyhow!("{}: {e}", real.shown())),
    };
    let meta = fs::symlink_metadata(&real_target)
        .with_context(|| format!("cannot read {}", real_target.shown()))?;
    let from = Arc::new(Followed {
        rel: rel.to_path_buf(),
        real: real_target.clone(),
    });
    let entry = Entry {
        rel: rel.to_path_buf(),
        meta: meta.clone(),
        from: Some(from.clone()),
    };
    if !meta.is_dir() {
        return Ok(Some((entry, None)));
    }
    if at.ancestors.contains(&(meta.dev(), meta.ino())) {
        return Err(crate::error::preflight(format!(
            "{} is a symlink to {}, which contains the link itself: the tree would be \
             endless. Nothing was changed; replace the link with the directory it should \
             lead to",
            real.shown(),
            real_target.shown()
        )));
    }
    let mut ancestors = at.ancestors.clone();
    ancestors.push((meta.dev(), meta.ino()));
    Ok(Some((
        entry,
        Some(At {
            follow: at.follow,
            dir: real_target,
            rel: rel.to_path_buf(),
            from: Some(from),
            ancestors,
        }),
    )))
}

/// The real root of the tree `at` is in (its zone without a followed link).
fn at_root(at: &At) -> PathBuf {
    let mut root = at.dir.clone();
    for _ in at.rel.components() {
        root.pop();
    }
    root
}

/// The subtree below `at`, already in [`tree_order`]: each directory's
/// names are sorted and every subdirectory's subtree (walked in parallel)
/// follows its entry, so no global sort is needed.
fn walk_dir(at: &At) -> Result<Vec<Entry>> {
    let dir = &at.dir;
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.shown())),
    };
    let mut named = Vec::new();
    for de in rd {
        let de = de.with_context(|| format!("cannot list {}", dir.shown()))?;
        // DirEntry::metadata is an fstatat(AT_SYMLINK_NOFOLLOW) on the open
        // directory: it never follows symlinks.
        let meta = match de.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", de.path().shown())),
        };
        named.push((de.file_name(), meta));
    }
    named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Each child with the directory to descend into, if any.
    let mut children: Vec<(Entry, Option<At>)> = Vec::with_capacity(named.len());
    for (name, meta) in named {
        let rel = at.rel.join(&name);
        let real = dir.join(&name);
        if meta.file_type().is_symlink() {
            if let Some((entry, sub)) = follow_link(at, &real, &rel)? {
                children.push((entry, sub));
                continue;
            }
        }
        let sub = meta.is_dir().then(|| {
            let mut ancestors = at.ancestors.clone();
            ancestors.push((meta.dev(), meta.ino()));
            At {
                follow: at.follow,
                dir: real,
                rel: rel.clone(),
                from: at.from.clone(),
                ancestors,
            }
        });
        children.push((
            Entry {
                rel,
                meta,
                from: at.from.clone(),
            },
            sub,
        ));
    }
    let mut subtrees: Vec<Result<Vec<Entry>>> = children
        .par_iter()
        .filter_map(|(_, sub)| sub.as_ref())
        .map(walk_dir)
        .collect();
    let total: usize = subtrees
        .iter()
        .map(|r| r.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(children.len() + total);
    let mut next = subtrees.drain(..);
    for (e, sub) in children {
        out.push(e);
        if sub.is_some() {
            if let Some(sub) = next.next() {
                out.extend(sub?);
            }
        }
    }
    Ok(out)
}

/// What a sync did (or, with `dry`, would do).
#[derive(Debug, Default)]
pub struct Stats {
    pub files_copied: u64,
    pub bytes_copied: u64,
    pub hardlinks: u64,
    pub symlinks: u64,
    pub dirs_created: u64,
    pub dirs_updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Entries that disappeared at the source while copying.
    pub vanished: u64,
    /// Sockets, fifos and devices that were not copied.
    pub special: Vec<PathBuf>,
}

impl Stats {
    /// Whether anything at the destination changed (or would).
    pub fn changed(&self) -> bool {
        self.files_copied
            + self.hardlinks
            + self.symlinks
            + self.dirs_created
            + self.dirs_updated
            + self.deleted
            > 0
    }
    pub fn add(&mut self, o: Stats) {
        self.files_copied += o.files_copied;
        self.bytes_copied += o.bytes_copied;
        self.hardlinks += o.hardlinks;
        self.symlinks += o.symlinks;
        self.dirs_created += o.dirs_created;
        self.dirs_updated += o.dirs_updated;
        self.deleted += o.deleted;
        self.unchanged += o.unchanged;
        self.vanished += o.vanished;
        self.special.extend(o.special);
    }
}

#[derive(Default)]
struct Counters {
    files_copied: AtomicU64,
    bytes_copied: AtomicU64,
    hardlinks: AtomicU64,
    symlinks: AtomicU64,
    dirs_updated: AtomicU64,
    unchanged: AtomicU64,
    vanished: AtomicU64,
}

/// Collects failures from parallel work so one unreadable file does not hide
/// the others; the sync fails after the pass with all of them.
#[derive(Default)]
struct Errors(Mutex<Vec<anyhow::Error>>);

impl Errors {
    fn push(&self, e: anyhow::Error) {
        if let Ok(mut v) = self.0.lock() {
            v.push(e);
        }
    }
    fn finish(self) -> Result<()> {
        let errs = self.0.into_inner().unwrap_or_default();
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.into_iter().next().unwrap_or_else(|| anyhow!("error"))),
            n => {
                let mut msg = format!("{n} entries could not be copied:");
                for e in errs.iter().take(10) {
                    msg.push_str(&format!("\n  - {e:#}"));
                }
                if n > 10 {
                    msg.push_str(&format!("\n  - ... and {} more", n - 10));
                }
                Err(anyhow!(msg))
            }
        }
    }
}

/// Whether the destination file already matches the source's quick-check
/// attributes: size, mtime (ns), permission bits and numeric owner.
fn same_file(src: &Metadata, dst: &Metadata) -> bool {
    dst.file_type().is_file()
        && src.len() == dst.len()
        && src.mtime() == dst.mtime()
        && src.mtime_nsec() == dst.mtime_nsec()
        && same_owner_mode(src, dst)
}

fn same_owner_mode(src: &Metadata, dst: &Metadata) -> bool {
    src.mode() & 0o7777 == dst.mode() & 0o7777 && src.uid() == dst.uid() && src.gid() == dst.gid()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `dst`. It never collides with a source name
/// that matters: any leftover is deleted by the next sync as extraneous.
fn tmp_name(dst: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(".migrate-{}-{n}.tmp", std::process::id());
    match dst.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

/// Whether `name` is a temporary name of a copy whose process is gone
/// (killed before it renamed or removed it): `.migrate-PID-N.tmp` with no
/// process PID. A live copy's names are left alone.
fn is_stale_tmp(name: &std::ffi::OsStr) -> bool {
    let Some(rest) = name
        .to_str()
        .and_then(|n| n.strip_prefix(".migrate-"))
        .and_then(|n| n.strip_suffix(".tmp"))
    else {
        return false;
    };
    let Some(pid) = rest
        .split_once('-')
        .and_then(|(pid, n)| n.parse::<u64>().ok().and(pid.parse::<i32>().ok()))
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // ESRCH: no such process; EPERM would mean one exists.
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Remove what killed copies left in the destination `root`: files and
/// links under a temporary name of a process that is gone (see
/// [`is_stale_tmp`]), never following a symlink. The number removed.
pub fn remove_stale_tmps(root: &Path) -> Result<usize> {
    let tree = walk(root, true)?;
    let mut removed = 0;
    for e in &tree.entries {
        if !e.meta.is_dir() && e.from.is_none() && e.rel.file_name().is_some_and(is_stale_tmp) {
            remove_any(&root.join(&e.rel), &e.meta)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Open a source file for reading without touching its atime (also used by
/// the verifier, which reads every source file once more).
pub(crate) fn open_source(path: &Path) -> io::Result<File> {
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        r => r,
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

/// Copy extended attributes from the open source to the open destination.
fn copy_xattrs_fd(src: &File, dst: &File, what: &Path) -> Result<()> {
    use xattr::FileExt;
    copy_xattrs(
        what,
        || format!("the copy of {}", what.shown()),
        || src.list_xattr(),
        |n| src.get_xattr(n),
        |n, v| dst.set_xattr(n, v),
    )
}

/// Copy extended attributes by path (directories), not following symlinks.
fn copy_xattrs_path(src: &Path, dst: &Path) -> Result<()> {
    copy_xattrs(
        src,
        || dst.shown(),
        || xattr::list(src),
        |n| xattr::get(src, n),
        |n, v| xattr::set(dst, n, v),
    )
}

/// The one loop behind both: list, read each, set each. A filesystem
/// without xattr support on either side is not an error; `src` and `dst`
/// name the two sides in messages (`dst` is only formatted on error).
fn copy_xattrs(
    src: &Path,
    dst: impl Fn() -> String,
    list: impl FnOnce() -> io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> io::Result<Option<Vec<u8>>>,
    set: impl Fn(&std::ffi::OsStr, &[u8]) -> io::Result<()>,
) -> Result<()> {
    let names = match list() {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list xattrs of {}", src.shown())),
    };
    for name in names {
        let value = get(&name).with_context(|| {
            format!(
                "cannot read xattr {} of {}",
                name.to_string_lossy(),
                src.shown()
            )
        })?;
        let Some(value) = value else { continue };
        match set(&name, &value) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot set xattr {} on {}", name.to_string_lossy(), dst())
                })
            }
        }
    }
    Ok(())
}

fn times(meta: &Metadata) -> (filetime::FileTime, filetime::FileTime) {
    (
        filetime::FileTime::from_last_access_time(meta),
        filetime::FileTime::from_last_modification_time(meta),
    )
}

/// Outcome of copying one file.
enum Copied {
    Bytes(u64),
    Vanished,
}

/// Copy one regular file to `dst` via a temporary name.
fn copy_file(src: &Path, dst: &Path, meta: &Metadata) -> Result<Copied> {
    let input = match open_source(src) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Copied::Vanished),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", src.shown())),
    };
    let tmp = tmp_name(dst);
    let out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.shown()))?;
    let result = (|| -> Result<u64> {
        let n = copy_content(&input, &out)
            .with_context(|| format!("cannot copy {} to {}", src.shown(), tmp.shown()))?;
        // Owner first: chown clears setuid/setgid, the mode restores them.
        std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("cannot set the owner of {}", tmp.shown()))?;
        out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
            .with_context(|| format!("cannot set the mode of {}", tmp.shown()))?;
        copy_xattrs_fd(&input, &out, src)?;
        let (atime, mtime) = times(meta);
        filetime::set_file_handle_times(&out, Some(atime), Some(mtime))
            .with_context(|| format!("cannot set the times of {}", tmp.shown()))?;
        drop(out);
        fs::rename(&tmp, dst)
            .with_context(|| format!("cannot rename {} to {}", tmp.shown(), dst.shown()))?;
        Ok(n)
    })();
    match result {
        Ok(n) => Ok(Copied::Bytes(n)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Copy the content of `input` into the empty `out`, keeping holes: only
/// the data regions (`SEEK_DATA`/`SEEK_HOLE`) are copied, and the length is
/// set at the end, so a sparse file stays sparse. Each region goes through
/// `copy_file_range` (in the kernel, reflinked where the filesystem can),
/// or plain reads and writes where that is not available. Returns the bytes
/// of data copied.
fn copy_content(input: &File, out: &File) -> io::Result<u64> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    let len = input.metadata()?.len();
    let mut pos = 0;
    let mut copied = 0;
    while pos < len {
        let (data, hole) = match seek(input, SeekFrom::Data(pos)) {
            Ok(data) => (data, seek(input, SeekFrom::Hole(data)).unwrap_or(len)),
            // Nothing but a hole up to the end.
            Err(Errno::NXIO) => break,
            // No hole detection here: all of it is data.
            Err(_) => (pos, len),
        };
        let hole = hole.min(len);
        if hole <= data {
            break;
        }
        copied += copy_range(input, out, data, hole - data)?;
        pos = hole;
    }
    out.set_len(len)?;
    Ok(copied)
}

/// Copy `n` bytes at `off` from `input` to the same offset in `out`.
fn copy_range(input: &File, out: &File, off: u64, n: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let (mut off_in, mut off_out) = (off, off);
    let end = off + n;
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(input, Some(&mut off_in), out, Some(&mut off_out), want) {
            Ok(0) => return Ok(off_in - off), // the file shrank meanwhile
            Ok(_) => {}
            Err(_) => {
                // Not between these filesystems: read and write.
                let mut buf = vec![0u8; 256 * 1024];
                while off_in < end {
                    let want = buf
                        .len()
                        .min(usize::try_from(end - off_in).unwrap_or(buf.len()));
                    let got = input.read_at(&mut buf[..want], off_in)?;
                    if got == 0 {
                        break;
                    }
                    out.write_all_at(&buf[..got], off_in)?;
                    off_in += got as u64;
                }
                return Ok(off_in - off);
            }
        }
    }
    Ok(off_in - off)
}

/// Create `dst` as a symlink like `src` via a temporary name.
fn copy_symlink(src: &Path, dst: &Path, meta: &Metadata) -> Result<Copied> {
    let target = match fs::read_link(src) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Copied::Vanished),
        Err(e) => return Err(e).with_context(|| format!("cannot read the link {}", src.shown())),
    };
    let tmp = tmp_name(dst);
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("cannot create the symlink {}", tmp.shown()))?;
    let result = (|| -> Result<()> {
        std::os::unix::fs::lchown(&tmp, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("cannot set the owner of {}", tmp.shown()))?;
        let (atime, mtime) = times(meta);
        filetime::set_symlink_file_times(&tmp, atime, mtime)
            .with_context(|| format!("cannot set the times of {}", tmp.shown()))?;
        fs::rename(&tmp, dst)
            .with_context(|| format!("cannot rename {} to {}", tmp.shown(), dst.shown()))
    })();
    match result {
        Ok(()) => Ok(Copied::Bytes(0)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn same_symlink(src: &Path, src_meta: &Metadata, dst: &Path, dst_meta: &Metadata) -> bool {
    dst_meta.file_type().is_symlink()
        && src_meta.uid() == dst_meta.uid()
        && src_meta.gid() == dst_meta.gid()
        && src_meta.mtime() == dst_meta.mtime()
        && src_meta.mtime_nsec() == dst_meta.mtime_nsec()
        && matches!((fs::read_link(src), fs::read_link(dst)), (Ok(a), Ok(b)) if a == b)
}

/// Set a directory's owner, mode, xattrs and times from the source.
fn set_dir_meta(src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("cannot set the owner of {}", dst.shown()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(|| format!("cannot set the mode of {}", dst.shown()))?;
    copy_xattrs_path(src, dst)?;
    let (atime, mtime) = times(meta);
    filetime::set_file_times(dst, atime, mtime)
        .with_context(|| format!("cannot set the times of {}", dst.shown()))
}

fn remove_any(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .or_else(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    })
    .with_context(|| format!("cannot delete {}", path.shown()))
}

/// Mirror the walked source `src` into `dst_root`. With `dry`, only count
/// what would change. The caller guarantees `dst_root` is a destination this
/// tool owns: extraneous entries there are deleted.
pub fn sync(src: &Tree, dst_root: &Path, dry: bool) -> Result<Stats> {
    let dst = walk(dst_root, true)?;
    sync_trees(src, &dst, dry, &ProgressBar::hidden())
}

/// [`sync`] with a destination walk the caller already has (the plan walks
/// both trees; nothing but this tool writes to the destination meanwhile).
/// `progress` advances by the bytes of every file copied.
pub fn sync_trees(src: &Tree, dst: &Tree, dry: bool, progress: &ProgressBar) -> Result<Stats> {
    let dst_root = dst.root.as_path();
    let mut stats = Stats::default();
    let (pairs, removed) = pair(src, dst);
    let job = Job {
        src,
        dst_root,
        dry,
        c: Counters::default(),
    };

    // 1. Deletions.
    stats.deleted = removed.len() as u64;
    job.delete(&removed)?;
    // 2. Directories, parents first.
    stats.dirs_created = job.create_dirs(&pairs)?;
    // 3. Files (first of each hard-link group) and symlinks, in parallel.
    let (singles, links) = group(&pairs, &mut stats.special, src);
    job.copy_files(&singles, progress)?;
    let c = &job.c;
    let files_changed = c.files_copied.load(Ordering::Relaxed)
        + c.symlinks.load(Ordering::Relaxed)
        + c.vanished.load(Ordering::Relaxed)
        > 0;
    // 4. Hard links to the copied first paths.
    job.link(&links, files_changed)?;
    let anything_changed = files_changed
        || stats.deleted + stats.dirs_created + c.hardlinks.load(Ordering::Relaxed) > 0;
    // 5. Directory metadata, after all their contents changed.
    job.set_dir_metas(&pairs, anything_changed)?;

    let c = job.c;
    stats.files_copied = c.files_copied.into_inner();
    stats.bytes_copied = c.bytes_copied.into_inner();
    stats.hardlinks = c.hardlinks.into_inner();
    stats.symlinks = c.symlinks.into_inner();
    stats.dirs_updated = c.dirs_updated.into_inner();
    stats.unchanged = c.unchanged.into_inner();
    stats.vanished = c.vanished.into_inner();
    Ok(stats)
}

/// A source entry and the metadata of the destination entry of the same
/// kind at its path, if there is one.
type Pair<'a> = (&'a Entry, Option<&'a Metadata>);
/// The first path of a hard-link group and its destination metadata.
type First<'a> = (&'a Path, Option<&'a Metadata>);
/// A further path of a hard-link group, with the group's first path.
type Link<'a> = (&'a Entry, Option<&'a Metadata>, First<'a>);

/// Pair every source entry with the destination entry at the same path:
/// both walks are in tree order, so a merge join does it without hashing.
/// Destination entries without a partner of the same kind are to be
/// deleted (the second list); tree order puts a directory right before its
/// contents, so only the top of a removed subtree is listed.
fn pair<'a>(src: &'a Tree, dst: &'a Tree) -> (Vec<Pair<'a>>, Vec<&'a Entry>) {
    let (s, d) = (&src.entries, &dst.entries);
    let mut pairs: Vec<Pair> = Vec::with_capacity(s.len());
    let mut removed: Vec<&Entry> = Vec::new();
    fn remove<'a>(e: &'a Entry, removed: &mut Vec<&'a Entry>) {
        if !e.rel.as_os_str().is_empty()
            && !removed.last().is_some_and(|r| e.rel.starts_with(&r.rel))
        {
            removed.push(e);
        }
    }
    let (mut i, mut j) = (0, 0);
    loop {
        let ord = match (s.get(i), d.get(j)) {
            (Some(a), Some(b)) => tree_order(&a.rel, &b.rel),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match ord {
            std::cmp::Ordering::Less => {
                pairs.push((&s[i], None));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                remove(&d[j], &mut removed);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (&s[i], &d[j]);
                if kind(&a.meta) == kind(&b.meta) && kind(&a.meta) != Kind::Special {
                    pairs.push((a, Some(&b.meta)));
                } else {
                    pairs.push((a, None));
                    remove(b, &mut removed);
                }
                i += 1;
                j += 1;
            }
        }
    }
    (pairs, removed)
}

/// Split the files and symlinks to copy into those copied on their own
/// (the first path of each hard-link group included) and the further paths
/// of hard-link groups, each with its group's first path. Sockets, fifos
/// and devices are listed in `special`.
fn group<'a>(
    pairs: &[Pair<'a>],
    special: &mut Vec<PathBuf>,
    src: &Tree,
) -> (Vec<Pair<'a>>, Vec<Link<'a>>) {
    let sharing = Sharing::of(pairs.iter().map(|(e, _)| *e));
    let mut primaries: HashMap<(u64, u64), First> = HashMap::new();
    let mut singles: Vec<Pair> = Vec::new();
    let mut links = Vec::new();
    for &(e, dm) in pairs {
        match kind(&e.meta) {
            Kind::File if sharing.may_share(e) => {
                let key = inode(e);
                match primaries.get(&key) {
                    Some(first) => links.push((e, dm, *first)),
                    None => {
                        primaries.insert(key, (&e.rel, dm));
                        singles.push((e, dm));
                    }
                }
            }
            Kind::File | Kind::Symlink => singles.push((e, dm)),
            Kind::Special => special.push(src.source_path(e)),
            Kind::Dir => {}
        }
    }
    (singles, links)
}

/// One sync's inputs and counters, shared by its passes.
struct Job<'a> {
    src: &'a Tree,
    dst_root: &'a Path,
    dry: bool,
    c: Counters,
}

impl Job<'_> {
    /// Pass 1: delete what the source no longer has.
    fn delete(&self, removed: &[&Entry]) -> Result<()> {
        if self.dry {
            return Ok(());
        }
        let errors = Errors::default();
        removed.par_iter().for_each(|e| {
            if let Err(err) = remove_any(&self.dst_root.join(&e.rel), &e.meta) {
                errors.push(err);
            }
        });
        errors.finish()
    }

    /// Pass 2: create the missing directories, parents first; returns how
    /// many.
    fn create_dirs(&self, pairs: &[Pair]) -> Result<u64> {
        let mut created = 0;
        for (e, dm) in pairs {
            if kind(&e.meta) == Kind::Dir && dm.is_none() {
                created += 1;
                if !self.dry {
                    let p = self.dst_root.join(&e.rel);
                    match fs::create_dir(&p) {
                        Ok(()) => {}
                        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
                        Err(err) => {
                            return Err(err).with_context(|| format!("cannot create {}", p.shown()))
                        }
                    }
                }
            }
        }
        Ok(created)
    }

    /// Pass 3: copy the files and symlinks that differ, in parallel.
    fn copy_files(&self, singles: &[Pair], progress: &ProgressBar) -> Result<()> {
        let (src, dst_root, c) = (self.src, self.dst_root, &self.c);
        let errors = Errors::default();
        singles.par_iter().for_each(|&(e, dm)| {
            // Paths are joined only when needed: most files of a re-run are
            // unchanged, and the metadata comparison needs none.
            let paths = || (src.source_path(e), dst_root.join(&e.rel));
            let unchanged = match (kind(&e.meta), dm) {
                (Kind::File, Some(dm)) => same_file(&e.meta, dm),
                (Kind::Symlink, Some(dm)) => {
                    let (s, d) = paths();
                    same_symlink(&s, &e.meta, &d, dm)
                }
                _ => false,
            };
            if unchanged {
                c.unchanged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if self.dry {
                if kind(&e.meta) == Kind::File {
                    c.files_copied.fetch_add(1, Ordering::Relaxed);
                    c.bytes_copied.fetch_add(e.meta.len(), Ordering::Relaxed);
                } else {
                    c.symlinks.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            let (s, d) = paths();
            let r = if kind(&e.meta) == Kind::File {
                copy_file(&s, &d, &e.meta)
            } else {
                copy_symlink(&s, &d, &e.meta)
            };
            match r {
                Ok(Copied::Vanished) => {
                    c.vanished.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Copied::Bytes(n)) => {
                    if kind(&e.meta) == Kind::File {
                        c.files_copied.fetch_add(1, Ordering::Relaxed);
                        c.bytes_copied.fetch_add(n, Ordering::Relaxed);
                        progress.inc(n);
                    } else {
                        c.symlinks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(err) => errors.push(err),
            }
        });
        errors.finish()
    }

    /// Pass 4: hard links to the copied first paths. When no file was
    /// rewritten (`files_changed`), the walked inode numbers are still
    /// current and nothing is stat'ed.
    fn link(&self, links: &[Link], files_changed: bool) -> Result<()> {
        let (dst_root, c, dry) = (self.dst_root, &self.c, self.dry);
        let errors = Errors::default();
        links.par_iter().for_each(|&(e, dm, (first, first_dm))| {
            let d = dst_root.join(&e.rel);
            let target = dst_root.join(first);
            let fresh = !dry && files_changed;
            let target_meta = if fresh {
                fs::symlink_metadata(&target).ok()
            } else {
                first_dm.cloned()
            };
            let linked = match (dm, &target_meta) {
                (Some(_), Some(tm)) if fresh => fs::symlink_metadata(&d)
                    .is_ok_and(|m| m.ino() == tm.ino() && m.dev() == tm.dev()),
                (Some(dm), Some(tm)) => {
                    dm.ino() == tm.ino() && dm.dev() == tm.dev() && (dry || same_file(&e.meta, tm))
                }
                _ => false,
            };
            if linked {
                c.unchanged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            c.hardlinks.fetch_add(1, Ordering::Relaxed);
            if dry {
                return;
            }
            let target_meta = match target_meta {
                Some(m) => Some(m),
                None => fs::symlink_metadata(&target).ok(),
            };
            if target_meta.is_none() {
                // The first path vanished at the source during a live pre-sync.
                c.vanished.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let tmp = tmp_name(&d);
            let r = fs::hard_link(&target, &tmp)
                .with_context(|| format!("cannot link {} to {}", tmp.shown(), target.shown()))
                .and_then(|_| {
                    fs::rename(&tmp, &d)
                        .with_context(|| format!("cannot rename {} to {}", tmp.shown(), d.shown()))
                });
            if let Err(err) = r {
                let _ = fs::remove_file(&tmp);
                errors.push(err);
            }
        });
        errors.finish()
    }

    /// Pass 5: directory metadata, after all their contents changed. When
    /// nothing changed inside (`anything_changed`), the walked metadata is
    /// still current.
    fn set_dir_metas(&self, pairs: &[Pair], anything_changed: bool) -> Result<()> {
        let (src, dst_root, c, dry) = (self.src, self.dst_root, &self.c, self.dry);
        let errors = Errors::default();
        pairs
            .par_iter()
            .filter(|(e, _)| kind(&e.meta) == Kind::Dir)
            .for_each(|&(e, dm)| {
                let d = || dst_root.join(&e.rel);
                let current = if !dry && anything_changed {
                    fs::symlink_metadata(d()).ok()
                } else {
                    dm.cloned()
                };
                let ok = current.as_ref().is_some_and(|m| {
                    same_owner_mode(&e.meta, m)
                        && m.mtime() == e.meta.mtime()
                        && m.mtime_nsec() == e.meta.mtime_nsec()
                });
                if ok {
                    return;
                }
                if dm.is_some() {
                    c.dirs_updated.fetch_add(1, Ordering::Relaxed);
                }
                if !dry {
                    if let Err(err) = set_dir_meta(&src.source_path(e), &d(), &e.meta) {
                        errors.push(err);
                    }
                }
            });
        errors.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn mirrors_files_links_and_deletes_extras() {
        let t = tempfile::tempdir().unwrap();
        crate::host::write_tree(t.path(), &[("s/a/b/f", "hello")]);
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        fs::hard_link(s.join("a/b/f"), s.join("a/g")).unwrap();
        symlink("b/f", s.join("a/l")).unwrap();
        fs::set_permissions(s.join("a"), fs::Permissions::from_mode(0o2750)).unwrap();
        fs::create_dir_all(d.join("old/x")).unwrap();
        fs::write(d.join("old/x/y"), b"stale").unwrap();

        let st = sync(&walk(&s, false).unwrap(), &d, false).unwrap();
        assert_eq!(st.files_copied, 1);
        assert_eq!(st.hardlinks, 1);
        assert_eq!(st.symlinks, 1);
        assert_eq!(st.deleted, 1);
        assert!(!d.join("old").exists());
        let f = fs::metadata(d.join("a/b/f")).unwrap();
        assert_eq!(f.ino(), fs::metadata(d.join("a/g")).unwrap().ino());
        assert_eq!(fs::read_link(d.join("a/l")).unwrap(), PathBuf::from("b/f"));
        assert_eq!(fs::metadata(d.join("a")).unwrap().mode() & 0o7777, 0o2750);

        let again = sync(&walk(&s, false).unwrap(), &d, false).unwrap();
        assert!(!again.changed(), "{again:?}");
        assert_eq!(again.unchanged, 3);
    }

    /// Random trees, random changes (content, metadata, deletions, kind
    /// changes, new and broken hard links, retargeted symlinks): after each
    /// sync the verifier finds no difference and a second sync does nothing.
    #[test]
    fn random_changes_always_converge() {
        use std::os::unix::fs::MetadataExt as _;
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("s");
        let d = t.path().join("d");
        fs::create_dir_all(&s).unwrap();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..8 {
            for _ in 0..40 {
                let dir = s.join(format!("d{}", rnd(4))).join(format!("e{}", rnd(3)));
                let name = dir.join(format!("f{}", rnd(12)));
                match rnd(9) {
                    0 => {
                        let _ = fs::remove_dir_all(&name).or_else(|_| fs::remove_file(&name));
                    }
                    1 => {
                        let _ = fs::remove_dir_all(&dir);
                    }
                    2 => {
                        // A directory where a file may be, or the reverse.
                        let _ = fs::remove_file(&name);
                        let _ = fs::create_dir_all(name.join("sub"));
                    }
                    3 => {
                        let other = dir.join(format!("f{}", rnd(12)));
                        if name.is_file() && !other.exists() {
                            fs::hard_link(&name, &other).unwrap();
                        }
                    }
                    4 => {
                        let _ = fs::remove_file(&name).or_else(|_| fs::remove_dir_all(&name));
                        fs::create_dir_all(&dir).unwrap();
                        symlink(format!("f{}", rnd(12)), &name).unwrap();
                    }
                    5 if name.is_file() => {
                        let mode = [0o600, 0o644, 0o2750, 0o4755][rnd(4) as usize];
                        fs::set_permissions(&name, fs::Permissions::from_mode(mode)).unwrap();
                        std::os::unix::fs::lchown(&name, Some(rnd(3) as u32 + 100), None).unwrap();
                    }
                    _ => {
                        if !name.is_dir() {
                            let _ = fs::remove_file(&name);
                            fs::create_dir_all(&dir).unwrap();
                            // Rewritten, not in place: a hard-linked peer keeps the old one.
                            fs::write(&name, vec![b'x'; rnd(5000) as usize]).unwrap();
                        }
                    }
                }
            }
            let st = sync(&walk(&s, false).unwrap(), &d, false).unwrap();
            let r = super::super::verify::verify(Path::new("/"), &s, &d).unwrap();
            assert!(r.ok(), "round {round}: {:?}\n{st:?}", r.differences);
            let again = sync(&walk(&s, false).unwrap(), &d, false).unwrap();
            assert!(!again.changed(), "round {round}: {again:?}");
            // A copy never shares an inode with its source.
            let a = fs::metadata(&s).unwrap();
            assert_ne!(a.ino(), fs::metadata(&d).unwrap().ino());
        }
    }

    #[test]
    fn only_a_gone_process_s_temporary_names_are_stale() {
        let live = format!(".migrate-{}-3.tmp", std::process::id());
        assert!(!is_stale_tmp(live.as_ref()));
        // Above any pid the kernel hands out (pid_max is at most 2^22).
        assert!(is_stale_tmp(".migrate-2147483646-0.tmp".as_ref()));
        for other in [
            ".migrate-x-0.tmp",
            ".migrate-2147483646.tmp",
            "migrate-2147483646-0.tmp",
            ".migrate-2147483646-0.tmp.keep",
            "1700000000.M1.relay:2,S",
        ] {
            assert!(!is_stale_tmp(other.as_ref()), "{other}");
        }
    }

    #[test]
    fn tree_order_keeps_directories_contiguous() {
        let mut v: Vec<PathBuf> = ["a-b", "a/c", "a", "a/b/c", "a.b", "a/b", "b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        v.sort_by(|a, b| tree_order(a, b));
        let mut w = v.clone();
        w.sort();
        assert_eq!(v, w);
    }

    #[test]
    fn dry_run_counts_without_writing() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("s");
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join("f"), b"x").unwrap();
        let d = t.path().join("d");
        let st = sync(&walk(&s, false).unwrap(), &d, true).unwrap();
        assert_eq!(st.files_copied, 1);
        assert!(!d.exists());
    }
}
