//! Arguments of `backup` and `restore`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use crate::archive::crypt::{self, Encrypt, Keys};
use crate::backup::{self, BackupOptions, Output};
use crate::context::Context;
use crate::restore::{self, RestoreOptions};

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

    /// zstd compression level of the files, 1 to 19 (the manifest is compressed at 1).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub level: i32,

    /// Threads that compress and hash (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: u32,

    /// Do not freeze Postfix while the mail queue is copied.
    #[arg(long)]
    pub no_pause: bool,

    /// Encrypt with age to this public key (age1..., from age-keygen); repeatable.
    #[arg(long, value_name = "AGE1...", conflicts_with = "passphrase_file")]
    pub recipient: Vec<String>,

    /// Encrypt with age to the public keys in FILE, one a line (# comments allowed).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    pub recipients_file: Option<PathBuf>,

    #[command(flatten)]
    pub keys: KeyArgs,
}

// Passphrase and identities, for reading encrypted archives (and, with
// `backup`, the passphrase to encrypt with).
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Encrypt (backup) or decrypt (restore) with the passphrase on FILE's first line (age, scrypt).
    #[arg(long, value_name = "FILE", env = "CHATMAIL_BACKUP_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// An age identity file (age-keygen's output) to decrypt with; repeatable.
    #[arg(long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
}

/// The environment variable of `--passphrase-file`.
const PASSPHRASE_ENV: &str = "CHATMAIL_BACKUP_PASSPHRASE_FILE";

impl KeyArgs {
    /// The passphrase and the identity files, each checked first: a file
    /// that is missing, unreadable or no regular file is a usage error
    /// naming its option.
    fn keys(&self) -> Result<Keys> {
        let passphrase = match self.passphrase_file.as_deref() {
            Some(p) => {
                super::check_input_file("--passphrase-file", Some(PASSPHRASE_ENV), p)?;
                Some(crypt::passphrase_from_file(p)?)
            }
            None => None,
        };
        for f in &self.identity {
            super::check_input_file("--identity", None, f)?;
        }
        Ok(Keys {
            passphrase,
            identity_files: self.identity.clone(),
        })
    }
}

/// How long Ctrl-C or SIGTERM gives `backup` and `restore` to end by
/// themselves before they are ended by force (their temporary files
/// removed): they may be blocked on a pipe or a `docker` call.
const END_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

impl BackupArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        crate::host::interrupt::end_within(END_WITHIN);
        let keys = self.keys.keys()?;
        if let Some(base) = &self.since {
            super::check_input_file("--since", None, base)?;
        }
        let mut list = self.recipient.clone();
        if let Some(f) = &self.recipients_file {
            let bytes = super::read_input_file(
                "--recipients-file",
                None,
                f,
                crate::host::MAX_CONFIG_BYTES,
            )?;
            let text = String::from_utf8(bytes).map_err(|_| {
                crate::error::usage(format!(
                    "--recipients-file {}: not text (UTF-8); give age public keys, one a line",
                    f.display()
                ))
            })?;
            list.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        let encrypt = if !list.is_empty() {
            Encrypt::Recipients(crypt::recipients(&list)?)
        } else if let Some(p) = &keys.passphrase {
            Encrypt::Passphrase(p.clone())
        } else {
            Encrypt::None
        };
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
                encrypt,
                keys,
                origin: backup::Origin::Backup,
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

    #[command(flatten)]
    pub keys: KeyArgs,
}

impl RestoreArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        crate::host::interrupt::end_within(END_WITHIN);
        restore::run(
            ctx,
            &RestoreOptions {
                archive: self.archive,
                force: self.force,
                json: self.json,
                keys: self.keys.keys()?,
            },
        )
        .map(|_| ())
    }
}
