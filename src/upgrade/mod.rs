//! `upgrade`: move the relay to a new release with a restore point, a
//! measured swap and an automatic rollback.
//!
//! 1. Plan: fetch the relay's remote, pick the target (`--ref`, default
//!    the newest release tag), show old and new commit and version, the
//!    number of commits and how the `[params]` keys change. `--dry-run`
//!    and `--check` stop here.
//! 2. Restore point: the running image gets a second name,
//!    `<image>-relay-<commit>`; `data/.upgrade-state.json` records it with
//!    the checkout's old position.
//! 3. Build: `relay/` moves to the target and the image is built while the
//!    old container keeps serving. A failed or interrupted build puts the
//!    checkout and the image name back; the relay never noticed.
//! 4. Backup (unless `--no-backup`): `backup` into `backups/`, incremental
//!    against the previous upgrade's, two chains kept.
//! 5. Swap: the container is recreated on the new image, then the health
//!    check must pass and SMTP (25), IMAP (993) and HTTPS (443) must
//!    answer. Otherwise: rollback to the restore point (image, checkout,
//!    container), and the new container's last log lines are shown. From
//!    here on a Ctrl-C or SIGTERM does not stop anything half way: the
//!    swap (or the rollback) finishes, then the command exits 130.
//! 6. Prune: images of earlier upgrades go; the running one and the one
//!    before it stay.
//!
//! `upgrade --rollback` goes back to the restore point by hand later.

pub mod git;
pub mod params;
pub mod probe;

pub mod state;

use anyhow::{Context as _, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::engine::beside;
use crate::engine::build::BuildOptions;
pub use crate::engine::image::Release;
use crate::engine::image::{image_release, image_size, restore_tag, tag_image};
use crate::engine::{self, image_id, Project, SERVICE};
use crate::shell::Shown;
use crate::{backup, context::Context, error, overrides};
use git::{short, Checkout};
use state::{Phase, RestorePoint, UpgradeState};

/// Default relay source directory, relative to the deployment directory.
/// Where upgrades keep their backups, relative to the deployment directory.
pub const BACKUP_DIR: &str = "backups";
/// Backup chains an upgrade keeps in its backup directory.
const BACKUP_KEEP: usize = 2;
/// How long the services may take to answer after the health check passed.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// Disk space the build needs beyond the size of the running image.
const BUILD_HEADROOM: u64 = 1 << 30;

/// What `upgrade` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The tag, branch or commit to move to; `None`: the newest release.
    pub reference: Option<String>,
    /// Fetch from the relay's remote first.
    pub fetch: bool,
    /// Go ahead although `relay/` has local edits.
    pub allow_dirty: bool,
    /// Take a backup just before the swap.
    pub backup: bool,
    /// Deploy the new release in a side container first, so the swap is
    /// a restart (the running release is deployed so in any case, for a
    /// quick rollback).
    pub deploy_beside: bool,
    /// Where that backup goes (default: `backups/` in the deployment).
    pub backup_dir: Option<PathBuf>,
    /// How long the new container may take to become healthy.
    pub wait_timeout: Duration,
    /// How to build the image.
    pub build: BuildOptions,
    /// Print a JSON summary at the end.
    pub json: bool,
}

/// What an upgrade would do.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub from: Release,
    pub to: Release,
    /// Commits in the target that the current checkout lacks.
    pub commits: Option<u64>,
    /// The target is older than (contained in) what runs.
    pub downgrade: bool,
    pub params: params::Diff,
    /// `relay/` is already at the target.
    pub up_to_date: bool,
}

/// What a finished upgrade (or rollback) reports.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Summary {
    pub from: Option<Release>,
    pub to: Option<Release>,
    pub outcome: String,
    pub build_seconds: Option<f64>,
    /// The new release's deploy in a side container, while the relay served.
    pub deploy_aside_seconds: Option<f64>,
    pub image_size_change_bytes: Option<i64>,
    pub backup: Option<PathBuf>,
    /// Seconds during which port 25 or 993 did not accept.
    pub downtime_seconds: Option<f64>,
    /// From the failed verdict to the old release serving again.
    pub rollback_seconds: Option<f64>,
    pub reason: Option<String>,
}

// ---------------------------------------------------------------- facts

/// The deployment's relay checkout directory (RELAY_SRC in .env).
fn relay_dir(ctx: &Context) -> Result<PathBuf> {
    Ok(ctx.settings()?.relay_src.clone())
}

/// The image name the compose file gives the service.
pub fn image_name(ctx: &Context) -> Result<String> {
    engine::image_names(ctx)?
        .into_iter()
        .next()
        .context("docker compose names no image for the appliance")
}

