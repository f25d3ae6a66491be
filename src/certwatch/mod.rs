//! `cert-watch`: reload the services when the TLS certificate changes.
use crate::cli::certwatch::CertWatchArgs;
use crate::Context;
use anyhow::Result;

pub fn run(_ctx: &Context, _args: &CertWatchArgs) -> Result<()> {
    anyhow::bail!("cert-watch: work in progress")
}
