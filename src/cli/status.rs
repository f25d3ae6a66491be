//! Arguments of `status`.

use anyhow::Result;
use clap::Args;

use crate::{context::Context, status};

#[derive(Args, Debug, Clone, Default)]
pub struct StatusArgs {
    /// Print a machine-readable report.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        status::run(ctx, &status::Options { json: self.json })
    }
}
