//! What a backup holds: the deployment's state, listed with metadata
//! (no content is read here).
//!
//! `data/` (mailboxes, DKIM keys, certificates, the mail queue, the tool's
//! state), `chatmail.ini`, `.env`, `custom/` and the administrator's
//! override file. The repository's placeholder files (`data/README.md`,
//! `custom/README.md`) belong to the checkout, not to the deployment.
//! Sockets and fifos are skipped: the services create them at start.

use anyhow::{bail, Context as _, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::manifest::{Entry, EntryKind};
use crate::deployment::{self, Deployment};

/// The mail queue, `/var/spool/postfix` in the container: the one part of
/// `data/` that is not safe to copy while Postfix writes it.
pub const QUEUE_DIR: &str = "data/chatmail-postfix";

/// Files of the repository checkout that live in the backed-up
/// directories but are not deployment state.
pub const PLACEHOLDERS: &[&str] = &["data/README.md", "custom/README.md"];

/// The top-level paths a backup holds, when they exist.
pub fn top_level() -> Vec<&'static str> {
    let mut v = vec![
        deployment::DATA_DIR,
        deployment::INI_FILE,
        deployment::ENV_FILE,
        deployment::CUSTOM_DIR,
    ];
    v.extend(deployment::USER_OVERRIDES);
    v
}

/// One path found on disk.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub entry: Entry,
    pub abs: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

/// What a scan found besides entries.
#[derive(Clone, Debug, Default)]
pub struct Skipped {
    pub special: Vec<String>,
}

/// The entry for one path from its metadata (`rel` is `/`-separated).
pub fn entry_of(abs: &Path, rel: &str, m: &fs::Metadata) -> Result<Scanned> {
    let ft = m.file_type();
    let (kind, target) = if ft.is_dir() {
        (EntryKind::Dir, None)
    } else if ft.is_symlink() {
        let t = fs::read_link(abs)
            .with_context(|| format!("cannot read the link {}", abs.display()))?;
        let Some(t) = t.to_str() else {
            bail!(
                "{}: the link's target is not UTF-8, which the backup manifest cannot record; point it at a UTF-8 name",
                abs.display()
            );
        };
        (EntryKind::Symlink, Some(t.to_string()))
    } else {
        (EntryKind::File, None)
    };
    Ok(Scanned {
        entry: Entry {
            path: rel.to_string(),
            kind,
            size: if kind == EntryKind::File { m.len() } else { 0 },
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec() as u32,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            user: None,
            group: None,
            sha256: None,
            target,
            stored: false,
        },
        abs: abs.to_path_buf(),
        dev: m.dev(),
        ino: m.ino(),
        nlink: m.nlink(),
    })
}

/// The relative name of `abs` under `dir`, `/`-separated, or an error for
/// a name the manifest cannot hold.
pub fn rel_name(dir: &Path, abs: &Path) -> Result<String> {
    // Bytes, not `Path::strip_prefix`: component parsing was a tenth of
    // an incremental backup's time.
    let (d, a) = (
        dir.as_os_str().as_encoded_bytes(),
        abs.as_os_str().as_encoded_bytes(),
    );
    let rel = match a.strip_prefix(d) {
        Some(r) if r.first() == Some(&b'/') => &r[1..],
        Some(r) if d.ends_with(b"/") => r,
        _ => a,
    };
    match std::str::from_utf8(rel).ok() {
        Some(s) => Ok(s.to_string()),
        None => bail!(
            "{}: the name is not UTF-8, which the backup manifest cannot record; rename it",
            abs.display()
        ),
    }
}

/// Walk one tree (or a single file) of the deployment. `skip` are absolute
/// paths left out with what lies below them (the queue, the output).
pub fn scan_tree(
    dir: &Path,
    top: &Path,
    skip: &[PathBuf],
    out: &mut Vec<Scanned>,
    skipped: &mut Skipped,
) -> Result<()> {
    let walker = walkdir::WalkDir::new(top)
        .follow_links(false)
        .follow_root_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !skip.iter().any(|s| s.as_os_str() == e.path().as_os_str()));
    let mut listed = Vec::new();
    for item in walker {
        let item = match item {
            Ok(i) => i,
            // A file of a maildir removed between listing and stat
            // (expunged, or renamed by a flag change): not an error.
            Err(e)
                if e.io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(e) => {
                let path = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(anyhow::Error::new(e).context(format!("cannot read {path}")));
            }
        };
        let rel = rel_name(dir, item.path())?;
        if PLACEHOLDERS.contains(&rel.as_str()) {
            continue;
        }
        listed.push((item.depth() == 0, item.into_path(), rel));
    }
    // The metadata of a mailstore's files, in parallel: an incremental
    // backup spends most of its time here.
    use rayon::prelude::*;
    let found: Vec<Result<Option<std::result::Result<Scanned, String>>>> = listed
        .into_par_iter()
        .map(|(root, abs, rel)| {
            // The root of a tree may be a link the administrator set up
            // (`data` on another disk): it is followed, as Compose does.
            let m = if root {
                fs::metadata(&abs)
            } else {
                fs::symlink_metadata(&abs)
            };
            let m = match m {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", abs.display())),
            };
            let ft = m.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                return Ok(Some(Err(rel)));
            }
            entry_of(&abs, &rel, &m).map(|s| Some(Ok(s)))
        })
        .collect();
    for f in found {
        match f? {
            Some(Ok(s)) => out.push(s),
            Some(Err(special)) => skipped.special.push(special),
            None => {}
        }
    }
    Ok(())
}

/// Everything a backup holds except the queue's content, in archive order.
pub fn scan(dep: &Deployment, skip: &[PathBuf]) -> Result<(Vec<Scanned>, Skipped)> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for top in top_level() {
        let abs = dep.path(top);
        if fs::symlink_metadata(&abs).is_err() {
            continue;
        }
        scan_tree(dep.dir(), &abs, skip, &mut out, &mut skipped)?;
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_state_and_skips_placeholders_sockets_and_skipped_trees() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        fs::create_dir_all(d.path().join("data/chatmail/vmail")).unwrap();
        fs::create_dir_all(d.path().join("data/chatmail-postfix/deferred")).unwrap();
        fs::write(d.path().join("data/README.md"), "placeholder").unwrap();
        fs::write(d.path().join("data/chatmail/vmail/m"), "mail").unwrap();
        fs::write(d.path().join("data/chatmail-postfix/deferred/Q"), "q").unwrap();
        fs::write(d.path().join(".env"), "A=1").unwrap();
        fs::create_dir_all(d.path().join("relay")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("data/s")).unwrap();
        let (list, skipped) = scan(&dep, &[d.path().join(QUEUE_DIR)]).unwrap();
        let names: Vec<&str> = list.iter().map(|s| s.entry.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "data",
                "data/chatmail",
                "data/chatmail/vmail",
                "data/chatmail/vmail/m",
                ".env"
            ]
        );
        assert_eq!(skipped.special, ["data/s"]);
    }
}
