//! Arguments of `upgrade`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use crate::upgrade::{self, Options};
use crate::{context::Context, error};

#[derive(Args, Debug, Clone)]
pub struct UpgradeArgs {
    /// Move to this tag, branch or commit of the relay instead of its newest release tag. A tag is taken first; a name that is a branch of relay/'s remote (`main`) is that branch as just fetched; anything else (a commit, `HEAD~1`, a local branch, `origin/main~2`) is resolved in relay/ as git does there. It must hold the relay's code (chatmaild/ and cmdeploy/ with their pyproject.toml).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,

    /// Only say whether an upgrade is available: exit 0 when one is, 1 when up to date, 4 when it could not be checked (the remote unreachable, a bad --ref, ...). Changes nothing but the fetched refs in relay/.git.
    #[arg(long, conflicts_with_all = ["rollback", "allow_dirty", "no_backup", "no_deploy_beside", "backup_dir"])]
    pub check: bool,

    /// Go back to the release before the last upgrade (its image is kept). data/.upgrade-state.json, that image and relay/ (no local edits) are checked before anything changes.
    #[arg(long, conflicts_with_all = ["reference", "no_fetch", "allow_dirty", "no_backup", "no_deploy_beside", "backup_dir"])]
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
    #[arg(long, alias = "no-stage")]
    pub no_deploy_beside: bool,

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
            // Cron reads 1 as "up to date": every other outcome of a check
            // that did not finish gets a code of its own (an interrupt
            // stays 130).
            return match upgrade::check(ctx, self.reference.as_deref(), !self.no_fetch, self.json) {
                Ok(true) => Ok(()),
                Ok(false) => Err(error::silent(error::EXIT_RUNTIME)),
                Err(e) if error::exit_code(&e) == error::EXIT_INTERRUPTED => Err(e),
                Err(e) => Err(e.context(error::Failure {
                    code: error::EXIT_CANNOT_CHECK,
                    message: Some(format!(
                        "could not check whether an upgrade is available (exit status {})",
                        error::EXIT_CANNOT_CHECK
                    )),
                })),
            };
        }
        if let Some(dir) = &self.backup_dir {
            check_backup_dir(dir)?;
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
                    deploy_beside: !self.no_deploy_beside,
                    backup_dir: self.backup_dir,
                    wait_timeout: timeout,
                    build: crate::engine::build::BuildOptions {
                        ca_name: self.build_ca.as_deref().map(|ca| {
                            super::option_name("--build-ca", Some("CHATMAIL_BUILD_CA"), ca)
                        }),
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

/// `--backup-dir DIR` before anything happens: a directory that can be
/// written, or one that can be made (its nearest existing ancestor is a
/// directory); otherwise a usage error naming the option.
fn check_backup_dir(dir: &std::path::Path) -> Result<()> {
    let bad = |what: String| error::usage(format!("--backup-dir {}: {what}", dir.display()));
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => break,
            Ok(m) => {
                let kind = crate::host::kind_name(rustix::fs::FileType::from_raw_mode(
                    std::os::unix::fs::MetadataExt::mode(&m),
                ));
                return Err(bad(if at == dir {
                    format!("is a {kind}, not a directory")
                } else {
                    format!("{} is a {kind}, not a directory", at.display())
                }));
            }
            // Missing, or below a file (found on the way up).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => break,
                }
            }
            Err(e) => return Err(bad(format!("cannot look at {}: {e}", at.display()))),
        }
    }
    if at.exists() {
        rustix::fs::access(
            at,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .map_err(|e| bad(format!("cannot write in {}: {e}", at.display())))?;
    }
    Ok(())
}
