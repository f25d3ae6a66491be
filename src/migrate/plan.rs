//! What a migration will do, computed before anything changes: the source
//! trees and their sizes, the destinations and whether this tool may write
//! there, the free space, and the units to stop.
//!
//! The space check is a pure function of numbers ([`check_space`]) so its
//! decisions are tested exactly; the numbers come from `statvfs` on the
//! destination's filesystem.

use anyhow::Result;
use std::path::{Path, PathBuf};

use super::copy::Totals;
use super::show::Shown as _;

/// One tree to copy.
#[derive(Clone, Debug)]
pub struct Source {
    /// Host path as the administrator knows it, e.g. `/etc/dkimkeys`.
    pub host_path: &'static str,
    /// Destination relative to the deployment directory.
    pub dest: &'static str,
    /// The relay cannot work without it: a missing source is an error.
    pub required: bool,
    /// Whose owner matters to the container (`/home/vmail`, not `/home`).
    pub owner_of: &'static str,
}

/// The trees a chatmail relay keeps its state in.
pub const DKIM: Source = Source {
    host_path: "/etc/dkimkeys",
    dest: "data/chatmail-dkimkeys",
    required: true,
    owner_of: "/etc/dkimkeys",
};
pub const ACME: Source = Source {
    host_path: "/var/lib/acme",
    dest: "data/chatmail-acme",
    required: false,
    owner_of: "/var/lib/acme",
};
pub const MAIL: Source = Source {
    host_path: "/home",
    dest: "data/chatmail",
    required: true,
    owner_of: "/home/vmail",
};

/// The Postfix queue: mail the relay accepted and has not delivered yet
/// (the relay's own migration guide copies it too). Sockets and the chroot's
/// device nodes are not copied; Postfix makes them again. In the container
/// the queue is given to Postfix's users by name before Postfix starts
/// (docker/files/postfix-spool), whatever their numbers were here.
pub const QUEUE: Source = Source {
    host_path: "/var/spool/postfix",
    dest: "data/chatmail-postfix",
    required: false,
    owner_of: "/var/spool/postfix/deferred",
};

/// The sources for a run: all four, or without the mail with
/// `--mount-vmail`.
///
/// Another tree is one more [`Source`] here: the walk, the copy, the
/// verification and the state file treat every source alike, and the owner
/// of its `owner_of` path is recorded by number and by the host's user
/// name, so the container can map it by name.
pub fn sources(mount_vmail: bool) -> Vec<Source> {
    if mount_vmail {
        vec![DKIM, ACME, QUEUE]
    } else {
        vec![DKIM, ACME, QUEUE, MAIL]
    }
}

/// Free space on a filesystem, from `statvfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    pub bytes: u64,
    pub inodes: u64,
}

/// Headroom kept free on top of the data: a full disk stops the relay.
pub const MARGIN_BYTES: u64 = 64 * 1024 * 1024;

/// Decide whether `need` fits into `free`. `already` is what previous runs
/// already copied to the destination (a resumed migration needs only the
/// rest). Returns a message with the numbers when it does not fit.
pub fn check_space(need: &Totals, already: &Totals, free: Free) -> Result<(), String> {
    // Allocated blocks, or the apparent size where larger: a sparse source
    // file is not guaranteed to stay sparse in the copy.
    let size = |t: &Totals| t.alloc.max(t.bytes);
    let bytes = size(need).saturating_sub(size(already)) + MARGIN_BYTES;
    let inodes = (need.files + need.dirs + need.symlinks)
        .saturating_sub(already.files + already.dirs + already.symlinks);
    if free.bytes < bytes {
        return Err(format!(
            "not enough free space at the destination: {} needed ({} of data + {} headroom), {} available",
            human(bytes),
            human(bytes - MARGIN_BYTES),
            human(MARGIN_BYTES),
            human(free.bytes)
        ));
    }
    // Some filesystems (btrfs) report no inode limit at all: f_files == 0.
    if free.inodes != 0 && free.inodes < inodes {
        return Err(format!(
            "not enough free inodes at the destination: {inodes} needed, {} available",
            free.inodes
        ));
    }
    Ok(())
}

/// `statvfs` on the nearest existing ancestor of `path`.
pub fn free_at(path: &Path) -> Result<Free> {
    let mut p: PathBuf = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    let st = rustix::fs::statvfs(&p)
        .map_err(|e| anyhow::anyhow!("cannot read the free space of {}: {e}", p.shown()))?;
    let files_limited = st.f_files != 0;
    Ok(Free {
        bytes: st.f_bavail.saturating_mul(st.f_frsize),
        inodes: if files_limited { st.f_favail.max(1) } else { 0 },
    })
}

/// Bytes for humans (binary units).
pub fn human(bytes: u64) -> String {
    crate::host::space::human_bytes(bytes)
}

/// The user name of `uid` in the host's `/etc/passwd` (under `--root`).
pub fn user_name(passwd: &Path, uid: u32) -> Option<String> {
    let bytes = crate::host::read_input(passwd, crate::host::MAX_CONFIG_BYTES).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let id: u32 = f.next()?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(alloc: u64, files: u64) -> Totals {
        Totals {
            files,
            alloc,
            bytes: alloc,
            ..Totals::default()
        }
    }

    #[test]
    fn space_check_counts_margin_and_resumed_data() {
        let gib = 1024 * 1024 * 1024;
        let free = Free {
            bytes: gib,
            inodes: 1000,
        };
        assert!(check_space(&t(gib / 2, 10), &Totals::default(), free).is_ok());
        let e = check_space(&t(gib, 10), &Totals::default(), free).unwrap_err();
        assert!(
            e.contains("1.1 GiB needed") && e.contains("1.0 GiB available"),
            "{e}"
        );
        // Half already copied by an interrupted run: fits now.
        assert!(check_space(&t(gib, 10), &t(gib / 2, 5), free).is_ok());
        let e = check_space(&t(1, 5000), &Totals::default(), free).unwrap_err();
        assert!(e.contains("inodes"), "{e}");
        // No inode limit reported (btrfs).
        let free = Free {
            bytes: gib,
            inodes: 0,
        };
        assert!(check_space(&t(1, 5000), &Totals::default(), free).is_ok());
    }

    #[test]
    fn passwd_lookup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nvmail:x:998:998::/home/vmail:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(user_name(&p, 998).as_deref(), Some("vmail"));
        assert_eq!(user_name(&p, 5), None);
        assert_eq!(human(1536), "1.5 KiB");
    }
}
