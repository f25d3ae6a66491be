//! `ini2env`: chatmail.ini -> .env.
use crate::cli::ini2env::Ini2envArgs;
use crate::Context;
use anyhow::Result;
use std::path::Path;

/// How `setup` and `migrate` ask for the conversion.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write every key, not only those differing from the relay's defaults.
    pub all: bool,
    /// The ini wins over values the user set by hand in .env.
    pub force: bool,
}

/// What a conversion did (or would do under --dry-run).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Whether .env was (or would be) changed.
    pub changed: bool,
    /// Human-readable lines describing the changes (keys only, never values).
    pub lines: Vec<String>,
}

/// Convert `ini` into `env` (merging), honouring `ctx.dry_run`.
pub fn sync_env(_ctx: &Context, _ini: &Path, _env: &Path, _opts: &Options) -> Result<Report> {
    anyhow::bail!("ini2env: work in progress")
}

pub fn run(_ctx: &Context, _args: &Ini2envArgs) -> Result<()> {
    anyhow::bail!("ini2env: work in progress")
}
