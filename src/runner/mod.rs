//! Executing a pipeline's job graph against the artifact store: `plan` says for each job whether
//! it is cached or why it must run; `run` computes what is missing, one job after another, and
//! writes results/<pipeline>/ (resolved.toml, jobs.csv, runs.csv, published report files).

pub mod bundle;
pub mod cache;
pub mod failures;
pub mod history;
pub mod interrupt;
pub mod memory;
pub mod refresh;
pub mod results;
pub mod slurm;
pub mod state;
pub mod status;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::artifacts::manifest::{Manifest, SourceRecord, GIT_REV, TOOL_VERSION};
use crate::artifacts::InputArtifact;
use crate::pipeline::config::PipelineConfig;
use crate::pipeline::graph::{label, JobGraph};
use crate::source;
use crate::stages::context::JobContext;
use state::{JobState, PipelineState};
use store::{Status, Store};

/// Exit codes (for cron): 0 all jobs done, 1 some jobs failed, 2 bad input or configuration,
/// 3 another run of this pipeline holds the lock (with --no-wait), 130 / 143 stopped by SIGINT /
/// SIGTERM (128 + the signal's number; the run recorded as far as it got, `interrupt`).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const JOBS_FAILED: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const LOCKED: u8 = 3;
    pub const INTERRUPTED_SIGINT: u8 = 130;
    pub const INTERRUPTED_SIGTERM: u8 = 143;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    Cached,
    New,
    ParamsChanged(String),
    InputChanged(String),
    SourceChanged(String),
    VersionChanged(u32, u32),
    Missing,
    Corrupt(String),
    Forced,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Cached => write!(f, "cached"),
            Reason::New => write!(f, "new"),
            Reason::ParamsChanged(d) => write!(f, "params changed: {d}"),
            Reason::InputChanged(d) => write!(f, "input changed: {d}"),
            Reason::SourceChanged(d) => write!(f, "source changed: {d}"),
            Reason::VersionChanged(a, b) => write!(f, "stage version changed: {a} -> {b}"),
            Reason::Missing => write!(f, "missing (removed from the cache)"),
            Reason::Corrupt(r) => write!(f, "corrupt: {r}"),
            Reason::Forced => write!(f, "forced"),
        }
    }
}

pub struct PlannedJob {
    pub label: String,
    pub reason: Reason,
}

fn job_state(graph: &JobGraph, i: usize) -> JobState {
    let j = &graph.jobs[i];
    JobState {
        key: j.key.clone(),
        params: j.params.clone(),
        inputs: j
            .inputs
            .iter()
            .map(|(s, v)| {
                (
                    s.clone(),
                    v.iter().map(|&u| graph.jobs[u].label()).collect(),
                )
            })
            .collect(),
        input_keys: j
            .inputs
            .iter()
            .map(|(s, v)| {
                (
                    s.clone(),
                    v.iter().map(|&u| graph.jobs[u].key.clone()).collect(),
                )
            })
            .collect(),
        sources: j
            .sources
            .iter()
            .map(|(p, s)| (p.clone(), s.identity.clone()))
            .collect(),
        version: j.kind.version(),
    }
}

fn reason_for(
    graph: &JobGraph,
    i: usize,
    store: &Store,
    prev: &PipelineState,
    force: &BTreeSet<String>,
    verify: bool,
) -> Reason {
    let j = &graph.jobs[i];
    let status = store.status(j.kind.kind(), &j.key, verify);
    if j.in_stages(force) {
        return Reason::Forced;
    }
    match status {
        Status::Valid(_) => return Reason::Cached,
        Status::Corrupt(r) => return Reason::Corrupt(r),
        Status::Missing => {}
    }
    let now = job_state(graph, i);
    let labels = std::iter::once(j.label()).chain(j.aliases.iter().map(|(s, a)| label(s, a)));
    let Some(old) = labels.filter_map(|l| prev.jobs.get(&l)).next() else {
        return Reason::New;
    };
    if old.key == now.key {
        return Reason::Missing;
    }
    if old.version != now.version {
        return Reason::VersionChanged(old.version, now.version);
    }
    if old.params != now.params {
        return Reason::ParamsChanged(state::diff(&old.params, &now.params));
    }
    if old.sources != now.sources {
        let changed: Vec<String> = now
            .sources
            .keys()
            .filter(|k| old.sources.get(*k) != now.sources.get(*k))
            .cloned()
            .collect();
        return Reason::SourceChanged(changed.join(", "));
    }
    let mut changed = Vec::new();
    for (slot, keys) in &now.input_keys {
        if old.input_keys.get(slot) != Some(keys) {
            let names = &now.inputs[slot];
            let shown = if names.len() > 3 {
                format!("{} and {} more", names[..3].join(", "), names.len() - 3)
            } else {
                names.join(", ")
            };
            changed.push(format!("{slot} ({shown})"));
        }
    }
    if changed.is_empty() {
        Reason::New
    } else {
        Reason::InputChanged(changed.join("; "))
    }
}

