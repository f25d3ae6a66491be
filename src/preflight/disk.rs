//! The disk-space check.

use super::{Check, CheckId};
use crate::context::Context;
use crate::host::space::{free_bytes, human_bytes};

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
