//! The architecture as a test: no two modules import each other, at the top level of
//! `src/` and among the files of each folder. Prints the import graph:
//! `cargo test --test architecture -- --nocapture`.
//!
//! A reference is any `crate::` or `super::` path outside comments, including the
//! names inside `use ...::{...}` braces; it points at the longest module path that
//! exists (a file or a folder of `src/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/pipeline/report/files.rs` -> `["report", "files"]`; `mod.rs` names its folder.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

fn is_module(src: &Path, path: &[String]) -> bool {
    let p = src.join(path.join("/"));
    p.is_dir() || p.with_extension("rs").is_file()
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The paths a piece of code names after `crate::` or `super::`, as segments, with
/// their root (`crate`, or `superN` for N `super::`s).
fn referenced_paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate::", "super::"] {
        for (i, _) in code.match_indices(root) {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // inside a longer path: `super::super::x` is read once
            }
            let mut tail = &code[i + root.len()..];
            let mut supers = 1;
            while root == "super::" && tail.starts_with("super::") {
                supers += 1;
                tail = &tail["super::".len()..];
            }
            let root = match root {
                "crate::" => "crate".to_string(),
                _ => format!("super{supers}"),
            };
            let mut prefix = Vec::new();
            loop {
                let name = ident(tail);
                if name.is_empty() {
                    break;
                }
                prefix.push(name.to_string());
                match tail[name.len()..].strip_prefix("::") {
                    Some(t) => tail = t,
                    None => {
                        tail = "";
                        break;
                    }
                }
            }
            let Some(list) = tail.strip_prefix('{') else {
                out.push((root, prefix));
                continue;
            };
            let list = &list[..list.find('}').unwrap_or(list.len())];
            for item in list.split(',') {
                let mut p = prefix.clone();
                p.extend(
                    item.split("::")
                        .map(|s| ident(s.trim()).to_string())
                        .filter(|s| !s.is_empty()),
                );
                out.push((root.clone(), p));
            }
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let me = module_of(&src, &file);
        if me == ["lib"] || me == ["main"] {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (root, path) in referenced_paths(&code) {
            let mut full: Vec<String> = match root.as_str() {
                "crate" => Vec::new(),
                s => {
                    let n: usize = s["super".len()..].parse().expect("count");
                    // `me` names the module (a `mod.rs` its folder's): `super`
                    // is its parent, whichever file holds it.
                    me[..me.len().saturating_sub(n)].to_vec()
                }
            };
            full.extend(path);
            while !full.is_empty() && !is_module(&src, &full) {
                full.pop();
            }
            if !full.is_empty() && full != me {
                g.entry(me.clone()).or_default().insert(full);
            }
        }
    }
    g
}

/// Collapses the graph onto the children of `parent` (the top level: `[]`); edges
/// to or from `parent`'s own module file (a folder's `mod.rs`) are left out.
fn level(g: &Graph, parent: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let child = |m: &Vec<String>| -> Option<String> {
        (m.len() > parent.len() && m.starts_with(parent)).then(|| m[parent.len()].clone())
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in g {
        let Some(a) = child(from) else { continue };
        for to in tos {
            if let Some(b) = child(to) {
                if a != b {
                    out.entry(a.clone()).or_default().insert(b);
                }
            }
        }
    }
    out
}

fn mutual(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (a, tos) in edges {
        for b in tos {
            if a < b && edges.get(b).is_some_and(|t| t.contains(a)) {
                found.push(format!("{a} <-> {b}"));
            }
        }
    }
    found
}

#[test]
fn no_two_modules_import_each_other() {
    let g = graph();
    let mut folders: BTreeSet<Vec<String>> = BTreeSet::from([Vec::new()]);
    for m in g.keys().chain(g.values().flatten()) {
        for n in 1..m.len() {
            folders.insert(m[..n].to_vec());
        }
    }
    let mut problems = Vec::new();
    for folder in &folders {
        let edges = level(&g, folder);
        let name = if folder.is_empty() {
            "src".to_string()
        } else {
            format!("src/{}", folder.join("/"))
        };
        println!("{name}:");
        for (a, tos) in &edges {
            println!(
                "  {a} -> {}",
                tos.iter().cloned().collect::<Vec<_>>().join(" ")
            );
        }
        problems.extend(mutual(&edges).into_iter().map(|m| format!("{name}: {m}")));
    }
    assert!(
        problems.is_empty(),
        "modules that import each other:\n{}",
        problems.join("\n")
    );
}

#[test]
fn references_are_read_with_braces_and_supers() {
    let refs = referenced_paths("use super::{compare, read::Record};\nlet x = crate::step::Step::Dns; super::super::x::y();");
    let paths: Vec<String> = refs
        .iter()
        .map(|(r, p)| format!("{r}:{}", p.join("::")))
        .collect();
    assert_eq!(
        paths,
        [
            "crate:step::Step::Dns",
            "super1:compare",
            "super1:read::Record",
            "super2:x::y"
        ]
    );
}
