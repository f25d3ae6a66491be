//! Which `[params]` keys a relay release reads, and how two releases
//! differ: chatmaild's `config.py` takes each key out of the ini with
//! `params.pop("key")` or `params.pop("key", default)`, so that file (not
//! the commented template) is what a release understands.

use std::collections::BTreeMap;

/// Where chatmaild reads its `[params]`, in the relay tree.
pub const CONFIG_PY: &str = "chatmaild/src/chatmaild/config.py";

/// key -> default as written in the source (`None`: required, no default).
pub type Keys = BTreeMap<String, Option<String>>;

/// The keys `config.py` pops from `[params]`, with their defaults.
pub fn keys_of_config_py(source: &str) -> Keys {
    let mut out = Keys::new();
    let pat = "params.pop(";
    let mut rest = source;
    while let Some(i) = rest.find(pat) {
        rest = &rest[i + pat.len()..];
        let Some(args) = call_args(rest) else {
            continue;
        };
        let args = args.trim();
        let Some(quote) = args.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        let Some(end) = args[1..].find(quote) else {
            continue;
        };
        let key = &args[1..1 + end];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let default = args[1 + end + 1..]
            .trim()
            .strip_prefix(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty());
        out.entry(key.to_string()).or_insert(default);
    }
    out
}

/// The text between the opening parenthesis (already consumed) and its
/// matching closing one; quotes and nested parentheses respected.
fn call_args(s: &str) -> Option<&str> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth > 0 => depth -= 1,
                ')' => return Some(&s[..i]),
                _ => {}
            },
        }
    }
    None
}

/// How the `[params]` keys of two releases differ, seen from the running
/// configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    /// Keys the new release reads that the old one did not, with defaults.
    pub added: Vec<(String, Option<String>)>,
    /// Keys the new release no longer reads that chatmail.ini sets.
    pub dropped_but_set: Vec<String>,
    /// Keys the new release no longer reads (not set in chatmail.ini).
    pub dropped: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped_but_set.is_empty() && self.dropped.is_empty()
    }
}

/// Compare the keys of two releases; `set` are the keys the user's
/// chatmail.ini sets.
pub fn diff(old: &Keys, new: &Keys, set: &[String]) -> Diff {
    let mut d = Diff::default();
    for (k, v) in new {
        if !old.contains_key(k) {
            d.added.push((k.clone(), v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            if set.iter().any(|s| s == k) {
                d.dropped_but_set.push(k.clone());
            } else {
                d.dropped.push(k.clone());
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_defaults_come_from_params_pop() {
        let src = r#"
        raw_domain = params.pop("mail_domain")
        self.max_user_send_per_minute = int(params.pop("max_user_send_per_minute", 60))
        self.max_mailbox_size = params.pop("max_mailbox_size", "500M")
        self.passthrough = params.pop(
            "passthrough_senders", ""
        ).split()
        self.x = params.pop('weird', f(1, (2, ")")))
        params.pop(variable)
        "#;
        let k = keys_of_config_py(src);
        assert_eq!(k["mail_domain"], None);
        assert_eq!(k["max_user_send_per_minute"].as_deref(), Some("60"));
        assert_eq!(k["max_mailbox_size"].as_deref(), Some("\"500M\""));
        assert_eq!(k["passthrough_senders"].as_deref(), Some("\"\""));
        assert_eq!(k["weird"].as_deref(), Some("f(1, (2, \")\"))"));
        assert_eq!(k.len(), 5);
    }

    #[test]
    fn the_diff_names_new_keys_and_dropped_keys_still_set() {
        let old = keys_of_config_py(r#"params.pop("a", 1) params.pop("b") params.pop("c", 2)"#);
        let new = keys_of_config_py(r#"params.pop("a", 1) params.pop("d", "x")"#);
        let d = diff(&old, &new, &["b".to_string()]);
        assert_eq!(d.added, vec![("d".to_string(), Some("\"x\"".to_string()))]);
        assert_eq!(d.dropped_but_set, vec!["b".to_string()]);
        assert_eq!(d.dropped, vec!["c".to_string()]);
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn the_relay_snapshot_reads_its_known_keys() {
        let Some(src) = snapshot_config_py() else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "the relay snapshot (../shared/relay) is missing"
            );
            return;
        };
        let k = keys_of_config_py(&src);
        assert!(k.contains_key("mail_domain"), "{k:?}");
        assert_eq!(k["max_user_send_per_minute"].as_deref(), Some("60"));
        assert!(k.len() > 20, "{}", k.len());
    }

    /// chatmaild's config.py from the relay snapshot beside this checkout,
    /// when it is there (the integration tests require it; see
    /// tests/it/relay_manifest.rs).
    fn snapshot_config_py() -> Option<String> {
        let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/relay");
        let tarball = std::fs::read_dir(&shared)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".tar.gz"))?;
        let out = std::process::Command::new("tar")
            .arg("-xzOf")
            .arg(&tarball)
            .arg(format!("relay/{CONFIG_PY}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
