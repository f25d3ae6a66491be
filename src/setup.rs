//! `setup`: the whole loop.
use crate::cli::setup::SetupArgs;
use crate::Context;
use anyhow::Result;

pub fn run(_ctx: &Context, _args: &SetupArgs) -> Result<()> {
    anyhow::bail!("setup: work in progress")
}
