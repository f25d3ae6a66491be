//! chatmail.ini parsing with the semantics of Python's `iniconfig`.
//!
//! The relay reads its configuration with `iniconfig.IniConfig(path)`, so
//! what a value *is* is decided by that library, not by the usual INI rules.
//! This module reproduces it exactly (differentially tested against
//! iniconfig 2.3.1 in `tests/ini2env_parse.rs`):
//!
//! - the file is UTF-8 (a non-UTF-8 byte is an error naming its offset); one
//!   leading byte order mark is dropped;
//! - lines end where Python's universal newlines and `str.splitlines` end
//!   them: `\n`, `\r\n`, `\r`, and also `\v`, `\f`, `\x1c`–`\x1e`, U+0085,
//!   U+2028 and U+2029;
//! - a line whose first non-blank character is `#` or `;`, or that is blank,
//!   is skipped, wherever it is (even between continuation lines);
//! - `[name]` opens a section; on a section line everything from the first
//!   `#`, then from the first `;`, is a comment. A line starting with `[`
//!   that does not end in `]` after that is *not* a section but a
//!   continuation line;
//! - `key = value` or `key: value` (the first `=` splits, unless the part
//!   before it holds a `:`, then the first `:` splits); key and value are
//!   stripped of Python whitespace; there is no inline comment stripping in
//!   values (`a = b # c` is `b # c`); keys are case-sensitive and may be
//!   empty;
//! - an indented line continues the previous value: its stripped text is
//!   appended after a `\n` (an empty first line adds nothing, so `k =` then
//!   `  a` is `a`);
//! - errors: a line that is neither, a continuation with no value before it,
//!   `[]`, a key before any section, a duplicate section or key.
//!
//! Why not `rust-ini`: it strips inline comments and quotes, treats
//! continuation lines, duplicate keys and `:` differently and has no notion
//! of Python's whitespace and line-break set, so it cannot be configured to
//! read a chatmail.ini the way the relay does.

use anyhow::{Context as _, Result};
use std::path::Path;

/// A parsed chatmail.ini: its sections in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ini {
    pub sections: Vec<Section>,
}

/// One `[section]` with its keys in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// 1-based line of the `[section]` header.
    pub line: usize,
    pub entries: Vec<Entry>,
}

/// One `key = value`; `value` has continuation lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based line where the key is.
    pub line: usize,
}

impl Ini {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }
}

/// Why a file is not a valid chatmail.ini, with the 1-based line it is on.
pub type ParseError = crate::error::LineError;

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII
/// separators `\x1c`–`\x1f`, which Rust does not count as whitespace.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// The characters that end a line for Python's universal newlines plus
/// `str.splitlines` (`\r\n` is handled as one break by the caller).
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Split like `open(..., encoding="utf-8").read().splitlines()`, without the
/// line ends.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.char_indices().find(|&(_, c)| is_line_break(c)) {
            None => Some(std::mem::take(&mut rest)),
            Some((i, c)) => {
                let line = &rest[..i];
                let mut end = i + c.len_utf8();
                if c == '\r' && rest[end..].starts_with('\n') {
                    end += 1;
                }
                rest = &rest[end..];
                Some(line)
            }
        }
    })
}

/// `s` for messages: in backticks, control characters escaped (`\t`,
/// `\u{1f}`) so blanks and odd bytes are visible, everything else as is.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// A fast `HashMap` for duplicate checks on large files: keys are short and
/// come from the administrator's own file, so SipHash's flood resistance
/// buys nothing here.
pub type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// What the previous meaningful line was, for continuation lines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Section,
    Value,
}

/// Parse chatmail.ini bytes. Errors carry the 1-based line.
pub fn parse_bytes(bytes: &[u8]) -> Result<Ini, ParseError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.valid_up_to();
            let line = 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
            return Err(ParseError {
                line,
                message: format!("not valid UTF-8 at byte offset {offset}; save the file as UTF-8"),
            });
        }
    };
    parse_str(text)
}

