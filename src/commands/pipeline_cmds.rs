//! `run` (and `run --job`), `plan`, `cache ls|verify|gc` and `stages`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

use crate::pipeline::{self, ConfigError, JobGraph, PipelineConfig};
use crate::runner::cache::GcAction;
use crate::runner::{self, exit, results, RunOptions};

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
    load_graph_with(file, sets, cache_cli, false)
}

/// `allow_absent`: Hugging Face sources missing from the local cache are reported, not fatal
/// (planning only).
fn load_graph_with(
    file: &Path,
    sets: &[String],
    cache_cli: Option<&Path>,
    allow_absent: bool,
) -> Result<(PipelineConfig, JobGraph, PathBuf), ConfigError> {
    let mut cfg = pipeline::load(file, sets)?;
    let cache_root = cache_root_for(&cfg, cache_cli);
    cfg.refresh = runner::refresh::load(&cache_root, &cfg.name).map_err(|e| ConfigError {
        origin: crate::pipeline::config_error::Origin::Unknown,
        key: String::new(),
        message: format!("{e:#}"),
    })?;
    let graph = if allow_absent {
        pipeline::expand_allowing_absent(&cfg, &cache_root)?
    } else {
        pipeline::expand(&cfg, &cache_root)?
    };
    warn_unused_axes(&cfg, &graph);
    Ok((cfg, graph, cache_root))
}

fn warn_unused_axes(cfg: &PipelineConfig, graph: &JobGraph) {
    for axis in graph.unused_axes(cfg) {
        tracing::warn!(
            "{}: the sweep axis \"{axis}\" is used by no stage (reference it as \"${{{axis}}}\" in a stage's parameters)",
            cfg.file.display()
        );
    }
}

