//! Reading an archive, which is untrusted input: its header and manifest
//! (bounded in size before they are read), every tar entry checked before
//! it is handed on (a relative, plain path under one of the top-level paths
//! a backup holds, each top-level path of its kind, no setuid file, no
//! entry below a symlink of the restore, a hard link only to a file of the
//! restore; on a [`Model`] of what the restore has made so far), every
//! stored file hashed and compared with the manifest. What happens to the
//! entries is the [`Sink`]'s business: a restore writes them, a dry run or
//! a manifest read only hashes them.

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use std::io::{self, Read};
use std::path::{Component, Path};

use super::crypt::{self, Keys};
use super::manifest::{self, check_format, Entry, EntryKind, Header, Manifest};
use crate::error;
use crate::host::interrupt;
use crate::host::tree;

pub fn corrupt(archive: &Path) -> String {
    format!(
        "{} is truncated or corrupt (nothing was restored); use another copy of it",
        archive.display()
    )
}

/// An error about what an archive holds: it was not made by this tool, or
/// was changed since.
pub fn untrusted(archive: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {what}; the archive was not made by chatmail-docker backup (or was changed since), nothing was restored",
        archive.display()
    )
}

pub fn open(archive: &Path, keys: &Keys) -> Result<Box<dyn Read>> {
    let raw: Box<dyn Read> = if archive == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(
            open_archive(archive)
                .map_err(|e| {
                    error::usage(format!(
                        "{e:#} (restore reads archives from regular files; give - to read a stream from standard input)"
                    ))
                })?
                .0,
        )
    };
    crypt::open_reader(raw, keys, archive)
}

type Entries<'a> = tar::Archive<zstd::stream::Decoder<'static, io::BufReader<Box<dyn Read + 'a>>>>;

fn tar_of<'a>(r: Box<dyn Read + 'a>, archive: &Path) -> Result<Entries<'a>> {
    let dec = zstd::stream::Decoder::new(r).with_context(|| corrupt(archive))?;
    Ok(tar::Archive::new(dec))
}

