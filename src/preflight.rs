//! Preflight: can this host run the appliance?
//!
//! Every check is a small function returning a [`Check`] (ok / warn / fail,
//! a one-line message and a one-line fix). The report is printed as text or
//! as stable JSON. `setup` runs the same checks and stops on any failure;
//! `--skip-check ID` lets an expert skip one, loudly.
//!
//! The checks read the host through the seam (`--root`), so tests build
//! hosts that look like cgroup v1, hybrid or v2 machines from plain files;
//! the one thing a directory cannot fake, the filesystem magic of
//! `/sys/fs/cgroup` (statfs), is read only on the real root and kept in one
//! small function at the edge.

use anyhow::{Context as _, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::compose::{self, Containers};
use crate::deployment::Env;
use crate::host::Captured;
use crate::{error, sysctl, Context};

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
        Check {
            id,
            status: Status::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(id: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            id,
            status: Status::Fail,
            message: message.into(),
            fix: Some(fix.into()),
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
    let loaded = ctx.deployment.load_env();
    let env = match &loaded {
        Ok(Some(env)) => env.clone(),
        _ => Env::new(),
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
            CheckId::CgroupV2 => check_cgroup(ctx),
            CheckId::DockerEngine => check_docker_engine(ctx),
            CheckId::ComposeV2 => check_compose(ctx),
            CheckId::Architecture => check_architecture(std::env::consts::ARCH),
            CheckId::MailDomain => check_mail_domain(ctx, &env),
            CheckId::EnvFile => check_env_file(ctx, loaded.as_ref().err()),
            CheckId::Ports => check_ports(ctx, &env),
            CheckId::DiskSpace => check_disk(ctx),
            CheckId::Inotify => check_inotify(ctx, &opts.inotify_min, opts.inotify_must_pass),
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
        sh.out(format!("[{word}] {:<14} {}", c.id, c.message));
        if let Some(fix) = &c.fix {
            sh.out(format!("{:>23} fix: {fix}", ""));
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

// ---------------------------------------------------------------- cgroups

/// What `/sys/fs/cgroup` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup2 mounted at /sys/fs/cgroup.
    Unified,
    /// v1 controllers at /sys/fs/cgroup/*, cgroup2 only at /sys/fs/cgroup/unified.
    Hybrid,
    /// Only cgroup v1.
    Legacy,
    /// No cgroup mount found at all.
    Unknown,
}

/// Classify the cgroup setup from `/proc/self/mountinfo` text.
///
/// Fields: `id parent major:minor root mountpoint options [optional...] - fstype source superopts`.
pub fn classify_mountinfo(text: &str) -> CgroupMode {
    let mut at_root: Option<String> = None;
    let mut unified_below = false;
    let mut v1 = false;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = left.split_whitespace().nth(4).unwrap_or("");
        let fstype = right.split_whitespace().next().unwrap_or("");
        if mountpoint == "/sys/fs/cgroup" {
            // The last mount on a mountpoint is the visible one.
            at_root = Some(fstype.to_string());
        } else if let Some(sub) = mountpoint.strip_prefix("/sys/fs/cgroup/") {
            if fstype == "cgroup2" && (sub == "unified" || sub == "systemd") {
                unified_below = true;
            } else if fstype == "cgroup" {
                v1 = true;
            }
        }
    }
    match at_root.as_deref() {
        Some("cgroup2") => CgroupMode::Unified,
        _ if unified_below => CgroupMode::Hybrid,
        _ if v1 => CgroupMode::Legacy,
        Some("tmpfs") => CgroupMode::Legacy,
        _ => CgroupMode::Unknown,
    }
}

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The edge: statfs the real /sys/fs/cgroup and say whether it is cgroup2.
fn statfs_is_cgroup2(path: &Path) -> Option<bool> {
    let st = rustix::fs::statfs(path).ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

fn check_cgroup(ctx: &Context) -> Check {
    const ID: &str = CheckId::CgroupV2.id();
    let mountinfo = fs::read_to_string(ctx.host.path("/proc/self/mountinfo")).unwrap_or_default();
    let mut mode = classify_mountinfo(&mountinfo);
    if ctx.host.is_real_root() {
        // The filesystem magic is the authority on the real host.
        match statfs_is_cgroup2(Path::new("/sys/fs/cgroup")) {
            Some(true) => mode = CgroupMode::Unified,
            Some(false) if mode == CgroupMode::Unified => mode = CgroupMode::Unknown,
            _ => {}
        }
    }
    let fix = "boot the host with cgroups v2: add `systemd.unified_cgroup_hierarchy=1` to \
               GRUB_CMDLINE_LINUX in /etc/default/grub, run `update-grub` and reboot \
               (Debian 11+ and Ubuntu 21.10+ use v2 by default)";
    match mode {
        CgroupMode::Unified => Check::ok(ID, "cgroups v2 (cgroup2 mounted at /sys/fs/cgroup)"),
        CgroupMode::Hybrid => Check::fail(
            ID,
            "cgroups are in hybrid mode (v1 controllers, cgroup2 only at /sys/fs/cgroup/unified); the appliance (systemd as PID 1 with `cgroup: host`) is supported on cgroups v2 only",
            fix,
        ),
        CgroupMode::Legacy => Check::fail(
            ID,
            "cgroups v1 only; the appliance (systemd as PID 1 with `cgroup: host`) is supported on cgroups v2 only",
            fix,
        ),
        CgroupMode::Unknown => Check::fail(
            ID,
            "no cgroup2 filesystem at /sys/fs/cgroup",
            fix,
        ),
    }
}

// ---------------------------------------------------------------- docker

/// Whether `docker` is really Podman's docker-compatible CLI.
fn is_podman(version_output: &str) -> bool {
    version_output.to_ascii_lowercase().contains("podman")
}

fn check_docker_engine(ctx: &Context) -> Check {
    const ID: &str = CheckId::DockerEngine.id();
    let install = "install Docker Engine (https://docs.docker.com/engine/install/debian/ or `apt install docker.io`) and start it: `systemctl enable --now docker`";
    if crate::host::which("docker").is_none() {
        if crate::host::which("podman").is_some() {
            return Check::warn(
                ID,
                "no `docker` command, but Podman is installed; Podman is untested with the appliance",
                "install Docker Engine, or install podman-docker and continue at your own risk",
            );
        }
        return Check::fail(ID, "the `docker` command was not found on PATH", install);
    }
    let version = ctx
        .host
        .cmd("docker", ["--version"])
        .output(&ctx.shell)
        .map(|c| c.stdout)
        .unwrap_or_default();
    if is_podman(&version) {
        return Check::warn(
            ID,
            format!(
                "`docker` is Podman ({}); untested with the appliance",
                version.trim()
            ),
            "use Docker Engine for a supported setup",
        );
    }
    match ctx
        .host
        .cmd("docker", ["info", "--format", "{{.ServerVersion}}"])
        .output(&ctx.shell)
    {
        Ok(c) if c.success() && !c.stdout.trim().is_empty() => {
            Check::ok(ID, format!("Docker Engine {} answers", c.stdout.trim()))
        }
        Ok(c) => {
            let why = first_line(&c.stderr);
            let fix = if why.contains("permission denied") {
                "run as root, or add your user to the `docker` group and log in again".to_string()
            } else {
                "start the engine: `systemctl enable --now docker`".to_string()
            };
            Check::fail(ID, format!("the Docker engine does not answer: {why}"), fix)
        }
        Err(e) => Check::fail(ID, format!("cannot run `docker info`: {e:#}"), install),
    }
}

/// Parse `2.40.3`, `v2.40.3`, `Docker Compose version v2.40.3`,
/// `docker-compose version 1.29.2, build unknown` into (major, full).
pub fn parse_compose_version(text: &str) -> Option<(u32, String)> {
    let word = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))?;
    let major = word.split('.').next()?.parse().ok()?;
    Some((major, word.to_string()))
}

fn check_compose(ctx: &Context) -> Check {
    const ID: &str = CheckId::ComposeV2.id();
    let plugin_fix =
        "install Compose v2 as a Docker CLI plugin: `apt install docker-compose-plugin` \
                      (Docker's apt repository), or put the v2 binary at \
                      ~/.docker/cli-plugins/docker-compose (or /usr/local/lib/docker/cli-plugins/)";
    let run = |prog: &str, args: &[&str]| -> Option<Captured> {
        crate::host::which(prog)?;
        ctx.host
            .cmd(prog, args.iter().copied())
            .output(&ctx.shell)
            .ok()
    };
    if let Some(c) = run("docker", &["compose", "version", "--short"]) {
        if c.success() {
            if let Some((major, full)) = parse_compose_version(&c.stdout) {
                if major >= 2 {
                    return Check::ok(ID, format!("Docker Compose {full}"));
                }
                return Check::fail(
                    ID,
                    format!("`docker compose` is version {full}; the appliance needs Compose v2"),
                    plugin_fix,
                );
            }
        }
    }
    if crate::host::which("docker").is_none() && crate::host::which("podman").is_some() {
        if let Some(c) = run("podman", &["compose", "version"]) {
            if c.success() {
                return Check::warn(
                    ID,
                    format!(
                        "Podman compose found ({}); untested with the appliance",
                        first_line(&c.stdout)
                    ),
                    "use Docker Engine with Compose v2 for a supported setup",
                );
            }
        }
    }
    if let Some(c) = run("docker-compose", &["version", "--short"]) {
        if let Some((major, full)) = parse_compose_version(&format!("{}{}", c.stdout, c.stderr)) {
            if major < 2 {
                return Check::fail(
                    ID,
                    format!(
                        "only docker-compose {full} (Compose v1) is installed; the appliance's `cgroup: host` setting is only supported by Compose v2 (`docker compose`)"
                    ),
                    plugin_fix,
                );
            }
            return Check::fail(
                ID,
                format!("docker-compose {full} is installed standalone, but `docker compose` does not work"),
                "make it a CLI plugin: `mkdir -p ~/.docker/cli-plugins && ln -s \"$(command -v docker-compose)\" ~/.docker/cli-plugins/docker-compose`",
            );
        }
    }
    Check::fail(
        ID,
        "Docker Compose v2 (`docker compose`) was not found",
        plugin_fix,
    )
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

// ---------------------------------------------------------------- arch

pub fn check_architecture(arch: &str) -> Check {
    const ID: &str = CheckId::Architecture.id();
    match arch {
        "x86_64" => Check::ok(ID, "amd64"),
        "aarch64" => Check::warn(
            ID,
            "arm64: the relay's install stage downloads amd64 builds of some services (e.g. its dovecot packages, filtermail) and is not tested on arm64",
            "use an amd64 server, or adapt the Dockerfile's package installation for arm64",
        ),
        other => Check::warn(
            ID,
            format!("{other}: the appliance is only built and tested for amd64"),
            "use an amd64 server",
        ),
    }
}

// ---------------------------------------------------------------- domain

/// Validate MAIL_DOMAIN in one of the forms the relay accepts: a DNS name,
/// an IPv4 address ("IP relay"), or a name starting with `_` (test relays
/// with self-signed certificates). Returns the reason it is invalid.
pub fn validate_mail_domain(domain: &str) -> std::result::Result<(), String> {
    if domain.is_empty() {
        return Err("it is empty".into());
    }
    if domain.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if domain.len() > 253 {
        return Err(format!(
            "it is {} characters long (at most 253)",
            domain.len()
        ));
    }
    let name = domain.strip_suffix('.').unwrap_or(domain);
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err("it has an empty label (`..` or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label `{label}` is longer than 63 characters"));
        }
        let body = if i == 0 {
            label.strip_prefix('_').unwrap_or(label)
        } else {
            label
        };
        if body.is_empty()
            || !body.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || body.starts_with('-')
            || body.ends_with('-')
        {
            return Err(format!(
                "the label `{label}` is not a valid DNS label (letters, digits and inner hyphens; an IDN must be written in its xn-- form)"
            ));
        }
    }
    if labels.len() < 2 && !domain.starts_with('_') {
        return Err(
            "it is a single label; use the relay's full domain name, e.g. chat.example.org".into(),
        );
    }
    Ok(())
}

