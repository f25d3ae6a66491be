//! Verification after the final sync: the destination must be an exact
//! copy of the source, checked independently of how it was copied.
//!
//! Both trees are walked again and compared entry by entry: kind, size,
//! permission bits (incl. setuid/setgid/sticky), numeric uid/gid, mtime with
//! nanoseconds, symlink targets, extended attributes, the hard-link structure
//! (paths sharing an inode at the source share one at the destination, and
//! only those), and the content of every regular file by SHA-256.

use anyhow::{Context as _, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::copy::{self, Kind};
use super::show::Shown as _;

/// The outcome of comparing one source tree with its copy.
#[derive(Debug, Default)]
pub struct Report {
    pub entries: u64,
    pub files: u64,
    pub bytes_hashed: u64,
    /// Sockets, fifos and devices at the source that are not copied.
    pub special: u64,
    /// One line per difference, `path: what`.
    pub differences: Vec<String>,
    /// The paths (relative to the tree) that differ.
    pub differing: Vec<PathBuf>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

/// SHA-256 of a file's content. Opened like the copy opens sources: without
/// moving the access time and without following a symlink swapped in.
fn hash(path: &Path) -> Result<[u8; 32]> {
    let mut f = copy::open_source(path).with_context(|| format!("cannot read {}", path.shown()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.shown()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn xattrs(path: &Path) -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
    let mut v: Vec<_> = match xattr::list(path) {
        Ok(names) => names
            .map(|n| (n.clone(), xattr::get(path, &n).ok().flatten()))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Compare the metadata of one entry; returns what differs.
fn compare_meta(src: &Path, s: &Metadata, dst: &Path, d: &Metadata) -> Vec<String> {
    let mut out = Vec::new();
    let (ks, kd) = (copy::kind(s), copy::kind(d));
    if ks != kd {
        out.push(format!(
            "{} at the source, {} at the copy",
            ks.name(),
            kd.name()
        ));
        return out;
    }
    if ks != Kind::Symlink && s.mode() & 0o7777 != d.mode() & 0o7777 {
        out.push(format!(
            "mode {:o} != {:o}",
            s.mode() & 0o7777,
            d.mode() & 0o7777
        ));
    }
    if (s.uid(), s.gid()) != (d.uid(), d.gid()) {
        out.push(format!(
            "owner {}:{} != {}:{}",
            s.uid(),
            s.gid(),
            d.uid(),
            d.gid()
        ));
    }
    if (s.mtime(), s.mtime_nsec()) != (d.mtime(), d.mtime_nsec()) {
        out.push(format!(
            "mtime {}.{:09} != {}.{:09}",
            s.mtime(),
            s.mtime_nsec(),
            d.mtime(),
            d.mtime_nsec()
        ));
    }
    match ks {
        Kind::File if s.len() != d.len() => out.push(format!("size {} != {}", s.len(), d.len())),
        Kind::Symlink => {
            let (a, b) = (fs::read_link(src).ok(), fs::read_link(dst).ok());
            if a != b {
                let show = |t: &Option<PathBuf>| match t {
                    Some(t) => t.shown(),
                    None => "(unreadable)".to_string(),
                };
                out.push(format!("symlink target {} != {}", show(&a), show(&b)));
            }
        }
        _ => {}
    }
    if ks != Kind::Symlink && xattrs(src) != xattrs(dst) {
        out.push("extended attributes differ".to_string());
    }
    out
}

/// Compare the tree the relay sees at `host_path` on the host at
/// `host_root` (see [`copy::walk_source`]: links out of the tree compare as
/// their targets) with its copy at `dst_root`, completely.
pub fn verify(host_root: &Path, host_path: &Path, dst_root: &Path) -> Result<Report> {
    let (src, dst) = rayon::join(
        || copy::walk_source(host_root, host_path),
        || copy::walk(dst_root, true),
    );
    let (src, dst) = (src?, dst?);
    let dst_map: HashMap<&Path, &Metadata> = dst
        .entries
        .iter()
        .map(|e| (e.rel.as_path(), &e.meta))
        .collect();
    let mut report = Report::default();
    let show = |rel: &Path| -> String {
        if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            rel.shown()
        }
    };

    // Entries missing at the destination or extra there.
    let mut src_names = std::collections::HashSet::new();
    for e in &src.entries {
        if copy::kind(&e.meta) == Kind::Special {
            report.special += 1;
            continue;
        }
        src_names.insert(e.rel.as_path());
        report.entries += 1;
        if !dst_map.contains_key(e.rel.as_path()) {
            report
                .differences
                .push(format!("{}: missing at the copy", show(&e.rel)));
            report.differing.push(e.rel.clone());
        }
    }
    for e in &dst.entries {
        if !src_names.contains(e.rel.as_path()) {
            report
                .differences
                .push(format!("{}: not in the source", show(&e.rel)));
            report.differing.push(e.rel.clone());
        }
    }

    // Metadata and content, in parallel.
    let results: Vec<(&Path, Vec<String>, u64, bool)> = src
        .entries
        .par_iter()
        .filter(|e| copy::kind(&e.meta) != Kind::Special)
        .filter_map(|e| dst_map.get(e.rel.as_path()).map(|d| (e, *d)))
        .map(|(e, d)| {
            let sp = src.source_path(e);
            let dp = dst_root.join(&e.rel);
            let mut diffs: Vec<String> = compare_meta(&sp, &e.meta, &dp, d)
                .into_iter()
                .map(|m| format!("{}: {m}", show(&e.rel)))
                .collect();
            let mut bytes = 0;
            let is_file = copy::kind(&e.meta) == Kind::File;
            if is_file && diffs.is_empty() {
                match (hash(&sp), hash(&dp)) {
                    (Ok(a), Ok(b)) if a == b => bytes = e.meta.len(),
                    (Ok(_), Ok(_)) => diffs.push(format!("{}: content differs", show(&e.rel))),
                    (Err(err), _) | (_, Err(err)) => {
                        diffs.push(format!("{}: {err:#}", show(&e.rel)))
                    }
                }
            }
            (e.rel.as_path(), diffs, bytes, is_file)
        })
        .collect();
    for (rel, diffs, bytes, is_file) in results {
        if !diffs.is_empty() {
            report.differing.push(rel.to_path_buf());
        }
        report.differences.extend(diffs);
        report.bytes_hashed += bytes;
        report.files += u64::from(is_file);
    }

    // Hard-link structure: source inode <-> destination inode must be a
    // one-to-one mapping over the files of the tree.
    let mut s2d: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut d2s: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut shared: Vec<PathBuf> = Vec::new();
    for e in &src.entries {
        if copy::kind(&e.meta) != Kind::File {
            continue;
        }
        let Some(d) = dst_map.get(e.rel.as_path()) else {
            continue;
        };
        if !d.file_type().is_file() {
            continue;
        }
        let si = (e.meta.dev(), e.meta.ino());
        let di = (d.dev(), d.ino());
        let a = *s2d.entry(si).or_insert(di);
        let b = *d2s.entry(di).or_insert(si);
        if a != di || b != si {
            shared.push(e.rel.clone());
        }
    }
    for rel in shared {
        report
            .differences
            .push(format!("{}: hard links differ from the source", show(&rel)));
        report.differing.push(rel);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In `t`: a source directory `s` holding the file `name` with
    /// `content`, and the path of its copy `d` (not made yet).
    fn source_with(t: &Path, name: &str, content: &[u8]) -> (PathBuf, PathBuf) {
        let s = t.join("s");
        fs::create_dir_all(&s).unwrap();
        fs::write(s.join(name), content).unwrap();
        (s, t.join("d"))
    }

    /// Copy `s` to `d` the way migrate does.
    fn mirror(s: &Path, d: &Path) {
        copy::sync(&copy::walk(s, false).unwrap(), d, false).unwrap();
    }

    #[test]
    fn finds_content_mode_and_link_differences() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = source_with(t.path(), "a", b"one");
        fs::hard_link(s.join("a"), s.join("b")).unwrap();
        mirror(&s, &d);
        assert!(verify(Path::new("/"), &s, &d).unwrap().ok());

        // Same size and mtime, different content: only the hash sees it.
        let m = fs::metadata(d.join("a")).unwrap();
        fs::write(d.join("a"), b"two").unwrap();
        filetime::set_file_mtime(
            d.join("a"),
            filetime::FileTime::from_last_modification_time(&m),
        )
        .unwrap();
        let r = verify(Path::new("/"), &s, &d).unwrap();
        assert!(r.differences.iter().any(|x| x.contains("content")), "{r:?}");

        // Break the hard link.
        fs::remove_file(d.join("b")).unwrap();
        fs::copy(d.join("a"), d.join("b")).unwrap();
        let r = verify(Path::new("/"), &s, &d).unwrap();
        assert!(!r.ok());
    }

    #[test]
    fn differences_are_worded_for_people() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = source_with(t.path(), "f", b"x");
        std::os::unix::fs::symlink("target-a", s.join("l")).unwrap();
        mirror(&s, &d);
        fs::remove_file(d.join("f")).unwrap();
        fs::create_dir(d.join("f")).unwrap();
        fs::remove_file(d.join("l")).unwrap();
        std::os::unix::fs::symlink("target-b", d.join("l")).unwrap();
        let r = verify(Path::new("/"), &s, &d).unwrap();
        let all = r.differences.join("\n");
        assert!(
            all.contains("f: regular file at the source, directory at the copy"),
            "{all}"
        );
        assert!(
            all.contains("l: symlink target target-a != target-b"),
            "{all}"
        );
        assert!(!all.contains("Some(") && !all.contains('"'), "{all}");
    }

    #[test]
    fn hashing_leaves_the_source_access_time_alone() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = source_with(t.path(), "f", b"mail");
        // An access time older than the mtime: relatime would update it on
        // any ordinary read.
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_atime(s.join("f"), old).unwrap();
        mirror(&s, &d);
        assert!(verify(Path::new("/"), &s, &d).unwrap().ok());
        let after = fs::metadata(s.join("f")).unwrap();
        assert_eq!(filetime::FileTime::from_last_access_time(&after), old);
    }
}
