//! `restore ARCHIVE`: bring a deployment's state back from an archive or a
//! chain (a full archive and the incrementals after it).
//!
//! An archive is untrusted input. Every path of the tar stream and of the
//! manifest is checked before it is used: relative, no `..`, under one of
//! the top-level paths a backup holds, each top-level path of the kind it
//! must be (`data/` and `custom/` directories; `.env`, `chatmail.ini` and
//! the override regular files), no setuid file, no entry below a symlink
//! the archive made, a hard link only to a file of the restore. These
//! checks run on a model of the tree ([`Model`]) in a dry run exactly as in
//! a real one. The real run writes into a temporary directory inside the
//! deployment directory through [`Tree`], which resolves every path below
//! that directory without following any symlink: nothing outside it is
//! ever opened, created, changed, owned or removed. Sizes are bounded
//! before anything is read into memory; a chain's base must be a regular
//! file next to the archive that names it.
//!
//! Every archive of the chain is checked before anything is moved: each
//! file is hashed while it is written and compared with the archive's
//! manifest; a truncated or corrupt archive, a broken chain or an archive
//! from a newer tool is an error and the temporary directory is removed.
//! Only then are owners, modes and times applied and the top-level paths
//! renamed into place; what was there is moved aside (`--force`) under a
//! name no other file has, never deleted. A deployment whose container is
//! running is refused: its services hold the files being replaced.

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::crypt::{self, Keys};
use super::manifest::{self, check_format, Entry, EntryKind, Header, Kind, Manifest};
use super::{catalog, scan};
use crate::host::flush::{Flusher, Target};
use crate::host::interrupt;
use crate::host::tree::{self, Tree};
use crate::{deployment, error, Context};

/// How often the restored tree's file system is flushed while it is written.
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);
/// The largest header entry read (a header is a few hundred bytes).
const MAX_HEADER: u64 = 64 << 10;

/// Typed options of `restore`.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// An archive, a backup directory (its newest chain) or `-` (stdin,
    /// a full archive).
    pub archive: PathBuf,
    /// Restore into a deployment that has state: move it aside first.
    pub force: bool,
    pub json: bool,
    /// To decrypt encrypted archives.
    pub keys: Keys,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreSummary {
    pub archives: Vec<PathBuf>,
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub moved_aside: Vec<PathBuf>,
    /// Owner names the restoring side does not know (numeric id kept).
    pub unknown_owners: Vec<String>,
    pub owners_applied: bool,
}

fn corrupt(archive: &Path) -> String {
    format!(
        "{} is truncated or corrupt (nothing was restored); use another copy of it",
        archive.display()
    )
}

/// An error about what an archive holds: it was not made by this tool, or
/// was changed since.
fn untrusted(archive: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {what}; the archive was not made by chatmail-docker backup (or was changed since), nothing was restored",
        archive.display()
    )
}

fn open(archive: &Path, keys: &Keys) -> Result<Box<dyn Read>> {
    let raw: Box<dyn Read> = if archive == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            catalog::open_archive(archive)
                .map_err(|e| {
                    error::usage(format!(
                        "{e:#} (restore reads archives from regular files; give - to read a stream from standard input)"
                    ))
                })?
                .0,
        )
    };
    crypt::open_reader(raw, keys, archive)
}

type Entries<'a> = tar::Archive<zstd::stream::Decoder<'static, io::BufReader<Box<dyn Read + 'a>>>>;

fn tar_of<'a>(r: Box<dyn Read + 'a>, archive: &Path) -> Result<Entries<'a>> {
    let dec = zstd::stream::Decoder::new(r).with_context(|| corrupt(archive))?;
    Ok(tar::Archive::new(dec))
}

