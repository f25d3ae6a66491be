//! Arguments of `dns`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use crate::context::Context;
use crate::dns::{self, DnsOptions};

#[derive(Args, Debug, Clone)]
pub struct DnsArgs {
    /// Only print the records; do not look them up in DNS.
    #[arg(long)]
    pub no_check: bool,

    /// Also write the records to FILE (BIND zone format; its first line marks it as written by this command). FILE must be new or a zone file this command wrote: anything else (.env, chatmail.ini, a symlink, a file without the mark) is refused and left alone.
    #[arg(long, value_name = "FILE")]
    pub zonefile: Option<PathBuf>,

    /// Print a machine-readable report.
    #[arg(long)]
    pub json: bool,
}

impl DnsArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        dns::run(
            ctx,
            &DnsOptions {
                check: !self.no_check,
                zonefile: self.zonefile,
                json: self.json,
            },
        )
    }
}