/// Read an entry of the archive's own (header, manifest) whole, refusing
/// one larger than `limit` before reading it.
fn read_meta<R: Read>(
    e: &mut tar::Entry<R>,
    archive: &Path,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let size = e.header().entry_size().with_context(|| corrupt(archive))?;
    if size > limit {
        return Err(untrusted(
            archive,
            format!("its {what} is {size} bytes, more than {limit}"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    e.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| corrupt(archive))?;
    Ok(buf)
}

fn read_header_from<R: Read>(e: &mut tar::Entry<R>, archive: &Path) -> Result<Header> {
    let path = e.path().with_context(|| corrupt(archive))?.into_owned();
    if path != Path::new(manifest::HEADER_ENTRY) {
        bail!(
            "{} is not a chatmail-docker backup (it does not start with {})",
            archive.display(),
            manifest::HEADER_ENTRY
        );
    }
    let buf = read_meta(e, archive, super::MAX_HEADER, "header")?;
    let h: Header = serde_json::from_slice(&buf)
        .with_context(|| format!("{}: the backup header cannot be read", archive.display()))?;
    check_format(&h, archive)?;
    Ok(h)
}

/// The first entry of an archive.
pub fn read_header(archive: &Path, keys: &Keys) -> Result<Header> {
    let mut ar = tar_of(open(archive, keys)?, archive)?;
    let mut entries = ar.entries().with_context(|| corrupt(archive))?;
    let mut first = entries
        .next()
        .with_context(|| corrupt(archive))?
        .with_context(|| corrupt(archive))?;
    read_header_from(&mut first, archive)
}

/// The manifest of an archive, read through it (and checked).
pub fn read_manifest(archive: &Path, keys: &Keys) -> Result<Manifest> {
    let mut model = Model {
        alone: true,
        ..Model::default()
    };
    extract(
        open(archive, keys)?,
        archive,
        &mut Check,
        &mut model,
        None,
        interrupt::count(),
    )
    .map(|r| r.manifest)
}

/// A path from an archive, checked: relative, plain, under one of the
/// top-level paths a backup holds.
pub fn checked_path(p: &str, archive: &Path) -> Result<String> {
    let ok = tree::is_plain(p)
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && super::top_level().contains(&p.split('/').next().unwrap_or(""));
    if ok {
        Ok(p.to_string())
    } else {
        Err(untrusted(
            archive,
            format!("unexpected entry {p:?} (not a deployment file)"),
        ))
    }
}

/// The kind a top-level path must have.
pub fn top_kind(top: &str) -> EntryKind {
    if top == crate::deployment::DATA_DIR || top == crate::deployment::CUSTOM_DIR {
        EntryKind::Dir
    } else {
        EntryKind::File
    }
}

pub fn kind_word(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hard link",
    }
}

/// Mode bits a restored path may not have: no setuid anywhere, no setgid
/// but on a directory (Postfix's `public/` is setgid); mail data runs
/// nothing.
fn check_mode(path: &str, kind: EntryKind, mode: u32, archive: &Path) -> Result<()> {
    let setuid = mode & 0o4000 != 0;
    let setgid = mode & 0o2000 != 0 && kind != EntryKind::Dir;
    if setuid || setgid {
        return Err(untrusted(
            archive,
            format!(
                "{path} has the {} bit (mode {:o}); a deployment's data never does",
                if setuid { "setuid" } else { "setgid" },
                mode
            ),
        ));
    }
    Ok(())
}

/// Check an entry of a manifest: its path, its kind at the top level, its
/// mode, a hard link's target.
fn check_entry(e: &Entry, archive: &Path) -> Result<()> {
    checked_path(&e.path, archive)?;
    if !e.path.contains('/') {
        let want = top_kind(&e.path);
        if e.kind != want {
            return Err(untrusted(
                archive,
                format!(
                    "{} is a {} in its manifest; it must be a {}",
                    e.path,
                    kind_word(e.kind),
                    kind_word(want)
                ),
            ));
        }
    }
    if e.kind == EntryKind::Hardlink {
        checked_path(e.target.as_deref().unwrap_or(""), archive)?;
    }
    check_mode(&e.path, e.kind, e.mode, archive)
}

/// What the restore has made so far, by path: the checks of every entry run
/// on this model, in a dry run as in a real one.
#[derive(Default)]
pub struct Model {
    /// Path -> kind (a hard link is a file) and size of files.
    pub paths: BTreeMap<String, (EntryKind, u64)>,
    /// One archive read on its own (for its manifest): the files of the
    /// archives it builds on are not known, so a hard link may name one.
    pub alone: bool,
}

impl Model {
    /// Everything at and below `rel`.
    pub fn below(&self, rel: &str) -> Vec<String> {
        let lo = format!("{rel}/");
        let hi = format!("{rel}0"); // '0' follows '/'
        let mut v: Vec<String> = self.paths.range(lo..hi).map(|(k, _)| k.clone()).collect();
        if self.paths.contains_key(rel) {
            v.push(rel.to_string());
        }
        v
    }

    /// Where an entry `rel` may go: every directory above it is one (or is
    /// made as one), none is a symlink or a file.
    fn check_parents(&self, rel: &str, archive: &Path) -> Result<()> {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let p = &rel[..at + i];
            match self.paths.get(p) {
                None | Some((EntryKind::Dir, _)) => {}
                Some((k, _)) => {
                    return Err(untrusted(
                        archive,
                        format!(
                            "{rel} lies below {p}, which is a {} of the restore: an entry there would leave it",
                            kind_word(*k)
                        ),
                    ))
                }
            }
            at += i + 1;
        }
        Ok(())
    }

    /// `rel` is now of `kind`: what it replaces goes (a directory with what
    /// it held), unless a directory stays a directory. Returns whether
    /// something was there to remove.
    fn set(&mut self, rel: &str, kind: EntryKind, size: u64) -> bool {
        let kind = if kind == EntryKind::Hardlink {
            EntryKind::File
        } else {
            kind
        };
        let replaced = match self.paths.get(rel) {
            Some((EntryKind::Dir, _)) if kind == EntryKind::Dir => false,
            Some(_) => {
                for p in self.below(rel) {
                    self.paths.remove(&p);
                }
                true
            }
            None => false,
        };
        // Directories above an entry are made as directories.
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            self.paths
                .entry(rel[..at + i].to_string())
                .or_insert((EntryKind::Dir, 0));
            at += i + 1;
        }
        self.paths.insert(rel.to_string(), (kind, size));
        replaced
    }

    pub fn kind(&self, rel: &str) -> Option<EntryKind> {
        self.paths.get(rel).map(|(k, _)| *k)
    }
}

