//! The deployment directory: where each of its files is, and its `.env`.
//!
//! The repository checkout is also the deployment directory (`--dir`
//! points elsewhere): `.env` and `chatmail.ini` at the top, the
//! administrator's `custom/`, the persistent `data/` with the tool's own
//! state files, and `docker/` with the appliance's compose file and the
//! override the tool generates. Every module asks this one type for those
//! paths instead of joining names itself.
//!
//! `.env` is read in one way everywhere: a missing file is no variables,
//! a file that cannot be read or parsed is an error naming the file and
//! line. A command reads it once into [`Settings`] (typed: the mail
//! domain, the TLS mode, the relay source, ...) and passes them on; `setup`
//! reads them after writing `.env`. No other module reads a variable of
//! `.env` by its name. The relay's own facts ([`relay`]: its units, ports
//! and TLS modes) live here too.

use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod relay;
pub mod settings;

pub use settings::Settings;

/// The variables of `.env`, by name.
pub type Env = BTreeMap<String, String>;

/// Written by `ini2env` and the administrator, mode 0600.
pub const ENV_FILE: &str = ".env";
/// The relay's own configuration, the source of `[params]`.
pub const INI_FILE: &str = "chatmail.ini";
/// The administrator's files, mounted into the container.
pub const CUSTOM_DIR: &str = "custom";
/// Persistent state, mounted into the container.
pub const DATA_DIR: &str = "data";
/// The appliance's compose file.
pub const COMPOSE_FILE: &str = "docker/docker-compose.yaml";
/// The override the tool generates from `custom/` and owns.
pub const GENERATED_FILE: &str = "docker/compose.generated.yaml";
/// The administrator's own overrides, included last so they win. Never written.
pub const USER_OVERRIDES: &[&str] = &["docker-compose.override.yaml", "compose.override.yaml"];
/// The container's persistent state: each directory of `data/` and where
/// docker/docker-compose.yaml mounts it in the container (the table is
/// checked against that file by a test). A backup archives what the
/// container sees at these paths under these names; a restore puts it
/// back in this layout.
pub const STATE_MOUNTS: &[(&str, &str)] = &[
    ("data/chatmail", "/home"),
    ("data/chatmail-acme", "/var/lib/acme"),
    ("data/chatmail-dkimkeys", "/etc/dkimkeys"),
    ("data/chatmail-postfix", "/var/spool/postfix"),
    ("data/chatmail-state", "/var/lib/chatmail-docker"),
];
/// Created by `migrate --mount-vmail`: mount the host's /home/vmail.
pub const VMAIL_MARKER: &str = "data/.mount-vmail";
/// Mailboxes and the relay's user data (`/home` in the container).
pub const MAIL_DIR: &str = "data/chatmail";
/// The Postfix queue (`/var/spool/postfix` in the container).
pub const QUEUE_DIR: &str = "data/chatmail-postfix";
/// The ACME client's state in the container's default layout.
pub const ACME_DIR: &str = "data/chatmail-acme";
/// The appliance's own state (`/var/lib/chatmail-docker` in the container).
pub const STATE_DIR: &str = "data/chatmail-state";
/// The self-signed certificate and key, inside it.
pub const SELF_SIGNED_DIR: &str = "data/chatmail-state/tls";
/// The certificate last reloaded into the services.
pub const CERT_WATCH_STATE: &str = "data/.cert-watch-state.json";
/// Held (`flock`) by the cert-watch run that is reloading.
pub const CERT_WATCH_LOCK: &str = "data/.cert-watch.lock";
/// Pid file of a running certificate watcher.
pub const CERT_WATCH_PID: &str = "data/.cert-watch.pid";

/// One deployment directory.
#[derive(Clone, Debug)]
pub struct Deployment {
    dir: PathBuf,
}

