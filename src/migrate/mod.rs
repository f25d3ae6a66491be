//! `migrate`: turn a bare-metal chatmail relay into the container deployment
//! without losing a message, a key or a certificate, and with the relay down
//! only for the final sync.
//!
//! The order of steps is what keeps downtime short and the host safe:
//! 1. plan (always printed; `--dry-run` stops there), including free space;
//! 2. confirmation (terminal prompt or `--yes`; neither = refuse, exit 2);
//! 3. `chatmail.ini` -> `.env` through [`crate::ini2env::sync_env`];
//! 4. pre-sync of `/etc/dkimkeys`, `/var/lib/acme`, `/home` while the relay
//!    still runs (the bulk of the copying, no downtime);
//! 5. stop and disable the relay's units (recorded first, for `--rollback`);
//! 6. final sync: only what changed since the pre-sync, deletions included;
//! 7. verify every entry, content hashed; what differs is copied again by
//!    content and verified once more; 8. optionally start the container.
//!
//! If stopping, the final sync or the verification fails, the recorded
//! units are started again before the error is returned: the relay serves
//! either from the host or, verified, from `data/`, never from neither.
//!
//! The sources are what the relay sees: every host path is resolved inside
//! the host root ([`resolve`]), and a symlink leading out of a tree is copied
//! as its target ([`copy::walk_source`]).
//!
//! Everything needed to resume or undo lives in `data/.migrate-state.json`
//! ([`state`]). The copy engine ([`copy`]) never writes a partial file under
//! its final name, so the whole command can be re-run after any interruption.
//!
//! Ownership: uids/gids are copied numerically. The host's `vmail`,
//! `opendkim`, ... uids may differ from the image's; the plan and the state
//! file record the source owners, and the appliance's init re-owns the
//! mounted data to its own users at start.
//!
//! With `--mount-vmail` the mail is not copied: the marker file
//! `data/.mount-vmail` makes the generated compose override bind-mount the
//! host's `/home/vmail` instead.
//!
//! A missing `chatmail.ini` is an error: every bare-metal chatmail host has
//! one, so its absence means the wrong `--root` or a host that is not a relay;
//! `--ini PATH` points elsewhere when it was moved.

pub mod copy;
pub mod plan;
pub mod resolve;
pub mod rollback;
pub mod show;
pub mod state;
pub mod units;
pub mod verify;

use anyhow::{Context as _, Result};
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{context::Context, error, ini2env};
use copy::{Totals, Tree};
use plan::{human, Source};
use show::Shown as _;
use state::{Phase, SourceOwner, State, StoppedUnit};
use units::UnitState;

/// Where a bare-metal relay keeps its configuration.
pub const DEFAULT_INI: &str = "/usr/local/lib/chatmaild/chatmail.ini";

/// Marker telling the override generator to bind-mount `/home/vmail`.
pub const MOUNT_VMAIL_MARKER: &str = crate::overrides::VMAIL_MARKER;

/// A source tree found on the host, with its walk (used for the pre-sync).
struct Found {
    source: Source,
    dest: PathBuf,
    tree: Tree,
    /// The destination as walked for the plan (empty when not ours yet).
    dest_tree: Tree,
    totals: Totals,
    already: Totals,
    /// What a sync would copy now (a dry run against the destination walk).
    pending: copy::Stats,
    owner: SourceOwner,
}

/// What `migrate` was asked to do, built by the command line
/// (`crate::cli::migrate`); nothing here knows how it was parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The bare-metal `chatmail.ini`, when not at [`DEFAULT_INI`].
    pub ini: Option<PathBuf>,
    /// Bind-mount `/home/vmail` instead of copying the mail.
    pub mount_vmail: bool,
    /// Confirmed in advance (`--yes`).
    pub yes: bool,
    /// Start the container once migrated.
    pub start: bool,
    /// Copy while the relay runs, stop nothing.
    pub presync_only: bool,
    /// Undo: bring the bare-metal relay back.
    pub rollback: bool,
}

