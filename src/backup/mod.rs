//! `backup`: the whole deployment state in one streamable archive (tar +
//! multi-threaded zstd), online, verified by SHA-256, full or incremental.
//!
//! Plan, then apply: the deployment is scanned (metadata only), compared
//! with the previous manifest (an incremental stores only files whose size,
//! mtime, mode or owner changed), and written in one pass. Mailboxes are
//! copied while the relay serves (maildir is made for that: a message that
//! moves between `new/` and `cur/` while it is read is followed to its new
//! name); the mail queue is copied while Postfix is frozen ([`pause`]).
//! The archive is written under a temporary name with mode 0600 and
//! renamed when complete; a failure or an interrupt leaves no archive and
//! no paused service.

pub mod pause;
pub mod scan;

use anyhow::{bail, Context as _, Result};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::archive::base;
pub use crate::archive::manifest::Origin;
use crate::archive::manifest::{self, Consistency, Entry, EntryKind, Header, Kind, Manifest};
use crate::archive::write::{self as archive, sha256_hex};
use crate::archive::{catalog, chain, crypt, PREFIX, SUFFIX};
use crate::engine::container::RelayFacts;
use crate::host::parent_dir;
use crate::{context::Context, engine, error};
use scan::Scanned;

/// Where the archive goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Standard output (`-`): for `| ssh host ...`.
    Stdout,
    /// This file.
    File(PathBuf),
    /// A new file in this directory, named by time; incremental against the
    /// newest archive there unless `full`; retention with `keep`.
    Dir(PathBuf),
}

impl Output {
    /// `-`, an existing directory or a path ending in `/`, else a file.
    pub fn parse(arg: &Path) -> Output {
        if arg == Path::new("-") {
            Output::Stdout
        } else if arg.is_dir() || arg.as_os_str().to_string_lossy().ends_with('/') {
            Output::Dir(arg.to_path_buf())
        } else {
            Output::File(arg.to_path_buf())
        }
    }
}

/// Typed options of `backup`.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub output: Output,
    /// Keep the newest N chains (a full backup and its incrementals) in a
    /// backup directory.
    pub keep: Option<usize>,
    /// A full backup even when a previous one exists.
    pub full: bool,
    /// Incremental against this archive's manifest.
    pub since: Option<PathBuf>,
    pub json: bool,
    /// zstd level (1..=19).
    pub level: i32,
    /// Threads that compress and hash; 0: one per core.
    pub threads: u32,
    /// Freeze Postfix while the queue is copied (when the container runs).
    pub pause: bool,
    /// Encrypt the archive (and its manifest beside it).
    pub encrypt: crypt::Encrypt,
    /// To read an encrypted base archive's manifest.
    pub keys: crypt::Keys,
    /// What makes the backup: retention and the choice of a base only
    /// look at archives of the same origin.
    pub origin: Origin,
}

/// The most threads `--threads` may ask for.
pub const MAX_THREADS: u32 = 256;
impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            output: Output::Stdout,
            keep: None,
            full: false,
            since: None,
            json: false,
            level: 3,
            threads: 0,
            pause: true,
            encrypt: crypt::Encrypt::None,
            keys: crypt::Keys::default(),
            origin: Origin::Backup,
        }
    }
}

/// What `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub archive: Option<PathBuf>,
    pub kind: Kind,
    pub base: Option<String>,
    pub files: usize,
    pub bytes: u64,
    pub stored_files: usize,
    pub stored_bytes: u64,
    pub deleted: usize,
    pub archive_bytes: u64,
    pub seconds: f64,
    pub queue_pause_ms: Option<u64>,
    pub consistency: Vec<String>,
    pub removed_by_retention: Vec<PathBuf>,
}

/// `2026-12-01T15:47:00.123Z` -> `20261201T154700.123Z`.
fn stamp(t: SystemTime) -> (String, String) {
    let rfc = humantime::format_rfc3339_millis(t).to_string();
    let compact = rfc.replace(['-', ':'], "");
    (rfc, compact)
}

fn new_id(created: &str, dir: &Path) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{created}|{nanos}|{}|{}", std::process::id(), dir.display());
    sha256_hex(seed.as_bytes())[..32].to_string()
}

/// What a backup will do.
struct Plan {
    kind: Kind,
    base: Option<base::Base>,
    final_path: Option<PathBuf>,
    scan: scan::Scan,
    info: RelayFacts,
    /// This deployment's backup id (`None` only in a dry run before the
    /// first backup).
    id: Option<String>,
}

/// The directory the destination is written in, when there is one.
fn dest_dir(output: &Output) -> Option<PathBuf> {
    match output {
        Output::Stdout => None,
        Output::Dir(d) => Some(d.clone()),
        Output::File(p) => Some(parent_dir(p).to_path_buf()),
    }
}

