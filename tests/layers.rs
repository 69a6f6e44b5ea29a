//! Layers point down only (README, "How the code is laid out"): `http` → `graphql` →
//! `domain` → `db`; `jobs` and `outbound` (the workers) use `domain`; `config`, `error` and
//! `metrics` are leaves anyone may use. Every `crate::…` path of the library is read from the
//! source and checked against that table, and modules inside `domain` may not import each
//! other in a circle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// What each top-level module may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("config", &[]),
    ("metrics", &[]),
    ("db", &["error"]),
    ("domain", &["db", "error", "config", "metrics"]),
    ("jobs", &["domain", "db", "error", "config", "metrics"]),
    ("outbound", &["domain", "db", "error", "config", "metrics"]),
    (
        "graphql",
        &[
            "jobs", "outbound", "domain", "db", "error", "config", "metrics",
        ],
    ),
    (
        "http",
        &[
            "graphql", "jobs", "outbound", "domain", "db", "error", "config", "metrics",
        ],
    ),
    (
        "app",
        &[
            "http", "graphql", "jobs", "outbound", "domain", "db", "error", "config", "metrics",
        ],
    ),
];

/// The source without comments (line comments are enough here: no block comments are used).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').expect("balanced braces")];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, &inner[start..], out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{tree}"));
    }
}

/// Every path below `crate::` the file names (in `use` trees and inline).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code = code(text);
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        // A path, then perhaps a braced group (balanced).
        let mut len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(after.len());
        if after[len..].starts_with('{') {
            let mut depth = 0;
            for (i, c) in after[len..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    len += i + 1;
                    break;
                }
            }
        }
        let mut expanded = Vec::new();
        expand("", &after[..len], &mut expanded);
        for path in expanded {
            paths.push(
                path.split("::")
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        rest = &after[len..];
    }
    paths
}

/// `(module path below src, file text)` for every file of the library (not `src/bin`).
fn library_files() -> Vec<(Vec<String>, String)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    p.push(name);
                }
                out.push((p, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

#[test]
fn layers_point_down_only() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, text) in library_files() {
        let Some(top) = module.first() else { continue };
        let Some(may_use) = allowed.get(top.as_str()) else {
            wrong.push(format!(
                "src/{}: a top-level module missing from ALLOWED",
                top
            ));
            continue;
        };
        for path in crate_paths(&text) {
            let used = &path[0];
            if used != top && !may_use.contains(&used.as_str()) {
                wrong.push(format!(
                    "{} uses crate::{}",
                    module.join("::"),
                    path.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn domain_modules_import_each_other_without_a_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in library_files() {
        if module.len() != 2 || module[0] != "domain" {
            continue;
        }
        let uses = graph.entry(module[1].clone()).or_default();
        for path in crate_paths(&text) {
            if path.len() > 1 && path[0] == "domain" && path[1] != module[1] {
                uses.insert(path[1].clone());
            }
        }
        // `super::x` inside a domain module names a sibling too.
        for (i, _) in code(&text).match_indices("super::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module[1] {
                uses.insert(name);
            }
        }
    }
    // Only sibling modules count (`super::*` in a test module, a `super::path` in a macro).
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| known.contains(m));
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!(
                "domain modules import each other in a circle: {}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_path_reader_sees_grouped_and_inline_paths() {
    let paths = crate_paths(
        "use crate::{\n    db::{Db, entities::{deal, partner}},\n    // crate::http::x\n    error::ApiError,\n};\nfn f() { crate::jobs::run(); }",
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "db::Db",
            "db::entities::deal",
            "db::entities::partner",
            "error::ApiError",
            "jobs::run"
        ]
    );
}