/// For each job: cached, or why it will run.
/// Why each job would run (or "cached"); with `verify`, cached artifacts are re-hashed first.
pub fn plan(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    cache_root: &Path,
    force: &BTreeSet<String>,
    verify: bool,
) -> Vec<PlannedJob> {
    let store = Store::new(cache_root);
    let prev = state::load(cache_root, &cfg.name);
    (0..graph.jobs.len())
        .map(|i| PlannedJob {
            label: graph.jobs[i].label(),
            reason: reason_for(graph, i, &store, &prev, force, verify),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ran,
    Cached,
    Failed(String),
    Skipped(String),
    /// Not cached, and not run: with `--target`, nothing that runs reads it.
    NotNeeded,
    /// Stopped by a signal while it computed ("interrupted by SIGTERM"): not the job's fault, so
    /// not a failure to remember, but counted among the failed in runs.csv.
    Interrupted(String),
}

#[derive(Debug, Clone)]
pub struct JobRecord {
    pub label: String,
    pub stage: String,
    pub kind: String,
    pub key: String,
    pub outcome: Outcome,
    pub reason: String,
    pub started_at: String,
    pub seconds: f64,
    /// The process's peak resident memory while the job ran (Linux), for jobs that ran.
    pub peak_rss: Option<u64>,
    /// The job's estimated peak memory (`memory::estimate`).
    pub estimated: Option<u64>,
}

impl JobRecord {
    /// The record of `job`: its outcome, why it ran (or was cached), when it started and how
    /// long it took; `peak_rss` is kept only for a job that ran (`peak_if_ran`).
    fn of(
        job: &crate::pipeline::Job,
        outcome: Outcome,
        reason: &Reason,
        started_at: String,
        seconds: f64,
        peak_rss: Option<u64>,
        estimated: Option<u64>,
    ) -> Self {
        JobRecord {
            label: job.label(),
            stage: job.stage.clone(),
            kind: job.kind.kind().to_string(),
            key: job.key.clone(),
            outcome,
            reason: reason.to_string(),
            started_at,
            seconds,
            peak_rss,
            estimated,
        }
    }
}

#[derive(Debug, Default)]
pub struct RunSummary {
    pub jobs: Vec<JobRecord>,
    /// A failure of the run itself (not of a job), e.g. its state could not be saved.
    pub error: Option<String>,
}

impl RunSummary {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.jobs.iter().filter(|j| f(&j.outcome)).count()
    }
    pub fn ran(&self) -> usize {
        self.count(|o| *o == Outcome::Ran)
    }
    pub fn cached(&self) -> usize {
        self.count(|o| *o == Outcome::Cached)
    }
    /// Jobs that failed or were interrupted (runs.csv's jobs_failed).
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_) | Outcome::Interrupted(_)))
    }
    pub fn interrupted(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Interrupted(_)))
    }
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    pub fn not_needed(&self) -> usize {
        self.count(|o| *o == Outcome::NotNeeded)
    }
    pub fn exit_code(&self) -> u8 {
        if self.failed() + self.skipped() > 0 {
            exit::JOBS_FAILED
        } else {
            exit::SUCCESS
        }
    }
}

/// What a run has done so far, kept up to date by `run` for the record of a run that a signal
/// stops (`interrupt`): the records of the jobs that finished and the job running now. The hook
/// writing that record reads it on the signal thread while the job still computes in the main
/// thread, hence the mutex; it holds the jobs' names itself, as the hook has no graph.
pub struct RunJournal {
    /// Each job's label, stage, kind and key, in graph order.
    jobs: Vec<JobOutline>,
    state: Mutex<JournalState>,
}

struct JobOutline {
    label: String,
    stage: String,
    kind: String,
    key: String,
}

