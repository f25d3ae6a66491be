//! `cert-watch`: reload the mail services when the TLS certificate changes,
//! and check that they then serve the new one.
//!
//! Renewals happen on the host side of a volume mount, usually by swapping
//! symlinks, which neither a periodic `find -type f` hash nor inotify inside
//! the container notices. This module watches every directory on the path
//! to the certificate (see [`locate`] and [`watch`]), fingerprints the
//! content after each event ([`material`]), refuses to reload into a broken
//! or half-written pair, reloads ([`reload`]) and asks the services which
//! certificate they serve ([`verify`]). The last applied fingerprint is kept
//! in `data/` ([`state`]) so a restart or a `--once` run does not reload for
//! nothing.
//!
//! For the rest of the tool: [`status`] reports the watcher and certificate,
//! [`unit_plan`] / [`apply_unit`] install the host systemd unit.

pub mod locate;
pub mod material;
pub mod reload;
pub mod state;
pub mod unit;
pub mod verify;
pub mod watch;

use anyhow::{Context as _, Result};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::context::Context;
use locate::{Target, Walk};
use material::{CertInfo, Material};
use reload::{Action, Outcome, Reloader};
use verify::{short, Endpoint};

pub use unit::{apply_unit, unit_plan, UnitPlan, UNIT_NAME};

/// Longest poll interval accepted (a day): the fallback poll is a safety
/// net, and a larger value only risks overflowing the timer.
pub const MAX_POLL_SECS: u64 = 86_400;

/// Longest debounce accepted; the watcher acts at the latest two seconds
/// after the first event of a burst anyway.
pub const MAX_DEBOUNCE_MS: u64 = 60_000;

/// Longest `--verify-timeout`: checking what is served is a matter of
/// seconds; an hour only delays the restart that follows a failed check.
pub const MAX_VERIFY_SECS: u64 = 3_600;

/// Default and longest `--reload-timeout`: reloading three services takes
/// seconds, a restart at most a minute or two.
pub const DEFAULT_RELOAD_SECS: u64 = 120;
pub const MAX_RELOAD_SECS: u64 = 3_600;

/// Everything the watcher needs, resolved once from the arguments and `.env`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub target: Target,
    /// MAIL_DOMAIN: the name the certificate must cover (and the SNI sent).
    pub domain: Option<String>,
    pub reloader: Reloader,
    /// `None` with `--no-verify`.
    pub verify: Option<Vec<Endpoint>>,
    pub verify_host: String,
    /// How long to keep checking the served certificate after a reload.
    pub verify_window: Duration,
    /// How long a reload (or restart) command may take before it is stopped.
    pub reload_timeout: Duration,
    pub poll: Duration,
    /// Quiet time after the last event before acting.
    pub debounce: Duration,
}

/// What `chatmail-docker cert-watch` is asked to do; `.env` fills in what
/// is not given.
#[derive(Clone, Debug)]
pub struct Options {
    /// Host directory with the certificate and key, instead of PATH_TO_SSL.
    pub path: Option<PathBuf>,
    /// Check once, reload if changed, and exit.
    pub once: bool,
    /// Seconds between polls; CERTS_MONITORING_TIMEOUT or 60 when `None`.
    pub poll_interval: Option<u64>,
    /// A shell command to run instead of reloading the services.
    pub reload_command: Option<String>,
    /// Do not check the served certificates after a reload.
    pub no_verify: bool,
    /// Ports to check after a reload ([`verify::parse_ports`]).
    pub verify_ports: String,
    /// Address the verification connects to.
    pub verify_host: String,
    /// Seconds to keep checking after a reload before restarting (1 to
    /// [`MAX_VERIFY_SECS`]).
    pub verify_timeout: u64,
    /// Seconds a reload command may take (1 to [`MAX_RELOAD_SECS`]).
    pub reload_timeout: u64,
    /// Quiet time after the last file event, in milliseconds.
    pub debounce_ms: u64,
}

/// Where the certificate is, the name it must cover and how often to poll:
/// the part of [`Settings`] that `status` needs too.
struct Located {
    target: Target,
    domain: Option<String>,
    poll: Duration,
}

