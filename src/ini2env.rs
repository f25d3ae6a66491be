//! `ini2env`: chatmail.ini `[params]` -> the appliance's `.env`.
//!
//! The container is configured through `.env`: every `[params]` key of the
//! relay's chatmail.ini, upper-cased (`mail_domain` -> `MAIL_DOMAIN`), and
//! the container's init writes them back into the relay's ini. This module
//! makes that trip exact and keeps the administrator's own `.env` intact:
//!
//! - the ini is read with the relay's semantics ([`crate::formats::ini`]); only
//!   `[params]` counts, other sections are reported and ignored;
//! - by default a key is written only when its value differs from the
//!   relay's default (the embedded `chatmail-ini-defaults.ini`, compared as
//!   exact strings); keys without a default are written whenever the ini has
//!   them, even empty, because the relay tells "empty" from "absent" for
//!   some of them (`iroh_relay`); `--all` writes every key;
//! - values are quoted with [`crate::formats::dotenv::quote`] so Compose reads them
//!   back byte for byte; a multi-line ini value (continuation lines) is one
//!   double-quoted line with `\n` escapes, e.g. `KEY="first\nsecond"`, and
//!   reaches the container as a variable holding real newlines. The way
//!   back is `key = <first line>` followed by each further line indented:
//!   iniconfig strips every line and skips blank and `#`/`;` lines, so a
//!   value read from an ini never has blank lines, lines starting with `#`
//!   or `;`, or blanks around a line, and that form reproduces it exactly;
//! - merging: a line the tool wrote ends in `# chatmail.ini:<hash>`, the
//!   first 8 hex digits of the SHA-256 of the value it wrote. Such lines
//!   follow chatmail.ini (updated in place, removed when the key falls back
//!   to its default or leaves the ini). Any other line setting a key the ini
//!   sets to something else — or a tool line whose value no longer matches
//!   its hash, i.e. edited by hand — is a conflict: nothing is written and
//!   the keys are named, unless `--force` lets the ini win. A hand-set line
//!   that already agrees is adopted (it gets the marker). Other lines,
//!   comments and their order are never touched;
//! - the new `.env` is checked by reading it back before it is written
//!   atomically with mode 0600, after saving the previous one as `.env.bak`.
//!
//! Reports name keys, never values: `.env` may hold secrets. Only `--stdout`
//! (explicit) and `--check --show-values` print values.

use anyhow::{bail, Context as _, Result};
use hashbrown::HashTable;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fs;
use std::hash::BuildHasher;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::context::Context;
use crate::error;
use crate::formats::dotenv;
use crate::formats::ini::{self, FastMap, Ini};
use crate::host;

/// The relay's `[params]` defaults (see the file's header for provenance).
pub const DEFAULTS_INI: &str = include_str!("chatmail-ini-defaults.ini");

/// The comment that marks a line as written from chatmail.ini.
const MARKER: &str = "# chatmail.ini:";

/// Written once above the first generated line.
const HEADER: &str =
    "# Lines ending in `# chatmail.ini:<hash>` are written by `chatmail-docker ini2env`\n\
# from chatmail.ini [params]: change chatmail.ini and rerun it rather than editing them.\n";

/// How `setup` and `migrate` ask for the conversion.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Write every key, not only those differing from the relay's defaults.
    pub all: bool,
    /// The ini wins over values the user set by hand in .env.
    pub force: bool,
}

/// What a conversion did (or would do under --dry-run).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Whether .env was (or would be) changed.
    pub changed: bool,
    /// Human-readable lines describing the changes (keys only, never values).
    pub lines: Vec<String>,
    /// Where the previous `.env` was (or would be) saved: only when an
    /// existing file's content changes.
    pub backup: Option<PathBuf>,
}

/// One `[params]` key as an environment variable, borrowing from the ini
/// text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Var<'a> {
    /// The ini key (`mail_domain`); the variable is [`Var::name`].
    pub key: &'a str,
    pub value: Cow<'a, str>,
    /// 1-based line of the key in chatmail.ini. (`u32` keeps a `Var` the
    /// size of an [`ini::Entry`], so [`vars`] converts the entries in place
    /// instead of copying a large file's worth of them.)
    pub line: u32,
    /// Whether it goes into `.env` (differs from the default, or `--all`).
    pub write: bool,
}

impl Var<'_> {
    /// The variable name (`MAIL_DOMAIN`).
    pub fn name(&self) -> String {
        self.key.to_ascii_uppercase()
    }
}

/// The relay's defaults, parsed once.
pub fn defaults() -> &'static FastMap<&'static str, Cow<'static, str>> {
    static DEFAULTS: OnceLock<FastMap<&'static str, Cow<'static, str>>> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        ini::parse_str(DEFAULTS_INI)
            .ok()
            .and_then(|mut i| {
                let at = i.sections.iter().position(|s| s.name == "params")?;
                Some(i.sections.swap_remove(at))
            })
            .map(|s| s.entries.into_iter().map(|e| (e.key, e.value)).collect())
            .unwrap_or_default()
    })
}

