//! `restore ARCHIVE`: bring a deployment's state back from an archive or a
//! chain (a full archive and the incrementals after it).
//!
//! Every archive of the chain is checked before anything is moved: each
//! file is hashed while it is written into a temporary directory inside the
//! deployment directory and compared with the archive's manifest; a
//! truncated or corrupt archive, a broken chain or an archive from a newer
//! tool is an error and the temporary directory is removed. Only then are
//! owners (mapped by name), modes and times applied and the top-level
//! paths renamed into place; what was there is moved aside (`--force`),
//! never deleted.

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::crypt::{self, Keys};
use super::flush::{Flusher, Target};
use super::manifest::{self, check_format, Entry, EntryKind, Header, Kind, Manifest};
use super::{owners, scan};
use crate::{error, Context};

/// How often the restored tree's file system is flushed while it is written.
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

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

fn open(archive: &Path, keys: &Keys) -> Result<Box<dyn Read>> {
    let raw: Box<dyn Read> = if archive == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            fs::File::open(archive)
                .with_context(|| format!("cannot open {}", archive.display()))?,
        )
    };
    crypt::open_reader(raw, keys, archive)
}

type Entries<'a> = tar::Archive<zstd::stream::Decoder<'static, io::BufReader<Box<dyn Read + 'a>>>>;

fn tar_of<'a>(r: Box<dyn Read + 'a>, archive: &Path) -> Result<Entries<'a>> {
    let dec = zstd::stream::Decoder::new(r).with_context(|| corrupt(archive))?;
    Ok(tar::Archive::new(dec))
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
    let mut buf = Vec::new();
    e.read_to_end(&mut buf).with_context(|| corrupt(archive))?;
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
    extract(
        open(archive, keys)?,
        archive,
        None,
        None,
        crate::compose::signal_count(),
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
pub(crate) fn base_next_to(cur: &Path, file: &str, steps: usize, last: &Path) -> Result<PathBuf> {
    let next = cur.with_file_name(file);
    if !next.exists() {
        bail!(
            "{} is an incremental backup based on {file}, which is not next to it; put the whole chain (the full backup and every incremental after it) in one directory",
            cur.display(),
        );
    }
    if steps > 10_000 {
        bail!("{}: the chain of incremental backups loops", last.display());
    }
    Ok(next)
}

/// A path from an archive, checked: relative, no `..`, under one of the
/// top-level paths a backup holds.
fn checked_path(p: &Path, archive: &Path) -> Result<String> {
    let ok = p.components().all(|c| matches!(c, Component::Normal(_)))
        && p.components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .is_some_and(|top| scan::top_level().contains(&top));
    match (ok, p.to_str()) {
        (true, Some(s)) => Ok(s.to_string()),
        _ => bail!(
            "{}: unexpected entry {:?} (not a deployment file); the archive was not made by chatmail-docker backup",
            archive.display(),
            p
        ),
    }
}

/// Remove whatever is at `p` (inside the staging directory).
fn clear(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Make room for a new entry at `p`: remove what is there (unless the
/// staging directory started empty) and make its parent directories once.
/// A symlink on the way is refused: an entry never lands outside the
/// staging directory by following a link an archive made.
fn prepare(
    root: &Path,
    p: &Path,
    fresh: bool,
    dirs: &mut rustc_hash::FxHashSet<PathBuf>,
) -> io::Result<()> {
    if !fresh {
        clear(p)?;
    }
    let Some(parent) = p.parent() else {
        return Ok(());
    };
    if dirs.contains(parent) {
        return Ok(());
    }
    let rel = parent.strip_prefix(root).unwrap_or(parent);
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if dirs.contains(&cur) {
            continue;
        }
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symlink; an entry below it would leave the restore",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                )))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&cur)?;
                fs::create_dir(&cur)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&cur)?,
            Err(e) => return Err(e),
        }
        dirs.insert(cur.clone());
    }
    Ok(())
}

/// Files up to this size are written by the pool; larger ones by the
/// reading thread itself (memory stays bounded either way).
const POOL_FILE: u64 = 8 << 20;

/// A file to write into the staging directory, with its content.
struct WriteJob {
    dst: PathBuf,
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
    workers: super::pool::Pool<WriteJob>,
    done: std::sync::mpsc::Receiver<Written>,
    sent: usize,
    received: usize,
}

