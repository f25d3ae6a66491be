//! A chain of archives: a full archive and the incrementals after it,
//! each naming the one it builds on (its id, and its file name, looked for
//! next to it). One walk from an archive back to its full one
//! ([`walk`]), one fold of their manifests forward ([`super::base::Base::apply`]):
//! the deployment as of the newest. Also where an archive's manifest is
//! found for that (the deployment's local copy, the sidecar beside the
//! archive, else the archive itself).

use anyhow::{bail, Context as _, Result};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::base::{self, Base};
use super::crypt::{self, Keys};
use super::manifest::{self, BaseRef, Header, Manifest};
use super::read::untrusted;
use super::MAX_MANIFEST;
use crate::context::Context;

/// The archive `file` that the incremental `cur` builds on, looked for next
/// to it; `steps` archives of the chain ending in `last` were read so far.
/// The name is a plain file name (a header naming `../x` or `/etc/x` is
/// refused) and the file a regular one (not a link, not a FIFO).
pub(crate) fn base_next_to(cur: &Path, file: &str, steps: usize, last: &Path) -> Result<PathBuf> {
    if file.is_empty() || file.contains('/') || file == "." || file == ".." || file.contains('\0') {
        return Err(untrusted(
            cur,
            format!("its header names the base {file:?}, which is not a file name"),
        ));
    }
    if steps > 10_000 {
        bail!("{}: the chain of incremental backups loops", last.display());
    }
    let next = cur.with_file_name(file);
    match fs::symlink_metadata(&next) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "{} is an incremental backup based on {file}, which is not next to it; put the whole chain (the full backup and every incremental after it) in one directory",
            cur.display(),
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", next.display())),
        Ok(m) if !m.file_type().is_file() => bail!(
            "{} is an incremental backup based on {file}, but {} is not a regular file (a link or a FIFO is never followed); put the archive itself there",
            cur.display(),
            next.display()
        ),
        Ok(_) => Ok(next),
    }
}

