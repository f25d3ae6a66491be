//! The compose project: which files, which `.env`, which project name, and
//! running `docker compose` with them: the container's id and state, `exec`
//! with captured output, the health wait, and the commands that pass
//! straight through (`down`, `restart`, `logs`, `exec`). It knows Compose
//! and the deployment's files, nothing of the capabilities above it.
//!
//! # One deployment, one container
//!
//! The project name is fixed ([`PROJECT_NAME`], also `name:` in the
//! appliance's compose file): only one relay per host can bind the mail
//! ports anyway, and an administrator's `docker compose -p chatmail ...`
//! keeps finding the container whatever the directory is called. A fixed
//! name also means that Compose, asked from any directory, answers with
//! the one `chatmail` container on the engine, which may belong to
//! another deployment directory. So every command that acts on the
//! container first checks whose it is: Compose records the project
//! directory on the container as the label [`WORKING_DIR_LABEL`] (the
//! absolute `--project-directory`, lexically cleaned, symlinks kept), and
//! a container whose label names another directory (compared with
//! symlinks resolved) is never touched: [`container`] (the service's) and
//! [`ensure_ours`] (every container of the project, before `up`, `down`,
//! `restart`, `logs`, `exec`) fail with an error naming it, its directory
//! and `--dir`. [`find`] reports it without failing, for the ports check.
//!
//! Deriving the project name from the directory instead would let two
//! deployments' containers coexist, but both would bind the same ports,
//! and `docker compose -p chatmail` would no longer find the appliance.

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::{Captured, Cmd};
use crate::{error, Context};

/// Compose project name: fixed, so the directory's name does not matter
/// (see the module documentation for why, and how other deployments'
/// containers are kept apart).
pub const PROJECT_NAME: &str = "chatmail";
/// The label on which Compose records the project directory of a container.
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
/// The one service of the appliance.
pub const SERVICE: &str = "chatmail";

/// The files and settings `docker compose` is run with.
#[derive(Clone, Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub env_file: PathBuf,
}

impl Project {
    /// The project for a deployment directory: the appliance's compose file,
    /// the generated override when present, then the user's override.
    pub fn new(ctx: &Context) -> Project {
        let d = &ctx.deployment;
        let mut files = vec![d.compose_file()];
        let generated = d.generated_file();
        if generated.exists() {
            files.push(generated);
        }
        files.extend(d.user_overrides());
        Project {
            dir: d.dir().to_path_buf(),
            files,
            env_file: d.env_file(),
        }
    }

    /// `docker compose <global options> <args>`.
    pub fn cmd<I, S>(&self, ctx: &Context, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = ctx.host.cmd("docker", ["compose"]);
        cmd = cmd.args(["--project-name", PROJECT_NAME]);
        cmd = cmd.arg("--project-directory").arg(&self.dir);
        for f in &self.files {
            cmd = cmd.arg("--file").arg(f);
        }
        if self.env_file.exists() {
            cmd = cmd.arg("--env-file").arg(&self.env_file);
        }
        cmd.args(args).dir(&self.dir)
    }
}

/// The project's configuration as Compose merges it
/// (`docker compose config --format json`): variables interpolated, paths
/// absolute, the override files applied.
pub fn config_json(ctx: &Context) -> Result<serde_json::Value> {
    let out = Project::new(ctx)
        .cmd(ctx, ["config", "--format", "json"])
        .output(&ctx.shell)?;
    if !out.success() {
        bail!("`docker compose config` failed: {}", out.stderr.trim());
    }
    serde_json::from_str(&out.stdout).context("cannot parse `docker compose config --format json`")
}

// ---------------------------------------------------------------- mounts

/// A path in the container that a compose file mounts something at: a
/// bind mount, a volume or a tmpfs of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedMount {
    /// Absolute path in the container, without a trailing `/`.
    pub target: String,
    /// What is mounted there, for messages: `the tmpfs`, `the bind mount of
    /// ./data/chatmail`, `the volume acme`.
    pub what: String,
    /// The compose file that mounts it.
    pub file: PathBuf,
}

