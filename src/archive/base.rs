//! The archive an incremental backup builds on: its manifest, read into a
//! compact list that points into the manifest's text (a base is read for
//! its paths, metadata and hashes only, and a large deployment lists tens
//! of thousands of them), indexed by path while the deployment is scanned;
//! and the walk of a backup against it (which files are unchanged, which
//! base paths are gone). An incremental base lists only what changed: it is
//! applied to the state of the archive it builds on ([`Base::apply`]).

use anyhow::{Context as _, Result};
use hashbrown::HashTable;
use serde::Deserialize;
use std::borrow::Cow;
use std::hash::BuildHasher;
use std::path::PathBuf;

use super::manifest::{BaseRef, Entry, EntryKind, Header, Listing, Meta};

/// A string of the base: a range of its text, or (when it had escapes
/// there) one kept aside, decoded.
#[derive(Clone, Copy)]
enum Str {
    Text(u32, u32),
    Aside(u32),
}

/// One path of the base.
#[derive(Clone, Copy)]
struct Item {
    path: Str,
    kind: EntryKind,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    target: Option<Str>,
    sha256: Option<Str>,
    /// Deleted by a later archive of the chain.
    gone: bool,
}

/// A string borrowed from the text when it can be (no escapes in it).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The fields of a manifest entry a base needs (the others are skipped).
#[derive(Deserialize)]
struct RawEntry<'a> {
    #[serde(borrow)]
    path: Text<'a>,
    kind: EntryKind,
    #[serde(default)]
    size: u64,
    mtime: i64,
    #[serde(default)]
    mtime_nsec: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    #[serde(default, borrow)]
    sha256: Option<Text<'a>>,
    #[serde(default, borrow)]
    target: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawManifest<'a> {
    header: Header,
    #[serde(default)]
    listing: Listing,
    #[serde(borrow)]
    entries: Vec<RawEntry<'a>>,
    #[serde(default, borrow)]
    deleted: Vec<Text<'a>>,
}

/// The local copy of the last manifest (`LAST_MANIFEST`) holds it under
/// `manifest`.
#[derive(Deserialize)]
struct RawLast<'a> {
    #[serde(borrow)]
    manifest: RawManifest<'a>,
}

/// Where a base manifest's text came from.
pub enum Source {
    /// A manifest's JSON (a sidecar file; `what` names it in errors).
    Manifest { text: String, what: PathBuf },
    /// The local copy of the last manifest: the manifest inside.
    Last { text: String, what: PathBuf },
}

pub struct Base {
    pub reference: BaseRef,
    /// The deployment its header names (archives of earlier versions name
    /// none).
    pub deployment: Option<String>,
    /// What the manifest's entries list.
    pub listing: Listing,
    /// The archive this one builds on (incrementals).
    pub based_on: Option<BaseRef>,
    /// The file names of the archives folded into this state, oldest first.
    pub chain: Vec<String>,
    /// The base's paths an incremental manifest lists as gone.
    deleted: Vec<String>,
    text: String,
    aside: Vec<String>,
    items: Vec<Item>,
    /// Positions in `items`, by the hash of their path.
    index: HashTable<u32>,
}

fn resolve<'a>(s: Str, text: &'a str, aside: &'a [String]) -> &'a str {
    match s {
        Str::Text(a, b) => &text[a as usize..b as usize],
        Str::Aside(i) => &aside[i as usize],
    }
}

fn hash(path: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(path)
}

/// An entry of the base.
#[derive(Clone, Copy)]
pub struct Found<'a> {
    base: &'a Base,
    item: &'a Item,
}

impl<'a> Found<'a> {
    pub fn meta(&self) -> Meta<'a> {
        let i = self.item;
        Meta {
            kind: i.kind,
            size: i.size,
            mtime: i.mtime,
            mtime_nsec: i.mtime_nsec,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            target: i.target.map(|t| self.base.str(t)),
        }
    }

    /// Whether `now` (scanned now) is this entry as far as metadata tells.
    pub fn unchanged(&self, now: &Entry) -> bool {
        now.meta() == self.meta()
    }

    pub fn sha256(&self) -> Option<&'a str> {
        self.item.sha256.map(|s| self.base.str(s))
    }
}

