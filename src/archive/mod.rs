//! The backup archive: one stream that `zstd -d | tar -x` also reads. Its
//! first entry is the header (format, tool version, full or incremental,
//! the archive it builds on, the deployment it was made for), its last the
//! manifest (every path with its metadata and SHA-256, or what changed
//! since the base). [`write`] makes one, [`read`] reads and checks one as
//! untrusted input, [`chain`] walks and folds a chain, [`base`] is the
//! compact form of a folded manifest, [`catalog`] tells which archives of
//! a directory are this deployment's, [`crypt`] encrypts with age.
//!
//! `backup` and `restore` sit on this module; neither calls the other.

use anyhow::{Context as _, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod base;
pub mod catalog;
pub mod chain;
pub mod crypt;
pub mod manifest;
pub mod read;
pub mod write;

/// Archive names in a backup directory: `chatmail-backup-<time>-full.tar.zst`.
pub const PREFIX: &str = "chatmail-backup-";
pub const SUFFIX: &str = ".tar.zst";
/// The largest manifest read into memory (a sidecar, a local copy, the
/// archive's last entry): about a million files.
pub const MAX_MANIFEST: u64 = 512 << 20;
/// The largest header entry read (a header is a few hundred bytes).
pub const MAX_HEADER: u64 = 64 << 10;

/// The top-level paths a backup holds, when they exist.
pub fn top_level() -> Vec<&'static str> {
    use crate::deployment;
    let mut v = vec![
        deployment::DATA_DIR,
        deployment::INI_FILE,
        deployment::ENV_FILE,
        deployment::CUSTOM_DIR,
    ];
    v.extend(deployment::USER_OVERRIDES);
    v
}

/// The files of a backup directory named like archives, in name order.
pub fn archives_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The largest write to a file (the archive; restored files). The kernel
/// gives a large write large page-cache folios; on a virtual machine whose
/// free memory goes back to its host, each of those is fresh memory the
/// host must provide at first touch: writing 500 MiB in 2 MiB writes took
/// 1.5 s of CPU instead of 0.2 s (perf, `benches/backup.sh`'s archive).
/// Small folios come from memory the kernel just freed.
pub const WRITE_CHUNK: usize = 16 << 10;

/// `w.write_all(data)` in writes of at most [`WRITE_CHUNK`].
pub fn write_chunked(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    data.chunks(WRITE_CHUNK).try_for_each(|c| w.write_all(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_in_small_pieces() {
        /// Records the size of each write it is given.
        struct Sizes(Vec<usize>, Vec<u8>);
        impl Write for Sizes {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.len());
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let data: Vec<u8> = (0..3 * WRITE_CHUNK + 5).map(|i| i as u8).collect();
        let mut w = Sizes(vec![], vec![]);
        write_chunked(&mut w, &data).unwrap();
        assert_eq!(w.0, [WRITE_CHUNK, WRITE_CHUNK, WRITE_CHUNK, 5]);
        assert_eq!(w.1, data);
    }
}