/// Open an archive of a backup directory: a regular file, not a link; never
/// blocks (a FIFO named like an archive is refused).
pub fn open_archive(path: &Path) -> Result<(std::fs::File, u64)> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => {
            anyhow::anyhow!("{} is a symlink, not an archive", path.display())
        }
        e => anyhow::Error::from(std::io::Error::from(e))
            .context(format!("cannot open {}", path.display())),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        anyhow::bail!(
            "{} is a {}, not an archive",
            path.display(),
            crate::host::kind_name(kind)
        );
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(std::io::Error::from)?;
    Ok((std::fs::File::from(fd), st.st_size as u64))
}

/// Where the checked entries of an archive go (a restore's temporary
/// directory, or nowhere).
pub trait Sink {
    /// `rel`, and what is below it, goes: a later archive of the chain
    /// made it something else.
    fn remove(&mut self, rel: &str, hashes: &mut Hashes) -> Result<()>;
    /// A regular file of `size` bytes, read from `data`; its hash goes into
    /// `hashes` (now, or by [`Sink::flush`]).
    fn file(
        &mut self,
        rel: &str,
        size: u64,
        data: &mut dyn Read,
        hashes: &mut Hashes,
    ) -> Result<()>;
    fn dir(&mut self, rel: &str) -> Result<()>;
    fn symlink(&mut self, rel: &str, target: &[u8]) -> Result<()>;
    /// A second name for the file `target` (handed over before).
    fn hard_link(&mut self, rel: &str, target: &str, hashes: &mut Hashes) -> Result<()>;
    /// Every file handed over is written and hashed.
    fn flush(&mut self, hashes: &mut Hashes) -> Result<()>;
}

/// Each stored file's SHA-256 (hex) and size, as read.
pub type Hashes = BTreeMap<String, (String, u64)>;

/// Hash what is read from `r`.
pub fn hash_all(r: &mut dyn Read, archive: &Path) -> Result<(String, u64)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).with_context(|| corrupt(archive))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(hasher.finalize()), n))
}

/// The sink that writes nothing: every check runs, files are hashed.
pub struct Check;

impl Sink for Check {
    fn remove(&mut self, _: &str, _: &mut Hashes) -> Result<()> {
        Ok(())
    }
    fn file(&mut self, rel: &str, _: u64, data: &mut dyn Read, hashes: &mut Hashes) -> Result<()> {
        let h = hash_all(data, Path::new(rel))?;
        hashes.insert(rel.to_string(), h);
        Ok(())
    }
    fn dir(&mut self, _: &str) -> Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _: &str, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn hard_link(&mut self, _: &str, _: &str, _: &mut Hashes) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self, _: &mut Hashes) -> Result<()> {
        Ok(())
    }
}

/// One archive, read: its manifest, checked against its entries, and the
/// manifest's text (for folding it with the chain's others).
pub struct Extracted {
    pub manifest: Manifest,
    pub text: String,
}