/// The keys chatmail.ini sets in `[params]` (empty without one).
fn ini_keys(ctx: &Context) -> Vec<String> {
    let path = ctx.deployment.ini();
    let Ok(text) = crate::deployment::read_ini(&path) else {
        return Vec::new();
    };
    crate::formats::ini::parse_str(&text)
        .ok()
        .and_then(|ini| {
            ini.section("params")
                .map(|s| s.entries.iter().map(|e| e.key.to_string()).collect())
        })
        .unwrap_or_default()
}

/// The mail domain, for the TLS probes' server name (`localhost` when
/// `.env` has none: the probes then only check that the ports answer).
fn mail_domain(ctx: &Context) -> String {
    ctx.settings()
        .ok()
        .and_then(|s| s.mail_domain.clone())
        .unwrap_or_else(|| "localhost".into())
}

// ---------------------------------------------------------------- plan

/// Fetch (when asked) and work out the plan. The checkout does not move.
pub fn plan(
    ctx: &Context,
    checkout: &Checkout,
    reference: Option<&str>,
    fetch: bool,
) -> Result<Plan> {
    let here = checkout.position()?;
    let remote = checkout.remote().ok();
    if fetch {
        let remote = checkout.remote()?;
        ctx.shell.status(
            "Fetching",
            format!("the relay's releases from {}", checkout.remote_url(&remote)),
        );
        checkout.fetch(&remote)?;
    }
    let target = match reference {
        Some(r) => {
            let commit = checkout.resolve(r, remote.as_deref())?;
            let missing = checkout.missing_relay_code(&commit)?;
            if !missing.is_empty() {
                return Err(error::usage(format!(
                    "--ref {}: its commit {} lacks the relay's code ({}), so no image can be built from it; name a release or a commit of the relay (https://github.com/chatmail/relay)",
                    r.shown(),
                    short(&commit),
                    missing.join(", ")
                )));
            }
            commit
        }
        None => {
            let newest = checkout.newest_usable_release()?;
            for (tag, why) in &newest.skipped {
                ctx.shell.note(format!(
                    "the tag {} is no release of the relay, passed over: {why}",
                    tag.shown()
                ));
            }
            let Some((_, commit)) = newest.release else {
                return Err(error::usage(format!(
                    "{} has no release tags (such as 1.12.0){}{}; name what to move to with --ref (a tag, `main` or a commit)",
                    checkout.dir.display(),
                    if newest.skipped.is_empty() {
                        ""
                    } else {
                        " on a commit with the relay's code"
                    },
                    if fetch { "" } else { " and --no-fetch did not look for new ones" }
                )));
            };
            commit
        }
    };
    let contained = target != here.commit && checkout.is_ancestor(&target, &here.commit)?;
    // Without --ref: the newest release is no upgrade when the checkout
    // already contains it (a clone of main past the last release).
    let up_to_date = target == here.commit || (reference.is_none() && contained);
    let old_keys = checkout
        .show(&here.commit, params::CONFIG_PY)
        .map(|s| params::keys_of_config_py(&s))
        .unwrap_or_default();
    let new_keys = checkout
        .show(&target, params::CONFIG_PY)
        .map(|s| params::keys_of_config_py(&s))
        .unwrap_or_default();
    Ok(Plan {
        from: Release {
            version: checkout.describe(&here.commit),
            commit: here.commit.clone(),
        },
        to: Release {
            version: checkout.describe(&target),
            commit: target.clone(),
        },
        commits: checkout.count_between(&here.commit, &target),
        downgrade: contained,
        params: params::diff(&old_keys, &new_keys, &ini_keys(ctx)),
        up_to_date,
    })
}

/// A line of the command's report: stdout, or stderr when stdout holds
/// the JSON result.
fn say(ctx: &Context, json: bool, text: impl AsRef<str>) {
    if json {
        ctx.shell.info(text);
    } else {
        ctx.shell.out(text);
    }
}

fn print_plan(ctx: &Context, p: &Plan, json: bool) {
    let sh = &ctx.shell;
    let out = |t: String| say(ctx, json, t);
    out(format!(
        "relay: {} ({}) -> {} ({})",
        p.from.version,
        short(&p.from.commit),
        p.to.version,
        short(&p.to.commit)
    ));
    if let Some(n) = p.commits {
        out(format!(
            "  {n} new commit{}{}",
            if n == 1 { "" } else { "s" },
            if p.downgrade {
                " (the target is older than the checkout: a downgrade)"
            } else {
                ""
            }
        ));
    }
    if p.params.is_empty() {
        out("  [params]: the same keys".to_string());
    }
    for (k, d) in &p.params.added {
        out(format!(
            "  [params] new key {k} (default {})",
            d.as_deref().unwrap_or("none: required")
        ));
    }
    for k in &p.params.dropped_but_set {
        sh.warn(format!(
            "the new release no longer reads `{k}`, which chatmail.ini sets: it will be ignored"
        ));
    }
    for k in &p.params.dropped {
        out(format!(
            "  [params] key {k} is gone (chatmail.ini does not set it)"
        ));
    }
}

