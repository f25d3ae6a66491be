//! The last certificate the services were reloaded into, kept in
//! `data/.cert-watch-state.json` so that `--once` (cron, an ACME client's
//! deploy hook) and a restarted watcher reload only when the content really
//! changed, and `status` can say what is being served.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::context::Context;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Content fingerprint of the applied chain + key.
    pub fingerprint: String,
    /// sha256 of the applied leaf certificate.
    #[serde(default)]
    pub leaf_sha256: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub not_after: String,
    #[serde(default)]
    pub cert_files: Vec<PathBuf>,
    #[serde(default)]
    pub key_file: PathBuf,
    /// RFC 3339 time of the reload.
    #[serde(default)]
    pub applied_at: String,
    /// Whether the served certificate was checked afterwards.
    #[serde(default)]
    pub verified: bool,
}

pub fn path(ctx: &Context) -> PathBuf {
    ctx.deployment.cert_watch_state()
}

/// The recorded state; `None` when there is none yet. A damaged file is
/// treated as absent (with a warning) so the next change reloads.
pub fn load(ctx: &Context) -> Option<State> {
    load_from(&path(ctx), ctx)
}

fn load_from(p: &Path, ctx: &Context) -> Option<State> {
    let bytes = match crate::host::read_input_opt(p, crate::host::MAX_CONFIG_BYTES) {
        Ok(b) => b?,
        Err(e) => {
            ctx.shell.warn(format!(
                "ignoring {e} (it is rewritten after the next reload)"
            ));
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            ctx.shell.warn(format!(
                "ignoring {}: {e} (it is rewritten after the next reload)",
                p.display()
            ));
            None
        }
    }
}

/// Wait for and take the lock of the runs that reload (`flock` on
/// `data/.cert-watch.lock`); released when the file is dropped, or when
/// the process dies.
pub fn lock(ctx: &Context) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = ctx.deployment.cert_watch_lock();
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&p)
        .with_context(|| format!("cannot open the lock file {}", p.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("cannot lock {}", p.display()))?;
    Ok(f)
}

/// Record `state` atomically (0600; it names key files).
pub fn save(ctx: &Context, state: &State) -> Result<()> {
    let p = path(ctx);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut bytes = serde_json::to_vec_pretty(state)?;
    bytes.push(b'\n');
    crate::host::write_atomic(&p, &bytes, 0o600)
}