pub fn run(ctx: &Context, opts: impl Into<Options>) -> Result<()> {
    let opts = &opts.into();
    // One migration or rollback at a time per deployment: a second one
    // would stop, copy or start what the first is in the middle of.
    let _one = one_at_a_time(ctx)?;
    if opts.rollback {
        return rollback::run(ctx, opts.yes);
    }
    let state_file = state::path(ctx.deployment.dir());
    let mut st = State::load(&state_file)?;
    if opts.start {
        // Found out now, not after the relay has been stopped: no compose
        // file, or a container of another deployment that `up` would
        // refuse to touch.
        crate::engine::require_compose_file(ctx)?;
        crate::engine::ensure_ours(ctx)?;
    }
    let ini = find_ini(ctx, opts)?;

    // 1. The plan.
    let found = scan(ctx, opts, &st)?;
    let unit_states = units::query(ctx)?;
    let free = plan::free_at(&ctx.deployment.data())?;
    let need = sum(found.iter().map(|f| f.totals));
    let already = sum(found.iter().map(|f| f.already));
    let space = plan::check_space(&need, &already, free);
    print_plan(ctx, opts, &ini, &found, &unit_states, free, &st);
    if let Err(msg) = space {
        return Err(error::preflight(msg));
    }
    if ctx.dry_run {
        ctx.shell.note("dry run: nothing was changed");
        return Ok(());
    }
    if st.phase == Phase::Done {
        return already_done(ctx, opts, &found);
    }
    if opts.presync_only && st.phase == Phase::Stopped {
        return Err(error::usage(
            "an earlier run already stopped the relay's units: run `migrate` without \
             --presync-only to finish, or `migrate --rollback` to restart the old relay",
        ));
    }

    // 2. Confirmation.
    confirm(ctx, opts)?;

    // 3. The config.
    convert_config(ctx, &ini)?;

    // 4. Pre-sync while the relay runs.
    claim(ctx, opts, &mut st, &state_file, &found)?;
    if st.phase != Phase::Stopped {
        presync(ctx, &mut st, &state_file, &found)?;
        if opts.presync_only {
            ctx.shell.out(
                "Pre-sync done; the relay keeps running. Run `migrate` again (without \
                 --presync-only) to stop it and switch over.",
            );
            return Ok(());
        }
    } else {
        ctx.shell
            .note("resuming: the units are already stopped, continuing with the final sync");
    }

    // 5.-7. Stop, final sync, verify.
    switch_over(ctx, &mut st, &state_file, &found, &unit_states)?;

    // 8. Start.
    if opts.start {
        crate::setup::up(ctx)?;
    } else {
        ctx.shell
            .note("start the container with `chatmail-docker up`");
    }
    Ok(())
}

/// The bare-metal `chatmail.ini`: `--ini`, or the relay's default path.
fn find_ini(ctx: &Context, opts: &Options) -> Result<PathBuf> {
    let ini = match &opts.ini {
        Some(p) => p.clone(),
        None => match in_host(ctx, DEFAULT_INI) {
            Ok(p) => p,
            Err(resolve::Unresolved::Missing(_)) => ctx.host.path(DEFAULT_INI),
            Err(e) => {
                return Err(error::usage(format!(
                    "{DEFAULT_INI}: {e}; fix the link, or pass --ini PATH"
                )))
            }
        },
    };
    if !ini.is_file() {
        return Err(error::usage(format!(
            "no chatmail.ini at {}: this does not look like a bare-metal chatmail host \
             (check --root), or pass --ini PATH if the file was moved",
            ini.shown()
        )));
    }
    Ok(ini)
}

/// Where the host path `p` really is, every symlink resolved inside the
/// host root (see [`resolve::in_root`]).
fn in_host(ctx: &Context, p: &str) -> Result<PathBuf, resolve::Unresolved> {
    resolve::in_root(ctx.host.root(), Path::new(p))
}

/// Metadata of the host path `p` as the relay sees it (links followed
/// inside the host root).
fn host_meta(ctx: &Context, p: &str) -> Option<std::fs::Metadata> {
    in_host(ctx, p).ok().and_then(|r| std::fs::metadata(r).ok())
}

/// The host's user name for `uid` (its `/etc/passwd`, inside the root).
fn host_user(ctx: &Context, uid: u32) -> Option<String> {
    plan::user_name(&in_host(ctx, "/etc/passwd").ok()?, uid)
}

