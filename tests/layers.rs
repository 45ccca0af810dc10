//! The shape of the source, checked: no file-level import cycles in `src/` or in the emulator's
//! crate, and the bottom of the stack (`config/`, `account`, `tls`, `clock`, `util`) importing
//! nothing above it.
//!
//! A file imports another when it names a path into it: `use crate::a::b::X`, `super::X`,
//! `self::b::X`, or a path written inline (`crate::a::b::f()`). The path is resolved to the file of
//! its longest module prefix (`src/a/b.rs` or `src/a/b/mod.rs`), which is where a reader goes to
//! find the name. A module's `mod` line is not an import, and neither are doc comments or the
//! unit-test modules (`tests.rs`, `#[cfg(test)] mod tests`), which look at their parent by design.
//! A module's own `mod.rs` counts like any other file: a child that looks up to it (`super::X`,
//! with `X` defined or re-exported there) imports it, and when the `mod.rs` uses or re-exports
//! that child, the two are a cycle. So what a module's children share lives in a sibling file of
//! theirs (`auth/directory.rs`, `config/model.rs`), and the `mod.rs` lays the module out.
//! Two files that reach each other, however indirectly, form a cycle: the test prints every edge of
//! it, so the fix is plain.
//!
//! Run it alone with `cargo test --test integration layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's source: module path (`["proxy", "gate"]`) to file, and each file's imports.
struct Crate {
    root: PathBuf,
    modules: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let mut modules = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source directory") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    if let Some(module) = module_of(root, &path) {
                        modules.insert(module, path);
                    }
                }
            }
        }
        Crate {
            root: root.to_path_buf(),
            modules,
        }
    }

    fn name(&self, file: &Path) -> String {
        file.strip_prefix(self.root.parent().unwrap_or(&self.root))
            .unwrap_or(file)
            .display()
            .to_string()
    }

    /// The file a path (absolute segments from the crate root) resolves to: its longest prefix
    /// that is a module with a file of its own.
    fn resolve(&self, segments: &[String]) -> Option<&PathBuf> {
        (0..=segments.len())
            .rev()
            .find_map(|n| self.modules.get(&segments[..n]))
    }

    /// Every file-to-file import edge, with the path that makes it.
    fn edges(&self) -> BTreeMap<(PathBuf, PathBuf), String> {
        let mut edges = BTreeMap::new();
        for (module, file) in &self.modules {
            if is_test_file(file) {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("a source file");
            // `super` in `a/b.rs` and in `a/b/mod.rs` both name `a`: the module path, not the file.
            let code = strip_tests(&strip_comments(&text));
            for path in paths_in(&code, &child_modules(&code)) {
                let Some(absolute) = absolute(module, &path) else {
                    continue;
                };
                if let Some(target) = self.resolve(&absolute) {
                    if target != file && !is_test_file(target) {
                        edges
                            .entry((file.clone(), target.clone()))
                            .or_insert_with(|| path.join("::"));
                    }
                }
            }
        }
        edges
    }
}

fn is_test_file(file: &Path) -> bool {
    file.file_name().is_some_and(|n| n == "tests.rs")
}

/// `src/lib.rs` -> `[]`, `src/a.rs` and `src/a/mod.rs` -> `["a"]`, `src/a/b.rs` -> `["a", "b"]`.
/// `main.rs` is a crate of its own and is left out.
fn module_of(root: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(root).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => Some(parts),
        "main.rs" if parts.is_empty() => None,
        "mod.rs" => Some(parts),
        other => {
            parts.push(other.strip_suffix(".rs")?.to_string());
            Some(parts)
        }
    }
}

