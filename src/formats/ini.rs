//! chatmail.ini parsing with the semantics of Python's `iniconfig`.
//!
//! The relay reads its configuration with `iniconfig.IniConfig(path)`, so
//! what a value *is* is decided by that library, not by the usual INI rules.
//! This module reproduces it exactly (differentially tested against
//! iniconfig 2.3.1 in `tests/it/ini2env_parse.rs`):
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

use anyhow::Result;
use hashbrown::HashTable;
use std::borrow::Cow;
use std::hash::BuildHasher;
use std::path::Path;

/// A parsed chatmail.ini: its sections in file order. Names, keys and
/// values borrow from the text; only a value continued over several lines
/// is a new string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ini<'a> {
    pub sections: Vec<Section<'a>>,
}

/// One `[section]` with its keys in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section<'a> {
    pub name: &'a str,
    /// 1-based line of the `[section]` header.
    pub line: usize,
    pub entries: Vec<Entry<'a>>,
}

/// One `key = value`; `value` has continuation lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: Cow<'a, str>,
    /// 1-based line where the key is.
    pub line: usize,
}

impl<'a> Ini<'a> {
    pub fn section(&self, name: &str) -> Option<&Section<'a>> {
        self.sections.iter().find(|s| s.name == name)
    }
}

impl Section<'_> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_ref())
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

/// The index of the first byte of `b` at or after `from` that is below
/// 0x20 or above 0x7E: the only bytes that can start a line break. Ordinary
/// text is skipped eight bytes at a time: a 64-bit word holds such a byte
/// if one of its bytes has the high bit set, is below 0x20 (subtracting
/// 0x20 from it borrows into its high bit) or is 0x7F (adding 1 carries
/// into it).
fn next_special(b: &[u8], mut from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(from..from + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if (x | x.wrapping_sub(ONES * 0x20) | x.wrapping_add(ONES)) & HIGH != 0 {
            break;
        }
        from += 8;
    }
    b[from.min(b.len())..]
        .iter()
        .position(|&c| !(0x20..0x7f).contains(&c))
        .map_or(b.len(), |i| from + i)
}

/// Split like `open(..., encoding="utf-8").read().splitlines()`, without the
/// line ends. Every line break is an ASCII control byte or starts with the
/// lead byte 0xC2 (U+0085) or 0xE2 (U+2028, U+2029), so a match is always
/// on a character boundary.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let b = rest.as_bytes();
        let mut i = next_special(b, 0);
        while i < b.len() {
            let len = match b[i] {
                b'\n' | 0x0b | 0x0c | 0x1c..=0x1e => 1,
                b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
                b'\r' => 1,
                0xc2 if b.get(i + 1) == Some(&0x85) => 2,
                0xe2 if b.get(i + 1) == Some(&0x80)
                    && matches!(b.get(i + 2), Some(0xa8 | 0xa9)) =>
                {
                    3
                }
                _ => {
                    i = next_special(b, i + 1);
                    continue;
                }
            };
            debug_assert!(is_line_break(rest[i..].chars().next().unwrap_or(' ')));
            let line = &rest[..i];
            rest = &rest[i + len..];
            return Some(line);
        }
        Some(std::mem::take(&mut rest))
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

/// [`py_isspace`] for an ASCII byte.
fn py_isspace_ascii(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r' | 0x1c..=0x1f)
}

#[inline]
fn py_strip(s: &str) -> &str {
    py_rstrip(py_lstrip(s))
}

/// Strip leading Python whitespace; ASCII bytes are checked directly, the
/// first non-ASCII byte hands over to the `char` test.
#[inline]
fn py_lstrip(s: &str) -> &str {
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b >= 0x80 {
            return s[i..].trim_start_matches(py_isspace);
        }
        if !py_isspace_ascii(b) {
            return &s[i..];
        }
    }
    ""
}

/// Strip trailing Python whitespace (ASCII fast path as in [`py_lstrip`]).
#[inline]
fn py_rstrip(s: &str) -> &str {
    for (i, &b) in s.as_bytes().iter().enumerate().rev() {
        if b >= 0x80 {
            // The last byte of a character: everything after it is ASCII.
            return s[..=i].trim_end_matches(py_isspace);
        }
        if !py_isspace_ascii(b) {
            return &s[..=i];
        }
    }
    ""
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

/// The error for bytes that are not UTF-8 from `offset` on.
fn not_utf8(bytes: &[u8], offset: usize) -> ParseError {
    ParseError {
        line: 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count(),
        message: format!("not valid UTF-8 at byte offset {offset}; save the file as UTF-8"),
    }
}

/// Parse chatmail.ini bytes. Errors carry the 1-based line.
pub fn parse_bytes(bytes: &[u8]) -> Result<Ini<'_>, ParseError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_str(text),
        Err(e) => Err(not_utf8(bytes, e.valid_up_to())),
    }
}

