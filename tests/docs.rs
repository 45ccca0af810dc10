//! The documentation's links: every relative link in README.md, `docs/` and `deploy/` names a
//! file that exists, and every `#anchor` a heading of the page it points into (as GitHub spells
//! heading anchors). README stays a front door: short, with the details in `docs/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Markdown files the documentation is made of.
fn pages() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs"), root().join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Lines outside fenced code blocks, numbered from 1.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    prose(&text)
        .into_iter()
        .filter_map(|(_, line)| {
            let rest = line.trim_start_matches('#');
            (rest.len() < line.len() && rest.starts_with(' ')).then(|| slug(rest))
        })
        .collect()
}

/// The targets of `[text](target)` links on a line.
fn links(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        match after.find(')') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end..];
            }
            None => break,
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (n, line) in prose(&text) {
            for target in links(line) {
                if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                    continue;
                }
                checked += 1;
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let file = if path.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap().join(path)
                };
                let shown = page.strip_prefix(root()).unwrap().display().to_string();
                if !file.exists() {
                    broken.push(format!("{shown}:{n}: {target}: no such file"));
                } else if !anchor.is_empty()
                    && file.extension().is_some_and(|e| e == "md")
                    && !anchors(&file).contains(anchor)
                {
                    broken.push(format!("{shown}:{n}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the reader broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_reader_finds_a_broken_link_and_anchor() {
    assert_eq!(links("see [a](x.md#y) and [b](#z)."), vec!["x.md#y", "#z"]);
    assert_eq!(
        slug("Faspex's routes as Rails sees them"),
        "faspexs-routes-as-rails-sees-them"
    );
    assert_eq!(slug("Reload on SIGHUP"), "reload-on-sighup");
    assert!(anchors(&root().join("README.md")).contains("two-commands"));
    assert!(!anchors(&root().join("README.md")).contains("no-such-heading"));
}

#[test]
fn readme_is_a_front_door() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = text.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines: move details into docs/"
    );
    for page in [
        "docs/configuration.md",
        "docs/faspex.md",
        "docs/policies.md",
        "docs/operations.md",
        "docs/ha.md",
        "docs/security.md",
        "docs/benchmarks.md",
        "docs/helpdesk.md",
    ] {
        assert!(
            text.contains(&format!("]({page})")),
            "README's map misses {page}"
        );
    }
}