/// Walk every source tree (and the destination, when an earlier run made
/// it) and check that the destinations may be written.
fn scan(ctx: &Context, opts: &Options, st: &State) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for source in plan::sources(opts.mount_vmail) {
        if !source_present(ctx, &source)? {
            continue;
        }
        let dest = ctx.path(source.dest);
        check_destination(&dest, source.dest, st)?;
        // Both walks at once: each is parallel, but small directories leave
        // cores idle that the other walk can use.
        let owned = st.owns(source.dest);
        let (tree, dest_tree) = rayon::join(
            || copy::walk_source(ctx.host.root(), Path::new(source.host_path)),
            || {
                if owned {
                    copy::walk(&dest, true)
                } else {
                    Ok(Tree {
                        root: dest.clone(),
                        entries: Vec::new(),
                    })
                }
            },
        );
        let (tree, dest_tree) = (tree?, dest_tree?);
        let totals = tree.totals();
        let already = dest_tree.totals();
        let pending = copy::sync_trees(&tree, &dest_tree, true, &indicatif::ProgressBar::hidden())?;
        // `/home/vmail` may be missing on a half-installed host: then the
        // tree's root (walked above, always the first entry) stands in.
        let owner_meta = match host_meta(ctx, source.owner_of) {
            Some(m) => m,
            None => match tree.entries.first() {
                Some(root) => root.meta.clone(),
                None => anyhow::bail!("{} is empty", tree.root.shown()),
            },
        };
        let owner = SourceOwner {
            source: source.owner_of.to_string(),
            uid: owner_meta.uid(),
            gid: owner_meta.gid(),
            user: host_user(ctx, owner_meta.uid()),
        };
        found.push(Found {
            source,
            dest,
            tree,
            dest_tree,
            totals,
            already,
            pending,
            owner,
        });
    }
    if opts.mount_vmail && !host_meta(ctx, "/home/vmail").is_some_and(|m| m.is_dir()) {
        return Err(error::preflight(format!(
            "--mount-vmail: {} does not exist, so there is no mail to mount; check --root, \
                 or leave out --mount-vmail to copy /home",
            ctx.host.path("/home/vmail").shown()
        )));
    }
    Ok(found)
}

/// Whether the tree `source` exists on the host (its path resolved inside
/// the root); an error when it is required, or when a symlink on the way
/// leads nowhere or in a loop.
fn source_present(ctx: &Context, source: &Source) -> Result<bool> {
    match in_host(ctx, source.host_path) {
        Ok(real) if real.is_dir() => Ok(true),
        Ok(real) => Err(error::preflight(format!(
            "{} is not a directory (looked at {}); nothing was changed",
            source.host_path,
            real.shown()
        ))),
        Err(resolve::Unresolved::Missing(_)) if !source.required => {
            ctx.shell.note(format!(
                "{} does not exist; nothing to copy from it",
                source.host_path
            ));
            Ok(false)
        }
        Err(resolve::Unresolved::Missing(at)) if at != Path::new(source.host_path) => {
            Err(error::preflight(format!(
                "{} is a symlink that leads nowhere: {} does not exist (host root {}); \
                 nothing was changed. Fix the link and run again",
                source.host_path,
                at.shown(),
                ctx.host.root().shown()
            )))
        }
        Err(resolve::Unresolved::Missing(_)) => Err(error::preflight(format!(
            "{} not found (looked at {}): nothing to migrate from; run this on the \
                 relay's host, or point --root at its filesystem",
            source.host_path,
            ctx.host.path(source.host_path).shown()
        ))),
        Err(e) => Err(error::preflight(format!(
            "{}: {e} (host root {}); nothing was changed. Fix the link and run again",
            source.host_path,
            ctx.host.root().shown()
        ))),
    }
}

/// `chatmail.ini` -> `.env`.
fn convert_config(ctx: &Context, ini: &Path) -> Result<()> {
    let report = ini2env::sync_env(
        ctx,
        ini,
        &ctx.deployment.env_file(),
        &ini2env::Options::default(),
    )
    .with_context(|| format!("cannot convert {} into .env", ini.shown()))?;
    for line in &report.lines {
        ctx.shell.verbose(line);
    }
    ctx.shell.status(
        "Config",
        if report.changed {
            format!("{} -> .env updated", ini.shown())
        } else {
            ".env already up to date".to_string()
        },
    );
    Ok(())
}