fn write_one(job: WriteJob) -> Written {
    let io_ctx = || format!("cannot write {} into the temporary directory", job.rel);
    let mut f = fs::File::create(&job.dst).with_context(io_ctx)?;
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
            workers: super::pool::start("restore", n, 2 * n, done_tx, write_one)?,
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

/// Read one archive; with `staging`, write its entries there. Returns its
/// manifest after checking every stored file's hash against it.
fn extract(
    r: Box<dyn Read + '_>,
    archive: &Path,
    staging: Option<&Path>,
    expect_base: Option<&str>,
    signals: usize,
) -> Result<Manifest> {
    let mut ar = tar_of(r, archive)?;
    let mut hashes: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let mut header: Option<Header> = None;
    let mut buf = vec![0u8; 1 << 20];
    // Directories made by this archive; in a fresh staging directory no
    // path exists before its entry (saves two system calls a file).
    let fresh = staging.is_some_and(|s| fs::read_dir(s).is_ok_and(|mut d| d.next().is_none()));
    let mut dirs: rustc_hash::FxHashSet<PathBuf> = Default::default();
    let root = staging.unwrap_or(Path::new(""));
    if let Some(s) = staging {
        dirs.insert(s.to_path_buf());
    }
    // Every path once per archive: a second entry could rewrite a file
    // through a hard link after its hash was taken.
    let mut seen: rustc_hash::FxHashSet<String> = Default::default();
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
            let raw = e.path().with_context(|| corrupt(archive))?.into_owned();
            if manifest.is_some() {
                bail!(
                    "{}: entries after the manifest; {}",
                    archive.display(),
                    corrupt(archive)
                );
            }
            if raw == Path::new(manifest::MANIFEST_ENTRY) {
                let mut b = Vec::new();
                e.read_to_end(&mut b).with_context(|| corrupt(archive))?;
                manifest = Some(Manifest::from_json(&b, archive)?);
                continue;
            }
            if crate::compose::interrupted_since(signals) {
                return Err(error::Failure {
                    code: 130,
                    message: Some("interrupted: nothing was restored".into()),
                }
                .into());
            }
            let rel = checked_path(&raw, archive)?;
            if !seen.insert(rel.clone()) {
                bail!(
                    "{}: {rel} appears twice; {}",
                    archive.display(),
                    corrupt(archive)
                );
            }
            let ty = e.header().entry_type();
            let dst = staging.map(|s| s.join(&rel));
            let io_ctx = || format!("cannot write {rel} into the temporary directory");
            match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if let (Some(d), Some(pool)) = (&dst, &mut pool) {
                        let size = e.header().entry_size().with_context(|| corrupt(archive))?;
                        if size <= POOL_FILE {
                            prepare(root, d, fresh, &mut dirs).with_context(io_ctx)?;
                            let mut data = Vec::with_capacity(size as usize);
                            e.read_to_end(&mut data).with_context(|| corrupt(archive))?;
                            pool.send(
                                WriteJob {
                                    dst: d.clone(),
                                    rel,
                                    data,
                                },
                                &mut hashes,
                            )?;
                            continue;
                        }
                    }
                    let mut hasher = Sha256::new();
                    let mut size = 0u64;
                    let mut f = match &dst {
                        Some(d) => {
                            prepare(root, d, fresh, &mut dirs).with_context(io_ctx)?;
                            Some(fs::File::create(d).with_context(io_ctx)?)
                        }
                        None => None,
                    };
                    loop {
                        let n = e.read(&mut buf).with_context(|| corrupt(archive))?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        size += n as u64;
                        if let Some(f) = &mut f {
                            super::write_chunked(f, &buf[..n]).with_context(io_ctx)?;
                        }
                    }
                    hashes.insert(rel, (hex::encode(hasher.finalize()), size));
                }
                tar::EntryType::Directory => {
                    if let Some(d) = &dst {
                        if !fresh && fs::symlink_metadata(d).is_ok_and(|m| !m.is_dir()) {
                            clear(d).with_context(io_ctx)?;
                        }
                        if !dirs.contains(d.as_path()) {
                            prepare(root, &d.join("x"), true, &mut dirs).with_context(io_ctx)?;
                        }
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name()
                        .with_context(|| corrupt(archive))?
                        .with_context(|| corrupt(archive))?
                        .into_owned();
                    if let Some(d) = &dst {
                        prepare(root, d, fresh, &mut dirs).with_context(io_ctx)?;
                        if ty == tar::EntryType::Link {
                            // The file it names must be written first.
                            if let Some(pool) = &mut pool {
                                pool.wait(&mut hashes)?;
                            }
                        }
                        if ty == tar::EntryType::Symlink {
                            std::os::unix::fs::symlink(&target, d).with_context(io_ctx)?;
                        } else {
                            let t = root.join(checked_path(&target, archive)?);
                            // The target must be a file of this restore,
                            // reached without a symlink.
                            let inside = fs::canonicalize(&t)
                                .ok()
                                .zip(fs::canonicalize(root).ok())
                                .is_some_and(|(t, r)| t.starts_with(r))
                                && fs::symlink_metadata(&t).is_ok_and(|m| m.is_file());
                            if !inside {
                                bail!(
                                    "{}: the hard link {rel} does not lead to a file of the backup; {}",
                                    archive.display(),
                                    corrupt(archive)
                                );
                            }
                            fs::hard_link(&t, d).with_context(io_ctx)?;
                        }
                    }
                }
                other => bail!(
                    "{}: entry {rel} has a type ({other:?}) a backup never holds; {}",
                    archive.display(),
                    corrupt(archive)
                ),
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
    let mut expected = 0usize;
    for e in m
        .entries
        .iter()
        .filter(|e| e.stored && e.kind == EntryKind::File)
    {
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
    if expected != hashes.len() {
        bail!(
            "{}: files that the manifest does not list; {}",
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

/// Make `staging` hold exactly the paths `m` lists (after an incremental).
fn prune(staging: &Path, m: &Manifest) -> Result<()> {
    let keep: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    let mut gone = Vec::new();
    for item in walkdir::WalkDir::new(staging).min_depth(1) {
        let item = item?;
        let rel = item
            .path()
            .strip_prefix(staging)?
            .to_string_lossy()
            .into_owned();
        if !keep.contains(rel.as_str()) {
            gone.push(item.path().to_path_buf());
        }
    }
    // Deepest first; a removed directory takes its children along.
    for p in gone.iter().rev() {
        clear(p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// Check that staging holds what `m` lists and apply owners, modes, times.
/// Every entry is independent here (all paths exist; changing an entry's
/// owner, mode or time leaves its directory's time alone), so the work is
/// spread over every core.
fn finish_tree(
    staging: &Path,
    m: &Manifest,
    chown: bool,
    names: Option<(&owners::Names, &owners::Names)>,
    unknown: &mut Vec<String>,
) -> Result<()> {
    use rayon::prelude::*;
    m.entries.par_iter().try_for_each(|e| -> Result<()> {
        let p = staging.join(&e.path);
        let meta = fs::symlink_metadata(&p).with_context(|| {
            format!(
                "{} is missing after the chain was applied; the chain is incomplete",
                e.path
            )
        })?;
        let ok = match e.kind {
            EntryKind::File | EntryKind::Hardlink => meta.is_file(),
            EntryKind::Dir => meta.is_dir(),
            EntryKind::Symlink => meta.file_type().is_symlink(),
        };
        if !ok || (e.kind == EntryKind::File && meta.len() != e.size) {
            bail!(
                "{} differs from its manifest after the chain was applied",
                e.path
            );
        }
        Ok(())
    })?;
    // Owners, then modes (chown clears setuid bits), then times.
    let unknown_set = m
        .entries
        .par_iter()
        .map(|e| -> Result<Vec<String>> {
            let p = staging.join(&e.path);
            let mut unknown = Vec::new();
            if chown {
                let ((uid, u_unknown), (gid, g_unknown)) = match names {
                    Some((users, groups)) => (
                        owners::map(users, e.user.as_deref(), e.uid),
                        owners::map(groups, e.group.as_deref(), e.gid),
                    ),
                    None => ((e.uid, false), (e.gid, false)),
                };
                if u_unknown {
                    unknown.push(format!(
                        "user {} (kept {})",
                        e.user.as_deref().unwrap_or(""),
                        e.uid
                    ));
                }
                if g_unknown {
                    unknown.push(format!(
                        "group {} (kept {})",
                        e.group.as_deref().unwrap_or(""),
                        e.gid
                    ));
                }
                std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                    .with_context(|| format!("cannot set the owner of {}", e.path))?;
            }
            if e.kind != EntryKind::Symlink {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                    .with_context(|| format!("cannot set the mode of {}", e.path))?;
            }
            let t = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
            filetime::set_symlink_file_times(&p, t, t)
                .with_context(|| format!("cannot set the time of {}", e.path))?;
            Ok(unknown)
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>();
    unknown.extend(unknown_set);
    Ok(())
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

/// Run `restore`.
pub fn run(ctx: &Context, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let start = Instant::now();
    // Ctrl-C and SIGTERM are counted, not fatal, until everything is
    // checked: the temporary directory is removed on the way out.
    let signals = crate::compose::signal_count();
    let dir = ctx.deployment.dir().to_path_buf();
    let stdin = opts.archive == Path::new("-");
    let last = if !stdin && opts.archive.is_dir() {
        super::archives_in(&opts.archive)?.pop().with_context(|| {
            format!(
                "{} holds no archives ({}*{})",
                opts.archive.display(),
                super::PREFIX,
                super::SUFFIX
            )
        })?
    } else {
        opts.archive.clone()
    };
    if !stdin && !last.exists() {
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

    if ctx.dry_run {
        // Verify every archive (hashes only), write nothing.
        let mut prev: Option<String> = None;
        let mut m: Option<Manifest> = None;
        for a in &chain {
            let mm = extract(open(a, &opts.keys)?, a, None, prev.as_deref(), signals)?;
            ctx.shell.out(format!("verified {}", a.display()));
            prev = Some(mm.header.id.clone());
            fold(&mut m, mm, a)?;
        }
        let m = m.expect("a chain has an archive");
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
    let staging = tempfile::Builder::new()
        .prefix(".chatmail-restore.")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?;
    let mut prev: Option<String> = None;
    // The deployment as of the archive restored last.
    let mut state: Option<Manifest> = None;
    // What is written goes to disk while more is written: the flush before
    // the move then has little left to wait for.
    let flusher = {
        let d = fs::File::open(staging.path())
            .with_context(|| format!("cannot open {}", staging.path().display()))?;
        Flusher::start("restore-flush", Target::FileSystem(d), FLUSH_PERIOD)?
    };
    for a in &chain {
        let m = extract(
            open(a, &opts.keys)?,
            a,
            Some(staging.path()),
            prev.as_deref(),
            signals,
        )?;
        prev = Some(m.header.id.clone());
        fold(&mut state, m, a)?;
        prune(staging.path(), state.as_ref().expect("folded"))?;
    }
    let m = state.expect("a chain has an archive");
    drop(flusher);

    // Owners by name, from the container that will run the relay.
    let is_root = rustix::process::geteuid().is_root();
    let info = if is_root {
        super::relay_info(ctx)
    } else {
        Default::default()
    };
    let mut unknown = Vec::new();
    // Without a container there are no names to map: numeric ids stay.
    let names = (!info.users.is_empty()).then_some((&info.users, &info.groups));
    finish_tree(staging.path(), &m, is_root, names, &mut unknown)?;
    if !is_root {
        ctx.shell.note("not running as root: files belong to the restoring user; run restore as root to keep owners");
    } else if info.users.is_empty() {
        ctx.shell.note("owners restored by number: no running container to map names (the appliance's init re-owns mailboxes and DKIM keys at start when the ids differ)");
    } else if !unknown.is_empty() {
        ctx.shell.warn(format!(
            "names unknown in the container, numeric ids kept: {}",
            unknown.join(", ")
        ));
    }
    // One flush for the whole tree before it goes into place.
    let _ = rustix::fs::syncfs(fs::File::open(staging.path())?);
    // An interrupt at any point before the move leaves the target as it
    // was.
    if crate::compose::interrupted_since(signals) {
        return Err(error::Failure {
            code: 130,
            message: Some("interrupted: nothing was restored".into()),
        }
        .into());
    }

    // Move into place: what was there aside, then the restored paths in.
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut placed: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<()> {
        for top in &tops {
            let src = staging.path().join(top);
            if fs::symlink_metadata(&src).is_err() {
                continue;
            }
            let dst = dir.join(top);
            if has_state(&dst)? {
                let aside = dir.join(format!("{top}.before-restore-{stamp}"));
                fs::rename(&dst, &aside)
                    .with_context(|| format!("cannot move {} aside", dst.display()))?;
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
            fs::rename(&src, &dst)
                .with_context(|| format!("cannot move {} into place", dst.display()))?;
            placed.push(dst);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in placed.iter().rev() {
            let rel = p.strip_prefix(&dir).unwrap_or(p);
            let _ = fs::rename(p, staging.path().join(rel));
        }
        for (orig, aside) in moved.iter().rev() {
            let _ = fs::rename(aside, orig);
        }
        return Err(e);
    }
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    drop(staging);

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
        unknown_owners: unknown,
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
