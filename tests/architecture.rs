//! The architecture's rules, checked on the source tree. Data flows one way:
//!
//! ```text
//!  9  commands      CLI only: each command's library side (main.rs parses arguments)
//!  8  runner        executes the job graph; content-addressed store; locks; results/
//!  7  pipeline      layered config, validation, sweep expansion into a job graph
//!  6  stages        one file per stage kind: typed params, inputs, the job's work
//!  5  artifacts     every artifact kind's record (read/write), the manifest, the cache layout
//!  4  method, eval, heal   distances and selection; scoring and metrics; LoRA training
//!  3  model, data   architecture descriptions and the Burn transformer; text sets and tasks
//!  2  formats, source, backend, report   bytes to values; where bytes come from; concrete
//!                   Burn backends; figures from plain series
//!  1  digest        sha256 of files, cached by size and mtime
//!  0  fsutil, paths, peak_rss, progress, runtime   leaf utilities
//! ```
//!
//! Rules:
//! 1. A module imports only from modules of a LOWER layer (never from its own layer's siblings,
//!    never from above). So nothing outside the CLI imports `commands`, the model knows nothing
//!    of training, stages, pipelines or figures, and report draws plain series.
//! 2. No stage file imports another stage file: stages share only `stages/mod.rs` (the `Stage`
//!    trait, parameter helpers, the registry) and `stages/context.rs`; what one stage reads of
//!    another's output goes through `artifacts`.
//! 3. The files of one module do not import each other in a cycle.
//!
//! A new top-level module must be given a layer here; the test fails until it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module of src/.
const LAYERS: &[(&str, u32)] = &[
    ("fsutil", 0),
    ("paths", 0),
    ("peak_rss", 0),
    ("progress", 0),
    ("runtime", 0),
    ("workers", 0),
    ("digest", 1),
    ("formats", 2),
    ("source", 2),
    ("backend", 2),
    ("report", 2),
    ("model", 3),
    ("data", 3),
    ("method", 4),
    ("eval", 4),
    ("heal", 4),
    ("artifacts", 5),
    ("stages", 6),
    ("pipeline", 7),
    ("runner", 8),
    ("commands", 9),
];

/// Files of stages/ that every stage file may use.
const STAGE_SHARED: &[&str] = &["mod", "context"];

