//! Command-line definitions (clap derive). One file per command group: each
//! describes its arguments and turns them into the typed options of one
//! library function (cargo's `commands/*.rs` -> `ops` split). Nothing below
//! this module sees clap.

use clap::builder::PossibleValue;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

use crate::shell::ColorChoice;

pub mod backup;
pub mod certwatch;
pub mod compose;
pub mod dns;
pub mod ini2env;
pub mod man;
pub mod metrics;
pub mod migrate;
pub mod overrides;
pub mod preflight;
pub mod setup;
pub mod status;
pub mod upgrade;

#[derive(Parser, Debug)]
#[command(
    name = "chatmail-docker",
    version,
    about = "Run a chatmail relay in one Docker container, and do on the host what the container cannot.",
    after_help = "Start with `chatmail-docker setup` in the deployment directory.\n\
                  Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 3 preflight failed, 130 interrupted.\n\
                  upgrade --check: 0 an upgrade is available, 1 up to date, 4 could not check."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

// The arguments of `completions` (a plain comment: clap would show a doc
// comment as the command's description).
#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

impl CompletionsArgs {
    /// Print the completion script (data on stdout, as `--json` is).
    pub fn exec(self, _ctx: &crate::context::Context) -> anyhow::Result<()> {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        clap_complete::generate(
            self.shell,
            &mut cmd,
            "chatmail-docker",
            &mut std::io::stdout(),
        );
        Ok(())
    }
}

impl Cli {
    /// Parse the process's arguments (exits with clap's message and code on
    /// a usage error). Global options may come before or after the command
    /// name; after it wins when both give one.
    pub fn parse_args() -> Cli {
        let cli = Cli::parse();
        // clap checks conflicts within one command level only: `-q status -v`
        // gives the two flags at different levels.
        if cli.global.quiet && cli.global.verbose {
            Cli::command()
                .error(
                    ErrorKind::ArgumentConflict,
                    "the argument '--quiet' cannot be used with '--verbose'",
                )
                .exit();
        }
        cli
    }
}

impl ValueEnum for ColorChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &[ColorChoice::Auto, ColorChoice::Always, ColorChoice::Never]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            ColorChoice::Auto => "auto",
            ColorChoice::Always => "always",
            ColorChoice::Never => "never",
        }))
    }
}

// Options every command takes, before or after its name. (A plain comment,
// as above.)
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Deployment directory holding .env, chatmail.ini, custom/, data/ and docker/.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "DIR",
        env = "CHATMAIL_DOCKER_DIR",
        default_value = "."
    )]
    pub dir: PathBuf,

    /// Print what would be done and change nothing.
    #[arg(long, global = true, help_heading = "Global options")]
    pub dry_run: bool,

    /// Print only errors and warnings.
    #[arg(
        short,
        long,
        global = true,
        help_heading = "Global options",
        conflicts_with = "verbose"
    )]
    pub quiet: bool,

    /// Print more: the commands run, files skipped, decisions taken.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub verbose: bool,

    /// When to use colors (NO_COLOR is respected by `auto`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value_t = ColorChoice::Auto,
        value_name = "WHEN"
    )]
    pub color: ColorChoice,

    /// Host filesystem root for /etc, /proc/sys, /sys/fs/cgroup, /home, ... (for tests and migrations from a mounted disk).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "DIR",
        env = "CHATMAIL_DOCKER_ROOT",
        default_value = "/"
    )]
    pub root: PathBuf,
}