/// Read an entry of the archive's own (header, manifest) whole, refusing
/// one larger than `limit` before reading it.
fn read_meta<R: Read>(
    e: &mut tar::Entry<R>,
    archive: &Path,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let size = e.header().entry_size().with_context(|| corrupt(archive))?;
    if size > limit {
        return Err(untrusted(
            archive,
            format!("its {what} is {size} bytes, more than {limit}"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    e.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| corrupt(archive))?;
    Ok(buf)
}

fn read_header_from<R: Read>(e: &mut tar::Entry<R>, archive: &Path) -> Result<Header> {
    let path = e.path().with_context(|| corrupt(archive))?.into_owned();
    if path != Path::new(manifest::HEADER_ENTRY) {
        bail!(
            "{} is not a chatmail-docker backup (it does not start with {})",
            archive.display(),
            manifest::HEADER_ENTRY
        );
    }
    let buf = read_meta(e, archive, MAX_HEADER, "header")?;
    let h: Header = serde_json::from_slice(&buf)
        .with_context(|| format!("{}: the backup header cannot be read", archive.display()))?;
    check_format(&h, archive)?;
    Ok(h)
}

/// The first entry of an archive.
pub fn read_header(archive: &Path, keys: &Keys) -> Result<Header> {
    let mut ar = tar_of(open(archive, keys)?, archive)?;
    let mut entries = ar.entries().with_context(|| corrupt(archive))?;
    let mut first = entries
        .next()
        .with_context(|| corrupt(archive))?
        .with_context(|| corrupt(archive))?;
    read_header_from(&mut first, archive)
}

/// The manifest of an archive, read through it (and checked).
pub fn read_manifest(archive: &Path, keys: &Keys) -> Result<Manifest> {
    let mut model = Model {
        alone: true,
        ..Model::default()
    };
    extract(
        open(archive, keys)?,
        archive,
        None,
        &mut model,
        None,
        crate::host::interrupt::count(),
    )
}

/// The chain ending in `archive`, oldest first: its base is looked for
/// next to it, by the file name its header records.
pub fn chain(archive: &Path, keys: &Keys) -> Result<Vec<(PathBuf, Header)>> {
    let mut out = Vec::new();
    let mut cur = archive.to_path_buf();
    loop {
        let h = read_header(&cur, keys)?;
        let base = h.base.clone();
        out.push((cur.clone(), h));
        let Some(base) = base else { break };
        cur = base_next_to(&cur, &base.file, out.len(), archive)?;
    }
    out.reverse();
    Ok(out)
}

/// The archive `file` that the incremental `cur` builds on, looked for next
/// to it; `steps` archives of the chain ending in `last` were read so far.
/// The name is a plain file name (a header naming `../x` or `/etc/x` is
/// refused) and the file a regular one (not a link, not a FIFO).
pub(crate) fn base_next_to(cur: &Path, file: &str, steps: usize, last: &Path) -> Result<PathBuf> {
    if file.is_empty() || file.contains('/') || file == "." || file == ".." || file.contains('\0') {
        return Err(untrusted(
            cur,
            format!("its header names the base {file:?}, which is not a file name"),
        ));
    }
    if steps > 10_000 {
        bail!("{}: the chain of incremental backups loops", last.display());
    }
    let next = cur.with_file_name(file);
    match fs::symlink_metadata(&next) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "{} is an incremental backup based on {file}, which is not next to it; put the whole chain (the full backup and every incremental after it) in one directory",
            cur.display(),
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", next.display())),
        Ok(m) if !m.file_type().is_file() => bail!(
            "{} is an incremental backup based on {file}, but {} is not a regular file (a link or a FIFO is never followed); put the archive itself there",
            cur.display(),
            next.display()
        ),
        Ok(_) => Ok(next),
    }
}

/// A path from an archive, checked: relative, plain, under one of the
/// top-level paths a backup holds.
fn checked_path(p: &str, archive: &Path) -> Result<String> {
    let ok = tree::is_plain(p)
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && scan::top_level().contains(&p.split('/').next().unwrap_or(""));
    if ok {
        Ok(p.to_string())
    } else {
        Err(untrusted(
            archive,
            format!("unexpected entry {p:?} (not a deployment file)"),
        ))
    }
}

/// The kind a top-level path must have.
fn top_kind(top: &str) -> EntryKind {
    if top == deployment::DATA_DIR || top == deployment::CUSTOM_DIR {
        EntryKind::Dir
    } else {
        EntryKind::File
    }
}

fn kind_word(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hard link",
    }
}

/// Mode bits a restored path may not have: no setuid anywhere, no setgid
/// but on a directory (Postfix's `public/` is setgid); mail data runs
/// nothing.
fn check_mode(path: &str, kind: EntryKind, mode: u32, archive: &Path) -> Result<()> {
    let setuid = mode & 0o4000 != 0;
    let setgid = mode & 0o2000 != 0 && kind != EntryKind::Dir;
    if setuid || setgid {
        return Err(untrusted(
            archive,
            format!(
                "{path} has the {} bit (mode {:o}); a deployment's data never does",
                if setuid { "setuid" } else { "setgid" },
                mode
            ),
        ));
    }
    Ok(())
}

/// Check an entry of a manifest: its path, its kind at the top level, its
/// mode, a hard link's target.
fn check_entry(e: &Entry, archive: &Path) -> Result<()> {
    checked_path(&e.path, archive)?;
    if !e.path.contains('/') {
        let want = top_kind(&e.path);
        if e.kind != want {
            return Err(untrusted(
                archive,
                format!(
                    "{} is a {} in its manifest; it must be a {}",
                    e.path,
                    kind_word(e.kind),
                    kind_word(want)
                ),
            ));
        }
    }
    if e.kind == EntryKind::Hardlink {
        checked_path(e.target.as_deref().unwrap_or(""), archive)?;
    }
    check_mode(&e.path, e.kind, e.mode, archive)
}

/// What the restore has made so far, by path: the checks of every entry run
/// on this model, in a dry run as in a real one.
#[derive(Default)]
pub(crate) struct Model {
    /// Path -> kind (a hard link is a file) and size of files.
    paths: BTreeMap<String, (EntryKind, u64)>,
    /// One archive read on its own (for its manifest): the files of the
    /// archives it builds on are not known, so a hard link may name one.
    alone: bool,
}

impl Model {
    /// Everything at and below `rel`.
    fn below(&self, rel: &str) -> Vec<String> {
        let lo = format!("{rel}/");
        let hi = format!("{rel}0"); // '0' follows '/'
        let mut v: Vec<String> = self.paths.range(lo..hi).map(|(k, _)| k.clone()).collect();
        if self.paths.contains_key(rel) {
            v.push(rel.to_string());
        }
        v
    }

    /// Where an entry `rel` may go: every directory above it is one (or is
    /// made as one), none is a symlink or a file.
    fn check_parents(&self, rel: &str, archive: &Path) -> Result<()> {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let p = &rel[..at + i];
            match self.paths.get(p) {
                None | Some((EntryKind::Dir, _)) => {}
                Some((k, _)) => {
                    return Err(untrusted(
                        archive,
                        format!(
                            "{rel} lies below {p}, which is a {} of the restore: an entry there would leave it",
                            kind_word(*k)
                        ),
                    ))
                }
            }
            at += i + 1;
        }
        Ok(())
    }

    /// `rel` is now of `kind`: what it replaces goes (a directory with what
    /// it held), unless a directory stays a directory. Returns whether
    /// something was there to remove.
    fn set(&mut self, rel: &str, kind: EntryKind, size: u64) -> bool {
        let kind = if kind == EntryKind::Hardlink {
            EntryKind::File
        } else {
            kind
        };
        let replaced = match self.paths.get(rel) {
            Some((EntryKind::Dir, _)) if kind == EntryKind::Dir => false,
            Some(_) => {
                for p in self.below(rel) {
                    self.paths.remove(&p);
                }
                true
            }
            None => false,
        };
        // Directories above an entry are made as directories.
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            self.paths
                .entry(rel[..at + i].to_string())
                .or_insert((EntryKind::Dir, 0));
            at += i + 1;
        }
        self.paths.insert(rel.to_string(), (kind, size));
        replaced
    }

    fn kind(&self, rel: &str) -> Option<EntryKind> {
        self.paths.get(rel).map(|(k, _)| *k)
    }
}

