//! `upgrade`: the steps that move the relay forward. Each step before the
//! swap is undone the same way when it fails or is interrupted
//! ([`Upgrade::abandon`]); a swap that fails rolls back by itself
//! ([`Upgrade::roll_back_after`]).

use anyhow::{Context as _, Result};
use std::time::Instant;

use super::git::{short, Checkout};
use super::state::{self, Phase, RestorePoint, UpgradeState};
use super::{
    build_need, check_disk, image_name, local_edits_error, mail_domain, plan, print_plan, probe,
    relay_dir, say, swap, Options, Plan, Release, Summary, BACKUP_DIR, BACKUP_KEEP,
};
use crate::context::Context;
use crate::engine::image::{image_release, image_size, restore_tag, tag_image};
use crate::engine::{self, beside, image_id, Project, SERVICE};
use crate::host::interrupt;
use crate::{backup, error};
use std::path::{Path, PathBuf};

/// A step before the swap: each is undone the same way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Checkout,
    Build,
    Beside,
    Backup,
}

/// The way back, made before anything changes.
struct Point {
    restore: RestorePoint,
    /// The image the relay runs.
    old_id: Option<String>,
    /// The running release deployed for these settings: what a rollback
    /// runs.
    restore_id: Option<String>,
}

/// What [`Upgrade::after_killed`] found an earlier upgrade left.
enum AfterKilled {
    Nothing,
    /// Stopped before its swap, and put back.
    Undone,
    /// Stopped during its swap: finish it from this restore point.
    Swap(Box<(Point, UpgradeState)>),
}

/// An upgrade under way: what its steps share.
struct Upgrade<'a> {
    ctx: &'a Context,
    opts: &'a Options,
    relay: PathBuf,
    checkout: Checkout<'a>,
    /// The image name the compose file gives the service.
    image: String,
    /// The state file as the upgrade found it.
    prior: Option<UpgradeState>,
    plan: Plan,
    /// Signals counted before the upgrade began.
    signals: usize,
    /// Images this upgrade made (removed when it is abandoned or rolled
    /// back).
    made: Vec<String>,
    summary: Summary,
}

/// `chatmail-docker upgrade`.
pub fn run(ctx: &Context, opts: &Options) -> Result<Summary> {
    let mut up = Upgrade::open(ctx, opts)?;
    if !ctx.dry_run {
        match up.after_killed()? {
            AfterKilled::Nothing => {}
            AfterKilled::Undone => up = Upgrade::open(ctx, opts)?,
            AfterKilled::Swap(found) => {
                let (point, st) = *found;
                engine::beside::remove_leftovers(ctx);
                let new_id = image_id(ctx, &up.image)?
                    .context("the image the stopped upgrade swapped to is gone")?;
                return up.swap(point, st, &new_id);
            }
        }
    }
    if up.plan.up_to_date {
        return Ok(up.fresh());
    }
    print_plan(ctx, &up.plan, opts.json);
    if ctx.dry_run {
        return Ok(up.dry_run());
    }
    engine::beside::remove_leftovers(ctx);
    check_disk(ctx, &up.image)?;
    let point = up.restore_point()?;
    let st = up.record(&point)?;
    let to = up.plan.to.commit.clone();
    up.step(&point, Step::Checkout, |up| up.checkout.checkout(&to))?;
    let built = up.step(&point, Step::Build, |up| up.build(point.old_id.as_deref()))?;
    let new_id = match opts.deploy_beside {
        true => up.step(&point, Step::Beside, |up| up.deploy_beside(&built))?,
        false => built,
    };
    if opts.backup {
        up.step(&point, Step::Backup, Upgrade::backup)?;
    }
    up.swap(point, st, &new_id)
}

