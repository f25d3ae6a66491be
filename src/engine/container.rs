//! The appliance's container: its state as `docker inspect` reports it,
//! whose it is (see the engine's documentation), `exec`, its logs and the
//! wait for its health check.

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::mounts::{default_layout, Layout};
use super::{Project, PROJECT_NAME, SERVICE, WORKING_DIR_LABEL};
use crate::host::{Captured, Cmd};
use crate::{context::Context, error};

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
    /// Its environment, `KEY=value` (the image's and Compose's).
    #[serde(default)]
    pub env: Option<Vec<String>>,
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

/// The labels Compose puts on the service's container: the project, the
/// service, not a one-off `run`. `docker compose ps SERVICE` asks the
/// engine for exactly these.
fn service_filters() -> [String; 3] {
    [
        format!("label=com.docker.compose.project={PROJECT_NAME}"),
        format!("label=com.docker.compose.service={SERVICE}"),
        "label=com.docker.compose.oneoff=False".to_string(),
    ]
}

/// The project's service container, whoever it belongs to, asked of the
/// engine directly: one `docker ps` on Compose's labels that also reports
/// the container's state and project directory. What [`find`] answers
/// (in the fields it fills: id, name, state, the project directory's
/// label), without starting Compose, which reads and merges the project's
/// files first, nor `docker inspect`. For cert-watch, whose reload is on
/// the clock.
pub fn find_direct(ctx: &Context, which: Containers) -> Result<Option<Found>> {
    let mut args: Vec<String> = vec!["ps".into(), "--no-trunc".into()];
    if which == Containers::Any {
        args.push("--all".into());
    }
    for f in service_filters() {
        args.push("--filter".into());
        args.push(f);
    }
    // Each value as a JSON string: a project directory may hold any byte.
    args.push("--format".into());
    args.push(format!(
        "[{{{{json .ID}}}},{{{{json .Names}}}},{{{{json .State}}}},{{{{json (.Label \"{WORKING_DIR_LABEL}\")}}}}]"
    ));
    let out = ctx.host.cmd("docker", args).output(&ctx.shell)?;
    if !out.success() {
        bail!("`docker ps` failed: {}", out.stderr.trim());
    }
    let Some(line) = out.stdout.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let [id, name, state, dir]: [String; 4] = serde_json::from_str(line)
        .with_context(|| format!("cannot parse `docker ps` output: {line}"))?;
    let mut labels = std::collections::BTreeMap::new();
    if !dir.is_empty() {
        labels.insert(WORKING_DIR_LABEL.to_string(), dir);
    }
    let container = Inspect {
        id,
        name,
        state: State {
            running: state == "running",
            status: state,
            ..State::default()
        },
        config: Config {
            labels: Some(labels),
            ..Config::default()
        },
        ..Inspect::default()
    };
    let owner = owner_of(&container, ctx.deployment.dir());
    Ok(Some(Found { container, owner }))
}

