use clap::Args;

use super::preflight::{CheckArgs, SysctlArgs};

#[derive(Args, Debug, Clone)]
pub struct SetupArgs {
    #[command(flatten)]
    pub checks: CheckArgs,

    #[command(flatten)]
    pub sysctl: SysctlArgs,

    /// Run the relay's install stage again this once (CMDEPLOY_STAGES=install,configure,activate).
    #[arg(long, conflicts_with = "stages")]
    pub reinstall: bool,

    /// Stages to run this once, a subset of install,configure,activate in that order.
    #[arg(long, value_name = "LIST")]
    pub stages: Option<String>,

    /// Rebuild the image before starting; `--rebuild=full` rebuilds without cache.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "cache", value_parser = ["cache", "full"])]
    pub rebuild: Option<String>,

    /// Recreate the relay's Python venv this once (RECREATE_VENV=true).
    #[arg(long)]
    pub recreate_venv: bool,

    /// Rewrite the container's chatmail.ini from .env this once (FORCE_REINIT_INI_FILE=true).
    #[arg(long)]
    pub force_reinit_ini: bool,

    /// Run the debug commands before deploying this once (DEBUG_COMMANDS_ENABLED=true).
    #[arg(long)]
    pub debug_commands: bool,

    /// Let chatmail.ini win over conflicting values set by hand in .env.
    #[arg(long)]
    pub force: bool,

    /// Trust these extra CA certificates while building the image (a PEM file or a directory of .crt/.pem files), for networks whose proxy re-signs TLS; not kept in the image.
    #[arg(long, value_name = "PATH", env = "CHATMAIL_BUILD_CA")]
    pub build_ca: Option<std::path::PathBuf>,

    /// With --build-ca: keep those certificates trusted in the image too.
    #[arg(long, requires = "build_ca")]
    pub keep_build_ca: bool,

    /// Seconds to wait for the container to become healthy.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub wait_timeout: u64,
}