/// Find MAIL_DOMAIN: `.env` first, then `chatmail.ini`'s `[params] mail_domain`.
pub fn mail_domain(ctx: &Context, env: &Env) -> Option<(String, String)> {
    if let Some(d) = env.get("MAIL_DOMAIN") {
        return Some((d.clone(), ".env".into()));
    }
    let ini = ctx.deployment.ini();
    ini_mail_domain(&ini).map(|d| (d, "chatmail.ini".into()))
}

fn ini_mail_domain(path: &Path) -> Option<String> {
    // Read as the relay reads it; a broken file is reported by ini2env.
    let text = crate::ini::read_text(path).ok()?;
    let ini = crate::ini::parse_file(&text, path).ok()?;
    ini.section("params")?
        .get("mail_domain")
        .map(str::to_string)
}

fn check_mail_domain(ctx: &Context, env: &Env) -> Check {
    const ID: &str = CheckId::MailDomain.id();
    match mail_domain(ctx, env) {
        None => Check::fail(
            ID,
            format!(
                "MAIL_DOMAIN is not set (neither in {} nor as mail_domain in {})",
                ctx.deployment.env_file().display(),
                ctx.deployment.ini().display()
            ),
            "set `mail_domain = chat.example.org` under [params] in chatmail.ini, or `MAIL_DOMAIN=chat.example.org` in .env",
        ),
        Some((d, from)) => match validate_mail_domain(&d) {
            Ok(()) => Check::ok(ID, format!("MAIL_DOMAIN={d} (from {from})")),
            Err(why) => Check::fail(
                ID,
                format!("MAIL_DOMAIN `{d}` in {from} is invalid: {why}"),
                "use a DNS name (chat.example.org), an IPv4 address, or a name starting with `_` for test relays",
            ),
        },
    }
}

