//! Arguments of `migrate`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use crate::{context::Context, migrate};

// Migrate a bare-metal chatmail relay on this host into the container
// deployment: config, DKIM keys, ACME state and mailboxes.
//
// Example: `chatmail-docker migrate --dry-run`, then `chatmail-docker migrate --yes --start`.
#[derive(Args, Debug, Clone, Default)]
pub struct MigrateArgs {
    /// The bare-metal chatmail.ini [default: /usr/local/lib/chatmaild/chatmail.ini under --root].
    #[arg(long, value_name = "PATH")]
    pub ini: Option<PathBuf>,

    /// Mount /home/vmail into the container instead of copying the mail.
    #[arg(long)]
    pub mount_vmail: bool,

    /// Answer yes to the confirmation before stopping services.
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Start the container when the migration is done.
    #[arg(long)]
    pub start: bool,

    /// Only pre-sync: copy the data while the relay keeps running, stop
    /// nothing. Run again without it to switch over; the final sync then
    /// copies only what changed, which keeps the downtime short.
    #[arg(long)]
    pub presync_only: bool,

    /// Undo: re-enable and start the units a previous migration stopped.
    #[arg(long, conflicts_with_all = ["mount_vmail", "start", "presync_only"])]
    pub rollback: bool,
}

impl MigrateArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        let options = migrate::Options {
            ini: self.ini,
            mount_vmail: self.mount_vmail,
            yes: self.yes,
            start: self.start,
            presync_only: self.presync_only,
            rollback: self.rollback,
        };
        migrate::run(ctx, options)
    }
}
