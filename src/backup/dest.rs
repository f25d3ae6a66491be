//! Where an archive is written: standard output, or a temporary file
//! (mode 0600, locked while it is written, flushed while it is written)
//! renamed to its name once complete and on disk, with its manifest beside
//! it in a backup directory. A temporary file a killed backup left is
//! removed by the next backup into that directory.

use anyhow::{bail, Context as _, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{BackupOptions, Output};
use crate::archive::manifest::{Header, Manifest, MANIFEST_ENTRY};
use crate::archive::{catalog, chain, crypt, write, PREFIX};
use crate::context::Context;
use crate::host::interrupt::{self, Registered};
use crate::host::{flush, parent_dir};

/// The archive file, flushed by a thread of its own while it is written
/// (the flusher stops when this is dropped, once the archive is complete).
struct Flushed {
    file: fs::File,
    _flusher: flush::Flusher,
}

/// How often the archive is flushed while it is written.
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

impl Write for Flushed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .write(&buf[..buf.len().min(crate::archive::WRITE_CHUNK)])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The open destination: a temp file renamed at the end, or stdout.
pub enum Dest {
    Temp {
        tmp: tempfile::NamedTempFile,
        final_path: PathBuf,
        /// Removed if the process is ended by force.
        _registered: Registered,
    },
    Stdout,
}

/// Whether `name` in a backup directory is a temporary file of a backup
/// (`.ARCHIVE.XXXXXX.partial`, `.manifest.XXXXXX.partial`); `file`: the
/// name a backup to a file writes.
pub fn is_partial(name: &str, file: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    if !rest.ends_with(".partial") {
        return false;
    }
    match file {
        Some(f) => rest.starts_with(&format!("{f}.")),
        None => rest.starts_with(PREFIX) || rest.starts_with("manifest."),
    }
}

/// Remove the temporary files of backups that were killed (no process
/// holds them locked) from `dir`; returns how many.
fn remove_stale_partials(dir: &Path, file: Option<&str>) -> usize {
    crate::host::remove_unlocked(dir, false, |n| {
        n.to_str().is_some_and(|n| is_partial(n, file))
    })
}

/// A temporary file in `dir` for the archive (or its manifest), mode
/// 0600, locked while this process lives (so that another backup sees it
/// is in use), removed if the process is ended by force.
fn partial_in(dir: &Path, prefix: &str) -> Result<(tempfile::NamedTempFile, Registered)> {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".partial")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let registered = interrupt::remove_on_forced_end(tmp.path().to_path_buf());
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))?;
    rustix::fs::flock(
        tmp.as_file(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot lock {}", tmp.path().display()))?;
    Ok((tmp, registered))
}

pub fn open(
    ctx: &Context,
    output: &Output,
    final_path: Option<&Path>,
) -> Result<(Dest, Box<dyn Write + Send>)> {
    match final_path {
        None => Ok((
            Dest::Stdout,
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout(),
            )),
        )),
        Some(p) => {
            let dir = parent_dir(p).to_path_buf();
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the backup directory {}", dir.display()))?;
            if fs::symlink_metadata(p).is_ok() {
                bail!(
                    "{} exists already; name another file (archives are never overwritten)",
                    p.display()
                );
            }
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            let file = match output {
                Output::File(_) => Some(name.as_ref()),
                _ => None,
            };
            let stale = remove_stale_partials(&dir, file);
            if stale > 0 {
                ctx.shell.note(format!(
                    "removed {stale} temporary file{} of an earlier backup that was killed from {}",
                    if stale == 1 { "" } else { "s" },
                    dir.display()
                ));
            }
            let (tmp, registered) = partial_in(&dir, &format!(".{name}."))?;
            let f = tmp.reopen()?;
            Ok((
                Dest::Temp {
                    tmp,
                    final_path: p.to_path_buf(),
                    _registered: registered,
                },
                Box::new(std::io::BufWriter::with_capacity(
                    1 << 20,
                    Flushed {
                        _flusher: flush::Flusher::start(
                            "archive-flush",
                            flush::Target::Data(f.try_clone()?),
                            FLUSH_PERIOD,
                        )?,
                        file: f,
                    },
                )),
            ))
        }
    }
}