/// Read one archive into `sink`. `model` is the restore so far (every
/// check runs on it, whatever the sink does); `expect_base` the id of the
/// archive before it in the chain. Returns the archive's manifest after
/// checking every stored file's hash and every entry against it.
pub fn extract(
    r: Box<dyn Read + '_>,
    archive: &Path,
    sink: &mut dyn Sink,
    model: &mut Model,
    expect_base: Option<&str>,
    signals: usize,
) -> Result<Extracted> {
    let mut ar = tar_of(r, archive)?;
    let mut read = ArchiveRead {
        hashes: Hashes::new(),
        seen: Default::default(),
        kinds: BTreeMap::new(),
    };
    let mut manifest: Option<(Manifest, String)> = None;
    let mut header: Option<Header> = None;
    {
        let entries = ar.entries().with_context(|| corrupt(archive))?;
        for item in entries {
            let mut e = item.with_context(|| corrupt(archive))?;
            if header.is_none() {
                header = Some(first_header(&mut e, archive, expect_base)?);
                continue;
            }
            let raw = e.path_bytes().into_owned();
            if manifest.is_some() {
                bail!(
                    "{}: entries after the manifest; {}",
                    archive.display(),
                    corrupt(archive)
                );
            }
            if raw == manifest::MANIFEST_ENTRY.as_bytes() {
                let b = read_meta(&mut e, archive, super::MAX_MANIFEST, "manifest")?;
                let m = Manifest::from_json(&b, archive)?;
                let text = String::from_utf8(b).with_context(|| {
                    format!("{}: the backup manifest cannot be read", archive.display())
                })?;
                manifest = Some((m, text));
                continue;
            }
            if interrupt::since(signals) {
                return Err(interrupt::interrupted("interrupted: nothing was restored"));
            }
            let c = check_tar_entry(&e, raw, archive, model, &mut read.seen)?;
            read.hand_over(c, &mut e, sink, model)?;
        }
    }
    sink.flush(&mut read.hashes)?;
    // Read to the end of the stream so that zstd checks its checksum.
    io::copy(&mut ar.into_inner(), &mut io::sink()).with_context(|| corrupt(archive))?;
    let header = header.with_context(|| corrupt(archive))?;
    let Some((m, text)) = manifest else {
        bail!(
            "{} ends before its manifest: {}",
            archive.display(),
            corrupt(archive)
        );
    };
    read.check_manifest(&m, &header, archive)?;
    Ok(Extracted { manifest: m, text })
}

/// The archive's header, its first entry; `expect_base`: the id of the
/// archive it must build on.
fn first_header<R: Read>(
    e: &mut tar::Entry<R>,
    archive: &Path,
    expect_base: Option<&str>,
) -> Result<Header> {
    let h = read_header_from(e, archive)?;
    if let Some(want) = expect_base {
        if h.base.as_ref().map(|b| b.id.as_str()) != Some(want) {
            bail!(
                "{} does not build on the archive before it in the chain; restore a chain in the order it was made",
                archive.display()
            );
        }
    }
    Ok(h)
}

/// What reading one archive found so far.
struct ArchiveRead {
    hashes: Hashes,
    /// Every path once per archive: a second entry could rewrite a file
    /// through a hard link after its hash was taken.
    seen: rustc_hash::FxHashSet<String>,
    /// What this archive's tar entries are, checked against its manifest.
    kinds: BTreeMap<String, EntryKind>,
}

/// A tar entry of a backup, checked.
struct Checked {
    rel: String,
    kind: EntryKind,
    /// A link's target.
    target: Option<Vec<u8>>,
    size: u64,
}

/// Check the tar entry `e` (named `raw`) against what a backup holds and
/// against the restore so far (`model`).
fn check_tar_entry<R: Read>(
    e: &tar::Entry<R>,
    raw: Vec<u8>,
    archive: &Path,
    model: &Model,
    seen: &mut rustc_hash::FxHashSet<String>,
) -> Result<Checked> {
    let Ok(raw) = String::from_utf8(raw) else {
        return Err(untrusted(archive, "an entry's name is not UTF-8"));
    };
    let rel = checked_path(&raw, archive)?;
    if !seen.insert(rel.clone()) {
        bail!(
            "{}: {rel} appears twice; {}",
            archive.display(),
            corrupt(archive)
        );
    }
    let kind = match e.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::Hardlink,
        other => {
            return Err(untrusted(
                archive,
                format!("entry {rel} has a type ({other:?}) a backup never holds"),
            ))
        }
    };
    if !rel.contains('/') && kind != top_kind(&rel) {
        return Err(untrusted(
            archive,
            format!(
                "{rel} is a {}; it must be a {}",
                kind_word(kind),
                kind_word(top_kind(&rel))
            ),
        ));
    }
    // The manifest has the mode too (checked there); a header without one
    // is taken as none.
    let mode = e.header().mode().unwrap_or(0);
    check_mode(&rel, kind, mode, archive)?;
    model.check_parents(&rel, archive)?;
    let target = match kind {
        EntryKind::Symlink | EntryKind::Hardlink => Some(
            e.link_name_bytes()
                .map(|t| t.into_owned())
                .ok_or_else(|| untrusted(archive, format!("the link {rel} has no target")))?,
        ),
        _ => None,
    };
    if kind == EntryKind::Hardlink {
        let t = String::from_utf8(target.clone().unwrap_or_default()).map_err(|_| {
            untrusted(
                archive,
                format!("the hard link {rel}'s target is not UTF-8"),
            )
        })?;
        let t = checked_path(&t, archive)?;
        let known = match model.kind(&t) {
            Some(k) => k == EntryKind::File,
            None => model.alone,
        };
        if !known || t == rel {
            return Err(untrusted(
                archive,
                format!("the hard link {rel} does not lead to a file of the backup"),
            ));
        }
    }
    let size = e.header().entry_size().with_context(|| corrupt(archive))?;
    Ok(Checked {
        rel,
        kind,
        target,
        size,
    })
}

