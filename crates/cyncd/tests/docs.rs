//! The documentation stays true to the repository: every relative link in `README.md`, `docs/`
//! and the add-on's `DOCS.md` leads to a file that exists (and, with a `#`, to a heading that
//! exists), every repository path quoted in backticks exists, the README stays a short page for
//! users (under [`README_MAX_LINES`] lines), and the README's two set-up commands are the ones
//! that work: its test command is exactly the one CI (`.ci/run`) runs, and its `cargo install`
//! is the one CI installs with.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The README is for people setting cyncd up; everything longer belongs in `docs/`.
const README_MAX_LINES: usize = 400;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The documentation pages checked: the README, `docs/*.md` and the add-on's page.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let addon = root.join("addon/DOCS.md");
    if addon.exists() {
        pages.push(addon);
    }
    pages
}

/// The text outside fenced code blocks, line by line (fences and what they hold are blank, so
/// line numbers stay those of the file).
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return String::new();
            }
            if fenced {
                String::new()
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// Inline code spans of the prose (a span may continue on the next line, as Markdown allows).
fn code_spans(prose: &[String]) -> Vec<String> {
    prose
        .join("\n")
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The prose with its code spans removed, so `[r, g, b](…)`-like code is never read as a link.
fn without_code(prose: &[String]) -> String {
    prose
        .join("\n")
        .split('`')
        .step_by(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The targets of the inline links `[text](target)` of a text.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        // A title after the target (`(file.md "title")`) is not part of it.
        let target = target.split_whitespace().next().unwrap_or_default();
        out.push(target.to_string());
        rest = &rest[end..];
    }
    out
}

/// The anchor GitHub gives a heading: lower-cased, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`… as on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in prose(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_default();
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// What is wrong with a page's relative links.
fn broken_links(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let dir = page.parent().unwrap();
    let mut problems = Vec::new();
    for target in links(&without_code(&prose(&text))) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let file = if path.is_empty() {
            page.to_path_buf()
        } else {
            dir.join(path)
        };
        if !file.exists() {
            problems.push(format!(
                "{}: link to {target}: {} does not exist",
                page.display(),
                file.display()
            ));
            continue;
        }
        if anchor.is_empty() {
            continue;
        }
        let headings = if file.extension().is_some_and(|x| x == "md") {
            anchors(&std::fs::read_to_string(&file).unwrap())
        } else {
            Vec::new()
        };
        if !headings.iter().any(|h| h == anchor) {
            problems.push(format!(
                "{}: link to {target}: no heading with anchor #{anchor} in {} (anchors: {headings:?})",
                page.display(),
                file.display()
            ));
        }
    }
    problems
}

/// What is wrong with the repository paths a page quotes in backticks: a code span that starts
/// with one of the repository's top-level entries (`crates/…`, `docs/…`, `.ci/run`) must name
/// something that exists; `tests/…` means the daemon's tests. Patterns (`*`, `<…>`, `{…}`) and
/// build output (`target/`) are not checked.
fn missing_paths(page: &Path, root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let top: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "target" && name != ".git")
        .collect();
    let mut problems = Vec::new();
    for span in code_spans(&prose(&text)) {
        if span.contains(['*', '<', '{', ' ', '\n', '…', '|']) {
            continue;
        }
        let first = span.split('/').next().unwrap_or_default();
        let file = if first == "tests" && span.contains('/') {
            root.join("crates/cyncd").join(&span)
        } else if span.contains('/') && top.iter().any(|t| t == first) {
            root.join(&span)
        } else {
            continue;
        };
        if !file.exists() {
            problems.push(format!(
                "{}: `{span}` names {}, which does not exist",
                page.display(),
                file.display()
            ));
        }
    }
    problems
}

/// The commands of the README's first `sh` block (under "Set up"), without comments.
fn setup_commands(readme: &str) -> Vec<String> {
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a ```sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_relative_link_leads_somewhere() {
    let root = root();
    let pages = pages(&root);
    assert!(pages.len() >= 10, "{pages:?}");
    let problems: Vec<String> = pages.iter().flat_map(|p| broken_links(p)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The README reaches every page of docs/, so none is orphaned.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let linked = links(&without_code(&prose(&readme)));
    for page in pages
        .iter()
        .filter(|p| p.parent() == Some(&root.join("docs")))
    {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        assert!(
            linked
                .iter()
                .any(|l| l.split('#').next() == Some(name.as_str())),
            "the README does not link {name}"
        );
    }
}

#[test]
fn every_quoted_repository_path_exists() {
    let root = root();
    let problems: Vec<String> = pages(&root)
        .iter()
        .flat_map(|p| missing_paths(p, &root))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readme_is_short() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines; move reference material to docs/"
    );
}

#[test]
fn the_readme_commands_are_the_ones_ci_runs() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let commands = setup_commands(&readme);
    assert_eq!(commands.len(), 2, "run it, then test it: {commands:?}");
    assert!(
        commands[0].starts_with("cargo run --release") && commands[0].ends_with(" serve"),
        "the first command runs the controller: {}",
        commands[0]
    );
    let ci_tests: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo test"))
        .collect();
    assert_eq!(
        ci_tests,
        [commands[1].as_str()],
        "CI runs the README's test command"
    );
    // The README's way onto PATH is the command CI installs with (CI adds only --root).
    let install = "cargo install --locked --path crates/cyncd";
    assert!(
        readme.contains(&format!("`{install}`")),
        "the README says {install}"
    );
    assert!(
        ci.lines()
            .any(|l| l.trim().starts_with(&format!("{install} --root"))),
        "CI installs with {install}"
    );
}

/// The checks above find what they look for: a broken link, a missing anchor and a missing
/// path in a page written for the purpose.
#[test]
fn the_checks_catch_broken_pages() {
    let dir = std::env::temp_dir().join(format!("cyncd-test-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("docs/a.md"),
        "# A page\n\n## Two words, `code`\n\n## Two words, `code`\n\n```sh\n# not a heading\n```\n",
    )
    .unwrap();
    let page = dir.join("README.md");
    std::fs::write(
        &page,
        "# Top\n\n[ok](docs/a.md#two-words-code) [ok](docs/a.md#two-words-code-1) [ok](#top) \
         [ok](https://example.invalid/x)\n[gone](docs/b.md) [no anchor](docs/a.md#not-a-heading) \
         `[r, g](not-a-link)` `docs/a.md` `docs/missing.md` `tests/no_such_test.rs`\n\
         ```sh\n[fenced](docs/nope.md)\n```\n",
    )
    .unwrap();
    let links = broken_links(&page);
    assert_eq!(links.len(), 2, "{links:#?}");
    assert!(links[0].contains("docs/b.md"), "{links:#?}");
    assert!(links[1].contains("#not-a-heading"), "{links:#?}");
    let paths = missing_paths(&page, &dir);
    assert_eq!(paths.len(), 2, "{paths:#?}");
    assert!(paths[0].contains("docs/missing.md"), "{paths:#?}");
    assert!(paths[1].contains("no_such_test.rs"), "{paths:#?}");
    assert_eq!(
        anchors(&std::fs::read_to_string(dir.join("docs/a.md")).unwrap()),
        ["a-page", "two-words-code", "two-words-code-1"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Two transports, canary routing, SLOs and rollback"),
        "two-transports-canary-routing-slos-and-rollback"
    );
    assert_eq!(slug("`cyncd serve`"), "cyncd-serve");
    assert_eq!(
        slug("Moving from cync-lan or the Cync add-on"),
        "moving-from-cync-lan-or-the-cync-add-on"
    );
    assert_eq!(slug("0x43 entries"), "0x43-entries");
}