impl Located {
    /// From `path` and `poll_interval` when given, otherwise from `.env`.
    fn resolve(
        ctx: &Context,
        path: Option<&std::path::Path>,
        poll_interval: Option<u64>,
    ) -> Result<Located> {
        let env_path = ctx.deployment.env_file();
        let settings = ctx.settings()?;
        if !settings.present && path.is_none() {
            return Err(crate::error::usage(format!(
                "{} does not exist: run `chatmail-docker ini2env` (or `setup`) first, or pass --path DIR",
                env_path.display()
            )));
        }
        let domain = settings.mail_domain.clone();
        let target = locate::locate(ctx, path, &settings)?;
        let (poll, poll_source) = match poll_interval {
            Some(s) => (s, format!("--poll-interval {s}")),
            None => match settings.certs_monitoring_timeout.as_deref() {
                None | Some("") => (60, String::new()),
                Some(v) => (
                    v.trim_matches(['\'', '"']).parse().map_err(|_| {
                        crate::error::usage(format!(
                            "CERTS_MONITORING_TIMEOUT={v} in {} is not a number of seconds; \
                             write e.g. CERTS_MONITORING_TIMEOUT=60",
                            env_path.display()
                        ))
                    })?,
                    format!("CERTS_MONITORING_TIMEOUT={v} in {}", env_path.display()),
                ),
            },
        };
        // Bounded both ways: 0 would spin, and a huge value would overflow
        // the timer's deadline (a panic, not a watcher).
        if !(1..=MAX_POLL_SECS).contains(&poll) {
            return Err(crate::error::usage(format!(
                "{poll_source}: the poll interval must be between 1 and {MAX_POLL_SECS} seconds"
            )));
        }
        Ok(Located {
            target,
            domain,
            poll: Duration::from_secs(poll),
        })
    }
}

impl Settings {
    pub fn resolve(ctx: &Context, args: &Options) -> Result<Settings> {
        let Located {
            target,
            domain,
            poll,
        } = Located::resolve(ctx, args.path.as_deref(), args.poll_interval)?;
        if args.debounce_ms > MAX_DEBOUNCE_MS {
            return Err(crate::error::usage(format!(
                "--debounce-ms {}: the quiet time must be at most {MAX_DEBOUNCE_MS} ms",
                args.debounce_ms
            )));
        }
        for (flag, value, max) in [
            ("--verify-timeout", args.verify_timeout, MAX_VERIFY_SECS),
            ("--reload-timeout", args.reload_timeout, MAX_RELOAD_SECS),
        ] {
            if !(1..=max).contains(&value) {
                return Err(crate::error::usage(format!(
                    "{flag} {value}: must be between 1 and {max} seconds"
                )));
            }
        }
        let verify = if args.no_verify {
            None
        } else {
            Some(verify::parse_ports(&args.verify_ports)?)
        };
        Ok(Settings {
            target,
            domain,
            reloader: match &args.reload_command {
                Some(c) if !c.trim().is_empty() => Reloader::Command(c.clone()),
                Some(_) => {
                    return Err(crate::error::usage(
                        "--reload-command is empty: give a command, or leave the option out to \
                         reload the services in the container",
                    ))
                }
                None => Reloader::Container,
            },
            verify,
            verify_host: args.verify_host.clone(),
            verify_window: Duration::from_secs(args.verify_timeout),
            reload_timeout: Duration::from_secs(args.reload_timeout),
            poll,
            debounce: Duration::from_millis(args.debounce_ms),
        })
    }
}

/// What the files look like right now.
#[derive(Debug)]
pub enum Check {
    /// No usable set of files (directory or a file missing); says why.
    Missing(String),
    /// A complete set, not yet validated.
    Found(Box<Material>),
}