/// Subcommand arguments are built only for the subcommand being run
/// (`defer`): building every subcommand's arguments was most of the
/// start-up cost of a short command such as `ini2env`.
#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Check that this host can run the appliance.
    #[command(
        after_help = "Example:\n  chatmail-docker preflight\n  chatmail-docker preflight --json"
    )]
    Preflight(preflight::PreflightArgs),

    /// Raise the host's inotify limits (the container cannot).
    #[command(
        after_help = "Example:\n  sudo chatmail-docker sysctl\n  chatmail-docker sysctl --dry-run"
    )]
    Sysctl(preflight::SysctlArgs),

    /// Check the host, write .env and overrides, build and start the appliance, wait until healthy.
    #[command(
        after_help = "Examples:\n  chatmail-docker setup\n  chatmail-docker setup --reinstall\n  chatmail-docker setup --dry-run"
    )]
    Setup(setup::SetupArgs),

    /// Start the appliance (docker compose up -d) with the generated overrides.
    #[command(after_help = "Example:\n  chatmail-docker up")]
    Up(compose::UpArgs),

    /// Stop and remove the container; data/ is kept.
    #[command(after_help = "Example:\n  chatmail-docker down")]
    Down(compose::DownArgs),

    /// Restart the container.
    #[command(after_help = "Example:\n  chatmail-docker restart")]
    Restart(compose::RestartArgs),

    /// Show the container, its health and the relay's services.
    #[command(after_help = "Example:\n  chatmail-docker status\n  chatmail-docker status --json")]
    Status(status::StatusArgs),

    /// Show the container's logs.
    #[command(after_help = "Example:\n  chatmail-docker logs -f")]
    Logs(compose::LogsArgs),

    /// Run a command inside the container.
    #[command(after_help = "Example:\n  chatmail-docker exec -- systemctl status postfix")]
    Exec(compose::ExecArgs),

    /// Convert chatmail.ini into .env (merged, exact for Docker Compose).
    #[command(
        after_help = "Examples:\n  chatmail-docker ini2env\n  chatmail-docker ini2env --ini /usr/local/lib/chatmaild/chatmail.ini --stdout\n  chatmail-docker ini2env --check"
    )]
    Ini2env(ini2env::Ini2envArgs),

    /// Print the merged compose configuration as Docker Compose sees it.
    #[command(
        after_help = "Examples:\n  chatmail-docker config\n  chatmail-docker config --override-only"
    )]
    Config(overrides::ConfigArgs),

    /// Move a bare-metal chatmail install into this deployment directory.
    #[command(
        after_help = "Examples:\n  chatmail-docker migrate --dry-run        # the plan, nothing changes\n  chatmail-docker migrate --presync-only   # copy while the relay keeps running\n  chatmail-docker migrate --yes --start\n  chatmail-docker migrate --rollback"
    )]
    Migrate(migrate::MigrateArgs),

    /// Watch the TLS certificates and reload the services when they change.
    #[command(
        name = "cert-watch",
        after_help = "Examples:\n  chatmail-docker cert-watch                  # in the foreground, for a supervisor\n  chatmail-docker cert-watch --once           # from cron or an ACME client's deploy hook\n  chatmail-docker cert-watch --path /etc/letsencrypt/live/chat.example.org --once"
    )]
    CertWatch(certwatch::CertWatchArgs),

    /// Show the DNS records the relay needs and which are missing or wrong in DNS.
    #[command(
        after_help = "Examples:\n  chatmail-docker dns                      # the records, checked against DNS (exit 1 when a required one is missing)\n  chatmail-docker dns --no-check --zonefile chatmail.zone"
    )]
    Dns(dns::DnsArgs),

    /// Back up the relay's state (mailboxes, keys, certificates, queue, configuration) while it runs.
    #[command(
        after_help = "Examples:\n  chatmail-docker backup /var/backups/chatmail/ --keep 4     # nightly: incremental, a new chain with --full\n  chatmail-docker backup --full /var/backups/chatmail/\n  chatmail-docker backup - | ssh backup-host 'cat > chatmail.tar.zst'\n  chatmail-docker backup --json -q /var/backups/chatmail/   # for cron"
    )]
    Backup(backup::BackupArgs),

    /// Restore the relay's state from a backup into this deployment directory.
    #[command(
        after_help = "Examples:\n  chatmail-docker restore /var/backups/chatmail/            # the newest chain there\n  chatmail-docker restore chatmail-backup-20261201T030000.000Z-incr.tar.zst\n  ssh backup-host 'cat chatmail.tar.zst' | chatmail-docker restore -\n  chatmail-docker restore --dry-run ARCHIVE                 # verify every checksum, write nothing"
    )]
    Restore(backup::RestoreArgs),

    /// Move the relay to a new release: build beside the running relay, swap, roll back by itself on failure.
    #[command(
        after_help = "Examples:\n  chatmail-docker upgrade --check            # cron: exit 0 available, 1 up to date, 4 could not check\n  chatmail-docker upgrade --dry-run          # what would change, nothing changes\n  chatmail-docker upgrade                    # to the relay's newest release\n  chatmail-docker upgrade --ref main         # to the relay's main branch as just fetched\n  chatmail-docker upgrade --ref HEAD~1       # to the parent of what relay/ has checked out\n  chatmail-docker upgrade --rollback         # back to the release before the last upgrade"
    )]
    Upgrade(upgrade::UpgradeArgs),

    /// Print the relay's state as Prometheus metrics, or write them for node_exporter's textfile collector.
    #[command(
        long_about = crate::metrics::describe(),
        after_help = "Examples:\n  chatmail-docker metrics                                   # on standard output\n  chatmail-docker metrics --textfile /var/lib/prometheus/node-exporter --backup-dir /var/backups/chatmail\n  (examples/chatmail-docker-metrics.timer runs the second every minute)"
    )]
    Metrics(metrics::MetricsArgs),

    /// Print a manual page, or install them all.
    #[command(
        after_help = "Examples:\n  chatmail-docker man | man -l -          # read the main page\n  chatmail-docker man backup > chatmail-docker-backup.1\n  sudo chatmail-docker man --install     # every page into /usr/local/share/man/man1, then: man chatmail-docker"
    )]
    Man(man::ManArgs),

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  chatmail-docker completions bash > /etc/bash_completion.d/chatmail-docker"
    )]
    Completions(CompletionsArgs),
}

