use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct UpArgs {}

#[derive(Args, Debug, Clone, Default)]
pub struct DownArgs {}

#[derive(Args, Debug, Clone, Default)]
pub struct RestartArgs {}

#[derive(Args, Debug, Clone, Default)]
pub struct StatusArgs {
    /// Print a machine-readable report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct LogsArgs {
    /// Follow the log output.
    #[arg(short, long)]
    pub follow: bool,

    /// Number of lines to show from the end.
    #[arg(long, value_name = "N")]
    pub tail: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ExecArgs {
    /// The command to run in the container, after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}
