//! `setup`: the whole loop, from a bare host to a healthy appliance.
//!
//! 1. preflight (stop on any failure, exit 3),
//! 2. inotify limits (sysctl), then the inotify check,
//! 3. chatmail.ini -> .env (merged, 0600),
//! 4. custom/ -> docker/compose.generated.yaml,
//! 5. `docker compose build` when the image is missing or `--rebuild`,
//!    then, when the container will be created anew, the configuration
//!    deployed in a side container ([`crate::engine::beside`]): the relay keeps
//!    serving meanwhile, a configuration that fails to deploy never
//!    replaces it, and the new container only starts its services,
//! 6. `docker compose up -d` with this run's one-shot switches,
//! 7. wait for the container's health check, then remove the image a
//!    rebuild replaced,
//! 8. the host cert-watch unit when `ENABLE_CERTS_MONITORING=true`.
//!
//! With `--dry-run` every step prints what it would do and nothing changes.
//! Re-running on a healthy, unchanged deployment changes nothing and says so.
//!
//! `up` is steps 4 and 6 alone: regenerate the override, start the appliance.

use anyhow::{Context as _, Result};
use std::time::{Duration, Instant};

use crate::deployment::Settings;
use crate::engine::{self, beside, image_id, image_names, Project, SERVICE};
use crate::overrides::{self, OneShot};
use crate::{context::Context, error, ini2env, preflight, sysctl};

/// How `setup` rebuilds the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    /// `docker compose build`: reuse the build cache.
    Cache,
    /// `docker compose build --no-cache`.
    Full,
}

/// What `chatmail-docker setup` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Preflight checks not to run.
    pub skip: Vec<preflight::CheckId>,
    /// The inotify limits to ensure.
    pub limits: sysctl::Limits,
    /// Settings for this one start of the container.
    pub one_shot: OneShot,
    /// Rebuild the image even when it exists.
    pub rebuild: Option<Rebuild>,
    /// chatmail.ini wins over values set by hand in .env.
    pub force: bool,
    /// How long to wait for the container to become healthy.
    pub wait_timeout: Duration,
    /// Deploy the configuration in a side container before starting.
    pub deploy_beside: bool,
    /// How to build the image (extra CA certificates).
    pub build: crate::engine::build::BuildOptions,
}

/// How long `setup` waits for a Docker daemon that stopped answering
/// while it started the container.
const DAEMON_WAIT: Duration = Duration::from_secs(120);

/// `chatmail-docker up`: regenerate the override from custom/, then
/// `docker compose up -d`.
pub fn up(ctx: &Context) -> Result<()> {
    engine::require_compose_file(ctx)?;
    // `up` recreates a container whose configuration differs: never
    // another deployment's.
    engine::ensure_ours(ctx)?;
    overrides::refresh_generated(ctx)?;
    let cmd = engine::up_cmd(ctx, &[], false);
    ctx.run_or_show(&cmd, "", |cmd| engine::run_checked(ctx, cmd))?;
    Ok(())
}

/// With `ENABLE_CERTS_MONITORING=true` in `.env`, install and enable the
/// host's cert-watch service (or say how to run it without systemd).
fn ensure_cert_watch_unit(ctx: &Context, settings: &Settings) -> Result<bool> {
    if !settings.certs_monitoring {
        return Ok(false);
    }
    let plan = crate::certwatch::unit_plan(ctx)?;
    crate::certwatch::apply_unit(ctx, &plan)?;
    Ok(plan.write)
}