impl Base {
    /// Read a base (the archive `file`) from its manifest's text.
    pub fn parse(file: String, source: Source) -> Result<Base> {
        let (text, last, what) = match source {
            Source::Manifest { text, what } => (text, false, what),
            Source::Last { text, what } => (text, true, what),
        };
        let raw = if last {
            serde_json::from_str::<RawLast>(&text).map(|l| l.manifest)
        } else {
            serde_json::from_str::<RawManifest>(&text)
        }
        .with_context(|| format!("{}: the backup manifest cannot be read", what.display()))?;
        if u32::try_from(text.len()).is_err() {
            anyhow::bail!(
                "{}: the backup manifest is larger than 4 GiB",
                what.display()
            );
        }
        let mut aside = Vec::new();
        let start = text.as_ptr() as usize;
        let mut keep = |t: Text| match t.0 {
            Cow::Borrowed(s) => {
                let at = s.as_ptr() as usize - start;
                Str::Text(at as u32, (at + s.len()) as u32)
            }
            Cow::Owned(s) => {
                aside.push(s);
                Str::Aside(aside.len() as u32 - 1)
            }
        };
        let items: Vec<Item> = raw
            .entries
            .into_iter()
            .map(|e| Item {
                path: keep(e.path),
                kind: e.kind,
                size: e.size,
                mtime: e.mtime,
                mtime_nsec: e.mtime_nsec,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                target: e.target.map(&mut keep),
                sha256: e.sha256.map(&mut keep),
                gone: false,
            })
            .collect();
        let mut base = Base {
            reference: BaseRef {
                id: raw.header.id,
                file: file.clone(),
            },
            deployment: raw.header.deployment,
            listing: raw.listing,
            based_on: raw.header.base,
            chain: vec![file],
            deleted: raw.deleted.into_iter().map(|t| t.0.into_owned()).collect(),
            text,
            aside,
            items,
            index: HashTable::new(),
        };
        base.index = base.build_index();
        Ok(base)
    }

    /// Fold `next`, an incremental manifest built on this state, into it:
    /// its deleted paths go, its entries replace or join this state's.
    pub fn apply(&mut self, next: Base) {
        // An archive of format 1 lists everything, incremental or not.
        if next.listing == Listing::All {
            let chain = std::mem::take(&mut self.chain);
            *self = next;
            self.chain = chain
                .into_iter()
                .chain(std::mem::take(&mut self.chain))
                .collect();
            return;
        }
        for p in &next.deleted {
            if let Ok(found) = self.index.find_entry(hash(p), |&j| {
                resolve(self.items[j as usize].path, &self.text, &self.aside) == p
            }) {
                let (j, _) = found.remove();
                self.items[j as usize].gone = true;
            }
        }
        for item in &next.items {
            let mut own = |s: Str| {
                self.aside.push(next.str(s).to_string());
                Str::Aside(self.aside.len() as u32 - 1)
            };
            // The same entry, its strings kept in this state.
            let new = Item {
                path: own(item.path),
                target: item.target.map(&mut own),
                sha256: item.sha256.map(&mut own),
                gone: false,
                ..*item
            };
            let p = next.str(item.path);
            match self.position(p) {
                Some(i) => self.items[i] = new,
                None => {
                    let i = self.items.len() as u32;
                    self.items.push(new);
                    let (items, text, aside) = (&self.items, &self.text, &self.aside);
                    self.index.insert_unique(hash(p), i, |&j| {
                        hash(resolve(items[j as usize].path, text, aside))
                    });
                }
            }
        }
        self.reference = next.reference;
        self.based_on = next.based_on;
        if next.deployment.is_some() {
            self.deployment = next.deployment;
        }
        self.chain.extend(next.chain);
    }

    fn str(&self, s: Str) -> &str {
        resolve(s, &self.text, &self.aside)
    }

    fn path(&self, i: usize) -> &str {
        self.str(self.items[i].path)
    }