/// Removes `//` comments (docs included) and the contents of string literals, so that a doc link
/// or a message naming a module is not an import.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut prev = '\0';
        for c in line.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                    out.push('"');
                }
                prev = c;
                continue;
            }
            if c == '/' && prev == '/' {
                out.pop();
                break;
            }
            if c == '"' && prev != '\'' {
                in_string = true;
            }
            out.push(c);
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Cuts `#[cfg(test)] mod tests { ... }` (and any `#[cfg(test)] mod name { ... }`) out of a file.
fn strip_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_module = trimmed.starts_with("mod ") || trimmed.starts_with("pub(crate) mod ");
        match (is_module, trimmed.find(['{', ';'])) {
            (true, Some(open)) if trimmed.as_bytes()[open] == b'{' => {
                let body = &trimmed[open..];
                let mut depth = 0usize;
                let mut end = body.len();
                for (i, c) in body.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &body[end..];
            }
            _ => {
                // Not an inline test module: keep the item (a `mod tests;` is a file of its own).
                out.push_str("#[cfg(test)]");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The modules a file declares as files of their own (`mod name;`): a path may start at one of
/// them without `self::`.
fn child_modules(code: &str) -> BTreeSet<String> {
    let tokens = tokenize(code);
    tokens
        .windows(3)
        .filter(|w| w[0] == "mod" && is_ident(&w[1]) && w[2] == ";")
        .map(|w| w[1].clone())
        .collect()
}

/// Every path that starts at `crate`, `super`, `self` or a child module, with `use` trees
/// expanded: `use crate::a::{b::C, d}` gives `crate::a::b::C` and `crate::a::d`.
fn paths_in(text: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let tokens = tokenize(text);
    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let starts_path = (matches!(t, "crate" | "super" | "self") || children.contains(t))
            && (i == 0 || tokens[i - 1] != "::")
            && tokens.get(i + 1).is_some_and(|n| n == "::");
        if starts_path {
            let mut prefix = Vec::new();
            i = use_tree(&tokens, i, &mut prefix, &mut paths);
        } else {
            i += 1;
        }
    }
    paths
}

/// Reads one path (possibly a `use` tree) from `tokens[i]`, pushing every full path; returns the
/// index after it.
fn use_tree(
    tokens: &[String],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let depth = prefix.len();
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    i = use_tree(tokens, i, prefix, out);
                    match tokens.get(i).map(String::as_str) {
                        Some(",") => i += 1,
                        Some("}") => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if tokens.get(i).is_some_and(|t| t == "}") {
                        i += 1;
                        break;
                    }
                }
                prefix.truncate(depth);
                return i;
            }
            Some(word) if is_ident(word) || word == "*" => {
                if word != "self" || prefix.is_empty() {
                    prefix.push(word.to_string());
                }
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::") {
                    i += 1;
                    continue;
                }
                out.push(prefix.clone());
                prefix.truncate(depth);
                return i;
            }
            _ => {
                if prefix.len() > depth {
                    out.push(prefix.clone());
                }
                prefix.truncate(depth);
                return i;
            }
        }
    }
}

fn is_ident(word: &str) -> bool {
    word.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && word.chars().all(|c| c.is_alphanumeric() || c == '_')
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    word.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(word);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            tokens.push("::".to_string());
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    tokens
}

/// A path's segments from the crate root, given the module it is written in.
fn absolute(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some(_) => {}
        None => return None,
    }
    base.extend(rest.iter().filter(|s| *s != "*").cloned());
    Some(base)
}

/// The strongly connected components of more than one file (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<(PathBuf, PathBuf), String>) -> Vec<BTreeSet<PathBuf>> {
    let mut graph: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
        graph.entry(to).or_default();
    }
    struct State<'a> {
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<BTreeSet<PathBuf>>,
    }
    fn visit<'a>(
        v: &'a PathBuf,
        graph: &BTreeMap<&'a PathBuf, Vec<&'a PathBuf>>,
        s: &mut State<'a>,
    ) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in &graph[v] {
            if !s.index.contains_key(w) {
                visit(w, graph, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(v, &graph, &mut s);
        }
    }
    s.found
}

fn describe(krate: &Crate, edges: &BTreeMap<(PathBuf, PathBuf), String>) -> Vec<String> {
    cycles(edges)
        .iter()
        .map(|component| {
            let inside: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| component.contains(a) && component.contains(b))
                .map(|((a, b), path)| format!("  {} -> {} ({path})", krate.name(a), krate.name(b)))
                .collect();
            format!(
                "a cycle of {} files:\n{}",
                component.len(),
                inside.join("\n")
            )
        })
        .collect()
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The source roots checked: the gateway's and, once it has one, the emulator's crate.
fn crate_roots() -> Vec<PathBuf> {
    let root = manifest_dir();
    let mut roots = vec![root.join("src")];
    let emulator = root.join("emulator").join("src");
    if emulator.is_dir() {
        roots.push(emulator);
    }
    roots
}

