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
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::archive::base::Base;
use crate::archive::crypt::Keys;
use crate::archive::manifest::{EntryKind, Header, Kind, Listing};
use crate::archive::read::{self, Hashes, Model, Sink};
use crate::archive::{self, chain};
use crate::host::flush::{Flusher, Target};
use crate::host::interrupt;
use crate::host::tree::Tree;
use crate::{context::Context, deployment, error};

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
    archive::write_chunked(&mut f, &job.data).with_context(io_ctx)?;
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

    fn take(&mut self, w: Written, hashes: &mut Hashes) -> Result<()> {
        self.received += 1;
        let (rel, sha, size) = w?;
        hashes.insert(rel, (sha, size));
        Ok(())
    }

    fn send(&mut self, job: WriteJob, hashes: &mut Hashes) -> Result<()> {
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
    fn wait(&mut self, hashes: &mut Hashes) -> Result<()> {
        while self.received < self.sent {
            let w = self.done.recv().context("the writing threads stopped")?;
            self.take(w, hashes)?;
        }
        Ok(())
    }
}

/// The staging directory being written: the [`Sink`] of a real restore.
struct Staging {
    tree: Arc<Tree>,
    /// Directories made so far (no `mkdir` for each file).
    dirs: rustc_hash::FxHashSet<String>,
    /// Writes the small files (made for each archive of the chain).
    pool: Option<Pool>,
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

impl Staging {
    fn pool(&mut self) -> Result<&mut Pool> {
        if self.pool.is_none() {
            self.pool = Some(Pool::new()?);
        }
        Ok(self.pool.as_mut().expect("made above"))
    }

    /// Wait for the files handed to the pool.
    fn written(&mut self, hashes: &mut Hashes) -> Result<()> {
        match &mut self.pool {
            Some(p) => p.wait(hashes),
            None => Ok(()),
        }
    }
}

impl Sink for Staging {
    fn remove(&mut self, rel: &str, hashes: &mut Hashes) -> Result<()> {
        // Written files must be on disk to be removed.
        self.written(hashes)?;
        self.tree.remove_all(rel)?;
        if self.dirs.remove(rel) {
            let below = format!("{rel}/");
            self.dirs.retain(|d| !d.starts_with(&below));
        }
        Ok(())
    }

    fn file(
        &mut self,
        rel: &str,
        size: u64,
        data: &mut dyn Read,
        hashes: &mut Hashes,
    ) -> Result<()> {
        let io_ctx = || format!("cannot write {rel} into the temporary directory");
        self.parents(rel).with_context(io_ctx)?;
        if size <= POOL_FILE {
            let mut bytes = Vec::with_capacity(size as usize);
            data.take(size)
                .read_to_end(&mut bytes)
                .context("cannot read the archive")?;
            let job = WriteJob {
                tree: self.tree.clone(),
                rel: rel.to_string(),
                data: bytes,
            };
            return self.pool()?.send(job, hashes);
        }
        // Large: streamed, hashed on the way.
        let mut buf = vec![0u8; 1 << 20];
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        let mut f = self.tree.create_file(rel, 0o600).with_context(io_ctx)?;
        loop {
            let k = data.read(&mut buf).context("cannot read the archive")?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            n += k as u64;
            archive::write_chunked(&mut f, &buf[..k]).with_context(io_ctx)?;
        }
        hashes.insert(rel.to_string(), (hex::encode(hasher.finalize()), n));
        Ok(())
    }

    fn dir(&mut self, rel: &str) -> Result<()> {
        self.parents(rel)?;
        if !self.dirs.contains(rel) {
            self.tree.mkdir(rel, 0o700)?;
            self.dirs.insert(rel.to_string());
        }
        Ok(())
    }

    fn symlink(&mut self, rel: &str, target: &[u8]) -> Result<()> {
        self.parents(rel)?;
        let t = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target.to_vec());
        self.tree.symlink(&t, rel)?;
        Ok(())
    }

    fn hard_link(&mut self, rel: &str, target: &str, hashes: &mut Hashes) -> Result<()> {
        // The file it names must be written first.
        self.written(hashes)?;
        self.parents(rel)?;
        self.tree.hard_link(target, rel)?;
        Ok(())
    }