/// How a message names where a path came from: the environment variable
/// `env` when it holds this value (clap takes it from there when the
/// option is not given), else the option `flag`.
// The command line's own environment variables are read here, with the
// arguments.
#[allow(clippy::disallowed_methods)]
pub(crate) fn option_name(flag: &str, env: Option<&str>, value: &Path) -> String {
    match env {
        Some(var) if std::env::var_os(var).is_some_and(|v| v == value.as_os_str()) => {
            var.to_string()
        }
        _ => flag.to_string(),
    }
}

/// Check a file an option names before the command relies on it: a
/// regular file (symlinks followed) that can be opened for reading. A
/// missing or unreadable file, a directory, a FIFO or a device is a usage
/// error (exit 2) naming the option, or the environment variable that
/// gave it. The open never blocks (a FIFO without a writer).
pub(crate) fn check_input_file(flag: &str, env: Option<&str>, path: &Path) -> anyhow::Result<()> {
    crate::host::open_input(path, u64::MAX)
        .map(|_| ())
        .map_err(|e| crate::error::usage(format!("{}: {e}", option_name(flag, env, path))))
}

/// [`check_input_file`], reading the file (at most `limit` bytes).
pub(crate) fn read_input_file(
    flag: &str,
    env: Option<&str>,
    path: &Path,
    limit: u64,
) -> anyhow::Result<Vec<u8>> {
    crate::host::read_input(path, limit)
        .map_err(|e| crate::error::usage(format!("{}: {e}", option_name(flag, env, path))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_exit_code() {
        let help = Cli::command().get_after_help().unwrap().to_string();
        assert!(
            help.contains(&format!("Exit codes: {}.", crate::error::exit_codes_text())),
            "{help}"
        );
    }
}
