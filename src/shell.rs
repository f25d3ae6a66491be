//! All user-facing output goes through [`Shell`]: it knows the verbosity and
//! whether to use color, so no module prints on its own.
//!
//! Normal output (plans, reports, `--json`) goes to stdout; status lines,
//! warnings and errors to stderr.

use anstyle::{AnsiColor, Style};
use std::io::{IsTerminal, Write};

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
        self.data(text);
    }

    /// Data that is the command's result (`--json`, `--stdout`): always printed.
    pub fn data(&self, text: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth reporting.
        let _ = writeln!(out, "{}", text.as_ref());
    }

    /// A status line on stderr: `  verb message`, verb highlighted.
    pub fn status(&self, verb: &str, message: impl AsRef<str>) {
        if self.is_quiet() {
            return;
        }
        let verb = self.paint(self.color_err, GREEN, &format!("{verb:>12}"));
        eprintln!("{verb} {}", message.as_ref());
    }

    /// A line shown only with `-v`.
    pub fn verbose(&self, message: impl AsRef<str>) {
        if self.is_verbose() {
            let text = self.paint(self.color_err, DIM, message.as_ref());
            eprintln!("{text}");
        }
    }

    /// A command about to be run, shown with `-v`.
    pub fn command(&self, shown: impl AsRef<str>) {
        if self.is_verbose() {
            let dollar = self.paint(self.color_err, CYAN, "$");
            eprintln!("{dollar} {}", shown.as_ref());
        }
    }

    pub fn note(&self, message: impl AsRef<str>) {
        if self.is_quiet() {
            return;
        }
        let label = self.paint(self.color_err, CYAN, "note:");
        eprintln!("{label} {}", message.as_ref());
    }

    pub fn warn(&self, message: impl AsRef<str>) {
        let label = self.paint(self.color_err, YELLOW, "warning:");
        eprintln!("{label} {}", message.as_ref());
    }

    pub fn error(&self, message: impl AsRef<str>) {
        let label = self.paint(self.color_err, RED, "error:");
        eprintln!("{label} {}", message.as_ref());
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
            eprintln!("  caused by: {cause}");
        }
    }
}