/// Claim the destinations (and record the source owners) before writing
/// into them.
fn claim(
    ctx: &Context,
    opts: &Options,
    st: &mut State,
    state_file: &Path,
    found: &[Found],
) -> Result<()> {
    std::fs::create_dir_all(ctx.deployment.data())
        .with_context(|| format!("cannot create {}", ctx.deployment.data().shown()))?;
    for f in found {
        if !st.owns(f.source.dest) {
            st.created.push(f.source.dest.to_string());
        }
        st.source_owners.retain(|o| o.source != f.owner.source);
        st.source_owners.push(f.owner.clone());
    }
    if opts.mount_vmail {
        crate::host::write_atomic(
            &ctx.deployment.vmail_marker(),
            b"# /home/vmail is bind-mounted from the host (chatmail-docker migrate --mount-vmail)\n",
            0o644,
        )?;
        // The container uses the host's files directly: their owner matters.
        if let Some(m) = host_meta(ctx, plan::MAIL.owner_of) {
            st.source_owners.retain(|o| o.source != plan::MAIL.owner_of);
            st.source_owners.push(SourceOwner {
                source: plan::MAIL.owner_of.to_string(),
                uid: m.uid(),
                gid: m.gid(),
                user: host_user(ctx, m.uid()),
            });
        }
    }
    st.save(state_file)
}

/// The bulk of the copying, while the relay still runs.
fn presync(ctx: &Context, st: &mut State, state_file: &Path, found: &[Found]) -> Result<()> {
    st.phase = Phase::Presync;
    st.save(state_file)?;
    for f in found {
        let t = Instant::now();
        // The plan's dry run compared the same two walks: when it found
        // nothing to do, neither would the sync.
        let stats = if f.pending.changed() {
            let bar = progress(ctx, f.pending.bytes_copied);
            let stats = copy::sync_trees(&f.tree, &f.dest_tree, false, &bar)
                .with_context(|| format!("pre-sync of {} failed", f.source.host_path))?;
            bar.finish_and_clear();
            stats
        } else {
            copy::Stats {
                unchanged: f.pending.unchanged,
                ..copy::Stats::default()
            }
        };
        // On disk before the relay stops, so the downtime does not pay
        // for flushing the bulk of the data.
        if stats.changed() {
            crate::host::flush::sync_fs(&f.dest)?;
        }
        report_sync(ctx, "Pre-synced", f, &stats, t.elapsed());
        if !st.presynced.iter().any(|p| p == f.source.dest) {
            st.presynced.push(f.source.dest.to_string());
        }
    }
    st.save(state_file)
}

/// The downtime: stop and disable the units, copy what changed since the
/// pre-sync, verify everything. When any of it fails, the old units are
/// started again: the relay serves either from the host or, verified, from
/// `data/`, never from neither.
fn switch_over(
    ctx: &Context,
    st: &mut State,
    state_file: &Path,
    found: &[Found],
    unit_states: &[UnitState],
) -> Result<()> {
    let down = Instant::now();
    let result = stop_units(ctx, st, state_file, unit_states)
        .and_then(|()| final_sync(ctx, st, state_file, found, down))
        .and_then(|()| verify_all(ctx, found));
    if let Err(e) = result {
        return Err(restore(ctx, st, state_file, e));
    }
    st.phase = Phase::Done;
    st.save(state_file)?;
    ctx.shell.out(format!(
        "Migration complete; the relay has been down for {} (incl. verification). The old \
         units stay disabled; `chatmail-docker migrate --rollback` re-enables them.",
        secs(down.elapsed())
    ));
    Ok(())
}