    fn flush(&mut self, hashes: &mut Hashes) -> Result<()> {
        self.written(hashes)?;
        self.pool = None;
        Ok(())
    }
}

/// The restore's state after one more archive of the chain: a chain
/// starts with a full backup (read from a file, or from standard input);
/// the others fold into it ([`chain::fold`]'s rule, checked here as they
/// come).
fn fold(state: &mut Option<Base>, read: read::Extracted, archive: &Path) -> Result<()> {
    let m = &read.manifest;
    if state.is_none() && (m.header.kind != Kind::Full || m.listing != Listing::All) {
        bail!(
            "{} is an incremental backup; restore needs its full backup first (restore from the files, not from standard input)",
            archive.display()
        );
    }
    let file = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let next = Base::parse(
        file,
        crate::archive::base::Source::Manifest {
            text: read.text,
            what: archive.to_path_buf(),
        },
    )?;
    match state {
        None => *state = Some(next),
        Some(s) => s.apply(next),
    }
    Ok(())
}

/// Make the model (and what the sink made) hold exactly the paths of
/// `state` (after an incremental).
fn prune(model: &mut Model, sink: &mut dyn Sink, state: &Base) -> Result<()> {
    let keep: HashSet<&str> = state.entries().map(|(p, _)| p).collect();
    let gone: Vec<String> = model
        .paths
        .keys()
        .filter(|p| !keep.contains(p.as_str()))
        .cloned()
        .collect();
    // A path goes with everything below it (on disk as in the model: a
    // listed path below an unlisted directory is then missing, and the
    // chain is refused as incomplete). Shallowest first.
    let mut none = Hashes::new();
    for p in &gone {
        if !model.paths.contains_key(p) {
            continue;
        }
        for q in model.below(p) {
            model.paths.remove(&q);
        }
        sink.remove(p, &mut none)
            .with_context(|| format!("cannot remove {p} from the temporary directory"))?;
    }
    Ok(())
}

/// The kind a path of the restored tree has for an entry of this kind (a
/// hard link is a file).
fn on_disk(kind: EntryKind) -> EntryKind {
    match kind {
        EntryKind::Hardlink => EntryKind::File,
        k => k,
    }
}

/// The model holds exactly the paths of `state`, of the kinds and sizes it
/// says.
fn check_complete(model: &Model, state: &Base) -> Result<()> {
    let mut n = 0;
    for (path, e) in state.entries() {
        n += 1;
        let meta = e.meta();
        match model.paths.get(path) {
            None => bail!("{path} is missing after the chain was applied; the chain is incomplete"),
            Some((k, size)) => {
                if *k != on_disk(meta.kind) || (meta.kind == EntryKind::File && *size != meta.size)
                {
                    bail!("{path} differs from its manifest after the chain was applied");
                }
            }
        }
    }
    if model.paths.len() != n {
        bail!(
            "the restored tree holds paths its manifest does not list; the chain is inconsistent"
        );
    }
    Ok(())
}

