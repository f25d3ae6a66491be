//! The migration's memory: `data/.migrate-state.json`.
//!
//! A migration may be interrupted anywhere (Ctrl-C, `kill -9`, a reboot), and
//! `--rollback` must know which units it stopped even after such an
//! interruption. Everything the tool needs to resume or undo is therefore
//! written here *before* the step it describes is carried out, and always
//! atomically (temp file + rename), so the file is either the old or the new
//! version, never half.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::show::Shown as _;
use crate::host;

/// Where the migration stands (in the order a migration passes them;
/// `RolledBack` starts over with a pre-sync).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing done yet.
    #[default]
    New,
    /// Pre-sync running or done (services still up).
    Presync,
    /// Units are being, or have been, stopped: only the final sync is left.
    Stopped,
    /// Final sync and verification succeeded.
    Done,
    /// `--rollback` re-enabled and restarted the units.
    RolledBack,
}

/// A unit the migration stopped and/or disabled, with what it was before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedUnit {
    /// Full unit name, e.g. `postfix.service`.
    pub unit: String,
    /// It was running: rollback starts it again.
    pub was_active: bool,
    /// It was enabled: rollback enables it again.
    pub was_enabled: bool,
}

/// The owner of a source tree's top directory, recorded so the container's
/// init can fix ownership when the host's uids differ from the image's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOwner {
    pub source: String,
    pub uid: u32,
    pub gid: u32,
    /// User name from the host's /etc/passwd, when known.
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    /// Destination directories (relative to the deployment dir) this tool
    /// created or adopted empty: the only places where it ever deletes.
    #[serde(default)]
    pub created: Vec<String>,
    /// Destinations whose pre-sync completed at least once.
    #[serde(default)]
    pub presynced: Vec<String>,
    /// Units stopped/disabled, recorded before `systemctl` is called.
    #[serde(default)]
    pub stopped: Vec<StoppedUnit>,
    #[serde(default)]
    pub source_owners: Vec<SourceOwner>,
    /// Seconds between stopping the units and the end of the final sync.
    #[serde(default)]
    pub downtime_secs: Option<f64>,
}

/// The state file inside a deployment directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("data").join(".migrate-state.json")
}

impl State {
    /// Load the state; a missing file is a fresh migration.
    pub fn load(file: &Path) -> Result<State> {
        match crate::host::read_input(file, crate::host::MAX_CONFIG_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a valid migration state file; move it away to start over",
                    file.shown()
                )
            }),
            Err(e) if e.is_missing() => Ok(State::default()),
            Err(e) => Err(e.into_error()),
        }
    }

    /// Write the state atomically (mode 0600: it names units and owners only,
    /// but nobody else needs to read it). An unchanged state is not
    /// rewritten: each write is an fsync, and a no-change re-run should cost
    /// no more than reading.
    pub fn save(&self, file: &Path) -> Result<()> {
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.shown()))?;
        }
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        host::write_if_changed(file, &bytes, 0o600).map(|_| ())
    }

    pub fn owns(&self, dest: &str) -> bool {
        self.created.iter().any(|c| c == dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let f = path(d.path());
        assert_eq!(State::load(&f).unwrap(), State::default());
        let s = State {
            phase: Phase::Stopped,
            created: vec!["data/chatmail".into()],
            stopped: vec![StoppedUnit {
                unit: "postfix.service".into(),
                was_active: true,
                was_enabled: true,
            }],
            ..State::default()
        };
        s.save(&f).unwrap();
        assert_eq!(State::load(&f).unwrap(), s);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.json");
        std::fs::write(&f, "{nope").unwrap();
        let e = State::load(&f).unwrap_err().to_string();
        assert!(e.contains("s.json"), "{e}");
    }
}