// ---------------------------------------------------------------- check

/// `upgrade --check`: `Ok(true)` when an upgrade is available.
pub fn check(ctx: &Context, reference: Option<&str>, fetch: bool, json: bool) -> Result<bool> {
    engine::require_compose_file(ctx)?;
    let checkout = Checkout::open(ctx, &relay_dir(ctx)?)?;
    let p = plan(ctx, &checkout, reference, fetch)?;
    if json {
        ctx.shell.data(serde_json::to_string_pretty(&p)?);
    } else if p.up_to_date {
        ctx.shell.out(format!(
            "up to date: the relay is at {} ({}){}",
            p.from.version,
            short(&p.from.commit),
            if p.to.commit != p.from.commit {
                format!(", which contains {}", p.to.version)
            } else {
                String::new()
            }
        ));
    } else {
        ctx.shell.out("an upgrade is available:");
        print_plan(ctx, &p, false);
        ctx.shell.out("run `chatmail-docker upgrade` to apply it");
    }
    Ok(!p.up_to_date)
}

// ---------------------------------------------------------------- upgrade

/// Put things back after a step before the swap failed: the checkout,
/// the image name (on the image the relay runs), the state file. The
/// container was never touched.
fn undo_before_swap(
    ctx: &Context,
    checkout: &Checkout,
    point: &RestorePoint,
    image: &str,
    prior: Option<&UpgradeState>,
) {
    if let Err(e) = checkout.restore(&point.position) {
        ctx.shell.error(format!(
            "could not move {} back to {}: {e:#}",
            checkout.dir.display(),
            short(&point.position.commit)
        ));
    }
    if let Some(id) = point.image_id.as_deref().or(point.image_tag.as_deref()) {
        if let Err(e) = tag_image(ctx, id, image) {
            ctx.shell.error(format!("{e:#}"));
        }
    }
    state::put_back(ctx, prior);
}

fn interrupted_error(message: String) -> anyhow::Error {
    crate::host::interrupt::interrupted(message)
}

/// Disk space for the build: the running image's size plus a margin.
fn check_disk(ctx: &Context, image: &str) -> Result<()> {
    let Ok(root) = engine::data_root(ctx) else {
        return Ok(());
    };
    let Ok(st) = rustix::fs::statvfs(&root) else {
        return Ok(());
    };
    let root = root.display().to_string();
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let need = image_size(ctx, image).unwrap_or(0).max(0) as u64 + BUILD_HEADROOM;
    disk_verdict(&root, free, need)
}

/// The disk check's verdict (separate for tests).
pub fn disk_verdict(root: &str, free: u64, need: u64) -> Result<()> {
    if free < need {
        return Err(error::Failure {
            code: error::EXIT_RUNTIME,
            message: Some(format!(
                "not enough disk space to build the new image beside the running one: {root} has {} free, the build needs about {}; free some (`docker image prune`, `docker builder prune`) and try again; nothing was changed",
                human(free),
                human(need)
            )),
        }
        .into());
    }
    Ok(())
}

