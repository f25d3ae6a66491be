//! Storing the scanned deployment into the archive: each path compared with
//! the base (an incremental stores what changed), hard links recognised,
//! a maildir message renamed while it is read followed to its new name,
//! the mail queue read under a pause of Postfix; and the manifest that
//! lists it all.

use anyhow::{bail, Context as _, Result};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeMap;
use std::io::{Read, Write};

use super::{pause, scan};
use crate::archive::base;
use crate::archive::manifest::{self, Consistency, Entry, EntryKind, Header, Manifest};
use crate::archive::write;
use crate::context::Context;
use crate::engine::container::RelayFacts;
use scan::Scanned;

/// The progress bar, when one is shown.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    files: u64,
}

impl Progress {
    /// A bar when one is shown; `totals` (bytes and files to read) is
    /// worked out only then.
    pub fn new(ctx: &Context, json: bool, totals: impl FnOnce() -> (u64, u64)) -> Progress {
        if !ctx.shell.progress_allowed() || json {
            return Progress {
                bar: None,
                files: 0,
            };
        }
        let (total, files) = totals();
        let bar = {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {msg} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("0/{files} files"));
            b
        };
        Progress {
            bar: Some(bar),
            files,
        }
    }
    fn tick(&self, bytes: u64, done: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
            if done.is_multiple_of(64) || done == self.files {
                b.set_message(format!("{done}/{} files", self.files));
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Names for an entry's owner, from the container's databases.
fn name_owner(e: &mut Entry, info: &RelayFacts) {
    e.user = info.users.name(e.uid).map(str::to_string);
    e.group = info.groups.name(e.gid).map(str::to_string);
}

pub struct Run<'a> {
    /// What was scanned, and the way back to it.
    scan: &'a scan::Scan,
    /// The base of an incremental backup.
    base: Option<base::Walk<'a>>,
    links: HashMap<(u64, u64), String>,
    /// Files with more than one name stored by this archive: their other
    /// names are listed again (restore replaces a stored file, which
    /// separates it from its old links).
    stored_links: HashSet<(u64, u64)>,
    /// What the scan found (a renamed message is not stored twice).
    scanned_paths: Option<HashSet<&'a str>>,
    /// Names a renamed message was followed to, stored already.
    followed: HashSet<String>,
    /// What this archive's manifest lists: every path, or (incremental)
    /// the paths new or changed since the base.
    entries: Vec<Entry>,
    consistency: Consistency,
    /// The deployment's files and their bytes (listed or not).
    files: usize,
    bytes: u64,
    stored_files: usize,
    stored_bytes: u64,
    signals: usize,
}

impl<'a> Run<'a> {
    pub fn check_interrupt(&self) -> Result<()> {
        if crate::host::interrupt::since(self.signals) {
            return Err(crate::host::interrupt::interrupted(
                "interrupted: no archive was written",
            ));
        }
        Ok(())
    }

    /// Turn a second name of a file into a hard link entry.
    fn link_of(&mut self, s: &Scanned) -> Option<Entry> {
        if s.entry.kind != EntryKind::File || s.nlink < 2 {
            return None;
        }
        match self.links.get(&(s.dev, s.ino)) {
            Some(first) => {
                let mut e = s.entry.clone();
                e.kind = EntryKind::Hardlink;
                e.size = 0;
                e.target = Some(first.clone());
                Some(e)
            }
            None => {
                self.links.insert((s.dev, s.ino), s.entry.path.clone());
                None
            }
        }
    }

    /// An entry of this backup, at `at` in the base's list when it has
    /// one; an incremental lists it only when it is `listed` (new, changed
    /// or stored).
    fn keep(&mut self, e: Entry, at: Option<usize>, listed: bool) {
        if e.kind == EntryKind::File {
            self.files += 1;
            self.bytes += e.size;
        }
        if let (Some(b), Some(at)) = (&mut self.base, at) {
            b.keep(at);
        }
        if listed || self.base.is_none() {
            self.entries.push(e);
        }
    }

    /// Store one scanned path; `content` when it was read already (queue).
    /// A stored file's hash arrives from the writer later ([`Run::hashed`]).
    fn add<W: Write + Send + 'static>(
        &mut self,
        w: &mut write::Writer<W>,
        s: &Scanned,
        content: Option<&[u8]>,
        info: &RelayFacts,
        progress: &Progress,
    ) -> Result<()> {
        self.check_interrupt()?;
        if !self.followed.is_empty() && self.followed.contains(&s.entry.path) {
            // Stored already, under the name it was renamed to.
            return Ok(());
        }
        let (at, prev) = match self.base.as_mut().and_then(|b| b.find(&s.entry.path)) {
            Some((at, p)) => (Some(at), Some(p)),
            None => (None, None),
        };
        // A second name of a file becomes a hard link entry.
        let mut e = self.link_of(s).unwrap_or_else(|| s.entry.clone());
        name_owner(&mut e, info);
        if e.kind != EntryKind::File {
            // Directories, links and hard links: their header is all there
            // is to store. A hard link goes again with the file it names.
            let same = prev.is_some_and(|p| p.unchanged(&e))
                && !(e.kind == EntryKind::Hardlink && self.stored_links.contains(&(s.dev, s.ino)));
            e.stored = !same;
            if !same {
                w.add_entry(&e)?;
            }
            self.keep(e, at, !same);
            return Ok(());
        }
        if let Some(p) = prev.filter(|p| p.unchanged(&e)) {
            if let Some(sha) = p.sha256() {
                e.sha256 = Some(sha.to_string());
                e.stored = false;
                self.keep(e, at, false);
                return Ok(());
            }
        }
        e.stored = true;
        if s.nlink > 1 {
            self.stored_links.insert((s.dev, s.ino));
        }
        let id = self.entries.len();
        let read = match content {
            Some(bytes) => {
                e.size = bytes.len() as u64;
                w.add_bytes(&e, bytes, id)?;
                Some(write::FileRead {
                    size: e.size,
                    changed: false,
                })
            }
            None => match self.scan.roots.open(s) {
                Ok((f, st)) => {
                    if (st.st_dev, st.st_ino) != (s.dev, s.ino) {
                        // Another file under the same name now (a
                        // rename over it): what is there is stored.
                        self.consistency.changed_while_read.push(e.path.clone());
                    }
                    Some(w.add_file(&mut e, &f, &st, id)?)
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(changed_kind(&e.path, &err));
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {}", e.path));
                }
            },
        };
        let Some(read) = read else {
            // Gone since the scan: a maildir message may have moved.
            if let Some(s2) = self.scan.renamed(s)? {
                // A name the scan found is stored in its turn (or was).
                let scan = self.scan;
                let scanned = self
                    .scanned_paths
                    .get_or_insert_with(|| {
                        scan.entries.iter().map(|s| s.entry.path.as_str()).collect()
                    })
                    .contains(s2.entry.path.as_str());
                if scanned || !self.followed.insert(s2.entry.path.clone()) {
                    return Ok(());
                }
                return self.add(w, &s2, None, info, progress);
            }
            return Ok(());
        };
        if read.changed {
            self.consistency.changed_while_read.push(e.path.clone());
        }
        self.stored_files += 1;
        self.stored_bytes += read.size;
        progress.tick(read.size, self.stored_files as u64);
        self.keep(e, at, true);
        Ok(())
    }

    /// Put the hashes the writer computed into the stored entries.
    fn hashed(&mut self, hashes: Vec<(usize, String)>) -> Result<()> {
        for (id, sha) in hashes {
            if let Some(e) = self.entries.get_mut(id) {
                e.sha256 = Some(sha);
            }
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.kind == EntryKind::File && e.sha256.is_none())
        {
            bail!("internal error: no checksum for {}", e.path);
        }
        Ok(())
    }
}

