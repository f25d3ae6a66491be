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

mod back;
mod forward;
pub mod git;
pub mod params;
pub mod probe;
pub mod state;

pub use back::rollback;
pub use forward::run;

use crate::host::space::human_bytes;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine;
use crate::engine::build::BuildOptions;
pub use crate::engine::image::Release;
use crate::engine::image::{image_release, image_size};
use crate::shell::Shown;
use crate::{context::Context, error, overrides};
use git::{short, Checkout};

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

/// Disk space for the build: the running image's size plus a margin.
fn check_disk(ctx: &Context, image: &str) -> Result<()> {
    let Ok((root, free)) = engine::data_root_free(ctx) else {
        return Ok(());
    };
    disk_verdict(&root.display().to_string(), free, build_need(ctx, image))
}

/// What a build beside the running image needs on Docker's data root.
fn build_need(ctx: &Context, image: &str) -> u64 {
    image_size(ctx, image).unwrap_or(0).max(0) as u64 + BUILD_HEADROOM
}

/// The disk check's verdict (separate for tests).
pub fn disk_verdict(root: &str, free: u64, need: u64) -> Result<()> {
    if free < need {
        return Err(error::Failure {
            code: error::EXIT_RUNTIME,
            message: Some(format!(
                "not enough disk space to build the new image beside the running one: {root} has {} free, the build needs about {}; free some (`docker image prune`, `docker builder prune`), then run `chatmail-docker upgrade` again; nothing was changed",
                human_bytes(free),
                human_bytes(need)
            )),
        }
        .into());
    }
    Ok(())
}

/// Recreate the container on the image the service names now, then wait
/// for health and for the services to answer.
fn swap(ctx: &Context, timeout: Duration, sni: &str, json: bool) -> Result<()> {
    overrides::refresh_generated(ctx)?;
    let cmd = engine::up_cmd(ctx, &[], false).output_to_stderr(json);
    engine::container::again_after_daemon(ctx, timeout, || engine::run_shielded(ctx, &cmd))?;
    engine::wait_for_health(ctx, timeout, false)?;
    probe::wait_answering(sni, ANSWER_LIMIT)
        .map_err(|bad| anyhow::anyhow!("healthy, but not answering: {}", bad.join("; ")))
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
                && m.contains("200.0 MiB")
                && m.contains("nothing was changed"),
            "{m}"
        );
        assert!(disk_verdict("/var/lib/docker", 4 << 30, 3 << 30).is_ok());
    }
}