/// Copy what changed since the pre-sync (the units are stopped).
fn final_sync(
    ctx: &Context,
    st: &mut State,
    state_file: &Path,
    found: &[Found],
    down: Instant,
) -> Result<()> {
    let stopped_in = down.elapsed();
    let mut total = copy::Stats::default();
    for f in found {
        let t = Instant::now();
        let tree = copy::walk_source(ctx.host.root(), Path::new(f.source.host_path))?;
        let stats = copy::sync(&tree, &f.dest, false)
            .with_context(|| format!("final sync of {} failed", f.source.host_path))?;
        // Always: an interrupted earlier run may have left unflushed copies
        // that this one found complete, and "done" must mean "on disk".
        crate::host::flush::sync_fs(&f.dest)?;
        report_sync(ctx, "Synced", f, &stats, t.elapsed());
        total.add(stats);
    }
    let downtime = down.elapsed();
    st.downtime_secs = Some(downtime.as_secs_f64());
    st.save(state_file)?;
    ctx.shell.out(format!(
        "Downtime so far: {} (stopping units {}, final sync {}); {} copied in the final sync.",
        secs(downtime),
        secs(stopped_in),
        secs(downtime - stopped_in),
        plural(
            total.files_copied + total.hardlinks + total.symlinks,
            "file"
        )
    ));
    Ok(())
}

/// After a failure with the relay's units stopped: start them again (what
/// `--rollback` does) and return the error, saying so.
fn restore(ctx: &Context, st: &mut State, state_file: &Path, e: anyhow::Error) -> anyhow::Error {
    if st.stopped.is_empty() {
        return e;
    }
    ctx.shell.print_error(&e);
    ctx.shell
        .warn("the migration cannot finish: starting the old relay's units again");
    match rollback::restart(ctx, st, state_file) {
        Ok(()) => anyhow::anyhow!(
            "the migration did not finish (see above), so the old relay was started again \
             and serves mail as before; the copy in data/ is kept, and the next `migrate` \
             continues from it"
        ),
        Err(re) => anyhow::anyhow!(
            "the migration did not finish (see above), and starting the old units again \
             failed too: {re:#}. Fix that, then run `chatmail-docker migrate --rollback`"
        ),
    }
}

fn sum(it: impl Iterator<Item = Totals>) -> Totals {
    it.fold(Totals::default(), |a, b| Totals {
        files: a.files + b.files,
        dirs: a.dirs + b.dirs,
        symlinks: a.symlinks + b.symlinks,
        special: a.special + b.special,
        bytes: a.bytes + b.bytes,
        alloc: a.alloc + b.alloc,
        messages: a.messages + b.messages,
        followed: a.followed + b.followed,
    })
}

/// A progress bar on stderr for a copy of about `bytes` (hidden when stderr
/// is not a terminal or with -q). The estimate counts what an earlier run
/// already copied as done, so it can only be too high for changed files.
fn progress(ctx: &Context, bytes: u64) -> indicatif::ProgressBar {
    if !ctx.shell.progress_allowed() || bytes == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(bytes);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "  {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// A destination may be written only when absent, empty, or created by an
/// earlier run of this tool (recorded in the state file): a non-empty
/// directory from elsewhere (another host, a container that already ran)
/// could hold mail that the mirror would delete.
/// An exclusive `flock` on the deployment directory, held while the
/// returned file is open (released by the kernel however the process
/// ends); refused when another `migrate` holds it. No lock file is left.
fn one_at_a_time(ctx: &Context) -> Result<Option<std::fs::File>> {
    let dir = ctx.deployment.dir();
    let Ok(f) = std::fs::File::open(dir) else {
        // Not there yet: the plan says so, and nothing runs in it.
        return Ok(None);
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(error::Failure {
            code: error::EXIT_RUNTIME,
            message: Some(format!(
                "another `chatmail-docker migrate` runs for {}: wait for it to end (or stop it), then run this again",
                dir.display()
            )),
        }
        .into()),
        Err(e) => Err(anyhow::anyhow!("cannot lock {}: {e}", dir.display())),
    }
}

fn check_destination(dest: &Path, rel: &str, st: &State) -> Result<()> {
    if st.owns(rel) {
        return Ok(());
    }
    // Followed: data/chatmail may be a symlink to a bigger disk.
    match std::fs::metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dest.shown())),
        Ok(m) if !m.is_dir() => Err(error::usage(format!(
            "{} exists and is not a directory; move it away first",
            dest.shown()
        ))),
        Ok(_) => {
            let mut rd =
                std::fs::read_dir(dest).with_context(|| format!("cannot list {}", dest.shown()))?;
            if rd.next().is_none() {
                Ok(())
            } else {
                Err(error::usage(format!(
                    "{} is not empty and was not created by `migrate` (it may hold data from \
                     another host or a container that already ran); nothing was changed. Move it \
                     away (or empty it) and run again",
                    dest.shown()
                )))
            }
        }
    }
}