/// The error for a path that is no longer the kind the scan found.
fn changed_kind(path: &str, why: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{path} was a file when the backup began and {why}: it was not followed and nothing was written; run the backup again (if it persists, look at what replaces files there)"
    )
}

/// The queue's paths by name, files with their content.
type QueueFiles = BTreeMap<String, (Scanned, Option<Vec<u8>>)>;

/// The queue's files with their content, read now; what did not change
/// since `before` (same inode, size and time) is not read again.
fn read_queue(scan: &scan::Scan, before: Option<&QueueFiles>) -> Result<QueueFiles> {
    let Some((list, _)) = scan.queue()? else {
        return Ok(QueueFiles::new());
    };
    let mut out = BTreeMap::new();
    for s in list {
        let content = if s.entry.kind == EntryKind::File {
            let same = before
                .and_then(|b| b.get(&s.entry.path))
                .filter(|(p, c)| {
                    c.is_some()
                        && p.ino == s.ino
                        && p.entry.size == s.entry.size
                        && p.entry.mtime == s.entry.mtime
                        && p.entry.mtime_nsec == s.entry.mtime_nsec
                })
                .and_then(|(_, c)| c.clone());
            match same {
                Some(c) => Some(c),
                None => match scan.roots.open(&s) {
                    Ok((mut f, st)) => {
                        let mut c = Vec::with_capacity(st.st_size as usize);
                        f.read_to_end(&mut c)
                            .with_context(|| format!("cannot read {}", s.entry.path))?;
                        Some(c)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Err(changed_kind(&s.entry.path, &e))
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", s.entry.path))
                    }
                },
            }
        } else {
            None
        };
        out.insert(s.entry.path.clone(), (s, content));
    }
    Ok(out)
}