fn plan(ctx: &Context, opts: &BackupOptions) -> Result<Plan> {
    let dep = &ctx.deployment;
    let (_, compact) = stamp(SystemTime::now());
    let id = catalog::deployment_id(ctx, !ctx.dry_run)?;
    // Only the destination's own files are left out of what is archived
    // (when it lies inside it), never a directory.
    let exclude = scan::Exclude {
        dir: dest_dir(&opts.output).and_then(|d| {
            let st = rustix::fs::stat(&d).ok()?;
            Some((st.st_dev, st.st_ino))
        }),
        file: match &opts.output {
            Output::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            _ => None,
        },
    };
    let running = engine::container::running(ctx);
    let layout = engine::container::layout(ctx, running.as_ref())?;
    // The queue is read separately (under a pause); a side container's
    // copies of the keys (`setup`/`upgrade` deploying aside) are no state.
    let skip = vec![crate::engine::beside::BESIDE_DIR.to_string()];
    // The base's manifest and the relay's facts are read while the
    // deployment is scanned.
    let (base, info, scanned) = std::thread::scope(|scope| {
        let base = scope.spawn(|| -> Result<Option<base::Base>> {
            let base_archive = match (&opts.since, &opts.output, opts.full, &id) {
                (Some(p), _, _, _) => Some(p.clone()),
                (None, Output::Dir(d), false, Some(id)) if d.is_dir() => {
                    catalog::newest(&catalog::list(ctx, d, &opts.keys)?, id, opts.origin)
                }
                _ => None,
            };
            let Some(p) = &base_archive else {
                return Ok(None);
            };
            chain::base_of(ctx, p, &opts.keys, id.as_deref())
                .map(Some)
                .with_context(|| {
                    format!(
                        "cannot use {} as the base of an incremental backup (use --full for a full one)",
                        p.display()
                    )
                })
        });
        let info = scope.spawn(|| engine::container::relay_facts(ctx, running.is_some()));
        let scanned = scan::scan(dep, layout, &skip, exclude);
        let base = base
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the base manifest failed")));
        let info = info.join().unwrap_or_default();
        (base, info, scanned)
    });
    let base = base?;
    let scan = scanned?;
    let kind = if base.is_some() {
        Kind::Incremental
    } else {
        Kind::Full
    };
    let final_path = match &opts.output {
        Output::Stdout => None,
        Output::File(p) => Some(p.clone()),
        Output::Dir(d) => Some(d.join(format!(
            "{PREFIX}{compact}-{}{SUFFIX}",
            if kind == Kind::Full { "full" } else { "incr" }
        ))),
    };
    Ok(Plan {
        kind,
        base,
        final_path,
        scan,
        info,
        id,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Run `backup`.
pub fn run(ctx: &Context, opts: &BackupOptions) -> Result<Summary> {
    if opts.output == Output::Stdout {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() && !ctx.dry_run {
            return Err(error::usage(
                "refusing to write an archive to a terminal: redirect it (`backup - > FILE`, `backup - | ssh HOST 'cat > FILE'`) or name a file or directory",
            ));
        }
    }
    if opts.keep.is_some() && !matches!(opts.output, Output::Dir(_)) {
        return Err(error::usage(
            "--keep needs a backup directory as the destination (an existing directory, or a path ending in /)",
        ));
    }
    if opts.keep == Some(0) {
        return Err(error::usage(
            "--keep 0 would remove every backup; give 1 or more",
        ));
    }
    if !(1..=19).contains(&opts.level) {
        return Err(error::usage(format!(
            "--level {} is out of range: use 1 to 19",
            opts.level
        )));
    }
    if opts.threads > MAX_THREADS {
        return Err(error::usage(format!(
            "--threads {} is out of range: use 0 (one per core) to {MAX_THREADS}",
            opts.threads
        )));
    }
    let start = Instant::now();
    let signals = crate::host::interrupt::count();
    let mut plan = plan(ctx, opts)?;
    let info = std::mem::take(&mut plan.info);
    if ctx.dry_run {
        show_plan(ctx, opts, &plan, &info);
        ctx.dry_run_done();
        return Ok(Summary {
            archive: plan.final_path,
            kind: plan.kind,
            base: plan.base.map(|b| b.reference.file),
            files: 0,
            bytes: 0,
            stored_files: 0,
            stored_bytes: 0,
            deleted: 0,
            archive_bytes: 0,
            seconds: 0.0,
            queue_pause_ms: None,
            consistency: vec![],
            removed_by_retention: vec![],
        });
    }
    let summary = write(ctx, opts, plan, info, signals, start)?;
    if opts.json {
        let text = serde_json::to_string_pretty(&summary)?;
        if opts.output == Output::Stdout {
            ctx.shell.data_to_stderr(text);
        } else {
            ctx.shell.data(text);
        }
    } else {
        let what = summary
            .archive
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "standard output".into());
        ctx.shell.status(
            "Backed up",
            format!(
                "{} files ({}) to {what}: {} {} stored ({} files, {}), {} compressed, in {:.1} s{}",
                summary.files,
                mib(summary.bytes),
                match summary.kind {
                    Kind::Full => "full,",
                    Kind::Incremental => "incremental,",
                },
                mib(summary.stored_bytes),
                summary.stored_files,
                if summary.deleted > 0 {
                    format!("{} deleted", summary.deleted)
                } else {
                    "none deleted".into()
                },
                mib(summary.archive_bytes),
                summary.seconds,
                summary
                    .queue_pause_ms
                    .map(|ms| format!("; Postfix paused {ms} ms"))
                    .unwrap_or_default()
            ),
        );
        for p in &summary.removed_by_retention {
            ctx.shell
                .status("Removed", format!("{} (--keep)", p.display()));
        }
    }
    Ok(summary)
}

fn show_plan(ctx: &Context, opts: &BackupOptions, plan: &Plan, info: &RelayFacts) {
    let files: Vec<&Scanned> = plan
        .scan
        .entries
        .iter()
        .filter(|s| s.entry.kind == EntryKind::File)
        .collect();
    let bytes: u64 = files.iter().map(|s| s.entry.size).sum();
    ctx.shell.out(format!(
        "would back up {} files ({}) of {}",
        files.len(),
        mib(bytes),
        ctx.deployment.dir().display()
    ));
    for n in &plan.scan.skipped.notes {
        ctx.shell.out(format!("note: {n}"));
    }
    match &plan.base {
        Some(b) => {
            let changed: Vec<&&Scanned> = files
                .iter()
                .filter(|s| !b.get(&s.entry.path).is_some_and(|p| p.unchanged(&s.entry)))
                .collect();
            ctx.shell.out(format!(
                "incremental against {}: {} new or changed files ({})",
                b.reference.file,
                changed.len(),
                mib(changed.iter().map(|s| s.entry.size).sum())
            ));
        }
        None => ctx.shell.out("full backup"),
    }
    match &plan.final_path {
        Some(p) => ctx
            .shell
            .out(format!("would write {} (mode 0600)", p.display())),
        None => ctx.shell.out("would write to standard output"),
    }
    if plan.scan.has_queue() {
        if info.running && opts.pause {
            let cmd = engine::exec_cmd(ctx, ["systemctl", "freeze", pause::POSTFIX_UNIT]);
            ctx.shell.out(format!(
                "would run: {} (while the mail queue is copied, then thaw)",
                cmd.display()
            ));
        } else {
            ctx.shell.out(
                "the mail queue is copied without pausing Postfix (the container is not running)",
            );
        }
    }
    if let (Some(n), Output::Dir(d), Some(id)) = (opts.keep, &opts.output, &plan.id) {
        if let Ok(list) = catalog::list(ctx, d, &opts.keys) {
            let ch = catalog::chains(&list, id, opts.origin);
            // An incremental joins its base's chain; a full one starts a
            // chain of its own.
            let (written, keep) = match &plan.base {
                Some(b) => (d.join(&b.reference.file), n),
                None => (PathBuf::new(), n - 1),
            };
            for p in catalog::to_remove(&ch, keep, &written) {
                ctx.shell
                    .out(format!("would remove {} (--keep {n})", p.display()));
            }
        }
    }
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    files: u64,
}

impl Progress {
    /// A bar when one is shown; `totals` (bytes and files to read) is
    /// worked out only then.
    fn new(ctx: &Context, json: bool, totals: impl FnOnce() -> (u64, u64)) -> Progress {
        if !ctx.shell.progress_allowed() || json {
            return Progress {
                bar: None,
                files: 0,
            };
        }
        let (total, files) = totals();
        let bar = {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {msg} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("0/{files} files"));
            b
        };
        Progress {
            bar: Some(bar),
            files,
        }
    }
    fn tick(&self, bytes: u64, done: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
            if done.is_multiple_of(64) || done == self.files {
                b.set_message(format!("{done}/{} files", self.files));
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The archive file, flushed by a thread of its own while it is written
/// (the flusher stops when this is dropped, once the archive is complete).
struct Flushed {
    file: fs::File,
    _flusher: crate::host::flush::Flusher,
}

/// How often the archive is flushed while it is written.
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

impl Write for Flushed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .write(&buf[..buf.len().min(crate::archive::WRITE_CHUNK)])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The open destination: a temp file renamed at the end, or stdout.
enum Dest {
    Temp {
        tmp: tempfile::NamedTempFile,
        final_path: PathBuf,
        /// Removed if the process is ended by force.
        _registered: crate::host::interrupt::Registered,
    },
    Stdout,
}

/// Whether `name` in a backup directory is a temporary file of a backup
/// (`.ARCHIVE.XXXXXX.partial`, `.manifest.XXXXXX.partial`); `file`: the
/// name a backup to a file writes.
pub(crate) fn is_partial(name: &str, file: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    if !rest.ends_with(".partial") {
        return false;
    }
    match file {
        Some(f) => rest.starts_with(&format!("{f}.")),
        None => rest.starts_with(PREFIX) || rest.starts_with("manifest."),
    }
}

/// Remove the temporary files of backups that were killed (no process
/// holds them locked) from `dir`; returns how many.
fn remove_stale_partials(dir: &Path, file: Option<&str>) -> usize {
    use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
    let Ok(list) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in list.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_partial(name, file) {
            continue;
        }
        let Ok(fd) = rustix::fs::openat(
            rustix::fs::CWD,
            e.path(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let regular = rustix::fs::fstat(&fd)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
        if regular
            && rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
            && fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// A temporary file in `dir` for the archive (or its manifest), mode
/// 0600, locked while this process lives (so that another backup sees it
/// is in use), removed if the process is ended by force.
fn partial_in(
    dir: &Path,
    prefix: &str,
) -> Result<(tempfile::NamedTempFile, crate::host::interrupt::Registered)> {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".partial")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let registered = crate::host::interrupt::remove_on_forced_end(tmp.path().to_path_buf());
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))?;
    rustix::fs::flock(
        tmp.as_file(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot lock {}", tmp.path().display()))?;
    Ok((tmp, registered))
}

fn open_dest(
    ctx: &Context,
    output: &Output,
    final_path: Option<&Path>,
) -> Result<(Dest, Box<dyn Write + Send>)> {
    match final_path {
        None => Ok((
            Dest::Stdout,
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout(),
            )),
        )),
        Some(p) => {
            let dir = parent_dir(p).to_path_buf();
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the backup directory {}", dir.display()))?;
            if fs::symlink_metadata(p).is_ok() {
                bail!(
                    "{} exists already; name another file (archives are never overwritten)",
                    p.display()
                );
            }
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let file = match output {
                Output::File(_) => Some(name.as_ref()),
                _ => None,
            };
            let stale = remove_stale_partials(&dir, file);
            if stale > 0 {
                ctx.shell.note(format!(
                    "removed {stale} temporary file{} of an earlier backup that was killed from {}",
                    if stale == 1 { "" } else { "s" },
                    dir.display()
                ));
            }
            let (tmp, registered) = partial_in(&dir, &format!(".{name}."))?;
            let f = tmp.reopen()?;
            Ok((
                Dest::Temp {
                    tmp,
                    final_path: p.to_path_buf(),
                    _registered: registered,
                },
                Box::new(std::io::BufWriter::with_capacity(
                    1 << 20,
                    Flushed {
                        _flusher: crate::host::flush::Flusher::start(
                            "archive-flush",
                            crate::host::flush::Target::Data(f.try_clone()?),
                            FLUSH_PERIOD,
                        )?,
                        file: f,
                    },
                )),
            ))
        }
    }
}

/// Names for an entry's owner, from the container's databases.
fn name_owner(e: &mut Entry, info: &RelayFacts) {
    e.user = info.users.name(e.uid).map(str::to_string);
    e.group = info.groups.name(e.gid).map(str::to_string);
}

struct Run<'a> {
    /// What was scanned, and the way back to it.
    scan: &'a scan::Scan,
    /// The base of an incremental backup.
    base: Option<base::Walk<'a>>,
    links: HashMap<(u64, u64), String>,
    /// Files with more than one name stored by this archive: their other
    /// names are listed again (restore replaces a stored file, which
    /// separates it from its old links).
    stored_links: HashSet<(u64, u64)>,
    /// What the scan found (a renamed message is not stored twice).
    scanned_paths: Option<HashSet<&'a str>>,
    /// Names a renamed message was followed to, stored already.
    followed: HashSet<String>,
    /// What this archive's manifest lists: every path, or (incremental)
    /// the paths new or changed since the base.
    entries: Vec<Entry>,
    consistency: Consistency,
    /// The deployment's files and their bytes (listed or not).
    files: usize,
    bytes: u64,
    stored_files: usize,
    stored_bytes: u64,
    signals: usize,
}

impl Run<'_> {
    fn check_interrupt(&self) -> Result<()> {
        if crate::host::interrupt::since(self.signals) {
            return Err(crate::host::interrupt::interrupted(
                "interrupted: no archive was written",
            ));
        }
        Ok(())
    }

    /// Turn a second name of a file into a hard link entry.
    fn link_of(&mut self, s: &Scanned) -> Option<Entry> {
        if s.entry.kind != EntryKind::File || s.nlink < 2 {
            return None;
        }
        match self.links.get(&(s.dev, s.ino)) {
            Some(first) => {
                let mut e = s.entry.clone();
                e.kind = EntryKind::Hardlink;
                e.size = 0;
                e.target = Some(first.clone());
                Some(e)
            }
            None => {
                self.links.insert((s.dev, s.ino), s.entry.path.clone());
                None
            }
        }
    }

    /// An entry of this backup, at `at` in the base's list when it has
    /// one; an incremental lists it only when it is `listed` (new, changed
    /// or stored).
    fn keep(&mut self, e: Entry, at: Option<usize>, listed: bool) {
        if e.kind == EntryKind::File {
            self.files += 1;
            self.bytes += e.size;
        }
        if let (Some(b), Some(at)) = (&mut self.base, at) {
            b.keep(at);
        }
        if listed || self.base.is_none() {
            self.entries.push(e);
        }
    }

    /// Store one scanned path; `content` when it was read already (queue).
    /// A stored file's hash arrives from the writer later ([`Run::hashed`]).
    fn add<W: Write + Send + 'static>(
        &mut self,
        w: &mut archive::Writer<W>,
        s: &Scanned,
        content: Option<&[u8]>,
        info: &RelayFacts,
        progress: &Progress,
    ) -> Result<()> {
        self.check_interrupt()?;
        if !self.followed.is_empty() && self.followed.contains(&s.entry.path) {
            // Stored already, under the name it was renamed to.
            return Ok(());
        }
        let (at, prev) = match self.base.as_mut().and_then(|b| b.find(&s.entry.path)) {
            Some((at, p)) => (Some(at), Some(p)),
            None => (None, None),
        };
        // A second name of a file becomes a hard link entry.
        let mut e = self.link_of(s).unwrap_or_else(|| s.entry.clone());
        name_owner(&mut e, info);
        if e.kind != EntryKind::File {
            // Directories, links and hard links: their header is all there
            // is to store. A hard link goes again with the file it names.
            let same = prev.is_some_and(|p| p.unchanged(&e))
                && !(e.kind == EntryKind::Hardlink && self.stored_links.contains(&(s.dev, s.ino)));
            e.stored = !same;
            if !same {
                w.add_entry(&e)?;
            }
            self.keep(e, at, !same);
            return Ok(());
        }
        if let Some(p) = prev.filter(|p| p.unchanged(&e)) {
            if let Some(sha) = p.sha256() {
                e.sha256 = Some(sha.to_string());
                e.stored = false;
                self.keep(e, at, false);
                return Ok(());
            }
        }
        e.stored = true;
        if s.nlink > 1 {
            self.stored_links.insert((s.dev, s.ino));
        }
        let id = self.entries.len();
        let read = match content {
            Some(bytes) => {
                e.size = bytes.len() as u64;
                w.add_bytes(&e, bytes, id)?;
                Some(archive::FileRead {
                    size: e.size,
                    changed: false,
                })
            }
            None => match self.scan.roots.open(s) {
                Ok((f, st)) => {
                    if (st.st_dev, st.st_ino) != (s.dev, s.ino) {
                        // Another file under the same name now (a
                        // rename over it): what is there is stored.
                        self.consistency.changed_while_read.push(e.path.clone());
                    }
                    Some(w.add_file(&mut e, &f, &st, id)?)
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(changed_kind(&e.path, &err));
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {}", e.path));
                }
            },
        };
        let Some(read) = read else {
            // Gone since the scan: a maildir message may have moved.
            if let Some(s2) = self.scan.renamed(s)? {
                // A name the scan found is stored in its turn (or was).
                let scan = self.scan;
                let scanned = self
                    .scanned_paths
                    .get_or_insert_with(|| {
                        scan.entries.iter().map(|s| s.entry.path.as_str()).collect()
                    })
                    .contains(s2.entry.path.as_str());
                if scanned || !self.followed.insert(s2.entry.path.clone()) {
                    return Ok(());
                }
                return self.add(w, &s2, None, info, progress);
            }
            return Ok(());
        };
        if read.changed {
            self.consistency.changed_while_read.push(e.path.clone());
        }
        self.stored_files += 1;
        self.stored_bytes += read.size;
        progress.tick(read.size, self.stored_files as u64);
        self.keep(e, at, true);
        Ok(())
    }

    /// Put the hashes the writer computed into the stored entries.
    fn hashed(&mut self, hashes: Vec<(usize, String)>) -> Result<()> {
        for (id, sha) in hashes {
            if let Some(e) = self.entries.get_mut(id) {
                e.sha256 = Some(sha);
            }
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.kind == EntryKind::File && e.sha256.is_none())
        {
            bail!("internal error: no checksum for {}", e.path);
        }
        Ok(())
    }
}

/// The error for a path that is no longer the kind the scan found.
fn changed_kind(path: &str, why: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{path} was a file when the backup began and {why}: it was not followed and nothing was written; run the backup again (if it persists, look at what replaces files there)"
    )
}