fn print_plan(
    ctx: &Context,
    opts: &Options,
    ini: &Path,
    found: &[Found],
    unit_states: &[UnitState],
    free: plan::Free,
    st: &State,
) {
    let sh = &ctx.shell;
    sh.out(format!(
        "Migration plan (host root {}):",
        ctx.host.root().shown()
    ));
    sh.out(format!(
        "  config: {} -> {}",
        ini.shown(),
        ctx.deployment.env_file().shown()
    ));
    for f in found {
        let t = &f.totals;
        let owner = match &f.owner.user {
            Some(u) => format!("{u} ({}:{})", f.owner.uid, f.owner.gid),
            None => format!("{}:{}", f.owner.uid, f.owner.gid),
        };
        let messages = if f.source.dest == plan::MAIL.dest || t.messages > 0 {
            format!("{}, ", plural(t.messages, "message"))
        } else {
            String::new()
        };
        sh.out(format!(
            "  copy: {} -> {}  ({messages}{} files, {} dirs, {} symlinks, {}; {} owned by {owner}){}",
            f.source.host_path,
            f.source.dest,
            t.files,
            t.dirs,
            t.symlinks,
            human(t.bytes),
            f.owner.source,
            if f.already.files > 0 {
                format!(
                    " [{} files already copied, {} to copy]",
                    f.already.files,
                    f.pending.files_copied + f.pending.hardlinks
                )
            } else {
                String::new()
            }
        ));
        if t.followed > 0 {
            sh.out(format!(
                "        {} in {} {}: copied as what {} to",
                plural(t.followed, "symlink"),
                f.source.host_path,
                if t.followed == 1 {
                    "leads out of it"
                } else {
                    "lead out of it"
                },
                if t.followed == 1 {
                    "it leads"
                } else {
                    "they lead"
                }
            ));
        }
        if t.special > 0 {
            sh.warn(format!(
                "{}: {} sockets/fifos/devices are not copied",
                f.source.host_path, t.special
            ));
        }
    }
    sh.out(
        "  owners: kept as numeric uid/gid and recorded in data/.migrate-state.json, so the \
         container can re-own the data if its users have other ids",
    );
    if opts.mount_vmail {
        sh.out(format!(
            "  mail: not copied; /home/vmail is bind-mounted (marker {MOUNT_VMAIL_MARKER})"
        ));
    }
    let to_copy: u64 = found.iter().map(|f| f.pending.bytes_copied).sum();
    sh.out(format!(
        "  free space at {}: {} ({})",
        ctx.deployment.data().shown(),
        human(free.bytes),
        if to_copy == 0 && found.iter().all(|f| !f.pending.changed()) {
            "nothing left to copy".to_string()
        } else {
            format!("{} to copy", human(to_copy))
        }
    ));
    sh.out("  units:");
    for u in unit_states {
        let action = if !u.exists() {
            "not installed, skipped".to_string()
        } else {
            let mut a = Vec::new();
            if u.is_active() {
                a.push("stop");
            }
            if u.is_enabled() {
                a.push("disable");
            }
            if a.is_empty() {
                "nothing to do".to_string()
            } else {
                a.join(" + ")
            }
        };
        let was = if st.stopped.iter().any(|s| s.unit == u.unit) {
            " (stopped by an earlier run)"
        } else {
            ""
        };
        sh.out(format!(
            "    {:<30} {:<10} {:<10} -> {action}{was}",
            u.unit,
            if u.exists() { u.active.as_str() } else { "-" },
            if u.exists() { u.file.as_str() } else { "-" },
        ));
    }
    let mut steps = vec!["convert the config", "pre-sync while the relay runs"];
    if !opts.presync_only {
        steps.extend(["stop + disable the units", "final sync", "verify"]);
        if opts.start {
            steps.push("start the container");
        }
    }
    sh.out(format!("  steps: {}", steps.join(", ")));
}

