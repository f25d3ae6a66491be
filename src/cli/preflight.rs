use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct PreflightArgs {
    /// Print a machine-readable report (check id, status, message, fix).
    #[arg(long)]
    pub json: bool,

    /// Skip a check by id (repeatable). Use only when you know why it fails.
    #[arg(long = "skip-check", value_name = "NAME")]
    pub skip_check: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SysctlArgs {
    /// Minimum for fs.inotify.max_user_instances.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub max_user_instances: u64,

    /// Minimum for fs.inotify.max_user_watches.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub max_user_watches: u64,
}
