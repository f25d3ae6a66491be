//! What an archive says about itself: the header (first entry: format,
//! kind, the archive it builds on) and the manifest (last entry: every file
//! of the deployment with size, mtime, mode, owner and SHA-256, what was
//! stored in this archive, how the data was kept consistent).
//!
//! A full archive's manifest lists the whole deployment. An incremental
//! one (format 2) lists what changed since its base: the paths that are new
//! or differ, and the base's paths that are gone. The deployment at any
//! archive is its chain folded in order ([`Manifest::fold`]); restore ends
//! with exactly those paths. Format 1 incrementals listed everything.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The archive format this tool writes; it reads this one and older ones.
pub const FORMAT: u32 = 2;
/// The directory of the archive's own entries (never a deployment file).
pub const META_DIR: &str = ".chatmail-backup";
/// The first entry of every archive.
pub const HEADER_ENTRY: &str = ".chatmail-backup/header.json";
/// The last entry of every archive.
pub const MANIFEST_ENTRY: &str = ".chatmail-backup/manifest.json";
/// Next to an archive in a backup directory: its manifest, so the next
/// incremental backup need not read the archive.
pub const SIDECAR_SUFFIX: &str = ".manifest.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every file's content is in the archive.
    Full,
    /// Only what changed since `base`; restore needs the chain.
    Incremental,
}

/// The first entry: enough to refuse an archive before reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub tool_version: String,
    pub kind: Kind,
    /// Unique per archive; an incremental names its base by this id.
    pub id: String,
    /// For an incremental: the archive it builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
    /// RFC 3339, UTC.
    pub created: String,
    /// The deployment it was made for (its backup id, kept in `data/`):
    /// retention removes only this deployment's archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// What made it (`backup` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub id: String,
    /// The base archive's file name (looked for next to this one).
    pub file: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// Another name of a file listed earlier (`target`).
    Hardlink,
}

/// What a manifest's `entries` hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// Every path of the deployment (full archives; every archive of
    /// format 1).
    #[default]
    All,
    /// The paths new or changed since the base; `deleted` names the base's
    /// paths that are gone.
    Changes,
}

/// One path of the deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the deployment directory, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    #[serde(default)]
    pub size: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Owner names as the relay's container knows them (restore maps by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Regular files: the content's SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlinks: the link's text; hard links: the path of the first name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether this archive holds the entry (always, in a full archive).
    pub stored: bool,
}

/// What tells, without reading it, whether a path changed since a manifest
/// listed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta<'a> {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub target: Option<&'a str>,
}

impl Entry {
    pub fn meta(&self) -> Meta<'_> {
        Meta {
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            target: self.target.as_deref(),
        }
    }
}

/// How the data was kept consistent while the relay ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    /// One line per measure taken or not taken.
    pub notes: Vec<String>,
    /// How long the mail queue's service was paused, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_pause_ms: Option<u64>,
    /// Files whose content changed while they were read (their next
    /// backup stores them again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_while_read: Vec<String>,
}

/// The last entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub header: Header,
    /// `/etc/chatmail-image-version` in the container, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// The relay commit the image was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_commit: Option<String>,
    pub consistency: Consistency,
    /// Whether `entries` lists the whole deployment or what changed.
    #[serde(default)]
    pub listing: Listing,
    /// Every path (or every changed one), in archive order.
    pub entries: Vec<Entry>,
    /// Paths of the base that no longer exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
}