/// The queue's paths by name, files with their content.
type QueueFiles = BTreeMap<String, (Scanned, Option<Vec<u8>>)>;

/// The queue's files with their content, read now; what did not change
/// since `before` (same inode, size and time) is not read again.
fn read_queue(scan: &scan::Scan, before: Option<&QueueFiles>) -> Result<QueueFiles> {
    let Some((list, _)) = scan.queue()? else {
        return Ok(QueueFiles::new());
    };
    let mut out = BTreeMap::new();
    for s in list {
        let content = if s.entry.kind == EntryKind::File {
            let same = before
                .and_then(|b| b.get(&s.entry.path))
                .filter(|(p, c)| {
                    c.is_some()
                        && p.ino == s.ino
                        && p.entry.size == s.entry.size
                        && p.entry.mtime == s.entry.mtime
                        && p.entry.mtime_nsec == s.entry.mtime_nsec
                })
                .and_then(|(_, c)| c.clone());
            match same {
                Some(c) => Some(c),
                None => match scan.roots.open(&s) {
                    Ok((mut f, st)) => {
                        let mut c = Vec::with_capacity(st.st_size as usize);
                        f.read_to_end(&mut c)
                            .with_context(|| format!("cannot read {}", s.entry.path))?;
                        Some(c)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Err(changed_kind(&s.entry.path, &e))
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", s.entry.path))
                    }
                },
            }
        } else {
            None
        };
        out.insert(s.entry.path.clone(), (s, content));
    }
    Ok(out)
}

