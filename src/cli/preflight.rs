//! Arguments of `preflight` and `sysctl`, and the groups `setup` shares.

use anyhow::Result;
use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};

use crate::preflight::{self, CheckId};
use crate::{context::Context, sysctl};

#[derive(Args, Debug, Clone, Default)]
pub struct PreflightArgs {
    /// Print a machine-readable report (check id, status, message, fix).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub checks: CheckArgs,
}

impl PreflightArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        preflight::run(
            ctx,
            &preflight::RunOptions {
                skip: self.checks.skip_check,
                json: self.json,
            },
        )
    }
}

// Options shared by `preflight` and `setup`.
#[derive(Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Skip a check by id (repeatable); it is reported loudly.
    #[arg(long = "skip-check", value_name = "NAME")]
    pub skip_check: Vec<CheckId>,
}

impl ValueEnum for CheckId {
    fn value_variants<'a>() -> &'a [Self] {
        &CheckId::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.id()))
    }
}

#[derive(Args, Debug, Clone)]
pub struct SysctlArgs {
    /// Minimum for fs.inotify.max_user_instances.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub max_user_instances: u64,

    /// Minimum for fs.inotify.max_user_watches.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub max_user_watches: u64,
}

impl SysctlArgs {
    pub fn limits(&self) -> sysctl::Limits {
        sysctl::Limits {
            max_user_instances: self.max_user_instances,
            max_user_watches: self.max_user_watches,
        }
    }

    pub fn exec(self, ctx: &Context) -> Result<()> {
        sysctl::run(ctx, &self.limits())
    }
}