/// The archives of the chain ending in `last`, oldest first, each with
/// what `read` gives of it: `read` returns that, the base it names, and
/// whether it lists everything (a full archive, or one of format 1, where
/// the walk may stop).
pub fn walk<T>(
    last: &Path,
    mut read: impl FnMut(&Path) -> Result<(T, Option<BaseRef>, bool)>,
) -> Result<Vec<(PathBuf, T)>> {
    let mut out = Vec::new();
    let mut cur = last.to_path_buf();
    loop {
        let (t, base, whole) = read(&cur)?;
        out.push((cur.clone(), t));
        match base {
            Some(b) if !whole => cur = base_next_to(&cur, &b.file, out.len(), last)?,
            _ => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// The headers of the chain ending in `archive`, oldest first.
pub fn headers(archive: &Path, keys: &Keys) -> Result<Vec<(PathBuf, Header)>> {
    walk(archive, |p| {
        let h = super::read::read_header(p, keys)?;
        let base = h.base.clone();
        Ok((h, base, false))
    })
}

/// In the deployment directory (not backed up): a copy of the manifest of
/// each archive of the current chain, `NAME.json` for the archive `NAME`,
/// so that an incremental against encrypted archives needs no key to
/// decrypt them. The host holds the same data in clear.
pub const LOCAL_MANIFESTS: &str = ".chatmail-backup-manifests";
/// The single local copy earlier versions kept (read, then removed).
pub const LAST_MANIFEST: &str = ".chatmail-backup-last.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct LastManifest {
    /// The archive's absolute path and size: the copy is used only for it.
    archive: PathBuf,
    size: u64,
    manifest: Manifest,
}

/// A local copy's first keys (its manifest is skipped).
#[derive(serde::Deserialize)]
struct CopyOf {
    archive: PathBuf,
    size: u64,
}

/// The local copy of `archive`'s manifest, when there is one for it.
fn local_copy(ctx: &Context, archive: &Path) -> Option<base::Source> {
    let (abs, meta) = (fs::canonicalize(archive).ok()?, fs::metadata(archive).ok()?);
    let name = archive.file_name()?;
    let mut own = std::ffi::OsString::from(name);
    own.push(".json");
    for path in [ctx.path(LOCAL_MANIFESTS).join(own), ctx.path(LAST_MANIFEST)] {
        let Ok(Some(bytes)) = crate::host::read_input_opt(&path, MAX_MANIFEST) else {
            continue;
        };
        if let Ok(f) = serde_json::from_slice::<CopyOf>(&bytes) {
            if f.archive == abs && f.size == meta.len() {
                if let Ok(text) = String::from_utf8(bytes) {
                    return Some(base::Source::Last { text, what: path });
                }
            }
        }
    }
    None
}

/// Keep local copies of the manifests of the chain `keep` (file names of
/// the archives the new one builds on) and none other; `new` adds the copy
/// of an encrypted archive just written. An unencrypted archive needs
/// none: its sidecar is in clear.
pub fn keep_local_copies(
    ctx: &Context,
    new: Option<(&Path, &[&[u8]])>,
    keep: &[String],
) -> Result<()> {
    let dir = ctx.path(LOCAL_MANIFESTS);
    let new_name = match new {
        Some((archive, _)) => Some(
            archive
                .file_name()
                .context("an archive has a file name")?
                .to_string_lossy()
                .into_owned(),
        ),
        None => None,
    };
    let wanted = |name: &str| new_name.as_deref() == Some(name) || keep.iter().any(|k| k == name);
    let create_dir = || -> Result<()> {
        let mut b = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        match b.create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(e).with_context(|| format!("cannot create {}", dir.display()))
            }
            _ => Ok(()),
        }
    };
    // The single copy of earlier versions joins the others while its
    // archive is part of the chain.
    let legacy = ctx.path(LAST_MANIFEST);
    if let Ok(Some(bytes)) = crate::host::read_input_opt(&legacy, MAX_MANIFEST) {
        let of = serde_json::from_slice::<CopyOf>(&bytes).ok().and_then(|f| {
            f.archive
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        match of {
            Some(name) if wanted(&name) => {
                create_dir()?;
                fs::rename(&legacy, dir.join(format!("{name}.json")))
                    .with_context(|| format!("cannot move {}", legacy.display()))?;
            }
            _ => {
                let _ = fs::remove_file(&legacy);
            }
        }
    }
    if let (Some((archive, json)), Some(name)) = (new, &new_name) {
        create_dir()?;
        let mut text = format!(
            "{{\"archive\":{},\"size\":{},\"manifest\":",
            serde_json::to_string(&fs::canonicalize(archive)?)?,
            fs::metadata(archive)?.len()
        )
        .into_bytes();
        for part in json {
            text.extend_from_slice(part);
        }
        text.push(b'}');
        crate::host::write_atomic(&dir.join(format!("{name}.json")), &text, 0o600)?;
    }
    let list = match fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut left = 0;
    for item in list {
        let item = item?;
        let file = item.file_name().to_string_lossy().into_owned();
        if wanted(file.strip_suffix(".json").unwrap_or(&file)) {
            left += 1;
        } else {
            let _ = fs::remove_file(item.path());
        }
    }
    if left == 0 {
        let _ = fs::remove_dir(&dir);
    }
    Ok(())
}

/// Where an archive's manifest is: the local copy, its sidecar (decrypted
/// if need be), else the archive itself (read now).
enum ManifestAt {
    Text(base::Source),
    Archive(Box<Manifest>),
}

fn find_manifest(ctx: &Context, archive: &Path, keys: &Keys) -> Result<ManifestAt> {
    if let Some(copy) = local_copy(ctx, archive) {
        return Ok(ManifestAt::Text(copy));
    }
    let side = Manifest::sidecar_of(archive);
    if fs::symlink_metadata(&side).is_ok() {
        // A regular file of a bounded size: a FIFO or a huge file named
        // like a manifest is refused, never read.
        let (f, len) = super::read::open_archive(&side)?;
        if len > MAX_MANIFEST {
            bail!(
                "{} is {len} bytes, more than a backup manifest can be ({MAX_MANIFEST}); remove it (the archive holds its manifest too)",
                side.display()
            );
        }
        // The manifest is as large as the file (smaller when encrypted).
        let mut bytes = Vec::with_capacity(len as usize);
        crypt::open_reader(Box::new(f), keys, &side)?
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", side.display()))?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{}: the backup manifest cannot be read", side.display()))?;
        return Ok(ManifestAt::Text(base::Source::Manifest {
            text,
            what: side,
        }));
    }
    super::read::read_manifest(archive, keys).map(|m| ManifestAt::Archive(Box::new(m)))
}