/// Files up to this size are written by the pool; larger ones by the
/// reading thread itself (memory stays bounded either way).
const POOL_FILE: u64 = 8 << 20;

/// A file to write into the staging directory, with its content.
struct WriteJob {
    tree: Arc<Tree>,
    rel: String,
    data: Vec<u8>,
}

/// What writing one file gave: its path, hash and size, or the error.
type Written = Result<(String, String, u64)>;

/// Threads that create, write and hash the files the reading thread
/// decompresses: on a restore most time is the kernel's, creating files
/// and copying data into them, which this spreads over every core while
/// one thread decompresses (as `zstd -d | tar -x` runs in two processes).
struct Pool {
    workers: crate::host::pool::Pool<WriteJob>,
    done: std::sync::mpsc::Receiver<Written>,
    sent: usize,
    received: usize,
}

fn write_one(job: WriteJob) -> Written {
    let io_ctx = || format!("cannot write {} into the temporary directory", job.rel);
    let mut f = job.tree.create_file(&job.rel, 0o600).with_context(io_ctx)?;
    super::write_chunked(&mut f, &job.data).with_context(io_ctx)?;
    let sha = hex::encode(Sha256::digest(&job.data));
    Ok((job.rel, sha, job.data.len() as u64))
}

impl Pool {
    fn new() -> Result<Pool> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let (done_tx, done) = std::sync::mpsc::channel::<Written>();
        Ok(Pool {
            workers: crate::host::pool::start("restore", n, 2 * n, done_tx, write_one)?,
            done,
            sent: 0,
            received: 0,
        })
    }

    fn take(&mut self, w: Written, hashes: &mut BTreeMap<String, (String, u64)>) -> Result<()> {
        self.received += 1;
        let (rel, sha, size) = w?;
        hashes.insert(rel, (sha, size));
        Ok(())
    }

    fn send(&mut self, job: WriteJob, hashes: &mut BTreeMap<String, (String, u64)>) -> Result<()> {
        while let Ok(w) = self.done.try_recv() {
            self.take(w, hashes)?;
        }
        if !self.workers.send(job) {
            self.wait(hashes)?;
            bail!("the writing threads stopped");
        }
        self.sent += 1;
        Ok(())
    }

    /// Wait until every file sent so far is written.
    fn wait(&mut self, hashes: &mut BTreeMap<String, (String, u64)>) -> Result<()> {
        while self.received < self.sent {
            let w = self.done.recv().context("the writing threads stopped")?;
            self.take(w, hashes)?;
        }
        Ok(())
    }
}

/// The staging directory being written.
struct Staging {
    tree: Arc<Tree>,
    /// Directories made so far (no `mkdir` for each file).
    dirs: rustc_hash::FxHashSet<String>,
}

