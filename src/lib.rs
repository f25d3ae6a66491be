//! chatmail-docker: run a chatmail relay in one Docker container and do on
//! the host what the container cannot do for itself.
//!
//! One module per capability; each computes a plan (pure) and applies it
//! through the [`host`] seam. `main.rs` only parses arguments and calls
//! [`main_with`].

pub mod backup;
pub mod build;
pub mod certwatch;
pub mod cli;
pub mod compose;
pub mod deployment;
pub mod dns;
pub mod dotenv;
pub mod error;
pub mod host;
pub mod ini;
pub mod ini2env;
pub mod metrics;
pub mod migrate;
pub mod overrides;
pub mod preflight;
pub mod relay;
pub mod setup;
pub mod shell;
pub mod stage;
pub mod status;
pub mod sysctl;
pub mod upgrade;

use anyhow::Result;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};
use crate::deployment::Deployment;
use crate::host::{Cmd, Host};
use crate::shell::{Shell, Verbosity};

/// Everything a command needs to know about where and how it runs.
#[derive(Clone, Debug)]
pub struct Context {
    /// The deployment directory (absolute) and its files.
    pub deployment: Deployment,
    pub host: Host,
    pub shell: Shell,
    pub dry_run: bool,
}

impl Context {
    pub fn new(dir: impl AsRef<Path>, host: Host, shell: Shell, dry_run: bool) -> Result<Context> {
        let dir = dir.as_ref();
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()?.join(dir)
        };
        // Normalise `./x/.` without requiring the directory to exist.
        let dir: PathBuf = dir.components().collect();
        Ok(Context {
            deployment: Deployment::new(dir),
            host,
            shell,
            dry_run,
        })
    }

    /// Where a dry run and a real run part for a command: in a dry run,
    /// show it (`would run: CMD NOTE`) and return `None`; otherwise run it
    /// with `run`.
    pub fn run_or_show<T>(
        &self,
        cmd: &Cmd,
        note: &str,
        run: impl FnOnce(&Cmd) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.dry_run {
            self.shell
                .out(format!("would run: {}{note}", cmd.display()));
            return Ok(None);
        }
        run(cmd).map(Some)
    }

    /// The last line of a dry run.
    pub fn dry_run_done(&self) {
        self.shell.out("dry run: nothing was changed");
    }

    /// A path inside the deployment directory ([`Deployment`] names its
    /// files; this is for the others).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.deployment.path(rel)
    }
}

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
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let shell = a.shell;
            clap_complete::generate(shell, &mut cmd, "chatmail-docker", &mut std::io::stdout());
            Ok(())
        }
    }
}