fn valid_name(key: &str) -> bool {
    let b = key.as_bytes();
    b.first()
        .is_some_and(|&c| c == b'_' || c.is_ascii_alphabetic())
        && b.iter().all(|&c| c == b'_' || c.is_ascii_alphanumeric())
}

/// The `[params]` of `ini` as environment variables, in ini order. `path`
/// is only for messages. Errors (exit 2) for a missing `[params]` or
/// `mail_domain`, a key that is no valid variable name, two keys that
/// upper-case to the same name, or a value `.env` cannot carry.
pub fn vars<'a>(ini: Ini<'a>, path: &Path, all: bool) -> Result<Vec<Var<'a>>> {
    let shown = path.display();
    let Some(params) = ini.sections.into_iter().find(|s| s.name == "params") else {
        return Err(error::usage(format!(
            "{shown} has no [params] section; it is not a chatmail.ini"
        )));
    };
    if params.get("mail_domain").is_none_or(|d| d.is_empty()) {
        return Err(error::usage(format!(
            "{shown}: [params] has no mail_domain; set `mail_domain = your.domain`"
        )));
    }
    let defaults = (!all).then(defaults);
    for e in &params.entries {
        if !valid_name(e.key) {
            return Err(error::usage(format!(
                "{shown}:{}: key {} cannot become an environment variable; \
                 use letters, digits and `_`, not starting with a digit",
                e.line,
                ini::quoted(e.key)
            )));
        }
        if e.value.as_bytes().contains(&0) {
            return Err(error::usage(format!(
                "{shown}:{}: the value of {} holds a NUL character, which no environment \
                 variable can carry",
                e.line, e.key
            )));
        }
    }
    // Keys are case-sensitive in the ini, names are not: find clashes.
    // (Valid names are ASCII, so comparing keys without ASCII case is
    // comparing names; the table holds indices into the entries.)
    let entries = &params.entries;
    let hasher = rustc_hash::FxBuildHasher;
    let name_hash = |key: &str| hasher.hash_one(key.to_ascii_uppercase());
    let mut seen: HashTable<usize> = HashTable::with_capacity(entries.len());
    let mut name = String::new();
    for (i, second) in entries.iter().enumerate() {
        name.clear();
        name.push_str(second.key);
        name.make_ascii_uppercase();
        let hash = hasher.hash_one(&name);
        let same = |&j: &usize| entries[j].key.eq_ignore_ascii_case(second.key);
        if let Some(&j) = seen.find(hash, same) {
            return Err(error::usage(format!(
                "{shown}:{}: key {} and the key on line {} both become {}; keep one",
                second.line,
                ini::quoted(second.key),
                entries[j].line,
                second.key.to_ascii_uppercase()
            )));
        }
        seen.insert_unique(hash, i, |&j| name_hash(entries[j].key));
    }
    drop(seen);
    let out = params
        .entries
        .into_iter()
        .map(|e| Var {
            write: defaults.is_none_or(|d| d.get(e.key) != Some(&e.value)),
            key: e.key,
            value: e.value,
            line: u32::try_from(e.line).unwrap_or(u32::MAX),
        })
        .collect();
    Ok(out)
}