/// Step 5b: make the service's image one deployed for this configuration
/// (in a side container), unless it is already. Returns whether a new one
/// was made. A failure with a relay running leaves it alone (an error);
/// without one, or with ACME certificates (whose client needs the network
/// the side container lacks), the new container deploys by itself.
fn deploy_aside(
    ctx: &Context,
    args: &Options,
    settings: &Settings,
    running: Option<&engine::Inspect>,
    replaced: &mut Vec<(String, String)>,
) -> Result<bool> {
    let Some(name) = image_names(ctx)?.into_iter().next() else {
        return Ok(false);
    };
    let Some(old) = image_id(ctx, &name)? else {
        return Ok(false);
    };
    let acme = matches!(settings.tls, Some(crate::deployment::relay::TlsMode::Acme));
    let serving = running.is_some_and(|c| c.state.running);
    let mut network = beside::Network::None;
    if acme {
        // The first certificates come from the network, which a side
        // container does not have. With no relay running (nothing holds
        // its ports), it deploys on the host's network instead: acmetool
        // obtains the certificate there, and it is kept with the rest of
        // what the deploy made. A running relay deploys the new container
        // by itself.
        let domain = settings.mail_domain.as_deref().unwrap_or("");
        if !ctx.deployment.acme_dir().join("live").join(domain).exists() {
            if serving {
                return Ok(false);
            }
            network = beside::Network::Host;
        }
    }
    if beside::is_current(ctx, &old)? {
        return Ok(false);
    }
    ctx.shell.status(
        "Deploying",
        if serving {
            "the configuration in a side container first (no network, copies of the keys, no mail); the relay keeps serving"
        } else if network == beside::Network::Host {
            "the configuration in a side container on the host's network, for the first ACME certificate (copies of the keys, no mail)"
        } else {
            "the configuration in a side container (no network, copies of the keys, no mail)"
        },
    );
    let since = crate::host::interrupt::count();
    let interrupted = || crate::host::interrupt::since(since);
    let started = Instant::now();
    let policy = beside::Policy {
        serving,
        acme,
        instead: "the new container deploys the configuration by itself",
    };
    match beside::deploy(ctx, &old, &name, args.wait_timeout, &interrupted, network, policy) {
        Ok(Some(d)) => {
            if d.fresh {
                replaced.push((name, old));
                ctx.shell.status(
                    "Deployed",
                    format!(
                        "in {:.0?}; the container starts its services without deploying again",
                        started.elapsed()
                    ),
                );
            }
            Ok(d.fresh)
        }
        Ok(None) => Ok(false),
        Err(e) if error::exit_code(&e) == error::EXIT_INTERRUPTED => Err(
            crate::host::interrupt::interrupted(
                "interrupted while deploying the configuration in a side container; the container was not touched",
            ),
        ),
        Err(e) => match engine::full_data_root(ctx, &e, engine::DATA_ROOT_LOW, "chatmail-docker setup") {
            Some(cause) => Err(e.context(cause).context(
                "the configuration could not be deployed in a side container; the running relay was left as it is",
            )),
            None => Err(e.context(
                "the configuration failed to deploy in a side container; the running relay was left as it is: fix the configuration, or apply it anyway with `setup --no-deploy-beside`",
            )),
        },
    }
}

/// The service's images with the ID of each, `None` when it is missing.
fn images(ctx: &Context) -> Result<Vec<(String, Option<String>)>> {
    image_names(ctx)?
        .into_iter()
        .map(|name| Ok((name.clone(), image_id(ctx, &name)?)))
        .collect()
}

/// After a healthy start on rebuilt images: remove each image a rebuild
/// replaced. It is left without a name and would keep its disk space (a
/// `--rebuild=full` leaves a whole appliance image behind). `docker image
/// rm` by ID refuses an image a container still uses or that has another
/// name, so only the unnamed leftover goes; failing to remove it does not
/// fail the setup.
fn remove_replaced_images(ctx: &Context, previous: &[(String, String)]) {
    for (name, old) in previous {
        // One that still has a name (an upgrade's restore point) stays.
        let named = engine::image_inspect(ctx, old, "{{len .RepoTags}}")
            .ok()
            .flatten()
            .is_some_and(|n| n != "0");
        if named {
            continue;
        }
        match image_id(ctx, name) {
            Ok(Some(now)) if now == *old => continue,
            Ok(_) => {}
            Err(e) => {
                ctx.shell
                    .verbose(format!("kept the previous image of {name}: {e:#}"));
                continue;
            }
        }
        let short = old.trim_start_matches("sha256:").get(..12).unwrap_or(old);
        match engine::image::remove(ctx, old) {
            Ok(()) => ctx.shell.status(
                "Removed",
                format!("the image the rebuild replaced ({name} was {short})"),
            ),
            Err(e) => ctx
                .shell
                .verbose(format!("kept the previous image {short} of {name}: {e:#}")),
        }
    }
}

fn relay_src_check(settings: &Settings) -> Result<std::path::PathBuf> {
    let path = settings.relay_src.clone();
    if !path.is_dir() {
        return Err(error::usage(format!(
            "the relay source {} is missing; the image is built from it. Get it with:\n  git clone https://github.com/chatmail/relay {}\n(or set RELAY_SRC in .env to where it is)",
            path.display(),
            path.display()
        )));
    }
    Ok(path)
}