#[derive(Default)]
struct JournalState {
    /// (graph index, record) of each job that finished, in the order they ran.
    finished: Vec<(usize, JobRecord)>,
    running: Option<RunningJob>,
}

/// The job running now: its record as far as it is known when it starts (label, stage, kind,
/// key, reason, started_at, estimate), when it started, and whether its peak memory is measured.
struct RunningJob {
    index: usize,
    record: JobRecord,
    start: Instant,
    measured: bool,
}

impl RunJournal {
    /// An empty journal for a run of `graph`.
    pub fn new(graph: &JobGraph) -> Self {
        RunJournal {
            jobs: graph
                .jobs
                .iter()
                .map(|j| JobOutline {
                    label: j.label(),
                    stage: j.stage.clone(),
                    kind: j.kind.kind().to_string(),
                    key: j.key.clone(),
                })
                .collect(),
            state: Mutex::new(JournalState::default()),
        }
    }

    /// The state, even after a panic elsewhere (every change is one assignment or push).
    fn state(&self) -> MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Job `index` starts (its outcome in `record` is a placeholder).
    fn started(&self, index: usize, record: JobRecord, start: Instant, measured: bool) {
        self.state().running = Some(RunningJob {
            index,
            record,
            start,
            measured,
        });
    }

    /// Job `index` finished with `record`.
    fn finished(&self, index: usize, record: JobRecord) {
        let mut state = self.state();
        if state.running.as_ref().is_some_and(|r| r.index == index) {
            state.running = None;
        }
        state.finished.push((index, record));
    }

    /// How many jobs finished, and the label of the job running now (if any).
    pub fn progress(&self) -> (usize, Option<String>) {
        let state = self.state();
        (
            state.finished.len(),
            state.running.as_ref().map(|r| r.record.label.clone()),
        )
    }

    /// The run's summary at the moment `signal_name` stopped it, in graph order: the records of
    /// the jobs that finished, the running job "interrupted by SIGTERM", and every job not
    /// reached skipped ("the run was interrupted (SIGTERM)").
    pub fn interrupted_summary(&self, signal_name: &str) -> RunSummary {
        let state = self.state();
        let mut records: Vec<Option<JobRecord>> = vec![None; self.jobs.len()];
        for (i, r) in &state.finished {
            if let Some(slot) = records.get_mut(*i) {
                *slot = Some(r.clone());
            }
        }
        if let Some(run) = &state.running {
            let mut r = run.record.clone();
            r.outcome = Outcome::Interrupted(format!("interrupted by {signal_name}"));
            r.seconds = run.start.elapsed().as_secs_f64();
            r.peak_rss = if run.measured {
                crate::peak_rss::peak_bytes()
            } else {
                None
            };
            if let Some(slot) = records.get_mut(run.index) {
                *slot = Some(r);
            }
        }
        let not_reached = Outcome::Skipped(format!("the run was interrupted ({signal_name})"));
        let jobs = records
            .into_iter()
            .zip(&self.jobs)
            .map(|(r, o)| {
                r.unwrap_or_else(|| JobRecord {
                    label: o.label.clone(),
                    stage: o.stage.clone(),
                    kind: o.kind.clone(),
                    key: o.key.clone(),
                    outcome: not_reached.clone(),
                    reason: String::new(),
                    started_at: String::new(),
                    seconds: 0.0,
                    peak_rss: None,
                    estimated: None,
                })
            })
            .collect();
        RunSummary { jobs, error: None }
    }
}

/// The UTC time to the second as a file name: "2026-12-01T13-44-32Z".
pub fn utc_stamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]-[minute]-[second]Z"
        ))
        .unwrap_or_default()
}