/// Resolve the target and read the files. The [`Walk`] lists the paths and
/// directories involved, for the watcher.
pub fn check(t: &Target) -> (Check, Walk) {
    let mut walk = Walk {
        floor: t.floor.clone(),
        ..Walk::default()
    };
    match walk.resolve(&t.dir, &t.mounts) {
        Ok(Some(d)) if d.is_dir() => {}
        Ok(Some(d)) => {
            return (
                Check::Missing(format!("{} is not a directory", d.display())),
                walk,
            )
        }
        Ok(None) => {
            return (
                Check::Missing(format!("{} does not exist (yet)", t.dir.display())),
                walk,
            )
        }
        Err(e) => return (Check::Missing(format!("{e:#}")), walk),
    }
    // Why a candidate could not be used when it is not simply missing (a
    // symlink loop, a FIFO): added to the message.
    let mut unresolved: Option<String> = None;
    // Resolve each candidate through the unresolved directory path, so every
    // symlink hop on the way is recorded.
    let mut exists = |p: &std::path::Path| match walk.resolve(p, &t.mounts) {
        Ok(Some(real)) if real.is_file() => Some(real),
        Ok(Some(real)) => {
            // There, but not a file to read: say what it is.
            if let Ok(m) = std::fs::metadata(&real) {
                let kind = crate::host::kind_name(rustix::fs::FileType::from_raw_mode(
                    std::os::unix::fs::MetadataExt::mode(&m),
                ));
                unresolved.get_or_insert_with(|| {
                    format!("{} is a {kind}, not a regular file", real.display())
                });
            }
            None
        }
        Ok(None) => None,
        Err(e) => {
            unresolved.get_or_insert_with(|| format!("{e:#}"));
            None
        }
    };
    let found = match &t.files {
        Some((cert, key)) => match (exists(cert), exists(key)) {
            (Some(c), Some(k)) => Ok((vec![c], k)),
            (None, _) => Err(format!("no certificate at {}", cert.display())),
            (_, None) => Err(format!("no private key at {}", key.display())),
        },
        None => material::find_files(&t.dir, &mut exists),
    };
    let found = found.map_err(|why| match unresolved {
        Some(how) => format!("{why}: {how}"),
        None => why,
    });
    let (certs, key) = match found {
        Ok(f) => f,
        Err(why) => return (Check::Missing(why), walk),
    };
    match Material::read(certs, key) {
        Ok(m) => (Check::Found(Box::new(m)), walk),
        Err(e) => (Check::Missing(format!("{e:#}")), walk),
    }
}

/// The result of one reload + verification.
#[derive(Debug)]
pub enum Applied {
    /// Reloaded; `verified` tells whether the served certificate was checked.
    Ok {
        verified: bool,
    },
    /// Try again later (container down).
    Later(String),
    Failed(String),
}

/// Reload into `m` and, unless disabled, check what is served; restart when
/// a reload did not take. Blocking.
pub fn apply(ctx: &Context, s: &Settings, m: &Material, info: &CertInfo) -> Applied {
    let env = reload::CertEnv {
        fingerprint: m.fingerprint.clone(),
        leaf_sha256: info.leaf_sha256.clone(),
        cert_file: m
            .cert_files
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        key_file: m.key_file.display().to_string(),
        not_after: info.not_after_text(),
        domain: s.domain.clone().unwrap_or_default(),
    };
    let started = std::time::Instant::now();
    match reload::run(ctx, &s.reloader, Action::Reload, &env, s.reload_timeout) {
        Outcome::Done(what) => ctx.shell.status(
            "Reloaded",
            format!("{what} in {:.1} s", started.elapsed().as_secs_f64()),
        ),
        Outcome::NotNow(why) => return Applied::Later(why),
        Outcome::Failed(why) => return Applied::Failed(format!("reload failed: {why}")),
    }
    let Some(endpoints) = &s.verify else {
        return Applied::Ok { verified: false };
    };
    let sni = s.domain.as_deref().unwrap_or("localhost");
    let expected = &info.leaf_sha256;
    let report = verify::check_until(&s.verify_host, endpoints, sni, expected, s.verify_window);
    if report.stale(expected).is_empty() {
        return verified(ctx, s, &report, info);
    }
    ctx.shell.warn(format!(
        "still serving the old certificate after the reload: {}; restarting",
        report.summary(expected)
    ));
    match reload::run(ctx, &s.reloader, Action::Restart, &env, s.reload_timeout) {
        Outcome::Done(what) => ctx.shell.status("Restarted", what),
        Outcome::NotNow(why) => return Applied::Later(why),
        Outcome::Failed(why) => return Applied::Failed(format!("restart failed: {why}")),
    }
    let report = verify::check_until(&s.verify_host, endpoints, sni, expected, s.verify_window);
    if report.stale(expected).is_empty() {
        return verified(ctx, s, &report, info);
    }
    Applied::Failed(format!(
        "the services still serve an old certificate after a restart: {}",
        report.summary(expected)
    ))
}