fn check_env_file(ctx: &Context, unparsable: Option<&anyhow::Error>) -> Check {
    const ID: &str = CheckId::EnvFile.id();
    let path = ctx.deployment.env_file();
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if ctx.deployment.ini().exists() {
                Check::ok(
                    ID,
                    ".env does not exist yet; setup writes it from chatmail.ini",
                )
            } else {
                Check::fail(
                    ID,
                    format!("neither {} nor chatmail.ini exists", path.display()),
                    "create chatmail.ini (`[params]` with `mail_domain = ...`) or copy docker/example.env to .env",
                )
            };
        }
        Err(e) => {
            return Check::fail(
                ID,
                format!("cannot read {}: {e}", path.display()),
                "check its permissions",
            )
        }
    };
    if let Err(e) = fs::File::open(&path) {
        return Check::fail(
            ID,
            format!("cannot read {}: {e}", path.display()),
            "run as the owner of .env or as root",
        );
    }
    if let Some(e) = unparsable {
        return Check::fail(
            ID,
            format!("{e:#}"),
            "correct the line it names (docker/example.env shows the syntax)",
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if ctx.dry_run {
            return Check::warn(
                ID,
                format!("{} has mode {mode:o}; it may hold secrets", path.display()),
                format!("chmod 600 {} (setup does this)", path.display()),
            );
        }
        return match fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
            Ok(()) => {
                ctx.shell.note(format!(
                    "{} was mode {mode:o}, readable by others; changed it to 600",
                    path.display()
                ));
                Check::ok(
                    ID,
                    format!("{} readable, mode 600 (was {mode:o})", path.display()),
                )
            }
            Err(e) => Check::warn(
                ID,
                format!(
                    "{} has mode {mode:o} and could not be changed: {e}",
                    path.display()
                ),
                format!("chmod 600 {}", path.display()),
            ),
        };
    }
    Check::ok(ID, format!("{} readable, mode {mode:o}", path.display()))
}