/// As `utc_stamp`, to the millisecond: "2026-12-01T13-44-32.123Z" (snapshots of quick
/// successive runs stay apart).
pub fn utc_stamp_ms() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The pipeline's run lock; `None` with `no_wait` when another run holds it.
pub fn lock_pipeline(cache_root: &Path, name: &str, no_wait: bool) -> Result<Option<File>> {
    let dir = cache_root.join("locks");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("pipeline-{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) if no_wait => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(
                "another run of pipeline {name} is in progress; waiting for it to finish"
            );
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

pub struct RunOptions {
    pub force: BTreeSet<String>,
    /// Re-hash every cached artifact before trusting it.
    pub verify: bool,
    /// The process's runtime options, handed to every job.
    pub runtime: crate::runtime::RuntimeOptions,
    /// Stages to bring up to date (empty: every job): only their jobs and what those that run
    /// read, so a job whose readers are all cached is not run even when its artifact is gone.
    pub targets: BTreeSet<String>,
    /// Where `run` notes each job as it starts and finishes, for recording the run if a signal
    /// stops it (`interrupt`); `run_one` does not use it.
    pub journal: Option<Arc<RunJournal>>,
}

/// Which jobs a run must bring up to date: with no targets every job; else the targets' jobs
/// and, transitively, the inputs of every one of them that is not cached. (The others are
/// left as they are: reported as cached, or as not needed.)
pub fn needed_jobs(
    graph: &JobGraph,
    targets: &BTreeSet<String>,
    mut cached: impl FnMut(usize) -> bool,
) -> Vec<bool> {
    let n = graph.jobs.len();
    if targets.is_empty() {
        return vec![true; n];
    }
    let mut needed: Vec<bool> = graph.jobs.iter().map(|j| j.in_stages(targets)).collect();
    // the graph is topologically ordered: a job's readers come after it
    for i in (0..n).rev() {
        if needed[i] && !cached(i) {
            for &u in graph.jobs[i].inputs.values().flatten() {
                needed[u] = true;
            }
        }
    }
    needed
}

/// Execute the graph; a failed job stops its dependants, the others go on. Never stops early:
/// whatever fails is in the summary (a job's outcome, or `error` for the run's own state).
pub fn run(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    cache_root: &Path,
    opts: &RunOptions,
) -> RunSummary {
    let store = Store::new(cache_root);
    let prev = state::load(cache_root, &cfg.name);
    let results_dir = cfg.results_dir.join(&cfg.name);
    let estimates = memory::estimate(cfg, graph, cache_root);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; graph.jobs.len()];
    let mut summary = RunSummary::default();
    // each job's reason once (with --verify, a full re-hash)
    let mut reasons: Vec<Option<Reason>> = vec![None; graph.jobs.len()];
    let mut reason_of = |i: usize| -> Reason {
        reasons[i]
            .get_or_insert_with(|| reason_for(graph, i, &store, &prev, &opts.force, opts.verify))
            .clone()
    };
    let needed = needed_jobs(graph, &opts.targets, |i| reason_of(i) == Reason::Cached);
    let total = graph.jobs.len();
    let mut order: Vec<usize> = (0..total).collect();
    let mut records = Vec::with_capacity(total);
    for position in 0..total {
        if position == 0
            || graph.jobs[order[position - 1]].stage != graph.jobs[order[position]].stage
        {
            rank_stage_run(graph, &store, &mut order[position..]);
        }
        let i = order[position];
        let job = &graph.jobs[i];
        let started_at = now_rfc3339();
        let reason = reason_of(i);
        let blocked: Vec<String> = job
            .inputs
            .values()
            .flatten()
            .filter(|&&u| {
                matches!(
                    outcomes[u],
                    Some(Outcome::Failed(_))
                        | Some(Outcome::Skipped(_))
                        | Some(Outcome::Interrupted(_))
                )
            })
            .map(|&u| graph.jobs[u].label())
            .collect();
        let start = Instant::now();
        let measured = crate::peak_rss::reset();
        let estimated = estimates[i].as_ref().map(|m| m.total());
        if let Some(journal) = &opts.journal {
            journal.started(
                i,
                JobRecord::of(
                    job,
                    Outcome::Interrupted(String::new()),
                    &reason,
                    started_at.clone(),
                    0.0,
                    None,
                    estimated,
                ),
                start,
                measured,
            );
        }
        let outcome = if !blocked.is_empty() {
            Outcome::Skipped(format!("input failed: {}", blocked.join(", ")))
        } else if !needed[i] && reason != Reason::Cached {
            Outcome::NotNeeded
        } else {
            if reason == Reason::Cached {
                Outcome::Cached
            } else {
                tracing::info!(
                    "[{}/{}] {} ({}) {}",
                    position + 1,
                    total,
                    job.label(),
                    job.short_key(),
                    reason
                );
                match execute(
                    cfg,
                    graph,
                    i,
                    &store,
                    cache_root,
                    // a corrupt copy may look valid to the cheap check (same size and mtime)
                    matches!(reason, Reason::Forced | Reason::Corrupt(_)),
                    &opts.runtime,
                ) {
                    Ok(true) => Outcome::Ran,
                    Ok(false) => Outcome::Cached,
                    Err(e) => {
                        tracing::error!("{} failed: {e:#}", job.label());
                        Outcome::Failed(format!("{e:#}"))
                    }
                }
            }
        };
        let outcome = match outcome {
            Outcome::Ran | Outcome::Cached if job.kind.publishes() => {
                match publish(&store.dir(job.kind.kind(), &job.key), &results_dir) {
                    Ok(()) => outcome,
                    Err(e) => {
                        tracing::error!("{}: publishing results failed: {e:#}", job.label());
                        Outcome::Failed(format!("publishing results: {e:#}"))
                    }
                }
            }
            other => other,
        };
        note_outcome(cache_root, &cfg.name, job, &outcome);
        let peak_rss = peak_if_ran(measured, &outcome);
        let record = JobRecord::of(
            job,
            outcome.clone(),
            &reason,
            started_at,
            start.elapsed().as_secs_f64(),
            peak_rss,
            estimated,
        );
        if let Some(journal) = &opts.journal {
            journal.finished(i, record.clone());
        }
        records.push((i, record));
        outcomes[i] = Some(outcome);
    }
    // the records in graph order, however the jobs ran
    records.sort_by_key(|(i, _)| *i);
    summary.jobs = records.into_iter().map(|(_, r)| r).collect();
    let mut new_state = PipelineState::default();
    for i in 0..graph.jobs.len() {
        new_state
            .jobs
            .insert(graph.jobs[i].label(), job_state(graph, i));
    }
    if let Err(e) = state::save(cache_root, &cfg.name, &new_state) {
        summary.error = Some(format!("saving the pipeline's state: {e:#}"));
    }
    summary
}

