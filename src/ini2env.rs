//! `ini2env`: chatmail.ini -> .env.
use crate::cli::ini2env::Ini2envArgs;
use crate::Context;
use anyhow::Result;

pub fn run(_ctx: &Context, _args: &Ini2envArgs) -> Result<()> {
    anyhow::bail!("ini2env: work in progress")
}
