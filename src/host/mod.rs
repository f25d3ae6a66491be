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
use std::time::Duration;

use crate::shell::Shell;

pub mod flush;
pub mod interrupt;
pub mod pool;
pub mod space;
pub mod tree;

/// The host as the tool sees it.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
    /// Where programs are looked for instead of the process's `PATH`.
    search_path: Option<OsString>,
    /// How long a captured command ([`Cmd::output`]) may run.
    command_limit: Option<Duration>,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host {
            root: root.into(),
            search_path: None,
            command_limit: None,
        }
    }

    /// Stop every captured command ([`Cmd::output`]) that runs longer than
    /// `limit`, with what it started, and fail it with [`TimedOut`]: for
    /// a report that must end even when Docker does not answer.
    pub fn with_command_limit(mut self, limit: Duration) -> Host {
        self.command_limit = Some(limit);
        self
    }

    /// Look programs up in `path` instead of the process's `PATH`, and
    /// give them that `PATH` (tests put stand-ins first without changing
    /// the test process's environment).
    pub fn with_search_path(mut self, path: impl Into<OsString>) -> Host {
        self.search_path = Some(path.into());
        self
    }

    /// Find a program the way [`Host::cmd`] will.
    // The seam reads the process's PATH: what programs it starts see.
    #[allow(clippy::disallowed_methods)]
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
            output_to_stderr: false,
            limit: self.command_limit,
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
    /// Send what the command prints to stdout to stderr instead (when the
    /// tool's own stdout is a JSON result).
    output_to_stderr: bool,
    /// The host's limit on captured runs, if any ([`Host::with_command_limit`]).
    limit: Option<Duration>,
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

    /// What the command prints on stdout goes to stderr (inherited-output
    /// runs only; captured runs keep both apart).
    pub fn output_to_stderr(mut self, yes: bool) -> Cmd {
        self.output_to_stderr = yes;
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
        if self.output_to_stderr {
            e = e.stdout_to_stderr();
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
    /// Under a host's command limit, a run that takes longer is stopped
    /// and fails with [`TimedOut`].
    pub fn output(&self, shell: &Shell) -> Result<Captured> {
        if let Some(limit) = self.limit {
            return self.output_within(shell, limit)?.ok_or_else(|| {
                TimedOut {
                    command: self.display(),
                    limit,
                }
                .into()
            });
        }
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

impl Cmd {
    /// Start in a process group of its own, so a timeout stops everything
    /// it started (`sh -c` and its children), not only the first process.
    fn start_grouped(&self, e: duct::Expression) -> Result<duct::Handle> {
        e.unchecked()
            .before_spawn(|c| {
                std::os::unix::process::CommandExt::process_group(c, 0);
                Ok(())
            })
            .start()
            .with_context(|| format!("could not start `{}`", self.program.to_string_lossy()))
    }

    /// Wait at most `limit`; then kill the command's process group and
    /// return `None`.
    fn wait_within(handle: &duct::Handle, limit: Duration) -> Result<Option<std::process::Output>> {
        if let Some(out) = handle.wait_timeout(limit)? {
            return Ok(Some(out.clone()));
        }
        for pid in handle.pids() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
        // Reaps the killed process.
        let _ = handle.kill();
        Ok(None)
    }

    /// [`Cmd::status`] in a process group of its own with no input: a
    /// Ctrl-C at the terminal does not reach it (for steps that must not
    /// be cut short, such as replacing the running container).
    pub fn status_shielded(&self, shell: &Shell) -> Result<i32> {
        let handle = self.start_grouped(self.expr(shell).stdin_null())?;
        let out = handle.wait()?;
        Ok(exit_code_of(&out.status))
    }

    /// [`Cmd::status`], killed (with everything it started) after `limit`:
    /// `None` then.
    pub fn status_within(&self, shell: &Shell, limit: Duration) -> Result<Option<i32>> {
        let handle = self.start_grouped(self.expr(shell))?;
        Ok(Self::wait_within(&handle, limit)?.map(|o| exit_code_of(&o.status)))
    }

    /// [`Cmd::output`], killed (with everything it started) after `limit`:
    /// `None` then.
    pub fn output_within(&self, shell: &Shell, limit: Duration) -> Result<Option<Captured>> {
        let e = self
            .expr(shell)
            .stdout_capture()
            .stderr_capture()
            .stdin_null();
        let handle = self.start_grouped(e)?;
        Ok(Self::wait_within(&handle, limit)?.map(|out| Captured {
            code: exit_code_of(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }))
    }
}

/// A command stopped because it ran longer than the host's limit.
#[derive(Debug)]
pub struct TimedOut {
    pub command: String,
    pub limit: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` did not finish within {} s and was stopped",
            self.command,
            self.limit.as_secs_f64()
        )
    }
}

impl std::error::Error for TimedOut {}

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

/// Largest configuration file read (`chatmail.ini`, `.env`, state files).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest certificate or key file read (a chain of PEM certificates).
pub const MAX_CERT_BYTES: u64 = 1 << 20;
/// Largest file of `custom/` hashed for the override (images, a web site).
pub const MAX_CUSTOM_BYTES: u64 = 1 << 30;

/// Why an input file could not be read. `Display` names the file, and for
/// a size the limit, and says how to fix it.
#[derive(Debug)]
pub enum InputError {
    /// The path does not exist (a symlink to nothing counts).
    Missing(PathBuf),
    /// Following symlinks never ends.
    Loop(PathBuf),
    /// A FIFO, device, socket or directory: reading it could hang or never end.
    NotRegular(PathBuf, &'static str),
    /// Larger than `limit` bytes.
    TooLarge(PathBuf, u64),
    /// Any other error opening or reading it.
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::shell::Shown;
        match self {
            InputError::Missing(p) => write!(f, "{} does not exist", p.shown()),
            InputError::Loop(p) => write!(
                f,
                "{} is a symlink loop; point the link at a file",
                p.shown()
            ),
            InputError::NotRegular(p, kind) => write!(
                f,
                "{} is a {kind}, not a regular file; point it at a regular file",
                p.shown()
            ),
            InputError::TooLarge(p, limit) => write!(
                f,
                "{} is larger than the limit of {limit} bytes; is it the right file?",
                p.shown()
            ),
            InputError::Io(p, e) => write!(f, "cannot read {}: {e}", p.shown()),
        }
    }
}

impl std::error::Error for InputError {}

impl InputError {
    pub fn is_missing(&self) -> bool {
        matches!(self, InputError::Missing(_))
    }

    /// As an error to return: the wrong kind of file, a loop or a size is
    /// a configuration error (exit 2), a failing read a runtime error.
    pub fn into_error(self) -> anyhow::Error {
        match self {
            InputError::Io(..) => self.into(),
            e => crate::error::usage(e.to_string()),
        }
    }
}

/// What a file is, for messages: `"FIFO"`, `"character device"`, ...
pub fn kind_name(ft: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType as T;
    match ft {
        T::RegularFile => "regular file",
        T::Directory => "directory",
        T::Symlink => "symlink",
        T::Fifo => "FIFO",
        T::Socket => "socket",
        T::CharacterDevice => "character device",
        T::BlockDevice => "block device",
        T::Unknown => "special file",
    }
}

/// Device and inode: the identity of a file, whatever its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of the file `path` names (symlinks followed); `None`
    /// when there is none.
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Open a file the tool reads as input: symlinks are followed, and what
/// they end at must be a regular file no larger than `limit` bytes. The
/// open never blocks (a FIFO without a writer), and nothing is read from a
/// device. Returns the file, its identity and its size.
pub fn open_input(path: &Path, limit: u64) -> Result<(fs::File, FileId, u64), InputError> {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::NOENT => InputError::Missing(path.to_path_buf()),
        rustix::io::Errno::LOOP => InputError::Loop(path.to_path_buf()),
        e => InputError::Io(path.to_path_buf(), e.into()),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| InputError::Io(path.to_path_buf(), e.into()))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(InputError::NotRegular(path.to_path_buf(), kind_name(ft)));
    }
    let size = st.st_size as u64;
    if size > limit {
        return Err(InputError::TooLarge(path.to_path_buf(), limit));
    }
    // Regular files ignore O_NONBLOCK; clear it anyway for plain reads.
    let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
    let id = FileId {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    };
    Ok((fs::File::from(fd), id, size))
}

/// Read a whole input file through [`open_input`]; a file that grows past
/// `limit` while it is read is refused too.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    read_input_with_id(path, limit).map(|(b, _)| b)
}

/// [`read_input`], with the identity of the file read.
pub fn read_input_with_id(path: &Path, limit: u64) -> Result<(Vec<u8>, FileId), InputError> {
    use std::io::Read;
    let (f, id, size) = open_input(path, limit)?;
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InputError::Io(path.to_path_buf(), e))?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge(path.to_path_buf(), limit));
    }
    Ok((bytes, id))
}

/// [`read_input`], with a missing file as `None`.
pub fn read_input_opt(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, InputError> {
    match read_input(path, limit) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The middle of the names of the tool's temp files: `.NAME.chatmail-docker.XXXXXX.tmp`
/// next to the file `NAME` being written.
pub const TEMP_TAG: &str = ".chatmail-docker.";

/// A file changed on disk between reading it and replacing it: the write
/// was dropped, the file is as the other writer left it.
#[derive(Debug)]
pub struct ChangedMeanwhile(pub PathBuf);

impl std::fmt::Display for ChangedMeanwhile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::shell::Shown;
        write!(
            f,
            "{} changed while it was being updated (edited meanwhile?); it was left as it is now: run the command again",
            self.0.shown()
        )
    }
}

impl std::error::Error for ChangedMeanwhile {}

/// How [`write_atomic_with`] treats the path and what is there.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOpts<'a> {
    /// When `path` is a symlink, replace the file it points to (keeping the
    /// link) instead of the link itself.
    pub follow: bool,
    /// Replace only if the file still holds this (`Some(None)`: still does
    /// not exist); otherwise fail with [`ChangedMeanwhile`].
    pub expect: Option<Option<&'a [u8]>>,
}

/// Write `bytes` to `path` atomically: a temp file in the same directory,
/// `mode` set before any byte is written, fsync, rename over, fsync the
/// directory. A crash leaves either the old or the new file, never half.
///
/// When `path` is a symlink (an administrator keeping `.env` elsewhere), the
/// file it points to is replaced and the link is kept.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic_with(
        path,
        bytes,
        mode,
        WriteOpts {
            follow: true,
            expect: None,
        },
    )
}

/// [`write_atomic`] that never follows a symlink at `path`: the link itself
/// is replaced (backups: a link planted as `.env.bak` does not redirect the
/// copy of `.env` elsewhere).
pub fn write_atomic_nofollow(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic_with(path, bytes, mode, WriteOpts::default())
}

/// Remove the entries of `dir` whose name `ours` accepts and that are a
/// regular file (`dir_kind` false) or a directory (true), left by a
/// process that was killed: one still locked (`flock`) by a live process
/// is left alone, and a link is never followed. Returns how many went.
pub fn remove_unlocked(dir: &Path, dir_kind: bool, ours: impl Fn(&OsStr) -> bool) -> usize {
    use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
    let Ok(list) = fs::read_dir(dir) else {
        return 0;
    };
    let (flags, kind) = if dir_kind {
        (OFlags::DIRECTORY, FileType::Directory)
    } else {
        (OFlags::NONBLOCK, FileType::RegularFile)
    };
    let mut n = 0;
    for e in list.flatten() {
        if !ours(&e.file_name()) {
            continue;
        }
        let Ok(fd) = rustix::fs::openat(
            rustix::fs::CWD,
            e.path(),
            OFlags::RDONLY | flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let right_kind =
            rustix::fs::fstat(&fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == kind);
        let removed = || {
            if dir_kind {
                fs::remove_dir_all(e.path()).is_ok()
            } else {
                fs::remove_file(e.path()).is_ok()
            }
        };
        if right_kind
            && rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok()
            && removed()
        {
            n += 1;
        }
    }
    n
}

/// The directory holding `p`: its parent, or `.` for a bare file name.
pub fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// [`write_atomic`] with its choices spelled out.
///
/// The temp file is `.NAME.chatmail-docker.XXXXXX.tmp` and stays locked
/// (`flock`) until it is renamed or removed; a temp file of that shape no
/// process holds locked is what a killed run left behind, and is removed
/// before the next write of `NAME`.
pub fn write_atomic_with(path: &Path, bytes: &[u8], mode: u32, opts: WriteOpts) -> Result<()> {
    let resolved;
    let path = match fs::symlink_metadata(path) {
        Ok(m) if opts.follow && m.file_type().is_symlink() => {
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
    let dir = parent_dir(path);
    let prefix = temp_prefix(path);
    remove_stale_temps(dir, &prefix);
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // Held until the temp file is renamed or dropped: it is in use.
    rustix::fs::flock(
        tmp.as_file(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .with_context(|| format!("cannot lock {}", tmp.path().display()))?;
    // The umask may have narrowed the mode; set it exactly.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.path().display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    // The file being replaced, kept open: what reaches it between the
    // comparison and the rename is seen afterwards.
    let mut replaced: Option<fs::File> = None;
    if let Some(expected) = opts.expect {
        let limit = expected.map_or(0, |e| e.len() as u64).max(MAX_CONFIG_BYTES);
        let same = match open_input(path, limit) {
            Ok((mut f, _, _)) => {
                let same = content_is(&mut f, expected.unwrap_or_default(), limit, path)?
                    && expected.is_some();
                replaced = Some(f);
                same
            }
            Err(e) if e.is_missing() => expected.is_none(),
            // Larger than what was read: changed.
            Err(InputError::TooLarge(..)) => false,
            Err(e) => return Err(e.into()),
        };
        if !same {
            return Err(ChangedMeanwhile(path.to_path_buf()).into());
        }
    }
    #[cfg(test)]
    tests::BEFORE_RENAME.with(|h| h.take().map(|f| f()));
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    flush::sync_dir(dir);
    if let (Some(mut old), Some(Some(expected))) = (replaced, opts.expect) {
        // Written to in the moment between comparing and renaming (an
        // append): put the edited file back and let the caller merge again.
        if !content_is(
            &mut old,
            expected,
            MAX_CONFIG_BYTES.max(expected.len() as u64),
            path,
        )? {
            let mut edited = Vec::new();
            std::io::Seek::rewind(&mut old)
                .and_then(|_| std::io::Read::read_to_end(&mut old, &mut edited))
                .with_context(|| format!("cannot read {}", path.display()))?;
            let back = WriteOpts {
                follow: false,
                expect: Some(Some(bytes)),
            };
            write_atomic_with(path, &edited, mode, back).with_context(|| {
                format!(
                    "{} was edited while it was being replaced, and again since; check what it holds",
                    path.display()
                )
            })?;
            return Err(ChangedMeanwhile(path.to_path_buf()).into());
        }
    }
    Ok(())
}

/// Whether the open file `f` holds exactly `expected` (read from its start).
fn content_is(f: &mut fs::File, expected: &[u8], limit: u64, path: &Path) -> Result<bool> {
    use std::io::{Read, Seek};
    let mut now = Vec::with_capacity(expected.len());
    f.rewind()
        .and_then(|_| Read::by_ref(f).take(limit + 1).read_to_end(&mut now))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(now == expected)
}

/// The start of the names of [`write_atomic`]'s temp files for `path`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dot = if name.starts_with('.') { "" } else { "." };
    format!("{dot}{name}{TEMP_TAG}")
}

/// Remove what a killed [`write_atomic`] of `path` left beside it (temp
/// files no process holds locked), without writing `path`: for a command
/// that ends without writing a file an earlier run was killed writing.
pub fn remove_stale_writes(path: &Path) {
    remove_stale_temps(parent_dir(path), &temp_prefix(path));
}

/// Remove `PREFIX*.tmp` files in `dir` that no process holds locked: what a
/// killed write left (a full copy of the file, `.env` secrets included).
/// Never follows a link, never touches anything else; errors are ignored.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if !(n.starts_with(prefix) && n.ends_with(".tmp")) {
            continue;
        }
        let p = e.path();
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::open(&p, flags, Mode::empty()) else {
            continue;
        };
        let regular = rustix::fs::fstat(&fd)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
        if regular && rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Like [`write_atomic`], but only when the content differs. Returns whether
/// the file was written.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    let limit = (bytes.len() as u64).max(MAX_CONFIG_BYTES);
    match read_input_opt(path, limit) {
        Ok(Some(old)) if old == bytes => {
            let meta = fs::metadata(path)?;
            if meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot set the mode of {}", path.display()))?;
            }
            Ok(false)
        }
        Ok(_) | Err(InputError::TooLarge(..)) => {
            write_atomic(path, bytes, mode)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
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

/// Test fixture: below `root`, each `(path, text)` as a file holding `text`
/// (its parents made), or as a directory when `path` ends in `/`.
#[cfg(test)]
pub fn write_tree(root: &Path, entries: &[(&str, &str)]) {
    for (path, text) in entries {
        let p = root.join(path);
        if path.ends_with('/') {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
    }
}

/// Make a FIFO at `p` (mode 0600): what the readers must refuse, never
/// block on.
#[cfg(test)]
pub fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Run once between the comparison and the rename.
        pub(super) static BEFORE_RENAME: std::cell::Cell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::Cell::new(None) };
    }

    #[test]
    fn an_append_between_comparing_and_renaming_is_put_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".env");
        fs::write(&p, "A=1\n").unwrap();
        let appended = p.clone();
        BEFORE_RENAME.with(|h| {
            h.set(Some(Box::new(move || {
                let mut f = fs::OpenOptions::new().append(true).open(&appended).unwrap();
                f.write_all(b"LATE=1\n").unwrap();
            })))
        });
        let opts = WriteOpts {
            follow: true,
            expect: Some(Some(b"A=1\n")),
        };
        let err = write_atomic_with(&p, b"A=2\n", 0o600, opts).unwrap_err();
        assert!(err.is::<ChangedMeanwhile>(), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"A=1\nLATE=1\n");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

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
    fn inputs_must_be_regular_files_within_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        crate::host::mkfifo(&fifo);
        let err = read_input(&fifo, 10).unwrap_err();
        assert!(matches!(err, InputError::NotRegular(_, "FIFO")), "{err}");
        let err = read_input(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let lp = d.path().join("loop");
        std::os::unix::fs::symlink(&lp, &lp).unwrap();
        assert!(matches!(read_input(&lp, 10), Err(InputError::Loop(_))));
        assert!(read_input_opt(&d.path().join("none"), 10)
            .unwrap()
            .is_none());
    }

    proptest::proptest! {
        /// A file is read whole when it fits the limit and refused, naming
        /// the file and the limit, when it does not.
        #[test]
        fn sizes_are_bounded(size in 0usize..300, limit in 0u64..300) {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("f");
            fs::write(&p, vec![b'x'; size]).unwrap();
            match read_input(&p, limit) {
                Ok(b) => proptest::prop_assert!(b.len() == size && size as u64 <= limit),
                Err(e) => {
                    proptest::prop_assert!(size as u64 > limit);
                    let msg = e.to_string();
                    let want = format!("limit of {} bytes", limit);
                    proptest::prop_assert!(msg.contains(&want));
                    proptest::prop_assert!(msg.contains(&p.display().to_string()));
                }
            }
        }
    }

    #[test]
    fn a_file_changed_since_it_was_read_is_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".env");
        fs::write(&p, "A=1\n").unwrap();
        let expect = |b: &'static [u8]| WriteOpts {
            follow: true,
            expect: Some(Some(b)),
        };
        // Edited meanwhile: the edit stays, no temp file is left.
        fs::write(&p, "A=1\nHAND=1\n").unwrap();
        let err = write_atomic_with(&p, b"A=2\n", 0o600, expect(b"A=1\n")).unwrap_err();
        assert!(err.is::<ChangedMeanwhile>(), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"A=1\nHAND=1\n");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        write_atomic_with(&p, b"A=2\n", 0o600, expect(b"A=1\nHAND=1\n")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"A=2\n");
        // Expected to be absent, created meanwhile.
        let q = d.path().join("new");
        fs::write(&q, "x").unwrap();
        let absent = WriteOpts {
            follow: true,
            expect: Some(None),
        };
        assert!(write_atomic_with(&q, b"y", 0o600, absent).is_err());
        assert_eq!(fs::read(&q).unwrap(), b"x");
    }

    proptest::proptest! {
        /// Whatever was read, edited meanwhile and is to be written: an
        /// edit is never overwritten, an unedited file is replaced, and no
        /// temp file is left either way.
        #[test]
        fn an_edit_is_never_lost(
            old in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            edit in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
            new in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join(".env");
            fs::write(&p, &old).unwrap();
            if let Some(e) = &edit {
                fs::write(&p, e).unwrap();
            }
            let opts = WriteOpts { follow: true, expect: Some(Some(&old)) };
            let r = write_atomic_with(&p, &new, 0o600, opts);
            match &edit {
                Some(e) if *e != old => {
                    proptest::prop_assert!(r.unwrap_err().is::<ChangedMeanwhile>());
                    proptest::prop_assert_eq!(&fs::read(&p).unwrap(), e);
                }
                _ => {
                    proptest::prop_assert!(r.is_ok());
                    proptest::prop_assert_eq!(fs::read(&p).unwrap(), new);
                }
            }
            proptest::prop_assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn display_hides_env_values() {
        let c = Host::new("/")
            .cmd("docker", ["compose", "up"])
            .env("SECRET", "hunter2");
        assert_eq!(c.display(), "SECRET=… docker compose up");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn a_command_limit_stops_a_captured_run_and_what_it_started() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("child-still-ran");
        let shell = Shell::new(
            crate::shell::Verbosity::Quiet,
            crate::shell::ColorChoice::Never,
        );
        let host = Host::new("/").with_command_limit(Duration::from_millis(300));
        let script = format!("(sleep 2; touch '{}') & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let err = host
            .cmd("sh", ["-c", script.as_str()])
            .output(&shell)
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stopped at the limit"
        );
        let timed_out = err.downcast_ref::<TimedOut>().expect("a TimedOut error");
        assert!(
            timed_out
                .to_string()
                .contains("did not finish within 0.3 s"),
            "{err}"
        );
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the background child was stopped too");
        // Without a limit, and within it, runs are as before.
        let out = host.cmd("sh", ["-c", "echo hi"]).output(&shell).unwrap();
        assert_eq!(out.stdout, "hi\n");
    }
}
