//! What every command receives: the deployment directory and its
//! settings, the host seam, the output, and whether this is a dry run.

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::deployment::{Deployment, Settings};
use crate::host::{Cmd, Host};
use crate::shell::Shell;

/// Everything a command needs to know about where and how it runs.
#[derive(Clone, Debug)]
pub struct Context {
    /// The deployment directory (absolute) and its files.
    pub deployment: Deployment,
    pub host: Host,
    pub shell: Shell,
    pub dry_run: bool,
    /// `.env`, read at the first [`Context::settings`] and kept (shared by
    /// the context's clones) until `.env` is written again.
    settings: Arc<Mutex<Option<Arc<Settings>>>>,
}

impl Context {
    /// A quiet context for unit tests: the deployment `dir`, the host's
    /// paths under `root`.
    #[cfg(test)]
    pub fn quiet(dir: impl AsRef<Path>, root: impl Into<PathBuf>) -> Context {
        let shell = Shell::new(
            crate::shell::Verbosity::Quiet,
            crate::shell::ColorChoice::Never,
        );
        Context::new(dir, Host::new(root), shell, false).expect("a deployment directory")
    }

    pub fn new(dir: impl AsRef<Path>, host: Host, shell: Shell, dry_run: bool) -> Result<Context> {
        let dir = dir.as_ref();
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()?.join(dir)
        };
        // Normalise `./x/.` without requiring the directory to exist.
        let dir: PathBuf = dir.components().collect();
        Ok(Context {
            deployment: Deployment::new(dir),
            host,
            shell,
            dry_run,
            settings: Default::default(),
        })
    }

    /// The deployment's settings: `.env` read once (a missing file is no
    /// variables; one that cannot be read or parsed is an error naming the
    /// file and line, every time it is asked for).
    pub fn settings(&self) -> Result<Arc<Settings>> {
        let mut cached = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cached.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(Settings::load(&self.deployment)?);
        *cached = Some(s.clone());
        Ok(s)
    }

    /// The same context with another host seam (a time limit on commands).
    pub fn with_host(&self, host: Host) -> Context {
        Context {
            host,
            ..self.clone()
        }
    }

    /// `.env` was written: the next [`Context::settings`] reads it again.
    pub fn env_written(&self) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Where a dry run and a real run part for a command: in a dry run,
    /// show it (`would run: CMD NOTE`) and return `None`; otherwise run it
    /// with `run`.
    pub fn run_or_show<T>(
        &self,
        cmd: &Cmd,
        note: &str,
        run: impl FnOnce(&Cmd) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.dry_run {
            self.shell
                .out(format!("would run: {}{note}", cmd.display()));
            return Ok(None);
        }
        run(cmd).map(Some)
    }

    /// The last line of a dry run.
    pub fn dry_run_done(&self) {
        self.shell.out("dry run: nothing was changed");
    }

    /// A path inside the deployment directory ([`Deployment`] names its
    /// files; this is for the others).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.deployment.path(rel)
    }
}
