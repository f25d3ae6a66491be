//! Arguments of `chatmail-docker config`.

use anyhow::Result;
use clap::Args;

use crate::{context::Context, overrides};

// `config` regenerates docker/compose.generated.yaml from custom/ (not with
// --dry-run) and prints what `docker compose config` makes of all compose
// files, the user's docker-compose.override.yaml and .env together.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Print only the override generated from custom/ (and data/.mount-vmail); writes nothing.
    #[arg(long)]
    pub override_only: bool,

    /// Print JSON (`docker compose config --format json`; with --override-only, the override as JSON).
    #[arg(long)]
    pub json: bool,
}

impl ConfigArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        overrides::config(
            ctx,
            &overrides::ConfigOptions {
                override_only: self.override_only,
                json: self.json,
            },
        )
    }
}
