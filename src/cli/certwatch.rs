use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct CertWatchArgs {
    /// Host directory holding the certificate and key (instead of PATH_TO_SSL from .env).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,

    /// Check once, reload if the certificate changed since the last run, and exit.
    #[arg(long)]
    pub once: bool,

    /// Seconds between polls that catch changes events miss [default: CERTS_MONITORING_TIMEOUT or 60].
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<u64>,

    /// Run this shell command instead of reloading the services in the container.
    #[arg(long, value_name = "CMD")]
    pub reload_command: Option<String>,

    /// Do not check the served certificates after reloading.
    #[arg(long)]
    pub no_verify: bool,
}