// ---------------------------------------------------------------- ports

/// A port the appliance binds on the host network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub udp: bool,
    pub what: String,
}

/// The ports the relay binds, with the internal ones taken from the
/// configuration (`filtermail_smtp_port`, ...) when set.
pub fn appliance_ports(env: &Env) -> Vec<Port> {
    let mut ports: Vec<Port> = [
        (25, "SMTP"),
        (80, "HTTP (ACME, redirects)"),
        (143, "IMAP"),
        (443, "HTTPS"),
        (465, "SMTPS"),
        (587, "submission"),
        (993, "IMAPS"),
        (995, "POP3S"),
    ]
    .iter()
    .map(|(p, w)| Port {
        port: *p,
        udp: false,
        what: w.to_string(),
    })
    .collect();
    ports.push(Port {
        port: 3478,
        udp: true,
        what: "TURN (chatmail-turn)".into(),
    });
    for (key, default) in [
        ("FILTERMAIL_SMTP_PORT", 10080),
        ("FILTERMAIL_SMTP_PORT_INCOMING", 10081),
        ("FILTERMAIL_HTTP_PORT_INCOMING", 10082),
        ("FILTERMAIL_LMTP_PORT_TRANSPORT", 10083),
        ("POSTFIX_REINJECT_PORT", 10025),
        ("POSTFIX_REINJECT_PORT_INCOMING", 10026),
    ] {
        let port = env
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default);
        ports.push(Port {
            port,
            udp: false,
            what: format!("{} (localhost)", key.to_ascii_lowercase()),
        });
    }
    ports
}

