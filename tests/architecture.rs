//! The crate's layering, checked from the source text (no GPU): the
//! top-level modules form no import cycle, `error` uses nothing else in
//! the crate, and `model` knows nothing of `infer` or `train`. Also keeps
//! source files to a readable size.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without comments and string literals (so that prose such as
/// "crate::x" in a doc comment does not count as a use).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) {
            // Raw strings: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level modules named after each `crate::` in `code`, including the
/// members of `crate::{a, b::c}` groups.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `$crate::` in macros names the crate root too.
        let after = rest[at + "crate::".len()..].trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.insert(ident_at(&group[i..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident_at(after).to_string());
        }
        rest = &rest[at + "crate::".len()..];
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The module path of a source file: `src/model/gguf/reader.rs` →
/// `[model, gguf, reader]`; `mod.rs` names its folder.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Top-level modules reached through `super::` chains that climb to the
/// crate root.
fn super_refs(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let preceded_by_path = rest[..at].ends_with("::");
        let mut s = &rest[at..];
        let mut ups = 0;
        while let Some(t) = s.strip_prefix("super::") {
            ups += 1;
            s = t;
        }
        if !preceded_by_path && ups >= path.len() {
            let name = ident_at(s);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
        rest = &rest[at + "super::".len() * ups..];
    }
    out
}

fn dependency_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut top: BTreeSet<String> = BTreeSet::new();
    for f in &files {
        let path = module_path(&src, f);
        if let Some(first) = path.first() {
            if first != "lib" && first != "main" {
                top.insert(first.clone());
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let path = module_path(&src, f);
        let Some(me) = path.first().filter(|m| top.contains(*m)) else {
            continue; // lib.rs and main.rs sit above everything
        };
        let code = code_only(&fs::read_to_string(f).unwrap());
        let mut refs = crate_refs(&code);
        refs.extend(super_refs(&code, &path));
        let deps = graph.entry(me.clone()).or_default();
        for r in refs {
            if r != *me && top.contains(&r) {
                deps.insert(r);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the list of modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        mark: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        mark.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            match mark.get(d.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, graph, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(n.to_string(), Mark::Done);
        None
    }
    let mut mark = BTreeMap::new();
    for n in graph.keys() {
        if mark.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, graph, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn show(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    graph
        .iter()
        .map(|(m, d)| {
            format!(
                "  {m} -> {}",
                d.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = dependency_graph();
    assert!(graph.len() >= 8, "too few modules found:\n{}", show(&graph));
    println!("module dependencies:\n{}", show(&graph));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}\n{}",
            cycle.join(" -> "),
            show(&graph)
        );
    }
}

#[test]
fn the_bottom_and_the_model_layers_stay_below() {
    let graph = dependency_graph();
    let deps = |m: &str| graph.get(m).cloned().unwrap_or_default();
    assert!(
        deps("error").is_empty(),
        "error must depend on nothing in the crate, uses {:?}",
        deps("error")
    );
    for above in ["infer", "train", "commands", "boomerang"] {
        assert!(
            !deps("model").contains(above),
            "model must not know {above}:\n{}",
            show(&graph)
        );
    }
    for above in [
        "model",
        "autodiff",
        "infer",
        "train",
        "commands",
        "boomerang",
    ] {
        assert!(
            !deps("gpu").contains(above) && !deps("ops").contains(above),
            "gpu and ops must not know {above}:\n{}",
            show(&graph)
        );
    }
}

#[test]
fn the_checker_sees_uses_and_cycles() {
    let code = code_only(
        "use crate::{gpu::Tensor, model};\n// crate::train in a comment\nlet s = \"crate::infer\";\nlet x = crate::ops::matmul(a);",
    );
    let refs = crate_refs(&code);
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["gpu", "model", "ops"]
    );
    let path = vec!["model".to_string(), "gguf".to_string()];
    let sup = super_refs("use super::super::infer::x; use super::reader;", &path);
    assert_eq!(sup.into_iter().collect::<Vec<_>>(), ["infer"]);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert!(find_cycle(&g).is_none());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn source_files_stay_readable() {
    const MAX_LINES: usize = 850;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines; split them by job: {long:?}"
    );
}