fn run_preflight(ctx: &Context, args: &Options, without_inotify: bool) -> Result<()> {
    let opts = preflight::Options {
        skip: args.skip.clone(),
        inotify_min: args.limits,
        inotify_must_pass: true,
        without_inotify,
    };
    let report = preflight::run_checks(ctx, &opts)?;
    let failed = report.failed();
    let noisy = !failed.is_empty()
        || ctx.shell.is_verbose()
        || ctx.dry_run
        || report
            .checks
            .iter()
            .any(|c| c.status != preflight::Status::Ok);
    if noisy {
        preflight::print_report(ctx, &report);
    }
    if !failed.is_empty() {
        let ids: Vec<&str> = failed.iter().map(|c| c.id).collect();
        return Err(error::preflight(format!(
            "preflight failed ({}); fix the above, or skip a check you know to be wrong with --skip-check ID",
            ids.join(", ")
        )));
    }
    Ok(())
}

pub fn run(ctx: &Context, args: &Options) -> Result<()> {
    let started = Instant::now();
    engine::require_compose_file(ctx)?;

    // 1. Preflight, before touching anything.
    run_preflight(ctx, args, true)?;
    // Starting would recreate the project's container: refuse before
    // writing anything when it is another deployment's.
    engine::ensure_ours(ctx)?;
    if !ctx.dry_run {
        beside::remove_leftovers(ctx);
    }

    // 2. Host tuning, then the inotify check on the result.
    let mut changed = tune_host(ctx, args)?;

    // 3. chatmail.ini -> .env
    changed |= write_env(ctx, args)?;

    // 4. Overrides.
    changed |= overrides::refresh_generated(ctx)?;

    // Read once, now that it is written (a dry run reads the old one).
    let settings = ctx.settings()?;

    // 5. Build when needed.
    let previous = build(ctx, args, &settings)?;
    changed |= previous.is_some();
    let mut replaced = previous.clone().unwrap_or_default();
    let before = if ctx.dry_run {
        None
    } else {
        engine::current(ctx)?
    };
    // 5b. The configuration deployed beside the relay, when the container
    // is made anew.
    if args.deploy_beside && args.one_shot.is_empty() {
        if ctx.dry_run {
            ctx.shell.out(
                "would deploy the configuration in a side container first (when the image is not deployed for it yet)",
            );
        } else if changed
            || before
                .as_ref()
                .is_none_or(|c| !c.state.running || beside::settings_changed_since(ctx, c))
        {
            changed |= deploy_aside(ctx, args, &settings, before.as_ref(), &mut replaced)?;
        }
    }

    // 6. Up.
    start(ctx, &args.one_shot)
        .map_err(|e| daemon_context(ctx, e, "while `docker compose up` ran"))?;
    if ctx.dry_run {
        ctx.shell.out(format!(
            "would wait up to {}s for the container to become healthy",
            args.wait_timeout.as_secs()
        ));
        ensure_cert_watch_unit(ctx, &settings)?;
        ctx.dry_run_done();
        return Ok(());
    }

    // 7. Health.
    let c = engine::wait_healthy(ctx, args.wait_timeout)
        .context("the appliance did not become healthy")
        .map_err(|e| daemon_context(ctx, e, "while the appliance started"))?;
    // Only now: while the new image is not proven, the old one stays.
    remove_replaced_images(ctx, &replaced);
    let recreated = before
        .as_ref()
        .is_none_or(|b| b.id != c.id || b.state.started_at != c.state.started_at);
    changed |= recreated;

    // 8. The host's certificate watcher, when asked for.
    changed |= ensure_cert_watch_unit(ctx, &settings)?;

    if changed {
        ctx.shell.status(
            "Ready",
            format!(
                "{} is {} after {:.0?}",
                c.name.trim_start_matches('/'),
                c.health_status().unwrap_or("running"),
                started.elapsed()
            ),
        );
    } else {
        ctx.shell.status(
            "Fresh",
            "nothing changed: configuration up to date, the appliance is up and healthy",
        );
    }
    Ok(())
}

/// `e`, said to be the Docker daemon's absence when the daemon stopped
/// answering during this run (or does not answer now), with what to run.
fn daemon_context(ctx: &Context, e: anyhow::Error, doing: &str) -> anyhow::Error {
    if error::exit_code(&e) == error::EXIT_INTERRUPTED || !engine::container::daemon_was_away(ctx) {
        return e;
    }
    let again = format!(
        "chatmail-docker --dir {} setup",
        ctx.deployment.dir().display()
    );
    e.context(engine::container::daemon_context(&again, doing))
}

