//! Arguments of `backup` and `restore`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use crate::backup::restore::{self, RestoreOptions};
use crate::backup::{self, BackupOptions, Output};
use crate::Context;

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to: a file, a directory (a new archive named by time; incremental against the newest one there), or - for standard output.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,

    /// In a backup directory: keep the newest N chains (a full backup and its incrementals).
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,

    /// A full backup even when the directory holds a previous one.
    #[arg(long, conflicts_with = "since")]
    pub full: bool,

    /// Incremental: store only what changed since ARCHIVE (keep both in one directory to restore).
    #[arg(long, value_name = "ARCHIVE")]
    pub since: Option<PathBuf>,

    /// Print a machine-readable summary (no progress).
    #[arg(long)]
    pub json: bool,

    /// zstd compression level, 1 to 19.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub level: i32,

    /// zstd worker threads (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: u32,

    /// Do not freeze Postfix while the mail queue is copied.
    #[arg(long)]
    pub no_pause: bool,
}

impl BackupArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        backup::run(
            ctx,
            &BackupOptions {
                output: Output::parse(&self.dest),
                keep: self.keep,
                full: self.full,
                since: self.since,
                json: self.json,
                level: self.level,
                threads: self.threads,
                pause: !self.no_pause,
            },
        )
        .map(|_| ())
    }
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// An archive (an incremental brings its chain from the same directory), a backup directory (its newest), or - for standard input (a full archive).
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,

    /// Restore over an existing deployment: its data/, .env, ... are moved aside (NAME.before-restore-TIME), never deleted.
    #[arg(long)]
    pub force: bool,

    /// Print a machine-readable summary.
    #[arg(long)]
    pub json: bool,
}

impl RestoreArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        restore::run(
            ctx,
            &RestoreOptions {
                archive: self.archive,
                force: self.force,
                json: self.json,
            },
        )
        .map(|_| ())
    }
}