/// `docker exec ID ARGS`: a command in that container, no terminal, for
/// output that is read rather than shown. The caller has checked whose the
/// container is ([`find_direct`]).
pub fn exec_in_cmd<I, S>(ctx: &Context, id: &str, args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut all: Vec<OsString> = vec!["exec".into(), id.into()];
    all.extend(args.into_iter().map(Into::into));
    ctx.host.cmd("docker", all)
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

/// Set once this run saw the Docker daemon stop answering (stopped or
/// restarted): the messages of what it interrupted say so.
static DAEMON_AWAY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the Docker daemon answers (`docker version`).
pub fn daemon_answers(ctx: &Context) -> bool {
    ctx.host
        .cmd("docker", ["version", "--format", "{{.Server.Version}}"])
        .output(&ctx.shell)
        .is_ok_and(|o| o.success())
}

/// Whether the daemon stopped answering at some point of this run, or
/// does not answer now (then that is recorded too).
pub fn daemon_was_away(ctx: &Context) -> bool {
    if !DAEMON_AWAY.load(std::sync::atomic::Ordering::SeqCst) && !daemon_answers(ctx) {
        DAEMON_AWAY.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    DAEMON_AWAY.load(std::sync::atomic::Ordering::SeqCst)
}

/// What to say about a step the daemon's absence interrupted: `doing`
/// ("while starting the container"), then the command to run again.
pub fn daemon_context(again: &str, doing: &str) -> String {
    format!(
        "the Docker daemon stopped answering {doing} (it was stopped or restarted): a relay that was running comes back by itself once the daemon is back (restart policy); when `docker info` answers, run `{again}` again to finish"
    )
}

/// Run `f` (a `docker` command that changes the container); when it
/// fails because the daemon stopped answering, wait for the daemon (until
/// `timeout` has passed) and run it once more: a daemon restarted in the
/// middle of a swap does not leave the swap half done.
pub fn again_after_daemon(
    ctx: &Context,
    timeout: Duration,
    mut f: impl FnMut() -> Result<()>,
) -> Result<()> {
    let start = Instant::now();
    match f() {
        Ok(()) => Ok(()),
        Err(e) if error::exit_code(&e) == error::EXIT_INTERRUPTED => Err(e),
        Err(e) => {
            // A daemon shutting down may still answer for a moment.
            std::thread::sleep(Duration::from_secs(1));
            if daemon_answers(ctx) && !DAEMON_AWAY.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(e);
            }
            if !wait_for_daemon(ctx, start + timeout) {
                return Err(e);
            }
            ctx.shell
                .note("running the interrupted `docker compose up` again");
            f()
        }
    }
}

/// Wait while the daemon does not answer (at most until `deadline`),
/// saying so once; whether it answers again.
fn wait_for_daemon(ctx: &Context, deadline: Instant) -> bool {
    if daemon_answers(ctx) {
        return true;
    }
    DAEMON_AWAY.store(true, std::sync::atomic::Ordering::SeqCst);
    ctx.shell.warn(
        "the Docker daemon stopped answering (stopped or restarted); waiting for it: the relay comes back with it (restart policy)",
    );
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        if daemon_answers(ctx) {
            ctx.shell.note("the Docker daemon answers again");
            return true;
        }
    }
    false
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
        crate::host::interrupt::count()
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
        let deadline = start + timeout;
        // Since when the daemon answers again after it was away: the
        // container may be stopped until its restart policy starts it.
        let mut back_since: Option<Instant> = None;
        loop {
            let c = match inspect(ctx, &id) {
                Ok(c) => c,
                Err(e) => {
                    if daemon_answers(ctx) || !wait_for_daemon(ctx, deadline) {
                        return Err(e);
                    }
                    back_since = Some(Instant::now());
                    continue;
                }
            };
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
                // A daemon that is stopping stops its containers first.
                std::thread::sleep(Duration::from_millis(500));
                if !daemon_answers(ctx) {
                    if !wait_for_daemon(ctx, deadline) {
                        bail!(
                            "the Docker daemon stopped answering and was not back within {}s",
                            timeout.as_secs()
                        );
                    }
                    back_since = Some(Instant::now());
                    continue;
                }
                if back_since.is_some_and(|t| t.elapsed() < DAEMON_RESTART_GRACE) {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
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
            if interruptible && crate::host::interrupt::since(since) {
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

/// After the daemon is back, how long a stopped container may take to be
/// started again by its restart policy.
const DAEMON_RESTART_GRACE: Duration = Duration::from_secs(60);

/// Parse docker's RFC 3339 timestamp into a SystemTime.
pub fn parse_time(ts: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(ts.trim_end_matches('Z').split('.').next()?).ok()
}

// ---------------------------------------------------------------- facts

/// The relay's facts, from the running container.
#[derive(Clone, Debug, Default)]
pub struct RelayFacts {
    pub running: bool,
    pub image_version: Option<String>,
    pub relay_commit: Option<String>,
    pub users: crate::formats::passwd::Names,
    pub groups: crate::formats::passwd::Names,
}

/// This deployment's running container, if there is one (a failure to
/// ask Docker counts as none, said with `-v`).
pub fn running(ctx: &Context) -> Option<Inspect> {
    if !ctx.deployment.compose_file().exists() {
        return None;
    }
    match container(ctx, Containers::Running) {
        Ok(c) => c,
        Err(e) => {
            ctx.shell.verbose(format!("no container: {e}"));
            None
        }
    }
}

/// Versions and the container's users and groups (when it runs).
pub fn relay_facts(ctx: &Context, running: bool) -> RelayFacts {
    let mut info = RelayFacts::default();
    if !running {
        return info;
    }
    info.running = true;
    let script = "cat /etc/chatmail-image-version 2>/dev/null; echo; echo @@; \
                  head -n1 /etc/chatmail-version 2>/dev/null; echo; echo @@; \
                  getent passwd; echo @@; getent group";
    match exec_output(ctx, ["sh", "-c", script]) {
        Ok(out) if out.success() => {
            let parts: Vec<&str> = out.stdout.split("@@\n").collect();
            let field = |i: usize| {
                parts
                    .get(i)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            };
            info.image_version = field(0);
            info.relay_commit = field(1);
            info.users =
                crate::formats::passwd::Names::parse(parts.get(2).copied().unwrap_or_default());
            info.groups =
                crate::formats::passwd::Names::parse(parts.get(3).copied().unwrap_or_default());
        }
        Ok(out) => ctx.shell.warn(format!(
            "cannot read the relay's version and users from the container: {}",
            out.stderr.trim()
        )),
        Err(e) => ctx.shell.warn(format!("cannot ask the container: {e}")),
    }
    info
}

/// What the relay's container sees: the running container's mounts, else
/// those Compose would give it. When Compose cannot be asked, the
/// appliance's own layout, unless the administrator's override changes
/// the mounts of the state (then nothing can be known, and the backup
/// stops).
pub fn layout(ctx: &Context, running: Option<&Inspect>) -> Result<Layout> {
    if let Some(m) = running.and_then(|c| c.mounts.as_ref()) {
        return Layout::from_inspect(m);
    }
    if !ctx.deployment.compose_file().exists() {
        return Ok(default_layout(&ctx.deployment, &ctx.host));
    }
    let asked = super::config_json(ctx).and_then(|config| {
        Layout::from_compose(&config, SERVICE, |name| super::volume_dir(ctx, name))
    });
    match asked {
        Ok(l) => Ok(l),
        Err(e) => {
            let overrides = ctx.deployment.user_overrides();
            let claimed = super::claimed_mounts(&overrides)?;
            let state: Vec<&str> = crate::deployment::STATE_MOUNTS
                .iter()
                .map(|(_, t)| *t)
                .collect();
            let touches = |t: &str| {
                state.iter().any(|s| {
                    t == *s
                        || t.strip_prefix(s).is_some_and(|r| r.starts_with('/'))
                        || s.strip_prefix(t).is_some_and(|r| r.starts_with('/'))
                        || t == "/"
                })
            };
            if let Some(m) = claimed.iter().find(|m| touches(&m.target)) {
                bail!(
                    "cannot ask Compose where the container's state is ({e:#}), and {} mounts {} at {}: fix Compose (`chatmail-docker config` shows the error) and back up again",
                    m.file.display(),
                    m.what,
                    m.target
                );
            }
            ctx.shell.warn(format!(
                "cannot ask Compose for the container's mounts ({e:#}); backing up the appliance's own layout (docker/docker-compose.yaml)"
            ));
            Ok(default_layout(&ctx.deployment, &ctx.host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_follows_the_working_dir_label() {
        let d = tempfile::tempdir().unwrap();
        crate::host::write_tree(d.path(), &[("here/", "")]);
        let (here, link) = (d.path().join("here"), d.path().join("link"));
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
