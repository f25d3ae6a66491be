//! The disk-space check, and byte counts for people.

use anyhow::{Context as _, Result};
use std::path::Path;

use super::{Check, CheckId};
use crate::context::Context;

/// Below this, fail; below `DISK_WARN`, warn.
const DISK_FAIL: u64 = 1 << 30;
const DISK_WARN: u64 = 5 << 30;

pub(super) fn check_disk(ctx: &Context) -> Check {
    const ID: &str = CheckId::DiskSpace.id();
    let mut dir = ctx.deployment.data();
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    match free_bytes(&dir) {
        Ok(free) => {
            let shown = human_bytes(free);
            if free < DISK_FAIL {
                Check::fail(
                    ID,
                    format!("only {shown} free under {}", dir.display()),
                    "free space or put data/ on a bigger disk (mail, the image and logs need several GB)",
                )
            } else if free < DISK_WARN {
                Check::warn(
                    ID,
                    format!("{shown} free under {}", dir.display()),
                    "plan for more space: mailboxes grow and the image needs about 2 GB",
                )
            } else {
                Check::ok(ID, format!("{shown} free under {}", dir.display()))
            }
        }
        Err(e) => Check::warn(
            ID,
            format!("cannot measure free space: {e:#}"),
            "check `df -h`",
        ),
    }
}

/// Free bytes for an unprivileged user on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