/// The service's mounts and tmpfs in the compose files the administrator
/// and the appliance wrote (the generated override is left out: it is
/// made from these). Read from the files, in order, as Compose merges
/// them: `!reset` and `!override` on `volumes` or `tmpfs` drop what the
/// files before said. Variables in paths are not interpolated. A missing
/// file is skipped; one that is not YAML is an error naming it.
pub fn claimed_mounts(files: &[PathBuf]) -> Result<Vec<ClaimedMount>> {
    let mut out: Vec<(&'static str, ClaimedMount)> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(error::usage(format!("cannot read {}: {e}", file.display()))),
        };
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
            error::usage(format!(
                "{} is not a valid compose file: {e}",
                file.display()
            ))
        })?;
        let Some(service) = doc.get("services").and_then(|s| s.get(SERVICE)) else {
            continue;
        };
        for key in ["volumes", "tmpfs"] {
            let Some(value) = service.get(key) else {
                continue;
            };
            let value = match value {
                serde_yaml::Value::Tagged(t) => {
                    let tag = t.tag.to_string();
                    if tag == "!reset" || tag == "!override" {
                        out.retain(|(k, _)| *k != key);
                    }
                    &t.value
                }
                v => v,
            };
            let entries: Vec<&serde_yaml::Value> = match value {
                serde_yaml::Value::Sequence(seq) => seq.iter().collect(),
                serde_yaml::Value::Null => Vec::new(),
                one => vec![one],
            };
            for entry in entries {
                if let Some((target, what)) = mount_entry(key, entry) {
                    // `/var/lib/./acme/` is `/var/lib/acme`.
                    let target = crate::host::normalize(Path::new(&target))
                        .to_string_lossy()
                        .into_owned();
                    let target = match target.trim_end_matches('/') {
                        "" => "/".to_string(),
                        t => t.to_string(),
                    };
                    out.push((
                        key,
                        ClaimedMount {
                            target,
                            what,
                            file: file.clone(),
                        },
                    ));
                }
            }
        }
    }
    Ok(out.into_iter().map(|(_, m)| m).collect())
}

/// The target and description of one `volumes` or `tmpfs` entry, short or
/// long syntax.
fn mount_entry(key: &str, entry: &serde_yaml::Value) -> Option<(String, String)> {
    if let Some(s) = entry.as_str() {
        if key == "tmpfs" {
            // `/run` or `/run:size=64m`
            let target = s.split(':').next().unwrap_or(s);
            return Some((target.to_string(), "the tmpfs".into()));
        }
        // `SOURCE:TARGET[:MODE]` or `TARGET` (an anonymous volume).
        let parts: Vec<&str> = s.split(':').collect();
        return match parts.as_slice() {
            [target] => Some((target.to_string(), "an anonymous volume".into())),
            [source, target, ..] => Some((target.to_string(), describe(None, source))),
            [] => None,
        };
    }
    let target = entry.get("target")?.as_str()?;
    let kind = entry.get("type").and_then(|t| t.as_str());
    let source = entry.get("source").and_then(|t| t.as_str()).unwrap_or("");
    Some((target.to_string(), describe(kind, source)))
}

fn describe(kind: Option<&str>, source: &str) -> String {
    let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    match kind {
        Some("tmpfs") => "the tmpfs".into(),
        Some("bind") => format!("the bind mount of {source}"),
        Some("volume") | None if !source.is_empty() && !bind => format!("the volume {source}"),
        None if bind => format!("the bind mount of {source}"),
        Some(k) => format!("a {k} mount"),
        None => "an anonymous volume".into(),
    }
}

// ---------------------------------------------------------------- signals

/// Whether SIGINT/SIGTERM/SIGHUP arrived since `since` (a count from
/// [`signal_count`]); see [`crate::host::interrupt`].
pub fn interrupted_since(since: usize) -> bool {
    crate::host::interrupt::since(since)
}

/// Signals so far (the first call starts counting them).
pub fn signal_count() -> usize {
    crate::host::interrupt::count()
}