    fn build_index(&self) -> HashTable<u32> {
        let mut index = HashTable::with_capacity(self.items.len());
        for i in 0..self.items.len() {
            let p = self.path(i);
            let h = hash(p);
            // A manifest lists every path once; keep the first if not.
            if index
                .find(h, |&j: &u32| self.path(j as usize) == p)
                .is_none()
            {
                index.insert_unique(h, i as u32, |&j| hash(self.path(j as usize)));
            }
        }
        index
    }

    fn position(&self, path: &str) -> Option<usize> {
        self.index
            .find(hash(path), |&j| self.path(j as usize) == path)
            .map(|&j| j as usize)
    }

    fn found(&self, i: usize) -> Found<'_> {
        Found {
            base: self,
            item: &self.items[i],
        }
    }

    /// The base's entry for `path`.
    pub fn get(&self, path: &str) -> Option<Found<'_>> {
        self.position(path).map(|i| self.found(i))
    }

    /// The paths of this state, in order, with their metadata.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Found<'_>)> {
        (0..self.items.len())
            .filter(|&i| !self.items[i].gone)
            .map(|i| (self.path(i), self.found(i)))
    }

    /// How many paths this state has.
    pub fn len(&self) -> usize {
        self.items.iter().filter(|i| !i.gone).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A walk of the current paths against this base.
    pub fn walk(&self) -> Walk<'_> {
        Walk {
            base: self,
            next: 0,
            seen: vec![false; self.items.len()],
        }
    }
}

/// Every path of a backup looked up in its base, once.
pub struct Walk<'a> {
    base: &'a Base,
    /// Where the next path is expected: a backup lists the deployment in
    /// the order its base did, so most look-ups are one comparison.
    next: usize,
    seen: Vec<bool>,
}

impl<'a> Walk<'a> {
    /// The base's entry for a path of this backup, with its position.
    pub fn find(&mut self, path: &str) -> Option<(usize, Found<'a>)> {
        let base = self.base;
        let i = match base.items.get(self.next) {
            Some(item) if !item.gone && base.path(self.next) == path => self.next,
            _ => base.position(path)?,
        };
        self.next = i + 1;
        Some((i, base.found(i)))
    }

    /// The base's entry at `at` is in this backup too.
    pub fn keep(&mut self, at: usize) {
        self.seen[at] = true;
    }

    /// The base's paths this backup did not keep, in the base's order.
    pub fn deleted(&self) -> Vec<String> {
        (0..self.base.items.len())
            .filter(|&i| !self.seen[i] && !self.base.items[i].gone)
            .map(|i| self.base.path(i).to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::{sample_entry, Consistency, Kind, Manifest};

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            header: Header {
                format: 1,
                tool_version: "t".into(),
                kind: Kind::Full,
                id: "b".into(),
                base: None,
                created: "now".into(),
                deployment: None,
                origin: None,
            },
            image_version: None,
            relay_commit: None,
            consistency: Consistency::default(),
            listing: Listing::All,
            entries: paths.iter().map(|p| sample_entry(p)).collect(),
            deleted: vec![],
        }
    }

