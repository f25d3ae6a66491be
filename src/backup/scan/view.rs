//! The container's view of the state trees: where a symlink leads when
//! the container resolves it, and which files are the backup's own
//! destination.

use super::*;

/// What a symlink in a state tree leads to, in the container.
pub(super) enum Leads {
    /// Somewhere inside the state trees, reached without leaving them: the
    /// same link in the restored layout means the same.
    Inside,
    /// An object in a mount outside the state trees (or reached through
    /// one): archived in the link's place.
    Elsewhere {
        root: u16,
        rel: String,
        cpath: Vec<String>,
        st: rustix::fs::Stat,
    },
    /// Nothing the host provides: dangling, a loop, or the image's own
    /// files. The link is archived as it is.
    Nowhere(&'static str),
}

/// A looked-up container path.
pub(super) enum Lookup {
    /// In the mount `root`, at `rel` below its source.
    Found {
        root: u16,
        rel: String,
        st: rustix::fs::Stat,
    },
    /// Not there (or not readable as a path: a file on the way).
    Missing,
    /// A directory of the image that holds mounts further down.
    ImageDir,
    /// The image's own files: unknown from the host.
    Image,
}

/// The container's state trees as the scan sees them.
#[derive(Clone)]
pub(super) struct View<'a> {
    pub(super) layout: &'a Layout,
    pub(super) roots: &'a Roots,
    /// Component lists of the mounts' targets (same order).
    pub(super) targets: Vec<Vec<&'a str>>,
    /// Component lists of the state targets.
    pub(super) state: Vec<Vec<&'static str>>,
    /// Directories whose entries named like archives are the destination.
    pub(super) exclude: &'a Exclude,
}

/// The backup's destination, when it lies inside what is archived: only
/// the files a backup writes there are left out, never the directory.
#[derive(Clone, Debug, Default)]
pub struct Exclude {
    /// (device, inode) of the destination's directory.
    pub dir: Option<(u64, u64)>,
    /// A destination file's own name (a backup to a file).
    pub file: Option<String>,
}

impl Exclude {
    /// Whether the entry `name` of the directory `(dev, ino)` is the
    /// destination's: an archive, its manifest, a partial file of one.
    pub fn skips(&self, dir: (u64, u64), name: &str) -> bool {
        if self.dir != Some(dir) {
            return false;
        }
        if let Some(file) = self.file.as_deref() {
            // A backup to a file: that file and its temporary file.
            return name == file || crate::backup::dest::is_partial(name, Some(file));
        }
        // A backup directory: its archives, their manifests, the
        // temporary files of backups.
        let archive =
            |n: &str| n.starts_with(crate::archive::PREFIX) && n.ends_with(crate::archive::SUFFIX);
        archive(name)
            || name
                .strip_suffix(crate::archive::manifest::SIDECAR_SUFFIX)
                .is_some_and(archive)
            || crate::backup::dest::is_partial(name, None)
    }
}

impl<'a> View<'a> {
    pub(super) fn in_state(&self, cpath: &[impl AsRef<str>]) -> bool {
        self.state.iter().any(|s| under(cpath, s))
    }

    /// The mount holding the container path `cpath` (the longest target
    /// above it) and the path below the mount's source.
    pub(super) fn mount_of(&self, cpath: &[impl AsRef<str>]) -> Option<(u16, String)> {
        let (i, t) = self
            .targets
            .iter()
            .enumerate()
            .filter(|(i, t)| under(cpath, t) && self.layout.mounts[*i].kind == MountKind::Host)
            .max_by_key(|(_, t)| t.len())?;
        // A tmpfs or another mount the host cannot read below it hides it.
        let hidden = self.targets.iter().enumerate().any(|(j, u)| {
            self.layout.mounts[j].kind != MountKind::Host && u.len() > t.len() && under(cpath, u)
        });
        if hidden {
            return None;
        }
        let rel = cpath[t.len()..]
            .iter()
            .map(|c| c.as_ref())
            .collect::<Vec<_>>()
            .join("/");
        Some((i as u16, rel))
    }

    pub(super) fn lookup(&self, cpath: &[String]) -> Lookup {
        match self.mount_of(cpath) {
            Some((root, rel)) => {
                let Some(tree) = self.roots.tree(root) else {
                    return Lookup::Missing;
                };
                let st = if rel.is_empty() {
                    rustix::fs::fstat(tree.fd()).ok()
                } else {
                    tree.stat(&rel).ok().flatten()
                };
                match st {
                    Some(st) => Lookup::Found { root, rel, st },
                    None => Lookup::Missing,
                }
            }
            None if self
                .targets
                .iter()
                .any(|t| t.len() > cpath.len() && under(t, cpath)) =>
            {
                Lookup::ImageDir
            }
            None => Lookup::Image,
        }
    }

    /// Follow the link `target` found in the container directory `dir` as
    /// the container would.
    pub(super) fn leads(&self, dir: &[String], target: &str) -> Leads {
        use rustix::fs::FileType;
        let mut cur: Vec<String> = if target.starts_with('/') {
            Vec::new()
        } else {
            dir.to_vec()
        };
        let mut todo: VecDeque<String> = comps(target).into_iter().map(String::from).collect();
        let mut left = false;
        let mut links = 0;
        let mut last: Option<(u16, String, rustix::fs::Stat)> = None;
        while let Some(name) = todo.pop_front() {
            if name == "." {
                continue;
            }
            if name == ".." {
                cur.pop();
                last = None;
                continue;
            }
            cur.push(name);
            match self.lookup(&cur) {
                Lookup::Missing => return Leads::Nowhere("it leads to nothing"),
                Lookup::Image => return Leads::Nowhere("it leads into the image's own files"),
                Lookup::ImageDir => {
                    last = None;
                }
                Lookup::Found { root, rel, st } => {
                    if !self.in_state(&cur) {
                        left = true;
                    }
                    match FileType::from_raw_mode(st.st_mode) {
                        FileType::Symlink => {
                            links += 1;
                            if links > MAX_LINKS {
                                return Leads::Nowhere("it is a loop of links");
                            }
                            let Some(text) = self
                                .roots
                                .tree(root)
                                .and_then(|t| t.read_link(&rel).ok())
                                .and_then(|t| t.into_string().ok())
                            else {
                                return Leads::Nowhere("a link on the way cannot be read");
                            };
                            cur.pop();
                            if text.starts_with('/') {
                                cur.clear();
                            }
                            for c in comps(&text).into_iter().rev() {
                                todo.push_front(c.to_string());
                            }
                            last = None;
                        }
                        FileType::Directory => last = Some((root, rel, st)),
                        _ if !todo.is_empty() => return Leads::Nowhere("it leads through a file"),
                        _ => last = Some((root, rel, st)),
                    }
                }
            }
        }
        match last {
            None => Leads::Nowhere("it leads into the image's own files"),
            Some(_) if !left && self.in_state(&cur) => Leads::Inside,
            Some((root, rel, st)) => Leads::Elsewhere {
                root,
                rel,
                cpath: cur,
                st,
            },
        }
    }

    /// Whether `name` in the container directory `dir` is exactly a
    /// mount's target (a mount below the tree being walked).
    pub(super) fn mount_at(&self, dir: &[String], name: &str) -> Option<u16> {
        self.targets
            .iter()
            .position(|t| {
                t.len() == dir.len() + 1 && t[dir.len()] == name && under(dir, &t[..dir.len()])
            })
            .map(|i| i as u16)
    }
}