impl Staging {
    /// Make the directories above `rel`.
    fn parents(&mut self, rel: &str) -> io::Result<()> {
        let Some((parent, _)) = rel.rsplit_once('/') else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        let mut at = 0;
        loop {
            let end = parent[at..]
                .find('/')
                .map(|i| at + i)
                .unwrap_or(parent.len());
            let p = &parent[..end];
            if !self.dirs.contains(p) {
                self.tree.mkdir(p, 0o700)?;
                self.dirs.insert(p.to_string());
            }
            if end == parent.len() {
                return Ok(());
            }
            at = end + 1;
        }
    }
}

/// Read one archive; with `staging`, write its entries there. `model` is
/// the restore so far (every check runs on it, written or not). Returns
/// the archive's manifest after checking every stored file's hash and
/// every entry against it.
fn extract(
    r: Box<dyn Read + '_>,
    archive: &Path,
    mut staging: Option<&mut Staging>,
    model: &mut Model,
    expect_base: Option<&str>,
    signals: usize,
) -> Result<Manifest> {
    let mut ar = tar_of(r, archive)?;
    let mut hashes: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let mut header: Option<Header> = None;
    let mut buf = vec![0u8; 1 << 20];
    // Every path once per archive: a second entry could rewrite a file
    // through a hard link after its hash was taken.
    let mut seen: rustc_hash::FxHashSet<String> = Default::default();
    // What this archive's tar entries are, checked against its manifest.
    let mut kinds: BTreeMap<String, EntryKind> = BTreeMap::new();
    let mut pool = match staging {
        Some(_) => Some(Pool::new()?),
        None => None,
    };
    {
        let entries = ar.entries().with_context(|| corrupt(archive))?;
        for item in entries {
            let mut e = item.with_context(|| corrupt(archive))?;
            if header.is_none() {
                let h = read_header_from(&mut e, archive)?;
                if let Some(want) = expect_base {
                    if h.base.as_ref().map(|b| b.id.as_str()) != Some(want) {
                        bail!(
                            "{} does not build on the archive before it in the chain; restore a chain in the order it was made",
                            archive.display()
                        );
                    }
                }
                header = Some(h);
                continue;
            }
            let raw = e.path_bytes().into_owned();
            if manifest.is_some() {
                bail!(
                    "{}: entries after the manifest; {}",
                    archive.display(),
                    corrupt(archive)
                );
            }
            if raw == manifest::MANIFEST_ENTRY.as_bytes() {
                let b = read_meta(&mut e, archive, super::MAX_MANIFEST, "manifest")?;
                manifest = Some(Manifest::from_json(&b, archive)?);
                continue;
            }
            if interrupt::since(signals) {
                return Err(interrupt::interrupted("interrupted: nothing was restored"));
            }
            let Ok(raw) = String::from_utf8(raw) else {
                return Err(untrusted(archive, "an entry's name is not UTF-8"));
            };
            let rel = checked_path(&raw, archive)?;
            if !seen.insert(rel.clone()) {
                bail!(
                    "{}: {rel} appears twice; {}",
                    archive.display(),
                    corrupt(archive)
                );
            }
            let ty = e.header().entry_type();
            let kind = match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => EntryKind::Hardlink,
                other => {
                    return Err(untrusted(
                        archive,
                        format!("entry {rel} has a type ({other:?}) a backup never holds"),
                    ))
                }
            };
            if !rel.contains('/') && kind != top_kind(&rel) {
                return Err(untrusted(
                    archive,
                    format!(
                        "{rel} is a {}; it must be a {}",
                        kind_word(kind),
                        kind_word(top_kind(&rel))
                    ),
                ));
            }
            // The manifest has the mode too (checked there); a header without
            // one is taken as none.
            let mode = e.header().mode().unwrap_or(0);
            check_mode(&rel, kind, mode, archive)?;
            model.check_parents(&rel, archive)?;
            let target = match kind {
                EntryKind::Symlink | EntryKind::Hardlink => {
                    Some(e.link_name_bytes().map(|t| t.into_owned()).ok_or_else(|| {
                        untrusted(archive, format!("the link {rel} has no target"))
                    })?)
                }
                _ => None,
            };
            if kind == EntryKind::Hardlink {
                let t = String::from_utf8(target.clone().unwrap_or_default()).map_err(|_| {
                    untrusted(
                        archive,
                        format!("the hard link {rel}'s target is not UTF-8"),
                    )
                })?;
                let t = checked_path(&t, archive)?;
                let known = match model.kind(&t) {
                    Some(k) => k == EntryKind::File,
                    None => model.alone,
                };
                if !known || t == rel {
                    return Err(untrusted(
                        archive,
                        format!("the hard link {rel} does not lead to a file of the backup"),
                    ));
                }
            }
            let size = e.header().entry_size().with_context(|| corrupt(archive))?;
            let replaced = model.set(&rel, kind, if kind == EntryKind::File { size } else { 0 });
            kinds.insert(rel.clone(), kind);
            let io_ctx = || format!("cannot write {rel} into the temporary directory");
            let Some(st) = staging.as_deref_mut() else {
                // Checked, not written: the content is hashed all the same.
                if kind == EntryKind::File {
                    let mut hasher = Sha256::new();
                    let mut n = 0u64;
                    loop {
                        let k = e.read(&mut buf).with_context(|| corrupt(archive))?;
                        if k == 0 {
                            break;
                        }
                        hasher.update(&buf[..k]);
                        n += k as u64;
                    }
                    hashes.insert(rel, (hex::encode(hasher.finalize()), n));
                }
                continue;
            };
            if replaced {
                // A later archive of the chain changed it: the old one goes
                // first (written files must be on disk to be removed).
                if let Some(pool) = &mut pool {
                    pool.wait(&mut hashes)?;
                }
                st.tree.remove_all(&rel).with_context(io_ctx)?;
                st.dirs
                    .retain(|d| d != &rel && !d.starts_with(&format!("{rel}/")));
            }
            st.parents(&rel).with_context(io_ctx)?;
            match kind {
                EntryKind::File => {
                    if let Some(pool) = &mut pool {
                        if size <= POOL_FILE {
                            let mut data = Vec::with_capacity(size as usize);
                            (&mut e)
                                .take(size)
                                .read_to_end(&mut data)
                                .with_context(|| corrupt(archive))?;
                            pool.send(
                                WriteJob {
                                    tree: st.tree.clone(),
                                    rel,
                                    data,
                                },
                                &mut hashes,
                            )?;
                            continue;
                        }
                    }
                    let mut hasher = Sha256::new();
                    let mut n = 0u64;
                    let mut f = st.tree.create_file(&rel, 0o600).with_context(io_ctx)?;
                    loop {
                        let k = e.read(&mut buf).with_context(|| corrupt(archive))?;
                        if k == 0 {
                            break;
                        }
                        hasher.update(&buf[..k]);
                        n += k as u64;
                        super::write_chunked(&mut f, &buf[..k]).with_context(io_ctx)?;
                    }
                    hashes.insert(rel, (hex::encode(hasher.finalize()), n));
                }
                EntryKind::Dir => {
                    if !st.dirs.contains(&rel) {
                        st.tree.mkdir(&rel, 0o700).with_context(io_ctx)?;
                        st.dirs.insert(rel);
                    }
                }
                EntryKind::Symlink => {
                    let t = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                        target.unwrap_or_default(),
                    );
                    st.tree.symlink(&t, &rel).with_context(io_ctx)?;
                }
                EntryKind::Hardlink => {
                    // The file it names must be written first.
                    if let Some(pool) = &mut pool {
                        pool.wait(&mut hashes)?;
                    }
                    let t = String::from_utf8(target.unwrap_or_default()).unwrap_or_default();
                    st.tree.hard_link(&t, &rel).with_context(io_ctx)?;
                }
            }
        }
    }
    if let Some(pool) = &mut pool {
        pool.wait(&mut hashes)?;
    }
    drop(pool);
    // Read to the end of the stream so that zstd checks its checksum.
    io::copy(&mut ar.into_inner(), &mut io::sink()).with_context(|| corrupt(archive))?;
    let header = header.with_context(|| corrupt(archive))?;
    let Some(m) = manifest else {
        bail!(
            "{} ends before its manifest: {}",
            archive.display(),
            corrupt(archive)
        );
    };
    if m.header != header {
        bail!(
            "{}: the manifest does not belong to the header; {}",
            archive.display(),
            corrupt(archive)
        );
    }
    for e in &m.entries {
        check_entry(e, archive)?;
    }
    for d in &m.deleted {
        checked_path(d, archive)?;
    }
    let mut expected = 0usize;
    for e in m.entries.iter().filter(|e| e.stored) {
        if kinds.get(&e.path) != Some(&e.kind) {
            return Err(untrusted(
                archive,
                format!("{} is not in the archive as its manifest says", e.path),
            ));
        }
        if e.kind != EntryKind::File {
            continue;
        }
        expected += 1;
        match hashes.get(&e.path) {
            Some((sha, size)) if Some(sha) == e.sha256.as_ref() && *size == e.size => {}
            Some(_) => bail!(
                "{}: {} does not match its checksum; the archive is corrupt (nothing was restored)",
                archive.display(),
                e.path
            ),
            None => bail!(
                "{}: {} is missing; {}",
                archive.display(),
                e.path,
                corrupt(archive)
            ),
        }
    }
    if expected != hashes.len() || m.entries.iter().filter(|e| e.stored).count() != kinds.len() {
        bail!(
            "{}: entries that the manifest does not list; {}",
            archive.display(),
            corrupt(archive)
        );
    }
    Ok(m)
}

