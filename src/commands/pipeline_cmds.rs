//! `run`, `plan`, `cache ls|verify|gc` and `stages`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::pipeline::{self, ConfigError, JobGraph, PipelineConfig};
use crate::runner::{self, exit, results, store::Status, store::Store, RunOptions};

/// Which cache root a pipeline uses: --cache-dir, else the file's cache_dir, else the default.
pub fn cache_root_for(cfg: &PipelineConfig, cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| cfg.cache_dir.clone())
        .unwrap_or_else(crate::paths::default_cache_root)
}

/// Load and expand; configuration errors are returned as `ConfigError` for exit code 2.
pub fn load_graph(
    file: &Path,
    sets: &[String],
    cache_cli: Option<&Path>,
) -> Result<(PipelineConfig, JobGraph, PathBuf), ConfigError> {
    let cfg = pipeline::load(file, sets)?;
    let cache_root = cache_root_for(&cfg, cache_cli);
    let graph = pipeline::expand(&cfg, &cache_root)?;
    Ok((cfg, graph, cache_root))
}

pub fn plan(
    file: &Path,
    sets: &[String],
    force: &[String],
    cache_cli: Option<&Path>,
) -> Result<u8> {
    let (cfg, graph, cache_root) = match load_graph(file, sets, cache_cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let force = check_force(&cfg, force)?;
    let planned = runner::plan(&cfg, &graph, &cache_root, &force);
    let width = planned.iter().map(|p| p.label.len()).max().unwrap_or(0);
    println!(
        "pipeline {} ({} jobs; cache {})",
        cfg.name,
        graph.jobs.len(),
        cache_root.display()
    );
    for (p, j) in planned.iter().zip(&graph.jobs) {
        println!("  {:width$}  {}  {}", p.label, j.short_key(), p.reason);
    }
    let to_run = planned
        .iter()
        .filter(|p| p.reason != runner::Reason::Cached)
        .count();
    println!("{to_run} to run, {} cached", planned.len() - to_run);
    Ok(exit::SUCCESS)
}

fn check_force(cfg: &PipelineConfig, force: &[String]) -> Result<BTreeSet<String>> {
    for f in force {
        if !cfg.stages.contains_key(f) {
            anyhow::bail!(
                "--force {f}: no stage named \"{f}\"{} in {}",
                crate::pipeline::config_error::did_you_mean(
                    f,
                    cfg.stages.keys().map(|s| s.as_str())
                ),
                cfg.file.display()
            );
        }
    }
    Ok(force.iter().cloned().collect())
}

pub struct RunArgs<'a> {
    pub file: &'a Path,
    pub sets: &'a [String],
    pub force: &'a [String],
    pub no_wait: bool,
    pub verify: bool,
    pub cache_cli: Option<&'a Path>,
}

