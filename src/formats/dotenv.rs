//! `.env` reading, Compose-exact quoting and the statement positions that
//! merging needs.
//!
//! Docker Compose v2 reads `.env` (and `env_file:`) with its own dotenv
//! dialect (compose-go's `dotenv` package), which differs from shells and
//! from other dotenv libraries. This module reads it the same way:
//!
//! - blank space (Unicode) and `#` comment lines between statements are
//!   skipped; `export ` before a key is dropped; `KEY=value` or `KEY: value`;
//!   a key alone on its line takes its value from the process environment
//!   (ignored here: [`load`] never consults the process environment);
//! - unquoted values run to the end of the line, are cut at the first ` #`
//!   (space, hash) and trimmed at the right, then `$VAR`/`${VAR...}` are
//!   interpolated;
//! - `'single'` quotes are literal and may span lines (only `\'` is special);
//! - `"double"` quotes may span lines, understand `\n \r \t \\ \" \$` (and
//!   `\a \b \f \v`, `\0ooo` octal) and are interpolated.
//!
//! Interpolation takes earlier keys of the same file; an unset variable
//! becomes empty, as Compose does.
//!
//! [`quote`] picks, per value, a form that reads back verbatim, and this is
//! proven against the real `docker compose config` in `tests/it/ini2env_compose.rs`:
//! plain values (letters, digits, `_-.,/:@+=%^~`) are written bare; other
//! values without `'`, line breaks or a trailing `\` in single quotes (no
//! interpolation, no escapes); everything else in double quotes with `\\`,
//! `\"`, `\$`, `\n` and `\r` escaped — a trailing backslash is written as the
//! octal `\0134` so that older Compose v2 releases, which did not treat `\\`
//! before the closing quote as an escape, read it the same. A multi-line
//! value is therefore one physical line: `KEY="first\nsecond"`. The only
//! value that cannot be represented is one holding a NUL character (no
//! environment variable can).

use crate::formats::ini::{quoted, FastMap};
use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// One `KEY=value` statement of a `.env` file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub key: String,
    /// The value Compose sees (quotes removed, escapes and `${}` expanded).
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
    /// Byte offset where the statement (including a leading `export`) starts.
    pub start: usize,
    /// The value as written: quotes included; for unquoted values without
    /// the trailing blanks and ` #` comment.
    pub value_span: Range<usize>,
}

/// Why Compose would reject a `.env` file.
pub type ParseError = crate::error::LineError;

/// Go's `unicode.IsSpace` (Unicode White_Space, line breaks included).
fn go_is_space(c: char) -> bool {
    c.is_whitespace()
}

/// compose-go's `isSpace`: blanks that are not `\n`.
fn blank(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ' | '\u{85}' | '\u{a0}')
}

fn valid_key_char(c: char) -> bool {
    matches!(c, '_' | '.' | '-' | '[' | ']') || c.is_alphabetic() || c.is_numeric()
}