/// Reorder the run of jobs of one stage at the head of `order` by the stage's `run_rank` (they
/// never read each other, so any order is valid); a job whose inputs are not all there keeps no
/// rank.
fn rank_stage_run(graph: &JobGraph, store: &Store, order: &mut [usize]) {
    let Some(&first) = order.first() else {
        return;
    };
    let stage = &graph.jobs[first].stage;
    let len = order
        .iter()
        .take_while(|&&j| &graph.jobs[j].stage == stage)
        .count();
    if len < 2 {
        return;
    }
    let rank = |j: usize| -> Option<usize> {
        let job = &graph.jobs[j];
        let inputs = input_artifacts(graph, j, store).ok()?;
        job.kind.run_rank(&inputs)
    };
    let mut ranked: Vec<(Option<usize>, usize)> =
        order[..len].iter().map(|&j| (rank(j), j)).collect();
    // ranked first (ascending), then the unranked, each in graph order
    ranked.sort_by_key(|&(r, j)| (r.is_none(), r, j));
    for (slot, (_, j)) in order[..len].iter_mut().zip(ranked) {
        *slot = j;
    }
}

/// The artifacts of job `i`'s inputs, each checked to be in the store.
fn input_artifacts(
    graph: &JobGraph,
    i: usize,
    store: &Store,
) -> Result<BTreeMap<String, Vec<InputArtifact>>> {
    let mut inputs = BTreeMap::new();
    for (slot, ups) in &graph.jobs[i].inputs {
        let mut arts = Vec::new();
        for &u in ups {
            let up = &graph.jobs[u];
            let dir = store.dir(up.kind.kind(), &up.key);
            let manifest = match store.status(up.kind.kind(), &up.key, false) {
                Status::Valid(m) => m,
                other => anyhow::bail!("input {} is not available ({other:?})", up.label()),
            };
            arts.push(InputArtifact {
                stage: up.stage.clone(),
                kind: up.kind.kind().to_string(),
                key: up.key.clone(),
                dir,
                manifest,
            });
        }
        inputs.insert(slot.clone(), arts);
    }
    Ok(inputs)
}