fn human(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `chatmail-docker upgrade`.
pub fn run(ctx: &Context, opts: &Options) -> Result<Summary> {
    engine::require_compose_file(ctx)?;
    engine::ensure_ours(ctx)?;
    // From here on a signal is counted, not fatal: each step decides.
    let signals_at_start = crate::host::interrupt::count();
    let interrupted = || crate::host::interrupt::since(signals_at_start);
    let prior = state::load(ctx)?;
    let relay = relay_dir(ctx)?;
    let checkout = Checkout::open(ctx, &relay)?;
    let edits = checkout.local_edits()?;
    if !edits.is_empty() && !opts.allow_dirty {
        return Err(local_edits_error(
            &relay,
            &edits,
            "which an upgrade would build into the new image or lose",
            "or pass --allow-dirty to keep them",
        ));
    }
    // The build's CA certificates are read again for the build; a bad
    // path is found now, before anything changes.
    if let Some(ca) = &opts.build.ca {
        crate::engine::build::collect_certificates(ca, opts.build.ca_name())?;
    }
    let image = image_name(ctx)?;
    if let Some(s) = &prior {
        state::validate(ctx, s, &image, &checkout)?;
        if s.phase != Phase::Done && s.phase != Phase::RolledBack {
            ctx.shell.warn(format!(
                "an earlier upgrade stopped while {} (to {}); the relay is checked below",
                s.phase.doing(),
                s.target.as_ref().map_or("?", |t| t.version.as_str())
            ));
        }
    }
    let p = plan(ctx, &checkout, opts.reference.as_deref(), opts.fetch)?;
    let mut summary = Summary {
        from: Some(p.from.clone()),
        to: Some(p.to.clone()),
        ..Default::default()
    };
    if p.up_to_date {
        ctx.shell.status(
            "Fresh",
            format!(
                "the relay is at {} ({}), nothing to upgrade",
                p.from.version,
                short(&p.from.commit)
            ),
        );
        summary.outcome = "up-to-date".into();
        return Ok(summary);
    }
    print_plan(ctx, &p, opts.json);
    let running = engine::current(ctx)?;
    let backup_dir = opts
        .backup_dir
        .clone()
        .unwrap_or_else(|| ctx.deployment.path(BACKUP_DIR));
    if ctx.dry_run {
        let say = |t: String| say(ctx, opts.json, t);
        say(format!(
            "would tag the running image as {} (the restore point)",
            restore_tag(&image, &p.from.commit)
        ));
        say(format!(
            "would move {} to {} and build {image} while the relay keeps serving",
            relay.display(),
            short(&p.to.commit)
        ));
        if opts.deploy_beside {
            say("would deploy the new release in a side container without network (copies of the keys, no mail) and keep the result as the image".into());
        }
        if opts.backup {
            say(format!("would back up into {}/", backup_dir.display()));
        }
        say(format!(
            "would recreate the container on the new image and wait up to {}s for health and for SMTP, IMAP and HTTPS to answer; otherwise roll back",
            opts.wait_timeout.as_secs()
        ));
        ctx.dry_run_done();
        summary.outcome = "planned".into();
        return Ok(summary);
    }
    check_disk(ctx, &image)?;
    let acme = matches!(
        ctx.settings()?.tls,
        Some(crate::deployment::relay::TlsMode::Acme)
    );

    // 2. Restore point: the running image, deployed beside the relay when
    // it is not yet (with --no-stage too: that is about the new release),
    // so a rollback is a restart.
    let old_position = checkout.position()?;
    let old_image_id = match &running {
        Some(c) => Some(c.image.clone()),
        None => image_id(ctx, &image)?,
    };
    let old_release = old_image_id
        .as_deref()
        .and_then(|id| image_release(ctx, id))
        .unwrap_or_else(|| p.from.clone());
    let mut restore_id = old_image_id.clone();
    if let Some(id) = old_image_id.as_deref() {
        ctx.shell.status(
            "Checking",
            format!(
                "that the running release {} is deployed for these settings, so that a rollback is quick",
                old_release.version
            ),
        );
        match beside::deployed(ctx, id, opts.wait_timeout, &interrupted) {
            Ok(d) => restore_id = Some(d.id),
            Err(e) if error::exit_code(&e) == error::EXIT_INTERRUPTED => {
                return Err(interrupted_error(
                    "interrupted before the build; nothing was changed".into(),
                ))
            }
            Err(e) => ctx.shell.warn(format!(
                "could not deploy the running release beside the relay ({e:#}); a rollback would deploy it again"
            )),
        }
    }
    let point = RestorePoint {
        position: old_position.clone(),
        release: old_release.clone(),
        image_tag: match &restore_id {
            Some(id) => {
                let tag = restore_tag(&image, &old_release.commit);
                tag_image(ctx, id, &tag)?;
                ctx.shell.status(
                    "Tagged",
                    format!("the running release as {tag} (restore point)"),
                );
                Some(tag)
            }
            None => None,
        },
        image_id: old_image_id.clone(),
    };
    let mut st = UpgradeState {
        phase: Phase::Building,
        image: image.clone(),
        previous: Some(point.clone()),
        target: Some(p.to.clone()),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    state::save(ctx, &st)?;
    let undo = || undo_before_swap(ctx, &checkout, &point, &image, prior.as_ref());

    // 3. Build beside the running relay.
    if let Err(e) = checkout.checkout(&p.to.commit) {
        undo();
        return Err(e.context(format!(
            "could not move {} to {}; nothing was changed",
            relay.display(),
            short(&p.to.commit)
        )));
    }
    let built = Instant::now();
    let result = build_image(ctx, &relay, &opts.build, opts.json);
    if result.is_err() || interrupted() {
        undo();
        if interrupted() {
            return Err(interrupted_error(format!(
                "interrupted during the build; {} is back at {} and the relay was never touched",
                relay.display(),
                p.from.version
            )));
        }
        let e = result.unwrap_err();
        return Err(e.context(format!(
            "the new image did not build; {} is back at {} and the relay kept serving on the old image",
            relay.display(),
            p.from.version
        )));
    }
    summary.build_seconds = Some(built.elapsed().as_secs_f64());
    let built_id = image_id(ctx, &image)?.context("the build left no image")?;
    if let (Some(old), Some(new)) = (
        old_image_id.as_deref().and_then(|i| image_size(ctx, i)),
        image_size(ctx, &built_id),
    ) {
        summary.image_size_change_bytes = Some(new - old);
        ctx.shell.status(
            "Built",
            format!(
                "{image} for {} in {:.0}s ({:+.1} MB against the running image)",
                p.to.version,
                built.elapsed().as_secs_f64(),
                (new - old) as f64 / 1e6
            ),
        );
    }

    // 4. The new release deployed beside the relay.
    let mut new_id = built_id.clone();
    if opts.deploy_beside {
        ctx.shell.status(
            "Deploying",
            format!(
                "{} beside the relay (no network, copies of the keys, no mail)",
                p.to.version
            ),
        );
        let aside = Instant::now();
        let instead = format!(
            "the swap deploys {} in the new container (a longer interruption; a failure there rolls back)",
            p.to.version
        );
        let policy = beside::Policy {
            serving: true,
            acme,
            instead: &instead,
        };
        match beside::deploy(
            ctx,
            &built_id,
            &image,
            opts.wait_timeout,
            &interrupted,
            beside::Network::None,
            policy,
        ) {
            Ok(Some(d)) => {
                new_id = d.id;
                summary.deploy_aside_seconds = Some(aside.elapsed().as_secs_f64());
            }
            Ok(None) => {}
            Err(e) if error::exit_code(&e) == error::EXIT_INTERRUPTED => {
                undo();
                return Err(interrupted_error(format!(
                    "interrupted while deploying {} beside the relay; {} is back at {} and the relay was never touched",
                    p.to.version,
                    relay.display(),
                    p.from.version
                )));
            }
            Err(e) => {
                undo();
                if Some(&built_id) != old_image_id.as_ref()
                    && Some(&built_id) != restore_id.as_ref()
                {
                    let _ = engine::image::remove(ctx, &built_id);
                }
                return Err(e.context(format!(
                    "{} failed to deploy beside the relay; nothing was swapped: the relay kept serving {} and {} is back at it (--no-stage swaps without this check)",
                    p.to.version,
                    p.from.version,
                    relay.display()
                )));
            }
        }
    }

    // 5. Backup.
    if opts.backup {
        match take_backup(ctx, &backup_dir) {
            Ok(path) => summary.backup = path,
            Err(e) => {
                undo();
                return Err(e.context(
                    "the backup before the swap failed; the relay kept serving on the old image (--no-backup skips the backup)",
                ));
            }
        }
        if interrupted() {
            undo();
            return Err(interrupted_error(
                "interrupted before the swap; the relay was never touched".into(),
            ));
        }
    }

    // 6. Swap: nothing interrupts it any more.
    st.phase = Phase::Swapping;
    state::save(ctx, &st)?;
    let sni = mail_domain(ctx);
    ctx.shell.status(
        "Swapping",
        format!(
            "the container to {} (a Ctrl-C now waits for the swap or the rollback to finish)",
            p.to.version
        ),
    );
    let watch = probe::Downtime::watch();
    match swap(ctx, opts.wait_timeout, &sni, opts.json) {
        Ok(()) => {
            let window = watch.finish();
            summary.downtime_seconds = window.seconds;
            st.phase = Phase::Done;
            state::save(ctx, &st)?;
            state::record_last(
                ctx,
                false,
                state::LastRun::now(Some(old_release.clone()), Some(p.to.clone())),
            );
            crate::engine::image::prune_restore_points(
                ctx,
                &image,
                &new_id,
                point.image_tag.as_deref(),
            );
            ctx.shell.status(
                "Upgraded",
                format!(
                    "the relay runs {} ({}); mail service was interrupted for {}",
                    p.to.version,
                    short(&p.to.commit),
                    window
                        .seconds
                        .map_or("no measurable time".into(), |s| format!("{s:.1}s"))
                ),
            );
            if let Some(tag) = &point.image_tag {
                ctx.shell.note(format!(
                    "the previous release stays as {tag}: `chatmail-docker upgrade --rollback` goes back to it"
                ));
            }
            summary.outcome = "upgraded".into();
            if interrupted() {
                return Err(interrupted_error(format!(
                    "interrupted: the swap was finished first; the relay runs {}",
                    p.to.version
                )));
            }
            Ok(summary)
        }
        Err(reason) => {
            let logs = engine::last_logs(ctx, 40);
            let failed_at = Instant::now();
            ctx.shell.error(format!(
                "the new release failed: {reason:#}; rolling back to {}",
                old_release.version
            ));
            let back = roll_back(
                ctx,
                &checkout,
                &point,
                &image,
                opts.wait_timeout,
                &sni,
                opts.json,
            );
            let window = watch.finish();
            summary.downtime_seconds = window.seconds;
            summary.reason = Some(format!("{reason:#}"));
            if !logs.trim().is_empty() {
                ctx.shell
                    .error("last log lines of the new release's container:");
                for l in logs.lines() {
                    say(ctx, opts.json, format!("  | {l}"));
                }
            }
            match back {
                Ok(()) => {
                    summary.rollback_seconds = Some(failed_at.elapsed().as_secs_f64());
                    summary.outcome = "rolled-back".into();
                    // The restore point of the last good upgrade stays
                    // what `--rollback` goes back to.
                    state::put_back(ctx, prior.as_ref());
                    let mut run =
                        state::LastRun::now(Some(p.to.clone()), Some(old_release.clone()));
                    run.automatic = true;
                    run.reason = summary.reason.clone();
                    state::record_last(ctx, true, run);
                    // The failed release's image is of no further use.
                    for id in [&new_id, &built_id].into_iter().filter(|id| {
                        Some(*id) != old_image_id.as_ref() && Some(*id) != restore_id.as_ref()
                    }) {
                        let _ = engine::image::remove(ctx, id);
                    }
                    if opts.json {
                        ctx.shell.data(serde_json::to_string_pretty(&summary)?);
                    }
                    Err(error::Failure {
                        code: if interrupted() {
                            error::EXIT_INTERRUPTED
                        } else {
                            error::EXIT_RUNTIME
                        },
                        message: Some(format!(
                            "upgrade to {} failed ({reason:#}); rolled back by itself in {:.1}s: the relay runs {} again",
                            p.to.version,
                            failed_at.elapsed().as_secs_f64(),
                            old_release.version
                        )),
                    }
                    .into())
                }
                Err(e) => Err(error::Failure {
                    code: error::EXIT_RUNTIME,
                    message: Some(format!(
                        "upgrade to {} failed ({reason:#}) and so did the rollback: {e:#}\nthe relay may be down: see `chatmail-docker status` and `chatmail-docker logs`; the previous image is {}",
                        p.to.version,
                        point.image_tag.as_deref().unwrap_or("gone")
                    )),
                }
                .into()),
            }
        }
    }
}

/// `docker compose build` of the service with this checkout's inputs.
fn build_image(ctx: &Context, relay: &Path, build: &BuildOptions, json: bool) -> Result<()> {
    let inputs = crate::engine::build::prepare(ctx, relay, build)?;
    let mut cmd = Project::new(ctx)
        .cmd(ctx, ["build", SERVICE])
        .output_to_stderr(json);
    for (k, v) in &inputs.env {
        cmd = cmd.env(k, v);
    }
    ctx.shell.status(
        "Building",
        "the new image while the relay keeps serving (a Ctrl-C now stops the build and changes nothing)",
    );
    engine::run_checked(ctx, &cmd)
}

/// The backup before the swap: incremental against the last one in `dir`.
fn take_backup(ctx: &Context, dir: &Path) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the backup directory {}", dir.display()))?;
    ctx.shell
        .status("Backing up", format!("the relay into {}/", dir.display()));
    let s = backup::run(
        ctx,
        &backup::BackupOptions {
            output: backup::Output::Dir(dir.to_path_buf()),
            keep: Some(BACKUP_KEEP),
            origin: backup::Origin::Upgrade,
            ..Default::default()
        },
    )?;
    Ok(s.archive)
}

/// Recreate the container on the image the service names now, then wait
/// for health and for the services to answer.
fn swap(ctx: &Context, timeout: Duration, sni: &str, json: bool) -> Result<()> {
    overrides::refresh_generated(ctx)?;
    let cmd = engine::up_cmd(ctx, &[], false).output_to_stderr(json);
    engine::run_shielded(ctx, &cmd)?;
    engine::wait_for_health(ctx, timeout, false)?;
    probe::wait_answering(sni, ANSWER_LIMIT)
        .map_err(|bad| anyhow::anyhow!("healthy, but not answering: {}", bad.join("; ")))
}

/// Back to the restore point: image name, checkout, container.
fn roll_back(
    ctx: &Context,
    checkout: &Checkout,
    point: &RestorePoint,
    image: &str,
    timeout: Duration,
    sni: &str,
    json: bool,
) -> Result<()> {
    let tag = point
        .image_tag
        .as_deref()
        .context("there was no previous image to go back to")?;
    tag_image(ctx, tag, image)?;
    checkout.restore(&point.position)?;
    swap(ctx, timeout, sni, json)
}

/// `upgrade --rollback`: back to the release before the last upgrade.
///
/// Everything it needs is checked before anything changes: the state file
/// ([`state::validate`]), the restore point's image, the checkout (no
/// local edits, the commit to go back to is in it). Then the checkout
/// moves, the image name moves and the container is recreated; a step
/// that fails before the container is touched puts back what the steps
/// before it changed ([`undo_rollback`]).
pub fn rollback(ctx: &Context, wait_timeout: Duration, json: bool) -> Result<Summary> {
    engine::require_compose_file(ctx)?;
    engine::ensure_ours(ctx)?;
    let signals_at_start = crate::host::interrupt::count();
    let st = state::load(ctx)?.ok_or_else(|| {
        error::usage("there is no upgrade to roll back (data/.upgrade-state.json is missing)")
    })?;
    let relay = relay_dir(ctx)?;
    let checkout = Checkout::open(ctx, &relay)?;
    let image = image_name(ctx)?;
    state::validate(ctx, &st, &image, &checkout)?;
    let point = st
        .previous
        .clone()
        .context("the last upgrade recorded no previous release")?;
    let tag = point.image_tag.clone().ok_or_else(|| {
        error::usage("the last upgrade started without a previous image; nothing to go back to")
    })?;
    let Some(back_id) = image_id(ctx, &tag)? else {
        return Err(error::usage(format!(
            "the previous release's image {tag} is gone (removed by hand?); `chatmail-docker setup --rebuild` after checking out the release you want in relay/ builds it again"
        )));
    };
    let edits = checkout.local_edits()?;
    if !edits.is_empty() {
        return Err(local_edits_error(
            &relay,
            &edits,
            &format!(
                "which moving it back to {} would carry along or lose",
                short(&point.position.commit)
            ),
            "then roll back",
        ));
    }
    let running = engine::current(ctx)?;
    let current_id = match &running {
        Some(c) => Some(c.image.clone()),
        None => image_id(ctx, &image)?,
    };
    if current_id.as_deref() == Some(back_id.as_str()) {
        return Err(error::usage(format!(
            "the relay already runs the release before the last upgrade ({}); nothing to roll back",
            point.release.version
        )));
    }
    let here = checkout.position()?;
    let current = current_id
        .as_deref()
        .and_then(|id| image_release(ctx, id))
        .unwrap_or(Release {
            version: checkout.describe(&here.commit),
            commit: here.commit.clone(),
        });
    say(
        ctx,
        json,
        format!(
            "roll back: {} ({}) -> {} ({})",
            current.version,
            short(&current.commit),
            point.release.version,
            short(&point.release.commit)
        ),
    );
    if ctx.dry_run {
        say(
            ctx,
            json,
            format!(
            "would tag {tag} as {image}, move {} to {}, recreate the container and wait for health",
            relay.display(),
            short(&point.position.commit)
        ),
        );
        ctx.dry_run_done();
        return Ok(Summary {
            outcome: "planned".into(),
            ..Default::default()
        });
    }

    // Everything is checked; changes from here on. The release rolled
    // back from becomes the restore point: a second --rollback goes
    // forward again.
    let forward_tag = current_id
        .as_ref()
        .map(|_| restore_tag(&image, &current.commit));
    let before = Before {
        position: here.clone(),
        image_id: image_id(ctx, &image)?,
        added_tag: match &forward_tag {
            Some(t) if image_id(ctx, t)?.is_none() => Some(t.clone()),
            _ => None,
        },
        state: st.clone(),
    };
    let undo = |e: anyhow::Error, what: &str| {
        undo_rollback(ctx, &checkout, &image, &before);
        e.context(format!("{what}; nothing was changed, the relay runs on"))
    };
    if let (Some(id), Some(t)) = (&current_id, &forward_tag) {
        tag_image(ctx, id, t)
            .map_err(|e| undo(e, "could not keep the running release as a restore point"))?;
    }
    let mut next = UpgradeState {
        phase: Phase::Swapping,
        image: image.clone(),
        previous: Some(RestorePoint {
            position: here,
            release: current.clone(),
            image_id: current_id.clone(),
            image_tag: forward_tag,
        }),
        target: Some(point.release.clone()),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    state::save(ctx, &next).map_err(|e| undo(e, "could not record the rollback"))?;
    checkout.restore(&point.position).map_err(|e| {
        undo(
            e,
            &format!(
                "could not move {} back to {}",
                relay.display(),
                short(&point.position.commit)
            ),
        )
    })?;
    tag_image(ctx, &tag, &image)
        .map_err(|e| undo(e, "could not name the previous release's image"))?;
    ctx.shell.status(
        "Swapping",
        format!(
            "the container back to {} (a Ctrl-C now waits for the swap to finish)",
            point.release.version
        ),
    );
    let watch = probe::Downtime::watch();
    let started = Instant::now();
    let sni = mail_domain(ctx);
    let result = swap(ctx, wait_timeout, &sni, json);
    let window = watch.finish();
    result.context("the rollback did not come up healthy; see `chatmail-docker logs`")?;
    next.phase = Phase::Done;
    state::save(ctx, &next)?;
    state::record_last(
        ctx,
        true,
        state::LastRun::now(Some(current.clone()), Some(point.release.clone())),
    );
    ctx.shell.status(
        "Rolled back",
        format!(
            "the relay runs {} again after {:.1}s; mail service was interrupted for {}",
            point.release.version,
            started.elapsed().as_secs_f64(),
            window
                .seconds
                .map_or("no measurable time".into(), |s| format!("{s:.1}s"))
        ),
    );
    let summary = Summary {
        from: Some(current),
        to: Some(point.release),
        outcome: "rolled-back".into(),
        downtime_seconds: window.seconds,
        rollback_seconds: Some(started.elapsed().as_secs_f64()),
        ..Default::default()
    };
    if crate::host::interrupt::since(signals_at_start) {
        return Err(crate::host::interrupt::interrupted(
            "interrupted: the rollback was finished first",
        ));
    }
    Ok(summary)
}

/// What a rollback found before it changed anything.
struct Before {
    /// Where the checkout stood.
    position: git::Position,
    /// The image the service's name pointed at.
    image_id: Option<String>,
    /// The restore-point name the rollback adds (none when it existed).
    added_tag: Option<String>,
    /// The state file as it was.
    state: UpgradeState,
}

/// Put back what a rollback changed before the container was touched:
/// the checkout, the image name, the restore-point name it added, the
/// state file. Each step is done whether or not the rollback got to it
/// (doing it again changes nothing).
fn undo_rollback(ctx: &Context, checkout: &Checkout, image: &str, before: &Before) {
    if let Err(e) = checkout.restore(&before.position) {
        ctx.shell.error(format!(
            "could not move {} back to {}: {e:#}",
            checkout.dir.display(),
            short(&before.position.commit)
        ));
    }
    if let Some(id) = &before.image_id {
        if let Err(e) = tag_image(ctx, id, image) {
            ctx.shell.error(format!("{e:#}"));
        }
    }
    if let Some(t) = &before.added_tag {
        let _ = engine::image::remove(ctx, t);
    }
    state::put_back(ctx, Some(&before.state));
}

/// The refusal of a checkout with local edits: they are listed (ten at
/// most), with what they would come to and how to keep them.
fn local_edits_error(relay: &Path, edits: &[String], fate: &str, then: &str) -> anyhow::Error {
    let shown: Vec<String> = edits.iter().take(10).map(|e| e.shown()).collect();
    error::usage(format!(
        "{} has local changes, {fate}:\n  {}{}\ncommit or stash them (`git -C {} stash`), {then}",
        relay.display(),
        shown.join("\n  "),
        if edits.len() > 10 {
            format!("\n  ... and {} more", edits.len() - 10)
        } else {
            String::new()
        },
        relay.display()
    ))
}

/// What `status` shows about the relay release: what runs, and a newer
/// release tag known locally (no fetch).
#[derive(Clone, Debug, Serialize, Default)]
pub struct ReleaseStatus {
    pub running: Option<Release>,
    pub newer: Option<String>,
}

pub fn release_status(ctx: &Context, image_id: &str) -> ReleaseStatus {
    let running = image_release(ctx, image_id);
    let newer = running.as_ref().and_then(|r| {
        let dir = relay_dir(ctx).ok()?;
        let checkout = Checkout::open(ctx, &dir).ok()?;
        let (newest, commit) = checkout.newest_usable_release().ok()?.release?;
        (!checkout.is_ancestor(&commit, &r.commit).unwrap_or(true)).then_some(newest.tag)
    });
    ReleaseStatus { running, newer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_refused_before_anything_changes() {
        let e = disk_verdict("/var/lib/docker", 200 << 20, 3 << 30).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("/var/lib/docker")
                && m.contains("0.2 GiB")
                && m.contains("nothing was changed"),
            "{m}"
        );
        assert!(disk_verdict("/var/lib/docker", 4 << 30, 3 << 30).is_ok());
    }
}
