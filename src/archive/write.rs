//! The archive stream: tar entries cut into pieces of about 2 MiB, each
//! compressed by a pool of threads into its own zstd frame (checksum on)
//! and written in order. Concatenated frames are one zstd stream, so the
//! archive still reads with `zstd -d | tar -x`.
//!
//! The thread that walks the deployment reads every file straight into the
//! piece being filled (no copy in between); the pool hashes the files of a
//! piece (SHA-256, for the manifest) while it compresses it. Hashing and
//! compression thus share every core, as `tar | zstd -T0` shares them
//! between tar and zstd's workers.

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::manifest::{Entry, EntryKind};

/// A piece is sent to the pool before it would hold more than this. (On
/// incompressible data, which encrypted mail is, zstd 1.5.7 at level 3
/// compresses 2 MiB frames a third faster than 4 MiB ones.)
const PIECE: usize = 2 << 20;
/// The archive's own files are compressed at this level.
const META_LEVEL: i32 = 1;
/// Files up to this size are read into a piece whole (and hashed by the
/// pool); larger ones are streamed across pieces and hashed on the way.
const WHOLE_FILE: u64 = 1 << 20;

/// A file's content as it was read: its size, and whether it changed size
/// while being read (the stored bytes then still match the hash). The hash
/// arrives later, from [`Writer::hashes`].
pub struct FileRead {
    pub size: u64,
    pub changed: bool,
}

/// One stored file of a piece, to hash: the caller's id and its bytes.
struct ToHash {
    id: usize,
    start: usize,
    len: usize,
}

struct Job {
    seq: u64,
    level: i32,
    data: Vec<u8>,
    hash: Vec<ToHash>,
}

struct Compressed {
    seq: u64,
    frame: io::Result<Vec<u8>>,
    data: Vec<u8>,
    hashes: Vec<(usize, [u8; 32])>,
}

/// What the writing thread hands back for each piece, in order: the
/// piece's buffer to fill again, and the hashes of its files.
type Returned = io::Result<(Vec<u8>, Vec<(usize, [u8; 32])>)>;

pub struct Writer<W: Write + Send + 'static> {
    tar: tar::Builder<Vec<u8>>,
    hash: Vec<ToHash>,
    seq: u64,
    /// The zstd level of the piece being filled.
    level: i32,
    /// The level asked for, for the deployment's files.
    data_level: i32,
    /// At most this many pieces are on their way to the destination.
    in_flight: u64,
    /// Pieces returned so far (every piece sent comes back once).
    returned: u64,
    pool: crate::host::pool::Pool<Job>,
    /// Frames compressed outside the pool go straight to the writing
    /// thread (dropped before it is joined).
    direct: Option<Sender<Compressed>>,
    back: Receiver<Returned>,
    free: Vec<Vec<u8>>,
    hashes: Vec<(usize, [u8; 32])>,
    writer: Option<JoinHandle<io::Result<(W, u64)>>>,
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

fn new_piece() -> Vec<u8> {
    Vec::with_capacity(PIECE + (64 << 10))
}

/// Pad a tar entry's data to the next 512-byte block.
fn pad(v: &mut Vec<u8>, len: u64) {
    let rest = (512 - len % 512) % 512;
    v.resize(v.len() + rest as usize, 0);
}

/// One piece as one zstd frame, its size declared up front.
fn compress_piece(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    // The streaming encoder with the size pledged, not the one-shot API:
    // on incompressible input zstd 1.5.7's one-shot path is about half as
    // fast at level 3.
    let mut z = zstd::stream::write::Encoder::new(&mut out, level)?;
    z.include_checksum(true)?;
    z.set_pledged_src_size(Some(data.len() as u64))?;
    z.write_all(data)?;
    z.finish()?;
    Ok(out)
}