fn verified(ctx: &Context, s: &Settings, report: &verify::Report, info: &CertInfo) -> Applied {
    let expected = &info.leaf_sha256;
    let refused: Vec<String> = report
        .results
        .iter()
        .filter(|(_, r)| *r == verify::Served::Refused)
        .map(|(e, _)| e.to_string())
        .collect();
    let failed: Vec<String> = report
        .results
        .iter()
        .filter_map(|(e, r)| match r {
            verify::Served::Failed(why) => Some(format!("{e}: {why}")),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        ctx.shell.warn(format!(
            "nothing listens on {}:{} (connection refused)",
            s.verify_host,
            refused.join(", ")
        ));
    }
    if !failed.is_empty() {
        ctx.shell
            .warn(format!("could not check {}", failed.join("; ")));
    }
    let ok = report
        .results
        .iter()
        .any(|(_, r)| matches!(r, verify::Served::Leaf(fp) if fp == expected));
    if ok {
        ctx.shell.status(
            "Verified",
            format!(
                "{} serve sha256 {} (expires {})",
                report
                    .results
                    .iter()
                    .filter(|(_, r)| matches!(r, verify::Served::Leaf(_)))
                    .map(|(e, _)| e.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                short(expected),
                info.not_after_text()
            ),
        );
    }
    Applied::Ok { verified: ok }
}

/// Certificates from an ACME client are renewed well before they expire
/// (30 days for Let's Encrypt); one this close to expiry means renewal is
/// failing somewhere.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The warning for `info` when it expires within [`EXPIRY_WARNING`] or has
/// expired.
pub fn expiry_warning(info: &CertInfo) -> Option<String> {
    match info.not_after.duration_since(SystemTime::now()) {
        Ok(left) if left < EXPIRY_WARNING => Some(format!(
            "the certificate expires in {} days ({}); is the ACME client renewing it?",
            left.as_secs() / 86_400,
            info.not_after_text()
        )),
        Ok(_) => None,
        Err(_) => Some(format!(
            "the certificate expired on {}: clients refuse it; is the ACME client renewing it?",
            info.not_after_text()
        )),
    }
}

/// Warn when `info` expires within [`EXPIRY_WARNING`] or has expired;
/// whether it warned.
pub fn warn_if_expiring(ctx: &Context, info: &CertInfo) -> bool {
    expiry_warning(info).map(|w| ctx.shell.warn(w)).is_some()
}

/// [`apply`] and [`record`] under the lock in `data/`, so that concurrent
/// runs (deploy hooks calling `--once`, the watcher) reload a certificate
/// once: after taking the lock the recorded state is read again, and a
/// certificate another run applied meanwhile is not reloaded again.
pub fn apply_exclusive(ctx: &Context, s: &Settings, m: &Material, info: &CertInfo) -> Applied {
    let _lock = match state::lock(ctx) {
        Ok(l) => l,
        Err(e) => return Applied::Failed(format!("{e:#}")),
    };
    if let Some(last) = state::load(ctx).filter(|l| l.fingerprint == m.fingerprint) {
        ctx.shell.status(
            "Unchanged",
            format!(
                "certificate {} was applied meanwhile by another run",
                short(&m.fingerprint)
            ),
        );
        return Applied::Ok {
            verified: last.verified,
        };
    }
    let applied = apply(ctx, s, m, info);
    if let Applied::Ok { verified } = applied {
        if let Err(e) = record(ctx, m, info, verified) {
            return Applied::Failed(format!("{e:#}"));
        }
    }
    applied
}

/// Record `m` as applied.
pub fn record(ctx: &Context, m: &Material, info: &CertInfo, verified: bool) -> Result<()> {
    state::save(
        ctx,
        &state::State {
            fingerprint: m.fingerprint.clone(),
            leaf_sha256: info.leaf_sha256.clone(),
            subject: info.subject.clone(),
            not_after: info.not_after_text(),
            cert_files: m.cert_files.clone(),
            key_file: m.key_file.clone(),
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            verified,
        },
    )
}

/// `chatmail-docker cert-watch`.
pub fn run(ctx: &Context, args: &Options) -> Result<()> {
    let settings = Settings::resolve(ctx, args)?;
    if settings.domain.is_none() {
        ctx.shell.note(format!(
            "MAIL_DOMAIN is not set in {}: the certificate's names are not checked",
            ctx.deployment.env_file().display()
        ));
    }
    ctx.shell.verbose(format!(
        "watching {} ({})",
        settings.target.dir.display(),
        settings.target.origin
    ));
    if ctx.dry_run {
        return dry_run(ctx, &settings);
    }
    if args.once {
        return once(ctx, &settings);
    }
    watch::run(ctx, settings)
}

fn reload_display(ctx: &Context, s: &Settings) -> String {
    match &s.reloader {
        Reloader::Command(c) => format!("sh -c {}", crate::host::shell_quote(c)),
        Reloader::Container => {
            let mut args = vec!["systemctl", "reload"];
            args.extend(reload::UNITS);
            // The container is looked up at each reload.
            format!(
                "{} (CONTAINER: this deployment's {} container)",
                crate::engine::exec_in_cmd(ctx, "CONTAINER", args).display(),
                crate::engine::SERVICE
            )
        }
    }
}

fn dry_run(ctx: &Context, s: &Settings) -> Result<()> {
    ctx.shell.out(format!(
        "cert-watch plan:\n  watch   {} ({})",
        s.target.dir.display(),
        s.target.origin
    ));
    let (check, _) = check(&s.target);
    let last = state::load(ctx);
    match check {
        Check::Missing(why) => ctx.shell.out(format!("  now     {why}")),
        Check::Found(m) => {
            ctx.shell.out(format!(
                "  files   {} + {}",
                m.cert_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" + "),
                m.key_file.display()
            ));
            let valid = match m.validate(s.domain.as_deref(), SystemTime::now()) {
                Ok(info) => {
                    ctx.shell.out(format!(
                        "  cert    {} (expires {}, sha256 {})",
                        info.subject,
                        info.not_after_text(),
                        short(&info.leaf_sha256)
                    ));
                    true
                }
                Err(e) => {
                    ctx.shell.out(format!("  invalid {e:#}"));
                    false
                }
            };
            let changed = last
                .as_ref()
                .map(|l| l.fingerprint != m.fingerprint)
                .unwrap_or(true);
            ctx.shell.out(format!(
                "  state   {}",
                match (changed, valid) {
                    (true, true) => "changed since the last reload: would reload",
                    // Never reloaded into, as the watcher would not either.
                    (true, false) => "changed since the last reload, but invalid: would not reload",
                    (false, _) => "unchanged since the last reload",
                }
            ));
        }
    }
    ctx.shell
        .out(format!("  reload  {}", reload_display(ctx, s)));
    match &s.verify {
        Some(eps) => ctx.shell.out(format!(
            "  verify  {} ports {}",
            s.verify_host,
            eps.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )),
        None => ctx.shell.out("  verify  off (--no-verify)"),
    }
    ctx.shell.out("Dry run: nothing was reloaded or written.");
    Ok(())
}

/// `--once`: reload if the content changed since the last recorded reload.
fn once(ctx: &Context, s: &Settings) -> Result<()> {
    let (check, _) = check(&s.target);
    let m = match check {
        Check::Missing(why) => anyhow::bail!("no certificate to apply: {why}"),
        Check::Found(m) => m,
    };
    let last = state::load(ctx);
    if last
        .as_ref()
        .is_some_and(|l| l.fingerprint == m.fingerprint)
    {
        ctx.shell.status(
            "Unchanged",
            format!("certificate {} already applied", short(&m.fingerprint)),
        );
        // Run from cron, this is the daily reminder of a failing renewal.
        if let Ok(info) = m.info() {
            warn_if_expiring(ctx, &info);
        }
        return Ok(());
    }
    let info = m
        .validate(s.domain.as_deref(), SystemTime::now())
        .context("not reloading")?;
    ctx.shell.status(
        "Changed",
        format!(
            "{} for {} (sha256 {}, expires {})",
            m.cert_files[0].display(),
            info.dns_names.join(","),
            short(&info.leaf_sha256),
            info.not_after_text()
        ),
    );
    warn_if_expiring(ctx, &info);
    // A deploy hook should not hang for ever on a stopped container, but
    // give it a few minutes to come back.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut attempt = 0;
    loop {
        match apply_exclusive(ctx, s, &m, &info) {
            Applied::Ok { .. } => return Ok(()),
            Applied::Failed(why) => anyhow::bail!(why),
            Applied::Later(why) => {
                attempt += 1;
                let pause = reload::backoff(attempt);
                if std::time::Instant::now() + pause > deadline {
                    anyhow::bail!("{why}; gave up, run again when the container is up");
                }
                ctx.shell
                    .warn(format!("{why}; retrying in {} s", pause.as_secs()));
                std::thread::sleep(pause);
            }
        }
    }
}

/// What `status` shows about certificates.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertStatus {
    /// Whether a watcher runs (systemd unit active, or a live pid file).
    pub watcher_running: bool,
    /// How that was found out: "systemd", "pid 1234", or "" when not running.
    pub watcher: String,
    /// The host directory with the certificate.
    pub path: Option<PathBuf>,
    pub subject: Option<String>,
    /// The certificate's issuer (the CA).
    pub issuer: Option<String>,
    /// RFC 3339.
    pub not_after: Option<String>,
    /// Days until expiry (negative when expired).
    pub days_left: Option<i64>,
    /// Content fingerprint of the files on disk.
    pub fingerprint: Option<String>,
    /// Content fingerprint last reloaded into the services.
    pub applied_fingerprint: Option<String>,
    pub applied_at: Option<String>,
    /// Why the certificate could not be read, if it could not.
    pub problem: Option<String>,
}

