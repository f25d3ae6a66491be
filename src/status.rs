//! `chatmail-docker status`: what the administrator sees about a running
//! deployment, as text or `--json`.
//!
//! A report, not a capability: it asks Compose for the container, systemd
//! in the container for the relay's units, [`crate::certwatch`] for the
//! certificate and its watcher, and [`crate::overrides`] for files under
//! `custom/` the container does not see yet. Each part that cannot be read
//! becomes a warning, so `status` still shows the rest.

use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Duration;

use crate::engine::{self, Inspect};
use crate::shell::Shell;
use crate::{context::Context, error, overrides};

/// How to show the report.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Machine-readable JSON instead of text.
    pub json: bool,
}

/// A relay unit's state inside the container, as `status` reports it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct UnitState {
    pub unit: String,
    pub active: String,
    pub enabled: String,
}

/// The states of the relay's units inside the running container.
pub fn unit_states(ctx: &Context) -> Result<Vec<UnitState>> {
    // The units the relay enables (those a timer or path unit starts are
    // idle between runs, not a problem to show).
    let names: Vec<String> = crate::deployment::relay::UNITS
        .iter()
        .filter(|u| !u.triggered)
        .map(|u| u.name.to_string())
        .collect();
    let mut args: Vec<String> = [
        "systemctl",
        "show",
        "-p",
        "Id,LoadState,ActiveState,UnitFileState",
    ]
    .map(String::from)
    .to_vec();
    args.extend(names.iter().cloned());
    let out = engine::exec_output(ctx, args)?;
    if !out.success() {
        bail!(
            "cannot query systemd in the container: {}",
            out.stderr.trim()
        );
    }
    Ok(crate::formats::systemctl::parse_show(&out.stdout, &names)?
        .into_iter()
        .filter(|u| u.exists())
        .map(|u| UnitState {
            unit: u.unit.trim_end_matches(".service").to_string(),
            active: u.active,
            enabled: u.file,
        })
        .collect())
}

/// What `status` reports.
#[derive(Clone, Debug, Serialize, Default)]
pub struct StatusReport {
    pub container: Option<String>,
    pub state: String,
    pub health: Option<String>,
    pub healthy: bool,
    pub image: Option<String>,
    /// The relay release the container runs, and a newer release tag
    /// known in relay/ (no fetch).
    pub relay: Option<crate::upgrade::ReleaseStatus>,
    pub started_at: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub units: Vec<UnitState>,
    /// The TLS certificate and the cert-watch service.
    pub certificate: Option<crate::certwatch::CertStatus>,
    pub warnings: Vec<String>,
}

/// Gather the report. Problems of one part (units, custom/, certificate)
/// become warnings; only a missing compose file or a failing Compose is an
/// error.
pub fn report(ctx: &Context) -> Result<StatusReport> {
    engine::require_compose_file(ctx)?;
    let mut r = StatusReport {
        state: "absent".into(),
        ..Default::default()
    };
    r.warnings.extend(disk_warning(ctx));
    r.warnings.extend(data_root_warning(ctx));
    let Some(c) = engine::current(ctx)? else {
        return Ok(r);
    };
    r.container = Some(c.name.trim_start_matches('/').to_string());
    r.state = c.state.status.clone();
    r.health = c.health_status().map(str::to_string);
    r.healthy = c.state.running && matches!(r.health.as_deref(), Some("healthy") | None);
    r.image = Some(c.config.image.clone());
    r.relay = Some(crate::upgrade::release_status(ctx, &c.image));
    r.started_at = Some(c.state.started_at.clone());
    if c.state.running {
        r.uptime_seconds = engine::parse_time(&c.state.started_at)
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs());
        match unit_states(ctx) {
            Ok(u) => r.units = u,
            Err(e) => r.warnings.push(format!("{e:#}")),
        }
        for u in &r.units {
            // A socket-activated service idles until a request: fine while
            // its socket listens (as the health check has it).
            let socket = format!("{}.socket", u.unit);
            let listening = u.active == "inactive"
                && r.units
                    .iter()
                    .any(|s| s.unit == socket && s.active == "active");
            if u.enabled == "enabled" && u.active != "active" && !listening {
                r.warnings.push(format!("unit {} is {}", u.unit, u.active));
            }
        }
    }
    r.warnings.extend(custom_warnings(ctx, &c));
    match crate::certwatch::status(ctx) {
        Ok(cert) => {
            r.warnings.extend(certificate_warnings(&cert));
            r.certificate = Some(cert);
        }
        Err(e) => r.warnings.push(format!("certificate: {e:#}")),
    }
    Ok(r)
}

/// Below this much free space under `data/`, `status` warns.
const DISK_LOW: u64 = 1 << 30;

/// A warning when the disk holding `data/` (the mail queue, the
/// mailboxes) is nearly full: Postfix then defers mail, and backups and
/// restores into it fail.
fn disk_warning(ctx: &Context) -> Option<String> {
    let data = ctx.deployment.data();
    let at = if data.exists() {
        data
    } else {
        ctx.deployment.dir().to_path_buf()
    };
    let free = crate::host::space::free_bytes(&at).ok()?;
    low_space(
        free,
        &at,
        "",
        "the relay defers mail and backups fail when it is full",
        "",
    )
}

/// A warning when the disk holding Docker's data root is nearly full:
/// the relay's container then cannot write outside `data/`, and a build
/// (`upgrade`, `setup --rebuild`) fails.
fn data_root_warning(ctx: &Context) -> Option<String> {
    let (root, free) = engine::data_root_free(ctx).ok()?;
    low_space(
        free,
        &root,
        "Docker's data root ",
        "builds (`upgrade`, `setup --rebuild`) fail and the relay's container cannot write outside data/",
        "`docker image prune`, `docker builder prune`, ",
    )
}