impl<'a> Upgrade<'a> {
    /// Everything checked that can be before the plan: the compose file,
    /// the state file, local edits, the build's certificates.
    fn open(ctx: &'a Context, opts: &'a Options) -> Result<Upgrade<'a>> {
        engine::require_compose_file(ctx)?;
        engine::ensure_ours(ctx)?;
        // From here on a signal is counted, not fatal: each step decides.
        let signals = interrupt::count();
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
            engine::build::collect_certificates(ca, opts.build.ca_name())?;
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
        let plan = plan(ctx, &checkout, opts.reference.as_deref(), opts.fetch)?;
        let summary = Summary {
            from: Some(plan.from.clone()),
            to: Some(plan.to.clone()),
            ..Default::default()
        };
        Ok(Upgrade {
            ctx,
            opts,
            relay,
            checkout,
            image,
            prior,
            plan,
            signals,
            made: Vec::new(),
            summary,
        })
    }

    fn interrupted(&self) -> bool {
        interrupt::since(self.signals)
    }

    /// What an earlier upgrade that was stopped by force (killed, the
    /// machine went down) left, made whole: stopped before its swap, the
    /// checkout and the image name it changed are put back (the container
    /// was never touched) and this upgrade starts afresh; stopped during
    /// its swap, the swap is finished (the new release checked, or rolled
    /// back by itself) instead of calling a checkout at the target "up to
    /// date" while the container may still run the old release or none.
    fn after_killed(&mut self) -> Result<AfterKilled> {
        let ctx = self.ctx;
        let Some(prior) = self.prior.clone() else {
            return Ok(AfterKilled::Nothing);
        };
        let to = prior
            .target
            .as_ref()
            .map_or_else(|| "?".to_string(), |t| t.version.clone());
        match prior.phase {
            Phase::Done | Phase::RolledBack => Ok(AfterKilled::Nothing),
            Phase::Building => {
                let Some(back) = prior.previous.clone() else {
                    return Ok(AfterKilled::Nothing);
                };
                self.checkout.restore(&back.position).with_context(|| {
                    format!(
                        "an earlier upgrade to {to} was stopped before its swap, and {} cannot be moved back to {}",
                        self.relay.display(),
                        short(&back.position.commit)
                    )
                })?;
                // The image the killed run built (or deployed) under the
                // service's name: of no use once the name is back.
                let made = image_id(ctx, &self.image)?;
                if let Some(id) = back.image_id.as_deref().or(back.image_tag.as_deref()) {
                    tag_image(ctx, id, &self.image)?;
                }
                let keep = [
                    back.image_id.clone(),
                    match back.image_tag.as_deref() {
                        Some(tag) => image_id(ctx, tag)?,
                        None => None,
                    },
                ];
                if let Some(made) = made.filter(|m| !keep.iter().flatten().any(|k| k == m)) {
                    let _ = engine::image::remove(ctx, &made);
                }
                let mut st = prior.clone();
                st.phase = Phase::RolledBack;
                state::save(ctx, &st)?;
                ctx.shell.warn(format!(
                    "an earlier upgrade to {to} was stopped before its swap (the relay was never touched): {} is back at {} and {} names the running image again; upgrading afresh",
                    self.relay.display(),
                    short(&back.position.commit),
                    self.image
                ));
                Ok(AfterKilled::Undone)
            }
            Phase::Swapping => {
                let Some(target) = prior.target.clone() else {
                    return Ok(AfterKilled::Nothing);
                };
                let restore_id = match prior.previous.as_ref().and_then(|p| p.image_tag.as_deref())
                {
                    Some(tag) => image_id(ctx, tag)?,
                    None => None,
                };
                let point = Point {
                    old_id: prior.previous.as_ref().and_then(|p| p.image_id.clone()),
                    restore: match prior.previous.clone() {
                        Some(p) => p,
                        None => {
                            return Err(anyhow::anyhow!(
                                "an earlier upgrade to {to} was stopped while swapping the container, and its state file {} names no release to go back to; run `chatmail-docker --dir {} setup` to start the relay on the image {} names",
                                ctx.deployment.path(state::STATE_FILE).display(),
                                ctx.deployment.dir().display(),
                                self.image
                            ))
                        }
                    },
                    restore_id,
                };
                ctx.shell.warn(format!(
                    "an earlier upgrade to {to} was stopped while swapping the container; finishing its swap now (the new release is checked, or rolled back by itself)"
                ));
                self.plan.to = target;
                self.summary.to = Some(self.plan.to.clone());
                self.summary.from = Some(point.restore.release.clone());
                Ok(AfterKilled::Swap(Box::new((point, prior))))
            }
        }
    }

    /// Nothing to do: the checkout is at the target.
    fn fresh(mut self) -> Summary {
        let from = &self.plan.from;
        self.ctx.shell.status(
            "Fresh",
            format!(
                "the relay is at {} ({}), nothing to upgrade",
                from.version,
                short(&from.commit)
            ),
        );
        self.summary.outcome = "up-to-date".into();
        self.summary
    }

    /// `--dry-run`: the steps, said.
    fn dry_run(mut self) -> Summary {
        let (ctx, opts, p) = (self.ctx, self.opts, &self.plan);
        let say = |t: String| say(ctx, opts.json, t);
        say(format!(
            "would tag the running image as {} (the restore point)",
            restore_tag(&self.image, &p.from.commit)
        ));
        say(format!(
            "would move {} to {} and build {} while the relay keeps serving",
            self.relay.display(),
            short(&p.to.commit),
            self.image
        ));
        if opts.deploy_beside {
            say("would deploy the new release in a side container without network (copies of the keys, no mail) and keep the result as the image".into());
        }
        if opts.backup {
            say(format!(
                "would back up into {}/",
                self.backup_dir().display()
            ));
        }
        say(format!(
            "would recreate the container on the new image and wait up to {}s for health and for SMTP, IMAP and HTTPS to answer; otherwise roll back",
            opts.wait_timeout.as_secs()
        ));
        ctx.dry_run_done();
        self.summary.outcome = "planned".into();
        self.summary
    }

    fn backup_dir(&self) -> PathBuf {
        self.opts
            .backup_dir
            .clone()
            .unwrap_or_else(|| self.ctx.deployment.path(BACKUP_DIR))
    }

    /// The restore point: the running image, deployed beside the relay
    /// when it is not yet (so that a rollback is a restart), under a
    /// second name.
    fn restore_point(&self) -> Result<Point> {
        let ctx = self.ctx;
        let running = engine::current(ctx)?;
        let position = self.checkout.position()?;
        let old_id = match &running {
            Some(c) => Some(c.image.clone()),
            None => image_id(ctx, &self.image)?,
        };
        let release = old_id
            .as_deref()
            .and_then(|id| image_release(ctx, id))
            .unwrap_or_else(|| self.plan.from.clone());
        let restore_id = match old_id.as_deref() {
            Some(id) => Some(self.deployed_for_rollback(id, &release)?),
            None => None,
        };
        let image_tag = match &restore_id {
            Some(id) => {
                let tag = restore_tag(&self.image, &release.commit);
                tag_image(ctx, id, &tag)?;
                ctx.shell.status(
                    "Tagged",
                    format!("the running release as {tag} (restore point)"),
                );
                Some(tag)
            }
            None => None,
        };
        Ok(Point {
            restore: RestorePoint {
                position,
                release,
                image_tag,
                image_id: old_id.clone(),
            },
            old_id,
            restore_id,
        })
    }

    /// The running image `id`, deployed for these settings (itself when
    /// that fails: a rollback then deploys it again).
    fn deployed_for_rollback(&self, id: &str, release: &Release) -> Result<String> {
        let ctx = self.ctx;
        ctx.shell.status(
            "Checking",
            format!(
                "that the running release {} is deployed for these settings, so that a rollback is quick",
                release.version
            ),
        );
        match beside::deployed(ctx, id, self.opts.wait_timeout, &|| self.interrupted()) {
            Ok(d) => Ok(d.id),
            Err(e) if error::exit_code(&e) == error::EXIT_INTERRUPTED => Err(
                interrupt::interrupted("interrupted before the build; nothing was changed"),
            ),
            Err(e) => {
                ctx.shell.warn(format!(
                    "could not deploy the running release beside the relay ({e:#}); a rollback would deploy it again"
                ));
                Ok(id.to_string())
            }
        }
    }

    /// The state file says an upgrade is building, with its restore point.
    fn record(&self, point: &Point) -> Result<UpgradeState> {
        let st = UpgradeState {
            phase: Phase::Building,
            image: self.image.clone(),
            previous: Some(point.restore.clone()),
            target: Some(self.plan.to.clone()),
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        state::save(self.ctx, &st)?;
        Ok(st)
    }

    /// Run a step before the swap; when it fails or a signal came, put
    /// everything back ([`Upgrade::abandon`]).
    fn step<T>(
        &mut self,
        point: &Point,
        step: Step,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let res = f(self);
        let interrupted = self.interrupted()
            || matches!(&res, Err(e) if error::exit_code(e) == error::EXIT_INTERRUPTED);
        match res {
            Ok(v) if !interrupted => Ok(v),
            res => Err(self.abandon(point, step, res.err(), interrupted)),
        }
    }

    /// Put back what the steps before the swap changed: the checkout, the
    /// image name (on the image the relay runs), the state file; the
    /// images made are removed. The container was never touched.
    fn abandon(
        &self,
        point: &Point,
        step: Step,
        err: Option<anyhow::Error>,
        interrupted: bool,
    ) -> anyhow::Error {
        let ctx = self.ctx;
        let back = &point.restore;
        if let Err(e) = self.checkout.restore(&back.position) {
            ctx.shell.error(format!(
                "could not move {} back to {}: {e:#}",
                self.checkout.dir.display(),
                short(&back.position.commit)
            ));
        }
        if let Some(id) = back.image_id.as_deref().or(back.image_tag.as_deref()) {
            if let Err(e) = tag_image(ctx, id, &self.image) {
                ctx.shell.error(format!("{e:#}"));
            }
        }
        state::put_back(ctx, self.prior.as_ref());
        self.remove_made(point);
        let (relay, from, to) = (
            self.relay.display(),
            &self.plan.from.version,
            &self.plan.to.version,
        );
        if interrupted {
            let when = match step {
                Step::Checkout | Step::Build => "during the build".to_string(),
                Step::Beside => format!("while deploying {to} beside the relay"),
                Step::Backup => "before the swap".to_string(),
            };
            return interrupt::interrupted(format!(
                "interrupted {when}; {relay} is back at {from} and the relay was never touched"
            ));
        }
        let e = err.unwrap_or_else(|| anyhow::anyhow!("the step failed"));
        let need = match step {
            Step::Build => Some(build_need(ctx, &self.image)),
            Step::Beside => Some(engine::DATA_ROOT_LOW),
            Step::Checkout | Step::Backup => None,
        };
        let e = match need
            .and_then(|n| engine::full_data_root(ctx, &e, n, "chatmail-docker upgrade"))
        {
            Some(cause) => e.context(cause),
            None => e,
        };
        e.context(match step {
            Step::Checkout => format!(
                "could not move {relay} to {}; nothing was changed",
                short(&self.plan.to.commit)
            ),
            Step::Build => format!(
                "the new image did not build; {relay} is back at {from} and the relay kept serving on the old image"
            ),
            Step::Beside => format!(
                "{to} failed to deploy beside the relay; nothing was swapped: the relay kept serving {from} and {relay} is back at it (--no-deploy-beside swaps without this check)"
            ),
            Step::Backup => "the backup before the swap failed; the relay kept serving on the old image (--no-backup skips the backup)".to_string(),
        })
    }

    /// Remove the images this upgrade made that the relay does not need.
    fn remove_made(&self, point: &Point) {
        for id in &self.made {
            if Some(id) != point.old_id.as_ref() && Some(id) != point.restore_id.as_ref() {
                let _ = engine::image::remove(self.ctx, id);
            }
        }
    }

    /// Build the new image beside the running relay (which runs `old`):
    /// its id.
    fn build(&mut self, old: Option<&str>) -> Result<String> {
        let (ctx, opts) = (self.ctx, self.opts);
        let started = Instant::now();
        build_image(ctx, &self.relay, &opts.build, opts.json)?;
        self.summary.build_seconds = Some(started.elapsed().as_secs_f64());
        let built = image_id(ctx, &self.image)?.context("the build left no image")?;
        self.made.push(built.clone());
        if let (Some(old), Some(new)) = (
            old.and_then(|i| image_size(ctx, i)),
            image_size(ctx, &built),
        ) {
            self.summary.image_size_change_bytes = Some(new - old);
            ctx.shell.status(
                "Built",
                format!(
                    "{} for {} in {:.0}s ({:+.1} MB against the running image)",
                    self.image,
                    self.plan.to.version,
                    started.elapsed().as_secs_f64(),
                    (new - old) as f64 / 1e6
                ),
            );
        }
        Ok(built)
    }

    /// The new release deployed beside the relay (no network, copies of
    /// the keys, no mail): the image that results.
    fn deploy_beside(&mut self, built: &str) -> Result<String> {
        let ctx = self.ctx;
        let to = &self.plan.to.version;
        ctx.shell.status(
            "Deploying",
            format!("{to} beside the relay (no network, copies of the keys, no mail)"),
        );
        let started = Instant::now();
        let instead = format!(
            "the swap deploys {to} in the new container (a longer interruption; a failure there rolls back)"
        );
        let policy = beside::Policy {
            serving: true,
            acme: matches!(
                ctx.settings()?.tls,
                Some(crate::deployment::relay::TlsMode::Acme)
            ),
            instead: &instead,
        };
        let deployed = beside::deploy(
            ctx,
            built,
            &self.image,
            self.opts.wait_timeout,
            &|| self.interrupted(),
            beside::Network::None,
            policy,
        )?;
        Ok(match deployed {
            Some(d) => {
                self.made.push(d.id.clone());
                self.summary.deploy_aside_seconds = Some(started.elapsed().as_secs_f64());
                d.id
            }
            None => built.to_string(),
        })
    }

    /// The backup just before the swap.
    fn backup(&mut self) -> Result<()> {
        self.summary.backup = take_backup(self.ctx, &self.backup_dir())?;
        Ok(())
    }

    /// Recreate the container on the new image; roll back by itself when
    /// it does not come up healthy and answering. Nothing interrupts this.
    fn swap(mut self, point: Point, mut st: UpgradeState, new_id: &str) -> Result<Summary> {
        let ctx = self.ctx;
        st.phase = Phase::Swapping;
        state::save(ctx, &st)?;
        ctx.shell.status(
            "Swapping",
            format!(
                "the container to {} (a Ctrl-C now waits for the swap or the rollback to finish)",
                self.plan.to.version
            ),
        );
        let watch = probe::Downtime::watch();
        let sni = mail_domain(ctx);
        if let Err(reason) = swap(ctx, self.opts.wait_timeout, &sni, self.opts.json) {
            return self.roll_back_after(&point, reason, watch, &sni);
        }
        let window = watch.finish();
        self.summary.downtime_seconds = window.seconds;
        st.phase = Phase::Done;
        state::save(ctx, &st)?;
        let (from, to) = (point.restore.release.clone(), self.plan.to.clone());
        state::record_last(
            ctx,
            false,
            state::LastRun::now(Some(from), Some(to.clone())),
        );
        engine::image::prune_restore_points(
            ctx,
            &self.image,
            new_id,
            point.restore.image_tag.as_deref(),
        );
        ctx.shell.status(
            "Upgraded",
            format!(
                "the relay runs {} ({}); mail service was interrupted for {}",
                to.version,
                short(&to.commit),
                window
                    .seconds
                    .map_or("no measurable time".into(), |s| format!("{s:.1}s"))
            ),
        );
        if let Some(tag) = &point.restore.image_tag {
            ctx.shell.note(format!(
                "the previous release stays as {tag}: `chatmail-docker upgrade --rollback` goes back to it"
            ));
        }
        self.summary.outcome = "upgraded".into();
        if self.interrupted() {
            return Err(interrupt::interrupted(format!(
                "interrupted: the swap was finished first; the relay runs {}",
                to.version
            )));
        }
        Ok(self.summary)
    }

    /// The new release failed (`reason`): back to the restore point (image
    /// name, checkout, container), the failed release's images removed,
    /// its last log lines shown.
    fn roll_back_after(
        mut self,
        point: &Point,
        reason: anyhow::Error,
        watch: probe::Downtime,
        sni: &str,
    ) -> Result<Summary> {
        let (ctx, opts) = (self.ctx, self.opts);
        let logs = engine::last_logs(ctx, 40);
        let failed_at = Instant::now();
        let old = &point.restore.release;
        ctx.shell.error(format!(
            "the new release failed: {reason:#}; rolling back to {}",
            old.version
        ));
        let back = roll_back(ctx, &self.checkout, &point.restore, &self.image, opts, sni);
        let window = watch.finish();
        self.summary.downtime_seconds = window.seconds;
        self.summary.reason = Some(format!("{reason:#}"));
        if !logs.trim().is_empty() {
            ctx.shell
                .error("last log lines of the new release's container:");
            for l in logs.lines() {
                say(ctx, opts.json, format!("  | {l}"));
            }
        }
        let to = &self.plan.to.version;
        if let Err(e) = back {
            return Err(error::Failure {
                code: error::EXIT_RUNTIME,
                message: Some(format!(
                    "upgrade to {to} failed ({reason:#}) and so did the rollback: {e:#}\n{}the relay may be down: see `chatmail-docker status` and `chatmail-docker logs`; `chatmail-docker --dir {} upgrade` finishes the swap (checked, or rolled back), `upgrade --rollback` goes back; the previous image is {}",
                    daemon_note(ctx),
                    ctx.deployment.dir().display(),
                    point.restore.image_tag.as_deref().unwrap_or("gone")
                )),
            }
            .into());
        }
        self.summary.rollback_seconds = Some(failed_at.elapsed().as_secs_f64());
        self.summary.outcome = "rolled-back".into();
        // The restore point of the last good upgrade stays what
        // `--rollback` goes back to.
        state::put_back(ctx, self.prior.as_ref());
        let mut run = state::LastRun::now(Some(self.plan.to.clone()), Some(old.clone()));
        run.automatic = true;
        run.reason = self.summary.reason.clone();
        state::record_last(ctx, true, run);
        // The failed release's images are of no further use.
        self.remove_made(point);
        if opts.json {
            ctx.shell.data(serde_json::to_string_pretty(&self.summary)?);
        }
        Err(error::Failure {
            code: if self.interrupted() {
                error::EXIT_INTERRUPTED
            } else {
                error::EXIT_RUNTIME
            },
            message: Some(format!(
                "upgrade to {to} failed ({reason:#}); rolled back by itself in {:.1}s: the relay runs {} again{}",
                failed_at.elapsed().as_secs_f64(),
                old.version,
                if engine::container::daemon_was_away(ctx) {
                    format!(
                        "\n{}run `chatmail-docker --dir {} upgrade` again",
                        daemon_note(ctx),
                        ctx.deployment.dir().display()
                    )
                } else {
                    String::new()
                }
            )),
        }
        .into())
    }
}

/// "the Docker daemon stopped answering during the swap; " when it did
/// during this run (or does not answer now), else nothing.
fn daemon_note(ctx: &Context) -> &'static str {
    if engine::container::daemon_was_away(ctx) {
        "the Docker daemon stopped answering during the swap (stopped or restarted); once it is back, a relay that was running comes back by itself (restart policy); "
    } else {
        ""
    }
}

/// `docker compose build` of the service with this checkout's inputs.
fn build_image(
    ctx: &Context,
    relay: &Path,
    build: &engine::build::BuildOptions,
    json: bool,
) -> Result<()> {
    let inputs = engine::build::prepare(ctx, relay, build)?;
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

/// Back to the restore point after a failed swap: image name, checkout,
/// container.
fn roll_back(
    ctx: &Context,
    checkout: &Checkout,
    point: &RestorePoint,
    image: &str,
    opts: &Options,
    sni: &str,
) -> Result<()> {
    let tag = point
        .image_tag
        .as_deref()
        .context("there was no previous image to go back to")?;
    tag_image(ctx, tag, image)?;
    checkout.restore(&point.position)?;
    swap(ctx, opts.wait_timeout, sni, opts.json)
}
