//! The one seam between the tool and the host.
//!
//! Every host path goes through [`Host::path`], which places absolute paths
//! under the host root (`/` for real use, a temp dir in tests, `--root`), and
//! every external program is started through [`Host::cmd`], which logs the
//! command with `-v`. Tests record calls by putting stand-in programs first on
//! `PATH` (the binary's, or [`Host::with_search_path`] for the library
//! called in-process); there is no second code path for them.

use anyhow::{Context as _, Result};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::shell::Shell;

/// The host as the tool sees it.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
    /// Where programs are looked for instead of the process's `PATH`.
    search_path: Option<OsString>,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host {
            root: root.into(),
            search_path: None,
        }
    }

    /// Look programs up in `path` instead of the process's `PATH`, and
    /// give them that `PATH` (tests put stand-ins first without changing
    /// the test process's environment).
    pub fn with_search_path(mut self, path: impl Into<OsString>) -> Host {
        self.search_path = Some(path.into());
        self
    }

    /// Find a program the way [`Host::cmd`] will.
    pub fn which(&self, program: &str) -> Option<PathBuf> {
        let path = match &self.search_path {
            Some(p) => p.clone(),
            None => std::env::var_os("PATH")?,
        };
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }

    /// The host filesystem root (`/` unless `--root` says otherwise).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the real host (`/`), not a test root.
    pub fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Map an absolute host path (`/etc/sysctl.d`) to where it is under the
    /// root. Relative paths are taken as relative to the root too.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in abs.as_ref().components() {
            match c {
                Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
                Component::ParentDir => {
                    out.push("..");
                }
                Component::Normal(n) => out.push(n),
            }
        }
        out
    }

    /// An external command, logged with `-v` when it is run through [`Cmd`].
    pub fn cmd<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            dir: None,
            search_path: self.search_path.clone(),
        }
    }
}

/// A command line to run: kept as data so it can be shown (`-v`, `--dry-run`)
/// before it becomes a `duct::Expression`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub dir: Option<PathBuf>,
    /// The host's `PATH` override, if any (not shown: not part of the plan).
    search_path: Option<OsString>,
}

impl Cmd {
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn dir(mut self, d: impl Into<PathBuf>) -> Cmd {
        self.dir = Some(d.into());
        self
    }

    /// Shell-like rendering for humans (`-v`, plans). Environment overrides
    /// are shown by name only: their values may be secrets.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(k, _)| format!("{}=…", k.to_string_lossy()))
            .collect();
        parts.push(shell_quote(&self.program.to_string_lossy()));
        parts.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        parts.join(" ")
    }

    /// The duct expression, with the command logged through the shell.
    pub fn expr(&self, shell: &Shell) -> duct::Expression {
        shell.command(self.display());
        let mut e = duct::cmd(&self.program, &self.args);
        if let Some(p) = &self.search_path {
            e = e.env("PATH", p);
        }
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        if let Some(d) = &self.dir {
            e = e.dir(d);
        }
        e
    }

    /// Run with inherited stdio; return the exit code (signals map to 128+n).
    pub fn status(&self, shell: &Shell) -> Result<i32> {
        let out = self
            .expr(shell)
            .unchecked()
            .run()
            .with_context(|| format!("could not start `{}`", self.program.to_string_lossy()))?;
        Ok(exit_code_of(&out.status))
    }

    /// Run capturing stdout and stderr; never fails on a non-zero exit.
    pub fn output(&self, shell: &Shell) -> Result<Captured> {
        let out = self
            .expr(shell)
            .stdout_capture()
            .stderr_capture()
            .stdin_null()
            .unchecked()
            .run()
            .with_context(|| format!("could not start `{}`", self.program.to_string_lossy()))?;
        Ok(Captured {
            code: exit_code_of(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// What a captured command printed.
#[derive(Clone, Debug)]
pub struct Captured {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

fn exit_code_of(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Quote a word the way a POSIX shell would need it, for display only.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Write `bytes` to `path` atomically: a temp file in the same directory,
/// `mode` set before any byte is written, fsync, rename over, fsync the
/// directory. A crash leaves either the old or the new file, never half.
///
/// When `path` is a symlink (an administrator keeping `.env` elsewhere), the
/// file it points to is replaced and the link is kept.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let resolved;
    let path = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            resolved = fs::canonicalize(path).with_context(|| {
                format!(
                    "{} is a symlink to a missing file; fix or remove the link",
                    path.display()
                )
            })?;
            resolved.as_path()
        }
        _ => path,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // The umask may have narrowed the mode; set it exactly.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.path().display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Like [`write_atomic`], but only when the content differs. Returns whether
/// the file was written.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    match fs::read(path) {
        Ok(old) if old == bytes => {
            let meta = fs::metadata(path)?;
            if meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot set the mode of {}", path.display()))?;
            }
            Ok(false)
        }
        _ => {
            write_atomic(path, bytes, mode)?;
            Ok(true)
        }
    }
}

/// Lexically normalise an absolute path (`a/./b/../c` -> `a/c`), without
/// looking at the filesystem.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_land_under_the_root() {
        let h = Host::new("/tmp/r");
        assert_eq!(
            h.path("/etc/sysctl.d"),
            PathBuf::from("/tmp/r/etc/sysctl.d")
        );
        assert_eq!(h.path("proc/sys"), PathBuf::from("/tmp/r/proc/sys"));
        assert_eq!(Host::new("/").path("/etc"), PathBuf::from("/etc"));
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".env");
        write_atomic(&p, b"A=1\n", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"A=1\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!write_if_changed(&p, b"A=1\n", 0o600).unwrap());
        assert!(write_if_changed(&p, b"A=2\n", 0o600).unwrap());
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn atomic_write_through_a_symlink_keeps_the_link() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("secrets/env");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(&real, "A=1\n").unwrap();
        let link = d.path().join(".env");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"A=2\n", 0o600).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"A=2\n");
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nope"), &dangling).unwrap();
        assert!(write_atomic(&dangling, b"x", 0o600).is_err());
    }

    #[test]
    fn display_hides_env_values() {
        let c = Host::new("/")
            .cmd("docker", ["compose", "up"])
            .env("SECRET", "hunter2");
        assert_eq!(c.display(), "SECRET=… docker compose up");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
