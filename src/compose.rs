//! The compose project: which files, which `.env`, which project name, and
//! running `docker compose` with them.

use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;

use crate::cli::compose::*;
use crate::host::Cmd;
use crate::Context;

/// Compose project name: fixed, so the directory's name does not matter.
pub const PROJECT_NAME: &str = "chatmail";
/// The one service of the appliance.
pub const SERVICE: &str = "chatmail";
/// The appliance's compose file, relative to the deployment directory.
pub const COMPOSE_FILE: &str = "docker/docker-compose.yaml";
/// The override the tool generates and owns.
pub const GENERATED_FILE: &str = "docker/compose.generated.yaml";
/// The user's own overrides, included last so they win. Never written.
pub const USER_OVERRIDES: &[&str] = &["docker-compose.override.yaml", "compose.override.yaml"];

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
        let mut files = vec![ctx.path(COMPOSE_FILE)];
        let generated = ctx.path(GENERATED_FILE);
        if generated.exists() {
            files.push(generated);
        }
        for name in USER_OVERRIDES {
            let p = ctx.path(name);
            if p.exists() {
                files.push(p);
            }
        }
        Project {
            dir: ctx.dir.clone(),
            files,
            env_file: ctx.path(".env"),
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

pub fn up(_ctx: &Context, _a: &UpArgs) -> Result<()> {
    anyhow::bail!("up: work in progress")
}
pub fn down(_ctx: &Context, _a: &DownArgs) -> Result<()> {
    anyhow::bail!("down: work in progress")
}
pub fn restart(_ctx: &Context, _a: &RestartArgs) -> Result<()> {
    anyhow::bail!("restart: work in progress")
}
pub fn status(_ctx: &Context, _a: &StatusArgs) -> Result<()> {
    anyhow::bail!("status: work in progress")
}
pub fn logs(_ctx: &Context, _a: &LogsArgs) -> Result<()> {
    anyhow::bail!("logs: work in progress")
}
pub fn exec(_ctx: &Context, _a: &ExecArgs) -> Result<()> {
    anyhow::bail!("exec: work in progress")
}