fn line_of(src: &str, offset: usize) -> usize {
    1 + src.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Parse `.env` text into its statements, in file order (a key may repeat;
/// the last one wins, as in Compose). Inherited keys (`KEY` alone) are
/// skipped.
pub fn parse(src: &str) -> Result<Vec<Statement>, ParseError> {
    let bom = if src.starts_with('\u{feff}') { 3 } else { 0 };
    let mut cur = Cursor {
        src,
        pos: bom,
        line_pos: 0,
        line_count: 1,
    };
    let mut out: Vec<Statement> = Vec::new();
    // Earlier keys, for interpolation: key -> index in `out`.
    let mut index: FastMap<&str, usize> = FastMap::default();
    loop {
        // 1. Statement start: skip blank space and comment lines.
        if !cur.next_statement() {
            return Ok(out);
        }
        let start = cur.pos;
        // 2. `export`, then the key up to `=`, `:` or a line end.
        cur.export(start)?;
        let Some((key_start, key, term)) = cur.key()? else {
            // A last line without `=`: Compose takes it as inherited.
            return Ok(out);
        };
        if term == '\n' {
            // Inherited from the process environment: not ours to read.
            continue;
        }
        let line = cur.line_at(key_start);
        // 3. The value: unquoted to the line end, or quoted.
        cur.skip_blanks();
        let value_start = cur.pos;
        let vars = Vars {
            index: &index,
            out: &out,
        };
        let (value, value_end) = match cur.rest().chars().next() {
            Some(q @ ('\'' | '"')) => cur.quoted_value(q, key, &vars)?,
            _ => cur.unquoted_value(key, &vars)?,
        };
        index.insert(key, out.len());
        out.push(Statement {
            key: key.to_string(),
            value,
            line,
            start,
            value_span: value_start..value_end,
        });
    }
}

/// Where [`parse`] is in the text.
struct Cursor<'a> {
    src: &'a str,
    pos: usize,
    /// The line of `line_pos`, counted once: offsets only grow.
    line_pos: usize,
    line_count: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, offset: usize, message: String) -> ParseError {
        ParseError {
            line: line_of(self.src, offset),
            message,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_blanks(&mut self) {
        self.pos += self
            .rest()
            .find(|c: char| !blank(c))
            .unwrap_or(self.src.len() - self.pos);
    }

    /// Skip blank space and comment lines; `false` at the end of the text.
    fn next_statement(&mut self) -> bool {
        loop {
            match self.rest().find(|c: char| !go_is_space(c)) {
                None => return false,
                Some(i) => self.pos += i,
            }
            if !self.rest().starts_with('#') {
                return true;
            }
            match self.rest().find('\n') {
                None => return false,
                Some(i) => self.pos += i,
            }
        }
    }

    /// Skip `export` followed by ASCII white space (Go's `\s`).
    fn export(&mut self, start: usize) -> Result<(), ParseError> {
        let rest = self.rest();
        if rest.starts_with("export") && rest[6..].starts_with(['\t', '\n', '\x0c', '\r', ' ']) {
            self.pos += 6;
            self.skip_blanks();
        }
        if self.pos >= self.src.len() {
            return Err(self.err(
                start,
                "`export` without a variable; write `export NAME=value` or remove it".into(),
            ));
        }
        Ok(())
    }

    /// The key (where it starts, the name) and what ends it: `=`, `:` or
    /// `\n`. `None` for a last line with none of them.
    fn key(&mut self) -> Result<Option<(usize, &'a str, char)>, ParseError> {
        let src = self.src;
        let key_start = self.pos;
        let mut terminator = None;
        for (i, c) in self.rest().char_indices() {
            if blank(c) {
                continue;
            }
            match c {
                '=' | ':' | '\n' => {
                    terminator = Some((key_start + i, c));
                    break;
                }
                c if valid_key_char(c) => {}
                c => {
                    // Only the name so far: the rest of the line may be a
                    // secret value.
                    return Err(self.err(
                        key_start + i,
                        format!(
                            "unexpected character {} after the variable name {}; \
                             names may hold letters, digits and `_.-[]`, followed by `=`",
                            quoted(&c.to_string()),
                            quoted(&src[key_start..key_start + i])
                        ),
                    ));
                }
            }
        }
        let Some((term, term_char)) = terminator else {
            return Ok(None);
        };
        let key = src[key_start..term].trim_end_matches(go_is_space);
        if key.contains(' ') {
            return Err(self.err(
                key_start,
                format!("variable name {} contains a space; remove it", quoted(key)),
            ));
        }
        self.pos = term + term_char.len_utf8();
        Ok(Some((key_start, key, term_char)))
    }

    /// The 1-based line of `offset`, at or after the previous one asked.
    fn line_at(&mut self, offset: usize) -> usize {
        self.line_count += self.src.as_bytes()[self.line_pos..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.line_pos = offset;
        self.line_count
    }

    /// An unquoted value: to the line end, cut at ` #`, trimmed at the
    /// right, interpolated. Returns it and where it ends in the text.
    fn unquoted_value(&mut self, key: &str, vars: &Vars) -> Result<(String, usize), ParseError> {
        let value_start = self.pos;
        let line_end = self
            .rest()
            .find('\n')
            .map_or(self.src.len(), |i| self.pos + i);
        let mut raw = &self.src[self.pos..line_end];
        if let Some(i) = raw.find(" #") {
            raw = &raw[..i];
        }
        let raw = raw.trim_end_matches(go_is_space);
        let value = substitute(raw, vars)
            .map_err(|m| self.err(value_start, format!("the value of {key}: {m}")))?;
        self.pos = line_end;
        Ok((value, value_start + raw.len()))
    }

    /// A value in `q` quotes, which may span lines; `"` values have their
    /// escapes expanded and are interpolated. Returns it and where it ends
    /// (after the closing quote).
    fn quoted_value(
        &mut self,
        q: char,
        key: &str,
        vars: &Vars,
    ) -> Result<(String, usize), ParseError> {
        let value_start = self.pos;
        let mut chars = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in self.src[self.pos + 1..].char_indices() {
            if escaped {
                escaped = false;
                if c != q {
                    chars.push('\\');
                }
                chars.push(c);
                continue;
            }
            if c == '\\' {
                escaped = true;
            } else if c == q {
                close = Some(self.pos + 1 + i);
                break;
            } else {
                chars.push(c);
            }
        }
        let Some(close) = close else {
            return Err(self.err(
                value_start,
                format!("the {q}-quoted value of {key} is never closed; add the closing {q}"),
            ));
        };
        let value = if q == '"' {
            substitute(&expand_escapes(&chars), vars)
                .map_err(|m| self.err(value_start, format!("the value of {key}: {m}")))?
        } else {
            chars
        };
        self.pos = close + 1;
        Ok((value, close + 1))
    }
}

/// The keys read so far, for `${}` (a repeated key: the latest value).
struct Vars<'a> {
    index: &'a FastMap<&'a str, usize>,
    out: &'a [Statement],
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.out[i].value.as_str())
    }
}