/// Entries of the mail queue planned for without growing the list (a
/// larger queue still fits, at the cost of one copy).
const QUEUE_ROOM: usize = 4096;

impl<'a> Run<'a> {
    /// A run over `scan`, against `base` when incremental.
    pub fn new(scan: &'a scan::Scan, base: Option<&'a base::Base>, signals: usize) -> Run<'a> {
        Run {
            scan,
            base: base.map(base::Base::walk),
            links: HashMap::default(),
            stored_links: HashSet::default(),
            scanned_paths: None,
            followed: HashSet::default(),
            // Room for the queue's entries too (read later): growing a list
            // this long copies it into fresh memory. An incremental lists
            // what changed.
            entries: Vec::with_capacity(if base.is_some() {
                QUEUE_ROOM
            } else {
                scan.entries.len() + QUEUE_ROOM
            }),
            consistency: Consistency::default(),
            files: 0,
            bytes: 0,
            stored_files: 0,
            stored_bytes: 0,
            signals,
        }
    }

    /// What the scan did, in the manifest's notes (and said).
    pub fn note_scan(&mut self, ctx: &Context) {
        let scan = self.scan;
        let notes = &mut self.consistency.notes;
        notes.push(
            "mailboxes, keys and certificates copied while the relay served (maildir files are written once and renamed; a message renamed during the copy is followed to its new name)".into(),
        );
        notes.push(format!(
            "the state as the container sees it, from its mounts ({})",
            match scan.layout_from() {
                scan::LayoutFrom::Container => "the running container's",
                scan::LayoutFrom::Compose => "Compose's configuration",
            }
        ));
        if !scan.skipped.followed.is_empty() {
            notes.push(format!(
                "{} links that lead outside the state trees stored as what they lead to (as the container sees it)",
                scan.skipped.followed.len()
            ));
        }
        for n in &scan.skipped.notes {
            ctx.shell.note(n);
            notes.push(n.clone());
        }
    }

    /// Store every scanned path (the queue apart). This thread reads the
    /// files into the archive's pieces; the writer's pool hashes and
    /// compresses them, as `tar | zstd -T0` overlaps reading and
    /// compression.
    pub fn store_scanned<W: Write + Send + 'static>(
        &mut self,
        w: &mut write::Writer<W>,
        info: &RelayFacts,
        progress: &Progress,
    ) -> Result<()> {
        let scan = self.scan;
        for s in &scan.entries {
            self.add(w, s, None, info, progress)?;
        }
        Ok(())
    }

    /// Store the mail queue: read once while Postfix runs, then again under
    /// the pause (`pause`, when the container runs), reusing what did not
    /// change, so the pause lasts as long as the queue takes to stat, plus
    /// the files that changed.
    pub fn store_queue<W: Write + Send + 'static>(
        &mut self,
        ctx: &Context,
        pause: bool,
        w: &mut write::Writer<W>,
        info: &RelayFacts,
        progress: &Progress,
    ) -> Result<()> {
        let scan = self.scan;
        if !scan.has_queue() {
            self.consistency
                .notes
                .push(format!("no mail queue directory ({})", scan::QUEUE_DIR));
            return Ok(());
        }
        let early = read_queue(scan, None)?;
        let files = if info.running && pause {
            self.paused_read(ctx, early)?
        } else {
            self.consistency.notes.push(if info.running {
                "mail queue copied while Postfix ran (--no-pause)".to_string()
            } else {
                "mail queue copied with the relay stopped (the container was not running)"
                    .to_string()
            });
            early
        };
        for (s, content) in files.values() {
            self.add(w, s, content.as_deref(), info, progress)?;
        }
        Ok(())
    }

    /// The queue read again while Postfix is paused (as `early` when the
    /// pause fails: said, and noted).
    fn paused_read(&mut self, ctx: &Context, early: QueueFiles) -> Result<QueueFiles> {
        match pause::Pause::start(ctx) {
            Ok(mut p) => {
                let method = p.method();
                let res = read_queue(self.scan, Some(&early));
                let d = p.resume()?;
                let files = res?;
                let ms = d.as_millis() as u64;
                self.consistency.queue_pause_ms = Some(ms);
                self.consistency.notes.push(format!(
                    "mail queue ({}) copied while Postfix ({}) was {} for {ms} ms",
                    scan::QUEUE_DIR,
                    pause::POSTFIX_UNIT,
                    match method {
                        pause::Method::Freezer => "frozen (systemctl freeze, cgroup freezer)",
                        pause::Method::Sigstop => "stopped (SIGSTOP/SIGCONT)",
                    }
                ));
                Ok(files)
            }
            Err(e) => {
                ctx.shell
                    .warn(format!("{e:#}; the queue is copied while Postfix runs"));
                self.consistency.notes.push(format!(
                    "mail queue copied while Postfix ran (pausing failed: {e})"
                ));
                Ok(early)
            }
        }
    }

    /// The manifest of this run, with the hashes the writer computed.
    pub fn manifest(
        &mut self,
        header: Header,
        info: &RelayFacts,
        hashes: Vec<(usize, String)>,
    ) -> Result<Manifest> {
        if !self.scan.skipped.special.is_empty() {
            self.consistency.notes.push(format!(
                "{} sockets or fifos not stored (the services create them at start)",
                self.scan.skipped.special.len()
            ));
        }
        if info.users.is_empty() {
            self.consistency.notes.push(
                "owners recorded by number only (the container was not running to name them)"
                    .into(),
            );
        }
        self.hashed(hashes)?;
        let incremental = self.base.is_some();
        let deleted = self
            .base
            .as_ref()
            .map(base::Walk::deleted)
            .unwrap_or_default();
        Ok(Manifest {
            header,
            image_version: info.image_version.clone(),
            relay_commit: info.relay_commit.clone(),
            consistency: self.consistency.clone(),
            listing: if incremental {
                manifest::Listing::Changes
            } else {
                manifest::Listing::All
            },
            entries: std::mem::take(&mut self.entries),
            deleted,
        })
    }

    /// What the summary counts: the deployment's files and bytes, those
    /// stored by this archive.
    pub fn counts(&self) -> (usize, u64, usize, u64) {
        (self.files, self.bytes, self.stored_files, self.stored_bytes)
    }
}
