//! inotify limits on the host.
use crate::cli::preflight::SysctlArgs;
use crate::Context;
use anyhow::Result;

pub fn run(_ctx: &Context, _args: &SysctlArgs) -> Result<()> {
    anyhow::bail!("sysctl: work in progress")
}