/// Apply owners, modes and times (through the staging tree: nothing is
/// followed), except to `skip`. Every entry is independent here, so the
/// work is spread over every core.
fn finish_tree(tree: &Tree, state: &Base, chown: bool, skip: Option<&str>) -> Result<()> {
    use rayon::prelude::*;
    let entries: Vec<_> = state.entries().filter(|(p, _)| Some(*p) != skip).collect();
    entries.par_iter().try_for_each(|(path, e)| -> Result<()> {
        let e = e.meta();
        let st = tree
            .stat(path)
            .with_context(|| format!("cannot read {path}"))?
            .with_context(|| {
                format!("{path} is missing after the chain was applied; the chain is incomplete")
            })?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        use rustix::fs::FileType as F;
        let ok = match e.kind {
            EntryKind::File | EntryKind::Hardlink => kind == F::RegularFile,
            EntryKind::Dir => kind == F::Directory,
            EntryKind::Symlink => kind == F::Symlink,
        };
        if !ok || (e.kind == EntryKind::File && st.st_size as u64 != e.size) {
            bail!("{path} differs from its manifest after the chain was applied");
        }
        // Owners, then modes (chown clears setuid bits), then times.
        if chown {
            tree.chown(path, e.uid, e.gid)
                .with_context(|| format!("cannot set the owner of {path}"))?;
        }
        if e.kind != EntryKind::Symlink {
            tree.chmod(path, e.mode)
                .with_context(|| format!("cannot set the mode of {path}"))?;
        }
        tree.set_mtime(path, e.mtime, e.mtime_nsec)
            .with_context(|| format!("cannot set the time of {path}"))?;
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
    for p in archive::archives_in(dir)? {
        match read::read_header(&p, keys) {
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
                archive::PREFIX,
                archive::SUFFIX,
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

/// Run `restore`: which archives, whether the target may take them, each
/// archive read and checked into a temporary directory, owners, modes and
/// times, then the tree renamed into place.
pub fn run(ctx: &Context, opts: &RestoreOptions) -> Result<RestoreSummary> {
    run_checked(ctx, opts).map_err(|e| {
        if !error::is_no_space(&e) {
            return e;
        }
        let dir = ctx.deployment.dir().display().to_string();
        e.context(format!(
            "no space left on {dir}: nothing was restored and the temporary files are removed; free space there (the restore needs about the size of the archive's files), then run `chatmail-docker --dir {dir} restore {}` again",
            opts.archive.display()
        ))
    })
}

fn run_checked(ctx: &Context, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let start = Instant::now();
    // Ctrl-C and SIGTERM are counted, not fatal, until everything is
    // checked: the temporary directory is removed on the way out.
    let signals = interrupt::count();
    let chain = archives_to_restore(opts)?;
    refuse_running(ctx)?;
    let conflicts = state_in_the_way(ctx, opts.force)?;
    if ctx.dry_run {
        return dry_run(ctx, opts, chain, &conflicts, signals);
    }
    let stale = remove_stale_staging(ctx.deployment.dir());
    if stale > 0 {
        ctx.shell.note(format!(
            "removed {stale} temporary director{} of an earlier restore that was killed from {}",
            if stale == 1 { "y" } else { "ies" },
            ctx.deployment.dir().display()
        ));
    }
    let staged = stage(ctx, opts, &chain, signals)?;
    let skip = finish(ctx, &staged)?;
    // An interrupt at any point before the move leaves the target as it
    // was.
    if interrupt::since(signals) {
        return Err(interrupt::interrupted("interrupted: nothing was restored"));
    }
    let moved = put_in_place(ctx, &staged)?;
    warn_shadowed(ctx);
    report(
        ctx,
        opts,
        chain,
        &staged.state,
        skip.as_deref(),
        moved,
        start,
    )
}

/// The archives to restore, oldest first: the chain ending in the one
/// named (or the newest of a directory), or standard input.
fn archives_to_restore(opts: &RestoreOptions) -> Result<Vec<PathBuf>> {
    if opts.archive == Path::new("-") {
        return Ok(vec![opts.archive.clone()]);
    }
    let last = if opts.archive.is_dir() {
        newest_in(&opts.archive, &opts.keys)?
    } else {
        opts.archive.clone()
    };
    if fs::symlink_metadata(&last).is_err() {
        return Err(error::usage(format!("{} does not exist", last.display())));
    }
    Ok(chain::headers(&last, &opts.keys)?
        .into_iter()
        .map(|(p, _)| p)
        .collect())
}

/// A deployment whose container runs is refused: its services hold the
/// files a restore replaces.
fn refuse_running(ctx: &Context) -> Result<()> {
    match crate::engine::container::running(ctx) {
        Some(c) => Err(error::usage(format!(
            "the relay's container {} of {} is running, and its services hold the files a restore replaces; stop it first (`chatmail-docker --dir {} down`), then restore",
            c.display_name(),
            ctx.deployment.dir().display(),
            ctx.deployment.dir().display()
        ))),
        None => Ok(()),
    }
}

/// The top-level paths of the target that hold state: refused without
/// `force`, moved aside with it.
fn state_in_the_way(ctx: &Context, force: bool) -> Result<Vec<PathBuf>> {
    let dir = ctx.deployment.dir();
    let conflicts: Vec<PathBuf> = archive::top_level()
        .iter()
        .map(|t| dir.join(t))
        .filter(|p| has_state(p).unwrap_or(true))
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(error::usage(format!(
            "{} already holds a deployment ({}); restore into an empty deployment directory, or pass --force to move these aside (they are never deleted)",
            dir.display(),
            conflicts
                .iter()
                .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(conflicts)
}

/// Read every archive of the chain into `sink`, checked on `model`:
/// the deployment as of the last one.
fn read_chain(
    chain: &[PathBuf],
    keys: &Keys,
    sink: &mut dyn Sink,
    model: &mut Model,
    signals: usize,
    mut each: impl FnMut(&Path),
) -> Result<Base> {
    let mut prev: Option<String> = None;
    let mut state: Option<Base> = None;
    for a in chain {
        let read = read::extract(
            read::open(a, keys)?,
            a,
            sink,
            model,
            prev.as_deref(),
            signals,
        )?;
        prev = Some(read.manifest.header.id.clone());
        fold(&mut state, read, a)?;
        prune(model, sink, state.as_ref().expect("folded"))?;
        each(a);
    }
    let state = state.context("a chain has an archive")?;
    check_complete(model, &state)?;
    Ok(state)
}

/// `--dry-run`: every check of a real run, on the model; nothing written.
fn dry_run(
    ctx: &Context,
    opts: &RestoreOptions,
    chain: Vec<PathBuf>,
    conflicts: &[PathBuf],
    signals: usize,
) -> Result<RestoreSummary> {
    let mut model = Model::default();
    let state = read_chain(
        &chain,
        &opts.keys,
        &mut read::Check,
        &mut model,
        signals,
        |a| ctx.shell.out(format!("verified {}", a.display())),
    )?;
    for c in conflicts {
        ctx.shell.out(format!("would move {} aside", c.display()));
    }
    ctx.shell.out(format!(
        "would restore {} paths into {}",
        state.len(),
        ctx.deployment.dir().display()
    ));
    ctx.dry_run_done();
    Ok(RestoreSummary {
        archives: chain,
        files: 0,
        bytes: 0,
        seconds: 0.0,
        moved_aside: vec![],
        unknown_owners: vec![],
        owners_applied: false,
    })
}

/// The prefix of a restore's temporary directory in the deployment
/// directory.
const STAGING_PREFIX: &str = ".chatmail-restore.";

/// Remove the temporary directories of restores that were killed (no
/// process holds them locked) from `dir`; returns how many. Never follows
/// a link; a directory another restore holds is left alone.
fn remove_stale_staging(dir: &Path) -> usize {
    crate::host::remove_unlocked(dir, true, |n| {
        n.to_string_lossy().starts_with(STAGING_PREFIX)
    })
}

/// The chain read into a temporary directory of the deployment directory.
struct Staged {
    dir: tempfile::TempDir,
    /// The temporary directory, locked while this process lives: another
    /// restore sees it is in use and leaves it alone.
    _lock: fs::File,
    tree: Arc<Tree>,
    state: Base,
    model: Model,
    /// Removed if the process is ended by force.
    _registered: interrupt::Registered,
}

/// Read the chain into a temporary directory, every file hashed as it is
/// written and checked; the tree flushed while it is written.
fn stage(
    ctx: &Context,
    opts: &RestoreOptions,
    chain: &[PathBuf],
    signals: usize,
) -> Result<Staged> {
    let dir = ctx.deployment.dir();
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?;
    let registered = interrupt::remove_on_forced_end(tmp.path().to_path_buf());
    let lock = fs::File::open(tmp.path())
        .with_context(|| format!("cannot open {}", tmp.path().display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot lock {}", tmp.path().display()))?;
    let tree = Arc::new(
        Tree::open(tmp.path()).with_context(|| format!("cannot open {}", tmp.path().display()))?,
    );
    let mut staging = Staging {
        tree: tree.clone(),
        dirs: Default::default(),
        pool: None,
    };
    // What is written goes to disk while more is written: the flush before
    // the move then has little left to wait for.
    let flusher = {
        let d = fs::File::open(tmp.path())
            .with_context(|| format!("cannot open {}", tmp.path().display()))?;
        Flusher::start("restore-flush", Target::FileSystem(d), FLUSH_PERIOD)?
    };
    let mut model = Model::default();
    let state = read_chain(chain, &opts.keys, &mut staging, &mut model, signals, |_| ())?;
    drop(flusher);
    Ok(Staged {
        dir: tmp,
        _lock: lock,
        tree,
        state,
        model,
        _registered: registered,
    })
}

/// Before the tree goes into place: the `--mount-vmail` marker left out
/// when the mail it mounted is in the archive (returned, to leave out of
/// the rest), owners (by number), modes and times, one flush.
fn finish(ctx: &Context, staged: &Staged) -> Result<Option<String>> {
    let vmail_archived = staged
        .state
        .entries()
        .any(|(p, _)| p.starts_with("data/chatmail/vmail/"));
    let mut skip = None;
    if vmail_archived && staged.model.kind(deployment::VMAIL_MARKER).is_some() {
        staged
            .tree
            .remove_all(deployment::VMAIL_MARKER)
            .context("cannot remove the --mount-vmail marker from the temporary directory")?;
        skip = Some(deployment::VMAIL_MARKER.to_string());
        ctx.shell.note(format!(
            "the mail the relay mounted from the host's /home/vmail is restored into data/chatmail/vmail; {} is not restored",
            deployment::VMAIL_MARKER
        ));
    }
    // Owners are kept by number: the container that will run the relay is
    // not running (refused above), and the appliance's init gives the
    // mailboxes, the DKIM keys and the queue to its users by name at start.
    let is_root = rustix::process::geteuid().is_root();
    finish_tree(&staged.tree, &staged.state, is_root, skip.as_deref())?;
    if !is_root {
        ctx.shell.note("not running as root: files belong to the restoring user; run restore as root to keep owners");
    }
    // One flush for the whole tree before it goes into place.
    crate::host::flush::sync_fs(staged.dir.path())?;
    Ok(skip)
}

/// Rename the restored top-level paths into place, what was there aside
/// first; all or nothing (renames only, which a forced end waits for).
fn put_in_place(ctx: &Context, staged: &Staged) -> Result<Vec<PathBuf>> {
    let dir = ctx.deployment.dir();
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut placed: Vec<PathBuf> = Vec::new();
    let _critical = interrupt::critical();
    let result = (|| -> Result<()> {
        for top in archive::top_level() {
            let src = staged.dir.path().join(top);
            if fs::symlink_metadata(&src).is_err() {
                continue;
            }
            let dst = dir.join(top);
            if has_state(&dst)? {
                let aside = move_aside(dir, top, &stamp)?;
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
            let rel = p.strip_prefix(dir).unwrap_or(p);
            let _ = fs::rename(p, staged.dir.path().join(rel));
        }
        for (orig, aside) in moved.iter().rev() {
            let _ = fs::rename(aside, orig);
        }
        return Err(e);
    }
    crate::host::flush::sync_dir(dir);
    Ok(moved.into_iter().map(|(_, a)| a).collect())
}

/// What `restore` says it did (`--json`: the summary).
fn report(
    ctx: &Context,
    opts: &RestoreOptions,
    chain: Vec<PathBuf>,
    state: &Base,
    skip: Option<&str>,
    moved_aside: Vec<PathBuf>,
    start: Instant,
) -> Result<RestoreSummary> {
    let (files, bytes) = state
        .entries()
        .filter(|(p, e)| Some(*p) != skip && e.meta().kind == EntryKind::File)
        .fold((0, 0), |(n, b), (_, e)| (n + 1, b + e.meta().size));
    let summary = RestoreSummary {
        archives: chain,
        files,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        moved_aside,
        unknown_owners: Vec::new(),
        owners_applied: rustix::process::geteuid().is_root(),
    };
    if opts.json {
        ctx.shell.data(serde_json::to_string_pretty(&summary)?);
        return Ok(summary);
    }
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
            ctx.deployment.dir().display(),
            summary.seconds
        ),
    );
    Ok(summary)
}