/// Entries of the mail queue planned for without growing the list (a
/// larger queue still fits, at the cost of one copy).
const QUEUE_ROOM: usize = 4096;

fn write(
    ctx: &Context,
    opts: &BackupOptions,
    plan: Plan,
    info: RelayFacts,
    signals: usize,
    start: Instant,
) -> Result<Summary> {
    let (created, _) = stamp(SystemTime::now());
    let header = Header {
        format: manifest::FORMAT,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kind: plan.kind,
        id: new_id(&created, ctx.deployment.dir()),
        base: plan.base.as_ref().map(|b| b.reference.clone()),
        created,
        deployment: plan.id.clone(),
        origin: (opts.origin != Origin::Backup).then_some(opts.origin),
    };
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    } else {
        opts.threads
    };

    let (dest, out) = open_dest(ctx, &opts.output, plan.final_path.as_deref())?;
    let sink = crypt::Sink::new(out, &opts.encrypt)?;
    let mut w = archive::Writer::new(sink, opts.level, threads)?;
    w.add_meta(manifest::HEADER_ENTRY, &serde_json::to_vec_pretty(&header)?)?;
    let mut run = Run {
        scan: &plan.scan,
        base: plan.base.as_ref().map(base::Base::walk),
        links: HashMap::default(),
        stored_links: HashSet::default(),
        scanned_paths: None,
        followed: HashSet::default(),
        // Room for the queue's entries too (read later): growing a list
        // this long copies it into fresh memory. An incremental lists what
        // changed.
        entries: Vec::with_capacity(if plan.base.is_some() {
            QUEUE_ROOM
        } else {
            plan.scan.entries.len() + QUEUE_ROOM
        }),
        consistency: Consistency::default(),
        files: 0,
        bytes: 0,
        stored_files: 0,
        stored_bytes: 0,
        signals,
    };
    run.consistency.notes.push(
        "mailboxes, keys and certificates copied while the relay served (maildir files are written once and renamed; a message renamed during the copy is followed to its new name)".into(),
    );
    run.consistency.notes.push(format!(
        "the state as the container sees it, from its mounts ({})",
        match plan.scan.layout_from() {
            scan::LayoutFrom::Container => "the running container's",
            scan::LayoutFrom::Compose => "Compose's configuration",
        }
    ));
    if !plan.scan.skipped.followed.is_empty() {
        run.consistency.notes.push(format!(
            "{} links that lead outside the state trees stored as what they lead to (as the container sees it)",
            plan.scan.skipped.followed.len()
        ));
    }
    for n in &plan.scan.skipped.notes {
        ctx.shell.note(n);
        run.consistency.notes.push(n.clone());
    }
    {
        let progress = Progress::new(ctx, opts.json, || {
            // What will be read: the files new or changed since the base.
            let to_read = plan.scan.entries.iter().filter(|s| {
                s.entry.kind == EntryKind::File
                    && !plan
                        .base
                        .as_ref()
                        .and_then(|b| b.get(&s.entry.path))
                        .is_some_and(|p| p.unchanged(&s.entry))
            });
            to_read.fold((0, 0), |(b, f), s| (b + s.entry.size, f + 1))
        });
        // This thread reads the files into the archive's pieces; the
        // writer's pool hashes and compresses them, as `tar | zstd -T0`
        // overlaps reading and compression.
        for s in &plan.scan.entries {
            run.add(&mut w, s, None, &info, &progress)?;
        }

        if plan.scan.has_queue() {
            // Read the queue once while Postfix runs, then again under the
            // pause, reusing what did not change: the pause lasts as long
            // as the queue takes to stat, plus the files that changed.
            let early = read_queue(&plan.scan, None)?;
            let queue_files = if info.running && opts.pause {
                match pause::Pause::start(ctx) {
                    Ok(mut p) => {
                        let method = p.method();
                        let res = read_queue(&plan.scan, Some(&early));
                        let d = p.resume()?;
                        let files = res?;
                        let ms = d.as_millis() as u64;
                        run.consistency.queue_pause_ms = Some(ms);
                        run.consistency.notes.push(format!(
                            "mail queue ({}) copied while Postfix ({}) was {} for {ms} ms",
                            scan::QUEUE_DIR,
                            pause::POSTFIX_UNIT,
                            match method {
                                pause::Method::Freezer =>
                                    "frozen (systemctl freeze, cgroup freezer)",
                                pause::Method::Sigstop => "stopped (SIGSTOP/SIGCONT)",
                            }
                        ));
                        files
                    }
                    Err(e) => {
                        ctx.shell
                            .warn(format!("{e:#}; the queue is copied while Postfix runs"));
                        run.consistency.notes.push(format!(
                            "mail queue copied while Postfix ran (pausing failed: {e})"
                        ));
                        early
                    }
                }
            } else {
                run.consistency.notes.push(if info.running {
                    "mail queue copied while Postfix ran (--no-pause)".to_string()
                } else {
                    "mail queue copied with the relay stopped (the container was not running)"
                        .to_string()
                });
                early
            };
            for (s, content) in queue_files.values() {
                run.add(&mut w, s, content.as_deref(), &info, &progress)?;
            }
        } else {
            run.consistency
                .notes
                .push(format!("no mail queue directory ({})", scan::QUEUE_DIR));
        }
    }
    if !plan.scan.skipped.special.is_empty() {
        run.consistency.notes.push(format!(
            "{} sockets or fifos not stored (the services create them at start)",
            plan.scan.skipped.special.len()
        ));
    }
    if info.users.is_empty() {
        run.consistency.notes.push(
            "owners recorded by number only (the container was not running to name them)".into(),
        );
    }
    let hashes = w.hashes()?;
    run.hashed(hashes)?;
    let deleted = run
        .base
        .as_ref()
        .map(base::Walk::deleted)
        .unwrap_or_default();
    let manifest = Manifest {
        header: header.clone(),
        image_version: info.image_version.clone(),
        relay_commit: info.relay_commit.clone(),
        consistency: run.consistency.clone(),
        listing: if plan.base.is_some() {
            manifest::Listing::Changes
        } else {
            manifest::Listing::All
        },
        entries: std::mem::take(&mut run.entries),
        deleted,
    };
    run.check_interrupt()?;
    let json = manifest.to_json_parts();
    let json_parts: Vec<&[u8]> = json.iter().map(Vec::as_slice).collect();
    // The sidecar is written (and flushed) while the archive is finished;
    // it takes its name once the archive has its own.
    let sidecar_dir = match (&opts.output, &dest) {
        (Output::Dir(_), Dest::Temp { final_path, .. }) => Some(parent_dir(final_path)),
        _ => None,
    };
    let (finished, sidecar) = std::thread::scope(|scope| {
        let sidecar = sidecar_dir.map(|dir| {
            let json = &json_parts;
            scope.spawn(
                move || -> Result<(tempfile::NamedTempFile, crate::host::interrupt::Registered)> {
                    let (mut tmp, registered) = partial_in(dir, ".manifest.")?;
                    let mut sealed = crypt::Sink::new(tmp.as_file_mut(), &opts.encrypt)?;
                    for part in json {
                        sealed.write_all(part)?;
                    }
                    sealed.finish()?;
                    tmp.as_file().sync_all()?;
                    Ok((tmp, registered))
                },
            )
        });
        let finished = (|| -> Result<u64> {
            w.add_meta_parts(manifest::MANIFEST_ENTRY, &json_parts)?;
            let (sink, archive_bytes) = w.finish()?;
            let mut out = sink
                .finish()
                .context("cannot finish the encrypted stream")?;
            out.flush().context("cannot write the archive")?;
            Ok(archive_bytes)
        })();
        let sidecar = sidecar.map(|t| {
            t.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the manifest failed")))
        });
        (finished, sidecar)
    });
    let archive_bytes = finished?;
    let sidecar = sidecar.transpose()?;
    let archive = match dest {
        Dest::Stdout => None,
        Dest::Temp {
            tmp,
            final_path,
            _registered,
        } => {
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("cannot write {}", tmp.path().display()))?;
            {
                // Named, or left to be removed: a forced end waits.
                let _critical = crate::host::interrupt::critical();
                tmp.persist_noclobber(&final_path)
                    .map_err(|e| e.error)
                    .with_context(|| format!("cannot create {}", final_path.display()))?;
                drop(_registered);
                if let Some((side, registered)) = sidecar {
                    let side_path = Manifest::sidecar_of(&final_path);
                    side.persist(&side_path)
                        .map_err(|e| e.error)
                        .with_context(|| format!("cannot create {}", side_path.display()))?;
                    drop(registered);
                }
            }
            catalog::record(ctx, &final_path, &header)?;
            // Encrypted archives: keep the manifests of the chain here, in
            // clear, for the next incremental (a sidecar in clear would
            // tell the backup's host every mailbox name).
            let chain = plan.base.as_ref().map_or(&[][..], |b| &b.chain[..]);
            chain::keep_local_copies(
                ctx,
                (!matches!(opts.encrypt, crypt::Encrypt::None))
                    .then_some((final_path.as_path(), &json_parts[..])),
                chain,
            )?;
            crate::host::flush::sync_dir(parent_dir(&final_path));
            Some(final_path)
        }
    };
    let removed = match (&opts.output, opts.keep, &archive, &plan.id) {
        (Output::Dir(d), Some(n), Some(written), Some(id)) => {
            retention(ctx, d, n, written, id, opts)?
        }
        _ => vec![],
    };
    let summary = Summary {
        archive,
        kind: plan.kind,
        base: plan.base.as_ref().map(|b| b.reference.file.clone()),
        files: run.files,
        bytes: run.bytes,
        stored_files: run.stored_files,
        stored_bytes: run.stored_bytes,
        deleted: manifest.deleted.len(),
        archive_bytes,
        seconds: start.elapsed().as_secs_f64(),
        queue_pause_ms: manifest.consistency.queue_pause_ms,
        consistency: manifest.consistency.notes.clone(),
        removed_by_retention: removed,
    };
    drop(run);
    // Freeing every entry of a large deployment (the scan's, the base's and
    // the new manifest's) takes longer than the last steps of an
    // incremental backup; nothing waits for it.
    let _ = std::thread::Builder::new()
        .name("backup-free".into())
        .spawn(move || drop((plan, manifest, json)));
    Ok(summary)
}

