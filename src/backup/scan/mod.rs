//! What a backup holds: the deployment's state as the relay's container
//! sees it, listed with metadata (no content is read here), and the way
//! back to each file for reading it later without following anything.
//!
//! The container sees its state through its mounts ([`Layout`]: the
//! running container's, else Compose's configuration): `/home`,
//! `/etc/dkimkeys`, `/var/lib/acme`, `/var/spool/postfix` and
//! `/var/lib/chatmail-docker` ([`crate::deployment::STATE_MOUNTS`]). Each
//! is walked from the mount's source as Docker bound it (a `data/chatmail`
//! that is a symlink to another disk is that disk), with the mounts below
//! it in place (`/home/vmail` from the host, as `migrate --mount-vmail`
//! leaves it). A symlink in there is resolved the way the container
//! resolves it: one that stays inside the state trees is archived as a
//! link; one that leads into another of the container's mounts is
//! archived as what it leads to (restored, the container finds the same
//! thing); one that leads nowhere the host provides (dangling, the image's
//! own files) stays a link. A directory that would contain itself is an
//! error. Everything lands under the archive name of its state tree
//! (`data/chatmail/...`), so a restore is the appliance's standard layout.
//!
//! The rest of `data/` (the tool's state files), `chatmail.ini`, `.env`,
//! `custom/` and the administrator's override file are taken from the
//! deployment directory as they are (links below the top level are
//! archived as links). The repository's placeholder files
//! (`data/README.md`, `custom/README.md`) belong to the checkout, not to
//! the deployment. Sockets and fifos are skipped: the services create them
//! at start.
//!
//! Every scanned path keeps the directory descriptor it was found under
//! ([`Roots`]) and its path below it: a file is later opened relative to
//! that descriptor with no symlink allowed anywhere on the way
//! ([`crate::host::tree`]), so what is read is what was scanned.

use anyhow::{bail, Context as _, Result};
use rustix::fd::AsFd;
use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::archive::manifest::{Entry, EntryKind};
use crate::deployment::{self, Deployment, STATE_MOUNTS};
pub use crate::engine::mounts::{default_layout, Layout, LayoutFrom, Mount, MountKind};
use crate::host::tree::Tree;

mod view;
mod walk;
pub use view::Exclude;
use view::*;
use walk::*;

/// The mail queue, `/var/spool/postfix` in the container: the one part of
/// `data/` that is not safe to copy while Postfix writes it.
pub const QUEUE_DIR: &str = "data/chatmail-postfix";

/// Files of the repository checkout that live in the backed-up
/// directories but are not deployment state.
pub const PLACEHOLDERS: &[&str] = &["data/README.md", "custom/README.md"];

/// Links followed in one resolution before it counts as a loop (Linux's
/// limit).
const MAX_LINKS: u32 = 40;

pub use crate::archive::top_level;

/// `p` split into its components (`/` is none).
fn comps(p: &str) -> Vec<&str> {
    p.split('/').filter(|c| !c.is_empty()).collect()
}

/// The relative link text `target`, found in the container directory
/// `dir` (a path without links), as the absolute path that means the same
/// there. A link inside a directory archived in the place of a link to it
/// is restored somewhere else: its relative text would lead elsewhere.
fn absolute_in(dir: &[String], target: &str) -> String {
    let mut base: Vec<&str> = dir.iter().map(String::as_str).collect();
    let mut parts = target.split('/').peekable();
    while let Some(&c) = parts.peek() {
        match c {
            "" | "." => {}
            ".." => {
                base.pop();
            }
            _ => break,
        }
        parts.next();
    }
    let rest: Vec<&str> = parts.collect();
    let mut out = String::new();
    for c in base.iter().chain(&rest) {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether the component list `p` is `prefix` or below it.
fn under(p: &[impl AsRef<str>], prefix: &[impl AsRef<str>]) -> bool {
    p.len() >= prefix.len() && prefix.iter().zip(p).all(|(a, b)| a.as_ref() == b.as_ref())
}

// ------------------------------------------------------------------- roots

/// The directories a backup reads from, each opened once: the mounts'
/// sources, `data/`, `custom/`.
pub struct Roots {
    trees: Vec<Option<Tree>>,
}

/// How to find a scanned path again.
#[derive(Clone, Debug)]
pub enum HostRel {
    /// Below root `root`, named by the part of the archive path that starts
    /// at byte `at`.
    Suffix { root: u16, at: u32 },
    /// Below root `root`, at this path (a link's target, archived in its
    /// place).
    Own { root: u16, rel: Box<str> },
    /// A top-level file of the deployment directory (followed when it is a
    /// link, as Compose does).
    Top(PathBuf),
}

impl Roots {
    pub fn tree(&self, root: u16) -> Option<&Tree> {
        self.trees.get(root as usize).and_then(Option::as_ref)
    }

    /// Open a scanned regular file for reading: relative to its root, with
    /// no symlink anywhere; never blocks. An error of kind
    /// [`std::io::ErrorKind::InvalidData`] means it is no regular file now.
    pub fn open(&self, s: &Scanned) -> std::io::Result<(std::fs::File, rustix::fs::Stat)> {
        match &s.src {
            HostRel::Top(p) => {
                use rustix::fs::{FileType, Mode, OFlags};
                let fd = rustix::fs::open(
                    p,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let st = rustix::fs::fstat(&fd)?;
                let kind = FileType::from_raw_mode(st.st_mode);
                if kind != FileType::RegularFile {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("it is a {} now", crate::host::kind_name(kind)),
                    ));
                }
                rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
                Ok((std::fs::File::from(fd), st))
            }
            _ => {
                let (root, rel) = self.locate(s);
                let tree = self.tree(root).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such tree")
                })?;
                tree.open_file(rel)
            }
        }
    }

    /// Root and path of a scanned path (not [`HostRel::Top`]).
    pub fn locate<'a>(&self, s: &'a Scanned) -> (u16, &'a str) {
        match &s.src {
            HostRel::Suffix { root, at } => (*root, &s.entry.path[*at as usize..]),
            HostRel::Own { root, rel } => (*root, rel),
            HostRel::Top(_) => (u16::MAX, ""),
        }
    }
}

