//! The long-running watcher: file events, a poll timer and signals feeding
//! one loop.
//!
//! Watches are non-recursive and placed on every directory involved in
//! reaching the files — each ancestor of the configured directory, the
//! directory of every symlink hop, the directory of each final file — and
//! recomputed after every evaluation, so a swapped symlink, a renamed-over
//! file, an in-place rewrite or a deleted-and-recreated directory all
//! produce an event. A directory replaced under the same name keeps its path
//! but not its inode, so watches are keyed by both.
//!
//! Events open a short trailing-edge debounce window; when it closes, the
//! files are fingerprinted and, if the content is new and valid, the services
//! are reloaded. The poll timer does the same evaluation, for filesystems
//! without inotify (NFS, some FUSE mounts). Between events the process
//! sleeps in `epoll`: no busy loop.

use anyhow::{Context as _, Result};
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::locate::Walk;
use super::material::Material;
use super::verify::short;
use super::{apply_exclusive, check, reload, state, Applied, Check, Settings};
use crate::context::Context;

/// Upper bound on the debounce: a steady stream of events must not
/// postpone the reload for ever.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// How long a stop request waits for a running reload to finish.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The set of directory watches, keyed by path and inode.
struct Watches {
    watcher: notify::RecommendedWatcher,
    current: BTreeMap<PathBuf, (u64, u64)>,
}

impl Watches {
    /// Make the watched set equal to `want` (directories that exist now).
    /// Returns whether anything was added: events between the walk and the
    /// new watch may have been missed, so the caller looks again.
    fn update(&mut self, ctx: &Context, want: &BTreeSet<PathBuf>) -> bool {
        let mut wanted: BTreeMap<PathBuf, (u64, u64)> = BTreeMap::new();
        for d in want {
            if let Ok(m) = std::fs::metadata(d) {
                if m.is_dir() {
                    wanted.insert(d.clone(), (m.dev(), m.ino()));
                }
            }
        }
        let stale: Vec<PathBuf> = self
            .current
            .iter()
            .filter(|(p, id)| wanted.get(*p) != Some(id))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            // Gone or replaced: the kernel may have dropped it already.
            let _ = self.watcher.unwatch(&p);
            self.current.remove(&p);
        }
        let mut added = false;
        for (p, id) in wanted {
            if self.current.contains_key(&p) {
                continue;
            }
            match self.watcher.watch(&p, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    ctx.shell.verbose(format!("watching {}", p.display()));
                    self.current.insert(p, id);
                    added = true;
                }
                Err(e) => ctx.shell.warn(format!(
                    "cannot watch {} ({e}); relying on the poll timer (raise fs.inotify.max_user_watches with `chatmail-docker sysctl`?)",
                    p.display()
                )),
            }
        }
        added
    }
}