/// A listening socket from /proc/net/{tcp,tcp6,udp,udp6}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub udp: bool,
    pub inode: u64,
}

/// Parse one /proc/net/{tcp,udp}[6] table: sockets in LISTEN state (tcp,
/// `0A`) or bound (udp, `07` unconnected).
pub fn parse_proc_net(text: &str, udp: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let state = f[3];
        if (!udp && state != "0A") || (udp && state != "07") {
            continue;
        }
        let Some(port_hex) = f[1].rsplit(':').next() else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port_hex, 16), f[9].parse::<u64>()) else {
            continue;
        };
        out.push(Listener { port, udp, inode });
    }
    out
}

/// Map socket inodes to "name (pid N)" by scanning /proc/*/fd.
fn socket_owners(ctx: &Context, inodes: &[u64]) -> BTreeMap<u64, (u32, String)> {
    let mut owners = BTreeMap::new();
    let Ok(procs) = fs::read_dir(ctx.host.path("/proc")) else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let name = fs::read_to_string(p.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                owners.insert(inode, (pid, name));
            }
        }
    }
    owners
}

/// Whether a process belongs to a Docker container named like ours.
fn in_appliance(ctx: &Context, pid: u32, container_id: Option<&str>) -> bool {
    let Some(id) = container_id else {
        return false;
    };
    fs::read_to_string(ctx.host.path(format!("/proc/{pid}/cgroup")))
        .map(|c| c.contains(id))
        .unwrap_or(false)
}

fn running_container_id(ctx: &Context) -> Option<String> {
    if !ctx.deployment.compose_file().exists() || crate::host::which("docker").is_none() {
        return None;
    }
    compose::container_id(ctx, Containers::Running)
        .ok()
        .flatten()
}

fn check_ports(ctx: &Context, env: &Env) -> Check {
    const ID: &str = CheckId::Ports.id();
    let mut listeners = Vec::new();
    for (file, udp) in [
        ("tcp", false),
        ("tcp6", false),
        ("udp", true),
        ("udp6", true),
    ] {
        if let Ok(text) = fs::read_to_string(ctx.host.path(format!("/proc/net/{file}"))) {
            listeners.extend(parse_proc_net(&text, udp));
        }
    }
    let wanted = appliance_ports(env);
    let busy: Vec<(&Port, &Listener)> = wanted
        .iter()
        .filter_map(|p| {
            listeners
                .iter()
                .find(|l| l.port == p.port && l.udp == p.udp)
                .map(|l| (p, l))
        })
        .collect();
    if busy.is_empty() {
        return Check::ok(ID, format!("{} ports free", wanted.len()));
    }
    let inodes: Vec<u64> = busy.iter().map(|(_, l)| l.inode).collect();
    let owners = socket_owners(ctx, &inodes);
    let container = running_container_id(ctx);
    let mut taken = Vec::new();
    let mut ours = 0;
    for (p, l) in &busy {
        let proto = if p.udp { "udp" } else { "tcp" };
        match owners.get(&l.inode) {
            Some((pid, _)) if in_appliance(ctx, *pid, container.as_deref()) => ours += 1,
            Some((pid, name)) => taken.push(format!(
                "{}/{proto} ({}) by {name} (pid {pid})",
                p.port, p.what
            )),
            None if container.is_some() => ours += 1,
            None => taken.push(format!(
                "{}/{proto} ({}) by an unknown process",
                p.port, p.what
            )),
        }
    }
    if taken.is_empty() {
        return Check::ok(
            ID,
            format!("{ours} ports in use by the running appliance, the rest free"),
        );
    }
    Check::warn(
        ID,
        format!("in use: {}", taken.join(", ")),
        "stop the service holding the port (e.g. `systemctl disable --now postfix nginx`), or run `chatmail-docker migrate` for a bare-metal chatmail",
    )
}

