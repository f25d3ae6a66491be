//! Writing to disk while more is written: a thread that flushes a file or
//! a file system at a fixed period until it is dropped.
//!
//! Both `backup` and `restore` flush before they name what they wrote (an
//! archive, a restored tree): a backup that may vanish in a crash is not
//! one. Left to the kernel, dirty pages wait up to 30 s for writeback, so
//! that final flush would write everything at the end; flushing as the
//! data arrives overlaps the disk's work with reading and compressing, and
//! the final flush has only the last period's data left.

use anyhow::{Context as _, Result};
use std::fs::File;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a flusher flushes.
pub enum Target {
    /// One file's data (`fdatasync`): an archive being written.
    Data(File),
    /// The whole file system holding this open directory (`syncfs`): a
    /// tree being restored.
    FileSystem(File),
}

/// The flushing thread; it stops (after at most one more flush) when
/// dropped.
pub struct Flusher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Flush `target` every `period`, in a thread named `name`.
    pub fn start(name: &str, target: Target, period: Duration) -> Result<Flusher> {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                    // Only ahead of time: the caller's own final flush
                    // reports errors.
                    let _ = match &target {
                        Target::Data(f) => rustix::fs::fdatasync(f),
                        Target::FileSystem(d) => rustix::fs::syncfs(d),
                    };
                }
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Make a directory's entries durable (a rename or a new file in it):
/// `fsync` of the directory. Best effort: a file system that cannot sync a
/// directory has nothing to lose there.
pub fn sync_dir(dir: &std::path::Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Flush everything written to the file system holding `path` (one
/// `syncfs` instead of an `fsync` per file).
pub fn sync_fs(path: &std::path::Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    rustix::fs::syncfs(&f)
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot flush the file system of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_go_on_while_it_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut f = File::create(&path).unwrap();
        let fl = Flusher::start(
            "test-flush",
            Target::Data(f.try_clone().unwrap()),
            Duration::from_millis(1),
        )
        .unwrap();
        for _ in 0..50 {
            f.write_all(&[7u8; 65536]).unwrap();
        }
        drop(fl);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 50 * 65536);
    }

    #[test]
    fn dropping_does_not_wait_for_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        let fl = Flusher::start(
            "test-flush",
            Target::FileSystem(d),
            Duration::from_secs(3600),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(fl);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the flusher stopped when dropped");
    }
}
