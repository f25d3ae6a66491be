//! What a backup holds: the deployment's state, listed with metadata
//! (no content is read here).
//!
//! `data/` (mailboxes, DKIM keys, certificates, the mail queue, the tool's
//! state), `chatmail.ini`, `.env`, `custom/` and the administrator's
//! override file. The repository's placeholder files (`data/README.md`,
//! `custom/README.md`) belong to the checkout, not to the deployment.
//! Sockets and fifos are skipped: the services create them at start.

use anyhow::{bail, Context as _, Result};
use rustix::fd::AsFd;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::manifest::{Entry, EntryKind};
use crate::deployment::{self, Deployment};

/// The mail queue, `/var/spool/postfix` in the container: the one part of
/// `data/` that is not safe to copy while Postfix writes it.
pub const QUEUE_DIR: &str = "data/chatmail-postfix";

/// Files of the repository checkout that live in the backed-up
/// directories but are not deployment state.
pub const PLACEHOLDERS: &[&str] = &["data/README.md", "custom/README.md"];

/// The top-level paths a backup holds, when they exist.
pub fn top_level() -> Vec<&'static str> {
    let mut v = vec![
        deployment::DATA_DIR,
        deployment::INI_FILE,
        deployment::ENV_FILE,
        deployment::CUSTOM_DIR,
    ];
    v.extend(deployment::USER_OVERRIDES);
    v
}

/// One path found on disk.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub entry: Entry,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

impl Scanned {
    /// Where it is, under the deployment directory `dir` (made when needed:
    /// a backup reads only the files that changed).
    pub fn abs(&self, dir: &Path) -> PathBuf {
        dir.join(&self.entry.path)
    }
}

/// What a scan found besides entries.
#[derive(Clone, Debug, Default)]
pub struct Skipped {
    pub special: Vec<String>,
}

/// `stat` (`follow`) or `lstat` of `abs`; `None` when nothing is there.
fn stat_at(abs: &Path, follow: bool) -> Result<Option<rustix::fs::Stat>> {
    let st = if follow {
        rustix::fs::stat(abs)
    } else {
        rustix::fs::lstat(abs)
    };
    match st {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("cannot read {}", abs.display()))
        }
    }
}

/// The entry for the path `abs`, named `rel` (`/`-separated) in the
/// manifest; `follow` follows a link at `abs` itself. `None` when nothing
/// is there.
pub fn entry_at(abs: &Path, rel: &str, follow: bool) -> Result<Option<Scanned>> {
    let Some(st) = stat_at(abs, follow)? else {
        return Ok(None);
    };
    let target = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Symlink => {
            Some(link_target(&rustix::fs::CWD, abs.as_os_str(), || {
                abs.to_path_buf()
            })?)
        }
        _ => None,
    };
    Ok(Some(entry_of_stat(rel.to_string(), &st, target)))
}

/// The relative name of `abs` under `dir`, `/`-separated, or an error for
/// a name the manifest cannot hold.
pub fn rel_name(dir: &Path, abs: &Path) -> Result<String> {
    // Bytes, not `Path::strip_prefix`: component parsing was a tenth of
    // an incremental backup's time.
    let (d, a) = (
        dir.as_os_str().as_encoded_bytes(),
        abs.as_os_str().as_encoded_bytes(),
    );
    let rel = match a.strip_prefix(d) {
        Some(r) if r.first() == Some(&b'/') => &r[1..],
        Some(r) if d.ends_with(b"/") => r,
        _ => a,
    };
    match std::str::from_utf8(rel).ok() {
        Some(s) => Ok(s.to_string()),
        None => bail!(
            "{}: the name is not UTF-8, which the backup manifest cannot record; rename it",
            abs.display()
        ),
    }
}

/// The target of the link `name` in `dir` (`shown` names it in errors).
fn link_target(
    dir: &impl AsFd,
    name: &std::ffi::OsStr,
    shown: impl Fn() -> PathBuf,
) -> Result<String> {
    let t = rustix::fs::readlinkat(dir, name, Vec::new())
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot read the link {}", shown().display()))?;
    match t.into_string() {
        Ok(t) => Ok(t),
        Err(_) => bail!(
            "{}: the link's target is not UTF-8, which the backup manifest cannot record; point it at a UTF-8 name",
            shown().display()
        ),
    }
}

/// The entry for the path `rel` from its `stat` data; `target` is a
/// link's target (callers read it for links only).
fn entry_of_stat(rel: String, st: &rustix::fs::Stat, target: Option<String>) -> Scanned {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::File,
    };
    Scanned {
        entry: Entry {
            path: rel,
            kind,
            size: if kind == EntryKind::File {
                st.st_size as u64
            } else {
                0
            },
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            user: None,
            group: None,
            sha256: None,
            target,
            stored: false,
        },
        dev: st.st_dev,
        ino: st.st_ino,
        // `nlink_t` is 32 bits wide on some targets.
        #[allow(clippy::unnecessary_cast)]
        nlink: st.st_nlink as u64,
    }
}