/// The `KEY=value` lines for `vars` that are written, into a writer one
/// line at a time (`--stdout` streams a large ini instead of building its
/// whole output first).
pub fn write_vars(vars: &[Var], out: &mut impl Write) -> Result<()> {
    let mut line = String::new();
    for v in vars.iter().filter(|v| v.write) {
        line.clear();
        line.push_str(v.key);
        // Keys are ASCII (checked by `vars`): upper-casing them is the name.
        line.make_ascii_uppercase();
        line.push('=');
        dotenv::quote_into(&mut line, &v.value)
            .map_err(|e| anyhow::anyhow!("{}: {e}", v.name()))?;
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

fn digest(value: &str) -> String {
    let d = Sha256::digest(value.as_bytes());
    hex::encode(&d[..4])
}

fn managed_line(name: &str, value: &str) -> Result<String> {
    let mut line = String::with_capacity(name.len() + value.len() + 32);
    push_managed(&mut line, name, value)?;
    Ok(line)
}

/// Append `NAME=value  # chatmail.ini:<hash>` (no newline) to `out`.
fn push_managed(out: &mut String, name: &str, value: &str) -> Result<()> {
    out.push_str(name);
    out.push('=');
    dotenv::quote_into(out, value).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    out.push_str("  ");
    out.push_str(MARKER);
    out.push_str(&digest(value));
    Ok(())
}

/// How a `.env` statement relates to the tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Written by the tool and unchanged since.
    Tool,
    /// Written by the tool, value edited by hand since.
    Edited,
    /// Written by hand.
    Hand,
}

struct Found {
    st: dotenv::Statement,
    owner: Owner,
    /// From the value's start to the end of the marker (or of the value);
    /// when another statement follows on the same line, up to that one.
    replace: Range<usize>,
    /// Another statement follows on the same line (after a quoted value):
    /// a replacement must end the line, or the marker comment would swallow
    /// that statement.
    shares_line: bool,
    /// The whole line(s), newline included, for removal; only this
    /// statement when it shares its line with another.
    whole: Range<usize>,
}

fn inspect(text: &str, st: dotenv::Statement) -> Found {
    let end = st.value_span.end;
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    let tail = &text[end..line_end];
    let trimmed = tail.trim_start();
    let lead = tail.len() - trimmed.len();
    let mut owner = Owner::Hand;
    let mut replace_end = end;
    if let Some(rest) = trimmed.strip_prefix(MARKER) {
        let hash: String = rest.chars().take(8).collect();
        if hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
            owner = if hash == digest(&st.value) {
                Owner::Tool
            } else {
                Owner::Edited
            };
            replace_end = end + lead + MARKER.len() + 8;
        }
    }
    // After a quoted value, anything but blanks or a `#` comment is the
    // next statement (`A='1' B=2`).
    let shares_line = owner == Owner::Hand && !(trimmed.is_empty() || trimmed.starts_with('#'));
    if shares_line {
        replace_end = end + lead;
    }
    let line_start = text[..st.start].rfind('\n').map_or(0, |i| i + 1);
    // The whole line, unless another statement shares it: then only this
    // statement goes and the line break stays.
    let own_line = text[line_start..st.start].trim().is_empty();
    let (whole_start, whole_end) = if shares_line {
        (st.start, replace_end)
    } else if own_line {
        (line_start, (line_end + 1).min(text.len()))
    } else {
        (st.start, line_end)
    };
    Found {
        replace: st.value_span.start..replace_end,
        shares_line,
        whole: whole_start..whole_end,
        st,
        owner,
    }
}

/// A computed merge: the new `.env` text and what changes.
#[derive(Clone, Debug)]
pub struct Merge {
    pub text: String,
    /// Keys only.
    pub actions: Vec<String>,
    /// Notes for `-v` (duplicates, hand-set keys left alone).
    pub notes: Vec<String>,
}

/// Merge `vars` into the `.env` text `old` (empty when there is none).
/// `env_name` is only for messages. Conflicts are an error (exit 2) unless
/// `force`.
pub fn merge(old: &str, env_name: &str, vars: &[Var], force: bool) -> Result<Merge> {
    // 1. What .env has now.
    let existing = Existing::parse(old, env_name)?;
    let var_names: Vec<String> = vars.iter().map(Var::name).collect();
    let names: HashSet<&str> = var_names.iter().map(String::as_str).collect();

    // 2. The edits: each chatmail.ini key, then tool lines for keys that
    // left chatmail.ini.
    let mut plan = MergePlan {
        env_name,
        force,
        edits: Vec::new(),
        appends: String::new(),
        actions: Vec::new(),
        notes: Vec::new(),
        conflicts: Vec::new(),
    };
    for (v, name) in vars.iter().zip(&var_names) {
        plan.key(v, name, existing.all(name))?;
    }
    for key in existing.keys_not_in(&names) {
        plan.departed(key, &existing.occurrences[key]);
    }
    if !plan.conflicts.is_empty() {
        return Err(error::usage(format!(
            "{env_name} has values set by hand that differ from chatmail.ini:\n  {}\n\
             Change chatmail.ini, remove those lines from {env_name}, or rerun with --force \
             to let chatmail.ini win; nothing was written",
            plan.conflicts.join("\n  ")
        )));
    }

    // 3. The new text.
    let text = splice(old, plan.edits, &plan.appends, env_name)?;

    // 4. Read the result back the way Compose will before anyone writes it.
    let check = dotenv::parse(&text)
        .map_err(|e| anyhow::anyhow!("internal error: the merged .env does not parse: {e}"))?;
    let got: FastMap<&str, &str> = check
        .iter()
        .map(|s| (s.key.as_str(), s.value.as_str()))
        .collect();
    for (v, name) in vars.iter().zip(&var_names).filter(|(v, _)| v.write) {
        if got.get(name.as_str()) != Some(&v.value.as_ref()) {
            bail!("internal error: {name} would not read back as written");
        }
    }
    // The user's own variables are all still there.
    for key in existing.keys_not_in(&names) {
        let kept = existing.occurrences[key]
            .iter()
            .any(|f| f.owner == Owner::Hand);
        if kept && !got.contains_key(key.as_str()) {
            bail!("internal error: {key} would be lost from {env_name}; nothing was written");
        }
    }
    Ok(Merge {
        text,
        actions: plan.actions,
        notes: plan.notes,
    })
}

/// The statements of the old `.env`, by key.
struct Existing {
    /// Every occurrence of each key, in file order: the last one counts.
    occurrences: FastMap<String, Vec<Found>>,
    keys_in_order: Vec<String>,
}