/// Step 2: raise the inotify limits, then check the live values (unless
/// the inotify check is skipped). Returns whether anything changed.
fn tune_host(ctx: &Context, args: &Options) -> Result<bool> {
    let limits = args.limits;
    let plan = sysctl::ensure(ctx, &limits)?;
    if !ctx.dry_run && !args.skip.contains(&preflight::CheckId::Inotify) {
        let live = sysctl::read_live(&ctx.host)?;
        if live.max_user_instances < limits.max_user_instances
            || live.max_user_watches < limits.max_user_watches
        {
            return Err(error::preflight(format!(
                "inotify limits are still too low after tuning ({} / {}); run: {}",
                live.max_user_instances,
                live.max_user_watches,
                sysctl::manual_commands(&plan)
            )));
        }
    }
    Ok(!plan.is_noop())
}

/// Step 3: merge chatmail.ini into .env, when there is a chatmail.ini.
fn write_env(ctx: &Context, args: &Options) -> Result<bool> {
    let ini = ctx.deployment.ini();
    if !ini.exists() {
        ctx.shell
            .verbose(format!("{} not found; using .env as it is", ini.display()));
        return Ok(false);
    }
    let report = ini2env::sync_env(
        ctx,
        &ini,
        &ctx.deployment.env_file(),
        &ini2env::Options {
            all: false,
            force: args.force,
        },
    )?;
    Ok(report.changed)
}

/// Step 5: build the image when it is missing or a rebuild is asked for.
/// Returns `None` when nothing is built, otherwise (name, image ID) of the
/// images the build replaces.
fn build(
    ctx: &Context,
    args: &Options,
    settings: &Settings,
) -> Result<Option<Vec<(String, String)>>> {
    // Compose needs .env (`env_file`) to list the images, which a dry run
    // on a fresh directory has only planned: the build is then shown as
    // conditional.
    let listed = if ctx.dry_run && !settings.present {
        None
    } else {
        Some(images(ctx)?)
    };
    let mut previous = Vec::new();
    let mut relay = None;
    let note = match &listed {
        None => " (when the image is missing)".to_string(),
        Some(images) => {
            let mut missing = Vec::new();
            for (name, id) in images {
                match id {
                    Some(id) => previous.push((name.clone(), id.clone())),
                    None => missing.push(name.as_str()),
                }
            }
            if args.rebuild.is_none() && missing.is_empty() {
                return Ok(None);
            }
            relay = Some(relay_src_check(settings)?);
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (image {} is missing)", missing.join(", "))
            }
        }
    };
    let mut bargs = vec!["build"];
    if args.rebuild == Some(Rebuild::Full) {
        bargs.push("--no-cache");
    }
    bargs.push(SERVICE);
    let mut cmd = Project::new(ctx).cmd(ctx, bargs);
    // Kept until the build is over: the CA bundle is a temporary file.
    let inputs = match &relay {
        Some(relay) => Some(crate::engine::build::prepare(ctx, relay, &args.build)?),
        None => None,
    };
    for (k, v) in inputs.iter().flat_map(|i| &i.env) {
        cmd = cmd.env(k, v);
    }
    let built = ctx.run_or_show(&cmd, &note, |cmd| {
        let names: Vec<&str> = listed.iter().flatten().map(|(n, _)| n.as_str()).collect();
        ctx.shell.status(
            "Building",
            format!("the appliance image ({})", names.join(", ")),
        );
        engine::run_checked(ctx, cmd).map_err(|e| {
            // Builds need room: name a full data root and what to do.
            let need = engine::DATA_ROOT_LOW;
            match engine::full_data_root(ctx, &e, need, "chatmail-docker setup") {
                Some(cause) => e
                    .context(cause)
                    .context("the appliance image did not build"),
                None => e,
            }
        })
    })?;
    if built.is_none() && !previous.is_empty() {
        ctx.shell.out(
            "would remove the image the rebuild replaces (if it changed) once the appliance is healthy",
        );
    }
    Ok(Some(previous))
}

/// Step 6: `docker compose up -d` with this run's one-shot switches.
fn start(ctx: &Context, one_shot: &OneShot) -> Result<()> {
    let cmd = engine::up_cmd(ctx, &one_shot.env(), one_shot.needs_recreate());
    ctx.run_or_show(&cmd, "", |cmd| {
        ctx.shell
            .status("Starting", "the appliance (docker compose up -d)");
        engine::container::again_after_daemon(ctx, DAEMON_WAIT, || {
            engine::run_checked(ctx, cmd)
        })?;
        if !one_shot.is_empty() {
            ctx.shell.note(
                "the one-shot settings applied to this start only; the next `setup` or `up` recreates the container with the defaults",
            );
        }
        Ok(())
    })?;
    Ok(())
}