/// Keep the failure record of a job in step with its outcome (for `status`).
fn note_outcome(cache_root: &Path, pipeline: &str, job: &crate::pipeline::Job, outcome: &Outcome) {
    match outcome {
        Outcome::Failed(e) => {
            if let Err(err) = failures::record(cache_root, pipeline, &job.key, &job.label(), e) {
                tracing::warn!("cannot record the failure of {}: {err:#}", job.label());
            }
        }
        Outcome::Ran | Outcome::Cached => failures::clear(cache_root, pipeline, &job.key),
        // an interruption is not the job's fault: its last failure (if any) stays as it was
        Outcome::Skipped(_) | Outcome::NotNeeded | Outcome::Interrupted(_) => {}
    }
}

/// The job a `--job` argument names: its full key, a unique key prefix of at least 8
/// characters, or its label (e.g. "prune[fraction=0.25,strategy=simple]").
pub fn find_job(graph: &JobGraph, selector: &str) -> Result<usize> {
    if let Some(i) = graph.jobs.iter().position(|j| j.label() == selector) {
        return Ok(i);
    }
    let by_key: Vec<usize> = if selector.len() >= 8 {
        (0..graph.jobs.len())
            .filter(|&i| graph.jobs[i].key.starts_with(selector))
            .collect()
    } else {
        Vec::new()
    };
    match by_key.as_slice() {
        [i] => Ok(*i),
        [] => {
            let near: Vec<String> = graph
                .jobs
                .iter()
                .map(|j| j.label())
                .filter(|l| l.split('[').next() == selector.split('[').next())
                .take(5)
                .collect();
            anyhow::bail!(
                "--job {selector}: no job has this label or key{}",
                if near.is_empty() {
                    " (`layerprune plan FILE` lists them)".to_string()
                } else {
                    format!(" (jobs of that stage: {})", near.join(", "))
                }
            )
        }
        several => anyhow::bail!(
            "--job {selector}: {} jobs have keys starting so; give more of the key",
            several.len()
        ),
    }
}

/// Why job `i` cannot run now: the inputs that are not valid in the store.
pub fn missing_inputs(graph: &JobGraph, i: usize, store: &Store) -> Vec<String> {
    graph.jobs[i]
        .inputs
        .values()
        .flatten()
        .filter(|&&u| {
            let up = &graph.jobs[u];
            !matches!(
                store.status(up.kind.kind(), &up.key, false),
                Status::Valid(_)
            )
        })
        .map(|&u| format!("{} ({})", graph.jobs[u].label(), graph.jobs[u].short_key()))
        .collect()
}