impl Existing {
    fn parse(old: &str, env_name: &str) -> Result<Existing> {
        let statements = dotenv::parse(old).map_err(|e| {
            error::usage(format!(
                "{env_name}:{}: {} (Docker Compose would reject this file too; fix that line)",
                e.line, e.message
            ))
        })?;
        let mut occurrences: FastMap<String, Vec<Found>> = FastMap::default();
        let mut keys_in_order: Vec<String> = Vec::new();
        for st in statements {
            let list = occurrences.entry(st.key.clone()).or_default();
            if list.is_empty() {
                keys_in_order.push(st.key.clone());
            }
            list.push(inspect(old, st));
        }
        Ok(Existing {
            occurrences,
            keys_in_order,
        })
    }

    fn all(&self, name: &str) -> &[Found] {
        self.occurrences.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Keys of `.env` that are not among `names`, in file order.
    fn keys_not_in<'s>(&'s self, names: &'s HashSet<&str>) -> impl Iterator<Item = &'s String> {
        self.keys_in_order
            .iter()
            .filter(|k| !names.contains(k.as_str()))
    }
}

/// What the merge changes, collected key by key.
struct MergePlan<'e> {
    env_name: &'e str,
    force: bool,
    /// Replacements of byte ranges of the old text; never overlapping.
    edits: Vec<(Range<usize>, String)>,
    /// New lines, in ini order, appended after the existing text.
    appends: String,
    actions: Vec<String>,
    notes: Vec<String>,
    conflicts: Vec<String>,
}

impl MergePlan<'_> {
    /// One chatmail.ini key `v` (variable `name`), found at `all` in `.env`.
    fn key(&mut self, v: &Var, name: &str, all: &[Found]) -> Result<()> {
        let env_name = self.env_name;
        let force = self.force;
        let Some(f) = all.last() else {
            if v.write {
                push_managed(&mut self.appends, name, &v.value)?;
                self.appends.push('\n');
                self.actions
                    .push(format!("add {} (chatmail.ini line {})", name, v.line));
            }
            return Ok(());
        };
        if all.len() > 1 {
            self.notes.push(format!(
                "{} is set {} times in {env_name}; only the last (line {}) counts",
                name,
                all.len(),
                f.st.line
            ));
        }
        let same = f.st.value == v.value;
        let ours = f.owner == Owner::Tool;
        // An empty line set by hand (`MAIL_DOMAIN=` copied from
        // docker/example.env) is a blank to fill in, not a choice that
        // conflicts with chatmail.ini.
        let placeholder = f.owner == Owner::Hand && f.st.value.is_empty() && !same;
        if !same && !ours && !force && !placeholder {
            self.conflicts.push(format!(
                "{} ({env_name} line {}{}, chatmail.ini line {})",
                name,
                f.st.line,
                if f.owner == Owner::Edited {
                    ", edited by hand"
                } else {
                    ", set by hand"
                },
                v.line
            ));
            return Ok(());
        }
        let by_hand = if f.owner == Owner::Tool || same || placeholder {
            ""
        } else {
            "; --force: replaces a value set by hand"
        };
        if v.write {
            if same && ours {
                return Ok(());
            }
            let mut with = managed_line(name, &v.value)?[name.len() + 1..].to_string();
            if f.shares_line {
                with.push('\n');
            }
            self.edits.push((f.replace.clone(), with));
            self.actions.push(if same {
                format!(
                    "adopt {} (already equal to chatmail.ini line {})",
                    name, v.line
                )
            } else if placeholder {
                format!(
                    "fill in {} (empty in {env_name}, chatmail.ini line {})",
                    name, v.line
                )
            } else {
                format!("update {} (chatmail.ini line {}{by_hand})", name, v.line)
            });
        } else if ours || (!same && (force || placeholder)) {
            // Removing the last line would let an earlier one count: go
            // through all of them.
            for g in all {
                if g.owner == Owner::Tool || force || (placeholder && g.st.value.is_empty()) {
                    self.edits.push((g.whole.clone(), String::new()));
                } else if g.st.value != v.value {
                    self.conflicts.push(format!(
                        "{} ({env_name} line {}, set by hand, chatmail.ini line {})",
                        name, g.st.line, v.line
                    ));
                }
            }
            self.actions.push(format!(
                "remove {} (chatmail.ini line {} sets the relay's default{by_hand})",
                name, v.line
            ));
        } else {
            self.notes.push(format!(
                "{} is set by hand in {env_name} (line {}) to chatmail.ini's value",
                name, f.st.line
            ));
        }
        Ok(())
    }

    /// A key of `.env` no longer in chatmail.ini: its tool lines go,
    /// hand-set ones stay.
    fn departed(&mut self, key: &str, found: &[Found]) {
        let mut removed = false;
        for f in found {
            match f.owner {
                Owner::Hand => {}
                Owner::Edited if !self.force => self.conflicts.push(format!(
                    "{key} ({} line {}, edited by hand, no longer in chatmail.ini)",
                    self.env_name, f.st.line
                )),
                _ => {
                    self.edits.push((f.whole.clone(), String::new()));
                    removed = true;
                }
            }
        }
        if removed {
            self.actions
                .push(format!("remove {key} (no longer in chatmail.ini)"));
        }
    }
}