/// The deployment after the chain up to `m` (the archive `archive`): a
/// chain starts with a full backup.
fn fold(state: &mut Option<Manifest>, m: Manifest, archive: &Path) -> Result<()> {
    match state {
        None if m.header.kind != Kind::Full || m.listing != manifest::Listing::All => bail!(
            "{} is an incremental backup; restore needs its full backup first (restore from the files, not from standard input)",
            archive.display()
        ),
        None => *state = Some(m),
        Some(s) => s.fold(m),
    }
    Ok(())
}

/// Make the model (and `staging`) hold exactly the paths `m` lists (after
/// an incremental).
fn prune(model: &mut Model, staging: Option<&mut Staging>, m: &Manifest) -> Result<()> {
    let keep: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    let gone: Vec<String> = model
        .paths
        .keys()
        .filter(|p| !keep.contains(p.as_str()))
        .cloned()
        .collect();
    // A path goes with everything below it (on disk as in the model: a
    // listed path below an unlisted directory is then missing, and the
    // chain is refused as incomplete).
    for p in gone.iter() {
        for q in model.below(p) {
            model.paths.remove(&q);
        }
    }
    if let Some(st) = staging {
        // Shallowest first; a removed directory takes its children along.
        for p in &gone {
            if gone.iter().any(|q| {
                p.len() > q.len() && p.starts_with(q.as_str()) && p.as_bytes()[q.len()] == b'/'
            }) {
                continue;
            }
            st.tree
                .remove_all(p)
                .with_context(|| format!("cannot remove {p} from the temporary directory"))?;
            st.dirs.remove(p);
        }
    }
    Ok(())
}