/// The watcher's and certificate's state, for `chatmail-docker status`.
/// Never fails for a missing certificate: that is reported in `problem`.
pub fn status(ctx: &Context) -> Result<CertStatus> {
    let (watcher_running, watcher) = watcher_state(ctx);
    let last = state::load(ctx);
    let mut st = CertStatus {
        watcher_running,
        watcher,
        path: None,
        subject: None,
        issuer: None,
        not_after: None,
        days_left: None,
        fingerprint: None,
        applied_fingerprint: last.as_ref().map(|l| l.fingerprint.clone()),
        applied_at: last.as_ref().map(|l| l.applied_at.clone()),
        problem: None,
    };
    let located = match Located::resolve(ctx, None, None) {
        Ok(l) => l,
        Err(e) => {
            st.problem = Some(format!("{e:#}"));
            return Ok(st);
        }
    };
    st.path = Some(located.target.dir.clone());
    match check(&located.target).0 {
        Check::Missing(why) => st.problem = Some(why),
        Check::Found(m) => {
            st.fingerprint = Some(m.fingerprint.clone());
            match m.info() {
                Ok(info) => {
                    let secs = info
                        .not_after
                        .duration_since(SystemTime::now())
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
                    st.days_left = Some(secs.div_euclid(86_400));
                    st.subject = Some(info.subject.clone());
                    st.issuer = Some(info.issuer.clone());
                    st.not_after = Some(info.not_after_text());
                    if let Err(e) = m.validate(located.domain.as_deref(), SystemTime::now()) {
                        st.problem = Some(format!("{e:#}"));
                    }
                }
                Err(e) => st.problem = Some(format!("{e:#}")),
            }
        }
    }
    Ok(st)
}

