//! The layers of the code (README, "How it works"): a low module uses the
//! ones below it, never one above. Read from the source: every `crate::`
//! path outside comments, `use crate::{a, b::c}` groups included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each low layer may use of the crate (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("shell", &[]),
    ("formats", &["error"]),
    ("host", &["error", "shell"]),
    ("deployment", &["error", "formats", "host"]),
    ("context", &["deployment", "host", "shell", "error"]),
    (
        "engine",
        &["context", "deployment", "error", "formats", "host", "shell"],
    ),
    (
        "archive",
        &["context", "deployment", "error", "formats", "host", "shell"],
    ),
];

/// The crate's top-level modules named by `crate::` paths in `code`.
fn used(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level items of the group: up to the matching brace.
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.extend(first_ident(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                out.extend(first_ident(&item));
            } else {
                out.extend(first_ident(rest));
            }
        }
    }
    out
}

fn first_ident(s: &str) -> Option<String> {
    let id: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Every `.rs` file below `dir` with its top-level module.
fn files(src: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(src, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(src).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            let module = Path::new(first)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((module, p));
        }
    }
}

#[test]
fn the_reader_finds_every_crate_path() {
    let code = "use crate::{context::Context, engine, error};\n\
                use crate::host::tree::{Tree, X};\n\
                // crate::upgrade in a comment\n\
                let x = crate::backup::run(crate::archive::read::open());\n\
                use crate::{a::{b, c}, d};\n";
    let got: Vec<String> = used(code).into_iter().collect();
    assert_eq!(
        got,
        ["a", "archive", "backup", "context", "d", "engine", "error", "host"]
    );
}

#[test]
fn no_low_module_uses_a_higher_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &src, &mut all);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, path) in &all {
        let Some(ok) = allowed.get(module.as_str()) else {
            continue;
        };
        seen.insert(module.clone());
        let code = std::fs::read_to_string(path).unwrap();
        for m in used(&code) {
            if m != *module && !ok.contains(&m.as_str()) {
                wrong.push(format!(
                    "{} uses crate::{m}",
                    path.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    // Each low layer was found (a renamed one would pass unchecked).
    let expected: BTreeSet<String> = ALLOWED.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(seen, expected);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