/// Apply `edits` to `old` in one pass and append `appends` (below the
/// header, written once).
fn splice(
    old: &str,
    mut edits: Vec<(Range<usize>, String)>,
    appends: &str,
    env_name: &str,
) -> Result<String> {
    edits.sort_by_key(|(r, _)| r.start);
    let mut text = String::with_capacity(old.len() + appends.len() + HEADER.len() + 2);
    let mut at = 0;
    for (range, with) in edits {
        if range.start < at {
            bail!("internal error: overlapping edits of {env_name}; nothing was written");
        }
        text.push_str(&old[at..range.start]);
        text.push_str(&with);
        at = range.end;
    }
    text.push_str(&old[at..]);
    if !appends.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.contains(HEADER) {
            if !text.trim().is_empty() {
                text.push('\n');
            }
            text.push_str(HEADER);
        }
        text.push_str(appends);
    }
    Ok(text)
}

/// The backup path: `.env` -> `.env.bak`.
pub fn backup_path(env: &Path) -> PathBuf {
    let mut name = env.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    env.with_file_name(name)
}

/// What the merge would write, and what is there now.
struct Planned {
    old: Option<String>,
    merge: Merge,
    mode_wrong: bool,
}

fn plan(ctx: &Context, ini_path: &Path, env: &Path, opts: &Options) -> Result<Planned> {
    let (ini_bytes, ini_id) = read_ini_input(ini_path)?;
    let text = ini::text(ini_bytes, ini_path)?;
    let ini = ini::parse_file(&text, ini_path)?;
    for s in ini.sections.iter().filter(|s| s.name != "params") {
        ctx.shell.note(format!(
            "{}: [{}] (line {}) ignored: only [params] becomes environment",
            ini_path.display(),
            s.name,
            s.line
        ));
    }
    let vars = vars(ini, ini_path, opts.all)?;
    let (old, mode_wrong) = match host::read_input_with_id(env, host::MAX_CONFIG_BYTES) {
        Ok((bytes, env_id)) => {
            if env_id == ini_id {
                return Err(error::usage(format!(
                    "{} is {} itself: the output can never be the input; pass --env the .env to write",
                    env.display(),
                    ini_path.display()
                )));
            }
            let text = String::from_utf8(bytes).map_err(|e| {
                error::usage(format!(
                    "{}: not valid UTF-8 at byte offset {}; save the file as UTF-8",
                    env.display(),
                    e.utf8_error().valid_up_to()
                ))
            })?;
            let mode = fs::metadata(env)
                .with_context(|| format!("cannot read {}", env.display()))?
                .permissions()
                .mode()
                & 0o7777;
            (Some(text), mode != 0o600)
        }
        Err(e) if e.is_missing() => (None, false),
        Err(e) => return Err(e.into_error()),
    };
    let merge = merge(
        old.as_deref().unwrap_or(""),
        &env.display().to_string(),
        &vars,
        opts.force,
    )?;
    Ok(Planned {
        old,
        merge,
        mode_wrong,
    })
}

/// Read the ini through the host's input rules; a missing one says how to
/// name it.
fn read_ini_input(ini_path: &Path) -> Result<(Vec<u8>, host::FileId)> {
    match host::read_input_with_id(ini_path, host::MAX_CONFIG_BYTES) {
        Ok(read) => Ok(read),
        Err(e) if e.is_missing() => Err(error::usage(format!(
            "no chatmail.ini at {}; pass --ini PATH or --dir to the deployment directory",
            ini_path.display()
        ))),
        Err(e) => Err(e.into_error()),
    }
}

/// How often a `.env` edited while it is merged is read again before the
/// run stops.
const ATTEMPTS: usize = 3;

