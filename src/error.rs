//! Exit codes and the error kinds that choose them.
//!
//! Every failure travels as an `anyhow::Error` with context; a [`Failure`]
//! somewhere in its chain picks the exit code. Without one the code is 1.

use std::fmt;

/// Everything went fine.
pub const EXIT_OK: i32 = 0;
/// A runtime failure: a command failed, a file could not be written, ...
pub const EXIT_RUNTIME: i32 = 1;
/// Bad usage or bad configuration: the user has to change something.
pub const EXIT_USAGE: i32 = 2;
/// A preflight check failed.
pub const EXIT_PREFLIGHT: i32 = 3;
/// `upgrade --check` could not find out whether an upgrade is available
/// (the relay's remote unreachable, no relay checkout, a `--ref` that does
/// not resolve, ...): neither "available" (0) nor "up to date" (1).
pub const EXIT_CANNOT_CHECK: i32 = 4;
/// Ended by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it), after
/// finishing what must not be cut short.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Every exit code and what it means: `--help`, the man pages and the
/// README say the same (the tests compare them).
pub const EXIT_CODES: &[(i32, &str)] = &[
    (EXIT_OK, "ok"),
    (EXIT_RUNTIME, "runtime failure"),
    (EXIT_USAGE, "usage or configuration error"),
    (EXIT_PREFLIGHT, "preflight failed"),
    (EXIT_INTERRUPTED, "interrupted"),
];

/// `0 ok, 1 runtime failure, ...`
pub fn exit_codes_text() -> String {
    EXIT_CODES
        .iter()
        .map(|(c, m)| format!("{c} {m}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error that carries its own exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    /// `None` for a silent exit: the command already printed what went wrong.
    pub message: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for Failure {}

/// Whether the chain of `e` holds a full disk: an I/O error "no space
/// left on device" or "disk quota exceeded".
pub fn is_no_space(e: &anyhow::Error) -> bool {
    let said = [
        format!("(os error {})", libc_enospc()),
        format!("(os error {})", libc_edquot()),
    ];
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| n == libc_enospc() || n == libc_edquot())
            // An error passed on as text (from a writing thread).
            || said.iter().any(|s| c.to_string().contains(s.as_str()))
    })
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

fn libc_edquot() -> i32 {
    rustix::io::Errno::DQUOT.raw_os_error()
}

/// A usage or configuration error (exit 2) with a message that says how to fix it.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: EXIT_USAGE,
        message: Some(message.into()),
    }
    .into()
}

/// A preflight failure (exit 3).
pub fn preflight(message: impl Into<String>) -> anyhow::Error {
    Failure {
        code: EXIT_PREFLIGHT,
        message: Some(message.into()),
    }
    .into()
}

/// Exit with `code` without printing anything more.
pub fn silent(code: i32) -> anyhow::Error {
    Failure {
        code,
        message: None,
    }
    .into()
}

/// A parse error at a 1-based line of a text file (chatmail.ini, .env).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// The exit code an error maps to: the outermost [`Failure`]'s, also
/// when it was added as context (`err.context(Failure { .. })`).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(f) = err.downcast_ref::<Failure>() {
        return f.code;
    }
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>().map(|f| f.code))
        .unwrap_or(EXIT_RUNTIME)
}

/// Whether the error only carries an exit code and must not be printed.
pub fn is_silent(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<Failure>(),
        Some(Failure { message: None, .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_is_found_through_context() {
        let err = Err::<(), _>(usage("bad MAIL_DOMAIN"))
            .context("reading .env")
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), EXIT_RUNTIME);
        // A Failure given as context picks the code over the one inside.
        let outer = usage("bad --ref").context(Failure {
            code: EXIT_CANNOT_CHECK,
            message: Some("could not check".into()),
        });
        assert_eq!(exit_code(&outer), EXIT_CANNOT_CHECK);
        assert!(is_silent(&silent(1)));
    }
}