impl Manifest {
    /// The manifest as compact JSON (what `serde_json::to_vec` gives).
    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_parts().concat()
    }

    /// [`Manifest::to_json`] in parts, in order: the text of a large
    /// deployment is written and compressed where it lies, not copied into
    /// one buffer first.
    pub fn to_json_parts(&self) -> Vec<Vec<u8>> {
        use rayon::prelude::*;
        // The entries are nearly all of the text: they are serialised in
        // parallel, in chunks, and put in place of an empty list in the
        // rest. Inside a JSON string every `"` is escaped, so the empty
        // list's key appears once, as the key.
        const EMPTY: &[u8] = b"\"entries\":[]";
        let chunks = self.entries.par_chunks(1024).enumerate().map(|(n, chunk)| {
            let room = chunk.iter().map(|e| e.path.len() + 256).sum();
            let mut v = Vec::with_capacity(room);
            for (i, e) in chunk.iter().enumerate() {
                if n > 0 || i > 0 {
                    v.push(b',');
                }
                serde_json::to_writer(&mut v, e).expect("an entry serialises");
            }
            v
        });
        let rest = Manifest {
            header: self.header.clone(),
            image_version: self.image_version.clone(),
            relay_commit: self.relay_commit.clone(),
            consistency: self.consistency.clone(),
            listing: self.listing,
            entries: Vec::new(),
            deleted: self.deleted.clone(),
        };
        let mut rest = serde_json::to_vec(&rest).expect("a manifest serialises");
        let at = rest
            .windows(EMPTY.len())
            .position(|w| w == EMPTY)
            .expect("a manifest has its entries")
            + EMPTY.len()
            - 1;
        let tail = rest.split_off(at);
        let mut parts = vec![rest];
        parts.par_extend(chunks);
        parts.push(tail);
        parts
    }

    /// The deployment after `next`, an archive built on this state:
    /// `next` itself when it lists everything, else this state with its
    /// deleted paths removed, its changed paths replaced in place and its
    /// new ones added at the end. The result lists everything.
    pub fn fold(&mut self, next: Manifest) {
        if next.listing == Listing::All {
            *self = next;
            return;
        }
        let Manifest {
            header,
            image_version,
            relay_commit,
            consistency,
            listing: _,
            entries,
            deleted,
        } = next;
        let index: std::collections::HashMap<String, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.clone(), i))
            .collect();
        let mut new: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
        let gone: std::collections::HashSet<String> = deleted.into_iter().collect();
        let mut kept = Vec::with_capacity(self.entries.len() + new.len());
        for e in std::mem::take(&mut self.entries) {
            if gone.contains(&e.path) {
                continue;
            }
            match index.get(&e.path).and_then(|&i| new[i].take()) {
                Some(changed) => kept.push(changed),
                None => kept.push(e),
            }
        }
        // What is left is new: added in the archive's order.
        kept.extend(new.into_iter().flatten());
        *self = Manifest {
            header,
            image_version,
            relay_commit,
            consistency,
            listing: Listing::All,
            entries: kept,
            deleted: Vec::new(),
        };
    }

    pub fn from_json(bytes: &[u8], what: &Path) -> Result<Manifest> {
        serde_json::from_slice(bytes)
            .with_context(|| format!("{}: the backup manifest cannot be read", what.display()))
    }

    /// The sidecar file of an archive (`X.tar.zst` -> `X.tar.zst.manifest.json`).
    pub fn sidecar_of(archive: &Path) -> std::path::PathBuf {
        let mut s = archive.as_os_str().to_os_string();
        s.push(SIDECAR_SUFFIX);
        s.into()
    }
}

