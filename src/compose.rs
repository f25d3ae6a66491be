//! The compose project and `docker compose` runner.
use crate::cli::compose::*;
use crate::Context;
use anyhow::Result;

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
