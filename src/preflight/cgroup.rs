//! The cgroup-v2 check: systemd as PID 1 in the container needs the
//! unified hierarchy. Read from `/proc/self/mountinfo` under the root, and
//! on the real host from the filesystem magic of `/sys/fs/cgroup`.

use std::fs;
use std::path::Path;

use super::{Check, CheckId};
use crate::context::Context;

/// What `/sys/fs/cgroup` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup2 mounted at /sys/fs/cgroup.
    Unified,
    /// v1 controllers at /sys/fs/cgroup/*, cgroup2 only at /sys/fs/cgroup/unified.
    Hybrid,
    /// Only cgroup v1.
    Legacy,
    /// No cgroup mount found at all.
    Unknown,
}

/// Classify the cgroup setup from `/proc/self/mountinfo` text.
///
/// Fields: `id parent major:minor root mountpoint options [optional...] - fstype source superopts`.
pub fn classify_mountinfo(text: &str) -> CgroupMode {
    let mut at_root: Option<String> = None;
    let mut unified_below = false;
    let mut v1 = false;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = left.split_whitespace().nth(4).unwrap_or("");
        let fstype = right.split_whitespace().next().unwrap_or("");
        if mountpoint == "/sys/fs/cgroup" {
            // The last mount on a mountpoint is the visible one.
            at_root = Some(fstype.to_string());
        } else if let Some(sub) = mountpoint.strip_prefix("/sys/fs/cgroup/") {
            if fstype == "cgroup2" && (sub == "unified" || sub == "systemd") {
                unified_below = true;
            } else if fstype == "cgroup" {
                v1 = true;
            }
        }
    }
    match at_root.as_deref() {
        Some("cgroup2") => CgroupMode::Unified,
        _ if unified_below => CgroupMode::Hybrid,
        _ if v1 => CgroupMode::Legacy,
        Some("tmpfs") => CgroupMode::Legacy,
        _ => CgroupMode::Unknown,
    }
}

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The edge: statfs the real /sys/fs/cgroup and say whether it is cgroup2.
fn statfs_is_cgroup2(path: &Path) -> Option<bool> {
    let st = rustix::fs::statfs(path).ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

pub(super) fn check_cgroup(ctx: &Context) -> Check {
    const ID: &str = CheckId::CgroupV2.id();
    let mountinfo = fs::read_to_string(ctx.host.path("/proc/self/mountinfo")).unwrap_or_default();
    let mut mode = classify_mountinfo(&mountinfo);
    if ctx.host.is_real_root() {
        // The filesystem magic is the authority on the real host.
        match statfs_is_cgroup2(Path::new("/sys/fs/cgroup")) {
            Some(true) => mode = CgroupMode::Unified,
            Some(false) if mode == CgroupMode::Unified => mode = CgroupMode::Unknown,
            _ => {}
        }
    }
    let fix = "boot the host with cgroups v2: add `systemd.unified_cgroup_hierarchy=1` to \
               GRUB_CMDLINE_LINUX in /etc/default/grub, run `update-grub` and reboot \
               (Debian 11+ and Ubuntu 21.10+ use v2 by default)";
    match mode {
        CgroupMode::Unified => Check::ok(ID, "cgroups v2 (cgroup2 mounted at /sys/fs/cgroup)"),
        CgroupMode::Hybrid => Check::fail(
            ID,
            "cgroups are in hybrid mode (v1 controllers, cgroup2 only at /sys/fs/cgroup/unified); the appliance (systemd as PID 1 with `cgroup: host`) is supported on cgroups v2 only",
            fix,
        ),
        CgroupMode::Legacy => Check::fail(
            ID,
            "cgroups v1 only; the appliance (systemd as PID 1 with `cgroup: host`) is supported on cgroups v2 only",
            fix,
        ),
        CgroupMode::Unknown => Check::fail(
            ID,
            "no cgroup2 filesystem at /sys/fs/cgroup",
            fix,
        ),
    }
}
