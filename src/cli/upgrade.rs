//! Arguments of `upgrade`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use crate::upgrade::{self, Options};
use crate::{error, Context};

#[derive(Args, Debug, Clone)]
pub struct UpgradeArgs {
    /// Move to this tag, branch or commit of the relay instead of its newest release tag (e.g. `main`).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,

    /// Only say whether an upgrade is available: exit 0 when one is, 1 when up to date. Changes nothing but the fetched refs in relay/.git.
    #[arg(long, conflicts_with_all = ["rollback", "allow_dirty", "no_backup", "no_stage", "backup_dir"])]
    pub check: bool,

    /// Go back to the release before the last upgrade (its image is kept).
    #[arg(long, conflicts_with_all = ["reference", "no_fetch", "allow_dirty", "no_backup", "no_stage", "backup_dir"])]
    pub rollback: bool,

    /// Do not fetch from the relay's remote: use the tags and commits already in relay/.
    #[arg(long)]
    pub no_fetch: bool,

    /// Upgrade although relay/ has local changes (they are kept and built in).
    #[arg(long)]
    pub allow_dirty: bool,

    /// Skip the backup taken just before the swap.
    #[arg(long)]
    pub no_backup: bool,

    /// Swap without deploying the new release in a side container first: the new container deploys itself (a longer interruption, and a failing release is found only by the swap, then rolled back).
    #[arg(long)]
    pub no_stage: bool,

    /// Where the backup before the swap goes (default: backups/ in the deployment directory; two chains are kept).
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Trust these extra CA certificates while building the image (see `setup --build-ca`).
    #[arg(long, value_name = "PATH", env = "CHATMAIL_BUILD_CA")]
    pub build_ca: Option<PathBuf>,

    /// With --build-ca: keep those certificates trusted in the image too.
    #[arg(long, requires = "build_ca")]
    pub keep_build_ca: bool,

    /// Seconds the new container may take to become healthy before the rollback.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub wait_timeout: u64,

    /// Print a machine-readable summary.
    #[arg(long)]
    pub json: bool,
}

impl UpgradeArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        let timeout = Duration::from_secs(self.wait_timeout);
        if self.check {
            let available =
                upgrade::check(ctx, self.reference.as_deref(), !self.no_fetch, self.json)?;
            return if available {
                Ok(())
            } else {
                Err(error::silent(error::EXIT_RUNTIME))
            };
        }
        let summary = if self.rollback {
            upgrade::rollback(ctx, timeout, self.json)?
        } else {
            upgrade::run(
                ctx,
                &Options {
                    reference: self.reference,
                    fetch: !self.no_fetch,
                    allow_dirty: self.allow_dirty,
                    backup: !self.no_backup,
                    stage: !self.no_stage,
                    backup_dir: self.backup_dir,
                    wait_timeout: timeout,
                    build: crate::build::BuildOptions {
                        ca: self.build_ca,
                        keep_ca: self.keep_build_ca,
                    },
                    json: self.json,
                },
            )?
        };
        if self.json && !ctx.dry_run {
            ctx.shell.data(serde_json::to_string_pretty(&summary)?);
        }
        Ok(())
    }
}