/// Whether a file event can matter: it touches a path the last walk looked
/// at, or a watched directory itself. Opens and reads (including our own)
/// never do.
fn relevant(ev: &notify::Event, walk: &Walk) -> bool {
    if ev.need_rescan() {
        return true;
    }
    match ev.kind {
        EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    ev.paths.is_empty()
        || ev
            .paths
            .iter()
            .any(|p| walk.visited.contains(p) || walk.dirs.contains(p))
}

/// Where the loop stands with the files.
struct Engine {
    ctx: Context,
    settings: Settings,
    /// Fingerprint the services were last reloaded into.
    applied: Option<String>,
    /// Fingerprint last found invalid, so it is logged once.
    rejected: Option<String>,
    /// Last reason for having nothing to apply, so it is logged once.
    missing: Option<String>,
    /// A reload to retry: when, which fingerprint, which attempt.
    retry: Option<(Instant, String, u32)>,
    /// When the applied certificate's coming (or past) expiry was last
    /// warned about.
    expiry_warned: Option<Instant>,
    walk: Walk,
}

/// How often an unchanged certificate close to expiry is warned about
/// again: a renewal that keeps failing must not go unnoticed, nor flood the
/// log on every poll.
const EXPIRY_REMINDER: Duration = Duration::from_secs(86_400);

enum Step {
    Continue,
    Exit,
}

/// Run until SIGTERM or SIGINT.
pub fn run(ctx: &Context, settings: Settings) -> Result<()> {
    // Two watchers would reload twice for every renewal.
    if let Some(pid) = live_pid(ctx).filter(|p| *p != std::process::id()) {
        return Err(crate::error::usage(format!(
            "cert-watch already runs for {} (pid {pid}); stop it first (`systemctl stop {}` if it is the service)",
            ctx.deployment.dir().display(),
            super::UNIT_NAME
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the event loop")?;
    let result = rt.block_on(main_loop(ctx.clone(), settings));
    // A reload still running in the blocking pool must not hold up exit.
    rt.shutdown_background();
    remove_pid_file(ctx);
    result
}

async fn main_loop(ctx: Context, settings: Settings) -> Result<()> {
    // SIGTERM, SIGINT and SIGHUP stop the watcher (after a reload under
    // way, when it is about done).
    let mut signals = crate::host::interrupt::subscribe();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let _ = tx.send(res);
    })
    .context("cannot start watching files (inotify)")?;
    let mut watches = Watches {
        watcher,
        current: BTreeMap::new(),
    };
    write_pid_file(&ctx);
    ctx.shell.status(
        "Watching",
        format!(
            "{} ({}); polling every {} s",
            settings.target.dir.display(),
            settings.target.origin,
            settings.poll.as_secs()
        ),
    );
    let mut engine = Engine {
        applied: state::load(&ctx).map(|s| s.fingerprint),
        ctx,
        settings,
        rejected: None,
        missing: None,
        retry: None,
        expiry_warned: None,
        walk: Walk::default(),
    };
    let mut poll =
        tokio::time::interval_at(Instant::now() + engine.settings.poll, engine.settings.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Evaluate at once: a renewal may have happened while nothing watched.
    let mut due: Option<Instant> = Some(Instant::now());
    let mut first_event: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        let retry_at = engine.retry.as_ref().map(|r| r.0);
        tokio::select! {
            biased;
            _ = signals.changed() => break,
            ev = rx.recv() => {
                match ev {
                    Some(Ok(ev)) => {
                        if relevant(&ev, &engine.walk) {
                            let now = Instant::now();
                            let first = *first_event.get_or_insert(now);
                            due = Some((now + engine.settings.debounce).min(first + MAX_DELAY));
                        }
                    }
                    Some(Err(e)) => {
                        engine.ctx.shell.warn(format!("file watching: {e}; looking again"));
                        due.get_or_insert(Instant::now());
                    }
                    None => break,
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {
                due = None;
                first_event = None;
                if let Step::Exit = engine.evaluate(&mut watches, &mut signals).await {
                    break;
                }
            }
            _ = poll.tick() => {
                if let Step::Exit = engine.evaluate(&mut watches, &mut signals).await {
                    break;
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                if let Some(r) = engine.retry.as_mut() {
                    r.0 = Instant::now();
                }
                if let Step::Exit = engine.evaluate(&mut watches, &mut signals).await {
                    break;
                }
            }
        }
    }
    engine.ctx.shell.status("Stopped", "cert-watch");
    Ok(())
}

impl Engine {
    /// Look at the files; reload when they hold a new, valid pair.
    async fn evaluate(
        &mut self,
        watches: &mut Watches,
        signals: &mut tokio::sync::watch::Receiver<usize>,
    ) -> Step {
        // Walk, watch what the walk touched, and walk again if watches were
        // added (anything that changed before they existed is then seen).
        let mut result = check(&self.settings.target);
        for _ in 0..3 {
            if !watches.update(&self.ctx, &result.1.dirs) {
                break;
            }
            result = check(&self.settings.target);
        }
        let (found, walk) = result;
        self.walk = walk;
        let m = match found {
            Check::Missing(why) => {
                if self.missing.as_deref() != Some(why.as_str()) {
                    self.ctx.shell.warn(format!("waiting: {why}"));
                    self.missing = Some(why);
                }
                return Step::Continue;
            }
            Check::Found(m) => m,
        };
        self.missing = None;
        let fp = m.fingerprint.clone();
        if self.applied.as_deref() == Some(fp.as_str()) {
            if self.retry.take().is_some() {
                self.ctx
                    .shell
                    .status("Unchanged", "the certificate is back to the applied one");
            }
            self.remind_expiry(&m);
            return Step::Continue;
        }
        if self.rejected.as_deref() == Some(fp.as_str()) {
            return Step::Continue;
        }
        if let Some((at, rfp, _)) = &self.retry {
            if *rfp == fp && Instant::now() < *at {
                return Step::Continue;
            }
        }
        let info = match m.validate(self.settings.domain.as_deref(), SystemTime::now()) {
            Ok(i) => i,
            Err(e) => {
                self.ctx
                    .shell
                    .warn(format!("not reloading: {e:#}; waiting for the next change"));
                self.rejected = Some(fp);
                self.retry = None;
                return Step::Continue;
            }
        };
        self.rejected = None;
        if self.retry.as_ref().is_none_or(|r| r.1 != fp) {
            self.ctx.shell.status(
                "Changed",
                format!(
                    "{} for {} (content {} -> {}, leaf sha256 {}, expires {})",
                    m.cert_files[0].display(),
                    info.dns_names.join(","),
                    self.applied.as_deref().map(short).unwrap_or("none"),
                    short(&fp),
                    short(&info.leaf_sha256),
                    info.not_after_text()
                ),
            );
            if super::warn_if_expiring(&self.ctx, &info) {
                self.expiry_warned = Some(Instant::now());
            }
        }
        let ctx = self.ctx.clone();
        let settings = self.settings.clone();
        let (m2, info2) = (m.clone(), info.clone());
        let mut job =
            tokio::task::spawn_blocking(move || apply_exclusive(&ctx, &settings, &m2, &info2));
        let mut step = Step::Continue;
        let outcome = tokio::select! {
            biased;
            _ = signals.changed() => None,
            r = &mut job => Some(r),
        };
        let outcome = match outcome {
            Some(r) => r,
            None => {
                // Stopping: let a reload that is about done finish so its
                // result is recorded, but do not wait on a hung one.
                step = Step::Exit;
                match tokio::time::timeout(STOP_GRACE, job).await {
                    Ok(r) => r,
                    Err(_) => return Step::Exit,
                }
            }
        };
        match outcome {
            // Recorded by apply_exclusive.
            Ok(Applied::Ok { .. }) => {
                self.applied = Some(fp);
                self.retry = None;
            }
            Ok(Applied::Later(why)) | Ok(Applied::Failed(why)) => self.schedule_retry(&m, why),
            Err(e) => self.schedule_retry(&m, format!("the reload task failed: {e}")),
        }
        step
    }

    /// The applied certificate did not change: if it is about to expire or
    /// has expired, its renewal is failing. Say so at start and then once a
    /// day, as long as it lasts.
    fn remind_expiry(&mut self, m: &Material) {
        if self
            .expiry_warned
            .is_some_and(|at| at.elapsed() < EXPIRY_REMINDER)
        {
            return;
        }
        if let Ok(info) = m.info() {
            if super::warn_if_expiring(&self.ctx, &info) {
                self.expiry_warned = Some(Instant::now());
            }
        }
    }

    fn schedule_retry(&mut self, m: &Material, why: String) {
        let attempt = match &self.retry {
            Some((_, fp, n)) if *fp == m.fingerprint => n + 1,
            _ => 1,
        };
        let pause = reload::backoff(attempt);
        self.ctx
            .shell
            .error(format!("{why}; retrying in {} s", pause.as_secs()));
        self.retry = Some((Instant::now() + pause, m.fingerprint.clone(), attempt));
    }
}

fn write_pid_file(ctx: &Context) {
    let p = ctx.deployment.cert_watch_pid();
    let res = p
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .map_err(anyhow::Error::from)
        .and_then(|_| {
            crate::host::write_atomic(&p, format!("{}\n", std::process::id()).as_bytes(), 0o644)
        });
    if let Err(e) = res {
        ctx.shell.verbose(format!("no pid file: {e:#}"));
    }
}

fn remove_pid_file(ctx: &Context) {
    let p = ctx.deployment.cert_watch_pid();
    if read_pid(&p) == Some(std::process::id()) {
        let _ = std::fs::remove_file(p);
    }
}

fn read_pid(p: &Path) -> Option<u32> {
    let bytes = crate::host::read_input(p, 64).ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

/// The pid of a running watcher for this deployment, from the pid file,
/// checked against /proc so a stale file after a crash does not count.
pub fn live_pid(ctx: &Context) -> Option<u32> {
    let pid = read_pid(&ctx.deployment.cert_watch_pid())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_watcher = cmdline.split(|b| *b == 0).any(|arg| arg == b"cert-watch");
    is_watcher.then_some(pid)
}
