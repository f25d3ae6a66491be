//! Preflight checks: can this host run the appliance?
use crate::cli::preflight::PreflightArgs;
use crate::Context;
use anyhow::Result;

pub fn run(_ctx: &Context, _args: &PreflightArgs) -> Result<()> {
    anyhow::bail!("preflight: work in progress")
}
