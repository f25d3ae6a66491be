//! `man`: the manual pages, made from the same clap definitions as
//! `--help` (so the two never drift): `chatmail-docker(1)` and one page
//! per command, `chatmail-docker-COMMAND(1)`, each with the exit codes;
//! the main page also lists the files of a deployment. Printed (one page)
//! or installed (all), as `completions` does for shells.

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory};
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use std::path::PathBuf;

use crate::{context::Context, error};

/// Where `man --install` puts the pages: searched by `man` on Debian and
/// Ubuntu without further setup.
pub const DEFAULT_DIR: &str = "/usr/local/share/man/man1";

/// The files of a deployment and on the host, as the README's "Files"
/// section lists them (the tests compare the two).
pub const FILES: &[(&str, &str)] = &[
    ("chatmail.ini", "the relay's settings ([params]); the source of .env"),
    (
        ".env",
        "the variables Docker Compose passes to the container (mode 0600; your own lines are kept)",
    ),
    (
        "custom/",
        "your files, mounted read-only into the container (custom/P at /opt/chatmail/P, custom/_root_/P at /P)",
    ),
    (
        "docker-compose.override.yaml",
        "your own Compose settings, loaded last; never written",
    ),
    (
        "docker/docker-compose.yaml",
        "the appliance's compose file (do not edit)",
    ),
    (
        "docker/compose.generated.yaml",
        "the mounts of custom/, generated (do not edit)",
    ),
    ("relay/", "the relay's source checkout the image is built from"),
    (
        "data/",
        "the persistent state: mailboxes (data/chatmail), DKIM keys (data/chatmail-dkimkeys), certificates (data/chatmail-acme), the mail queue (data/chatmail-postfix), the appliance's state (data/chatmail-state)",
    ),
    (
        "data/.cert-watch-state.json",
        "the certificate cert-watch last reloaded the services into",
    ),
    (
        "data/.upgrade-state.json",
        "the restore point of the last upgrade (for upgrade --rollback)",
    ),
    (
        "data/.upgrade-last.json",
        "when the last upgrade and the last rollback finished (for metrics)",
    ),
    ("backups/", "the backups upgrade takes before it swaps"),
    (
        "/etc/sysctl.d/60-chatmail-docker-inotify.conf",
        "the inotify limits sysctl sets",
    ),
    (
        "/etc/systemd/system/chatmail-cert-watch.service",
        "the cert-watch service setup installs with ENABLE_CERTS_MONITORING=true",
    ),
];

// The arguments of `man` (a plain comment: clap would show a doc comment
// as the command's description).
#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// The command whose page to print (default: the page of chatmail-docker itself).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,

    /// Write every page into DIR instead of printing one.
    #[arg(
        long,
        value_name = "DIR",
        num_args = 0..=1,
        default_missing_value = DEFAULT_DIR,
        conflicts_with = "command"
    )]
    pub install: Option<PathBuf>,
}

/// The command line, built (global options propagated, deferred
/// arguments resolved), without clap's `help` subcommand.
fn built() -> clap::Command {
    let mut cmd = crate::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The commands that get a page of their own.
pub fn command_names() -> Vec<String> {
    built()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in error::EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(*meaning)]);
    }
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    roff.text([roman(
        "Relative paths are in the deployment directory (--dir); absolute ones on the host.",
    )]);
    for (path, what) in FILES {
        roff.control("TP", []);
        roff.text([bold(*path)]);
        roff.text([roman(*what)]);
    }
}

/// A command's `after_help` examples, as an EXAMPLES section kept line by
/// line.
fn examples(roff: &mut Roff, cmd: &clap::Command) {
    let Some(text) = cmd.get_after_help().map(|t| t.to_string()) else {
        return;
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !matches!(l.trim(), "Example:" | "Examples:"))
        .collect();
    if lines.is_empty() {
        return;
    }
    roff.control("SH", ["EXAMPLES"]);
    roff.control("nf", []);
    for l in lines {
        roff.text([roman(l.trim_start())]);
    }
    roff.control("fi", []);
}

/// One page.
fn page(cmd: &clap::Command, main: bool) -> Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .manual("chatmail-docker manual")
        .source(format!("chatmail-docker {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    if main {
        man.render_subcommands_section(&mut out)?;
    } else {
        examples(&mut roff, cmd);
    }
    exit_status(&mut roff);
    if main {
        files(&mut roff);
    }
    roff.control("SH", ["SEE ALSO"]);
    if main {
        roff.text([roman(
            command_names()
                .iter()
                .map(|c| format!("chatmail-docker-{c}(1)"))
                .collect::<Vec<_>>()
                .join(", "),
        )]);
    } else {
        roff.text([roman("chatmail-docker(1)")]);
    }
    out.extend(roff.to_roff().bytes());
    if main {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// Every page: (file name, roff text), `chatmail-docker.1` first.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let cmd = built();
    let mut out = vec![("chatmail-docker.1".to_string(), page(&cmd, true)?)];
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        out.push((
            format!("chatmail-docker-{}.1", sub.get_name()),
            page(sub, false)?,
        ));
    }
    Ok(out)
}

/// The page of `command` (`None`: the main page).
pub fn page_of(command: Option<&str>) -> Result<Vec<u8>> {
    let cmd = built();
    match command {
        None => page(&cmd, true),
        Some(name) => match cmd.find_subcommand(name) {
            Some(sub) if !sub.is_hide_set() => page(sub, false),
            _ => Err(error::usage(format!(
                "there is no command `{name}`; the commands are {}",
                command_names().join(", ")
            ))),
        },
    }
}

impl ManArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        let Some(dir) = self.install else {
            let text = page_of(self.command.as_deref())?;
            ctx.shell
                .data(String::from_utf8_lossy(&text).trim_end_matches('\n'));
            return Ok(());
        };
        let dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()
                .context("cannot resolve --install DIR: the current directory is gone")?
                .join(dir)
        };
        let dir = ctx.host.path(dir);
        let pages = pages()?;
        if ctx.dry_run {
            for (name, _) in &pages {
                ctx.shell
                    .out(format!("would write {}", dir.join(name).display()));
            }
            ctx.dry_run_done();
            return Ok(());
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut written = 0;
        for (name, text) in &pages {
            if crate::host::write_if_changed(&dir.join(name), text, 0o644)? {
                written += 1;
            }
        }
        ctx.shell.status(
            "Installed",
            format!(
                "{} manual pages in {} ({written} changed); try `man chatmail-docker`",
                pages.len(),
                dir.display()
            ),
        );
        Ok(())
    }
}