/// compose-go's escape expansion in double quotes. `\$` becomes `$$`, which
/// interpolation then turns into a literal `$`.
fn expand_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut next = after.chars();
        let (replacement, used): (Option<String>, usize) = match next.next() {
            Some('a') => (Some("\x07".into()), 1),
            Some('b') => (Some("\x08".into()), 1),
            Some('c') => (Some("\\c".into()), 1),
            Some('f') => (Some("\x0c".into()), 1),
            Some('n') => (Some("\n".into()), 1),
            Some('r') => (Some("\r".into()), 1),
            Some('t') => (Some("\t".into()), 1),
            Some('v') => (Some("\x0b".into()), 1),
            Some('$') => (Some("$$".into()), 1),
            Some('"') => (Some("\"".into()), 1),
            Some('\\') => (Some("\\".into()), 1),
            Some('0') => {
                let digits: String = after[1..]
                    .chars()
                    .take(3)
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                let used = 1 + digits.len();
                let octal = (digits.len() == 3)
                    .then(|| u32::from_str_radix(&digits, 8).ok())
                    .flatten()
                    .filter(|v| *v <= 255)
                    .and_then(char::from_u32);
                match octal {
                    Some(c) => (Some(c.to_string()), used),
                    // compose-go has already dropped the `0` when the
                    // octal conversion fails, and keeps what is left.
                    None => (Some(format!("\\{digits}")), used),
                }
            }
            _ => (None, 0),
        };
        match replacement {
            Some(r) => {
                out.push_str(&r);
                rest = &after[used..];
            }
            None => {
                out.push('\\');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_name_start(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Compose's `${}` interpolation against earlier keys of the file: `$$`,
/// `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
/// `${NAME:+alt}`, `${NAME+alt}`, `${NAME:?message}`, `${NAME?message}`
/// (nested in defaults). A `$` followed by anything else stays literal, but
/// a `${` that starts no valid reference is an error, as in Compose.
fn substitute(s: &str, vars: &Vars) -> Result<String, String> {
    substitute_nested(s, vars, 0)
}

/// How deep `${A:-${B:-...}}` may nest: far beyond any real file, and
/// keeps a hostile one from overflowing the stack.
const MAX_NESTING: usize = 64;

fn substitute_nested(s: &str, vars: &Vars, depth: usize) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "`${{...}}` nested more than {MAX_NESTING} levels deep; simplify the value"
        ));
    }
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&s[last..i]);
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(&c) if is_name_start(c) => {
                let mut j = i + 2;
                while j < b.len() && is_name_char(b[j]) {
                    j += 1;
                }
                out.push_str(vars.get(&s[i + 1..j]).unwrap_or(""));
                i = j;
            }
            Some(b'{') => match braced(s, i, vars, depth)? {
                Some((value, end)) => {
                    out.push_str(&value);
                    i = end;
                }
                None => {
                    // The value itself is not shown: it may be a secret.
                    return Err("invalid interpolation: `${` must start `${NAME}` or \
                                `${NAME:-default}`; write `$$` for a literal `$`"
                        .to_string());
                }
            },
            _ => {
                out.push('$');
                i += 1;
            }
        }
        last = i;
    }
    out.push_str(&s[last..]);
    Ok(out)
}