// ---------------------------------------------------------------- disk

/// Below this, fail; below `DISK_WARN`, warn.
const DISK_FAIL: u64 = 1 << 30;
const DISK_WARN: u64 = 5 << 30;

fn check_disk(ctx: &Context) -> Check {
    const ID: &str = CheckId::DiskSpace.id();
    let mut dir = ctx.deployment.data();
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    match free_bytes(&dir) {
        Ok(free) => {
            let shown = human_bytes(free);
            if free < DISK_FAIL {
                Check::fail(
                    ID,
                    format!("only {shown} free under {}", dir.display()),
                    "free space or put data/ on a bigger disk (mail, the image and logs need several GB)",
                )
            } else if free < DISK_WARN {
                Check::warn(
                    ID,
                    format!("{shown} free under {}", dir.display()),
                    "plan for more space: mailboxes grow and the image needs about 2 GB",
                )
            } else {
                Check::ok(ID, format!("{shown} free under {}", dir.display()))
            }
        }
        Err(e) => Check::warn(
            ID,
            format!("cannot measure free space: {e:#}"),
            "check `df -h`",
        ),
    }
}

/// Free bytes for an unprivileged user on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

// ---------------------------------------------------------------- inotify

fn check_inotify(ctx: &Context, min: &sysctl::Limits, must_pass: bool) -> Check {
    const ID: &str = CheckId::Inotify.id();
    let live = match sysctl::read_live(&ctx.host) {
        Ok(l) => l,
        Err(e) => return Check::warn(ID, format!("{e:#}"), "check /proc/sys/fs/inotify"),
    };
    let low: Vec<String> = sysctl::KEYS
        .iter()
        .zip([live.max_user_instances, live.max_user_watches])
        .zip([min.max_user_instances, min.max_user_watches])
        .filter(|((_, have), want)| have < want)
        .map(|((k, have), want)| format!("{k}={have} (< {want})"))
        .collect();
    if low.is_empty() {
        return Check::ok(
            ID,
            format!(
                "max_user_instances={} max_user_watches={}",
                live.max_user_instances, live.max_user_watches
            ),
        );
    }
    let msg = format!("too low: {}", low.join(", "));
    let fix = "run `sudo chatmail-docker sysctl` (setup does this)";
    if must_pass {
        Check::fail(ID, msg, fix)
    } else {
        Check::warn(ID, msg, fix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "chat.example.org",
            "c.x",
            "1.2.3.4",
            "_test",
            "_chat.example.org",
            "xn--bcher-kva.example",
            "chat.example.org.",
        ] {
            assert!(validate_mail_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.b",
            "a_b.c",
            "bücher.example",
            "a b.c",
            "a.b-",
        ] {
            assert!(validate_mail_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compose_versions() {
        assert_eq!(parse_compose_version("v2.40.3\n").unwrap().0, 2);
        assert_eq!(parse_compose_version("2.24.0").unwrap().0, 2);
        assert_eq!(
            parse_compose_version("docker-compose version 1.29.2, build unknown").unwrap(),
            (1, "1.29.2".into())
        );
        assert_eq!(
            parse_compose_version("Docker Compose version v2.40.3")
                .unwrap()
                .0,
            2
        );
        assert!(parse_compose_version("garbage").is_none());
    }

    #[test]
    fn proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_proc_net(text, false),
            vec![Listener {
                port: 25,
                udp: false,
                inode: 12345
            }]
        );
    }
}