/// Ask before changing anything: a terminal prompt, or `--yes`.
fn confirm(ctx: &Context, opts: &Options) -> Result<()> {
    ask(
        ctx,
        opts.yes,
        "the migration",
        if opts.presync_only {
            "this copies the data now (the relay keeps running). Continue? [y/N]"
        } else {
            "this stops and disables the relay's units for the final sync. Continue? [y/N]"
        },
    )
}

/// `question` on the terminal, answered y/yes to go on; `yes` (from
/// `--yes`) answers it. Without a terminal and without `--yes`, refuse
/// (exit 2) rather than guess; `what` names what was not confirmed.
pub(crate) fn ask(ctx: &Context, yes: bool, what: &str, question: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(error::usage(format!(
            "not on a terminal: pass --yes to confirm {what} (nothing was changed)"
        )));
    }
    // A warning, not a status line: it must show even with -q.
    ctx.shell.warn(question);
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        ctx.shell.error("aborted: nothing was changed");
        Err(error::silent(error::EXIT_RUNTIME))
    }
}

/// Record, then stop and disable, every installed unit that runs or starts
/// at boot. Units stopped by an interrupted earlier run keep their first
/// record (which knows they were running).
fn stop_units(
    ctx: &Context,
    st: &mut State,
    state_file: &Path,
    unit_states: &[UnitState],
) -> Result<()> {
    let missing: Vec<&str> = unit_states
        .iter()
        .filter(|u| !u.exists())
        .map(|u| u.unit.as_str())
        .collect();
    if !missing.is_empty() {
        ctx.shell
            .note(format!("not installed, skipped: {}", missing.join(", ")));
    }
    let todo: Vec<&UnitState> = unit_states
        .iter()
        .filter(|u| u.exists() && (u.is_active() || u.is_enabled()))
        .collect();
    for u in &todo {
        if !st.stopped.iter().any(|s| s.unit == u.unit) {
            st.stopped.push(StoppedUnit {
                unit: u.unit.clone(),
                was_active: u.is_active(),
                was_enabled: u.is_enabled(),
            });
        }
    }
    st.phase = Phase::Stopped;
    st.save(state_file)?;
    let active: Vec<String> = todo
        .iter()
        .filter(|u| u.is_active())
        .map(|u| u.unit.clone())
        .collect();
    let enabled: Vec<String> = todo
        .iter()
        .filter(|u| u.is_enabled())
        .map(|u| u.unit.clone())
        .collect();
    units::systemctl(ctx, "stop", &active)
        .context("stopping the relay failed; `migrate --rollback` starts what was stopped")?;
    units::systemctl(ctx, "disable", &enabled)
        .context("disabling the relay's units failed; `migrate --rollback` undoes the stop")?;
    if todo.is_empty() {
        ctx.shell.status("Units", "nothing running or enabled");
    } else {
        ctx.shell.status(
            "Stopped",
            format!(
                "{}, disabled {}",
                plural(active.len() as u64, "unit"),
                enabled.len()
            ),
        );
    }
    Ok(())
}

fn report_sync(ctx: &Context, verb: &str, f: &Found, s: &copy::Stats, took: Duration) {
    let msg = if s.changed() {
        format!(
            "{} -> {}: {} files ({}), {} hard links, {} symlinks, {} dirs created, {} deleted, {} unchanged in {}",
            f.source.host_path,
            f.source.dest,
            s.files_copied,
            human(s.bytes_copied),
            s.hardlinks,
            s.symlinks,
            s.dirs_created,
            s.deleted,
            s.unchanged,
            secs(took)
        )
    } else {
        format!(
            "{} -> {}: nothing to copy ({} unchanged) in {}",
            f.source.host_path,
            f.source.dest,
            s.unchanged,
            secs(took)
        )
    };
    ctx.shell.status(verb, msg);
    if s.vanished > 0 {
        ctx.shell.verbose(format!(
            "{} entries vanished at the source while copying (the final sync picks up the rest)",
            s.vanished
        ));
    }
}