/// An archive's manifest as written: from the local copy, from its
/// sidecar (decrypted if need be), else read from the archive itself. An
/// incremental's lists what changed.
pub fn load_manifest(ctx: &Context, archive: &Path, keys: &Keys) -> Result<Manifest> {
    match find_manifest(ctx, archive, keys)? {
        ManifestAt::Text(base::Source::Manifest { text, what }) => {
            Manifest::from_json(text.as_bytes(), &what)
        }
        ManifestAt::Text(base::Source::Last { text, what }) => {
            serde_json::from_str::<LastManifest>(&text)
                .map(|l| l.manifest)
                .with_context(|| format!("{}: the backup manifest cannot be read", what.display()))
        }
        ManifestAt::Archive(m) => Ok(*m),
    }
}

/// One archive's manifest, read as a base.
fn load_one(ctx: &Context, archive: &Path, keys: &Keys) -> Result<Base> {
    let source = match find_manifest(ctx, archive, keys)? {
        ManifestAt::Text(s) => s,
        // No sidecar (an archive written to a file of its own): rare
        // enough to go through the text once more.
        ManifestAt::Archive(m) => base::Source::Manifest {
            text: String::from_utf8(m.to_json()).context("a manifest is UTF-8")?,
            what: archive.to_path_buf(),
        },
    };
    let file = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Base::parse(file, source)
}

/// An archive as the base of an incremental backup: the deployment as it
/// was then, folded from its chain (the archives it builds on are looked
/// for next to it). An archive made for another deployment (`ours`) is
/// refused.
pub fn base_of(ctx: &Context, archive: &Path, keys: &Keys, ours: Option<&str>) -> Result<Base> {
    let chain = walk(archive, |p| {
        let b = load_one(ctx, p, keys)?;
        let (base, whole) = (b.based_on.clone(), b.listing == manifest::Listing::All);
        if !whole && base.is_none() {
            bail!(
                "{}: an incremental manifest that names no base; the archive is corrupt",
                p.display()
            );
        }
        Ok((b, base, whole))
    })?;
    let state = fold(chain)?;
    if let (Some(theirs), Some(ours)) = (state.deployment.as_deref(), ours) {
        if theirs != ours {
            return Err(crate::error::usage(format!(
                "{} was made for another deployment (backup id {theirs}, this one is {ours}); an incremental builds only on this deployment's archives (use --full)",
                archive.display()
            )));
        }
    }
    Ok(state)
}

/// The deployment after a chain (oldest first): each archive must build
/// on the one before it (by id: another archive under that name is an
/// error, not a wrong base).
pub fn fold(chain: Vec<(PathBuf, Base)>) -> Result<Base> {
    let mut chain = chain.into_iter();
    let Some((_, mut state)) = chain.next() else {
        bail!("an empty chain of archives");
    };
    for (path, b) in chain {
        if b.based_on.as_ref().map(|r| r.id.as_str()) != Some(state.reference.id.as_str()) {
            bail!(
                "{} does not build on the {} next to it (another archive of that name?)",
                path.display(),
                state.reference.file
            );
        }
        state.apply(b);
    }
    Ok(state)
}
