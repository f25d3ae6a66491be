//! Arguments of `ini2env`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use crate::context::Context;
use crate::ini2env::{self, Output};

#[derive(Args, Debug, Clone, Default)]
pub struct Ini2envArgs {
    /// The relay's ini file [default: DIR/chatmail.ini].
    #[arg(long, value_name = "PATH")]
    pub ini: Option<PathBuf>,

    /// The .env to merge into [default: DIR/.env].
    #[arg(long, value_name = "PATH")]
    pub env: Option<PathBuf>,

    /// Print the generated variables (values included) instead of writing .env.
    #[arg(long, conflicts_with_all = ["check", "force"])]
    pub stdout: bool,

    /// Write every [params] key, not only those that differ from the relay's defaults.
    #[arg(long)]
    pub all: bool,

    /// Exit 1 and show a diff when .env is out of date; change nothing.
    #[arg(long)]
    pub check: bool,

    /// With --check: show values in the diff (hidden by default: .env may hold secrets).
    #[arg(long, requires = "check")]
    pub show_values: bool,

    /// Let the ini win over values set by hand in .env.
    #[arg(long)]
    pub force: bool,
}

impl Ini2envArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        // clap keeps --stdout apart from --check, and --show-values with --check.
        let output = if self.stdout {
            Output::Stdout
        } else if self.check {
            Output::Check {
                show_values: self.show_values,
            }
        } else {
            Output::Write
        };
        let options = ini2env::RunOptions {
            ini: self.ini,
            env: self.env,
            output,
            merge: ini2env::Options {
                all: self.all,
                force: self.force,
            },
        };
        ini2env::run(ctx, &options)
    }
}