/// The model holds exactly what `m` lists, of the kinds and sizes it says.
fn check_complete(model: &Model, m: &Manifest) -> Result<()> {
    for e in &m.entries {
        let want = match e.kind {
            EntryKind::Hardlink => EntryKind::File,
            k => k,
        };
        match model.paths.get(&e.path) {
            None => bail!(
                "{} is missing after the chain was applied; the chain is incomplete",
                e.path
            ),
            Some((k, size)) => {
                if *k != want || (e.kind == EntryKind::File && *size != e.size) {
                    bail!(
                        "{} differs from its manifest after the chain was applied",
                        e.path
                    );
                }
            }
        }
    }
    if model.paths.len() != m.entries.len() {
        bail!(
            "the restored tree holds paths its manifest does not list; the chain is inconsistent"
        );
    }
    Ok(())
}

/// Apply owners, modes and times (through the staging tree: nothing is
/// followed). Every entry is independent here, so the work is spread over
/// every core.
fn finish_tree(tree: &Tree, m: &Manifest, chown: bool) -> Result<()> {
    use rayon::prelude::*;
    m.entries.par_iter().try_for_each(|e| -> Result<()> {
        let st = tree
            .stat(&e.path)
            .with_context(|| format!("cannot read {}", e.path))?
            .with_context(|| {
                format!(
                    "{} is missing after the chain was applied; the chain is incomplete",
                    e.path
                )
            })?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        use rustix::fs::FileType as F;
        let ok = match e.kind {
            EntryKind::File | EntryKind::Hardlink => kind == F::RegularFile,
            EntryKind::Dir => kind == F::Directory,
            EntryKind::Symlink => kind == F::Symlink,
        };
        if !ok || (e.kind == EntryKind::File && st.st_size as u64 != e.size) {
            bail!(
                "{} differs from its manifest after the chain was applied",
                e.path
            );
        }
        // Owners, then modes (chown clears setuid bits), then times.
        if chown {
            tree.chown(&e.path, e.uid, e.gid)
                .with_context(|| format!("cannot set the owner of {}", e.path))?;
        }
        if e.kind != EntryKind::Symlink {
            tree.chmod(&e.path, e.mode)
                .with_context(|| format!("cannot set the mode of {}", e.path))?;
        }
        tree.set_mtime(&e.path, e.mtime, e.mtime_nsec)
            .with_context(|| format!("cannot set the time of {}", e.path))?;
        Ok(())
    })
}

/// Whether a top-level path in the target holds state (more than the
/// repository's placeholders).
fn has_state(p: &Path) -> Result<bool> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    if !m.is_dir() {
        return Ok(true);
    }
    for e in fs::read_dir(p)? {
        let n = e?.file_name();
        if n != "README.md" && n != ".gitkeep" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A name for `top` moved aside that nothing has: `TOP.before-restore-TIME`,
/// then `-2`, `-3`, ... (the rename itself never replaces anything).
fn move_aside(dir: &Path, top: &str, stamp: &str) -> Result<PathBuf> {
    let src = dir.join(top);
    for n in 1..10_000 {
        let name = if n == 1 {
            format!("{top}.before-restore-{stamp}")
        } else {
            format!("{top}.before-restore-{stamp}-{n}")
        };
        let aside = dir.join(&name);
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &src,
            rustix::fs::CWD,
            &aside,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(aside),
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => continue,
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("cannot move {} aside", src.display()))
            }
        }
    }
    bail!("cannot find a free name to move {} aside", src.display())
}

