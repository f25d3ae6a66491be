//! The walk of one state tree: each directory listed in name order, links
//! resolved through the container's view, every entry found again by its
//! directory descriptor and name.

use super::*;
/// A directory being walked.
#[derive(Clone)]
pub(super) struct Here {
    pub(super) root: u16,
    /// Below the root's source (`""`: the root itself).
    pub(super) rel: String,
    /// Its path in the container, when it is part of the container's view
    /// (links are then resolved the container's way).
    pub(super) cpath: Option<Vec<String>>,
    /// Its name in the archive.
    pub(super) apath: String,
    /// Directories from the tree's top down to here, (device, inode): a
    /// followed link to one of them would make the tree contain itself.
    pub(super) stack: Vec<(u64, u64)>,
    /// Whether every path below is named by its archive path's suffix
    /// (nothing was archived in a link's place on the way).
    pub(super) suffix: bool,
}

/// The path below its root of the entry `name` of `here`.
pub(super) fn rel_below(here: &Here, name: &str) -> String {
    if here.rel.is_empty() {
        name.to_string()
    } else {
        format!("{}/{name}", here.rel)
    }
}

/// What one directory holds: its entries in name order, and for each the
/// listing below it (directories only).
#[derive(Default)]
pub(super) struct Listing {
    pub(super) found: Vec<Scanned>,
    pub(super) below: Vec<Option<Listing>>,
    pub(super) skipped: Skipped,
    /// Entries here and below.
    pub(super) total: usize,
}

impl Listing {
    /// Each directory followed by what it holds; every entry moved once.
    pub(super) fn flatten(self, out: &mut Vec<Scanned>, skipped: &mut Skipped) {
        skipped.special.extend(self.skipped.special);
        skipped.followed.extend(self.skipped.followed);
        skipped.notes.extend(self.skipped.notes);
        for (s, b) in self.found.into_iter().zip(self.below) {
            out.push(s);
            if let Some(b) = b {
                b.flatten(out, skipped);
            }
        }
    }
}

pub(super) struct Walker<'a> {
    pub(super) view: View<'a>,
    /// Archive paths left out with what is below them (the queue, read
    /// apart; the tool's temporary directories).
    pub(super) skip: &'a [String],
}

