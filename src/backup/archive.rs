//! The archive stream: tar entries, compressed with multi-threaded zstd
//! (frame checksums on), counted as they leave. Content is hashed while it
//! is read, so every file is read once.

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use super::manifest::{Entry, EntryKind};

/// Counts the bytes that reach the destination.
pub struct Counting<W: Write> {
    inner: W,
    pub bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct Writer<W: Write> {
    // zstd's multi-threaded stream takes locks on every call: give it
    // large pieces, not one tar header at a time.
    tar: tar::Builder<io::BufWriter<zstd::stream::Encoder<'static, Counting<W>>>>,
}

/// Files up to this size are read in one go; larger ones are streamed.
const WHOLE_FILE: u64 = 4 << 20;

/// A file's content as it was read: its hash, and whether it changed size
/// while being read (the stored bytes then still match the hash).
pub struct FileRead {
    pub sha256: String,
    pub size: u64,
    pub changed: bool,
}

fn tar_header(e: &Entry, ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime.max(0) as u64);
    // Names longer than the field are left out; the manifest has them.
    if let Some(u) = &e.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &e.group {
        let _ = h.set_groupname(g);
    }
    h
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes still owed to the tar entry.
    left: u64,
    short: bool,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let mut n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        if n == 0 {
            // The file shrank while it was read: pad, so the archive
            // stays well-formed, and hash what is stored.
            self.short = true;
            buf[..want].fill(0);
            n = want;
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, level: i32, threads: u32) -> Result<Writer<W>> {
        let mut enc = zstd::stream::Encoder::new(
            Counting {
                inner: out,
                bytes: 0,
            },
            level,
        )
        .context("cannot start the zstd compressor")?;
        enc.include_checksum(true)?;
        if threads > 0 {
            enc.multithread(threads)
                .context("cannot start zstd's worker threads")?;
        }
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, enc));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(Writer { tar })
    }

    /// One of the archive's own files (header, manifest).
    pub fn add_meta(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        self.tar
            .append_data(&mut h, path, bytes)
            .context("cannot write the archive")
    }

    /// A directory, symlink or hard link (no content).
    pub fn add_entry(&mut self, e: &Entry) -> Result<()> {
        let res = match e.kind {
            EntryKind::Dir => {
                let mut h = tar_header(e, tar::EntryType::Directory, 0);
                self.tar.append_data(&mut h, &e.path, io::empty())
            }
            EntryKind::Symlink | EntryKind::Hardlink => {
                let ty = if e.kind == EntryKind::Symlink {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = tar_header(e, ty, 0);
                self.tar
                    .append_link(&mut h, &e.path, e.target.as_deref().unwrap_or_default())
            }
            EntryKind::File => unreachable!("files go through add_file"),
        };
        res.context("cannot write the archive")
    }

    /// A regular file already in memory.
    pub fn add_bytes(&mut self, e: &Entry, bytes: &[u8]) -> Result<()> {
        let mut h = tar_header(e, tar::EntryType::Regular, bytes.len() as u64);
        self.tar
            .append_data(&mut h, &e.path, bytes)
            .context("cannot write the archive")
    }

    /// Store a file read by [`read_small`] under `e` (whose size and
    /// mtime become what was read).
    pub fn add_small(&mut self, e: &mut Entry, r: Small) -> Result<FileRead> {
        e.mtime = r.mtime;
        e.mtime_nsec = r.mtime_nsec;
        e.size = r.bytes.len() as u64;
        self.add_bytes(e, &r.bytes)?;
        Ok(FileRead {
            sha256: r.sha256,
            size: e.size,
            changed: e.size != r.size_at_open,
        })
    }

    /// Read `abs`, hash it, and store it under `e` (whose size, mtime are
    /// updated to what was read). `None` when the file vanished.
    pub fn add_file(&mut self, e: &mut Entry, abs: &Path) -> Result<Option<FileRead>> {
        let f = match read_small(abs)? {
            None => return Ok(None),
            Some(Opened::Small(r)) => return self.add_small(e, r).map(Some),
            Some(Opened::Large(f)) => f,
        };
        let m = f
            .metadata()
            .with_context(|| format!("cannot read {}", abs.display()))?;
        use std::os::unix::fs::MetadataExt;
        e.mtime = m.mtime();
        e.mtime_nsec = m.mtime_nsec() as u32;
        let size = m.len();
        e.size = size;
        let mut h = tar_header(e, tar::EntryType::Regular, size);
        let mut r = Hashing {
            inner: f,
            hasher: Sha256::new(),
            left: size,
            short: false,
        };
        self.tar
            .append_data(&mut h, &e.path, BufReader::with_capacity(1 << 20, &mut r))
            .with_context(|| format!("cannot archive {}", abs.display()))?;
        let grew = r.inner.metadata().map(|m| m.len() != size).unwrap_or(true);
        Ok(Some(FileRead {
            sha256: hex::encode(r.hasher.finalize()),
            size,
            changed: r.short || grew,
        }))
    }

    /// End the tar stream and the zstd frame; returns the destination and
    /// the number of bytes written to it.
    pub fn finish(self) -> Result<(W, u64)> {
        let enc = self
            .tar
            .into_inner()
            .context("cannot finish the archive")?
            .into_inner()
            .map_err(|e| e.into_error())
            .context("cannot finish the archive")?;
        let counting = enc
            .finish()
            .context("cannot finish the compressed stream")?;
        Ok((counting.inner, counting.bytes))
    }
}

/// A file read whole, with its hash and its metadata at open.
pub struct Small {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size_at_open: u64,
}

pub enum Opened {
    Small(Small),
    /// Too large to hold in memory: streamed from this handle.
    Large(File),
}

/// Open a file; read and hash it whole when it is small. `None` when it
/// vanished (a maildir message moved or expunged).
pub fn read_small(abs: &Path) -> Result<Option<Opened>> {
    use std::os::unix::fs::MetadataExt;
    let mut f = match File::open(abs) {
        Ok(f) => f,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", abs.display())),
    };
    let m = f
        .metadata()
        .with_context(|| format!("cannot read {}", abs.display()))?;
    if m.len() > WHOLE_FILE {
        return Ok(Some(Opened::Large(f)));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize + 1);
    f.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", abs.display()))?;
    Ok(Some(Opened::Small(Small {
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        size_at_open: m.len(),
    })))
}

/// SHA-256 of a byte slice, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
