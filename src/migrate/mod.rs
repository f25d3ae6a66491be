//! `migrate`: bare-metal chatmail -> container.
use crate::cli::migrate::MigrateArgs;
use crate::Context;
use anyhow::Result;

pub fn run(_ctx: &Context, _args: &MigrateArgs) -> Result<()> {
    anyhow::bail!("migrate: work in progress")
}
