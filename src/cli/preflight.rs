use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct PreflightArgs {
    /// Print a machine-readable report (check id, status, message, fix).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub checks: CheckArgs,
}

// Options shared by `preflight` and `setup`.
#[derive(Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Skip a check by id (repeatable); it is reported loudly. Ids: cgroup-v2,
    /// docker-engine, compose-v2, architecture, mail-domain, env-file, ports,
    /// disk-space, inotify.
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