/// A source file: its top-level module, its file name inside that module ("mod" for mod.rs and
/// for a top-level single-file module), and its text.
struct SourceFile {
    path: String,
    module: String,
    file: String,
    text: String,
}

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The code without comments (line comments, doc comments and block comments).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map(|i| &r[i..]).unwrap_or("");
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map(|i| &r[i + 2..]).unwrap_or("");
        } else if rest.starts_with('"') {
            // skip string literals (they may mention paths)
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            rest = rest.get(i + 1..).unwrap_or("");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident_after(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// Every `prefix` path's first segment in `code`, including the members of `prefix{a, b::c}`.
fn first_segments(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix) {
        let at = from + i;
        from = at + prefix.len();
        // a whole path segment: not `mycrate::` or `xsuper::`
        if at > 0 {
            let prev = code[..at].chars().last().unwrap();
            if prev.is_ascii_alphanumeric() || prev == '_' {
                continue;
            }
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            for member in group[..close].split(',') {
                if let Some(id) = ident_after(member.trim()) {
                    out.push(id.to_string());
                }
            }
        } else if let Some(id) = ident_after(rest) {
            out.push(id.to_string());
        }
    }
    out
}

/// The rule violations of a set of source files.
fn violations(files: &[SourceFile]) -> Vec<String> {
    let mut out = Vec::new();
    let modules: BTreeSet<&str> = files.iter().map(|f| f.module.as_str()).collect();
    for m in &modules {
        if layer(m).is_none() {
            out.push(format!(
                "src/{m}: a module without a layer (add it to LAYERS in tests/architecture.rs)"
            ));
        }
    }
    // module -> its files, for resolving `super::x`
    let mut files_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for f in files {
        files_of.entry(&f.module).or_default().insert(&f.file);
    }
    // intra-module file edges, for the cycle rule
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let code = strip_comments(&f.text);
        let own = layer(&f.module);
        for target in first_segments(&code, "crate::") {
            if target == f.module || !modules.contains(target.as_str()) {
                continue;
            }
            match (own, layer(&target)) {
                (Some(a), Some(b)) if b >= a => out.push(format!(
                    "{}: imports crate::{target} (layer {b}) from {} (layer {a}): a module may only import from lower layers",
                    f.path, f.module
                )),
                _ => {}
            }
        }
        // same-module references: crate::<own>::file and super::file
        let mut local: Vec<String> = Vec::new();
        if f.file != "mod" {
            local.extend(first_segments(&code, "super::"));
        }
        let own_prefix = format!("crate::{}::", f.module);
        local.extend(first_segments(&code, &own_prefix));
        let siblings = files_of.get(f.module.as_str()).cloned().unwrap_or_default();
        for target in local {
            if target == f.file || !siblings.contains(target.as_str()) {
                continue;
            }
            if f.module == "stages"
                && !STAGE_SHARED.contains(&f.file.as_str())
                && !STAGE_SHARED.contains(&target.as_str())
            {
                out.push(format!(
                    "{}: the stage file {} imports the stage file {target}: share through stages/mod.rs or artifacts",
                    f.path, f.file
                ));
            }
            edges
                .entry((f.module.clone(), f.file.clone()))
                .or_default()
                .insert(target);
        }
    }
    // cycles among the files of one module (depth-first search)
    for ((module, file), _) in edges.iter() {
        let mut stack = vec![(file.clone(), vec![file.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges
                .get(&(module.clone(), at.clone()))
                .into_iter()
                .flatten()
            {
                if next == file {
                    let mut cycle = trail.clone();
                    cycle.push(next.clone());
                    // report each cycle once, from its smallest file name
                    if trail.iter().all(|t| t >= file) {
                        out.push(format!(
                            "src/{module}: the files {} import each other in a cycle",
                            cycle.join(" -> ")
                        ));
                    }
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn source_tree() -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    collect(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).unwrap();
            let parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            let (module, file) = match parts.as_slice() {
                [single] if single == "lib" || single == "main" => return None,
                [single] => (single.clone(), "mod".to_string()),
                [module, file, ..] => (module.clone(), file.clone()),
                [] => return None,
            };
            Some(SourceFile {
                path: format!("src/{}", rel.display()),
                module,
                file,
                text: std::fs::read_to_string(&p).unwrap(),
            })
        })
        .collect()
}

#[test]
fn the_source_tree_follows_the_layer_rules() {
    let files = source_tree();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let v = violations(&files);
    assert!(v.is_empty(), "architecture rules broken:\n{}", v.join("\n"));
}

fn file(path: &str, text: &str) -> SourceFile {
    let parts: Vec<&str> = path.trim_end_matches(".rs").split('/').collect();
    SourceFile {
        path: format!("src/{path}"),
        module: parts[0].to_string(),
        file: parts.get(1).unwrap_or(&"mod").to_string(),
        text: text.to_string(),
    }
}

#[test]
fn an_import_from_a_higher_layer_is_caught() {
    let files = [
        file("model/load.rs", "use crate::stages::heal::HealRecord;\n"),
        file("stages/heal.rs", "pub struct HealRecord;"),
    ];
    let v = violations(&files);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("src/model/load.rs: imports crate::stages"),
        "{v:?}"
    );
}

#[test]
fn an_import_within_a_layer_and_grouped_imports_are_caught() {
    let files = [
        file(
            "eval/loss.rs",
            "use crate::{heal::train::LogRow, model::Transformer};",
        ),
        file("heal/train.rs", "pub struct LogRow;"),
        file("model/transformer.rs", "pub struct Transformer;"),
    ];
    let v = violations(&files);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("imports crate::heal (layer 4) from eval (layer 4)"),
        "{v:?}"
    );
}

#[test]
fn comments_and_strings_do_not_count_as_imports() {
    let files = [
        file(
            "model/load.rs",
            "//! see crate::stages for callers\nconst S: &str = \"crate::runner\";\n/* crate::commands */",
        ),
        file("stages/mod.rs", ""),
        file("runner/mod.rs", ""),
        file("commands/mod.rs", ""),
    ];
    assert!(violations(&files).is_empty());
}

#[test]
fn a_stage_file_importing_another_is_caught() {
    let files = [
        file(
            "stages/mod.rs",
            "pub mod heal; pub mod load; pub trait Stage {}",
        ),
        file("stages/context.rs", ""),
        file(
            "stages/heal.rs",
            "use super::load::open_model;\nuse super::{Stage, context::JobContext};",
        ),
        file("stages/load.rs", "use super::Stage;"),
    ];
    let v = violations(&files);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("the stage file heal imports the stage file load"),
        "{v:?}"
    );
}

#[test]
fn a_cycle_between_files_of_a_module_is_caught() {
    let files = [
        file("model/linear.rs", "use super::nf4::Nf4Weight;"),
        file("model/nf4.rs", "use crate::model::linear::Linear;"),
    ];
    let v = violations(&files);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("linear -> nf4 -> linear"), "{v:?}");
}

#[test]
fn a_module_without_a_layer_is_caught() {
    let v = violations(&[file("newthing/mod.rs", "")]);
    assert!(
        v[0].contains("src/newthing: a module without a layer"),
        "{v:?}"
    );
}
