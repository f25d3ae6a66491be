//! All user-facing output goes through [`Shell`]: it knows the verbosity and
//! whether to use color, so no module prints on its own.
//!
//! Normal output (plans, reports, `--json`) goes to stdout; status lines,
//! warnings and errors to stderr.
//!
//! Messages carry values from users and the host (file names, `.env`
//! values, command output). Every line printed here has its control
//! characters escaped ([`clean`]), except the line breaks of multi-line
//! output and the shell's own colours, so a value cannot move the cursor,
//! recolour or clear the administrator's terminal. Single-line messages
//! (status, `-v` lines, commands) escape line breaks too. Values put into
//! a multi-line message are escaped where they are formatted, with
//! [`Shown::shown`]. Only [`Shell::data`] (`--json`, `--stdout`: output
//! for programs) is printed as it is.

// The one place that prints to the terminal, and reads NO_COLOR.
#![allow(clippy::disallowed_macros, clippy::disallowed_methods)]

use anstyle::{AnsiColor, Style};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// `text` with every control character (C0 including newline, DEL, C1)
/// as a visible escape (`\u{1b}`, `\n`).
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Display for values from users and the host, escaped with [`clean`].
pub trait Shown {
    fn shown(&self) -> String;
}

impl Shown for Path {
    fn shown(&self) -> String {
        clean(&self.to_string_lossy())
    }
}

impl Shown for std::path::PathBuf {
    fn shown(&self) -> String {
        self.as_path().shown()
    }
}

impl Shown for str {
    fn shown(&self) -> String {
        clean(self)
    }
}

impl Shown for String {
    fn shown(&self) -> String {
        clean(self)
    }
}

/// The escape sequences the shell itself writes: the styles below, on and off.
fn own_sequences() -> &'static [String] {
    static SEQ: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEQ.get_or_init(|| {
        let mut v: Vec<String> = [GREEN, YELLOW, RED, CYAN, DIM]
            .iter()
            .flat_map(|s| [format!("{s}"), format!("{s:#}")])
            .filter(|s| !s.is_empty())
            .collect();
        // Longest first, so a longer sequence is not cut by a prefix.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        v.dedup();
        v
    })
}