/// Is a watcher running? The systemd unit first, then the pid file (for
/// watchers under another supervisor or in a terminal).
fn watcher_state(ctx: &Context) -> (bool, String) {
    if ctx.host.path("/run/systemd/system").is_dir() {
        let active = ctx
            .host
            .cmd("systemctl", ["is-active", "--quiet", UNIT_NAME])
            .output(&ctx.shell)
            .map(|o| o.success())
            .unwrap_or(false);
        if active {
            return (true, format!("systemd unit {UNIT_NAME}"));
        }
    }
    match watch::live_pid(ctx) {
        Some(pid) => (true, format!("pid {pid}")),
        None => (false, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring_in(secs: i64) -> CertInfo {
        let now = SystemTime::now();
        let not_after = if secs >= 0 {
            now + Duration::from_secs(secs as u64)
        } else {
            now - Duration::from_secs(secs.unsigned_abs())
        };
        CertInfo {
            subject: "CN=example.org".into(),
            issuer: "CN=Test CA".into(),
            not_after,
            leaf_sha256: String::new(),
            dns_names: vec!["example.org".into()],
        }
    }

    #[test]
    fn expiry_warnings_for_soon_and_past_not_for_later() {
        let soon = expiry_warning(&expiring_in(5 * 86_400 + 3_600)).unwrap();
        assert!(
            soon.starts_with("the certificate expires in 5 days"),
            "{soon}"
        );
        let past = expiry_warning(&expiring_in(-86_400)).unwrap();
        assert!(past.starts_with("the certificate expired on"), "{past}");
        assert!(past.contains("clients refuse it"), "{past}");
        assert_eq!(expiry_warning(&expiring_in(30 * 86_400)), None);
    }
}