/// The archive a directory's newest chain ends in: the newest archive by
/// the time its header records (not by name). Archives of more than one
/// deployment are ambiguous.
fn newest_in(dir: &Path, keys: &Keys) -> Result<PathBuf> {
    let mut found: Vec<(PathBuf, Header)> = Vec::new();
    let mut unreadable = 0;
    for p in super::archives_in(dir)? {
        match read_header(&p, keys) {
            Ok(h) => found.push((p, h)),
            Err(e)
                if error::exit_code(&e) == error::EXIT_USAGE
                    && found.is_empty()
                    && unreadable == 0 =>
            {
                // Encrypted without the key: say so (the same for all).
                return Err(e);
            }
            Err(_) => unreadable += 1,
        }
    }
    let deployments: std::collections::BTreeSet<Option<&str>> =
        found.iter().map(|(_, h)| h.deployment.as_deref()).collect();
    if deployments.len() > 1 {
        return Err(error::usage(format!(
            "{} holds archives of {} deployments; name the archive to restore",
            dir.display(),
            deployments.len()
        )));
    }
    found
        .into_iter()
        .max_by(|a, b| a.1.created.cmp(&b.1.created))
        .map(|(p, _)| p)
        .with_context(|| {
            format!(
                "{} holds no archives ({}*{}){}",
                dir.display(),
                super::PREFIX,
                super::SUFFIX,
                if unreadable > 0 {
                    format!("; {unreadable} files named like archives cannot be read")
                } else {
                    String::new()
                }
            )
        })
}

/// Warn about the restored override files that mount something over the
/// state: the container would not see what was restored there.
fn warn_shadowed(ctx: &Context) {
    let Ok(claimed) = crate::engine::claimed_mounts(&ctx.deployment.user_overrides()) else {
        return;
    };
    for m in claimed {
        for (apath, target) in deployment::STATE_MOUNTS {
            let t = m.target.as_str();
            if t == *target || t.strip_prefix(target).is_some_and(|r| r.starts_with('/')) {
                ctx.shell.warn(format!(
                    "{} mounts {} at {t}: the container will see that instead of what was restored into {apath}; remove that mount to use the restored data",
                    m.file.display(),
                    m.what,
                ));
            }
        }
    }
}