/// Convert `ini` into `env` (merging), honouring `ctx.dry_run`. A `.env`
/// that changes between reading and replacing it is read again (a hand
/// edit is never overwritten); the run stops if it keeps changing.
pub fn sync_env(ctx: &Context, ini: &Path, env: &Path, opts: &Options) -> Result<Report> {
    let mut attempt = 1;
    loop {
        let p = plan(ctx, ini, env, opts)?;
        match apply(ctx, env, p) {
            Err(e) if e.is::<host::ChangedMeanwhile>() && attempt < ATTEMPTS => {
                ctx.shell.verbose(format!(
                    "{} changed while it was merged; reading it again",
                    env.display()
                ));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Write what [`plan`] computed, unless `env` changed since it was read.
fn apply(ctx: &Context, env: &Path, p: Planned) -> Result<Report> {
    for n in &p.merge.notes {
        ctx.shell.verbose(n);
    }
    let content_changed = p.old.as_deref() != Some(p.merge.text.as_str());
    let mut lines = p.merge.actions;
    if p.old.is_none() {
        lines.insert(0, format!("create {}", env.display()));
    }
    if !content_changed && p.mode_wrong {
        lines.push(format!("set the mode of {} to 0600", env.display()));
    }
    let changed = content_changed || p.mode_wrong;
    let backup = (content_changed && p.old.is_some()).then(|| backup_path(env));
    if changed && !ctx.dry_run {
        if content_changed {
            if let (Some(old), Some(backup)) = (&p.old, &backup) {
                host::write_atomic_nofollow(backup, old.as_bytes(), 0o600)?;
            }
            host::write_atomic_with(
                env,
                p.merge.text.as_bytes(),
                0o600,
                host::WriteOpts {
                    follow: true,
                    expect: Some(p.old.as_deref().map(str::as_bytes)),
                },
            )?;
            ctx.env_written();
        } else {
            fs::set_permissions(env, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot set the mode of {}", env.display()))?;
        }
    }
    Ok(Report {
        changed,
        lines,
        backup,
    })
}

/// Render the change as a unified diff. Values are hidden unless
/// `show_values`: a line `KEY=...` shows as `KEY=…` (a marker's hash, being
/// derived from the value, as `# chatmail.ini:…`), other non-comment lines
/// (inside multi-line values) as `…`.
pub fn diff(old: &str, new: &str, name: &str, show_values: bool) -> String {
    let redact = |line: &str| -> String {
        if show_values {
            return line.to_string();
        }
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            return line.to_string();
        }
        let body = t.strip_prefix("export ").unwrap_or(t);
        match body.find(['=', ':']) {
            Some(i)
                if body[..i]
                    .trim()
                    .chars()
                    .all(|c| c == '_' || c.is_alphanumeric()) =>
            {
                let tail = &body[i + 1..];
                // The marker's hash is derived from the value: hidden too.
                let marked = if tail.contains(MARKER) {
                    format!("  {MARKER}…")
                } else {
                    String::new()
                };
                format!("{}=…{marked}", body[..i].trim())
            }
            _ => "…".into(),
        }
    };
    let d = similar::TextDiff::from_lines(old, new);
    let mut out = format!("--- {name}\n+++ {name} (from chatmail.ini)\n");
    for group in d.grouped_ops(2) {
        for op in group {
            for change in d.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                    similar::ChangeTag::Equal => ' ',
                };
                let line = change.value().trim_end_matches('\n');
                out.push(sign);
                out.push_str(&redact(line));
                out.push('\n');
            }
        }
        out.push_str("@@\n");
    }
    out
}

/// What `chatmail-docker ini2env` does with the conversion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Merge into `.env` (the default).
    #[default]
    Write,
    /// Print the variables instead of writing.
    Stdout,
    /// Say whether `.env` is up to date; change nothing. `show_values`
    /// puts values into the diff (hidden by default: `.env` may hold secrets).
    Check { show_values: bool },
}

/// `chatmail-docker ini2env`'s files and mode.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The relay's ini; `DIR/chatmail.ini` when `None`.
    pub ini: Option<PathBuf>,
    /// The `.env` to merge into; `DIR/.env` when `None`.
    pub env: Option<PathBuf>,
    pub output: Output,
    pub merge: Options,
}