// ------------------------------------------------------------------ scanned

/// One path found.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub entry: Entry,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub src: HostRel,
}

/// What a scan found besides entries.
#[derive(Clone, Debug, Default)]
pub struct Skipped {
    /// Sockets and fifos (archive names).
    pub special: Vec<String>,
    /// Links archived as what they lead to (archive names).
    pub followed: Vec<String>,
    /// Worth telling the administrator (links the container cannot follow,
    /// host directories the container does not see).
    pub notes: Vec<String>,
}

/// The entry of `st`, named `rel` in the manifest; `target` is a link's
/// target.
fn entry_of_stat(
    rel: String,
    st: &rustix::fs::Stat,
    target: Option<String>,
    src: HostRel,
) -> Scanned {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::File,
    };
    Scanned {
        entry: Entry {
            path: rel,
            kind,
            size: if kind == EntryKind::File {
                st.st_size as u64
            } else {
                0
            },
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            user: None,
            group: None,
            sha256: None,
            target,
            stored: false,
        },
        dev: st.st_dev,
        ino: st.st_ino,
        // `nlink_t` is 32 bits wide on some targets.
        #[allow(clippy::unnecessary_cast)]
        nlink: st.st_nlink as u64,
        src,
    }
}

/// The target of the link `name` in `dir` (`shown` names it in errors).
fn link_target(
    dir: &impl AsFd,
    name: &std::ffi::OsStr,
    shown: impl Fn() -> PathBuf,
) -> Result<String> {
    let t = rustix::fs::readlinkat(dir, name, Vec::new())
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot read the link {}", shown().display()))?;
    match t.into_string() {
        Ok(t) => Ok(t),
        Err(_) => bail!(
            "{}: the link's target is not UTF-8, which the backup manifest cannot record; point it at a UTF-8 name",
            shown().display()
        ),
    }
}

fn not_utf8(shown: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: the name is not UTF-8, which the backup manifest cannot record; rename it",
        shown.display()
    )
}

// -------------------------------------------------------------------- scan

/// The root of one archived tree, with what it holds.
type Listed = (Scanned, Option<Listing>);

/// The scan of a deployment.
pub struct Scan {
    /// Every path, in archive order (the queue's content apart).
    pub entries: Vec<Scanned>,
    pub skipped: Skipped,
    pub roots: Roots,
    /// The queue's tree, walked again under the pause ([`Scan::queue`]).
    queue: Option<Here>,
    /// The layout, for walking the queue again.
    layout: Layout,
    exclude: Exclude,
}