/// Parse chatmail.ini text. Errors carry the 1-based line.
///
/// iniconfig works in two passes: line syntax first (an error there wins,
/// wherever it is), then sections and duplicates in line order. This is one
/// pass that remembers the first error of the second kind and keeps
/// checking syntax to the end.
pub fn parse_str(text: &str) -> Result<Ini, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: usize, message: String| ParseError { line, message };

    let mut ini = Ini::default();
    // The first section or duplicate error; once set, `ini` is not built.
    let mut pending: Option<ParseError> = None;
    let mut last = Last::Nothing;
    // Where each key of the current section is, for duplicate checks.
    let mut keys: FastMap<&str, usize> = FastMap::default();
    for (idx, raw) in split_lines(text).enumerate() {
        let lineno = idx + 1;
        let first = raw.trim_start_matches(py_isspace).chars().next();
        if matches!(first, None | Some('#') | Some(';')) {
            continue;
        }
        let line = py_rstrip(raw);
        let continuation: Option<&str> = if line.starts_with('[') {
            let mut head = line;
            for c in ['#', ';'] {
                head = py_rstrip(head.split(c).next().unwrap_or(""));
            }
            if head.len() >= 2 && head.ends_with(']') {
                let name = &head[1..head.len() - 1];
                if name.is_empty() {
                    return Err(err(
                        lineno,
                        "empty section name `[]`; write `[params]`".into(),
                    ));
                }
                last = Last::Section;
                if pending.is_none() {
                    if let Some(first) = ini.section(name) {
                        pending = Some(err(
                            lineno,
                            format!(
                                "duplicate section [{name}] (first at line {}); merge the two",
                                first.line
                            ),
                        ));
                    } else {
                        ini.sections.push(Section {
                            name: name.to_string(),
                            line: lineno,
                            entries: Vec::new(),
                        });
                        keys.clear();
                    }
                }
                None
            } else {
                Some(py_strip(line))
            }
        } else if !line.starts_with(py_isspace) {
            let split = match line.split_once('=') {
                Some((name, _)) if name.contains(':') => line.split_once(':'),
                Some(kv) => Some(kv),
                None => line.split_once(':'),
            };
            let Some((name, value)) = split else {
                return Err(err(
                    lineno,
                    format!(
                        "unexpected line {}: expected `key = value`, `[section]`, \
                         a `#` comment or an indented continuation line",
                        quoted(line)
                    ),
                ));
            };
            last = Last::Value;
            let key = py_strip(name);
            if pending.is_none() {
                match ini.sections.last_mut() {
                    None => {
                        pending = Some(err(
                            lineno,
                            format!(
                                "key {} comes before any section; put `[params]` above it",
                                quoted(key)
                            ),
                        ))
                    }
                    Some(section) => {
                        if let Some(earlier) = keys.insert(key, lineno) {
                            pending = Some(err(
                                lineno,
                                format!(
                                    "duplicate key {} in [{}] (first at line {earlier}); \
                                     keep one",
                                    quoted(key),
                                    section.name
                                ),
                            ));
                        } else {
                            section.entries.push(Entry {
                                key: key.to_string(),
                                value: py_strip(value).to_string(),
                                line: lineno,
                            });
                        }
                    }
                }
            }
            None
        } else {
            Some(py_strip(line))
        };
        if let Some(data) = continuation {
            if last != Last::Value {
                return Err(err(
                    lineno,
                    "indented line continues no value (only `key = value` lines can \
                     be continued); remove the indentation or the line"
                        .into(),
                ));
            }
            if pending.is_none() {
                if let Some(entry) = ini.sections.last_mut().and_then(|s| s.entries.last_mut()) {
                    // Continuation text is never empty; an empty first line
                    // stays out of the join, as in iniconfig.
                    if !entry.value.is_empty() {
                        entry.value.push('\n');
                    }
                    entry.value.push_str(data);
                }
            }
        }
    }
    match pending {
        Some(e) => Err(e),
        None => Ok(ini),
    }
}

/// Read and parse a chatmail.ini file. A syntax error is a configuration
/// error (exit 2) naming `path:line`.
pub fn read(path: &Path) -> Result<Ini> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_bytes(&bytes)
        .map_err(|e| crate::error::usage(format!("{}:{}: {}", path.display(), e.line, e.message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Vec<(String, String)> {
        let ini = parse_str(text).unwrap();
        ini.section("params")
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_keep_inline_comments_and_colons() {
        assert_eq!(
            params("[params]\na = b # c\nurl: http://x:1/\nk:v=w\n"),
            kv(&[("a", "b # c"), ("url", "http://x:1/"), ("k", "v=w")])
        );
    }

    #[test]
    fn continuations_join_with_newlines_and_skip_comments() {
        assert_eq!(
            params("[params]\nk =\n  a\n\n  # no\n  b\nx = 1\n   more\n"),
            kv(&[("k", "a\nb"), ("x", "1\nmore")])
        );
    }

    #[test]
    fn section_lines_and_bracket_continuations() {
        let ini = parse_str("[params] # c\nk = v\n[not a section\n").unwrap();
        assert_eq!(ini.sections[0].get("k"), Some("v\n[not a section"));
    }

    #[test]
    fn errors_name_lines() {
        let e = parse_str("[params]\na = 1\na = 2\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("line 2"), "{e}");
        assert_eq!(parse_str("k = v\n").unwrap_err().line, 1);
        assert_eq!(parse_str("[params]\n  x\n").unwrap_err().line, 2);
        assert_eq!(parse_str("[]\n").unwrap_err().line, 1);
        assert_eq!(parse_str("[a]\nnothing\n").unwrap_err().line, 2);
        let e = parse_bytes(b"[params]\nk = \xff\n").unwrap_err();
        assert!(e.message.contains("offset 13"), "{e}");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn messages_quote_without_debug_formatting() {
        assert_eq!(quoted("a \"b\"\tc"), "`a \"b\"\\tc`");
        let e = parse_str("[params]\nno separator\n").unwrap_err();
        assert!(e.message.contains("`no separator`"), "{e}");
    }

    #[test]
    fn python_line_breaks_and_bom() {
        assert_eq!(
            params("\u{feff}[params]\r\na = 1\rb = 2\x0cc = 3\u{2028}d = \x1f4\x1f"),
            kv(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])
        );
    }
}