/// `chatmail-docker ini2env`.
pub fn run(ctx: &Context, args: &RunOptions) -> Result<()> {
    let ini_path = args.ini.clone().unwrap_or_else(|| ctx.deployment.ini());
    let env = args
        .env
        .clone()
        .unwrap_or_else(|| ctx.deployment.env_file());
    let opts = &args.merge;
    if args.output == Output::Stdout {
        let text = ini::text(read_ini_input(&ini_path)?.0, &ini_path)?;
        let ini = ini::parse_file(&text, &ini_path)?;
        let vars = vars(ini, &ini_path, opts.all)?;
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        let written = write_vars(&vars, &mut out).and_then(|()| Ok(out.flush()?));
        return match written {
            // A closed pipe (`| head`) is not an error worth reporting.
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
            {
                Ok(())
            }
            other => other.context("cannot write to standard output"),
        };
    }
    if let Output::Check { show_values } = args.output {
        let p = plan(ctx, &ini_path, &env, opts)?;
        let old = p.old.as_deref().unwrap_or("");
        if p.old.is_some() && old == p.merge.text {
            if p.mode_wrong {
                ctx.shell.warn(format!(
                    "{} is up to date but not mode 0600; run `chatmail-docker ini2env` to fix",
                    env.display()
                ));
                return Err(error::silent(error::EXIT_RUNTIME));
            }
            ctx.shell
                .status("Fresh", format!("{} matches chatmail.ini", env.display()));
            return Ok(());
        }
        ctx.shell
            .out(diff(old, &p.merge.text, &env.display().to_string(), show_values).trim_end());
        ctx.shell.error(format!(
            "{} is out of date with chatmail.ini ({}); run `chatmail-docker ini2env` to update it",
            env.display(),
            if p.merge.actions.is_empty() {
                "missing".to_string()
            } else {
                p.merge.actions.join(", ")
            }
        ));
        return Err(error::silent(error::EXIT_RUNTIME));
    }
    let report = sync_env(ctx, &ini_path, &env, opts)?;
    if !report.changed {
        ctx.shell
            .status("Fresh", format!("{} matches chatmail.ini", env.display()));
        return Ok(());
    }
    for line in &report.lines {
        ctx.shell.out(format!("  {line}"));
    }
    if ctx.dry_run {
        ctx.shell
            .status("Dry run", format!("{} not changed", env.display()));
    } else {
        let previous = match &report.backup {
            Some(b) => format!(" (previous version in {})", b.display()),
            None => String::new(),
        };
        ctx.shell
            .status("Updated", format!("{}{previous}", env.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars_of(ini: &str, all: bool) -> Vec<Var<'_>> {
        vars(ini::parse_str(ini).unwrap(), Path::new("chatmail.ini"), all).unwrap()
    }

    #[test]
    fn defaults_are_embedded() {
        assert_eq!(
            defaults().get("max_mailbox_size").map(|v| v.as_ref()),
            Some("500M")
        );
        assert_eq!(defaults().get("www_folder").map(|v| v.as_ref()), Some(""));
        assert!(defaults().len() >= 27);
    }

    #[test]
    fn only_non_defaults_unless_all() {
        let ini = "[params]\nmail_domain = x.org\nmax_mailbox_size = 500M\nprivacy_mail =\n";
        let w: Vec<_> = vars_of(ini, false)
            .into_iter()
            .filter(|v| v.write)
            .map(|v| v.name())
            .collect();
        assert_eq!(w, ["MAIL_DOMAIN", "PRIVACY_MAIL"]);
        assert!(vars_of(ini, true).iter().all(|v| v.write));
    }

    #[test]
    fn bad_keys_are_errors() {
        let bad = |ini: &str| {
            vars(ini::parse_str(ini).unwrap(), Path::new("c.ini"), false)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[params]\nmail_domain = x\nmax-size = 1\n").contains("c.ini:3"));
        assert!(bad("[params]\nmail_domain = x\nfoo = 1\nFOO = 2\n").contains("line 3"));
        assert!(bad("[params]\nmax_mailbox_size = 1\n").contains("mail_domain"));
        assert!(bad("[other]\na = 1\n").contains("[params]"));
    }

    #[test]
    fn merge_keeps_user_lines_and_is_idempotent() {
        let v = vars_of(
            "[params]\nmail_domain = new.org\nmax_mailbox_size = 1G\n",
            false,
        );
        let old = "# mine\nDEBUG=1 # keep\nMAIL_DOMAIN=new.org\n";
        let m = merge(old, ".env", &v, false).unwrap();
        assert!(
            m.text
                .starts_with("# mine\nDEBUG=1 # keep\nMAIL_DOMAIN=new.org  # chatmail.ini:"),
            "{}",
            m.text
        );
        assert!(m.text.contains("MAX_MAILBOX_SIZE=1G  # chatmail.ini:"));
        let again = merge(&m.text, ".env", &v, false).unwrap();
        assert_eq!(again.text, m.text);
        assert!(again.actions.is_empty());

        // The ini changes: tool lines follow; back to default: removed.
        let v2 = vars_of(
            "[params]\nmail_domain = other.org\nmax_mailbox_size = 500M\n",
            false,
        );
        let m2 = merge(&m.text, ".env", &v2, false).unwrap();
        assert!(m2.text.contains("MAIL_DOMAIN=other.org  # chatmail.ini:"));
        assert!(!m2.text.contains("MAX_MAILBOX_SIZE"));
        assert!(m2.text.starts_with("# mine\nDEBUG=1 # keep\n"));
    }

    #[test]
    fn removal_keeps_a_shared_line() {
        let v = vars_of("[params]\nmail_domain = x.org\n", false);
        let old = "MAIL_DOMAIN=x.org  # chatmail.ini:a1b2c3d4\nA='1' GONE=2  # chatmail.ini:"
            .to_string()
            + &digest("2")
            + "\nB=3\n";
        let m = merge(&old, ".env", &v, false).unwrap();
        assert!(m.text.ends_with("A='1' \nB=3\n"), "{:?}", m.text);
    }

    #[test]
    fn statements_sharing_a_line_survive() {
        let v = vars_of("[params]\nmail_domain = x.org\n", false);
        // Adopting a hand-set value must not turn the next statement into
        // part of the marker comment.
        let m = merge("MAIL_DOMAIN='x.org' USER=me\n", ".env", &v, false).unwrap();
        assert!(
            m.text.starts_with("MAIL_DOMAIN=x.org  # chatmail.ini:")
                && m.text.ends_with("\nUSER=me\n"),
            "{:?}",
            m.text
        );
        let again = merge(&m.text, ".env", &v, false).unwrap();
        assert_eq!(again.text, m.text);

        // Removing hand-set keys with --force: only the statement goes.
        let v = vars_of(
            "[params]\nmail_domain = x.org\nmax_mailbox_size = 500M\nmax_message_size = 31457280\n",
            false,
        );
        let m = merge("MAX_MAILBOX_SIZE='1G' USER=me\n", ".env", &v, true).unwrap();
        assert!(
            m.text.contains("\nUSER=me\n") || m.text.starts_with("USER=me\n"),
            "{:?}",
            m.text
        );
        assert!(!m.text.contains("MAX_MAILBOX_SIZE"), "{:?}", m.text);
        // Two of them on one line: no overlapping edits.
        let m = merge(
            "MAX_MAILBOX_SIZE='1G' MAX_MESSAGE_SIZE=5\nB=2\n",
            ".env",
            &v,
            true,
        )
        .unwrap();
        assert!(!m.text.contains("MAX_M"), "{:?}", m.text);
        assert!(m.text.contains("B=2\n"), "{:?}", m.text);
    }

    #[test]
    fn hand_set_conflicts_need_force() {
        let v = vars_of("[params]\nmail_domain = ini.org\n", false);
        let old = "MAIL_DOMAIN=hand.org\n";
        let e = merge(old, ".env", &v, false).unwrap_err();
        assert!(e.to_string().contains("MAIL_DOMAIN (.env line 1"), "{e}");
        assert!(!e.to_string().contains("hand.org"), "no values in errors");
        let m = merge(old, ".env", &v, true).unwrap();
        assert!(m.text.starts_with("MAIL_DOMAIN=ini.org  # chatmail.ini:"));
        // A tool line edited by hand is a conflict too.
        let edited = m.text.replace("ini.org", "edit.org");
        assert!(merge(&edited, ".env", &v, false).is_err());
    }

    #[test]
    fn empty_placeholders_are_filled_not_conflicts() {
        // docker/example.env ships `MAIL_DOMAIN=` for the user to fill in.
        let v = vars_of(
            "[params]\nmail_domain = ini.org\nmax_message_size = 31457280\n",
            false,
        );
        let old = "# mine\nMAIL_DOMAIN=\nMAX_MESSAGE_SIZE=\nOTHER=1\n";
        let m = merge(old, ".env", &v, false).unwrap();
        assert!(
            m.text.contains("\nMAIL_DOMAIN=ini.org  # chatmail.ini:"),
            "{}",
            m.text
        );
        // At the relay's default: the blank (which would override it) goes.
        assert!(!m.text.contains("MAX_MESSAGE_SIZE"), "{}", m.text);
        assert!(m.text.starts_with("# mine\n") && m.text.contains("OTHER=1\n"));
        assert!(
            m.actions
                .iter()
                .any(|a| a.starts_with("fill in MAIL_DOMAIN")),
            "{:?}",
            m.actions
        );
        // A second run changes nothing.
        assert_eq!(merge(&m.text, ".env", &v, false).unwrap().text, m.text);
    }

    #[test]
    fn an_env_edited_while_it_is_merged_is_read_again_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let ini = d.path().join("chatmail.ini");
        let env = d.path().join(".env");
        fs::write(&ini, "[params]\nmail_domain = chat.example.org\n").unwrap();
        fs::write(&env, "OWN=1\n").unwrap();
        let ctx = crate::context::Context::quiet(d.path(), d.path());
        let opts = Options::default();
        let p = plan(&ctx, &ini, &env, &opts).unwrap();
        // A hand edit between reading and writing.
        let mut f = fs::OpenOptions::new().append(true).open(&env).unwrap();
        f.write_all(b"HAND=1\n").unwrap();
        let err = apply(&ctx, &env, p).unwrap_err();
        assert!(err.is::<host::ChangedMeanwhile>(), "{err}");
        assert_eq!(fs::read_to_string(&env).unwrap(), "OWN=1\nHAND=1\n");
        // The whole run reads it again and keeps the edit.
        sync_env(&ctx, &ini, &env, &opts).unwrap();
        let now = fs::read_to_string(&env).unwrap();
        assert!(
            now.contains("HAND=1\n") && now.contains("MAIL_DOMAIN="),
            "{now}"
        );
    }

    #[test]
    fn diff_hides_values() {
        let d = diff(
            "A=secret\n",
            "A=other  # chatmail.ini:00000000\n",
            ".env",
            false,
        );
        assert!(!d.contains("secret") && !d.contains("other"), "{d}");
        assert!(d.contains("-A=…") && d.contains("+A=…"), "{d}");
        assert!(!d.contains("00000000"), "marker hashes are hidden too: {d}");
        assert!(diff("A=secret\n", "A=x\n", ".env", true).contains("secret"));
    }
}
