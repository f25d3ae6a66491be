//! What an upgrade records between its steps and for `--rollback`:
//! `data/.upgrade-state.json` (written atomically; no secrets in it).

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::git::{is_full_hex, Checkout, Position};
use super::Release;
use crate::context::Context;
use crate::shell::Shown;

/// The state file, relative to the deployment directory.
pub const STATE_FILE: &str = "data/.upgrade-state.json";
/// What the last upgrade and the last rollback did, for `metrics`:
/// relative to the deployment directory. The state file cannot tell: an
/// upgrade that rolled back by itself puts the earlier state back.
pub const LAST_FILE: &str = "data/.upgrade-last.json";

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

/// The last upgrade that swapped, and the last rollback.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRuns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<LastRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<LastRun>,
}

/// One finished upgrade or rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// When it finished (RFC 3339).
    pub at: String,
    pub from: Option<Release>,
    pub to: Option<Release>,
    /// A rollback the upgrade did by itself because the new release failed
    /// (not `upgrade --rollback`).
    #[serde(default)]
    pub automatic: bool,
    /// Why the new release failed, for an automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LastRun {
    /// A run that finished now.
    pub fn now(from: Option<Release>, to: Option<Release>) -> LastRun {
        LastRun {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            from,
            to,
            automatic: false,
            reason: None,
        }
    }
}

/// What [`LAST_FILE`] records, if anything; a broken file is an error
/// naming it.
pub fn load_last(ctx: &Context) -> Result<Option<LastRuns>> {
    let p = ctx.deployment.path(LAST_FILE);
    let Some(bytes) = crate::host::read_input_opt(&p, crate::host::MAX_CONFIG_BYTES)
        .map_err(crate::host::InputError::into_error)?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not an upgrade record; move it away", p.display()))
}

/// Record a finished upgrade (`rollback` false) or rollback in
/// [`LAST_FILE`], keeping the other kind's record. Never fails the
/// command that finished: a record that cannot be written is a warning.
pub fn record_last(ctx: &Context, rollback: bool, run: LastRun) {
    let result = (|| -> Result<()> {
        let mut last = load_last(ctx).ok().flatten().unwrap_or_default();
        if rollback {
            last.rollback = Some(run);
        } else {
            last.upgrade = Some(run);
        }
        let mut text = serde_json::to_vec_pretty(&last)?;
        text.push(b'\n');
        crate::host::write_atomic(&ctx.deployment.path(LAST_FILE), &text, 0o600)
    })();
    if let Err(e) = result {
        ctx.shell
            .warn(format!("cannot record the upgrade for `metrics`: {e:#}"));
    }
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
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        crate::error::usage(format!(
            "{} is not an upgrade state file ({e}); move it away (it only serves `upgrade --rollback`)",
            p.shown()
        ))
    })
}

/// Check a state file read from disk against what an upgrade of this
/// deployment writes there, before anything of it is used: it may come
/// from a restored archive or another deployment. Image names must be
/// this deployment's image (`image`) and its restore points
/// (`<image>-relay-<commit>`), commits full hex object names, the commit
/// to move the checkout back to a commit of `relay/`, the branch a valid
/// branch name. An error names the file, the field and what is wrong.
pub fn validate(ctx: &Context, st: &UpgradeState, image: &str, checkout: &Checkout) -> Result<()> {
    let p = path(ctx);
    let bad = |field: &str, what: String| {
        crate::error::usage(format!(
            "{}: `{field}` {what}; an upgrade of this deployment does not write that (a file from another deployment or host, or edited?): move it away (it only serves `upgrade --rollback`)",
            p.shown()
        ))
    };
    if st.image != image {
        return Err(bad(
            "image",
            format!(
                "is {}, but this deployment's image is {}",
                value(&st.image),
                value(image)
            ),
        ));
    }
    let release = |field: &str, r: &Release| -> Result<()> {
        if !is_full_hex(&r.commit) {
            return Err(bad(
                &format!("{field}.commit"),
                format!(
                    "is {}, not a full commit id (40 or 64 hex digits)",
                    value(&r.commit)
                ),
            ));
        }
        let printable = !r.version.is_empty()
            && r.version.chars().count() <= 128
            && !r
                .version
                .chars()
                .any(|c| c.is_control() || c.is_whitespace());
        if !printable {
            return Err(bad(
                &format!("{field}.version"),
                format!(
                    "is {}, not a version (1 to 128 characters, no spaces or control characters)",
                    value(&r.version)
                ),
            ));
        }
        Ok(())
    };
    if let Some(prev) = &st.previous {
        let commit = &prev.position.commit;
        if !is_full_hex(commit) {
            return Err(bad(
                "previous.position.commit",
                format!(
                    "is {}, not a full commit id (40 or 64 hex digits)",
                    value(commit)
                ),
            ));
        }
        if !checkout.has_commit(commit)? {
            return Err(bad(
                "previous.position.commit",
                format!(
                    "is {}, which is no commit in {}",
                    value(commit),
                    checkout.dir.shown()
                ),
            ));
        }
        if let Some(b) = &prev.position.branch {
            if !checkout.is_branch_name(b)? {
                return Err(bad(
                    "previous.position.branch",
                    format!("is {}, not a valid branch name", value(b)),
                ));
            }
        }
        release("previous.release", &prev.release)?;
        if let Some(tag) = &prev.image_tag {
            let expected = crate::engine::image::restore_tag(image, &prev.release.commit);
            if *tag != expected {
                return Err(bad(
                    "previous.image_tag",
                    format!(
                        "is {}, but the restore point of this deployment's image for that release is {}",
                        value(tag),
                        value(&expected)
                    ),
                ));
            }
        }
        if let Some(id) = &prev.image_id {
            let ok = id.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            });
            if !ok {
                return Err(bad(
                    "previous.image_id",
                    format!(
                        "is {}, not an image id (sha256: and 64 hex digits)",
                        value(id)
                    ),
                ));
            }
        }
    }
    if let Some(t) = &st.target {
        release("target", t)?;
    }
    if humantime::parse_rfc3339_weak(&st.started).is_err() {
        return Err(bad(
            "started",
            format!("is {}, not a time (RFC 3339)", value(&st.started)),
        ));
    }
    Ok(())
}

/// A value from the file for a message: escaped, quoted, and cut short.
fn value(v: &str) -> String {
    let cut: String = v.chars().take(80).collect();
    format!(
        "`{}`{}",
        cut.shown(),
        if cut.len() < v.len() { "..." } else { "" }
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_and_a_rollback_are_recorded_side_by_side() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        let ctx = crate::context::Context::quiet(d.path(), "/");
        assert_eq!(load_last(&ctx).unwrap(), None);
        let rel = |v: &str| Release {
            commit: format!("{v:0>40}"),
            version: v.into(),
        };
        record_last(&ctx, false, LastRun::now(Some(rel("1")), Some(rel("2"))));
        let mut back = LastRun::now(Some(rel("3")), Some(rel("2")));
        back.automatic = true;
        back.reason = Some("unhealthy".into());
        record_last(&ctx, true, back.clone());
        let last = load_last(&ctx).unwrap().unwrap();
        assert_eq!(last.upgrade.unwrap().to, Some(rel("2")));
        assert_eq!(last.rollback, Some(back));
        std::fs::write(d.path().join(LAST_FILE), "{").unwrap();
        let err = load_last(&ctx).unwrap_err().to_string();
        assert!(
            err.contains(".upgrade-last.json is not an upgrade record"),
            "{err}"
        );
    }
}