/// `${...}` starting at `start` (the `$`): the value and the offset after
/// the closing brace, or `None` when it is not a valid reference (no
/// closing brace, no name, or an unknown operator such as `:=`).
fn braced(
    s: &str,
    start: usize,
    vars: &Vars,
    nesting: usize,
) -> Result<Option<(String, usize)>, String> {
    let b = s.as_bytes();
    // The closing brace, counting nested `${`.
    let mut depth = 0usize;
    let mut j = start;
    let mut close = None;
    while j < b.len() {
        if b[j] == b'}' {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                close = Some(j);
                break;
            }
        }
        if b[j] == b'$' && b.get(j + 1) == Some(&b'{') {
            depth += 1;
            j += 1;
        }
        j += 1;
    }
    let Some(close) = close else {
        return Ok(None);
    };
    let inner = &s[start + 2..close];
    let ib = inner.as_bytes();
    if ib.is_empty() || !is_name_start(ib[0]) {
        return Ok(None);
    }
    let mut n = 1;
    while n < ib.len() && is_name_char(ib[n]) {
        n += 1;
    }
    let name = &inner[..n];
    let op = &inner[n..];
    let current = vars.get(name).map(str::to_string);
    let set_nonempty = current.as_ref().is_some_and(|v| !v.is_empty());
    let value = if op.is_empty() {
        current.clone().unwrap_or_default()
    } else if let Some(arg) = op.strip_prefix(":-") {
        if set_nonempty {
            current.clone().unwrap_or_default()
        } else {
            substitute_nested(arg, vars, nesting + 1)?
        }
    } else if let Some(arg) = op.strip_prefix(":+") {
        if set_nonempty {
            substitute_nested(arg, vars, nesting + 1)?
        } else {
            String::new()
        }
    } else if let Some(arg) = op.strip_prefix(":?") {
        if !set_nonempty {
            return Err(format!(
                "required variable {name} is missing a value: {}",
                substitute_nested(arg, vars, nesting + 1)?
            ));
        }
        current.clone().unwrap_or_default()
    } else if let Some(arg) = op.strip_prefix('-') {
        match current {
            Some(v) => v.clone(),
            None => substitute_nested(arg, vars, nesting + 1)?,
        }
    } else if let Some(arg) = op.strip_prefix('+') {
        match current {
            Some(_) => substitute_nested(arg, vars, nesting + 1)?,
            None => String::new(),
        }
    } else if let Some(arg) = op.strip_prefix('?') {
        match current {
            Some(v) => v.clone(),
            None => {
                return Err(format!(
                    "required variable {name} is missing a value: {}",
                    substitute_nested(arg, vars, nesting + 1)?
                ))
            }
        }
    } else {
        return Ok(None);
    };
    Ok(Some((value, close + 1)))
}