impl Walker<'_> {
    /// How to find the entry `name` of `here` (archived as `child`) again.
    pub(super) fn src(&self, here: &Here, child: &str, name: &str) -> HostRel {
        if here.suffix {
            // Its path below the root is the end of its archive name.
            let rel_len = if here.rel.is_empty() {
                name.len()
            } else {
                here.rel.len() + 1 + name.len()
            };
            HostRel::Suffix {
                root: here.root,
                at: (child.len() - rel_len) as u32,
            }
        } else {
            HostRel::Own {
                root: here.root,
                rel: rel_below(here, name).into(),
            }
        }
    }

    /// The entries below the directory `here` (listed itself already).
    /// Directories are read in parallel; every entry is examined relative
    /// to its directory's descriptor.
    pub(super) fn scan_dir(&self, here: &Here) -> Result<Listing> {
        use rayon::prelude::*;
        let Some(tree) = self.view.roots.tree(here.root) else {
            return Ok(Listing::default());
        };
        let (found, heres, skipped) = {
            let sub;
            let dir = if here.rel.is_empty() {
                tree
            } else {
                sub = match tree.subtree(&here.rel) {
                    Ok(t) => t,
                    // Removed or replaced since it was listed: a maildir
                    // folder deleted while the backup runs. Never followed.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                        ) =>
                    {
                        return Ok(Listing::default())
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot read {}", tree.show(&here.rel).display())
                        })
                    }
                };
                &sub
            };
            let names = self.names(here, tree, dir)?;
            let mut found = Vec::with_capacity(names.len());
            let mut heres: Vec<Option<Here>> = Vec::with_capacity(names.len());
            let mut skipped = Skipped::default();
            for child in names {
                if let Some((s, below)) = self.examine(here, tree, dir, child, &mut skipped)? {
                    found.push(s);
                    heres.push(below);
                }
            }
            (found, heres, skipped)
        };
        // What each subdirectory holds, read in parallel (this directory's
        // descriptor is closed by now).
        let below = heres
            .par_iter()
            .map(|h| match h {
                Some(h) => self.scan_dir(h).map(Some),
                None => Ok(None),
            })
            .collect::<Result<Vec<Option<Listing>>>>()?;
        let total = found.len() + below.iter().flatten().map(|l| l.total).sum::<usize>();
        Ok(Listing {
            found,
            below,
            skipped,
            total,
        })
    }

    /// The archive paths of what the directory `dir` (`here`) holds, in
    /// name order: its entries (placeholders, skipped paths and the
    /// destination's files left out) and the mounts below it.
    pub(super) fn names(&self, here: &Here, tree: &Tree, dir: &Tree) -> Result<Vec<String>> {
        let io_err = |e: rustix::io::Errno| std::io::Error::from(e);
        let shown = || tree.show(&here.rel);
        let dir_st = rustix::fs::fstat(dir.fd()).map_err(io_err)?;
        let dir_id = (dir_st.st_dev, dir_st.st_ino);
        let mut names = Vec::new();
        let mut list = rustix::fs::Dir::read_from(dir.fd())
            .map_err(io_err)
            .with_context(|| format!("cannot read {}", shown().display()))?;
        for item in list.by_ref() {
            let item = item
                .map_err(io_err)
                .with_context(|| format!("cannot read {}", shown().display()))?;
            let name = item.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(n) = std::str::from_utf8(name) else {
                return Err(not_utf8(&shown().join(std::ffi::OsStr::from_bytes(name))));
            };
            let child = format!("{}/{n}", here.apath);
            if PLACEHOLDERS.contains(&child.as_str())
                || self.skip.contains(&child)
                || self.view.exclude.skips(dir_id, n)
            {
                continue;
            }
            names.push(child);
        }
        // A mount below whose mount point the host has not made yet: the
        // container sees it all the same.
        if let Some(c) = &here.cpath {
            for t in &self.view.targets {
                if t.len() == c.len() + 1 && under(t, c) {
                    let child = format!("{}/{}", here.apath, t[c.len()]);
                    if !names.contains(&child) {
                        names.push(child);
                    }
                }
            }
        }
        let name_at = here.apath.len() + 1;
        names.sort_unstable_by(|a, b| a.as_bytes()[name_at..].cmp(&b.as_bytes()[name_at..]));
        Ok(names)
    }

    /// What the entry `child` of `here` is archived as, and the directory
    /// to walk below it; `None`: nothing (gone since the listing, or a
    /// socket or fifo, counted in `skipped`).
    pub(super) fn examine(
        &self,
        here: &Here,
        tree: &Tree,
        dir: &Tree,
        child: String,
        skipped: &mut Skipped,
    ) -> Result<Option<(Scanned, Option<Here>)>> {
        use rustix::fs::{AtFlags, FileType};
        let name = &child[here.apath.len() + 1..];
        // A mount below: the container sees the mount there.
        if let Some(m) = here
            .cpath
            .as_ref()
            .and_then(|c| self.view.mount_at(c, name))
        {
            return self.mount_below(here, &child, m);
        }
        let st = match rustix::fs::statat(dir.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // A maildir message renamed or expunged since the listing.
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => {
                return Err(std::io::Error::from(e)).with_context(|| {
                    format!(
                        "cannot read {}",
                        tree.show(&rel_below(here, name)).display()
                    )
                })
            }
        };
        let src = self.src(here, &child, name);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let below = Here {
                    root: here.root,
                    rel: rel_below(here, name),
                    cpath: child_cpath(here, name),
                    apath: child.clone(),
                    stack: push(&here.stack, &st),
                    suffix: here.suffix,
                };
                Ok(Some((entry_of_stat(child, &st, None, src), Some(below))))
            }
            FileType::RegularFile => Ok(Some((entry_of_stat(child, &st, None, src), None))),
            FileType::Symlink => self.link(here, tree, dir, child, &st, src, skipped),
            _ => {
                skipped.special.push(child);
                Ok(None)
            }
        }
    }

    /// The mount `m`, whose target is the entry `child` of `here`.
    pub(super) fn mount_below(
        &self,
        here: &Here,
        child: &str,
        m: u16,
    ) -> Result<Option<(Scanned, Option<Here>)>> {
        let mount = &self.view.layout.mounts[m as usize];
        if mount.kind != MountKind::Host {
            bail!(
                "the container mounts a {} at {}: what it holds is not on the host and cannot be backed up",
                match &mount.kind {
                    MountKind::Other(k) => k.as_str(),
                    MountKind::Host => "",
                },
                mount.target
            );
        }
        let Some(t) = self.view.roots.tree(m) else {
            // Docker makes a missing source: the container sees an empty
            // directory there.
            return Ok(None);
        };
        let st = rustix::fs::fstat(t.fd()).map_err(std::io::Error::from)?;
        let name = &child[here.apath.len() + 1..];
        let s = entry_of_stat(
            child.to_string(),
            &st,
            None,
            HostRel::Own {
                root: m,
                rel: "".into(),
            },
        );
        let below = Here {
            root: m,
            rel: String::new(),
            cpath: child_cpath(here, name),
            apath: child.to_string(),
            stack: push(&here.stack, &st),
            suffix: true,
        };
        Ok(Some((s, Some(below))))
    }

    /// The symlink `child` of `here` (`st`): archived as a link when it
    /// means the same in the restored layout, else as what it leads to in
    /// the container (a directory then walked).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link(
        &self,
        here: &Here,
        tree: &Tree,
        dir: &Tree,
        child: String,
        st: &rustix::fs::Stat,
        src: HostRel,
        skipped: &mut Skipped,
    ) -> Result<Option<(Scanned, Option<Here>)>> {
        use rustix::fs::FileType;
        let name = &child[here.apath.len() + 1..];
        let target = link_target(&dir.fd(), name.as_ref(), || {
            tree.show(&rel_below(here, name))
        })?;
        let leads = match &here.cpath {
            Some(c) => self.view.leads(c, &target),
            None => Leads::Inside,
        };
        // Archived where the container did not find it: the same meaning
        // needs the absolute path.
        let target = match &here.cpath {
            Some(c) if !here.suffix && !target.starts_with('/') => absolute_in(c, &target),
            _ => target,
        };
        let (root, rel, cpath, to) = match leads {
            Leads::Inside => return Ok(Some((entry_of_stat(child, st, Some(target), src), None))),
            Leads::Nowhere(why) => {
                if target.starts_with('/') {
                    skipped.notes.push(format!(
                        "{child} -> {target} is archived as a link: in the container {why}"
                    ));
                }
                return Ok(Some((entry_of_stat(child, st, Some(target), src), None)));
            }
            Leads::Elsewhere {
                root,
                rel,
                cpath,
                st,
            } => (root, rel, cpath, st),
        };
        let to_src = HostRel::Own {
            root,
            rel: rel.clone().into(),
        };
        match FileType::from_raw_mode(to.st_mode) {
            FileType::Directory => {
                if here.stack.contains(&(to.st_dev, to.st_ino)) {
                    bail!(
                        "{} is a link to {target}, a directory that holds it: the tree would contain itself; change the link",
                        tree.show(&rel_below(here, name)).display()
                    );
                }
                skipped.followed.push(child.clone());
                let below = Here {
                    root,
                    rel,
                    cpath: Some(cpath),
                    apath: child.clone(),
                    stack: push(&here.stack, &to),
                    suffix: false,
                };
                Ok(Some((entry_of_stat(child, &to, None, to_src), Some(below))))
            }
            FileType::RegularFile => {
                skipped.followed.push(child.clone());
                Ok(Some((entry_of_stat(child, &to, None, to_src), None)))
            }
            _ => {
                skipped.special.push(child);
                Ok(None)
            }
        }
    }
}

/// The container path of the entry `name` of `here`, when `here` has one.
pub(super) fn child_cpath(here: &Here, name: &str) -> Option<Vec<String>> {
    here.cpath.as_ref().map(|c| {
        let mut c = c.clone();
        c.push(name.to_string());
        c
    })
}

pub(super) fn push(stack: &[(u64, u64)], st: &rustix::fs::Stat) -> Vec<(u64, u64)> {
    let mut s = stack.to_vec();
    s.push((st.st_dev, st.st_ino));
    s
}