#[test]
fn no_file_level_import_cycles() {
    let mut found = Vec::new();
    let mut files = 0;
    for root in crate_roots() {
        let krate = Crate::read(&root);
        files += krate.modules.len();
        found.extend(describe(&krate, &krate.edges()));
    }
    assert!(files > 50, "the source was not found: {files} files");
    assert!(
        found.is_empty(),
        "file-level import cycles:\n{}",
        found.join("\n")
    );
}

/// The bottom of the stack imports nothing above it: `config/` (which checks the configuration
/// and loads nothing), `account` (names as the directory compares them), `tls`, `clock` and
/// `util` may use each other, never the layers that are built from them.
#[test]
fn the_bottom_stays_at_the_bottom() {
    const BOTTOM: [&str; 5] = ["config", "account", "util", "clock", "tls"];
    let at_bottom = |krate: &Crate, file: &Path| {
        module_of(&krate.root, file)
            .is_some_and(|m| m.first().is_some_and(|f| BOTTOM.contains(&f.as_str())))
    };
    let krate = Crate::read(&manifest_dir().join("src"));
    let bottom_files = krate
        .modules
        .values()
        .filter(|f| at_bottom(&krate, f))
        .count();
    assert!(
        bottom_files >= 10,
        "the bottom modules were not found: {bottom_files} files"
    );
    let up: Vec<String> = krate
        .edges()
        .iter()
        .filter(|((from, to), _)| at_bottom(&krate, from) && !at_bottom(&krate, to))
        .map(|((a, b), path)| format!("  {} -> {} ({path})", krate.name(a), krate.name(b)))
        .collect();
    assert!(
        up.is_empty(),
        "the bottom reaches up the stack:\n{}",
        up.join("\n")
    );
}

/// The reader itself, on a small sample: a `use` tree, `super`, inline paths, comments and test
/// modules.
#[test]
fn the_reader_finds_imports_as_written() {
    let text = r#"
//! See [`crate::doc::Link`].
use crate::a::{b::C, d, e::{self, F}};
use super::sibling::G;
mod child;
pub use child::K;
fn f() { let _ = crate::inline::h(); let s = "crate::in_string::x"; }
#[cfg(test)]
mod tests { use crate::test_only::X; }
"#;
    let code = strip_tests(&strip_comments(text));
    let paths: Vec<String> = paths_in(&code, &child_modules(&code))
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        paths,
        [
            "crate::a::b::C",
            "crate::a::d",
            "crate::a::e",
            "crate::a::e::F",
            "super::sibling::G",
            "child::K",
            "crate::inline::h",
        ]
    );
    let module = vec!["proxy".to_string(), "gate".to_string()];
    assert_eq!(
        absolute(
            &module,
            &["super".into(), "classify".into(), "Route".into()]
        ),
        Some(vec!["proxy".into(), "classify".into(), "Route".into()])
    );
}

/// A child that looks up to its own `mod.rs`, which re-exports it, is a cycle like any other.
#[test]
fn a_child_looking_up_to_its_mod_rs_is_a_cycle() {
    let root = std::env::temp_dir().join(format!("layers-{}", std::process::id()));
    let module = root.join("a");
    std::fs::create_dir_all(&module).expect("a temporary directory");
    let write = |path: &Path, text: &str| std::fs::write(path, text).expect("a temporary file");
    write(&root.join("lib.rs"), "mod a;\n");
    write(
        &module.join("mod.rs"),
        "mod b;\npub use b::B;\npub struct Shared;\n",
    );
    write(
        &module.join("b.rs"),
        "use super::Shared;\npub struct B(Shared);\n",
    );
    let krate = Crate::read(&root);
    let found = describe(&krate, &krate.edges());
    std::fs::remove_dir_all(&root).expect("the temporary directory removed");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("a/b.rs -> ") && found[0].contains("(super::Shared)"),
        "{found:?}"
    );
}