impl Deployment {
    /// `dir` must be absolute (the context makes it so).
    pub fn new(dir: PathBuf) -> Deployment {
        Deployment { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn env_file(&self) -> PathBuf {
        self.path(ENV_FILE)
    }

    pub fn ini(&self) -> PathBuf {
        self.path(INI_FILE)
    }

    pub fn custom(&self) -> PathBuf {
        self.path(CUSTOM_DIR)
    }

    pub fn data(&self) -> PathBuf {
        self.path(DATA_DIR)
    }

    pub fn compose_file(&self) -> PathBuf {
        self.path(COMPOSE_FILE)
    }

    pub fn generated_file(&self) -> PathBuf {
        self.path(GENERATED_FILE)
    }

    /// The administrator's override files that exist, in the order Compose reads them.
    pub fn user_overrides(&self) -> Vec<PathBuf> {
        USER_OVERRIDES
            .iter()
            .map(|name| self.path(name))
            .filter(|p| p.exists())
            .collect()
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.path(MAIL_DIR)
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.path(QUEUE_DIR)
    }

    pub fn vmail_marker(&self) -> PathBuf {
        self.path(VMAIL_MARKER)
    }

    pub fn self_signed_dir(&self) -> PathBuf {
        self.path(SELF_SIGNED_DIR)
    }

    pub fn acme_dir(&self) -> PathBuf {
        self.path(ACME_DIR)
    }

    pub fn cert_watch_state(&self) -> PathBuf {
        self.path(CERT_WATCH_STATE)
    }

    pub fn cert_watch_lock(&self) -> PathBuf {
        self.path(CERT_WATCH_LOCK)
    }

    pub fn cert_watch_pid(&self) -> PathBuf {
        self.path(CERT_WATCH_PID)
    }

    /// The variables of `.env`; `None` when there is no `.env`. A file
    /// that cannot be read or parsed is an error (exit 2 for a parse
    /// error) naming the file and line.
    pub fn load_env(&self) -> Result<Option<Env>> {
        load_env_file(&self.env_file())
    }
}

/// Read a `.env` file (any path: `ini2env --env`) with the limits of
/// [`crate::host::read_input`]; `None` when it does not exist.
pub fn load_env_file(path: &Path) -> Result<Option<Env>> {
    match crate::host::read_input_opt(path, crate::host::MAX_CONFIG_BYTES)
        .map_err(crate::host::InputError::into_error)?
    {
        None => Ok(None),
        Some(bytes) => crate::formats::dotenv::load(&bytes, path).map(Some),
    }
}

/// Read a chatmail.ini as text (any path: `--ini`) with the limits of
/// [`crate::host::read_input`]: a FIFO, a device or a huge file is refused,
/// naming the file. Parse it with [`crate::formats::ini::parse_file`].
pub fn read_ini(path: &Path) -> Result<String> {
    let bytes = crate::host::read_input(path, crate::host::MAX_CONFIG_BYTES)
        .map_err(crate::host::InputError::into_error)?;
    crate::formats::ini::text(bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_mounts_are_the_compose_files() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMPOSE_FILE);
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let vols = doc["services"]["chatmail"]["volumes"]
            .as_sequence()
            .unwrap();
        let mut binds: Vec<(String, String)> = vols
            .iter()
            .filter_map(|v| {
                let src = v.get("source")?.as_str()?;
                let src = src.strip_prefix("./")?;
                let target = v.get("target")?.as_str()?.to_string();
                src.starts_with("data/").then(|| (src.to_string(), target))
            })
            .collect();
        binds.sort();
        let mut table: Vec<(String, String)> = STATE_MOUNTS
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        table.sort();
        assert_eq!(binds, table);
    }

    #[test]
    fn env_is_none_when_missing_and_an_error_when_broken() {
        let d = tempfile::tempdir().unwrap();
        let dep = Deployment::new(d.path().to_path_buf());
        assert!(dep.load_env().unwrap().is_none());
        std::fs::write(dep.env_file(), "A=1\nB='open\n").unwrap();
        let err = dep.load_env().unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains(".env:2:"), "{err}");
        std::fs::write(dep.env_file(), "A=1\n").unwrap();
        assert_eq!(dep.load_env().unwrap().unwrap()["A"], "1");
    }
}