/// `text` for the terminal: control characters escaped as by [`clean`],
/// except line breaks when `lines` and the shell's own colour sequences.
fn terminal_safe(text: &str, lines: bool) -> std::borrow::Cow<'_, str> {
    let keep = |c: char| lines && c == '\n';
    if !text.chars().any(|c| c.is_control() && !keep(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\u{1b}' {
            if let Some(seq) = own_sequences()
                .iter()
                .find(|s| rest.starts_with(s.as_str()))
            {
                out.push_str(seq);
                rest = &rest[seq.len()..];
                continue;
            }
        }
        if c.is_control() && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// `--color` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

/// How much to print: `-q` lowers, `-v` raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Clone, Debug)]
pub struct Shell {
    verbosity: Verbosity,
    color_out: bool,
    color_err: bool,
}

const GREEN: Style = AnsiColor::Green.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default().bold();
const RED: Style = AnsiColor::Red.on_default().bold();
const CYAN: Style = AnsiColor::Cyan.on_default().bold();
const DIM: Style = Style::new().dimmed();

impl Shell {
    /// A shell for the real terminal. `NO_COLOR` (non-empty) turns `auto` off.
    pub fn new(verbosity: Verbosity, color: ColorChoice) -> Shell {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let decide = |tty: bool| match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        Shell {
            verbosity,
            color_out: decide(std::io::stdout().is_terminal()),
            color_err: decide(std::io::stderr().is_terminal()),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    pub fn is_verbose(&self) -> bool {
        self.verbosity >= Verbosity::Verbose
    }

    pub fn is_quiet(&self) -> bool {
        self.verbosity <= Verbosity::Quiet
    }

    /// Whether stderr is a terminal that may show a progress spinner.
    pub fn progress_allowed(&self) -> bool {
        !self.is_quiet() && std::io::stderr().is_terminal()
    }

    fn paint(&self, on: bool, style: Style, text: &str) -> String {
        if on {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    /// Program output (a plan, a report): stdout, printed unless `-q`.
    pub fn out(&self, text: impl AsRef<str>) {
        if self.is_quiet() {
            return;
        }
        self.data(terminal_safe(text.as_ref(), true));
    }

    /// Data that is the command's result (`--json`, `--stdout`): always printed.
    pub fn data(&self, text: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth reporting.
        let _ = writeln!(out, "{}", text.as_ref());
    }

    /// Data that is the command's result when stdout holds something else
    /// (`backup - --json`: the archive): stderr, always printed, exact.
    pub fn data_to_stderr(&self, text: impl AsRef<str>) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}", text.as_ref());
    }

    /// A status line on stderr: `  verb message`, verb highlighted.
    pub fn status(&self, verb: &str, message: impl AsRef<str>) {
        if self.is_quiet() {
            return;
        }
        let verb = self.paint(self.color_err, GREEN, &format!("{verb:>12}"));
        eprintln!("{verb} {}", terminal_safe(message.as_ref(), false));
    }

    /// Program output that must stay off stdout (which holds a JSON
    /// result): stderr, printed unless `-q`.
    pub fn info(&self, text: impl AsRef<str>) {
        if self.is_quiet() {
            return;
        }
        eprintln!("{}", terminal_safe(text.as_ref(), true));
    }

    /// A line shown only with `-v`.
    pub fn verbose(&self, message: impl AsRef<str>) {
        if self.is_verbose() {
            let text = self.paint(self.color_err, DIM, &terminal_safe(message.as_ref(), false));
            eprintln!("{text}");
        }
    }

    /// A command about to be run, shown with `-v`.
    pub fn command(&self, shown: impl AsRef<str>) {
        if self.is_verbose() {
            let dollar = self.paint(self.color_err, CYAN, "$");
            eprintln!("{dollar} {}", terminal_safe(shown.as_ref(), false));
        }
    }

    pub fn note(&self, message: impl AsRef<str>) {
        if self.is_quiet() {
            return;
        }
        let label = self.paint(self.color_err, CYAN, "note:");
        eprintln!("{label} {}", terminal_safe(message.as_ref(), true));
    }

    pub fn warn(&self, message: impl AsRef<str>) {
        let label = self.paint(self.color_err, YELLOW, "warning:");
        eprintln!("{label} {}", terminal_safe(message.as_ref(), true));
    }

    pub fn error(&self, message: impl AsRef<str>) {
        let label = self.paint(self.color_err, RED, "error:");
        eprintln!("{label} {}", terminal_safe(message.as_ref(), true));
    }

    /// Colored words for reports on stdout (`ok`, `warn`, `fail`).
    pub fn ok_word(&self, text: &str) -> String {
        self.paint(self.color_out, GREEN, text)
    }
    pub fn warn_word(&self, text: &str) -> String {
        self.paint(self.color_out, YELLOW, text)
    }
    pub fn fail_word(&self, text: &str) -> String {
        self.paint(self.color_out, RED, text)
    }

    /// Print an error chain as one readable block.
    pub fn print_error(&self, err: &anyhow::Error) {
        let mut chain = err.chain();
        if let Some(first) = chain.next() {
            self.error(first.to_string());
        }
        for cause in chain {
            eprintln!("  caused by: {}", terminal_safe(&cause.to_string(), true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(clean("\u{9b}x"), "\\u{9b}x");
        assert_eq!(clean("ümlaut/ok"), "ümlaut/ok");
        assert_eq!(Path::new("/x\ty").shown(), "/x\\ty");
    }

    #[test]
    fn terminal_output_keeps_own_colours_and_lines_only() {
        let green = format!("{GREEN}ok{GREEN:#}");
        assert_eq!(terminal_safe(&green, false), green);
        assert_eq!(terminal_safe("a\nb", true), "a\nb");
        assert_eq!(terminal_safe("a\nb", false), "a\\nb");
        assert_eq!(
            terminal_safe("x\u{1b}[2J\r\u{7}y", true),
            "x\\u{1b}[2J\\r\\u{7}y"
        );
        // A user's colour is not the shell's: escaped too.
        assert_eq!(terminal_safe("\u{1b}[5m", true), "\\u{1b}[5m");
    }

    proptest::proptest! {
        /// Whatever a message holds, no control character but a line break
        /// reaches the terminal outside the shell's own colour sequences.
        #[test]
        fn no_raw_control_character_reaches_the_terminal(s in "\\PC*|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}a\\[m0-9;]*") {
            let mut safe = terminal_safe(&s, true).into_owned();
            for seq in own_sequences() {
                safe = safe.replace(seq.as_str(), "");
            }
            proptest::prop_assert!(!safe.chars().any(|c| c.is_control() && c != '\n'), "{:?}", safe);
            let one = terminal_safe(&s, false).into_owned();
            let mut one_stripped = one.clone();
            for seq in own_sequences() {
                one_stripped = one_stripped.replace(seq.as_str(), "");
            }
            proptest::prop_assert!(!one_stripped.chars().any(char::is_control));
        }
    }
}