/// Keep the newest `n` chains of this deployment's archives of this
/// origin in a backup directory, the chain just `written` always; nothing
/// else there is touched (see [`catalog`]).
fn retention(
    ctx: &Context,
    dir: &Path,
    n: usize,
    written: &Path,
    id: &str,
    opts: &BackupOptions,
) -> Result<Vec<PathBuf>> {
    let list = catalog::list(ctx, dir, &opts.keys)?;
    let unknown = list.iter().filter(|k| k.header.is_none()).count();
    if unknown > 0 {
        ctx.shell.note(format!(
            "{unknown} file{} named like an archive in {} {} not identified as this deployment's and {} kept (another relay's, an older version's, or encrypted without a record here)",
            if unknown == 1 { "" } else { "s" },
            dir.display(),
            if unknown == 1 { "is" } else { "are" },
            if unknown == 1 { "is" } else { "are" },
        ));
    }
    let chains = catalog::chains(&list, id, opts.origin);
    let mut removed = Vec::new();
    for p in catalog::to_remove(&chains, n, written) {
        fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        let _ = fs::remove_file(Manifest::sidecar_of(&p));
        removed.push(p);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_file_is_written_in_small_pieces() {
        use crate::archive::WRITE_CHUNK;
        let data: Vec<u8> = (0..3 * WRITE_CHUNK + 5).map(|i| i as u8).collect();
        // The archive's file: a 1 MiB buffer above it still writes small.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let f = fs::File::create(&path).unwrap();
        let mut flushed = Flushed {
            _flusher: crate::host::flush::Flusher::start(
                "test-flush",
                crate::host::flush::Target::Data(f.try_clone().unwrap()),
                FLUSH_PERIOD,
            )
            .unwrap(),
            file: f,
        };
        assert_eq!(flushed.write(&data).unwrap(), WRITE_CHUNK);
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, flushed);
        buffered.write_all(&data[WRITE_CHUNK..]).unwrap();
        drop(buffered);
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn outputs_and_chains() {
        assert_eq!(Output::parse(Path::new("-")), Output::Stdout);
        assert_eq!(
            Output::parse(Path::new("/nonexistent/b/")),
            Output::Dir("/nonexistent/b/".into())
        );
        assert_eq!(
            Output::parse(Path::new("/nonexistent/b.tar.zst")),
            Output::File("/nonexistent/b.tar.zst".into())
        );
        assert!(is_partial(
            ".chatmail-backup-x-full.tar.zst.AbC123.partial",
            None
        ));
        assert!(is_partial(".manifest.AbC123.partial", None));
        assert!(!is_partial(".manifest.AbC123", None));
        assert!(!is_partial("chatmail-backup-x.partial", None));
        assert!(is_partial(".b.tar.zst.x1.partial", Some("b.tar.zst")));
        assert!(!is_partial(".other.x1.partial", Some("b.tar.zst")));
    }

    /// A file swapped for a link to a host file, or for a FIFO, between the
    /// scan and the read: refused (never followed, never blocking), and no
    /// archive or temporary file is left.
    #[test]
    fn a_file_that_changes_kind_while_the_backup_runs_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dep = d.path().join("dep");
        let cur = dep.join("data/chatmail/vmail/cur");
        fs::create_dir_all(&cur).unwrap();
        let secret = d.path().join("secret");
        fs::write(&secret, "host file").unwrap();
        let shell = crate::shell::Shell::new(
            crate::shell::Verbosity::Quiet,
            crate::shell::ColorChoice::Never,
        );
        let ctx = Context::new(&dep, crate::host::Host::new("/"), shell, false).unwrap();
        let out = d.path().join("out");
        for swap in ["link", "fifo"] {
            fs::write(cur.join("m"), "mail").unwrap();
            let opts = BackupOptions {
                output: Output::File(out.join(format!("{swap}.tar.zst"))),
                ..Default::default()
            };
            let mut p = plan(&ctx, &opts).unwrap();
            fs::remove_file(cur.join("m")).unwrap();
            if swap == "link" {
                std::os::unix::fs::symlink(&secret, cur.join("m")).unwrap();
            } else {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    cur.join("m").as_path(),
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap();
            }
            let info = std::mem::take(&mut p.info);
            let err = write(
                &ctx,
                &opts,
                p,
                info,
                crate::host::interrupt::count(),
                Instant::now(),
            )
            .err()
            .unwrap();
            assert!(
                err.to_string().contains("was a file when the backup began"),
                "{swap}: {err:#}"
            );
            assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "{swap}");
            fs::remove_file(cur.join("m")).unwrap();
        }
    }
}