/// Open the roots a backup reads from: each mount's source (followed, as
/// Docker binds it), then `data/` and `custom/`.
fn open_roots(dep: &Deployment, layout: &Layout) -> Result<(Roots, u16, u16)> {
    let mut trees = Vec::with_capacity(layout.mounts.len() + 2);
    for m in &layout.mounts {
        let t = if m.kind == MountKind::Host && !m.source.as_os_str().is_empty() {
            // Sources are the host's paths as Docker and Compose name them
            // (the generated override already places them under --root).
            match Tree::open(&m.source) {
                Ok(t) => Some(t),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                    None
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot read {}, which the container mounts at {}",
                            m.source.display(),
                            m.target
                        )
                    })
                }
            }
        } else {
            None
        };
        trees.push(t);
    }
    let mut open_dep = |p: PathBuf| -> Result<u16> {
        let t = match Tree::open(&p) {
            Ok(t) => Some(t),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        trees.push(t);
        Ok((trees.len() - 1) as u16)
    };
    let data = open_dep(dep.data())?;
    let custom = open_dep(dep.custom())?;
    if trees.len() > u16::MAX as usize {
        bail!("the container has too many mounts");
    }
    Ok((Roots { trees }, data, custom))
}

/// The state trees as the container sees them, each with what it holds;
/// the mail queue's root goes to `queue` (it is read apart).
fn state_trees(
    walker: &Walker,
    skipped: &mut Skipped,
    queue: &mut Option<Here>,
) -> Result<Vec<(Scanned, Listing)>> {
    let mut out = Vec::new();
    for (apath, target) in STATE_MOUNTS {
        let Some((top, here)) = state_root(walker, apath, target, skipped)? else {
            continue;
        };
        if *apath == QUEUE_DIR {
            *queue = Some(here);
            continue;
        }
        out.push((top, walker.scan_dir(&here)?));
    }
    Ok(out)
}

/// Scan the deployment as the container `layout` sees it; `skip` are
/// archive paths left out with what lies below them (the tool's temporary
/// directories), `exclude` the destination's files.
pub fn scan(dep: &Deployment, layout: Layout, skip: &[String], exclude: Exclude) -> Result<Scan> {
    let (roots, data_root, custom_root) = open_roots(dep, &layout)?;
    let mut trees: Vec<Listed> = Vec::new();
    let mut skipped = Skipped::default();
    let mut queue = None;
    {
        let view = View {
            layout: &layout,
            roots: &roots,
            targets: layout.mounts.iter().map(|m| comps(&m.target)).collect(),
            state: STATE_MOUNTS.iter().map(|(_, t)| comps(t)).collect(),
            exclude: &exclude,
        };
        let walker = Walker { view, skip };
        // data/ itself, then its entries in name order; the state trees
        // come from the container's view.
        if let Some((root, here)) = top_dir(&roots, data_root, deployment::DATA_DIR)? {
            // The host's data/, without the state trees.
            let mut host_skip: Vec<String> = skip.to_vec();
            host_skip.extend(STATE_MOUNTS.iter().map(|(a, _)| a.to_string()));
            let host_walker = Walker {
                view: walker.view.clone(),
                skip: &host_skip,
            };
            let mut listing = host_walker.scan_dir(&here)?;
            // The state trees, in their places by name.
            for (top, below) in state_trees(&walker, &mut skipped, &mut queue)? {
                insert_sorted(&mut listing, top, Some(below));
            }
            trees.push((root, Some(listing)));
        } else {
            for (top, below) in state_trees(&walker, &mut skipped, &mut queue)? {
                trees.push((top, Some(below)));
            }
        }
        // The deployment's own files.
        for top in top_level() {
            if top == deployment::DATA_DIR {
                continue;
            }
            if top == deployment::CUSTOM_DIR {
                if let Some((root, here)) = top_dir(&roots, custom_root, top)? {
                    trees.push((root, Some(walker.scan_dir(&here)?)));
                }
            } else if let Some(file) = top_file(dep, top)? {
                trees.push((file, None));
            }
        }
    }
    let entries = flatten(trees, &mut skipped);
    refuse_setid(&entries)?;
    Ok(Scan {
        entries,
        skipped,
        roots,
        queue,
        layout,
        exclude,
    })
}

/// A top-level directory of the deployment opened as the root `root`
/// (`None`: it does not exist): its entry and the place its walk starts.
fn top_dir(roots: &Roots, root: u16, name: &str) -> Result<Option<(Scanned, Here)>> {
    let Some(tree) = roots.tree(root) else {
        return Ok(None);
    };
    let st = rustix::fs::fstat(tree.fd()).map_err(std::io::Error::from)?;
    let entry = entry_of_stat(
        name.to_string(),
        &st,
        None,
        HostRel::Suffix {
            root,
            at: name.len() as u32,
        },
    );
    let here = Here {
        root,
        rel: String::new(),
        cpath: None,
        apath: name.to_string(),
        stack: vec![(st.st_dev, st.st_ino)],
        suffix: true,
    };
    Ok(Some((entry, here)))
}

