//! Which archives of a backup directory are this deployment's, and which of
//! them a backup builds on or retention removes.
//!
//! An archive is identified by its own header: the deployment it was made
//! for (`deployment`, a random id kept in `data/`, so a restored
//! deployment knows its archives) and what made it (`origin`: `backup`, or
//! `upgrade`'s backups before a swap). Never by its name or its time on
//! disk: a file named like an archive, an archive of another relay in the
//! same directory, or a name dated in the future is none of ours, is never
//! built on and never removed. An encrypted archive's header cannot be
//! read without its key, so the deployment directory keeps a record of
//! every archive it wrote ([`LEDGER`]: path, size, a hash of the first
//! bytes, the header): an archive matching its record is identified by it.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::crypt::Keys;
use super::manifest::{Header, Kind};
use crate::context::Context;

/// The deployment's id, in `data/` (archived with it).
pub const ID_FILE: &str = "data/.chatmail-backup-id";
/// In the deployment directory: every archive this deployment wrote.
pub const LEDGER: &str = ".chatmail-backup-archives.json";
/// How many bytes of an archive its fingerprint covers.
const HEAD: usize = 4096;

pub use super::manifest::Origin;

/// The deployment's id: read from [`ID_FILE`], made when missing (not in a
/// dry run: then `None` when there is none yet).
pub fn deployment_id(ctx: &Context, create: bool) -> Result<Option<String>> {
    let path = ctx.path(ID_FILE);
    let valid =
        |id: &str| (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    match crate::host::read_input_opt(&path, 4096) {
        Ok(Some(bytes)) => {
            let id = String::from_utf8_lossy(&bytes).trim().to_string();
            if valid(&id) {
                return Ok(Some(id));
            }
            ctx.shell.warn(format!(
                "{} does not hold a backup id (16 to 64 hex digits); a new one is made: archives made before are kept, never removed by --keep, and not built on",
                path.display()
            ));
        }
        Ok(None) => {}
        Err(e) => ctx.shell.warn(format!(
            "{:#}; a new backup id is made: archives made before are kept, never removed by --keep, and not built on",
            e.into_error()
        )),
    }
    if !create {
        return Ok(None);
    }
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot make a backup id (reading /dev/urandom)")?;
    let id = hex::encode(raw);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            crate::host::write_atomic_nofollow(&path, format!("{id}\n").as_bytes(), 0o644)
        });
    match written {
        Ok(()) => Ok(Some(id)),
        // The backup itself does not need it: its archive names no
        // deployment, is never removed by --keep and never built on.
        Err(e) => {
            ctx.shell.warn(format!(
                "cannot keep a backup id in {} ({e:#}): this archive will be full and kept by --keep",
                path.display()
            ));
            Ok(None)
        }
    }
}

/// One archive this deployment wrote, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the first [`HEAD`] bytes.
    pub head: String,
    pub header: Header,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    archives: Vec<Record>,
}

