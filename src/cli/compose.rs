//! Arguments of the commands that pass through to Docker Compose.

use anyhow::Result;
use clap::Args;

use crate::{context::Context, engine, setup};

#[derive(Args, Debug, Clone, Default)]
pub struct UpArgs {}

impl UpArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        setup::up(ctx)
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct DownArgs {}

impl DownArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        engine::down(ctx)
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct RestartArgs {}

impl RestartArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        engine::restart(ctx)
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct LogsArgs {
    /// Follow the log output.
    #[arg(short, long)]
    pub follow: bool,

    /// Number of lines to show from the end.
    #[arg(long, value_name = "N")]
    pub tail: Option<String>,
}

impl LogsArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        engine::logs(
            ctx,
            &engine::LogsOptions {
                follow: self.follow,
                tail: self.tail,
            },
        )
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct ExecArgs {
    /// The command to run in the container, after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

impl ExecArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        engine::exec(ctx, &self.command)
    }
}