/// Run `restore`.
pub fn run(ctx: &Context, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let start = Instant::now();
    // Ctrl-C and SIGTERM are counted, not fatal, until everything is
    // checked: the temporary directory is removed on the way out.
    let signals = crate::host::interrupt::count();
    let dir = ctx.deployment.dir().to_path_buf();
    let stdin = opts.archive == Path::new("-");
    let last = if !stdin && opts.archive.is_dir() {
        newest_in(&opts.archive, &opts.keys)?
    } else {
        opts.archive.clone()
    };
    if !stdin && fs::symlink_metadata(&last).is_err() {
        return Err(error::usage(format!("{} does not exist", last.display())));
    }
    let chain: Vec<PathBuf> = if stdin {
        vec![last.clone()]
    } else {
        chain(&last, &opts.keys)?
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    };
    if let Some(c) = super::running_container(ctx) {
        return Err(error::usage(format!(
            "the relay's container {} of {} is running, and its services hold the files a restore replaces; stop it first (`chatmail-docker --dir {} down`), then restore",
            c.display_name(),
            dir.display(),
            dir.display()
        )));
    }
    let tops = scan::top_level();
    let conflicts: Vec<PathBuf> = tops
        .iter()
        .map(|t| dir.join(t))
        .filter(|p| has_state(p).unwrap_or(true))
        .collect();
    if !conflicts.is_empty() && !opts.force {
        return Err(error::usage(format!(
            "{} already holds a deployment ({}); restore into an empty deployment directory, or pass --force to move these aside (they are never deleted)",
            dir.display(),
            conflicts
                .iter()
                .map(|p| p.strip_prefix(&dir).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let mut model = Model::default();
    if ctx.dry_run {
        // Every check of a real run, on the model; nothing is written.
        let mut prev: Option<String> = None;
        let mut state: Option<Manifest> = None;
        for a in &chain {
            let m = extract(
                open(a, &opts.keys)?,
                a,
                None,
                &mut model,
                prev.as_deref(),
                signals,
            )?;
            ctx.shell.out(format!("verified {}", a.display()));
            prev = Some(m.header.id.clone());
            fold(&mut state, m, a)?;
            prune(&mut model, None, state.as_ref().expect("folded"))?;
        }
        let m = state.expect("a chain has an archive");
        check_complete(&model, &m)?;
        for c in &conflicts {
            ctx.shell.out(format!("would move {} aside", c.display()));
        }
        ctx.shell.out(format!(
            "would restore {} paths into {}",
            m.entries.len(),
            dir.display()
        ));
        ctx.dry_run_done();
        return Ok(RestoreSummary {
            archives: chain,
            files: 0,
            bytes: 0,
            seconds: 0.0,
            moved_aside: vec![],
            unknown_owners: vec![],
            owners_applied: false,
        });
    }

    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staging_dir = tempfile::Builder::new()
        .prefix(".chatmail-restore.")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?;
    let _registered = interrupt::remove_on_forced_end(staging_dir.path().to_path_buf());
    let mut staging = Staging {
        tree: Arc::new(
            Tree::open(staging_dir.path())
                .with_context(|| format!("cannot open {}", staging_dir.path().display()))?,
        ),
        dirs: Default::default(),
    };
    let mut prev: Option<String> = None;
    // The deployment as of the archive restored last.
    let mut state: Option<Manifest> = None;
    // What is written goes to disk while more is written: the flush before
    // the move then has little left to wait for.
    let flusher = {
        let d = fs::File::open(staging_dir.path())
            .with_context(|| format!("cannot open {}", staging_dir.path().display()))?;
        Flusher::start("restore-flush", Target::FileSystem(d), FLUSH_PERIOD)?
    };
    for a in &chain {
        let m = extract(
            open(a, &opts.keys)?,
            a,
            Some(&mut staging),
            &mut model,
            prev.as_deref(),
            signals,
        )?;
        prev = Some(m.header.id.clone());
        fold(&mut state, m, a)?;
        prune(
            &mut model,
            Some(&mut staging),
            state.as_ref().expect("folded"),
        )?;
    }
    let mut m = state.expect("a chain has an archive");
    check_complete(&model, &m)?;
    drop(flusher);

    // The mail an earlier layout mounted from the host's /home/vmail is in
    // the archive now: the marker that mounted it would hide it again.
    let vmail_archived = m
        .entries
        .iter()
        .any(|e| e.path.starts_with("data/chatmail/vmail/"));
    if vmail_archived && model.kind(deployment::VMAIL_MARKER).is_some() {
        staging
            .tree
            .remove_all(deployment::VMAIL_MARKER)
            .context("cannot remove the --mount-vmail marker from the temporary directory")?;
        m.entries.retain(|e| e.path != deployment::VMAIL_MARKER);
        ctx.shell.note(format!(
            "the mail the relay mounted from the host's /home/vmail is restored into data/chatmail/vmail; {} is not restored",
            deployment::VMAIL_MARKER
        ));
    }

    // Owners are kept by number: the container that will run the relay is
    // not running (refused above), and the appliance's init gives the
    // mailboxes, the DKIM keys and the queue to its users by name at start.
    let is_root = rustix::process::geteuid().is_root();
    finish_tree(&staging.tree, &m, is_root)?;
    if !is_root {
        ctx.shell.note("not running as root: files belong to the restoring user; run restore as root to keep owners");
    }
    // One flush for the whole tree before it goes into place.
    crate::host::flush::sync_fs(staging_dir.path())?;
    // An interrupt at any point before the move leaves the target as it
    // was.
    if interrupt::since(signals) {
        return Err(interrupt::interrupted("interrupted: nothing was restored"));
    }

    // Move into place: what was there aside, then the restored paths in.
    // Renames only; a forced end waits for them.
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut placed: Vec<PathBuf> = Vec::new();
    let critical = interrupt::critical();
    let result = (|| -> Result<()> {
        for top in &tops {
            let src = staging_dir.path().join(top);
            if fs::symlink_metadata(&src).is_err() {
                continue;
            }
            let dst = dir.join(top);
            if has_state(&dst)? {
                let aside = move_aside(&dir, top, &stamp)?;
                moved.push((dst.clone(), aside));
            } else if let Ok(md) = fs::symlink_metadata(&dst) {
                if md.is_dir() {
                    // The checkout's placeholders come along.
                    for e in fs::read_dir(&dst)? {
                        let e = e?;
                        let to = src.join(e.file_name());
                        if fs::symlink_metadata(&to).is_err() {
                            fs::rename(e.path(), to)?;
                        }
                    }
                    let _ = fs::remove_dir(&dst);
                }
            }
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &src,
                rustix::fs::CWD,
                &dst,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(io::Error::from)
            .with_context(|| format!("cannot move {} into place", dst.display()))?;
            placed.push(dst);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in placed.iter().rev() {
            let rel = p.strip_prefix(&dir).unwrap_or(p);
            let _ = fs::rename(p, staging_dir.path().join(rel));
        }
        for (orig, aside) in moved.iter().rev() {
            let _ = fs::rename(aside, orig);
        }
        return Err(e);
    }
    crate::host::flush::sync_dir(&dir);
    drop(critical);
    drop(staging);
    drop(staging_dir);
    warn_shadowed(ctx);

    let files: Vec<&Entry> = m
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let summary = RestoreSummary {
        archives: chain,
        files: files.len(),
        bytes: files.iter().map(|e| e.size).sum(),
        seconds: start.elapsed().as_secs_f64(),
        moved_aside: moved.into_iter().map(|(_, a)| a).collect(),
        unknown_owners: Vec::new(),
        owners_applied: is_root,
    };
    if opts.json {
        ctx.shell.data(serde_json::to_string_pretty(&summary)?);
    } else {
        for a in &summary.moved_aside {
            ctx.shell.status("Moved aside", a.display().to_string());
        }
        ctx.shell.status(
            "Restored",
            format!(
                "{} files ({:.1} MiB) from {} archive{} into {} in {:.1} s; next: chatmail-docker setup",
                summary.files,
                summary.bytes as f64 / 1048576.0,
                summary.archives.len(),
                if summary.archives.len() == 1 { "" } else { "s" },
                dir.display(),
                summary.seconds
            ),
        );
    }
    Ok(summary)
}
