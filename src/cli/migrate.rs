use clap::Args;
use std::path::PathBuf;

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

    /// Undo: re-enable and start the units a previous migration stopped.
    #[arg(long, conflicts_with_all = ["mount_vmail", "start"])]
    pub rollback: bool,
}
