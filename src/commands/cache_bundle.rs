//! `cache export` and `cache import`: pipelines' cached artifacts into one zip file, and back
//! into another cache (runner::bundle does the work; this prints).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::pipeline_cmds::{load_graph, report_error};
use crate::runner::bundle::{self, Imported, Wanted};
use crate::runner::exit;

/// Export the cached artifacts of the pipelines' jobs (of `stages` only, when given) to `out`.
/// Exit 2 for a bad pipeline, an unknown stage or pipelines in different caches; jobs that are
/// not cached are listed and skipped.
pub fn export(
    files: &[PathBuf],
    stages: &[String],
    sets: &[String],
    cache_cli: Option<&Path>,
    out: &Path,
) -> Result<u8> {
    let mut wanted = Vec::new();
    let mut seen = BTreeSet::new();
    let mut roots = BTreeSet::new();
    let mut stage_names = BTreeSet::new();
    let stage_set: BTreeSet<String> = stages.iter().cloned().collect();
    for f in files {
        let (cfg, graph, root) = match load_graph(f, sets, cache_cli) {
            Ok(x) => x,
            Err(e) => {
                report_error(&e.to_string());
                return Ok(exit::CONFIG);
            }
        };
        roots.insert(root);
        stage_names.extend(cfg.stages.keys().cloned());
        for job in &graph.jobs {
            if (stages.is_empty() || job.in_stages(&stage_set)) && seen.insert(job.key.clone()) {
                wanted.push(Wanted {
                    label: format!("{}: {}", cfg.name, job.label()),
                    kind: job.kind.kind().to_string(),
                    key: job.key.clone(),
                });
            }
        }
    }
    for s in stages {
        if !stage_names.contains(s) {
            report_error(&format!(
                "cache export --stage {s}: no stage named \"{s}\"{} in {}",
                crate::pipeline::config_error::did_you_mean(
                    s,
                    stage_names.iter().map(|s| s.as_str())
                ),
                joined(files)
            ));
            return Ok(exit::CONFIG);
        }
    }
    if roots.len() > 1 {
        report_error(&format!(
            "cache export: the pipelines use different caches ({}); export each on its own \
             or give --cache-dir",
            joined(&roots)
        ));
        return Ok(exit::CONFIG);
    }
    let Some(root) = roots.into_iter().next() else {
        report_error("cache export: name at least one pipeline file");
        return Ok(exit::CONFIG);
    };
    // --out: a new file or a regular file that is none of the inputs (never a link, a FIFO,
    // a device, a pipeline file or something in the cache); written through a temporary file
    // beside it and renamed
    if let Err(e) = check_out_path(out, files, &root) {
        report_error(&format!("cache export --out {}: {e:#}", out.display()));
        return Ok(exit::CONFIG);
    }
    let summary = match bundle::export(&root, &wanted, out) {
        Ok(s) => s,
        Err(e) => {
            report_error(&format!("cache export: {e:#}"));
            return Ok(exit::JOBS_FAILED);
        }
    };
    for label in &summary.not_cached {
        println!("not cached, not exported: {label}");
    }
    println!(
        "{} artifacts ({:.1} MiB before compression) written to {}; {} jobs not cached",
        summary.artifacts,
        summary.bytes as f64 / (1u64 << 20) as f64,
        out.display(),
        summary.not_cached.len()
    );
    Ok(exit::SUCCESS)
}

/// Where `cache export` may write its bundle: nothing there yet, or a regular file (not
/// through a symbolic link) that is not one of the pipeline files and lies outside the cache.
fn check_out_path(out: &Path, inputs: &[PathBuf], cache_root: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
        Ok(meta) => {
            let ty = meta.file_type();
            if ty.is_symlink() {
                anyhow::bail!(
                    "a symbolic link; give the path of a regular file (it would replace the link)"
                );
            }
            if !ty.is_file() {
                anyhow::bail!(
                    "not a regular file ({}); give the path of a new or regular file",
                    match crate::fsutil::path_kind(out) {
                        Ok(crate::fsutil::PathKind::Dir) => "a directory",
                        Ok(crate::fsutil::PathKind::Special(what)) => what,
                        _ => "something else",
                    }
                );
            }
            for input in inputs {
                if same_file(out, input) {
                    anyhow::bail!(
                        "this is the pipeline file {}; it would be overwritten",
                        input.display()
                    );
                }
            }
        }
    }
    let parent = crate::fsutil::parent_dir(out);
    if let (Ok(dir), Ok(cache)) = (
        std::fs::canonicalize(parent),
        std::fs::canonicalize(cache_root),
    ) {
        if dir.starts_with(&cache) {
            anyhow::bail!(
                "inside the cache {}; write the bundle elsewhere",
                cache_root.display()
            );
        }
    }
    Ok(())
}

/// Whether two paths name the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Paths for a message: "a, b, c".
fn joined<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> String {
    paths
        .into_iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Import a bundle into the cache: exit 2 when the file is not a bundle, 1 when an artifact of
/// it was rejected (the others are imported), 0 otherwise.
pub fn import(bundle_file: &Path, cache_root: &Path, max_bytes: u64) -> Result<u8> {
    let done = match bundle::import(cache_root, bundle_file, max_bytes) {
        Ok(d) => d,
        Err(e) => {
            report_error(&format!("cache import: {e:#}"));
            return Ok(exit::CONFIG);
        }
    };
    let (mut added, mut present, mut rejected) = (0, 0, 0);
    for d in &done {
        match d {
            Imported::Added { kind, key } => {
                added += 1;
                println!("imported {kind}/{key}");
            }
            Imported::AlreadyCached { .. } => present += 1,
            Imported::Rejected { kind, key, why } => {
                rejected += 1;
                println!("rejected {kind}/{key}: {why}");
            }
        }
    }
    println!(
        "{added} artifacts imported into {}, {present} already cached, {rejected} rejected",
        cache_root.display()
    );
    Ok(if rejected > 0 {
        exit::JOBS_FAILED
    } else {
        exit::SUCCESS
    })
}