/// Run exactly job `i`, whose inputs must be in the store (for `run --job` and Slurm array
/// tasks). Takes no pipeline lock and writes no pipeline state: several such processes run at
/// once, and the per-key lock makes each artifact computed once.
pub fn run_one(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    i: usize,
    cache_root: &Path,
    opts: &RunOptions,
) -> Result<JobRecord> {
    let store = Store::new(cache_root);
    let job = &graph.jobs[i];
    let missing = missing_inputs(graph, i, &store);
    if !missing.is_empty() {
        anyhow::bail!(
            "{}: its inputs are not in the cache: {}; run them first (or the whole pipeline)",
            job.label(),
            missing.join(", ")
        );
    }
    let prev = state::load(cache_root, &cfg.name);
    let reason = reason_for(graph, i, &store, &prev, &opts.force, opts.verify);
    let started_at = now_rfc3339();
    let start = Instant::now();
    let measured = crate::peak_rss::reset();
    let outcome = if reason == Reason::Cached {
        Outcome::Cached
    } else {
        tracing::info!("{} ({}) {}", job.label(), job.short_key(), reason);
        let replace = matches!(reason, Reason::Forced | Reason::Corrupt(_));
        match execute(cfg, graph, i, &store, cache_root, replace, &opts.runtime) {
            Ok(true) => Outcome::Ran,
            Ok(false) => Outcome::Cached,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    };
    let outcome = match outcome {
        Outcome::Ran | Outcome::Cached if job.kind.publishes() => {
            let results_dir = cfg.results_dir.join(&cfg.name);
            match publish(&store.dir(job.kind.kind(), &job.key), &results_dir) {
                Ok(()) => outcome,
                Err(e) => Outcome::Failed(format!("publishing results: {e:#}")),
            }
        }
        other => other,
    };
    note_outcome(cache_root, &cfg.name, job, &outcome);
    let peak_rss = peak_if_ran(measured, &outcome);
    let estimated = memory::estimate(cfg, graph, cache_root)[i]
        .as_ref()
        .map(|m| m.total());
    Ok(JobRecord::of(
        job,
        outcome,
        &reason,
        started_at,
        start.elapsed().as_secs_f64(),
        peak_rss,
        estimated,
    ))
}

/// The peak resident memory since the reset before the job, when the job ran.
fn peak_if_ran(measured: bool, outcome: &Outcome) -> Option<u64> {
    if measured
        && matches!(
            outcome,
            Outcome::Ran | Outcome::Failed(_) | Outcome::Interrupted(_)
        )
    {
        crate::peak_rss::peak_bytes()
    } else {
        None
    }
}

/// Compute one job into the store. Ok(false) when another process finished it meanwhile.
fn execute(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    i: usize,
    store: &Store,
    cache_root: &Path,
    replace: bool,
    runtime: &crate::runtime::RuntimeOptions,
) -> Result<bool> {
    let job = &graph.jobs[i];
    let kind = job.kind.kind();
    if replace {
        let _lock = store.lock(kind, &job.key)?;
        let dir = store.dir(kind, &job.key);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    let Some(pending) = store.begin(kind, &job.key)? else {
        tracing::info!("{} was computed by another process meanwhile", job.label());
        return Ok(false);
    };
    let started_at = now_rfc3339();
    let start = Instant::now();
    let mut sources = BTreeMap::new();
    let mut source_records = BTreeMap::new();
    for (param, sref) in &job.sources {
        let resolved = source::resolve(&sref.spec, cache_root)
            .with_context(|| format!("resolving source {}", sref.spec))?;
        source_records.insert(
            param.clone(),
            SourceRecord {
                spec: sref.spec.to_string(),
                identity: sref.identity.clone(),
                path: resolved.path.display().to_string(),
                sha256: resolved.sha256.clone(),
            },
        );
        sources.insert(param.clone(), resolved);
    }
    let inputs = input_artifacts(graph, i, store)?;
    // the settings the memory plan chose for parameters on "auto"
    let planned = memory::estimate(cfg, graph, cache_root)
        .swap_remove(i)
        .map(|m| m.plan.settings)
        .unwrap_or_default();
    let ctx = JobContext {
        stage: job.stage.clone(),
        kind: kind.to_string(),
        key: job.key.clone(),
        params: job.params.clone(),
        assignment: job.assignment.clone(),
        inputs,
        sources,
        out_dir: pending.tmp.clone(),
        cache_root: cache_root.to_path_buf(),
        backend: cfg.backend,
        precision: cfg.precision,
        runtime: runtime.clone(),
        planned,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.kind.run(&ctx)));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            anyhow::bail!(
                "the stage panicked: {}",
                msg.unwrap_or_else(|| "unknown panic".into())
            );
        }
    }
    let manifest = Manifest {
        kind: kind.to_string(),
        version: job.kind.version(),
        key: job.key.clone(),
        stage: job.stage.clone(),
        assignment: job.assignment.clone(),
        params: job.params.clone(),
        inputs: job
            .inputs
            .iter()
            .map(|(s, v)| {
                (
                    s.clone(),
                    v.iter().map(|&u| graph.jobs[u].key.clone()).collect(),
                )
            })
            .collect(),
        sources: source_records,
        files: BTreeMap::new(),
        started_at,
        finished_at: now_rfc3339(),
        seconds: start.elapsed().as_secs_f64(),
        tool_version: TOOL_VERSION.to_string(),
        git_rev: GIT_REV.to_string(),
        backend: cfg.backend.to_string(),
        precision: cfg.precision.to_string(),
        refresh: cfg.refresh.get(&job.stage).cloned(),
    };
    store.publish(pending, manifest)?;
    Ok(true)
}

/// Copy an artifact's files (not its manifest) into the results directory, each atomically.
fn publish(artifact: &Path, results_dir: &Path) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = artifact.join(&rel);
        for e in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
            let r = rel.join(e.file_name());
            if e.file_type()
                .with_context(|| format!("cannot stat {}", e.path().display()))?
                .is_dir()
            {
                stack.push(r);
            } else if r.as_os_str() != "manifest.json" {
                let dest = results_dir.join(&r);
                let bytes = std::fs::read(e.path())
                    .with_context(|| format!("cannot read {}", e.path().display()))?;
                // Through a temporary file: a reader (or an interrupted run) never sees half a table.
                crate::fsutil::atomic_write(&dest, &bytes)?;
            }
        }
    }
    Ok(())
}