pub fn plan(
    file: &Path,
    sets: &[String],
    force: &[String],
    verify: bool,
    memory: bool,
    cache_cli: Option<&Path>,
) -> Result<u8> {
    let (cfg, graph, cache_root) = match load_graph_with(file, sets, cache_cli, true) {
        Ok(x) => x,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    let absent = graph.absent_sources();
    let force = match check_force(&cfg, force) {
        Ok(f) => f,
        Err(e) => {
            report_error(&format!("{e:#}"));
            return Ok(exit::CONFIG);
        }
    };
    let planned = runner::plan(&cfg, &graph, &cache_root, &force, verify);
    let estimates = runner::memory::estimate(&cfg, &graph, &cache_root);
    let limit = runner::memory::limit(&cfg);
    let width = planned.iter().map(|p| p.label.len()).max().unwrap_or(0);
    println!(
        "pipeline {} ({} jobs; cache {}; backend {}, {})",
        cfg.name,
        graph.jobs.len(),
        cache_root.display(),
        cfg.backend,
        cfg.precision
    );
    let mut waiting = 0;
    let mut too_big = Vec::new();
    for (i, (p, j)) in planned.iter().zip(&graph.jobs).enumerate() {
        let mem = estimates[i]
            .as_ref()
            .map(|m| crate::model::memory::human_bytes(m.total()))
            .unwrap_or_default();
        if graph.waits_for_source(i) {
            waiting += 1;
            let key = "?".repeat(j.short_key().len());
            println!(
                "  {:width$}  {key}  {mem:>9}  needs a source not on this machine",
                p.label
            );
        } else {
            println!(
                "  {:width$}  {}  {mem:>9}  {}",
                p.label,
                j.short_key(),
                p.reason
            );
        }
        if let Some(m) = &estimates[i] {
            if memory {
                println!("  {:width$}  {}", "", m.plan.estimate.breakdown());
                for (name, value) in &m.plan.settings {
                    println!("  {:width$}  planned: {name} = {value}", "");
                }
            }
            if let Some(l) = &limit {
                // as `run` checks: only jobs that will run
                if m.total() > l.bytes && p.reason != runner::Reason::Cached {
                    too_big.push(runner::memory::does_not_fit(&j.stage, &p.label, m, l));
                }
            }
        }
    }
    let where_ = if cfg.backend == crate::backend::BackendKind::Flex {
        "host"
    } else {
        "device"
    };
    match &limit {
        Some(l) => println!(
            "peak {where_} memory per job estimated (column 3); limit {} ({})",
            crate::model::memory::human_bytes(l.bytes),
            l.origin
        ),
        None => println!(
            "peak {where_} memory per job estimated (column 3); the device's memory is unknown \
             (set memory_limit to check it)"
        ),
    }
    for m in &too_big {
        eprintln!("warning: {m}");
    }
    let to_run = planned
        .iter()
        .filter(|p| p.reason != runner::Reason::Cached)
        .count();
    if waiting == 0 {
        println!("{to_run} to run, {} cached", planned.len() - to_run);
    } else {
        println!(
            "{} to run, {} cached, {waiting} waiting for sources not on this machine",
            to_run - waiting,
            planned.len() - to_run
        );
        for m in &absent {
            eprintln!("warning: {m}");
        }
        eprintln!(
            "warning: the configuration is valid; `layerprune run` needs the sources above \
             (keys shown as ? depend on them)"
        );
    }
    Ok(exit::SUCCESS)
}

/// What `run` checks before any job (with or without --job): the --force stages exist and the
/// backend is available. The forced stages, or the message for the user.
fn preflight(
    cfg: &PipelineConfig,
    args: &RunArgs,
) -> std::result::Result<BTreeSet<String>, String> {
    let force = check_force(cfg, args.force).map_err(|e| format!("{e:#}"))?;
    crate::backend::check_available(cfg.backend)
        .map_err(|e| format!("{}: {e:#}", args.file.display()))?;
    Ok(force)
}

/// Refuse, before any job starts, a job that will run (not cached) whose estimated peak memory
/// exceeds the device's (`only`: just that job, for `run --job`).
fn check_memory(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    cache_root: &Path,
    force: &BTreeSet<String>,
    only: Option<usize>,
    targets: &BTreeSet<String>,
) -> std::result::Result<(), String> {
    let Some(limit) = runner::memory::limit(cfg) else {
        return Ok(());
    };
    let estimates = runner::memory::estimate(cfg, graph, cache_root);
    let planned = runner::plan(cfg, graph, cache_root, force, false);
    // with --target, only the jobs that will run
    let needed = runner::needed_jobs(graph, targets, |i| {
        planned[i].reason == runner::Reason::Cached
    });
    let mut refused = Vec::new();
    for (i, m) in estimates.iter().enumerate() {
        let (Some(m), true) = (m, only.is_none_or(|o| o == i) && needed[i]) else {
            continue;
        };
        if planned[i].reason != runner::Reason::Cached && m.total() > limit.bytes {
            let job = &graph.jobs[i];
            refused.push(runner::memory::does_not_fit(
                &job.stage,
                &job.label(),
                m,
                &limit,
            ));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {} job(s) would not fit in memory:\n  {}",
            cfg.file.display(),
            refused.len(),
            refused.join("\n  ")
        ))
    }
}

fn check_force(cfg: &PipelineConfig, force: &[String]) -> Result<BTreeSet<String>> {
    check_stage_names(cfg, "--force", force)
}

/// The names given to `option`, each checked to be a stage of the pipeline.
fn check_stage_names(
    cfg: &PipelineConfig,
    option: &str,
    names: &[String],
) -> Result<BTreeSet<String>> {
    for f in names {
        if !cfg.stages.contains_key(f) {
            anyhow::bail!(
                "{option} {f}: no stage named \"{f}\"{} in {}",
                crate::pipeline::config_error::did_you_mean(
                    f,
                    cfg.stages.keys().map(|s| s.as_str())
                ),
                cfg.file.display()
            );
        }
    }
    Ok(names.iter().cloned().collect())
}

