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
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::host::Cmd;
use crate::{context::Context, error};

pub mod beside;
pub mod build;
pub mod container;
pub mod image;
pub mod mounts;

pub use container::{
    container, container_id, current, ensure_ours, exec_cmd, exec_in_cmd, exec_output, find,
    find_direct, inspect, last_logs, parse_time, wait_for_health, wait_healthy, Containers, Found,
    Inspect, Owner,
};
pub use image::{image_id, image_inspect, image_names};
pub use mounts::{claimed_mounts, ClaimedMount};

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

pub fn run_forwarding(ctx: &Context, cmd: &Cmd) -> Result<i32> {
    use std::io::IsTerminal;
    let seen = crate::host::interrupt::count();
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
        let now = crate::host::interrupt::count();
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

// ---------------------------------------------------------------- the engine

/// Docker's data root (`docker info`), as the host names it.
pub fn data_root(ctx: &Context) -> Result<PathBuf> {
    let out = ctx
        .host
        .cmd("docker", ["info", "--format", "{{.DockerRootDir}}"])
        .output(&ctx.shell)?;
    let root = out.stdout.trim();
    if !out.success() || !root.starts_with('/') {
        bail!("`docker info` names no data root: {}", out.stderr.trim());
    }
    Ok(ctx.host.path(root))
}

/// Docker's data root and the bytes free there for unprivileged users
/// (what a build or a container's writable layer can still use).
pub fn data_root_free(ctx: &Context) -> Result<(PathBuf, u64)> {
    let root = data_root(ctx)?;
    let free = crate::host::space::free_bytes(&root)?;
    Ok((root, free))
}

/// Below this much free space on Docker's data root, a failed deploy
/// beside the relay is put down to it.
pub const DATA_ROOT_LOW: u64 = 1 << 30;

/// The cause of a failed build or deploy when it was Docker's data root
/// running out of space (the step said "no space left on device", or less
/// than `need` is free now), with what to do and `again`, the command to
/// run then. A disk that filled stays full until someone frees it.
pub fn full_data_root(
    ctx: &Context,
    err: &anyhow::Error,
    need: u64,
    again: &str,
) -> Option<String> {
    let (root, free) = data_root_free(ctx).ok()?;
    let said = format!("{err:#}").contains("no space left on device");
    (said || free < need).then(|| {
        format!(
            "Docker's data root {} ran out of space ({} free now): free space there (`docker image prune`, `docker builder prune`, `df -h {}`), then run `{again}` again",
            root.display(),
            crate::host::space::human_bytes(free),
            root.display()
        )
    })
}

/// Where the named volume's data is on the host.
pub fn volume_dir(ctx: &Context, name: &str) -> Result<PathBuf> {
    let out = ctx
        .host
        .cmd(
            "docker",
            ["volume", "inspect", "--format", "{{.Mountpoint}}", name],
        )
        .output(&ctx.shell)?;
    if !out.success() {
        bail!(
            "`docker volume inspect {name}` failed: {}",
            out.stderr.trim()
        );
    }
    Ok(PathBuf::from(out.stdout.trim()))
}

/// `docker --version`: the client's own words (Podman says so there).
pub fn client_version(ctx: &Context) -> String {
    ctx.host
        .cmd("docker", ["--version"])
        .output(&ctx.shell)
        .map(|c| c.stdout)
        .unwrap_or_default()
}

/// `docker info`'s server version: the engine answers, or why not.
pub fn server_version(ctx: &Context) -> Result<crate::host::Captured> {
    ctx.host
        .cmd("docker", ["info", "--format", "{{.ServerVersion}}"])
        .output(&ctx.shell)
}

/// `docker compose version --short`, when `docker` is there.
pub fn compose_version(ctx: &Context) -> Option<crate::host::Captured> {
    ctx.host.which("docker")?;
    ctx.host
        .cmd("docker", ["compose", "version", "--short"])
        .output(&ctx.shell)
        .ok()
}

// ---------------------------------------------------------------- commands

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