/// What one directory holds: its entries in name order, and for each the
/// listing below it (directories only).
#[derive(Default)]
struct Listing {
    found: Vec<Scanned>,
    below: Vec<Option<Listing>>,
    special: Vec<String>,
    /// Entries here and below.
    total: usize,
}

impl Listing {
    /// Each directory followed by what it holds; every entry moved once.
    fn flatten(self, out: &mut Vec<Scanned>, special: &mut Vec<String>) {
        special.extend(self.special);
        for (s, b) in self.found.into_iter().zip(self.below) {
            out.push(s);
            if let Some(b) = b {
                b.flatten(out, special);
            }
        }
    }
}

/// The entries below the directory `abs` (already listed itself);
/// directories are read in parallel and every entry is examined relative
/// to its directory (no path walk per file).
fn scan_dir(abs: &Path, rel: &str, skip: &[PathBuf], follow: bool) -> Result<Listing> {
    use rayon::prelude::*;
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let io_err = |e: rustix::io::Errno| std::io::Error::from(e);
    let fd = match rustix::fs::open(
        abs,
        // Below the root, a directory replaced by a link since it was
        // listed is not followed.
        if follow {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
        } else {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW
        },
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Removed (or replaced) since it was listed: a maildir folder
        // deleted while the backup runs.
        Err(rustix::io::Errno::NOENT)
        | Err(rustix::io::Errno::NOTDIR)
        | Err(rustix::io::Errno::LOOP) => return Ok(Listing::default()),
        Err(e) => return Err(io_err(e)).with_context(|| format!("cannot read {}", abs.display())),
    };
    // The skipped paths that are entries of this directory.
    let skip_here: Vec<&std::ffi::OsStr> = skip
        .iter()
        .filter(|s| s.parent() == Some(abs))
        .filter_map(|s| s.file_name())
        .collect();
    let mut names = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(&fd)
        .map_err(io_err)
        .with_context(|| format!("cannot read {}", abs.display()))?;
    for item in dir.by_ref() {
        let item = item
            .map_err(io_err)
            .with_context(|| format!("cannot read {}", abs.display()))?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(name);
        let Some(n) = name.to_str() else {
            bail!(
                "{}: the name is not UTF-8, which the backup manifest cannot record; rename it",
                abs.join(name).display()
            );
        };
        let child_rel = format!("{rel}/{n}");
        if PLACEHOLDERS.contains(&child_rel.as_str()) || skip_here.contains(&name) {
            continue;
        }
        names.push(child_rel);
    }
    // By name: the part after this directory's own path and the `/`.
    let name_at = rel.len() + 1;
    fn name_of(child_rel: &str, at: usize) -> &std::ffi::OsStr {
        child_rel[at..].as_ref()
    }
    names.sort_unstable_by(|a, b| name_of(a, name_at).cmp(name_of(b, name_at)));
    let mut found = Vec::with_capacity(names.len());
    let mut special = Vec::new();
    for child_rel in names {
        let name = name_of(&child_rel, name_at);
        let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // A maildir message renamed or expunged since the listing.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                return Err(io_err(e))
                    .with_context(|| format!("cannot read {}", abs.join(name).display()))
            }
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory | FileType::RegularFile => {
                found.push(entry_of_stat(child_rel, &st, None))
            }
            FileType::Symlink => {
                let target = link_target(&fd, name, || abs.join(name))?;
                found.push(entry_of_stat(child_rel, &st, Some(target)))
            }
            _ => special.push(child_rel),
        }
    }
    drop(dir);
    drop(fd);
    // What each subdirectory holds, read in parallel.
    let below = found
        .par_iter()
        .map(|s| {
            if s.entry.kind == EntryKind::Dir {
                let child = abs.join(name_of(&s.entry.path, name_at));
                scan_dir(&child, &s.entry.path, skip, false).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<Vec<Option<Listing>>>>()?;
    let total = found.len() + below.iter().flatten().map(|l| l.total).sum::<usize>();
    Ok(Listing {
        found,
        below,
        special,
        total,
    })
}

/// A tree's root and, for a directory, what it holds.
type Tree = (Scanned, Option<Listing>);

/// List one tree (or a single file) of the deployment; `None` when it is
/// skipped or absent.
fn list_tree(
    dir: &Path,
    top: &Path,
    skip: &[PathBuf],
    skipped: &mut Skipped,
) -> Result<Option<Tree>> {
    if skip.iter().any(|s| s.as_os_str() == top.as_os_str()) {
        return Ok(None);
    }
    let rel = rel_name(dir, top)?;
    if PLACEHOLDERS.contains(&rel.as_str()) {
        return Ok(None);
    }
    // The root of a tree may be a link the administrator set up (`data`
    // on another disk): it is followed, as Compose does.
    let Some(st) = stat_at(top, true)? else {
        return Ok(None);
    };
    use rustix::fs::FileType;
    if !matches!(
        FileType::from_raw_mode(st.st_mode),
        FileType::Directory | FileType::RegularFile
    ) {
        skipped.special.push(rel);
        return Ok(None);
    }
    let root = entry_of_stat(rel.clone(), &st, None);
    let listing = if root.entry.kind == EntryKind::Dir {
        Some(scan_dir(top, &rel, skip, true)?)
    } else {
        None
    };
    Ok(Some((root, listing)))
}

/// Put listed trees into `out` in archive order, growing it once (a list
/// grown step by step is copied into fresh memory each time).
fn flatten_trees(trees: Vec<Tree>, out: &mut Vec<Scanned>, skipped: &mut Skipped) {
    out.reserve(
        trees
            .iter()
            .map(|(_, l)| 1 + l.as_ref().map_or(0, |l| l.total))
            .sum(),
    );
    for (root, listing) in trees {
        out.push(root);
        if let Some(l) = listing {
            l.flatten(out, &mut skipped.special);
        }
    }
}

/// Walk one tree (or a single file) of the deployment. `skip` are absolute
/// paths left out with what lies below them (the queue, the output).
pub fn scan_tree(
    dir: &Path,
    top: &Path,
    skip: &[PathBuf],
    out: &mut Vec<Scanned>,
    skipped: &mut Skipped,
) -> Result<()> {
    let trees = list_tree(dir, top, skip, skipped)?.into_iter().collect();
    flatten_trees(trees, out, skipped);
    Ok(())
}

/// Everything a backup holds except the queue's content, in archive order.
pub fn scan(dep: &Deployment, skip: &[PathBuf]) -> Result<(Vec<Scanned>, Skipped)> {
    let mut trees = Vec::new();
    let mut skipped = Skipped::default();
    for top in top_level() {
        let abs = dep.path(top);
        if fs::symlink_metadata(&abs).is_err() {
            continue;
        }
        trees.extend(list_tree(dep.dir(), &abs, skip, &mut skipped)?);
    }
    let mut out = Vec::new();
    flatten_trees(trees, &mut out, &mut skipped);
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_state_and_skips_placeholders_sockets_and_skipped_trees() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        fs::create_dir_all(d.path().join("data/chatmail/vmail")).unwrap();
        fs::create_dir_all(d.path().join("data/chatmail-postfix/deferred")).unwrap();
        fs::write(d.path().join("data/README.md"), "placeholder").unwrap();
        fs::write(d.path().join("data/chatmail/vmail/m"), "mail").unwrap();
        fs::write(d.path().join("data/chatmail-postfix/deferred/Q"), "q").unwrap();
        fs::write(d.path().join(".env"), "A=1").unwrap();
        fs::create_dir_all(d.path().join("relay")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("data/s")).unwrap();
        let (list, skipped) = scan(&dep, &[d.path().join(QUEUE_DIR)]).unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.entry.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "data",
                "data/chatmail",
                "data/chatmail/vmail",
                "data/chatmail/vmail/m",
                ".env"
            ]
        );
        assert_eq!(skipped.special, ["data/s"]);
    }

    #[test]
    fn one_path_is_read_as_the_scan_reads_it() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("m"), "mail").unwrap();
        std::os::unix::fs::symlink("m", d.path().join("l")).unwrap();
        let link = entry_at(&d.path().join("l"), "data/l", false)
            .unwrap()
            .unwrap();
        assert_eq!(link.entry.path, "data/l");
        assert_eq!(link.entry.kind, EntryKind::Symlink);
        assert_eq!(link.entry.target.as_deref(), Some("m"));
        let file = entry_at(&d.path().join("l"), "data/l", true)
            .unwrap()
            .unwrap();
        assert_eq!((file.entry.kind, file.entry.size), (EntryKind::File, 4));
        assert!(file.entry.target.is_none());
        assert!(entry_at(&d.path().join("gone"), "data/gone", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_linked_data_directory_is_followed_links_below_it_are_not() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = d.path().join("disk2");
        fs::create_dir_all(elsewhere.join("chatmail/cur")).unwrap();
        fs::write(elsewhere.join("chatmail/cur/b"), "2").unwrap();
        fs::write(elsewhere.join("chatmail/cur/a"), "1").unwrap();
        std::os::unix::fs::symlink("/etc", elsewhere.join("chatmail/etc-link")).unwrap();
        let dep_dir = d.path().join("dep");
        fs::create_dir_all(&dep_dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dep_dir.join("data")).unwrap();
        let dep = Deployment::new(dep_dir);
        let (list, _) = scan(&dep, &[]).unwrap();
        let got: Vec<(&str, EntryKind)> = list
            .iter()
            .map(|s| (s.entry.path.as_str(), s.entry.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("data", EntryKind::Dir),
                ("data/chatmail", EntryKind::Dir),
                ("data/chatmail/cur", EntryKind::Dir),
                ("data/chatmail/cur/a", EntryKind::File),
                ("data/chatmail/cur/b", EntryKind::File),
                ("data/chatmail/etc-link", EntryKind::Symlink),
            ]
        );
        assert_eq!(list[5].entry.target.as_deref(), Some("/etc"));
        assert_eq!(list[3].entry.size, 1);
    }
}