pub struct RunArgs<'a> {
    pub file: &'a Path,
    pub sets: &'a [String],
    pub force: &'a [String],
    pub no_wait: bool,
    pub verify: bool,
    pub cache_cli: Option<&'a Path>,
    /// Run only this job (key, key prefix or label), whose inputs must be cached.
    pub job: Option<&'a str>,
    /// Stage names or kinds to recompute (with their dependants) under new keys.
    pub refresh: &'a [String],
    /// Stages to bring up to date (empty: all): their jobs and what those that run read.
    pub targets: &'a [String],
}

/// `run FILE --job KEY`: exactly one job, no pipeline lock (Slurm array tasks run many at
/// once); exit 2 when the job is unknown or its inputs are not cached, 1 when it fails.
fn run_job(args: &RunArgs, selector: &str) -> Result<u8> {
    if !args.refresh.is_empty() {
        report_error("--refresh marks stages for a whole run; with --job, run `layerprune run FILE --refresh STAGE` first (or submit again)");
        return Ok(exit::CONFIG);
    }
    let (cfg, graph, cache_root) = match load_graph(args.file, args.sets, args.cache_cli) {
        Ok(x) => x,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    let force = match preflight(&cfg, args) {
        Ok(f) => f,
        Err(m) => {
            report_error(&m);
            return Ok(exit::CONFIG);
        }
    };
    let i = match runner::find_job(&graph, selector) {
        Ok(i) => i,
        Err(e) => {
            report_error(&format!("{}: {e:#}", args.file.display()));
            return Ok(exit::CONFIG);
        }
    };
    if let Err(m) = check_memory(&cfg, &graph, &cache_root, &force, Some(i), &BTreeSet::new()) {
        report_error(&m);
        return Ok(exit::CONFIG);
    }
    let opts = RunOptions {
        force,
        verify: args.verify,
        runtime: crate::runtime::current().clone(),
        targets: BTreeSet::new(),
        journal: None,
    };
    // SIGINT / SIGTERM (`run` installed the watch): the job's temporary directory removed, exit
    // 130 / 143; a Slurm array task has no pipeline records to write
    let label = graph.jobs[i].label();
    runner::interrupt::set_hook(Box::new(move |signum: i32| {
        tracing::warn!(
            "interrupted by {}: job {label} stopped; rerun to resume",
            runner::interrupt::signal_name(signum)
        );
    }));
    let record = runner::run_one(&cfg, &graph, i, &cache_root, &opts);
    runner::interrupt::clear_hook();
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            report_error(&format!("{e:#}"));
            return Ok(exit::CONFIG);
        }
    };
    match &record.outcome {
        runner::Outcome::Failed(e) => {
            report_error(&format!("{} failed: {e}", record.label));
            Ok(exit::JOBS_FAILED)
        }
        outcome => {
            let what = if *outcome == runner::Outcome::Ran {
                "ran"
            } else {
                "cached"
            };
            let mib = |b: Option<u64>| {
                b.map(|b| format!("{} MiB", b >> 20))
                    .unwrap_or_else(|| "-".into())
            };
            let memory = match (record.peak_rss, record.estimated) {
                (None, None) => String::new(),
                (peak, est) => format!("; peak memory {} (estimated {})", mib(peak), mib(est)),
            };
            println!(
                "{} ({}): {what} in {:.1} s{memory}",
                record.label,
                &record.key[..12],
                record.seconds
            );
            Ok(exit::SUCCESS)
        }
    }
}