impl ArchiveRead {
    /// Hand the checked entry `c` (its content read from `data`) to the
    /// sink, replacing what an earlier archive of the chain had there.
    fn hand_over(
        &mut self,
        c: Checked,
        data: &mut dyn Read,
        sink: &mut dyn Sink,
        model: &mut Model,
    ) -> Result<()> {
        let Checked {
            rel,
            kind,
            target,
            size,
        } = c;
        let hashes = &mut self.hashes;
        let replaced = model.set(&rel, kind, if kind == EntryKind::File { size } else { 0 });
        self.kinds.insert(rel.clone(), kind);
        let io_ctx = || format!("cannot write {rel}");
        if replaced {
            sink.remove(&rel, hashes).with_context(io_ctx)?;
        }
        match kind {
            EntryKind::File => sink.file(&rel, size, data, hashes)?,
            EntryKind::Dir => sink.dir(&rel).with_context(io_ctx)?,
            EntryKind::Symlink => sink
                .symlink(&rel, &target.unwrap_or_default())
                .with_context(io_ctx)?,
            EntryKind::Hardlink => {
                let t = String::from_utf8(target.unwrap_or_default()).unwrap_or_default();
                sink.hard_link(&rel, &t, hashes).with_context(io_ctx)?;
            }
        }
        Ok(())
    }

    /// The manifest `m` belongs to the `header` and lists exactly what was
    /// read, every stored file with the hash it had.
    fn check_manifest(&self, m: &Manifest, header: &Header, archive: &Path) -> Result<()> {
        if &m.header != header {
            bail!(
                "{}: the manifest does not belong to the header; {}",
                archive.display(),
                corrupt(archive)
            );
        }
        for e in &m.entries {
            check_entry(e, archive)?;
        }
        for d in &m.deleted {
            checked_path(d, archive)?;
        }
        let mut expected = 0usize;
        for e in m.entries.iter().filter(|e| e.stored) {
            if self.kinds.get(&e.path) != Some(&e.kind) {
                return Err(untrusted(
                    archive,
                    format!("{} is not in the archive as its manifest says", e.path),
                ));
            }
            if e.kind != EntryKind::File {
                continue;
            }
            expected += 1;
            match self.hashes.get(&e.path) {
                Some((sha, size)) if Some(sha) == e.sha256.as_ref() && *size == e.size => {}
                Some(_) => bail!(
                    "{}: {} does not match its checksum; the archive is corrupt (nothing was restored)",
                    archive.display(),
                    e.path
                ),
                None => bail!(
                    "{}: {} is missing; {}",
                    archive.display(),
                    e.path,
                    corrupt(archive)
                ),
            }
        }
        let stored = m.entries.iter().filter(|e| e.stored).count();
        if expected != self.hashes.len() || stored != self.kinds.len() {
            bail!(
                "{}: entries that the manifest does not list; {}",
                archive.display(),
                corrupt(archive)
            );
        }
        Ok(())
    }
}