/// Refuse an archive this tool cannot read, saying what to do.
pub fn check_format(header: &Header, archive: &Path) -> Result<()> {
    if header.format > FORMAT {
        return Err(crate::error::usage(format!(
            "{} was written by chatmail-docker {} (archive format {}); this chatmail-docker {} reads format {FORMAT} and older: install a newer chatmail-docker to restore it",
            archive.display(),
            header.tool_version,
            header.format,
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(())
}

/// What made an archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `chatmail-docker backup`.
    #[default]
    Backup,
    /// The backup `upgrade` makes before a swap.
    Upgrade,
}

/// A stored regular file, for tests.
#[cfg(test)]
pub(crate) fn sample_entry(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        size: 3,
        mtime: 10,
        mtime_nsec: 5,
        mode: 0o600,
        uid: 1,
        gid: 2,
        user: Some("vmail".into()),
        group: None,
        sha256: Some("ab".into()),
        target: None,
        stored: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_compares_metadata_not_names() {
        let a = sample_entry("x");
        let mut b = a.clone();
        b.user = None;
        b.stored = false;
        assert_eq!(b.meta(), a.meta());
        b.mtime_nsec = 6;
        assert_ne!(b.meta(), a.meta());
    }

    #[test]
    fn json_is_what_serde_json_makes_whatever_the_names() {
        let names = [
            "plain",
            "quote \" and \\ backslash",
            "\"entries\":[]",
            "x\\\"entries\":[]",
            "tab\t newline\n unicode \u{e9}\u{1f600} nul \u{0}",
            "",
        ];
        for n in [0, 1, 1023, 1024, 1025, 2500] {
            let mut entries = Vec::new();
            for i in 0..n {
                let mut e = sample_entry(&format!("data/{}/{i}", names[i % names.len()]));
                e.target = (i % 3 == 0).then(|| names[(i + 1) % names.len()].to_string());
                entries.push(e);
            }
            let m = Manifest {
                header: Header {
                    format: FORMAT,
                    tool_version: "1".into(),
                    kind: Kind::Incremental,
                    id: "\"entries\":[]".into(),
                    base: Some(BaseRef {
                        id: "b".into(),
                        file: "\"entries\":[] f".into(),
                    }),
                    created: "now".into(),
                    deployment: Some("\"entries\":[]".into()),
                    origin: Some(Origin::Upgrade),
                },
                image_version: Some("v".into()),
                relay_commit: None,
                consistency: Consistency {
                    notes: names.iter().map(|s| s.to_string()).collect(),
                    queue_pause_ms: Some(3),
                    changed_while_read: vec!["\"entries\":[]".into()],
                },
                listing: Listing::Changes,
                entries,
                deleted: names.iter().map(|s| s.to_string()).collect(),
            };
            assert_eq!(m.to_json(), serde_json::to_vec(&m).unwrap(), "{n} entries");
        }
    }

    #[test]
    fn folding_replaces_in_place_removes_the_deleted_and_adds_the_new() {
        let header = |id: &str, kind| Header {
            format: FORMAT,
            tool_version: "1".into(),
            kind,
            id: id.into(),
            base: None,
            created: "now".into(),
            deployment: None,
            origin: None,
        };
        let m = |id, kind, listing, paths: &[&str], deleted: &[&str]| Manifest {
            header: header(id, kind),
            image_version: None,
            relay_commit: None,
            consistency: Consistency::default(),
            listing,
            entries: paths.iter().map(|p| sample_entry(p)).collect(),
            deleted: deleted.iter().map(|p| p.to_string()).collect(),
        };
        let mut state = m("f", Kind::Full, Listing::All, &["a", "b", "c"], &[]);
        let mut delta = m(
            "i",
            Kind::Incremental,
            Listing::Changes,
            &["z", "b"],
            &["a"],
        );
        delta.entries[1].size = 7;
        delta.image_version = Some("v2".into());
        state.fold(delta);
        let paths: Vec<&str> = state.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["b", "c", "z"]);
        assert_eq!(state.entries[0].size, 7);
        assert_eq!(state.header.id, "i");
        assert_eq!(state.image_version.as_deref(), Some("v2"));
        assert_eq!(state.listing, Listing::All);
        assert!(state.deleted.is_empty());
        // A format 1 incremental lists everything: it is the state.
        let all = m("j", Kind::Incremental, Listing::All, &["q"], &["b"]);
        state.fold(all.clone());
        assert_eq!(state.entries, all.entries);
    }

    #[test]
    fn newer_format_is_refused_with_advice() {
        let h = Header {
            format: FORMAT + 1,
            tool_version: "9.9.9".into(),
            kind: Kind::Full,
            id: "i".into(),
            base: None,
            created: "now".into(),
            deployment: None,
            origin: None,
        };
        let err = check_format(&h, Path::new("/b/x.tar.zst")).unwrap_err();
        assert!(err.to_string().contains("install a newer"), "{err}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
    }
}
