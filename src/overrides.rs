//! custom/ -> generated compose override; `config`.
use crate::cli::overrides::ConfigArgs;
use crate::Context;
use anyhow::Result;

pub fn config(_ctx: &Context, _args: &ConfigArgs) -> Result<()> {
    anyhow::bail!("config: work in progress")
}
