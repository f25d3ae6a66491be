//! chatmail-docker: run a chatmail relay in one Docker container and do on
//! the host what the container cannot do for itself.
//!
//! One module per capability; each computes a plan (pure) and applies it
//! through the [`host`] seam. `main.rs` only parses arguments and calls
//! [`main_with`].

pub mod archive;
pub mod backup;
pub mod certwatch;
pub mod cli;
pub mod context;
pub mod deployment;
pub mod dns;
pub mod engine;
pub mod error;
pub mod formats;
pub mod host;
pub mod ini2env;
pub mod metrics;
pub mod migrate;
pub mod overrides;
pub mod preflight;
pub mod restore;
pub mod setup;
pub mod shell;
pub mod status;
pub mod sysctl;
pub mod upgrade;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::host::Host;
use crate::shell::{Shell, Verbosity};

pub use context::Context;

/// Run a parsed command line and return the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    let verbosity = if cli.global.quiet {
        Verbosity::Quiet
    } else if cli.global.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let shell = Shell::new(verbosity, cli.global.color);
    let result = Context::new(
        &cli.global.dir,
        Host::new(&cli.global.root),
        shell.clone(),
        cli.global.dry_run,
    )
    .and_then(|ctx| run(&ctx, cli.command));
    match result {
        Ok(()) => error::EXIT_OK,
        Err(err) => {
            if !error::is_silent(&err) {
                shell.print_error(&err);
            }
            error::exit_code(&err)
        }
    }
}

/// Dispatch one command.
pub fn run(ctx: &Context, command: Command) -> Result<()> {
    match command {
        Command::Preflight(a) => a.exec(ctx),
        Command::Sysctl(a) => a.exec(ctx),
        Command::Setup(a) => a.exec(ctx),
        Command::Up(a) => a.exec(ctx),
        Command::Down(a) => a.exec(ctx),
        Command::Restart(a) => a.exec(ctx),
        Command::Status(a) => a.exec(ctx),
        Command::Logs(a) => a.exec(ctx),
        Command::Exec(a) => a.exec(ctx),
        Command::Ini2env(a) => a.exec(ctx),
        Command::Config(a) => a.exec(ctx),
        Command::Migrate(a) => a.exec(ctx),
        Command::CertWatch(a) => a.exec(ctx),
        Command::Dns(a) => a.exec(ctx),
        Command::Backup(a) => a.exec(ctx),
        Command::Restore(a) => a.exec(ctx),
        Command::Upgrade(a) => a.exec(ctx),
        Command::Metrics(a) => a.exec(ctx),
        Command::Man(a) => a.exec(ctx),
        Command::Completions(a) => a.exec(ctx),
    }
}