/// Parse chatmail.ini text. Errors carry the 1-based line.
///
/// iniconfig works in two passes: line syntax first (an error there wins,
/// wherever it is), then sections and duplicates in line order. This is one
/// pass that remembers the first error of the second kind and keeps
/// checking syntax to the end.
pub fn parse_str(text: &str) -> Result<Ini<'_>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: usize, message: String| ParseError { line, message };

    let mut ini = Ini::default();
    // The first section or duplicate error; once set, `ini` is not built.
    let mut pending: Option<ParseError> = None;
    let mut last = Last::Nothing;
    // Where each key of the current section is, for duplicate checks.
    // The current section's keys, as indices into its entries. Sized for a
    // file of ordinary lines, so a large one is not rehashed over and over.
    let hasher = rustc_hash::FxBuildHasher;
    let mut keys: HashTable<u32> = HashTable::with_capacity(text.len() / 32);
    // A capacity hint for a section's entries: one per 16 bytes left in the
    // file, more than ordinary `key = value` lines need. Reserved but
    // unwritten capacity costs no memory, while growing a large section
    // step by step copies it over and over.
    let room = |line: &str| (text.len() - (line.as_ptr() as usize - text.as_ptr() as usize)) / 16;
    for (idx, raw) in split_lines(text).enumerate() {
        let lineno = idx + 1;
        if matches!(py_lstrip(raw).as_bytes().first(), None | Some(b'#' | b';')) {
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
                        if let Some(previous) = ini.sections.last_mut() {
                            previous.entries.shrink_to_fit();
                        }
                        ini.sections.push(Section {
                            name,
                            line: lineno,
                            entries: Vec::with_capacity(room(raw) + 1),
                        });
                        keys.clear();
                    }
                }
                None
            } else {
                Some(py_strip(line))
            }
        } else if !line.starts_with(py_isspace) {
            // iniconfig splits at the first `=` unless the part before it
            // holds a `:`: that is, at whichever of the two comes first.
            let split = line
                .bytes()
                .position(|b| b == b'=' || b == b':')
                .map(|i| (&line[..i], &line[i + 1..]));
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
                        let entries = &section.entries;
                        let hash = hasher.hash_one(key);
                        if let Some(&i) = keys.find(hash, |&i| entries[i as usize].key == key) {
                            pending = Some(err(
                                lineno,
                                format!(
                                    "duplicate key {} in [{}] (first at line {}); keep one",
                                    quoted(key),
                                    section.name,
                                    entries[i as usize].line
                                ),
                            ));
                        } else {
                            let index = u32::try_from(entries.len()).map_err(|_| {
                                err(
                                    lineno,
                                    "more keys in one section than can be counted".into(),
                                )
                            })?;
                            keys.insert_unique(hash, index, |&i| {
                                hasher.hash_one(entries[i as usize].key)
                            });
                            section.entries.push(Entry {
                                key,
                                value: Cow::Borrowed(py_strip(value)),
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
                    let value = entry.value.to_mut();
                    if !value.is_empty() {
                        value.push('\n');
                    }
                    value.push_str(data);
                }
            }
        }
    }
    if let Some(last) = ini.sections.last_mut() {
        last.entries.shrink_to_fit();
    }
    match pending {
        Some(e) => Err(e),
        None => Ok(ini),
    }
}

/// `path:line: message` as a configuration error (exit 2).
fn at(path: &Path, e: ParseError) -> anyhow::Error {
    crate::error::usage(format!("{}:{}: {}", path.display(), e.line, e.message))
}

/// The text of the chatmail.ini at `path` from its bytes (read by
/// `deployment::read_ini`); bytes that are not UTF-8 are a configuration
/// error naming `path:line` and the offset. Parse the text with
/// [`parse_file`].
pub fn text(bytes: Vec<u8>, path: &Path) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        at(path, not_utf8(e.as_bytes(), offset))
    })
}

/// Parse the text of the chatmail.ini at `path` (see [`text`]).
/// A syntax error is a configuration error (exit 2) naming `path:line`.
pub fn parse_file<'a>(text: &'a str, path: &Path) -> Result<Ini<'a>> {
    parse_str(text).map_err(|e| at(path, e))
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
            .map(|e| (e.key.to_string(), e.value.to_string()))
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

    /// The straightforward definition the byte scanner must agree with.
    fn split_lines_by_char(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if is_line_break(c) {
                out.push(&text[start..i]);
                let mut end = i + c.len_utf8();
                if c == '\r' && chars.peek().map(|&(_, n)| n) == Some('\n') {
                    chars.next();
                    end += 1;
                }
                start = end;
            }
        }
        if start < text.len() {
            out.push(&text[start..]);
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn byte_scanner_splits_like_python(
            // Runs of plain text with one odd character after each, so
            // that 8-byte chunks holding exactly one are common.
            s in "([a-z =:#~]{0,14}([\x00-\x1f\x7f]|\r\n|\u{85}|\u{2028}|\u{2029}|\u{2026}|\u{a0}|é|\u{1F600})){0,12}[a-z]{0,9}"
        ) {
            let got: Vec<&str> = split_lines(&s).collect();
            proptest::prop_assert_eq!(got, split_lines_by_char(&s));
        }

        #[test]
        fn strips_like_python(s in "([a-z]|[ \t\x0b\x0c\x1c-\x1f]|\u{85}|\u{a0}|\u{3000}|é){0,12}") {
            proptest::prop_assert_eq!(py_strip(&s), s.trim_matches(py_isspace));
            proptest::prop_assert_eq!(py_lstrip(&s), s.trim_start_matches(py_isspace));
            proptest::prop_assert_eq!(py_rstrip(&s), s.trim_end_matches(py_isspace));
        }
    }
}