/// A top-level file of the deployment (`None`: it does not exist),
/// followed when it is a link, as Compose reads it.
fn top_file(dep: &Deployment, top: &str) -> Result<Option<Scanned>> {
    let abs = dep.path(top);
    let st = match rustix::fs::stat(&abs) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("cannot read {}", abs.display()))
        }
    };
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        bail!(
            "{} is a {}, not a file; make it the file the deployment reads",
            abs.display(),
            crate::host::kind_name(kind)
        );
    }
    Ok(Some(entry_of_stat(
        top.to_string(),
        &st,
        None,
        HostRel::Top(abs),
    )))
}

/// Every tree's root followed by what it holds, in order.
fn flatten(trees: Vec<Listed>, skipped: &mut Skipped) -> Vec<Scanned> {
    let mut entries = Vec::with_capacity(
        trees
            .iter()
            .map(|(_, l)| 1 + l.as_ref().map_or(0, |l| l.total))
            .sum(),
    );
    for (root, listing) in trees {
        entries.push(root);
        if let Some(l) = listing {
            l.flatten(&mut entries, skipped);
        }
    }
    entries
}

/// A deployment's data runs nothing: a setuid file, or a setgid one that
/// is not a directory (Postfix's `public/` is a setgid directory), is not
/// archived, and the backup stops naming it (a restore refuses such an
/// archive too).
fn refuse_setid(entries: &[Scanned]) -> Result<()> {
    let bad: Vec<&str> = entries
        .iter()
        .filter(|s| {
            let m = s.entry.mode;
            m & 0o4000 != 0 || (m & 0o2000 != 0 && s.entry.kind != EntryKind::Dir)
        })
        .map(|s| s.entry.path.as_str())
        .collect();
    if let Some(first) = bad.first() {
        bail!(
            "{first}{} has the setuid or setgid bit, which a relay's data never has; nothing was written. Remove the bit (chmod u-s,g-s) or the file, then back up again",
            if bad.len() > 1 {
                format!(" (and {} more)", bad.len() - 1)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Put a state tree among `data/`'s entries, by name.
fn insert_sorted(listing: &mut Listing, top: Scanned, below: Option<Listing>) {
    let at = listing
        .found
        .partition_point(|s| s.entry.path.as_bytes() < top.entry.path.as_bytes());
    listing.total += 1 + below.as_ref().map_or(0, |l| l.total);
    listing.found.insert(at, top);
    listing.below.insert(at, below);
}

/// The top of the state tree archived as `apath`, which the container sees
/// at `target`: its entry and where to walk it. `None` when there is
/// nothing there (the container would see an empty directory).
fn state_root(
    w: &Walker,
    apath: &str,
    target: &str,
    skipped: &mut Skipped,
) -> Result<Option<(Scanned, Here)>> {
    let cpath: Vec<String> = comps(target).into_iter().map(String::from).collect();
    let view = &w.view;
    if let Some(m) = view
        .targets
        .iter()
        .position(|t| t.len() == cpath.len() && under(&cpath, t))
    {
        let mount = &view.layout.mounts[m];
        if mount.kind != MountKind::Host {
            bail!(
                "the container mounts a {} at {target}: what the relay keeps there is not on the host and cannot be backed up; mount a host directory there (docker/docker-compose.yaml does)",
                match &mount.kind {
                    MountKind::Other(k) => k.as_str(),
                    MountKind::Host => "",
                }
            );
        }
    }
    match view.mount_of(&cpath) {
        None => bail!(
            "the container does not mount anything from the host at {target}: what the relay keeps there lives only inside the container and cannot be backed up; restore the mount of docker/docker-compose.yaml (check docker-compose.override.yaml)"
        ),
        Some((root, rel)) => {
            let Some(tree) = view.roots.tree(root) else {
                return Ok(None);
            };
            let (root, rel, cpath, st) = if rel.is_empty() {
                let st = rustix::fs::fstat(tree.fd()).map_err(std::io::Error::from)?;
                (root, rel, cpath, st)
            } else {
                // Inside a larger mount: where the container finds it.
                let parent: Vec<String> = cpath[..cpath.len() - 1].to_vec();
                match view.leads(&parent, cpath.last().map(String::as_str).unwrap_or("")) {
                    Leads::Inside | Leads::Nowhere(_) => match view.lookup(&cpath) {
                        Lookup::Found { root, rel, st } => (root, rel, cpath, st),
                        _ => return Ok(None),
                    },
                    Leads::Elsewhere { root, rel, cpath, st } => (root, rel, cpath, st),
                }
            };
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                bail!(
                    "{target} in the container is not a directory ({} on the host); the relay cannot use it",
                    view.layout.mounts[root as usize].source.display()
                );
            }
            let host_dir = view.layout.mounts[root as usize].source.clone();
            let default_dir = Path::new(apath);
            if !host_dir.ends_with(default_dir) {
                skipped.notes.push(format!(
                    "{apath}: archived what the container sees at {target} ({})",
                    host_dir.join(&rel).display()
                ));
            }
            let top = entry_of_stat(
                apath.to_string(),
                &st,
                None,
                HostRel::Own {
                    root,
                    rel: rel.clone().into(),
                },
            );
            let here = Here {
                root,
                suffix: rel.is_empty(),
                rel,
                cpath: Some(cpath),
                apath: apath.to_string(),
                stack: vec![(st.st_dev, st.st_ino)],
            };
            Ok(Some((top, here)))
        }
    }
}

impl Scan {
    /// The mail queue's tree, listed now (under the pause): its top and
    /// everything below, in archive order.
    pub fn queue(&self) -> Result<Option<(Vec<Scanned>, Skipped)>> {
        let Some(here) = &self.queue else {
            return Ok(None);
        };
        let view = View {
            layout: &self.layout,
            roots: &self.roots,
            targets: self
                .layout
                .mounts
                .iter()
                .map(|m| comps(&m.target))
                .collect(),
            state: STATE_MOUNTS.iter().map(|(_, t)| comps(t)).collect(),
            exclude: &self.exclude,
        };
        let walker = Walker { view, skip: &[] };
        let Some(tree) = self.roots.tree(here.root) else {
            return Ok(None);
        };
        let st = if here.rel.is_empty() {
            rustix::fs::fstat(tree.fd()).map_err(std::io::Error::from)?
        } else {
            match tree.stat(&here.rel)? {
                Some(st) => st,
                None => return Ok(None),
            }
        };
        let top = entry_of_stat(
            here.apath.clone(),
            &st,
            None,
            HostRel::Own {
                root: here.root,
                rel: here.rel.clone().into(),
            },
        );
        let listing = walker.scan_dir(here)?;
        let mut out = Vec::with_capacity(1 + listing.total);
        let mut skipped = Skipped::default();
        out.push(top);
        listing.flatten(&mut out, &mut skipped);
        refuse_setid(&out)?;
        Ok(Some((out, skipped)))
    }

    /// Where the container's mounts were read from.
    pub fn layout_from(&self) -> LayoutFrom {
        self.layout.from
    }

    /// Whether a mail queue is part of the deployment.
    pub fn has_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// A maildir message renamed while the backup ran (`new/X` ->
    /// `cur/X:2,S`, or a flag change in `cur/`): the scanned entry of its
    /// new name, looked up relative to the same root.
    pub fn renamed(&self, s: &Scanned) -> Result<Option<Scanned>> {
        let (root, rel) = self.roots.locate(s);
        let Some(tree) = self.roots.tree(root) else {
            return Ok(None);
        };
        let (dir_rel, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => return Ok(None),
        };
        let (adir, _) = s.entry.path.rsplit_once('/').unwrap_or(("", ""));
        let base = name.split(':').next().unwrap_or(name);
        let mut dirs = vec![(dir_rel.to_string(), adir.to_string())];
        if let (Some((up, last)), Some((aup, _))) =
            (dir_rel.rsplit_once('/'), adir.rsplit_once('/'))
        {
            if last == "new" {
                dirs.push((format!("{up}/cur"), format!("{aup}/cur")));
            }
        }
        for (d, ad) in dirs {
            let Ok(sub) = tree.subtree(&d) else { continue };
            let Ok(mut list) = rustix::fs::Dir::read_from(sub.fd()) else {
                continue;
            };
            let mut hit = None;
            for item in list.by_ref().flatten() {
                let n = item.file_name().to_bytes();
                let Ok(n) = std::str::from_utf8(n) else {
                    continue;
                };
                if n != name && n.split(':').next() == Some(base) {
                    hit = Some(n.to_string());
                    break;
                }
            }
            let Some(n) = hit else { continue };
            let new_rel = format!("{d}/{n}");
            let Some(st) = tree.stat(&new_rel)? else {
                continue;
            };
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            {
                continue;
            }
            let apath = format!("{ad}/{n}");
            let src = match &s.src {
                HostRel::Suffix { root, .. } if apath.ends_with(&new_rel) => HostRel::Suffix {
                    root: *root,
                    at: (apath.len() - new_rel.len()) as u32,
                },
                _ => HostRel::Own {
                    root,
                    rel: new_rel.into(),
                },
            };
            return Ok(Some(entry_of_stat(apath, &st, None, src)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A deployment in `d/dep` with the appliance's layout; `extra` more
    /// mounts (target, host source).
    fn layout(dep: &Deployment, extra: &[(&str, PathBuf)]) -> Layout {
        let mut l = default_layout(dep, &crate::host::Host::new("/"));
        for (t, s) in extra {
            l.mounts.push(Mount {
                target: t.to_string(),
                source: s.clone(),
                kind: MountKind::Host,
            });
        }
        l
    }

    fn names(s: &Scan) -> Vec<(String, EntryKind)> {
        s.entries
            .iter()
            .map(|e| (e.entry.path.clone(), e.entry.kind))
            .collect()
    }

    fn run(dep: &Deployment, l: Layout) -> Scan {
        scan(
            dep,
            l,
            &[crate::engine::beside::BESIDE_DIR.to_string()],
            Exclude::default(),
        )
        .unwrap()
    }

    fn content(s: &Scan, path: &str) -> String {
        use std::io::Read;
        let e = s.entries.iter().find(|e| e.entry.path == path).unwrap();
        let mut out = String::new();
        s.roots.open(e).unwrap().0.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn the_appliance_layout_skips_placeholders_sockets_and_the_queue() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        fs::create_dir_all(d.path().join("data/chatmail/vmail")).unwrap();
        fs::create_dir_all(d.path().join("data/chatmail-postfix/deferred")).unwrap();
        fs::create_dir_all(d.path().join("data/.upgrade-stage/x")).unwrap();
        fs::write(d.path().join("data/README.md"), "placeholder").unwrap();
        fs::write(d.path().join("data/.upgrade-state.json"), "{}").unwrap();
        fs::write(d.path().join("data/chatmail/vmail/m"), "mail").unwrap();
        fs::write(d.path().join("data/chatmail-postfix/deferred/Q"), "q").unwrap();
        fs::write(d.path().join(".env"), "A=1").unwrap();
        fs::create_dir_all(d.path().join("relay")).unwrap();
        let _sock =
            std::os::unix::net::UnixListener::bind(d.path().join("data/chatmail/s")).unwrap();
        let s = run(&dep, layout(&dep, &[]));
        assert_eq!(
            names(&s),
            [
                ("data".into(), EntryKind::Dir),
                ("data/.upgrade-state.json".into(), EntryKind::File),
                ("data/chatmail".into(), EntryKind::Dir),
                ("data/chatmail/vmail".into(), EntryKind::Dir),
                ("data/chatmail/vmail/m".into(), EntryKind::File),
                (".env".into(), EntryKind::File),
            ]
        );
        assert_eq!(s.skipped.special, ["data/chatmail/s"]);
        assert_eq!(content(&s, "data/chatmail/vmail/m"), "mail");
        let (q, _) = s.queue().unwrap().unwrap();
        let q: Vec<&str> = q.iter().map(|e| e.entry.path.as_str()).collect();
        assert_eq!(
            q,
            [
                "data/chatmail-postfix",
                "data/chatmail-postfix/deferred",
                "data/chatmail-postfix/deferred/Q"
            ]
        );
    }

    #[test]
    fn linked_sources_and_mounts_below_are_what_the_container_sees() {
        let d = tempfile::tempdir().unwrap();
        let dep_dir = d.path().join("dep");
        let dep = Deployment::new(dep_dir.clone());
        // data/chatmail is a link to a bigger disk; the queue too.
        let disk = d.path().join("disk2");
        fs::create_dir_all(disk.join("mail/cur")).unwrap();
        fs::write(disk.join("mail/cur/a"), "1").unwrap();
        fs::create_dir_all(disk.join("queue/active")).unwrap();
        fs::write(disk.join("queue/active/Q1"), "queued").unwrap();
        fs::create_dir_all(dep_dir.join("data")).unwrap();
        symlink(disk.join("mail"), dep_dir.join("data/chatmail")).unwrap();
        symlink(disk.join("queue"), dep_dir.join("data/chatmail-postfix")).unwrap();
        // The host's /home/vmail, mounted below /home (migrate --mount-vmail).
        let vmail = d.path().join("host-home-vmail");
        fs::create_dir_all(vmail.join("mail/example.org/u")).unwrap();
        fs::write(vmail.join("mail/example.org/u/m"), "mounted").unwrap();
        let s = run(&dep, layout(&dep, &[("/home/vmail", vmail.clone())]));
        assert_eq!(
            names(&s),
            [
                ("data".into(), EntryKind::Dir),
                ("data/chatmail".into(), EntryKind::Dir),
                ("data/chatmail/cur".into(), EntryKind::Dir),
                ("data/chatmail/cur/a".into(), EntryKind::File),
                ("data/chatmail/vmail".into(), EntryKind::Dir),
                ("data/chatmail/vmail/mail".into(), EntryKind::Dir),
                (
                    "data/chatmail/vmail/mail/example.org".into(),
                    EntryKind::Dir
                ),
                (
                    "data/chatmail/vmail/mail/example.org/u".into(),
                    EntryKind::Dir
                ),
                (
                    "data/chatmail/vmail/mail/example.org/u/m".into(),
                    EntryKind::File
                ),
            ]
        );
        assert_eq!(content(&s, "data/chatmail/cur/a"), "1");
        assert_eq!(
            content(&s, "data/chatmail/vmail/mail/example.org/u/m"),
            "mounted"
        );
        let (q, _) = s.queue().unwrap().unwrap();
        assert_eq!(
            q.last().unwrap().entry.path,
            "data/chatmail-postfix/active/Q1"
        );
        assert_eq!(content_of(&s, &q[2]), "queued");
    }

    fn content_of(s: &Scan, e: &Scanned) -> String {
        use std::io::Read;
        let mut out = String::new();
        s.roots.open(e).unwrap().0.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn links_are_resolved_as_the_container_resolves_them() {
        let d = tempfile::tempdir().unwrap();
        let dep_dir = d.path().join("dep");
        let dep = Deployment::new(dep_dir.clone());
        let home = dep_dir.join("data/chatmail");
        fs::create_dir_all(home.join("vmail/mail")).unwrap();
        fs::create_dir_all(dep_dir.join("data/chatmail-acme/certs/c")).unwrap();
        fs::write(dep_dir.join("data/chatmail-acme/certs/c/fullchain"), "CERT").unwrap();
        fs::create_dir_all(dep_dir.join("data/chatmail-acme/live")).unwrap();
        // Inside the tree: kept.
        symlink("../certs/c", dep_dir.join("data/chatmail-acme/live/x")).unwrap();
        // Into another state tree, absolute in the container: kept.
        symlink("/var/lib/acme/certs/c", home.join("cert")).unwrap();
        // Into a mount of the administrator's: archived as what it is.
        let srv = d.path().join("srv");
        fs::create_dir_all(srv.join("archive/old")).unwrap();
        fs::write(srv.join("archive/old/m1"), "old mail").unwrap();
        fs::write(srv.join("note"), "a file").unwrap();
        symlink("/srv/data/archive", home.join("vmail/mail/archive")).unwrap();
        // Relative links in what is archived in a link's place: their
        // meaning kept by the absolute path.
        symlink("../gone", srv.join("archive/dangling")).unwrap();
        symlink("../../../var/lib/acme/certs/c", srv.join("archive/cert")).unwrap();
        symlink("../../../srv/data/note", home.join("vmail/note")).unwrap();
        // A host path the container does not have, and a dangling link:
        // kept, with a note for the absolute one.
        symlink(d.path().join("srv"), home.join("hostpath")).unwrap();
        symlink("nothing", home.join("dangling")).unwrap();
        // A link to /etc: the image's own file.
        symlink("/etc/passwd", home.join("passwd")).unwrap();
        let s = run(&dep, layout(&dep, &[("/srv/data", srv.clone())]));
        let get = |p: &str| {
            s.entries
                .iter()
                .find(|e| e.entry.path == p)
                .unwrap_or_else(|| panic!("{p} missing: {:?}", names(&s)))
        };
        assert_eq!(
            get("data/chatmail-acme/live/x").entry.kind,
            EntryKind::Symlink
        );
        assert_eq!(get("data/chatmail/cert").entry.kind, EntryKind::Symlink);
        assert_eq!(
            get("data/chatmail/vmail/mail/archive").entry.kind,
            EntryKind::Dir
        );
        assert_eq!(
            content(&s, "data/chatmail/vmail/mail/archive/old/m1"),
            "old mail"
        );
        for (p, to) in [
            (
                "data/chatmail/vmail/mail/archive/dangling",
                "/srv/data/gone",
            ),
            (
                "data/chatmail/vmail/mail/archive/cert",
                "/var/lib/acme/certs/c",
            ),
            ("data/chatmail-acme/live/x", "../certs/c"),
        ] {
            assert_eq!(get(p).entry.kind, EntryKind::Symlink, "{p}");
            assert_eq!(get(p).entry.target.as_deref(), Some(to), "{p}");
        }
        assert_eq!(get("data/chatmail/vmail/note").entry.kind, EntryKind::File);
        assert_eq!(content(&s, "data/chatmail/vmail/note"), "a file");
        for p in [
            "data/chatmail/hostpath",
            "data/chatmail/dangling",
            "data/chatmail/passwd",
        ] {
            assert_eq!(get(p).entry.kind, EntryKind::Symlink, "{p}");
        }
        let mut followed = s.skipped.followed.clone();
        followed.sort();
        assert_eq!(
            followed,
            [
                "data/chatmail/vmail/mail/archive",
                "data/chatmail/vmail/note"
            ]
        );
        assert!(
            s.skipped
                .notes
                .iter()
                .any(|n| n.contains("data/chatmail/hostpath")),
            "{:?}",
            s.skipped.notes
        );
    }

    #[test]
    fn relative_link_text_made_absolute() {
        let dir: Vec<String> = ["srv", "extra", "n0"].map(String::from).to_vec();
        assert_eq!(absolute_in(&dir, "../n1"), "/srv/extra/n1");
        assert_eq!(absolute_in(&dir, "./a/../b"), "/srv/extra/n0/a/../b");
        assert_eq!(absolute_in(&dir, "../../../../.."), "/");
        assert_eq!(absolute_in(&dir, "x/"), "/srv/extra/n0/x/");
    }

    #[test]
    fn a_link_that_makes_a_tree_contain_itself_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dep_dir = d.path().join("dep");
        let dep = Deployment::new(dep_dir.clone());
        let home = dep_dir.join("data/chatmail");
        fs::create_dir_all(home.join("a")).unwrap();
        // /srv/loop is the host's data/chatmail again.
        symlink("/srv/loop/a", home.join("a/again")).unwrap();
        let err = scan(
            &dep,
            layout(&dep, &[("/srv/loop", home.clone())]),
            &[],
            Exclude::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("contain itself"), "{err}");
    }

    #[test]
    fn state_the_container_keeps_to_itself_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        fs::create_dir_all(d.path().join("data/chatmail")).unwrap();
        let mut l = default_layout(&dep, &crate::host::Host::new("/"));
        l.mounts.retain(|m| m.target != "/home");
        let err = scan(&dep, l, &[], Exclude::default()).err().unwrap();
        assert!(err.to_string().contains("/home"), "{err}");
        let mut l = default_layout(&dep, &crate::host::Host::new("/"));
        l.mounts.push(Mount {
            target: "/var/spool/postfix".into(),
            source: PathBuf::new(),
            kind: MountKind::Other("tmpfs".into()),
        });
        l.mounts.retain(|m| m.source != dep.path(QUEUE_DIR));
        let err = scan(&dep, l, &[], Exclude::default()).err().unwrap();
        assert!(err.to_string().contains("tmpfs"), "{err}");
    }

    #[test]
    fn only_the_destinations_own_files_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        let data = d.path().join("data");
        fs::create_dir_all(data.join("chatmail/vmail")).unwrap();
        fs::write(data.join("chatmail/vmail/m"), "mail").unwrap();
        for n in [
            "chatmail-backup-1-full.tar.zst",
            "chatmail-backup-1-full.tar.zst.manifest.json",
            ".chatmail-backup-2-full.tar.zst.x1.partial",
            "keep.txt",
        ] {
            fs::write(data.join(n), "x").unwrap();
        }
        let st = rustix::fs::stat(&data).unwrap();
        let s = scan(
            &dep,
            default_layout(&dep, &crate::host::Host::new("/")),
            &[],
            Exclude {
                dir: Some((st.st_dev, st.st_ino)),
                file: None,
            },
        )
        .unwrap();
        let n: Vec<String> = names(&s).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            n,
            [
                "data",
                "data/chatmail",
                "data/chatmail/vmail",
                "data/chatmail/vmail/m",
                "data/keep.txt"
            ]
        );
    }

    #[test]
    fn a_file_swapped_for_a_link_or_fifo_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        let cur = d.path().join("data/chatmail/vmail/cur");
        fs::create_dir_all(&cur).unwrap();
        fs::write(cur.join("a"), "mail").unwrap();
        fs::write(cur.join("b"), "mail").unwrap();
        fs::create_dir_all(d.path().join("data/chatmail/dir")).unwrap();
        fs::write(d.path().join("data/chatmail/dir/c"), "mail").unwrap();
        let s = run(&dep, default_layout(&dep, &crate::host::Host::new("/")));
        let find = |p: &str| s.entries.iter().find(|e| e.entry.path == p).unwrap();
        fs::remove_file(cur.join("a")).unwrap();
        symlink("/etc/passwd", cur.join("a")).unwrap();
        fs::remove_file(cur.join("b")).unwrap();
        crate::host::mkfifo(&cur.join("b"));
        // A directory on the way swapped for a link to elsewhere.
        fs::rename(d.path().join("data/chatmail/dir"), d.path().join("moved")).unwrap();
        symlink(d.path().join("moved"), d.path().join("data/chatmail/dir")).unwrap();
        for p in [
            "data/chatmail/vmail/cur/a",
            "data/chatmail/vmail/cur/b",
            "data/chatmail/dir/c",
        ] {
            let err = s.roots.open(find(p)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{p}: {err}");
        }
    }
}