/// The archive `w` (with `manifest` last) finished into `dest`, its
/// manifest beside it in a backup directory, both renamed into place once
/// on disk; the deployment records it (and keeps a clear copy of an
/// encrypted one's manifest). Returns the archive's path (`None` on
/// standard output) and size.
pub fn finish<W: Write + Send + 'static>(
    ctx: &Context,
    opts: &BackupOptions,
    dest: Dest,
    w: write::Writer<crypt::Sink<W>>,
    manifest: &[Vec<u8>],
    header: &Header,
    chain_files: &[String],
) -> Result<(Option<PathBuf>, u64)> {
    let parts: Vec<&[u8]> = manifest.iter().map(Vec::as_slice).collect();
    let sidecar_dir = match (&opts.output, &dest) {
        (Output::Dir(_), Dest::Temp { final_path, .. }) => Some(parent_dir(final_path)),
        _ => None,
    };
    let (bytes, sidecar) = write_both(opts, w, &parts, sidecar_dir)?;
    let Dest::Temp {
        tmp,
        final_path,
        _registered,
    } = dest
    else {
        return Ok((None, bytes));
    };
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    {
        // Named, or left to be removed: a forced end waits.
        let _critical = interrupt::critical();
        tmp.persist_noclobber(&final_path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot create {}", final_path.display()))?;
        drop(_registered);
        if let Some((side, registered)) = sidecar {
            let side_path = Manifest::sidecar_of(&final_path);
            side.persist(&side_path)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot create {}", side_path.display()))?;
            drop(registered);
        }
    }
    catalog::record(ctx, &final_path, header)?;
    // Encrypted archives: keep the manifests of the chain here, in clear,
    // for the next incremental (a sidecar in clear would tell the backup's
    // host every mailbox name).
    chain::keep_local_copies(
        ctx,
        (!matches!(opts.encrypt, crypt::Encrypt::None))
            .then_some((final_path.as_path(), &parts[..])),
        chain_files,
    )?;
    flush::sync_dir(parent_dir(&final_path));
    Ok((Some(final_path), bytes))
}

/// The manifest written last into the archive and, while the archive is
/// finished, beside it (its temporary file, flushed): the archive's size
/// and the manifest's file.
fn write_both<W: Write + Send + 'static>(
    opts: &BackupOptions,
    mut w: write::Writer<crypt::Sink<W>>,
    parts: &[&[u8]],
    sidecar_dir: Option<&Path>,
) -> Result<(u64, Option<(tempfile::NamedTempFile, Registered)>)> {
    let (finished, sidecar) = std::thread::scope(|scope| {
        let sidecar = sidecar_dir.map(|dir| {
            scope.spawn(move || -> Result<(tempfile::NamedTempFile, Registered)> {
                let (mut tmp, registered) = partial_in(dir, ".manifest.")?;
                let mut sealed = crypt::Sink::new(tmp.as_file_mut(), &opts.encrypt)?;
                for part in parts {
                    sealed.write_all(part)?;
                }
                sealed.finish()?;
                tmp.as_file().sync_all()?;
                Ok((tmp, registered))
            })
        });
        let finished = (|| -> Result<u64> {
            w.add_meta_parts(MANIFEST_ENTRY, parts)?;
            let (sink, archive_bytes) = w.finish()?;
            let mut out = sink
                .finish()
                .context("cannot finish the encrypted stream")?;
            out.flush().context("cannot write the archive")?;
            Ok(archive_bytes)
        })();
        let sidecar = sidecar.map(|t| {
            t.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the manifest failed")))
        });
        (finished, sidecar)
    });
    Ok((finished?, sidecar.transpose()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_file_is_written_in_small_pieces() {
        use crate::archive::WRITE_CHUNK;
        let data: Vec<u8> = (0..3 * WRITE_CHUNK + 5).map(|i| i as u8).collect();
        // The archive's file: a 1 MiB buffer above it still writes small.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let f = fs::File::create(&path).unwrap();
        let mut flushed = Flushed {
            _flusher: crate::host::flush::Flusher::start(
                "test-flush",
                crate::host::flush::Target::Data(f.try_clone().unwrap()),
                FLUSH_PERIOD,
            )
            .unwrap(),
            file: f,
        };
        assert_eq!(flushed.write(&data).unwrap(), WRITE_CHUNK);
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, flushed);
        buffered.write_all(&data[WRITE_CHUNK..]).unwrap();
        drop(buffered);
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn partial_files_of_backups() {
        assert!(is_partial(
            ".chatmail-backup-x-full.tar.zst.AbC123.partial",
            None
        ));
        assert!(is_partial(".manifest.AbC123.partial", None));
        assert!(!is_partial(".manifest.AbC123", None));
        assert!(!is_partial("chatmail-backup-x.partial", None));
        assert!(is_partial(".b.tar.zst.x1.partial", Some("b.tar.zst")));
        assert!(!is_partial(".other.x1.partial", Some("b.tar.zst")));
    }
}
