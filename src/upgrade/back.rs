//! `upgrade --rollback`: back to the release before the last upgrade.
//!
//! Everything it needs is checked before anything changes
//! ([`Back::check`]): the state file ([`state::validate`]), the restore
//! point's image, the checkout (no local edits, the commit to go back to
//! is in it). Then the checkout moves, the image name moves and the
//! container is recreated; a step that fails before the container is
//! touched puts back what the steps before it changed ([`Back::undo`]).

use anyhow::{Context as _, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::git::{self, short, Checkout};
use super::state::{self, Phase, RestorePoint, UpgradeState};
use super::{image_name, local_edits_error, mail_domain, probe, relay_dir, say, swap, Summary};
use crate::context::Context;
use crate::engine::image::{image_release, restore_tag, tag_image, Release};
use crate::engine::{self, image_id};
use crate::error;
use crate::host::interrupt;

/// A rollback, checked.
struct Back<'a> {
    ctx: &'a Context,
    relay: PathBuf,
    checkout: Checkout<'a>,
    image: String,
    /// The state file as it is.
    st: UpgradeState,
    /// What to go back to.
    point: RestorePoint,
    /// Its image's name.
    tag: String,
    /// The image the relay runs (or the service's name points at).
    current_id: Option<String>,
    /// Where the checkout stands.
    here: git::Position,
    /// The release rolled back from.
    current: Release,
    signals: usize,
}

/// What a rollback found before it changed anything.
struct Before {
    /// The image the service's name pointed at.
    image_id: Option<String>,
    /// The restore-point name the rollback adds (none when it existed).
    added_tag: Option<String>,
}

/// `upgrade --rollback`.
pub fn rollback(ctx: &Context, wait_timeout: Duration, json: bool) -> Result<Summary> {
    let back = Back::check(ctx)?;
    say(
        ctx,
        json,
        format!(
            "roll back: {} ({}) -> {} ({})",
            back.current.version,
            short(&back.current.commit),
            back.point.release.version,
            short(&back.point.release.commit)
        ),
    );
    if ctx.dry_run {
        say(
            ctx,
            json,
            format!(
                "would tag {} as {}, move {} to {}, recreate the container and wait for health",
                back.tag,
                back.image,
                back.relay.display(),
                short(&back.point.position.commit)
            ),
        );
        ctx.dry_run_done();
        return Ok(Summary {
            outcome: "planned".into(),
            ..Default::default()
        });
    }
    let next = back.prepare()?;
    back.swap(next, wait_timeout, json)
}

impl<'a> Back<'a> {
    /// Everything the rollback needs, checked; nothing changes.
    fn check(ctx: &'a Context) -> Result<Back<'a>> {
        engine::require_compose_file(ctx)?;
        engine::ensure_ours(ctx)?;
        let signals = interrupt::count();
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
        let current_id = match engine::current(ctx)? {
            Some(c) => Some(c.image),
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
        Ok(Back {
            ctx,
            relay,
            checkout,
            image,
            st,
            point,
            tag,
            current_id,
            here,
            current,
            signals,
        })
    }

    /// The release rolled back from becomes the restore point (a second
    /// `--rollback` goes forward again); the state file says so; the
    /// checkout and the image name move back. A failure puts it all back.
    fn prepare(&self) -> Result<UpgradeState> {
        let ctx = self.ctx;
        let forward_tag = self
            .current_id
            .as_ref()
            .map(|_| restore_tag(&self.image, &self.current.commit));
        let before = Before {
            image_id: image_id(ctx, &self.image)?,
            added_tag: match &forward_tag {
                Some(t) if image_id(ctx, t)?.is_none() => Some(t.clone()),
                _ => None,
            },
        };
        let undo = |e: anyhow::Error, what: &str| {
            self.undo(&before);
            e.context(format!("{what}; nothing was changed, the relay runs on"))
        };
        if let (Some(id), Some(t)) = (&self.current_id, &forward_tag) {
            tag_image(ctx, id, t)
                .map_err(|e| undo(e, "could not keep the running release as a restore point"))?;
        }
        let next = UpgradeState {
            phase: Phase::Swapping,
            image: self.image.clone(),
            previous: Some(RestorePoint {
                position: self.here.clone(),
                release: self.current.clone(),
                image_id: self.current_id.clone(),
                image_tag: forward_tag,
            }),
            target: Some(self.point.release.clone()),
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        state::save(ctx, &next).map_err(|e| undo(e, "could not record the rollback"))?;
        self.checkout.restore(&self.point.position).map_err(|e| {
            undo(
                e,
                &format!(
                    "could not move {} back to {}",
                    self.relay.display(),
                    short(&self.point.position.commit)
                ),
            )
        })?;
        tag_image(ctx, &self.tag, &self.image)
            .map_err(|e| undo(e, "could not name the previous release's image"))?;
        Ok(next)
    }

    /// Put back what a rollback changed before the container was touched:
    /// the checkout, the image name, the restore-point name it added, the
    /// state file. Each step is done whether or not the rollback got to it
    /// (doing it again changes nothing).
    fn undo(&self, before: &Before) {
        let ctx = self.ctx;
        if let Err(e) = self.checkout.restore(&self.here) {
            ctx.shell.error(format!(
                "could not move {} back to {}: {e:#}",
                self.checkout.dir.display(),
                short(&self.here.commit)
            ));
        }
        if let Some(id) = &before.image_id {
            if let Err(e) = tag_image(ctx, id, &self.image) {
                ctx.shell.error(format!("{e:#}"));
            }
        }
        if let Some(t) = &before.added_tag {
            let _ = engine::image::remove(ctx, t);
        }
        state::put_back(ctx, Some(&self.st));
    }

    /// Recreate the container on the previous release and wait for it.
    fn swap(self, mut next: UpgradeState, wait_timeout: Duration, json: bool) -> Result<Summary> {
        let ctx = self.ctx;
        let release = self.point.release;
        ctx.shell.status(
            "Swapping",
            format!(
                "the container back to {} (a Ctrl-C now waits for the swap to finish)",
                release.version
            ),
        );
        let watch = probe::Downtime::watch();
        let started = Instant::now();
        let result = swap(ctx, wait_timeout, &mail_domain(ctx), json);
        let window = watch.finish();
        result.context("the rollback did not come up healthy; see `chatmail-docker logs`")?;
        next.phase = Phase::Done;
        state::save(ctx, &next)?;
        state::record_last(
            ctx,
            true,
            state::LastRun::now(Some(self.current.clone()), Some(release.clone())),
        );
        ctx.shell.status(
            "Rolled back",
            format!(
                "the relay runs {} again after {:.1}s; mail service was interrupted for {}",
                release.version,
                started.elapsed().as_secs_f64(),
                window
                    .seconds
                    .map_or("no measurable time".into(), |s| format!("{s:.1}s"))
            ),
        );
        let summary = Summary {
            from: Some(self.current),
            to: Some(release),
            outcome: "rolled-back".into(),
            downtime_seconds: window.seconds,
            rollback_seconds: Some(started.elapsed().as_secs_f64()),
            ..Default::default()
        };
        if interrupt::since(self.signals) {
            return Err(interrupt::interrupted(
                "interrupted: the rollback was finished first",
            ));
        }
        Ok(summary)
    }
}