/// Verify every destination. A file that differs (content changed without
/// its size or mtime changing, which the quick check of a sync cannot see)
/// is copied again by content and verified once more; what still differs
/// is an error.
fn verify_all(ctx: &Context, found: &[Found]) -> Result<()> {
    let mut bad = Vec::new();
    for f in found {
        let t = Instant::now();
        let host_path = Path::new(f.source.host_path);
        let mut r = verify::verify(ctx.host.root(), host_path, &f.dest)?;
        let mut again = 0;
        if !r.ok() {
            for d in r.differences.iter().take(20) {
                ctx.shell.warn(format!("{}: {d}", f.source.dest));
            }
            again = r.differing.len();
            ctx.shell.note(format!(
                "{}: copying {} again by content",
                f.source.dest,
                plural(again as u64, "differing entry")
            ));
            recopy(ctx, f, &r.differing)?;
            r = verify::verify(ctx.host.root(), host_path, &f.dest)?;
        }
        if r.ok() {
            ctx.shell.status(
                "Verified",
                format!(
                    "{}: {} identical ({}, {} hashed){} in {}",
                    f.source.dest,
                    plural(r.entries, "entry"),
                    plural(r.files, "file"),
                    human(r.bytes_hashed),
                    if again > 0 {
                        format!(", after copying {again} again")
                    } else {
                        String::new()
                    },
                    secs(t.elapsed())
                ),
            );
        } else {
            for d in r.differences.iter().take(20) {
                ctx.shell.error(format!("{}: {d}", f.source.dest));
            }
            if r.differences.len() > 20 {
                ctx.shell
                    .error(format!("... and {} more", r.differences.len() - 20));
            }
            bad.push(format!(
                "{} ({})",
                f.source.dest,
                plural(r.differences.len() as u64, "difference")
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "verification failed for {}, also after copying the differing files again: \
             something still changes the source (a process outside the relay's units?)",
            bad.join(", ")
        )
    }
}

/// Copy the entries at `differing` (relative to the tree) again, whatever
/// their metadata says: remove them from the copy (directories stay; their
/// metadata is set again anyway) and sync.
fn recopy(ctx: &Context, f: &Found, differing: &[PathBuf]) -> Result<()> {
    for rel in differing {
        if rel.as_os_str().is_empty() {
            continue;
        }
        let p = f.dest.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(&p)
                .with_context(|| format!("cannot remove {} to copy it again", p.shown()))?,
            _ => {}
        }
    }
    let tree = copy::walk_source(ctx.host.root(), Path::new(f.source.host_path))?;
    copy::sync(&tree, &f.dest, false)
        .with_context(|| format!("copying {} again failed", f.source.host_path))?;
    crate::host::flush::sync_fs(&f.dest)
}

/// `n thing` / `n things` (`entry` -> `entries`).
fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else if let Some(stem) = what.strip_suffix('y') {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {what}s")
    }
}

/// A finished migration run again: compare without writing. Identical ->
/// say so (and start if asked); different -> refuse, because the container
/// may have received mail since, which a new mirror would delete.
fn already_done(ctx: &Context, opts: &Options, found: &[Found]) -> Result<()> {
    let mut changed = Vec::new();
    for f in found {
        let tree = copy::walk_source(ctx.host.root(), Path::new(f.source.host_path))?;
        let s = copy::sync(&tree, &f.dest, true)?;
        if s.changed() {
            changed.push(format!(
                "{} ({} files differ, {} extra entries)",
                f.source.dest,
                s.files_copied + s.hardlinks + s.symlinks,
                s.deleted
            ));
        }
    }
    if !changed.is_empty() {
        return Err(error::usage(format!(
            "this deployment was already migrated, and since then the copies changed: {}. \
             They may hold mail the container received; nothing was changed. To migrate anew, \
             move data/ away first",
            changed.join(", ")
        )));
    }
    ctx.shell
        .out("Already migrated: the copies match the host; nothing to copy.");
    if opts.start {
        crate::setup::up(ctx)?;
    }
    Ok(())
}
