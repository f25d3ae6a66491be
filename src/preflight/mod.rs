//! Preflight: can this host run the appliance?
//!
//! Every check is a small function returning a [`Check`] (ok / warn / fail,
//! a one-line message and a one-line fix), one file per family of checks
//! with the parsing it needs. The report is printed as text or
//! as stable JSON. `setup` runs the same checks and stops on any failure;
//! `--skip-check ID` lets an expert skip one, loudly.
//!
//! The checks read the host through the seam (`--root`), so tests build
//! hosts that look like cgroup v1, hybrid or v2 machines from plain files;
//! the one thing a directory cannot fake, the filesystem magic of
//! `/sys/fs/cgroup` (statfs), is read only on the real root and kept in one
//! small function at the edge.

use crate::shell::Shown as _;
use anyhow::Result;
use serde::Serialize;

use crate::{context::Context, error, sysctl};

mod arch;
mod cgroup;
mod config;
mod disk;
mod docker;
mod inotify;
mod ports;

pub use cgroup::{classify_mountinfo, CgroupMode};
pub use config::{mail_domain, validate_mail_domain};
pub use docker::parse_compose_version;
pub use ports::{appliance_ports, parse_proc_net, Listener, Port};

/// Every check, in report order. The ids are stable: used by
/// `--skip-check` and in the JSON report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckId {
    CgroupV2,
    DockerEngine,
    ComposeV2,
    Architecture,
    MailDomain,
    EnvFile,
    Ports,
    DiskSpace,
    Inotify,
}

impl CheckId {
    pub const ALL: [CheckId; 9] = [
        CheckId::CgroupV2,
        CheckId::DockerEngine,
        CheckId::ComposeV2,
        CheckId::Architecture,
        CheckId::MailDomain,
        CheckId::EnvFile,
        CheckId::Ports,
        CheckId::DiskSpace,
        CheckId::Inotify,
    ];

    pub const fn id(self) -> &'static str {
        match self {
            CheckId::CgroupV2 => "cgroup-v2",
            CheckId::DockerEngine => "docker-engine",
            CheckId::ComposeV2 => "compose-v2",
            CheckId::Architecture => "architecture",
            CheckId::MailDomain => "mail-domain",
            CheckId::EnvFile => "env-file",
            CheckId::Ports => "ports",
            CheckId::DiskSpace => "disk-space",
            CheckId::Inotify => "inotify",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    /// How to fix it, when not ok.
    pub fix: Option<String>,
}

impl Check {
    fn ok(id: &'static str, message: impl Into<String>) -> Check {
        Check {
            id,
            status: Status::Ok,
            message: message.into(),
            fix: None,
        }
    }
    fn warn(id: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::not_ok(id, Status::Warn, message.into(), fix.into())
    }
    fn fail(id: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::not_ok(id, Status::Fail, message.into(), fix.into())
    }
    /// A warning or failure: it says how to fix it.
    fn not_ok(id: &'static str, status: Status, message: String, fix: String) -> Check {
        Check {
            id,
            status,
            message,
            fix: Some(fix),
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }
}

/// Which checks to run and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub skip: Vec<CheckId>,
    /// Minimum inotify values (from `sysctl` options).
    pub inotify_min: sysctl::Limits,
    /// Whether the inotify check is a failure (after tuning, in `setup`) or
    /// only a warning (plain `preflight`, before tuning).
    pub inotify_must_pass: bool,
    /// Leave out the inotify check (setup runs it after tuning).
    pub without_inotify: bool,
}

/// Run every check.
pub fn run_checks(ctx: &Context, opts: &Options) -> Result<Report> {
    // A `.env` that cannot be parsed fails the env-file check; the other
    // checks then see no variables.
    let loaded = ctx.settings();
    let settings = match &loaded {
        Ok(s) => s.as_ref().clone(),
        Err(_) => Default::default(),
    };
    let mut checks = Vec::new();
    for id in CheckId::ALL {
        if id == CheckId::Inotify && opts.without_inotify {
            continue;
        }
        if opts.skip.contains(&id) {
            checks.push(Check {
                id: id.id(),
                status: Status::Skipped,
                message: "skipped on request (--skip-check); the appliance may not work".into(),
                fix: None,
            });
            continue;
        }
        let check = match id {
            CheckId::CgroupV2 => cgroup::check_cgroup(ctx),
            CheckId::DockerEngine => docker::check_docker_engine(ctx),
            CheckId::ComposeV2 => docker::check_compose(ctx),
            CheckId::Architecture => arch::check_architecture(std::env::consts::ARCH),
            CheckId::MailDomain => config::check_mail_domain(ctx, &settings),
            CheckId::EnvFile => config::check_env_file(ctx, loaded.as_ref().err()),
            CheckId::Ports => ports::check_ports(ctx, &settings.vars),
            CheckId::DiskSpace => disk::check_disk(ctx),
            CheckId::Inotify => {
                inotify::check_inotify(ctx, &opts.inotify_min, opts.inotify_must_pass)
            }
        };
        checks.push(check);
    }
    let ok = !checks.iter().any(|c| c.status == Status::Fail);
    Ok(Report { ok, checks })
}

/// Print a report as text.
pub fn print_report(ctx: &Context, report: &Report) {
    let sh = &ctx.shell;
    for c in &report.checks {
        let word = match c.status {
            Status::Ok => sh.ok_word("  ok  "),
            Status::Warn => sh.warn_word(" warn "),
            Status::Fail => sh.fail_word(" FAIL "),
            Status::Skipped => sh.warn_word(" skip "),
        };
        // One line each: a value in the message cannot start another.
        sh.out(format!("[{word}] {:<14} {}", c.id, c.message.shown()));
        if let Some(fix) = &c.fix {
            sh.out(format!("{:>23} fix: {}", "", fix.shown()));
        }
    }
    for c in &report.checks {
        if c.status == Status::Skipped {
            sh.warn(format!(
                "check `{}` was SKIPPED (--skip-check); you are on your own if the appliance misbehaves",
                c.id
            ));
        }
    }
}

/// What `chatmail-docker preflight` checks and how it prints the report.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub skip: Vec<CheckId>,
    /// Machine-readable JSON instead of text.
    pub json: bool,
}

/// `chatmail-docker preflight`.
pub fn run(ctx: &Context, run: &RunOptions) -> Result<()> {
    let opts = Options {
        skip: run.skip.clone(),
        inotify_min: sysctl::Limits::default(),
        inotify_must_pass: false,
        without_inotify: false,
    };
    let report = run_checks(ctx, &opts)?;
    if run.json {
        ctx.shell.data(serde_json::to_string_pretty(&report)?);
    } else {
        print_report(ctx, &report);
    }
    if report.ok {
        Ok(())
    } else if run.json {
        Err(error::silent(error::EXIT_PREFLIGHT))
    } else {
        let ids: Vec<&str> = report.failed().iter().map(|c| c.id).collect();
        Err(error::preflight(format!(
            "preflight failed: {}",
            ids.join(", ")
        )))
    }
}