/// Run a command with inherited stdio, forwarding SIGTERM/SIGHUP (and SIGINT
/// when it did not come from the terminal, which delivers it to the child
/// itself) to the child. Returns the child's exit code.
pub fn run_forwarding(ctx: &Context, cmd: &Cmd) -> Result<i32> {
    use std::io::IsTerminal;
    let seen = signal_count();
    let handle = cmd
        .expr(&ctx.shell)
        .unchecked()
        .start()
        .with_context(|| format!("could not start `{}`", cmd.display()))?;
    let pids = handle.pids();
    let tty = std::io::stdin().is_terminal();
    let mut forwarded = seen;
    loop {
        if let Some(out) = handle.try_wait()? {
            use std::os::unix::process::ExitStatusExt;
            let st = out.status;
            return Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
        }
        let now = signal_count();
        if now > forwarded {
            forwarded = now;
            let sig = crate::host::interrupt::last_signal();
            if !(sig == libc::SIGINT && tty) {
                for pid in &pids {
                    // SAFETY: kill(2) with a pid we started; no memory involved.
                    unsafe {
                        libc::kill(*pid as libc::pid_t, sig);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a command with inherited output in a process group of its own: a
/// Ctrl-C at the terminal does not reach it, and no signal is forwarded.
/// For steps that must finish once begun. A non-zero exit is an error.
pub fn run_shielded(ctx: &Context, cmd: &Cmd) -> Result<()> {
    let code = cmd.status_shielded(&ctx.shell)?;
    if code != 0 {
        return Err(error::Failure {
            code: error::EXIT_RUNTIME,
            message: Some(format!(
                "`{}` failed with exit status {code}",
                cmd.display()
            )),
        }
        .into());
    }
    Ok(())
}

/// Run a command streaming its output (see [`run_forwarding`]); a non-zero
/// exit is an error.
pub fn run_checked(ctx: &Context, cmd: &Cmd) -> Result<()> {
    let code = run_forwarding(ctx, cmd)?;
    if code != 0 {
        return Err(error::Failure {
            code: if code > 128 {
                code
            } else {
                error::EXIT_RUNTIME
            },
            message: Some(format!(
                "`{}` failed with exit status {code}",
                cmd.display()
            )),
        }
        .into());
    }
    Ok(())
}

/// Fail with a clear message when the appliance's compose file is missing.
pub fn require_compose_file(ctx: &Context) -> Result<()> {
    let f = ctx.deployment.compose_file();
    if !f.exists() {
        return Err(error::usage(format!(
            "{} not found: {} is not a chatmail-docker deployment directory (use --dir, or run from the repository checkout)",
            f.display(),
            ctx.deployment.dir().display()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- container state

/// The container's state as `docker inspect` reports it.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    pub id: String,
    pub name: String,
    pub state: State,
    pub config: Config,
    pub image: String,
    /// What the container mounts (`Type`, `Source`, `Destination`, ...).
    #[serde(default)]
    pub mounts: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    pub status: String,
    pub running: bool,
    pub started_at: String,
    pub exit_code: i64,
    pub health: Option<Health>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub log: Option<Vec<HealthLog>>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct HealthLog {
    pub exit_code: i64,
    pub output: String,
    /// When the check ran (RFC 3339).
    #[serde(default)]
    pub start: String,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    pub image: String,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

impl Inspect {
    /// The container's name without Docker's leading `/`.
    pub fn display_name(&self) -> &str {
        self.name.trim_start_matches('/')
    }

    /// The project directory Compose recorded on the container.
    pub fn working_dir(&self) -> Option<&str> {
        self.config
            .labels
            .as_ref()?
            .get(WORKING_DIR_LABEL)
            .map(String::as_str)
            .filter(|d| !d.is_empty())
    }

    pub fn health_status(&self) -> Option<&str> {
        self.state.health.as_ref().map(|h| h.status.as_str())
    }
    pub fn last_health_output(&self) -> Option<String> {
        let log = self.state.health.as_ref()?.log.as_ref()?;
        log.last().map(|l| l.output.trim().to_string())
    }

    /// The reason the in-container init recorded for a failed start, from a
    /// health check of this start (a restarted container keeps the checks
    /// of its previous run).
    pub fn init_failure(&self) -> Option<String> {
        let started = parse_time(&self.state.started_at)?;
        let last = self.state.health.as_ref()?.log.as_ref()?.last()?;
        let out = last.output.trim();
        (out.starts_with("init failed") && parse_time(&last.start).is_some_and(|t| t >= started))
            .then(|| out.to_string())
    }
}

/// Which containers [`container_id`] asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containers {
    /// The service's container in any state.
    Any,
    /// Only a running one.
    Running,
}

/// The id of the project's service container, whoever it belongs to
/// (`docker compose ps`).
fn project_container_id(ctx: &Context, which: Containers) -> Result<Option<String>> {
    let args = match which {
        Containers::Any => ["ps", "--all", "--quiet", SERVICE].as_slice(),
        Containers::Running => &["ps", "--status", "running", "--quiet", SERVICE],
    };
    let out = Project::new(ctx).cmd(ctx, args).output(&ctx.shell)?;
    if !out.success() {
        bail!("`docker compose ps` failed: {}", out.stderr.trim());
    }
    Ok(out
        .stdout
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// Whose a container of the project is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This deployment directory's.
    This,
    /// Another deployment directory's (as Compose recorded it), or, when
    /// the label is missing, no directory's.
    Other(Option<PathBuf>),
}

/// The project's container and whose it is.
#[derive(Clone, Debug)]
pub struct Found {
    pub container: Inspect,
    pub owner: Owner,
}

impl Found {
    pub fn is_ours(&self) -> bool {
        self.owner == Owner::This
    }

    /// The error for acting on another deployment's container: what it is,
    /// whose it is, and how to act on it instead.
    pub fn foreign_error(&self, ctx: &Context) -> anyhow::Error {
        let name = self.container.display_name();
        let here = ctx.deployment.dir().display();
        let msg = match &self.owner {
            Owner::This => format!("the container {name} belongs to {here}"),
            Owner::Other(Some(dir)) if !dir.join(crate::deployment::COMPOSE_FILE).exists() => format!(
                "the container {name} (Compose project `{PROJECT_NAME}`) belongs to the deployment in {dir}, not to {here}; nothing was done to it.\n\
                 {dir} holds no deployment any more ({} is missing): look at the container with `docker inspect {name}`, \
                 and remove it by hand if it is no longer wanted (`docker rm -f {name}`; its data stays where it is)",
                crate::deployment::COMPOSE_FILE,
                dir = dir.display()
            ),
            Owner::Other(Some(dir)) => format!(
                "the container {name} (Compose project `{PROJECT_NAME}`) belongs to the deployment in {dir}, not to {here}; nothing was done to it.\n\
                 To act on it: `chatmail-docker --dir {dir} COMMAND`. One relay per host (it binds the mail ports): \
                 to run this one instead, first `chatmail-docker --dir {dir} down`",
                dir = dir.display()
            ),
            Owner::Other(None) => format!(
                "the container {name} (Compose project `{PROJECT_NAME}`) has no {WORKING_DIR_LABEL} label, so it belongs to no known deployment directory (not to {here}); nothing was done to it.\n\
                 Look at it with `docker inspect {name}` and remove it by hand if it is yours (`docker rm -f {name}`)"
            ),
        };
        error::usage(msg)
    }
}

/// Whether two directories are the same: equal as written, or with
/// symlinks resolved (Compose records the path as it was given).
pub fn same_dir(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Whose `c` is, from the label Compose records the project directory in.
pub fn owner_of(c: &Inspect, dir: &Path) -> Owner {
    match c.working_dir() {
        Some(wd) if same_dir(Path::new(wd), dir) => Owner::This,
        Some(wd) => Owner::Other(Some(PathBuf::from(wd))),
        None => Owner::Other(None),
    }
}

/// The project's service container, whoever it belongs to; `None` when
/// there is none. Never fails because of whose it is (see [`container`]).
pub fn find(ctx: &Context, which: Containers) -> Result<Option<Found>> {
    let Some(id) = project_container_id(ctx, which)? else {
        return Ok(None);
    };
    let container = inspect(ctx, &id)?;
    let owner = owner_of(&container, ctx.deployment.dir());
    Ok(Some(Found { container, owner }))
}

/// This deployment's container, if it exists; another deployment's is an
/// error naming it (see the module documentation).
pub fn container(ctx: &Context, which: Containers) -> Result<Option<Inspect>> {
    match find(ctx, which)? {
        None => Ok(None),
        Some(f) if f.is_ours() => Ok(Some(f.container)),
        Some(f) => Err(f.foreign_error(ctx)),
    }
}

/// The id of this deployment's container, if there is one; another
/// deployment's is an error naming it.
pub fn container_id(ctx: &Context, which: Containers) -> Result<Option<String>> {
    Ok(container(ctx, which)?.map(|c| c.id))
}

/// Before a command that acts on the project (`up`, `down`, `restart`,
/// `logs`, `exec`, `setup`): fail when a container of the project belongs
/// to another deployment. Every container of the project counts, not only
/// the service's: `down` and `up --remove-orphans` remove the others too
/// (a service another directory's override adds). When Compose cannot be
/// asked, the command itself will say why, so that is left to it.
pub fn ensure_ours(ctx: &Context) -> Result<()> {
    match project_containers(ctx) {
        Ok(all) => match all.into_iter().find(|f| !f.is_ours()) {
            Some(f) => Err(f.foreign_error(ctx)),
            None => Ok(()),
        },
        Err(e) => {
            ctx.shell
                .verbose(format!("cannot check whose the containers are: {e:#}"));
            Ok(())
        }
    }
}

/// Every container of the project, orphans (services the files do not
/// declare) included, and whose each is.
fn project_containers(ctx: &Context) -> Result<Vec<Found>> {
    let out = Project::new(ctx)
        .cmd(ctx, ["ps", "--all", "--quiet"])
        .output(&ctx.shell)?;
    if !out.success() {
        bail!("`docker compose ps` failed: {}", out.stderr.trim());
    }
    let ids: Vec<&str> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = ctx
        .host
        .cmd("docker", ["inspect"].into_iter().chain(ids.iter().copied()))
        .output(&ctx.shell)?;
    if !out.success() {
        bail!("`docker inspect` failed: {}", out.stderr.trim());
    }
    let list: Vec<Inspect> =
        serde_json::from_str(&out.stdout).context("cannot parse `docker inspect` output")?;
    Ok(list
        .into_iter()
        .map(|container| {
            let owner = owner_of(&container, ctx.deployment.dir());
            Found { container, owner }
        })
        .collect())
}

/// `docker compose exec -T chatmail ARGS`: a command in the container, no
/// terminal, for output that is read rather than shown.
pub fn exec_cmd<I, S>(ctx: &Context, args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut all: Vec<OsString> = vec!["exec".into(), "-T".into(), SERVICE.into()];
    all.extend(args.into_iter().map(Into::into));
    Project::new(ctx).cmd(ctx, all)
}

/// Run [`exec_cmd`] and capture what it prints; a non-zero exit is not an
/// error here (the caller reads it).
pub fn exec_output<I, S>(ctx: &Context, args: I) -> Result<Captured>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    exec_cmd(ctx, args).output(&ctx.shell)
}

pub fn inspect(ctx: &Context, id: &str) -> Result<Inspect> {
    let out = ctx.host.cmd("docker", ["inspect", id]).output(&ctx.shell)?;
    if !out.success() {
        bail!("`docker inspect {id}` failed: {}", out.stderr.trim());
    }
    let mut list: Vec<Inspect> =
        serde_json::from_str(&out.stdout).context("cannot parse `docker inspect` output")?;
    list.pop().context("`docker inspect` returned nothing")
}

/// This deployment's container, if it exists (another deployment's is an
/// error naming it).
pub fn current(ctx: &Context) -> Result<Option<Inspect>> {
    container(ctx, Containers::Any)
}

/// The last `n` log lines of the service.
pub fn last_logs(ctx: &Context, n: usize) -> String {
    Project::new(ctx)
        .cmd(
            ctx,
            ["logs", "--no-color", "--tail", &n.to_string(), SERVICE],
        )
        .output(&ctx.shell)
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default()
}

/// Wait until the container is healthy, with a spinner; on failure print the
/// last 50 log lines and the failing health check output.
pub fn wait_healthy(ctx: &Context, timeout: Duration) -> Result<Inspect> {
    wait_for_health(ctx, timeout, true)
}

/// [`wait_healthy`]; with `interruptible` false a signal does not stop the
/// wait and no log lines are printed on failure (the caller decides what
/// to show: an upgrade rolls back first).
pub fn wait_for_health(ctx: &Context, timeout: Duration, interruptible: bool) -> Result<Inspect> {
    let since = if interruptible {
        signal_count()
    } else {
        usize::MAX
    };
    let start = Instant::now();
    let bar = ctx.shell.progress_allowed().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let result = (|| -> Result<Inspect> {
        // The container keeps its id while it starts (restarts included), so
        // ask Compose once and only `docker inspect` it in the loop.
        let Some(id) = container_id(ctx, Containers::Any)? else {
            bail!("the container does not exist (did `docker compose up` fail?)");
        };
        loop {
            let c = inspect(ctx, &id)?;
            let elapsed = start.elapsed();
            let health = c.health_status().unwrap_or("none").to_string();
            if let Some(b) = &bar {
                b.set_message(format!(
                    "waiting for the appliance: {} / health {} ({}s)",
                    c.state.status,
                    health,
                    elapsed.as_secs()
                ));
            }
            if !c.state.running {
                bail!(
                    "the container stopped (status {}, exit code {})",
                    c.state.status,
                    c.state.exit_code
                );
            }
            // The init records a failed deploy for the health check; Docker
            // still says "starting" during the start period, but nothing
            // will change until the configuration does.
            if let Some(reason) = c.init_failure() {
                bail!("the appliance did not start: {reason}");
            }
            match health.as_str() {
                "healthy" | "none" => return Ok(c),
                "unhealthy" => bail!(
                    "the container is unhealthy: {}",
                    c.last_health_output().unwrap_or_default()
                ),
                _ => {}
            }
            if elapsed >= timeout {
                bail!(
                    "the container did not become healthy within {}s (health: {health}{}); raise --wait-timeout if the first start is slow",
                    timeout.as_secs(),
                    c.last_health_output()
                        .map(|o| format!(", last check: {o}"))
                        .unwrap_or_default()
                );
            }
            if interruptible && interrupted_since(since) {
                return Err(crate::host::interrupt::interrupted(
                    "interrupted while waiting; the container keeps starting (see `chatmail-docker status`)",
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Err(e) = &result {
        if interruptible && error::exit_code(e) != error::EXIT_INTERRUPTED {
            let logs = last_logs(ctx, 50);
            if !logs.trim().is_empty() {
                ctx.shell.error("last 50 log lines of the appliance:");
                for l in logs.lines() {
                    ctx.shell.data(format!("  | {l}"));
                }
            }
        }
    }
    result
}

/// Parse docker's RFC 3339 timestamp into a SystemTime.
pub fn parse_time(ts: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(ts.trim_end_matches('Z').split('.').next()?).ok()
}

// ---------------------------------------------------------------- commands

/// The image names the compose files give the services (`config --images`).
pub fn image_names(ctx: &Context) -> Result<Vec<String>> {
    let out = Project::new(ctx)
        .cmd(ctx, ["config", "--images"])
        .output(&ctx.shell)?;
    if !out.success() {
        return Err(error::usage(format!(
            "docker compose cannot read the configuration: {}",
            out.stderr.trim()
        )));
    }
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `docker image inspect --format FORMAT image`, trimmed; None when the
/// image does not exist.
pub fn image_inspect(ctx: &Context, image: &str, format: &str) -> Result<Option<String>> {
    let out = ctx
        .host
        .cmd("docker", ["image", "inspect", "--format", format, image])
        .output(&ctx.shell)?;
    Ok(out.success().then(|| out.stdout.trim().to_string()))
}

/// The ID of the image `name` (`sha256:...`), or None when there is none.
pub fn image_id(ctx: &Context, name: &str) -> Result<Option<String>> {
    image_inspect(ctx, name, "{{.Id}}")
}

/// `docker compose up -d` with extra environment for this run only.
pub fn up_cmd(ctx: &Context, env: &[(&str, String)], force_recreate: bool) -> Cmd {
    let mut args = vec!["up", "--detach", "--remove-orphans"];
    if force_recreate {
        args.push("--force-recreate");
    }
    args.push(SERVICE);
    let mut cmd = Project::new(ctx).cmd(ctx, args);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd
}

pub fn down(ctx: &Context) -> Result<()> {
    require_compose_file(ctx)?;
    ensure_ours(ctx)?;
    let cmd = Project::new(ctx).cmd(ctx, ["down"]);
    if ctx
        .run_or_show(&cmd, " (data/ is kept)", |cmd| run_checked(ctx, cmd))?
        .is_some()
    {
        ctx.shell.status("Stopped", "the appliance; data/ is kept");
    }
    Ok(())
}

pub fn restart(ctx: &Context) -> Result<()> {
    require_compose_file(ctx)?;
    ensure_ours(ctx)?;
    let cmd = Project::new(ctx).cmd(ctx, ["restart", SERVICE]);
    ctx.run_or_show(&cmd, "", |cmd| run_checked(ctx, cmd))?;
    Ok(())
}

/// What `logs` shows.
#[derive(Clone, Debug, Default)]
pub struct LogsOptions {
    /// Keep following the output.
    pub follow: bool,
    /// Lines from the end (Compose's `--tail`: a number or `all`).
    pub tail: Option<String>,
}

pub fn logs(ctx: &Context, a: &LogsOptions) -> Result<()> {
    require_compose_file(ctx)?;
    ensure_ours(ctx)?;
    let mut args: Vec<String> = vec!["logs".into()];
    if a.follow {
        args.push("--follow".into());
    }
    if let Some(t) = &a.tail {
        args.push("--tail".into());
        args.push(t.clone());
    }
    args.push(SERVICE.into());
    let code = run_forwarding(ctx, &Project::new(ctx).cmd(ctx, args))?;
    match code {
        0 | error::EXIT_INTERRUPTED => Ok(()),
        c => Err(error::silent(c)),
    }
}

/// Run `command` in the container with the terminal attached.
pub fn exec(ctx: &Context, command: &[String]) -> Result<()> {
    require_compose_file(ctx)?;
    ensure_ours(ctx)?;
    use std::io::IsTerminal;
    let mut args: Vec<String> = vec!["exec".into()];
    if !std::io::stdin().is_terminal() {
        args.push("-T".into());
    }
    args.push(SERVICE.into());
    args.extend(command.iter().cloned());
    let code = run_forwarding(ctx, &Project::new(ctx).cmd(ctx, args))?;
    if code == 0 {
        Ok(())
    } else {
        Err(error::silent(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_mounts_of_the_appliance_and_an_override() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.yaml");
        let over = d.path().join("override.yaml");
        std::fs::write(
            &base,
            "services:\n  chatmail:\n    tmpfs:\n      - /tmp\n      - /run:size=64m\n    volumes:\n      - ./data/a:/home\n      - type: bind\n        source: ./data/b\n        target: /var/lib/./acme/\n      - acme:/srv/vol:ro\n      - /anon\n      - type: tmpfs\n        target: /var/cache/x\n  other:\n    volumes: [./x:/other]\n",
        )
        .unwrap();
        std::fs::write(
            &over,
            "services:\n  chatmail:\n    tmpfs: !reset []\n    volumes:\n      - /srv/host:/opt/extra\n",
        )
        .unwrap();
        let got: Vec<(String, String)> =
            claimed_mounts(&[base.clone(), d.path().join("missing.yaml"), over.clone()])
                .unwrap()
                .into_iter()
                .map(|m| (m.target, m.what))
                .collect();
        let want: Vec<(String, String)> = [
            ("/home", "the bind mount of ./data/a"),
            ("/var/lib/acme", "the bind mount of ./data/b"),
            ("/srv/vol", "the volume acme"),
            ("/anon", "an anonymous volume"),
            ("/var/cache/x", "the tmpfs"),
            ("/opt/extra", "the bind mount of /srv/host"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        std::fs::write(&over, "services: [\n").unwrap();
        let err = claimed_mounts(&[over]).unwrap_err().to_string();
        assert!(
            err.contains("override.yaml is not a valid compose file"),
            "{err}"
        );
    }

    #[test]
    fn owner_follows_the_working_dir_label() {
        let d = tempfile::tempdir().unwrap();
        let here = d.path().join("here");
        std::fs::create_dir_all(&here).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&here, &link).unwrap();
        let with = |wd: Option<&Path>| Inspect {
            config: Config {
                labels: wd
                    .map(|wd| [(WORKING_DIR_LABEL.to_string(), wd.display().to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(owner_of(&with(Some(&here)), &here), Owner::This);
        assert_eq!(owner_of(&with(Some(&link)), &here), Owner::This);
        let other = d.path().join("other");
        assert_eq!(
            owner_of(&with(Some(&other)), &here),
            Owner::Other(Some(other.clone()))
        );
        assert_eq!(owner_of(&with(None), &here), Owner::Other(None));
    }

    #[test]
    fn docker_times() {
        assert!(parse_time("2026-11-23T15:00:01.123456789Z").is_some());
    }
}