fn read_ledger(ctx: &Context) -> Ledger {
    crate::host::read_input_opt(&ctx.path(LEDGER), 64 << 20)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Record `archive` (just written, with `header`) and forget archives
/// that are gone.
pub fn record(ctx: &Context, archive: &Path, header: &Header) -> Result<()> {
    let mut l = read_ledger(ctx);
    let abs = std::fs::canonicalize(archive)
        .with_context(|| format!("cannot read {}", archive.display()))?;
    let (size, head) = fingerprint(&abs)?;
    l.archives
        .retain(|r| r.path != abs && std::fs::symlink_metadata(&r.path).is_ok());
    l.archives.push(Record {
        path: abs,
        size,
        head,
        header: header.clone(),
    });
    crate::host::write_atomic_nofollow(&ctx.path(LEDGER), &serde_json::to_vec_pretty(&l)?, 0o600)
}

/// Size and head hash of a regular file (a symlink, FIFO, ... is refused,
/// never followed or opened for reading).
fn fingerprint(path: &Path) -> Result<(u64, String)> {
    let (mut f, size) = open_archive(path)?;
    let mut buf = vec![0u8; HEAD];
    let mut n = 0;
    while n < HEAD {
        let k = f
            .read(&mut buf[n..])
            .with_context(|| format!("cannot read {}", path.display()))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok((size, hex::encode(Sha256::digest(&buf[..n]))))
}

pub use super::read::open_archive;

/// An archive of a backup directory and what is known about it.
#[derive(Clone, Debug)]
pub struct Known {
    pub path: PathBuf,
    /// Its header, when it could be read (or its record matched).
    pub header: Option<Header>,
}

/// Every file of `dir` named like an archive, with its header when it can
/// be read: from the file (not encrypted, or with `keys`), else from the
/// ledger when the file is the one recorded.
pub fn list(ctx: &Context, dir: &Path, keys: &Keys) -> Result<Vec<Known>> {
    let ledger = read_ledger(ctx);
    let mut out = Vec::new();
    for p in super::archives_in(dir)? {
        let header = identify(&p, keys, &ledger);
        out.push(Known { path: p, header });
    }
    Ok(out)
}

fn identify(p: &Path, keys: &Keys, ledger: &Ledger) -> Option<Header> {
    // Only regular files: a link or FIFO named like an archive is no one's.
    let meta = std::fs::symlink_metadata(p).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let abs = std::fs::canonicalize(p).ok()?;
    if let Some(r) = ledger
        .archives
        .iter()
        .find(|r| r.path == abs && r.size == meta.len())
    {
        if fingerprint(p).ok().is_some_and(|(_, h)| h == r.head) {
            return Some(r.header.clone());
        }
    }
    let encrypted = {
        let mut f = open_archive(p).ok()?.0;
        let mut head = [0u8; 32];
        let n = f.read(&mut head).ok()?;
        head[..n].starts_with(super::crypt::MAGIC)
    };
    if encrypted && keys.passphrase.is_none() && keys.identity_files.is_empty() {
        return None;
    }
    super::read::read_header(p, keys).ok()
}

/// Whether `h` is this deployment's, made by `origin`.
pub fn is_ours(h: &Header, id: &str, origin: Origin) -> bool {
    h.deployment.as_deref() == Some(id) && h.origin.unwrap_or_default() == origin
}

/// The newest archive of ours (by the time its header records) to build
/// an incremental on.
pub fn newest(list: &[Known], id: &str, origin: Origin) -> Option<PathBuf> {
    list.iter()
        .filter_map(|k| Some((k, k.header.as_ref()?)))
        .filter(|(_, h)| is_ours(h, id, origin))
        .max_by(|(_, a), (_, b)| a.created.cmp(&b.created))
        .map(|(k, _)| k.path.clone())
}

/// A full archive and the incrementals built on it, oldest first.
#[derive(Clone, Debug)]
pub struct Chain {
    pub archives: Vec<PathBuf>,
    /// When its full archive was made.
    pub created: String,
}

/// The chains of ours in `list`: each full archive of ours with every
/// archive of ours that builds on it, through any number of steps. An
/// archive whose base is not one of ours (or missing) belongs to no chain.
pub fn chains(list: &[Known], id: &str, origin: Origin) -> Vec<Chain> {
    let ours: Vec<(&Known, &Header)> = list
        .iter()
        .filter_map(|k| Some((k, k.header.as_ref()?)))
        .filter(|(_, h)| is_ours(h, id, origin))
        .collect();
    let by_id: BTreeMap<&str, usize> = ours
        .iter()
        .enumerate()
        .map(|(i, (_, h))| (h.id.as_str(), i))
        .collect();
    // The full archive each one leads back to.
    let root_of = |mut i: usize| -> Option<usize> {
        let mut seen = BTreeSet::new();
        loop {
            if !seen.insert(i) {
                return None;
            }
            let h = ours[i].1;
            match (&h.kind, &h.base) {
                (Kind::Full, _) => return Some(i),
                (Kind::Incremental, Some(b)) => i = *by_id.get(b.id.as_str())?,
                (Kind::Incremental, None) => return None,
            }
        }
    };
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..ours.len() {
        if let Some(r) = root_of(i) {
            groups.entry(r).or_default().push(i);
        }
    }
    let mut out: Vec<Chain> = groups
        .into_iter()
        .map(|(r, mut members)| {
            members.sort_by(|a, b| ours[*a].1.created.cmp(&ours[*b].1.created));
            Chain {
                archives: members.iter().map(|i| ours[*i].0.path.clone()).collect(),
                created: ours[r].1.created.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created));
    out
}

/// Which chains `--keep n` removes: all of ours but the chain holding
/// `written` (never removed) and the newest others, `n` chains in all.
pub fn to_remove(chains: &[Chain], n: usize, written: &Path) -> Vec<PathBuf> {
    let current = chains
        .iter()
        .position(|c| c.archives.iter().any(|a| a == written));
    let keep_others = n.saturating_sub(usize::from(current.is_some()));
    let others: Vec<usize> = (0..chains.len()).filter(|i| Some(*i) != current).collect();
    let drop_count = others.len().saturating_sub(keep_others);
    others
        .into_iter()
        .take(drop_count)
        .flat_map(|i| chains[i].archives.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::{BaseRef, FORMAT};

    fn h(id: &str, base: Option<&str>, created: &str, dep: &str) -> Header {
        Header {
            format: FORMAT,
            tool_version: "t".into(),
            kind: if base.is_some() {
                Kind::Incremental
            } else {
                Kind::Full
            },
            id: id.into(),
            base: base.map(|b| BaseRef {
                id: b.into(),
                file: format!("{b}.tar.zst"),
            }),
            created: created.into(),
            deployment: Some(dep.into()),
            origin: None,
        }
    }

    fn k(name: &str, header: Option<Header>) -> Known {
        Known {
            path: PathBuf::from(name),
            header,
        }
    }

    #[test]
    fn chains_follow_headers_not_names_and_keep_the_one_just_written() {
        let list = vec![
            k("a", Some(h("1", None, "2026-01-01", "me"))),
            k("b", Some(h("2", Some("1"), "2026-01-02", "me"))),
            // Another relay's archive, dated in the future.
            k("c", Some(h("3", None, "2099-01-01", "other"))),
            k("d", Some(h("4", None, "2026-01-03", "me"))),
            // Unidentified (encrypted without a record, or foreign).
            k("e", None),
            // Built on another relay's archive: no chain of ours.
            k("f", Some(h("5", Some("3"), "2026-01-04", "me"))),
            k("g", Some(h("6", Some("4"), "2026-01-05", "me"))),
        ];
        let ch = chains(&list, "me", Origin::Backup);
        let names: Vec<Vec<&str>> = ch
            .iter()
            .map(|c| c.archives.iter().map(|p| p.to_str().unwrap()).collect())
            .collect();
        assert_eq!(names, [vec!["a", "b"], vec!["d", "g"]]);
        assert_eq!(newest(&list, "me", Origin::Backup), Some("g".into()));
        assert_eq!(
            to_remove(&ch, 1, Path::new("g")),
            [PathBuf::from("a"), "b".into()]
        );
        // The chain just written stays, whatever its time says.
        assert_eq!(
            to_remove(&ch, 1, Path::new("b")),
            [PathBuf::from("d"), "g".into()]
        );
        assert!(to_remove(&ch, 2, Path::new("g")).is_empty());
        // Upgrade's archives are not backup's.
        assert!(chains(&list, "me", Origin::Upgrade).is_empty());
    }
}