/// A piece's work in the pool: hash its files, compress it.
fn compress_job(job: Job) -> Compressed {
    let hashes = job
        .hash
        .iter()
        .map(|h| {
            (
                h.id,
                Sha256::digest(&job.data[h.start..h.start + h.len]).into(),
            )
        })
        .collect();
    let frame = compress_piece(&job.data, job.level);
    Compressed {
        seq: job.seq,
        frame,
        data: job.data,
        hashes,
    }
}

/// Writes the frames in order, hands each piece's buffer and hashes back.
fn write_in_order<W: Write>(
    mut out: W,
    done: Receiver<Compressed>,
    back: Sender<Returned>,
) -> io::Result<(W, u64)> {
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Compressed> = BTreeMap::new();
    let mut bytes = 0u64;
    let mut failed: Option<io::ErrorKind> = None;
    for c in done {
        waiting.insert(c.seq, c);
        while let Some(c) = waiting.remove(&next) {
            next += 1;
            if failed.is_some() {
                continue;
            }
            let res = c.frame.and_then(|f| {
                out.write_all(&f)?;
                bytes += f.len() as u64;
                Ok(())
            });
            match res {
                Ok(()) => {
                    let _ = back.send(Ok((c.data, c.hashes)));
                }
                Err(e) => {
                    failed = Some(e.kind());
                    let _ = back.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
    if let Some(kind) = failed {
        return Err(io::Error::new(kind, "the archive could not be written"));
    }
    out.flush()?;
    Ok((out, bytes))
}

impl<W: Write + Send + 'static> Writer<W> {
    /// `threads` compressing (and hashing) threads, at least one.
    pub fn new(out: W, level: i32, threads: u32) -> Result<Writer<W>> {
        let threads = threads.max(1) as usize;
        let (done_tx, done_rx) = mpsc::channel::<Compressed>();
        let (back_tx, back_rx) = mpsc::channel::<Returned>();
        let direct = Some(done_tx.clone());
        let pool = crate::host::pool::start("zstd", threads, threads, done_tx, compress_job)?;
        let writer = std::thread::Builder::new()
            .name("archive-out".into())
            .spawn(move || write_in_order(out, done_rx, back_tx))
            .context("cannot start the archive's writing thread")?;
        let mut tar = tar::Builder::new(new_piece());
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(Writer {
            tar,
            hash: Vec::new(),
            seq: 0,
            level,
            data_level: level,
            in_flight: 2 * threads as u64 + 2,
            returned: 0,
            pool,
            direct,
            back: back_rx,
            free: Vec::new(),
            hashes: Vec::new(),
            writer: Some(writer),
        })
    }

    fn take_back(&mut self, r: Returned) -> Result<()> {
        self.returned += 1;
        let (mut buf, hashes) = r.context("cannot write the archive")?;
        self.hashes.extend(hashes);
        if buf.capacity() >= PIECE {
            buf.clear();
            self.free.push(buf);
        }
        Ok(())
    }

    /// Send the piece being filled to the pool.
    fn send_piece(&mut self) -> Result<()> {
        if self.tar.get_mut().is_empty() {
            return Ok(());
        }
        while let Ok(r) = self.back.try_recv() {
            self.take_back(r)?;
        }
        // Bounded memory: wait for the destination when it is slower
        // than reading and compressing (a slow disk, `| ssh`).
        while self.seq - self.returned >= self.in_flight {
            match self.back.recv() {
                Ok(r) => self.take_back(r)?,
                Err(_) => break,
            }
        }
        let fresh = self.free.pop().unwrap_or_else(new_piece);
        let data = std::mem::replace(self.tar.get_mut(), fresh);
        let job = Job {
            seq: self.seq,
            level: self.level,
            data,
            hash: std::mem::take(&mut self.hash),
        };
        self.seq += 1;
        if !self.pool.send(job) {
            // The pool is gone: the writing thread has the reason.
            while self.returned < self.seq {
                match self.back.recv() {
                    Ok(r) => self.take_back(r)?,
                    Err(_) => break,
                }
            }
            anyhow::bail!("cannot write the archive: the compressing threads stopped");
        }
        Ok(())
    }

    fn piece_full(&mut self) -> Result<()> {
        if self.tar.get_mut().len() >= PIECE {
            self.send_piece()?;
        }
        Ok(())
    }

    /// Make room for `len` more bytes in the piece.
    fn room_for(&mut self, len: usize) -> Result<()> {
        if self.tar.get_mut().len() + len > PIECE {
            self.send_piece()?;
        }
        Ok(())
    }

    /// One of the archive's own files (header, manifest), in frames of its
    /// own at zstd's fastest level: the manifest is JSON, which level 1
    /// compresses twice as fast as level 3, and as small.
    pub fn add_meta(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let parts: Vec<&[u8]> = bytes.chunks(PIECE).collect();
        self.add_meta_parts(path, &parts)
    }

    /// [`Writer::add_meta`] for a file given in parts (their concatenation
    /// is its content): each part is compressed where it lies, in parallel,
    /// into a frame of its own; nothing is copied into pieces.
    pub fn add_meta_parts(&mut self, path: &str, parts: &[&[u8]]) -> Result<()> {
        use rayon::prelude::*;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.send_piece()?;
        self.level = META_LEVEL;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(len as u64);
        h.set_mode(0o600);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        self.tar
            .append_data(&mut h, path, io::empty())
            .context("cannot write the archive")?;
        self.send_piece()?;
        let frames: Vec<io::Result<Vec<u8>>> = parts
            .par_iter()
            .filter(|p| !p.is_empty())
            .map(|p| compress_piece(p, META_LEVEL))
            .collect();
        let direct = self
            .direct
            .as_ref()
            .context("cannot write the archive: it is finished")?;
        for frame in frames {
            let sent = direct.send(Compressed {
                seq: self.seq,
                frame,
                data: Vec::new(),
                hashes: Vec::new(),
            });
            if sent.is_err() {
                anyhow::bail!("cannot write the archive: the writing thread stopped");
            }
            self.seq += 1;
        }
        pad(self.tar.get_mut(), len as u64);
        self.send_piece()?;
        self.level = self.data_level;
        Ok(())
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
        res.context("cannot write the archive")?;
        self.piece_full()
    }

    /// The tar header of a regular file of `size` bytes; its data follows.
    fn file_header(&mut self, e: &Entry, size: u64) -> io::Result<()> {
        let mut h = tar_header(e, tar::EntryType::Regular, size);
        // The header (and a long name's extra entry) only: the data is
        // appended by the caller, then padded.
        self.tar.append_data(&mut h, &e.path, io::empty())
    }

    /// A regular file already in memory, stored under `e`; its hash is
    /// reported under `id`.
    pub fn add_bytes(&mut self, e: &Entry, bytes: &[u8], id: usize) -> Result<()> {
        self.room_for(bytes.len() + 2048)?;
        self.file_header(e, bytes.len() as u64)
            .context("cannot write the archive")?;
        let v = self.tar.get_mut();
        let start = v.len();
        v.extend_from_slice(bytes);
        pad(v, bytes.len() as u64);
        self.hash.push(ToHash {
            id,
            start,
            len: bytes.len(),
        });
        self.piece_full()
    }

    /// Read the open regular file `f` (`st`: its `fstat`) and store it
    /// under `e` (whose size and mtime become those read); its hash is
    /// reported under `id`.
    pub fn add_file(
        &mut self,
        e: &mut Entry,
        f: &File,
        st: &rustix::fs::Stat,
        id: usize,
    ) -> Result<FileRead> {
        e.mtime = st.st_mtime;
        e.mtime_nsec = st.st_mtime_nsec as u32;
        let size = st.st_size as u64;
        e.size = size;
        let path = e.path.clone();
        let read_err = || format!("cannot archive {path}");
        if size > WHOLE_FILE {
            return self.stream_file(e, f, size, id).with_context(read_err);
        }
        self.room_for(size as usize + 2048)?;
        self.file_header(e, size)
            .context("cannot write the archive")?;
        let v = self.tar.get_mut();
        let start = v.len();
        let want = start + size as usize;
        let mut changed = false;
        // Straight into the piece's spare room: one read for a small file.
        while v.len() < want {
            let n = rustix::io::read(f, rustix::buffer::spare_capacity(v))
                .map_err(io::Error::from)
                .with_context(read_err)?;
            if n == 0 {
                // The file shrank while it was read: pad, so the archive
                // stays well-formed, and hash what is stored.
                v.resize(want, 0);
                changed = true;
            }
        }
        if v.len() > want {
            // It grew since it was opened: the size at open is stored.
            v.truncate(want);
            changed = true;
        }
        pad(v, size);
        self.hash.push(ToHash {
            id,
            start,
            len: size as usize,
        });
        self.piece_full()?;
        Ok(FileRead { size, changed })
    }

    /// A large file, across pieces, hashed here.
    fn stream_file(&mut self, e: &Entry, f: &File, size: u64, id: usize) -> Result<FileRead> {
        use std::io::Read;
        self.file_header(e, size)
            .context("cannot write the archive")?;
        let mut hasher = Sha256::new();
        let mut left = size;
        let mut short = false;
        let mut r = f;
        while left > 0 {
            self.room_for(1 << 16)?;
            let v = self.tar.get_mut();
            let start = v.len();
            let want = (PIECE - start).min(left as usize);
            v.resize(start + want, 0);
            let n = if short { 0 } else { r.read(&mut v[start..])? };
            let n = if n == 0 {
                // Shrank while read: zeros keep the archive well-formed.
                short = true;
                want
            } else {
                n
            };
            v.truncate(start + n);
            hasher.update(&v[start..]);
            left -= n as u64;
            self.piece_full()?;
        }
        pad(self.tar.get_mut(), size);
        let grew = f.metadata().map(|m| m.len() != size).unwrap_or(true);
        self.hashes.push((id, hasher.finalize().into()));
        self.piece_full()?;
        Ok(FileRead {
            size,
            changed: short || grew,
        })
    }

    /// Every hash of the files stored so far, by id, hex (waits for the
    /// pool to get through them).
    pub fn hashes(&mut self) -> Result<Vec<(usize, String)>> {
        self.send_piece()?;
        while self.returned < self.seq {
            let r = self
                .back
                .recv()
                .context("cannot write the archive: the writing thread stopped")?;
            self.take_back(r)?;
        }
        Ok(std::mem::take(&mut self.hashes)
            .into_iter()
            .map(|(id, h)| (id, hex::encode(h)))
            .collect())
    }

    /// End the tar stream; returns the destination and the number of bytes
    /// written to it.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.tar.finish().context("cannot finish the archive")?;
        self.send_piece()?;
        self.pool.close();
        self.direct = None;
        let writer = self.writer.take().expect("the writing thread runs");
        match writer.join() {
            Ok(r) => r.context("cannot write the archive"),
            Err(_) => anyhow::bail!("cannot write the archive: the writing thread failed"),
        }
    }
}

impl<W: Write + Send + 'static> Drop for Writer<W> {
    fn drop(&mut self) {
        // Stop the pool; what it still holds is written (into an archive
        // that is being discarded) and the threads end.
        self.pool.close();
        self.direct = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// SHA-256 of a byte slice, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::sample_entry as entry;
    use std::fs;
    use std::io::Read;

    /// Bytes that do not compress (as encrypted mail).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn files_across_pieces_come_back_whole_with_their_hashes() {
        let d = tempfile::tempdir().unwrap();
        // Small files filling several pieces, one streamed across pieces,
        // one whose name needs tar's long-name entry, an empty one.
        let mut files: Vec<(String, Vec<u8>)> = (0..120)
            .map(|i| (format!("data/m{i}"), noise(30_000 + i * 7, i as u64)))
            .collect();
        files.push(("data/big".into(), noise(5 * PIECE + 123, 99)));
        files.push((format!("data/{}", "n".repeat(150)), noise(700, 7)));
        files.push(("data/empty".into(), Vec::new()));
        for (p, c) in &files {
            fs::create_dir_all(d.path().join(p).parent().unwrap()).unwrap();
            fs::write(d.path().join(p), c).unwrap();
        }
        let mut w = Writer::new(Vec::new(), 3, 2).unwrap();
        w.add_meta("meta/header.json", b"{}").unwrap();
        let mut expected = Vec::new();
        for (id, (p, c)) in files.iter().enumerate() {
            let mut e = entry(p);
            let f = File::open(d.path().join(p)).unwrap();
            let st = rustix::fs::fstat(&f).unwrap();
            let read = w.add_file(&mut e, &f, &st, id).unwrap();
            assert_eq!(read.size, c.len() as u64);
            assert!(!read.changed);
            expected.push((id, sha256_hex(c)));
        }
        let queued = b"a queue file already read".to_vec();
        w.add_bytes(&entry("data/q"), &queued, files.len()).unwrap();
        expected.push((files.len(), sha256_hex(&queued)));
        let mut hashes = w.hashes().unwrap();
        hashes.sort();
        assert_eq!(hashes, expected);
        w.add_meta("meta/manifest.json", &noise(3 * PIECE, 5))
            .unwrap();
        let (out, bytes) = w.finish().unwrap();
        assert_eq!(bytes, out.len() as u64);

        // Many frames, each with its content size and checksum ...
        let mut rest = &out[..];
        let mut frames = 0;
        while !rest.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            rest = &rest[n..];
            frames += 1;
        }
        assert!(frames > 8, "{frames} frames");
        // ... that read back as one tar stream.
        let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(&out[..]).unwrap());
        let mut got = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut c = Vec::new();
            e.read_to_end(&mut c).unwrap();
            got.push((path, c));
        }
        assert_eq!(got.len(), files.len() + 3);
        assert_eq!(got[0].0, "meta/header.json");
        for ((p, c), (gp, gc)) in files.iter().zip(&got[1..]) {
            assert_eq!(p, gp);
            assert!(c == gc, "{p} differs");
        }
        assert_eq!(got[files.len() + 1].1, queued);
        assert_eq!(got[files.len() + 2].0, "meta/manifest.json");
    }

    #[test]
    fn a_file_given_in_parts_reads_back_as_their_concatenation() {
        let mut w = Writer::new(Vec::new(), 3, 2).unwrap();
        w.add_bytes(&entry("data/a"), b"first", 0).unwrap();
        let big = noise(PIECE + 999, 4);
        let parts: Vec<&[u8]> = vec![b"{\"entries\":[", b"", &big, b"1,2", b"]}"];
        w.add_meta_parts("meta/manifest.json", &parts).unwrap();
        let (out, _) = w.finish().unwrap();
        let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(&out[..]).unwrap());
        let mut got = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut c = Vec::new();
            e.read_to_end(&mut c).unwrap();
            got.push((e.path().unwrap().to_string_lossy().into_owned(), c));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("data/a".to_string(), b"first".to_vec()));
        assert_eq!(got[1].0, "meta/manifest.json");
        assert!(got[1].1 == parts.concat(), "the parts differ");
    }

    /// A destination slower than compression: the writer waits for it
    /// instead of holding the whole archive in memory.
    #[test]
    fn a_slow_destination_holds_back_reading() {
        struct Slow(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Write for Slow {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                std::thread::sleep(std::time::Duration::from_millis(20));
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut w = Writer::new(Slow(written.clone()), 1, 2).unwrap();
        let piece = noise(PIECE, 3);
        for i in 0..40 {
            w.add_bytes(&entry(&format!("f{i}")), &piece, i).unwrap();
            // Never more pieces on their way than the bound allows.
            let out = written.load(std::sync::atomic::Ordering::SeqCst) as u64;
            assert!(w.seq - out <= w.in_flight + 2, "{} sent, {out} out", w.seq);
        }
        w.finish().unwrap();
    }
}