/// Read a `.env` file into a map of variable -> value, the way Docker
/// Compose v2 reads it (no interpolation of the process environment; a
/// repeated key keeps its last value). A syntax error Compose would reject
/// is a configuration error (exit 2) naming `path:line`.
///
/// `bytes` is the content of `path` (read by `deployment::load_env_file`).
pub fn load(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        crate::error::usage(format!(
            "{}: not valid UTF-8 at byte offset {}; save the file as UTF-8",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    let statements = parse(text).map_err(|e| {
        crate::error::usage(format!("{}:{}: {}", path.display(), e.line, e.message))
    })?;
    Ok(statements.into_iter().map(|s| (s.key, s.value)).collect())
}

/// A value no `.env` form can carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteError(pub String);

impl fmt::Display for QuoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuoteError {}

/// How a byte constrains the quoting of a value, as bit flags (a value's
/// constraint is the union of its bytes').
const PLAIN: u8 = 0; // may be written bare
const QUOTE: u8 = 1; // needs quotes; single quotes will do
const DOUBLE: u8 = 2; // `'`, `\n`, `\r`: needs double quotes and escapes
const NUL: u8 = 4; // cannot be carried at all

/// [`PLAIN`] for the bytes Compose reads verbatim when written bare (ASCII
/// letters, digits and `_-.,/:@+=%^~`), the other classes as above; every
/// byte of a multi-byte character is [`QUOTE`].
const CLASS: [u8; 256] = {
    let mut t = [QUOTE; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = PLAIN;
        }
        b += 1;
    }
    let plain = b"_-.,/:@+=%^~";
    let mut i = 0;
    while i < plain.len() {
        t[plain[i] as usize] = PLAIN;
        i += 1;
    }
    t[b'\'' as usize] = QUOTE | DOUBLE;
    t[b'\n' as usize] = QUOTE | DOUBLE;
    t[b'\r' as usize] = QUOTE | DOUBLE;
    t[0] = QUOTE | NUL;
    t
};

/// The right-hand side of `KEY=...` that Compose v2 reads back as exactly
/// `value` (see the module doc for the rules).
pub fn quote(value: &str) -> Result<String, QuoteError> {
    let mut out = String::with_capacity(value.len() + 2);
    quote_into(&mut out, value)?;
    Ok(out)
}

/// [`quote`], appending to `out` (nothing is appended on error).
pub fn quote_into(out: &mut String, value: &str) -> Result<(), QuoteError> {
    let class = value.bytes().fold(PLAIN, |c, b| c | CLASS[b as usize]);
    if class & NUL != 0 {
        return Err(QuoteError(
            "holds a NUL character, which no environment variable can carry".into(),
        ));
    }
    if value.is_empty() {
        out.push_str("''");
        return Ok(());
    }
    if class == PLAIN {
        out.push_str(value);
        return Ok(());
    }
    if class & DOUBLE == 0 && !value.ends_with('\\') {
        out.push('\'');
        out.push_str(value);
        out.push('\'');
        return Ok(());
    }
    out.push('"');
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_none() => out.push_str("\\0134"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> String {
        let s = parse(src).unwrap();
        assert_eq!(s.len(), 1, "{s:?}");
        s[0].value.clone()
    }

    #[test]
    fn reads_like_compose() {
        assert_eq!(one("A='it\\'s'"), "it's");
        assert_eq!(one("A=\"x\\\\\""), "x\\");
        assert_eq!(one("A=\"x\\0134\""), "x\\");
        assert_eq!(one("A='a\\b'"), "a\\b");
        assert_eq!(one("A=$$x"), "$x");
        assert_eq!(one("A=\"\\$HOME\""), "$HOME");
        assert_eq!(one("A='$HOME ${X}'"), "$HOME ${X}");
        assert_eq!(one("A=a#b"), "a#b");
        assert_eq!(one("A=a #b"), "a");
        assert_eq!(one("A= # c"), "# c");
        assert_eq!(one("A='' # c"), "");
        assert_eq!(one("A=\"\\n\\t\\r\""), "\n\t\r");
        assert_eq!(one("A='multi\nline'"), "multi\nline");
        assert_eq!(one("export  A : v  "), "v");
        assert_eq!(one("\u{feff}# c\n\n  A=$"), "$");
        assert_eq!(one("A=a\t#b"), "a\t#b");
    }

    #[test]
    fn interpolates_earlier_keys() {
        let s = parse("B=bee\nA=x${B:-${Y}}y $B.z ${X:-d} ${B:+alt} ${b} $Bx ${X:-a}}\n").unwrap();
        assert_eq!(s[1].value, "xbeey bee.z d alt   a}");
        assert!(parse("A=${X:?needed}\n").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("A={}x{}\n", "${B:-".repeat(100_000), "}".repeat(100_000));
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("nested more than"), "{e}");
        let ok = format!("A={}x{}\n", "${B:-".repeat(10), "}".repeat(10));
        assert_eq!(parse(&ok).unwrap()[0].value, "x");
    }

    #[test]
    fn rejects_what_compose_rejects() {
        assert_eq!(parse("A B=1\n").unwrap_err().line, 1);
        assert_eq!(parse("\nA=\"open\n").unwrap_err().line, 2);
        assert!(parse("A\"=1\n").is_err());
    }

    #[test]
    fn errors_never_show_values() {
        for src in [
            "PASS\"WORD=s3cret\n",
            "A=s3cret${\n",
            "A=\"s3cret${ x}\"\n",
            "A='s3cret\n",
        ] {
            let e = parse(src).unwrap_err();
            assert!(!e.message.contains("s3cret"), "{src:?}: {e}");
        }
        let e = parse("PASS\"WORD=s3cret\n").unwrap_err();
        assert!(e.message.contains("`PASS`"), "{e}");
        assert!(parse("A=x${\n").unwrap_err().message.contains("value of A"));
    }

    #[test]
    fn spans_cover_the_value_as_written() {
        let src = "A=1 # c\nexport B = 'x y'  # d\n";
        let s = parse(src).unwrap();
        assert_eq!(&src[s[0].value_span.clone()], "1");
        assert_eq!(&src[s[1].value_span.clone()], "'x y'");
        assert_eq!(&src[s[1].start..s[1].start + 6], "export");
        assert_eq!(s[1].line, 2);
    }

    #[test]
    fn quoting_round_trips() {
        for v in [
            "", "plain", "a b", "it's", "\"q\"", "$HOME", "${X}", "#", "a #b", "\\", "x\\", "\\'",
            " lead", "trail ", "\t", "a\nb", "a\r\nb", "ünï", "100%", "'", "\"", "$$", "\\0123",
            "end\\\"", "a\\",
        ] {
            let q = quote(v).unwrap();
            let line = format!("K={q}\n");
            assert_eq!(one(&line), v, "{line:?}");
        }
        assert!(quote("a\0b").is_err());
        assert_eq!(quote("10G").unwrap(), "10G");
        assert_eq!(quote("a b").unwrap(), "'a b'");
        assert_eq!(quote("a\nb").unwrap(), "\"a\\nb\"");
    }
}