/// The warning for `free` bytes on the disk of `at` (`what` names it),
/// when below [`DISK_LOW`]: what then fails, and how to free space.
fn low_space(
    free: u64,
    at: &std::path::Path,
    what: &str,
    fails: &str,
    tools: &str,
) -> Option<String> {
    (free < DISK_LOW).then(|| {
        format!(
            "only {} free on the disk of {what}{}: {fails}; free space there ({tools}`df -h {}`), then run the command that failed again",
            crate::host::space::human_bytes(free),
            at.display(),
            at.display()
        )
    })
}

/// `chatmail-docker status`: print the report; exit 1 unless the container
/// exists and is healthy.
pub fn run(ctx: &Context, opts: &Options) -> Result<()> {
    let r = report(ctx)?;
    if opts.json {
        ctx.shell.data(serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&ctx.shell, &r);
    }
    if r.container.is_some() && r.healthy {
        Ok(())
    } else {
        Err(error::silent(error::EXIT_RUNTIME))
    }
}

/// The report for people: one `name: value` line per part, then the warnings.
fn print_text(sh: &Shell, r: &StatusReport) {
    let Some(name) = &r.container else {
        sh.out("container: not created (run `chatmail-docker setup`)");
        return print_warnings(sh, r);
    };
    sh.out(format!("container: {name}"));
    sh.out(format!(
        "state:     {}{}",
        r.state,
        r.uptime_seconds
            .map(|s| format!(
                ", up {}",
                humantime::format_duration(Duration::from_secs(s))
            ))
            .unwrap_or_default()
    ));
    let h = r.health.clone().unwrap_or_else(|| "no health check".into());
    let h = if r.healthy {
        sh.ok_word(&h)
    } else {
        sh.fail_word(&h)
    };
    sh.out(format!("health:    {h}"));
    if let Some(i) = &r.image {
        sh.out(format!("image:     {i}"));
    }
    if let Some(rel) = &r.relay {
        match &rel.running {
            Some(run) => sh.out(format!(
                "relay:     {} ({}){}",
                run.version,
                crate::upgrade::git::short(&run.commit),
                rel.newer
                    .as_ref()
                    .map(|t| format!(", release {t} is newer (`chatmail-docker upgrade`)"))
                    .unwrap_or_default()
            )),
            None => sh.out(
                "relay:     unknown (an image built before labels; `setup --rebuild` adds them)",
            ),
        }
    }
    if let Some(cert) = &r.certificate {
        if let Some(na) = &cert.not_after {
            sh.out(format!(
                "cert:      {} expires {na}{}",
                cert.subject.clone().unwrap_or_default(),
                cert.days_left
                    .map(|d| format!(" ({d} days)"))
                    .unwrap_or_default()
            ));
            if let Some(issuer) = &cert.issuer {
                sh.out(format!("issuer:    {issuer}"));
            }
        }
        sh.out(format!(
            "watcher:   {}",
            if cert.watcher_running {
                format!("running ({})", cert.watcher)
            } else {
                "not running (chatmail-docker cert-watch)".to_string()
            }
        ));
    }
    if !r.units.is_empty() {
        sh.out("units:");
        for u in &r.units {
            let a = if u.active == "active" {
                sh.ok_word(&u.active)
            } else {
                sh.warn_word(&u.active)
            };
            sh.out(format!("  {:<22} {a} ({})", u.unit, u.enabled));
        }
    }
    print_warnings(sh, r);
}

fn print_warnings(sh: &Shell, r: &StatusReport) {
    for w in &r.warnings {
        sh.warn(w);
    }
}

/// What `status` warns about the certificate.
fn certificate_warnings(cert: &crate::certwatch::CertStatus) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(p) = &cert.problem {
        w.push(format!("certificate: {p}"));
    }
    match cert.days_left {
        Some(d) if d < 0 => w.push("the certificate has expired: clients refuse it".to_string()),
        Some(d) if d < 14 => w.push(format!("the certificate expires in {d} days")),
        _ => {}
    }
    w
}

/// Custom files edited since the container started, or added/removed since
/// it was created.
fn custom_warnings(ctx: &Context, c: &Inspect) -> Vec<String> {
    let generated = match overrides::generate(ctx, &overrides::OverrideOptions::default()) {
        Ok(g) => g,
        Err(e) => return vec![format!("cannot check custom/: {e:#}")],
    };
    let mut out = Vec::new();
    if let Some(started) = engine::parse_time(&c.state.started_at) {
        let files = overrides::changed_since_start(&generated, started);
        if !files.is_empty() {
            out.push(format!(
                "changed since the container started (it still sees the old content; run `chatmail-docker up`): {}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let running = c
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get(overrides::HASH_LABEL));
    if running.is_some_and(|h| *h != generated.hash) {
        out.push(
            "files under custom/ were added, removed or changed since the container was created; run `chatmail-docker up`".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_warnings_for_expiry_soon_and_past() {
        let cert = |days_left: Option<i64>| crate::certwatch::CertStatus {
            watcher_running: true,
            watcher: "systemd".into(),
            path: None,
            subject: None,
            issuer: None,
            not_after: None,
            days_left,
            fingerprint: None,
            applied_fingerprint: None,
            applied_at: None,
            problem: None,
        };
        assert!(certificate_warnings(&cert(Some(90))).is_empty());
        assert!(certificate_warnings(&cert(None)).is_empty());
        assert_eq!(
            certificate_warnings(&cert(Some(3))),
            ["the certificate expires in 3 days"]
        );
        assert_eq!(
            certificate_warnings(&cert(Some(-1))),
            ["the certificate has expired: clients refuse it"]
        );
    }
}