    fn base(m: &Manifest) -> Base {
        let text = String::from_utf8(m.to_json()).unwrap();
        Base::parse(
            "f".into(),
            Source::Manifest {
                text,
                what: "m".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn finds_paths_in_and_out_of_order_and_reports_the_rest_deleted() {
        let b = base(&manifest(&["a", "a/1", "a/2", "b", "b/1", "c", "d"]));
        let mut w = b.walk();
        let mut find_and_keep = |p: &str| {
            let (at, _) = w.find(p)?;
            w.keep(at);
            Some(at)
        };
        // In order, a new path, a skipped (deleted) one, then out of order.
        assert_eq!(find_and_keep("a"), Some(0));
        assert_eq!(find_and_keep("a/1"), Some(1));
        assert_eq!(find_and_keep("a/new"), None);
        assert_eq!(find_and_keep("b"), Some(3));
        assert_eq!(find_and_keep("c"), Some(5));
        assert_eq!(find_and_keep("a/2"), Some(2));
        assert_eq!(find_and_keep("zzz"), None);
        // Found but not kept (a file that vanished while it was read).
        assert_eq!(w.find("d").map(|(at, _)| at), Some(6));
        assert_eq!(w.deleted(), ["b/1", "d"]);
        assert!(b.get("b/1").is_some());
        assert!(b.get("b/2").is_none());
    }

    #[test]
    fn a_folded_chain_is_what_folding_the_manifests_gives() {
        let full = manifest(&["a", "a/1", "a/2", "b", "b/1", "c"]);
        let mut delta = manifest(&["a/1", "a/new", "d"]);
        delta.header.id = "i1".into();
        delta.header.kind = Kind::Incremental;
        delta.header.base = Some(BaseRef {
            id: "b".into(),
            file: "f".into(),
        });
        delta.listing = Listing::Changes;
        delta.entries[0].mtime = 99;
        delta.entries[0].sha256 = Some("cd".into());
        delta.entries[1].target = Some("esc\"aped".into());
        delta.deleted = vec!["b".into(), "b/1".into()];
        let mut b = base(&full);
        let d = base(&delta);
        assert_eq!(d.listing, Listing::Changes);
        assert_eq!(d.based_on.as_ref().map(|r| r.id.as_str()), Some("b"));
        b.apply(d);
        let mut folded = full.clone();
        folded.fold(delta.clone());
        assert_eq!(b.reference.id, "i1");
        assert_eq!(b.chain, ["f", "f"]);
        for e in &folded.entries {
            let f = b.get(&e.path).expect("every folded path is found");
            assert!(f.unchanged(e), "{}", e.path);
            assert_eq!(f.sha256(), e.sha256.as_deref(), "{}", e.path);
        }
        assert!(b.get("b").is_none() && b.get("b/1").is_none());
        // A walk in the old order passes over what was deleted.
        let mut w = b.walk();
        for p in ["a", "a/1", "a/2", "c"] {
            let (at, _) = w.find(p).unwrap();
            w.keep(at);
        }
        assert!(w.find("b").is_none());
        assert_eq!(w.deleted(), ["a/new", "d"]);
    }

    #[test]
    fn an_empty_base_has_nothing_and_deletes_nothing() {
        let b = base(&manifest(&[]));
        let mut w = b.walk();
        assert!(w.find("a").is_none());
        assert!(w.deleted().is_empty());
    }

    #[test]
    fn names_with_escapes_and_metadata_read_back_as_written() {
        let names = ["plain", "quote\"back\\slash", "tab\tnl\n\u{e9}\u{1f600}"];
        let mut m = manifest(&names);
        m.entries[1].target = Some("../t\"x".into());
        m.entries[2].sha256 = None;
        m.entries[0].user = Some("vmail".into());
        let b = base(&m);
        assert_eq!(b.reference.id, m.header.id);
        for e in &m.entries {
            let f = b.get(&e.path).expect("every path is found");
            assert!(f.unchanged(e), "{}", e.path);
            assert_eq!(f.sha256(), e.sha256.as_deref());
            let mut changed = e.clone();
            changed.mtime_nsec += 1;
            assert!(!f.unchanged(&changed));
            changed = e.clone();
            changed.target = Some("other".into());
            assert!(!f.unchanged(&changed));
        }
        // The local copy of the last manifest holds it under `manifest`.
        let last = format!(
            r#"{{"archive":"/x","size":1,"manifest":{}}}"#,
            String::from_utf8(m.to_json()).unwrap()
        );
        let b = Base::parse(
            "f".into(),
            Source::Last {
                text: last,
                what: "l".into(),
            },
        )
        .unwrap();
        assert_eq!(b.get(names[1]).and_then(|f| f.sha256()), Some("ab"));
        assert_eq!(b.reference.file, "f");
        assert_eq!(b.reference.id, m.header.id);
        let err = Base::parse(
            "f".into(),
            Source::Manifest {
                text: "{\"header\":1}".into(),
                what: "/b/m.json".into(),
            },
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("/b/m.json"), "{err:#}");
    }
}
