//! The daemon's layers import only downward: `cli → serve → frontends → commands → devices →
//! homes → {config, metrics, logging, state}`. Read from the sources, so a new upward import fails the tests
//! (docs/development.md and `lib.rs` describe the layers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

/// A part of the crate (a top-level module) and the top-level modules it must never name.
const RULES: &[(&str, &[&str])] = &[
    ("devices", &["commands", "frontends", "cli", "serve"]),
    ("commands", &["frontends", "cli", "serve"]),
    ("frontends", &["cli", "serve"]),
    (
        "homes",
        &["devices", "commands", "frontends", "cli", "serve"],
    ),
    (
        "config",
        &["homes", "devices", "commands", "frontends", "cli", "serve"],
    ),
    (
        "metrics.rs",
        &["devices", "commands", "frontends", "cli", "serve"],
    ),
    (
        "logging.rs",
        &["devices", "commands", "frontends", "cli", "serve"],
    ),
    (
        "state.rs",
        &["homes", "devices", "commands", "frontends", "cli", "serve"],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
        return;
    }
    for entry in std::fs::read_dir(path).unwrap() {
        rust_files(&entry.unwrap().path(), out);
    }
}

/// The top-level modules a source text names through `crate::…`, including every name of a
/// grouped `use crate::{a, b::c}`; and `super::super` (a way around `crate::`) as `super`.
fn crate_modules(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split at commas outside nested braces.
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        names.push(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    if text.contains("super::super") {
        names.push("super".into());
    }
    names
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let mut violations = Vec::new();
    for (part, forbidden) in RULES {
        let root = src().join(part);
        assert!(root.exists(), "{} is missing", root.display());
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in crate_modules(&text) {
                if forbidden.contains(&name.as_str()) || name == "super" {
                    violations.push(format!(
                        "{} names crate::{name}",
                        file.strip_prefix(src()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward imports:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_plain_grouped_and_nested_imports() {
    let text = "use crate::config::Config;\nuse crate::{metrics::Metrics, serve::{a, b}, cli};\n\
                fn f() { crate::frontends::http::router(); }\nuse super::super::x;";
    assert_eq!(
        crate_modules(text),
        ["config", "metrics", "serve", "cli", "frontends", "super"]
    );
}

#[test]
fn every_module_folder_says_what_it_owns_and_must_not_import() {
    for folder in ["homes", "devices", "commands", "frontends", "cli"] {
        let text = std::fs::read_to_string(src().join(folder).join("mod.rs")).unwrap();
        assert!(text.starts_with("//!"), "{folder}/mod.rs has no module doc");
        assert!(
            text.contains("import"),
            "{folder}/mod.rs does not say what it may import"
        );
    }
}
