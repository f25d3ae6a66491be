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

mod dest;
pub mod pause;
pub mod scan;
mod store;

use anyhow::{Context as _, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::archive::base;
pub use crate::archive::manifest::Origin;
use crate::archive::manifest::{self, EntryKind, Header, Kind, Manifest};
use crate::archive::write::{self, sha256_hex};
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

impl Summary {
    /// What a dry run reports: the destination and kind it would write.
    fn planned(plan: Plan) -> Summary {
        Summary {
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
        }
    }
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
    run_checked(ctx, opts).map_err(|e| {
        if !error::is_no_space(&e) {
            return e;
        }
        let (at, again) = match &opts.output {
            Output::Stdout => ("the disk standard output goes to".to_string(), "-".to_string()),
            Output::File(f) => (
                crate::host::parent_dir(f).display().to_string(),
                f.display().to_string(),
            ),
            Output::Dir(d) => (d.display().to_string(), format!("{}/", d.display())),
        };
        e.context(format!(
            "no space left on {at}: nothing was kept of this backup, and the relay serves on; free space there (or name another destination), then run `chatmail-docker backup {again}` again"
        ))
    })
}

fn run_checked(ctx: &Context, opts: &BackupOptions) -> Result<Summary> {
    check_options(ctx, opts)?;
    let start = Instant::now();
    let signals = crate::host::interrupt::count();
    let mut plan = plan(ctx, opts)?;
    let info = std::mem::take(&mut plan.info);
    if ctx.dry_run {
        show_plan(ctx, opts, &plan, &info);
        ctx.dry_run_done();
        return Ok(Summary::planned(plan));
    }
    let summary = write(ctx, opts, plan, info, signals, start)?;
    report(ctx, opts, &summary)?;
    Ok(summary)
}

/// Refuse options that cannot work before anything is read.
fn check_options(ctx: &Context, opts: &BackupOptions) -> Result<()> {
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
    Ok(())
}

/// The summary, as JSON or as lines for a person.
fn report(ctx: &Context, opts: &BackupOptions, summary: &Summary) -> Result<()> {
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
    Ok(())
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

/// The header of the archive `plan` writes.
fn new_header(ctx: &Context, opts: &BackupOptions, plan: &Plan) -> Header {
    let (created, _) = stamp(SystemTime::now());
    Header {
        format: manifest::FORMAT,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kind: plan.kind,
        id: new_id(&created, ctx.deployment.dir()),
        base: plan.base.as_ref().map(|b| b.reference.clone()),
        created,
        deployment: plan.id.clone(),
        origin: (opts.origin != Origin::Backup).then_some(opts.origin),
    }
}

/// Threads that compress and hash: `--threads`, or one per core.
fn threads(opts: &BackupOptions) -> u32 {
    if opts.threads != 0 {
        return opts.threads;
    }
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// What will be read (bytes, files): the files new or changed since the
/// base.
fn to_read(plan: &Plan) -> (u64, u64) {
    let base = plan.base.as_ref();
    plan.scan
        .entries
        .iter()
        .filter(|s| {
            s.entry.kind == EntryKind::File
                && !base
                    .and_then(|b| b.get(&s.entry.path))
                    .is_some_and(|p| p.unchanged(&s.entry))
        })
        .fold((0, 0), |(b, f), s| (b + s.entry.size, f + 1))
}

/// Write the planned archive: its header, every scanned path, the mail
/// queue, the manifest; then into place, recorded, and the retention.
fn write(
    ctx: &Context,
    opts: &BackupOptions,
    plan: Plan,
    info: RelayFacts,
    signals: usize,
    start: Instant,
) -> Result<Summary> {
    let header = new_header(ctx, opts, &plan);
    let (dest, out) = dest::open(ctx, &opts.output, plan.final_path.as_deref())?;
    let sink = crypt::Sink::new(out, &opts.encrypt)?;
    let mut w = write::Writer::new(sink, opts.level, threads(opts))?;
    w.add_meta(manifest::HEADER_ENTRY, &serde_json::to_vec_pretty(&header)?)?;
    let mut run = store::Run::new(&plan.scan, plan.base.as_ref(), signals);
    run.note_scan(ctx);
    {
        let progress = store::Progress::new(ctx, opts.json, || to_read(&plan));
        run.store_scanned(&mut w, &info, &progress)?;
        run.store_queue(ctx, opts.pause, &mut w, &info, &progress)?;
    }
    let hashes = w.hashes()?;
    let manifest = run.manifest(header.clone(), &info, hashes)?;
    run.check_interrupt()?;
    let json = manifest.to_json_parts();
    let chain_files = plan.base.as_ref().map_or(&[][..], |b| &b.chain[..]);
    let (archive, archive_bytes) = dest::finish(ctx, opts, dest, w, &json, &header, chain_files)?;
    let removed = match (&opts.output, opts.keep, &archive, &plan.id) {
        (Output::Dir(d), Some(n), Some(written), Some(id)) => {
            retention(ctx, d, n, written, id, opts)?
        }
        _ => vec![],
    };
    let (files, bytes, stored_files, stored_bytes) = run.counts();
    drop(run);
    let summary = Summary {
        archive,
        kind: plan.kind,
        base: plan.base.as_ref().map(|b| b.reference.file.clone()),
        files,
        bytes,
        stored_files,
        stored_bytes,
        deleted: manifest.deleted.len(),
        archive_bytes,
        seconds: start.elapsed().as_secs_f64(),
        queue_pause_ms: manifest.consistency.queue_pause_ms,
        consistency: manifest.consistency.notes.clone(),
        removed_by_retention: removed,
    };
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
        let ctx = Context::quiet(&dep, "/");
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
                crate::host::mkfifo(&cur.join("m"));
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