/// `status FILE`: per stage, jobs done / running / failed / pending; exit 1 when any failed.
pub fn status(file: &Path, sets: &[String], cache_cli: Option<&Path>) -> Result<u8> {
    let (cfg, graph, cache_root) = match load_graph(file, sets, cache_cli) {
        Ok(x) => x,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    let (stages, failed) = runner::status::status(&cfg, &graph, &cache_root)?;
    let width = stages
        .iter()
        .map(|s| s.stage.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "pipeline {} ({} jobs; cache {})",
        cfg.name,
        graph.jobs.len(),
        cache_root.display()
    );
    println!(
        "  {:width$}  {:>5}  {:>5}  {:>7}  {:>6}  {:>7}",
        "stage", "jobs", "done", "running", "failed", "pending"
    );
    for c in &stages {
        println!(
            "  {:width$}  {:>5}  {:>5}  {:>7}  {:>6}  {:>7}",
            c.stage, c.jobs, c.done, c.running, c.failed, c.pending
        );
    }
    for (label, e) in &failed {
        println!("  failed: {label}: {}", e.lines().next().unwrap_or(""));
    }
    Ok(if failed.is_empty() {
        exit::SUCCESS
    } else {
        exit::JOBS_FAILED
    })
}

pub fn run(args: RunArgs) -> Result<u8> {
    // from here on SIGINT and SIGTERM stop the run (or the --job) with exit 130 / 143, its
    // temporary directories removed; the hooks set below record the run as far as it got
    runner::interrupt::install();
    if let Some(selector) = args.job {
        return run_job(&args, selector);
    }
    let started_at = runner::now_rfc3339();
    // the configuration first (cheap), then the pipeline's lock, then the graph (which hashes
    // sources): --no-wait answers at once
    let cfg = match pipeline::load(args.file, args.sets) {
        Ok(c) => c,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    let cache_root = cache_root_for(&cfg, args.cache_cli);
    let force = match preflight(&cfg, &args) {
        Ok(f) => f,
        Err(m) => {
            report_error(&m);
            return Ok(exit::CONFIG);
        }
    };
    let targets = match check_stage_names(&cfg, "--target", args.targets) {
        Ok(t) => t,
        Err(e) => {
            report_error(&format!("{e:#}"));
            return Ok(exit::CONFIG);
        }
    };
    let Some(_lock) = runner::lock_pipeline(&cache_root, &cfg.name, args.no_wait)? else {
        report_error(&format!("another run of pipeline {} is in progress (lock held under {}); not waiting (--no-wait)", cfg.name, cache_root.join("locks").display()));
        return Ok(exit::LOCKED);
    };
    // a signal before the graph is known (hashing sources can take minutes) still leaves its
    // line in runs.csv; the hook is cleared whichever way this function returns
    let _clear_hook = ClearHookOnReturn;
    runner::interrupt::set_hook(interrupted_run_hook(
        cfg.results_dir.join(&cfg.name),
        started_at.clone(),
        None,
    ));
    let mut cfg = cfg;
    match runner::refresh::load(&cache_root, &cfg.name) {
        Ok(marks) => cfg.refresh = marks,
        Err(e) => {
            report_error(&format!("{e:#}"));
            return Ok(exit::CONFIG);
        }
    }
    if !args.refresh.is_empty() {
        // an unknown stage is the user's (exit 2); failing to save the marks (a full disk) is
        // the machine's (exit 1)
        let stages = match runner::refresh::stages_named(&cfg, args.refresh) {
            Ok(s) => s,
            Err(e) => {
                report_error(&format!("{e:#}"));
                return Ok(exit::CONFIG);
            }
        };
        if let Err(e) =
            runner::refresh::mark(&cache_root, &mut cfg, &stages, &runner::now_rfc3339())
        {
            report_error(&format!("saving the refresh marks: {e:#}"));
            return Ok(exit::JOBS_FAILED);
        }
        tracing::info!(
            "refreshing {} and their dependants (new keys; the previous artifacts stay cached)",
            stages.join(", ")
        );
    }
    let graph = match pipeline::expand(&cfg, &cache_root) {
        Ok(g) => g,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    warn_unused_axes(&cfg, &graph);
    if let Err(m) = check_memory(&cfg, &graph, &cache_root, &force, None, &targets) {
        report_error(&m);
        return Ok(exit::CONFIG);
    }
    let results_dir = cfg.results_dir.join(&cfg.name);
    tracing::info!(
        "pipeline {}: {} jobs, cache {}",
        cfg.name,
        graph.jobs.len(),
        cache_root.display()
    );
    // a signal from here on records the jobs as far as they got (jobs.csv, STALE.md, runs.csv)
    let journal = Arc::new(runner::RunJournal::new(&graph));
    runner::interrupt::set_hook(interrupted_run_hook(
        results_dir.clone(),
        started_at.clone(),
        Some(journal.clone()),
    ));
    // from here on the run records itself whatever happens: a failure is exit 1, never 2
    let mut run_error = results::write_resolved(&cfg, &results_dir).err();
    let summary = runner::run(
        &cfg,
        &graph,
        &cache_root,
        &RunOptions {
            force,
            verify: args.verify,
            runtime: crate::runtime::current().clone(),
            targets,
            journal: Some(journal),
        },
    );
    if let Some(e) = &summary.error {
        run_error.get_or_insert_with(|| anyhow::anyhow!("{e}"));
    }
    let code = if run_error.is_some() {
        exit::JOBS_FAILED
    } else {
        summary.exit_code()
    };
    // the run's own records, with the interrupt hook gone: a signal meanwhile waits for them,
    // then only removes temporary directories and exits, so the run is recorded once
    runner::interrupt::clear_hook_while(|| {
        match runner::history::snapshot(&summary, &results_dir, &started_at) {
            Ok(Some(dir)) => tracing::info!("results changed: snapshot in {}", dir.display()),
            Ok(None) => {}
            Err(e) => {
                run_error.get_or_insert(e);
            }
        }
        for step in [
            results::write_jobs(&summary, &results_dir),
            results::mark_stale(&summary, &results_dir, &started_at),
            results::append_run(
                &results_dir,
                &started_at,
                &runner::now_rfc3339(),
                &summary,
                code,
            ),
        ] {
            if let Err(e) = step {
                run_error.get_or_insert(e);
            }
        }
    });
    let not_needed = match summary.not_needed() {
        0 => String::new(),
        n => format!(", {n} not needed for --target"),
    };
    println!(
        "pipeline {}: {} jobs run, {} cached, {} failed, {} skipped{not_needed}; results in {}",
        cfg.name,
        summary.ran(),
        summary.cached(),
        summary.failed(),
        summary.skipped(),
        results_dir.display()
    );
    for j in &summary.jobs {
        if let runner::Outcome::Failed(e)
        | runner::Outcome::Skipped(e)
        | runner::Outcome::Interrupted(e) = &j.outcome
        {
            println!("  {}: {e}", j.label);
        }
    }
    if let Some(e) = run_error {
        report_error(&format!("{e:#}"));
        return Ok(exit::JOBS_FAILED);
    }
    Ok(code)
}

/// Clears the interrupt hook when `run` returns, whichever way (its records are written, or it
/// ends early with a configuration error).
struct ClearHookOnReturn;

impl Drop for ClearHookOnReturn {
    fn drop(&mut self) {
        runner::interrupt::clear_hook();
    }
}

/// The interrupt hook of `run` (`runner::interrupt`): on SIGINT or SIGTERM it records the run as
/// far as it got, with exit code 130 / 143: jobs.csv (the finished jobs, the running one
/// "interrupted", the rest skipped), STALE.md and a runs.csv line; before the graph is known
/// (`journal` None) only the runs.csv line. Then it logs what to do next.
fn interrupted_run_hook(
    results_dir: PathBuf,
    started_at: String,
    journal: Option<Arc<runner::RunJournal>>,
) -> runner::interrupt::Hook {
    Box::new(move |signum: i32| {
        let signal = runner::interrupt::signal_name(signum);
        let code = runner::interrupt::exit_code(signum);
        let progress = journal.as_ref().map(|j| j.progress());
        let summary = journal
            .as_ref()
            .map(|j| j.interrupted_summary(signal))
            .unwrap_or_default();
        let mut steps = Vec::new();
        if journal.is_some() {
            steps.push(results::write_jobs(&summary, &results_dir));
            steps.push(results::mark_stale(&summary, &results_dir, &started_at));
        }
        steps.push(results::append_run(
            &results_dir,
            &started_at,
            &runner::now_rfc3339(),
            &summary,
            code,
        ));
        for e in steps.into_iter().filter_map(|s| s.err()) {
            report_error(&format!("recording the interrupted run: {e:#}"));
        }
        match progress {
            Some((done, Some(running))) => tracing::warn!(
                "interrupted by {signal}: {done} jobs done, job {running} stopped; rerun to resume"
            ),
            Some((done, None)) => tracing::warn!(
                "interrupted by {signal}: {done} jobs done, none running; rerun to resume"
            ),
            None => {
                tracing::warn!("interrupted by {signal} before any job started; rerun to resume")
            }
        }
    })
}

/// An error for the user: plain "error: ..." on stderr, or a JSON log line with
/// `--log-format json`.
pub fn report_error(message: &str) {
    if crate::runtime::current().log_json {
        tracing::error!("{message}");
    } else {
        eprintln!("error: {message}");
    }
}

pub fn cache_ls(cache_root: &Path) -> Result<u8> {
    for e in runner::cache::list(cache_root) {
        let (stage, finished) = match e.state {
            Ok(x) => x,
            Err(r) => (format!("CORRUPT: {r}"), String::new()),
        };
        println!(
            "{:12} {}  {:>10}  {finished:25}  {stage}",
            e.kind,
            &e.key[..12],
            human_size(e.bytes)
        );
    }
    Ok(exit::SUCCESS)
}

pub fn cache_verify(cache_root: &Path) -> Result<u8> {
    let (mut ok, mut bad) = (0, 0);
    for (kind, key, corrupt) in runner::cache::verify(cache_root) {
        match corrupt {
            None => ok += 1,
            Some(r) => {
                bad += 1;
                println!("corrupt  {kind}/{key}: {r}");
            }
        }
    }
    println!("{ok} artifacts verified, {bad} corrupt");
    Ok(if bad > 0 {
        exit::JOBS_FAILED
    } else {
        exit::SUCCESS
    })
}

/// Remove artifacts that none of the given pipelines reaches (every artifact with `all`), and
/// leftovers of interrupted jobs; never anything whose key a running job holds.
pub fn cache_gc(
    files: &[PathBuf],
    all: bool,
    cache_cli: Option<&Path>,
    dry_run: bool,
) -> Result<u8> {
    if files.is_empty() && !all {
        report_error(
            "cache gc: name the pipeline files whose artifacts to keep (cache gc FILE...), \
             or remove every artifact with --all",
        );
        return Ok(exit::CONFIG);
    }
    if !files.is_empty() && all {
        report_error("cache gc: --all removes every artifact; give either pipeline files or --all");
        return Ok(exit::CONFIG);
    }
    let mut keep = BTreeSet::new();
    let mut roots = BTreeSet::new();
    for f in files {
        let (_, graph, root) = match load_graph(f, &[], cache_cli) {
            Ok(x) => x,
            Err(e) => {
                report_error(&e.to_string());
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
    let verb = if dry_run { "would remove" } else { "removing" };
    let mut total = runner::cache::GcSummary::default();
    for root in roots {
        let s = runner::cache::gc(&root, (!all).then_some(&keep), dry_run, &mut |a| match a {
            GcAction::Remove { kind, key } => println!("{verb} {kind}/{key}"),
            GcAction::RemoveLeftover(p) => println!("{verb} leftover {}", p.display()),
            GcAction::SkipBusy(p) => println!("skipping {}: a running job holds it", p.display()),
        })?;
        total.removed += s.removed;
        total.kept += s.kept;
        total.busy += s.busy;
        total.bytes += s.bytes;
    }
    println!(
        "{} artifacts ({}) {}, {} kept{}",
        total.removed,
        human_size(total.bytes),
        if dry_run { "unreachable" } else { "removed" },
        total.kept,
        if total.busy > 0 {
            format!(", {} in use skipped", total.busy)
        } else {
            String::new()
        }
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
