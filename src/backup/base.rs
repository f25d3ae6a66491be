//! The archive an incremental backup builds on: its manifest, indexed by
//! path while the deployment is scanned, and the walk of a backup against
//! it (which files are unchanged, which base paths are gone).

use hashbrown::HashTable;
use std::hash::BuildHasher;

use super::manifest::{BaseRef, Entry, Manifest};

pub struct Base {
    pub reference: BaseRef,
    pub manifest: Manifest,
    /// Positions in `manifest.entries`, by the hash of their path.
    index: HashTable<u32>,
}

fn hash(path: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(path)
}

impl Base {
    pub fn new(reference: BaseRef, manifest: Manifest) -> Base {
        let entries = &manifest.entries;
        let mut index = HashTable::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let h = hash(&e.path);
            // A manifest lists every path once; keep the first if not.
            if index
                .find(h, |&j: &u32| entries[j as usize].path == e.path)
                .is_none()
            {
                index.insert_unique(h, i as u32, |&j| hash(&entries[j as usize].path));
            }
        }
        Base {
            reference,
            manifest,
            index,
        }
    }

    fn position(&self, path: &str) -> Option<usize> {
        let entries = &self.manifest.entries;
        self.index
            .find(hash(path), |&j| entries[j as usize].path == path)
            .map(|&j| j as usize)
    }

    /// The base's entry for `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.position(path).map(|i| &self.manifest.entries[i])
    }

    /// A walk of the current paths against this base.
    pub fn walk(&self) -> Walk<'_> {
        Walk {
            base: self,
            next: 0,
            seen: vec![false; self.manifest.entries.len()],
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
    pub fn find(&mut self, path: &str) -> Option<(usize, &'a Entry)> {
        let entries = &self.base.manifest.entries;
        let i = match entries.get(self.next) {
            Some(e) if e.path == path => self.next,
            _ => self.base.position(path)?,
        };
        self.next = i + 1;
        Some((i, &entries[i]))
    }

    /// The base's entry at `at` is in this backup too.
    pub fn keep(&mut self, at: usize) {
        self.seen[at] = true;
    }

    /// The base's paths this backup did not keep, in the base's order.
    pub fn deleted(&self) -> Vec<String> {
        self.base
            .manifest
            .entries
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(e, _)| e.path.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{sample_entry, Consistency, Header, Kind};

    fn base(paths: &[&str]) -> Base {
        let header = Header {
            format: 1,
            tool_version: "t".into(),
            kind: Kind::Full,
            id: "b".into(),
            base: None,
            created: "now".into(),
        };
        Base::new(
            BaseRef {
                id: "b".into(),
                file: "f".into(),
            },
            Manifest {
                header,
                image_version: None,
                relay_commit: None,
                consistency: Consistency::default(),
                entries: paths.iter().map(|p| sample_entry(p)).collect(),
                deleted: vec![],
            },
        )
    }

    #[test]
    fn finds_paths_in_and_out_of_order_and_reports_the_rest_deleted() {
        let b = base(&["a", "a/1", "a/2", "b", "b/1", "c", "d"]);
        let mut w = b.walk();
        let mut find_and_keep = |p: &str| {
            let (at, e) = w.find(p)?;
            assert_eq!(e.path, p);
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
        assert_eq!(b.get("b/1").map(|e| e.path.as_str()), Some("b/1"));
        assert!(b.get("b/2").is_none());
    }

    #[test]
    fn an_empty_base_has_nothing_and_deletes_nothing() {
        let b = base(&[]);
        let mut w = b.walk();
        assert!(w.find("a").is_none());
        assert!(w.deleted().is_empty());
    }
}
