//! The layering of `docs/architecture.md`, checked on the sources: each top-level module of `spike-flash` uses
//! only the modules below it, so no module imports one that imports it back. A new module, or a new arrow,
//! must be added here and in the document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module and the modules it may use (besides `error`, which every module uses).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("io", &[]),
    ("cache", &[]),
    ("model", &["io"]),
    ("layout", &["model", "io"]),
    ("cost", &["io"]),
    ("engine", &["model", "layout", "io", "cache", "cost"]),
    // What each fuzz harness does with an input: it reads through every reader, so it sits on top.
    ("fuzz_targets", &["engine", "model", "layout", "io", "cache", "cost"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules named after `crate::` in `text` (comments removed), including those inside
/// `crate::{a::X, b}` groups.
fn crate_uses(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                out.insert(ident(part.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// Per top-level module, the other top-level modules its files use.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let rel = f.strip_prefix(src()).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        assert!(
            modules.contains(module.as_str()),
            "src/{} belongs to module `{module}`, which docs/architecture.md and this test do not place",
            rel.display()
        );
        let text = std::fs::read_to_string(&f).unwrap();
        let used: Vec<String> =
            crate_uses(&text).into_iter().filter(|u| modules.contains(u.as_str()) && *u != module).collect();
        out.entry(module).or_default().extend(used);
    }
    out
}

#[test]
fn modules_use_only_the_modules_below_them() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(m, a)| (*m, a.iter().copied().chain(["error"]).collect())).collect();
    let mut wrong = Vec::new();
    for (module, used) in uses() {
        for u in used {
            if !allowed[module.as_str()].contains(u.as_str()) {
                wrong.push(format!("`{module}` imports `{u}`"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against docs/architecture.md: {}", wrong.join("; "));
}

#[test]
fn the_allowed_arrows_have_no_circle() {
    // Each module may use only modules listed before it: the order is a topological order, so no circle.
    for (i, (module, allowed)) in ALLOWED.iter().enumerate() {
        for a in *allowed {
            let j = ALLOWED.iter().position(|(m, _)| m == a).unwrap();
            assert!(j < i, "`{module}` may use `{a}`, which comes after it");
        }
    }
}

#[test]
fn the_scanner_sees_imports_in_groups_and_paths_but_not_comments() {
    let text = "use crate::{engine::model::Model, io};\n// crate::cost is only named here\nlet x = crate::layout::X;";
    let got: Vec<String> = crate_uses(text).into_iter().collect();
    assert_eq!(got, ["engine", "io", "layout"]);
}