pub fn run(args: RunArgs) -> Result<u8> {
    let started_at = runner::now_rfc3339();
    let (cfg, graph, cache_root) = match load_graph(args.file, args.sets, args.cache_cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let force = check_force(&cfg, args.force)?;
    let Some(_lock) = runner::lock_pipeline(&cache_root, &cfg.name, args.no_wait)? else {
        eprintln!("error: another run of pipeline {} is in progress (lock held under {}); not waiting (--no-wait)", cfg.name, cache_root.join("locks").display());
        return Ok(exit::LOCKED);
    };
    let results_dir = cfg.results_dir.join(&cfg.name);
    results::write_resolved(&cfg, &results_dir)?;
    tracing::info!(
        "pipeline {}: {} jobs, cache {}",
        cfg.name,
        graph.jobs.len(),
        cache_root.display()
    );
    let summary = runner::run(
        &cfg,
        &graph,
        &cache_root,
        &RunOptions {
            force,
            verify: args.verify,
            runtime: crate::runtime::current().clone(),
        },
    )?;
    let code = summary.exit_code();
    results::write_jobs(&summary, &results_dir)?;
    results::append_run(
        &results_dir,
        &started_at,
        &runner::now_rfc3339(),
        &summary,
        code,
    )?;
    println!(
        "pipeline {}: {} jobs run, {} cached, {} failed, {} skipped; results in {}",
        cfg.name,
        summary.ran(),
        summary.cached(),
        summary.failed(),
        summary.skipped(),
        results_dir.display()
    );
    for j in &summary.jobs {
        if let runner::Outcome::Failed(e) | runner::Outcome::Skipped(e) = &j.outcome {
            println!("  {}: {e}", j.label);
        }
    }
    Ok(code)
}

pub fn cache_ls(cache_root: &Path) -> Result<u8> {
    let store = Store::new(cache_root);
    for (kind, key, dir) in store.list() {
        let size: u64 = walk_size(&dir);
        let (stage, finished) = match store.status(&kind, &key, false) {
            Status::Valid(m) => (
                crate::pipeline::graph::label(&m.stage, &m.assignment),
                m.finished_at,
            ),
            Status::Corrupt(r) => (format!("CORRUPT: {r}"), String::new()),
            Status::Missing => continue,
        };
        println!(
            "{kind:12} {}  {:>10}  {finished:25}  {stage}",
            &key[..12],
            human_size(size)
        );
    }
    Ok(exit::SUCCESS)
}

pub fn cache_verify(cache_root: &Path) -> Result<u8> {
    let store = Store::new(cache_root);
    let (mut ok, mut bad) = (0, 0);
    for (kind, key, _) in store.list() {
        match store.status(&kind, &key, true) {
            Status::Valid(_) => ok += 1,
            Status::Corrupt(r) => {
                bad += 1;
                println!("corrupt  {kind}/{key}: {r}");
            }
            Status::Missing => {}
        }
    }
    println!("{ok} artifacts verified, {bad} corrupt");
    Ok(if bad > 0 {
        exit::JOBS_FAILED
    } else {
        exit::SUCCESS
    })
}

/// Remove artifacts that none of the given pipelines reaches (and leftovers of interrupted jobs).
pub fn cache_gc(files: &[PathBuf], cache_cli: Option<&Path>, dry_run: bool) -> Result<u8> {
    let mut keep = BTreeSet::new();
    let mut roots = BTreeSet::new();
    for f in files {
        let (_, graph, root) = match load_graph(f, &[], cache_cli) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::CONFIG);
            }
        };
        keep.extend(graph.jobs.iter().map(|j| j.key.clone()));
        roots.insert(root);
    }
    if roots.is_empty() {
        roots.insert(
            cache_cli
                .map(Path::to_path_buf)
                .unwrap_or_else(crate::paths::default_cache_root),
        );
    }
    let (mut removed, mut kept, mut bytes) = (0, 0, 0u64);
    for root in roots {
        let store = Store::new(&root);
        for (kind, key, dir) in store.list() {
            if keep.contains(&key) {
                kept += 1;
                continue;
            }
            bytes += walk_size(&dir);
            removed += 1;
            println!(
                "{} {kind}/{key}",
                if dry_run { "would remove" } else { "removing" }
            );
            if !dry_run {
                let _lock = store.lock(&kind, &key)?;
                std::fs::remove_dir_all(&dir)?;
            }
        }
        for tmp in store.leftovers() {
            println!(
                "{} leftover {}",
                if dry_run { "would remove" } else { "removing" },
                tmp.display()
            );
            if !dry_run {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
    }
    println!(
        "{removed} artifacts ({}) {}, {kept} kept",
        human_size(bytes),
        if dry_run { "unreachable" } else { "removed" }
    );
    Ok(exit::SUCCESS)
}

pub fn stages() -> Result<u8> {
    for s in crate::stages::registry() {
        println!(
            "== {} (version {}): {}",
            s.kind(),
            s.version(),
            s.description()
        );
        let inputs: Vec<String> = s
            .inputs()
            .iter()
            .map(|i| {
                format!(
                    "{}{} <- {}{}",
                    i.name,
                    if i.required { "" } else { "?" },
                    i.kinds.join("|"),
                    if i.many { " (gathers)" } else { "" }
                )
            })
            .collect();
        println!(
            "inputs: {}",
            if inputs.is_empty() {
                "none".into()
            } else {
                inputs.join(", ")
            }
        );
        println!("{}", s.defaults().trim_end());
        println!();
    }
    Ok(exit::SUCCESS)
}

fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            total += walk_size(&p);
        } else {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < 4 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
