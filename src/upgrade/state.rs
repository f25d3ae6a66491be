//! What an upgrade records between its steps and for `--rollback`:
//! `data/.upgrade-state.json` (written atomically; no secrets in it).

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::git::Position;
use super::Release;
use crate::Context;

/// The state file, relative to the deployment directory.
pub const STATE_FILE: &str = "data/.upgrade-state.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Building,
    Swapping,
    Done,
    RolledBack,
}

impl Phase {
    /// "building", for "stopped while building".
    pub fn doing(self) -> &'static str {
        match self {
            Phase::Building => "building",
            Phase::Swapping => "swapping the container",
            Phase::Done => "done",
            Phase::RolledBack => "rolled back",
        }
    }
}

/// Where to go back to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// The relay checkout's position before.
    pub position: Position,
    /// The relay the previous image runs.
    pub release: Release,
    /// The previous image's restore-point name; `None` when there was none.
    pub image_tag: Option<String>,
    /// The image the relay ran (the restore point may be that image after
    /// its deploy); `None` when there was none.
    #[serde(default)]
    pub image_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeState {
    pub phase: Phase,
    /// The service's image name.
    pub image: String,
    pub previous: Option<RestorePoint>,
    pub target: Option<Release>,
    /// When the upgrade began (RFC 3339).
    pub started: String,
}

fn path(ctx: &Context) -> PathBuf {
    ctx.deployment.path(STATE_FILE)
}

/// The recorded state, if any; a broken file is an error naming it.
pub fn load(ctx: &Context) -> Result<Option<UpgradeState>> {
    let p = path(ctx);
    let Some(bytes) = crate::host::read_input_opt(&p, crate::host::MAX_CONFIG_BYTES)
        .map_err(crate::host::InputError::into_error)?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not an upgrade state file; move it away", p.display()))
}

pub fn save(ctx: &Context, st: &UpgradeState) -> Result<()> {
    let p = path(ctx);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_vec_pretty(st)?;
    text.push(b'\n');
    crate::host::write_atomic(&p, &text, 0o600)
}

/// Put back what an earlier upgrade recorded (after one that changed
/// nothing), or nothing when there was none.
pub fn put_back(ctx: &Context, prior: Option<&UpgradeState>) {
    match prior {
        Some(p) => {
            let _ = save(ctx, p);
        }
        None => {
            let _ = std::fs::remove_file(path(ctx));
        }
    }
}
