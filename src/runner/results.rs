//! results/<pipeline>/: resolved.toml (the fully layered configuration), jobs.csv (one row per
//! job of the last run) and runs.csv (one line appended per run).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Outcome, RunSummary};
use crate::artifacts::manifest::{GIT_REV, TOOL_VERSION};
use crate::pipeline::config::PipelineConfig;

pub fn write_resolved(cfg: &PipelineConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let body = toml::to_string_pretty(&cfg.resolved)
        .context("the resolved configuration cannot be written as TOML")?;
    let text = format!(
        "# The fully resolved configuration of pipeline {} (stage defaults < {} < LAYERPRUNE_* < --set),\n# written by layerprune {TOOL_VERSION} ({GIT_REV}).\n\n{body}",
        cfg.name,
        cfg.file.display()
    );
    crate::fsutil::atomic_write(&dir.join("resolved.toml"), text.as_bytes())
}

#[derive(Serialize)]
struct JobRow<'a> {
    job: &'a str,
    stage: &'a str,
    kind: &'a str,
    key: &'a str,
    status: &'a str,
    reason: &'a str,
    started_at: &'a str,
    seconds: String,
    error: &'a str,
    /// Peak resident (host) memory of the process while the job ran, MiB (empty when it did
    /// not run here); on flex the estimate's counterpart, on a GPU backend host memory only.
    peak_rss_mib: String,
    /// The plan's estimate of the job's peak (device memory on a GPU backend), MiB.
    estimated_mib: String,
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.0}", b as f64 / (1u64 << 20) as f64))
        .unwrap_or_default()
}

pub fn write_jobs(summary: &RunSummary, dir: &Path) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for j in &summary.jobs {
        let (status, error) = match &j.outcome {
            Outcome::Ran => ("ran", ""),
            Outcome::Cached => ("cached", ""),
            Outcome::Failed(e) => ("failed", e.as_str()),
            Outcome::Skipped(e) => ("skipped", e.as_str()),
            Outcome::NotNeeded => ("not needed", ""),
            Outcome::Interrupted(e) => ("interrupted", e.as_str()),
        };
        w.serialize(JobRow {
            job: &j.label,
            stage: &j.stage,
            kind: &j.kind,
            key: &j.key,
            status,
            reason: &j.reason,
            started_at: &j.started_at,
            seconds: format!("{:.3}", j.seconds),
            error,
            peak_rss_mib: mib(j.peak_rss),
            estimated_mib: mib(j.estimated),
        })?;
    }
    crate::fsutil::atomic_write(&dir.join("jobs.csv"), &w.into_inner()?)
}

#[derive(Serialize)]
struct RunRow<'a> {
    started_at: &'a str,
    finished_at: &'a str,
    version: &'a str,
    git_rev: &'a str,
    jobs_run: usize,
    jobs_cached: usize,
    /// Failed and interrupted jobs.
    jobs_failed: usize,
    jobs_skipped: usize,
    exit_code: u8,
}

/// runs.csv's columns; a file with an older header is rewritten with this one (new columns
/// empty in old rows) before a row is appended.
const RUN_COLUMNS: &[&str] = &[
    "started_at",
    "finished_at",
    "version",
    "git_rev",
    "jobs_run",
    "jobs_cached",
    "jobs_failed",
    "jobs_skipped",
    "exit_code",
];

/// Rewrite runs.csv under the current header if it has another one.
fn upgrade_runs_csv(path: &Path) -> Result<()> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header: Vec<String> = r
        .headers()
        .with_context(|| format!("{}: unreadable header", path.display()))?
        .iter()
        .map(String::from)
        .collect();
    if header == RUN_COLUMNS {
        return Ok(());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(RUN_COLUMNS)?;
    for row in r.records() {
        let row = row.with_context(|| format!("{}: unreadable row", path.display()))?;
        let cell = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|i| row.get(i))
                .unwrap_or("")
                .to_string()
        };
        w.write_record(RUN_COLUMNS.iter().map(|c| cell(c)))?;
    }
    crate::fsutil::atomic_write(path, &w.into_inner()?)
}

/// Marks results/<pipeline>/ when the run's report jobs did not publish: STALE.md says which
/// files come from an earlier run, and summary.md starts with the same warning. A run whose
/// report jobs all publish removes the mark (summary.md is then the report's own).
pub fn mark_stale(summary: &RunSummary, dir: &Path, started_at: &str) -> Result<()> {
    let stale = dir.join("STALE.md");
    // each report job that did not publish, and why
    let failed: Vec<String> = summary
        .jobs
        .iter()
        .filter(|j| crate::stages::find(&j.kind).is_some_and(|k| k.publishes()))
        .filter_map(|j| match j.outcome {
            Outcome::Failed(_) | Outcome::Skipped(_) => {
                Some(format!("{} failed or was skipped", j.label))
            }
            Outcome::NotNeeded => Some(format!("{} was not among the --target stages", j.label)),
            Outcome::Interrupted(_) => Some(format!("{} was interrupted", j.label)),
            Outcome::Ran | Outcome::Cached => None,
        })
        .collect();
    if failed.is_empty() {
        if stale.exists() {
            std::fs::remove_file(&stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
        return Ok(());
    }
    // the report's files are there only if an earlier run published them
    let summary_md = dir.join("summary.md");
    let earlier = if summary_md.exists() {
        "while the tables, figures and this summary come from an earlier run"
    } else {
        "and no earlier run published tables, figures or a summary here"
    };
    let note = format!(
        "> **Stale results.** The run started at {started_at} did not publish ({}): \
         resolved.toml and jobs.csv describe that run, {earlier}. See jobs.csv for the errors.\n\n",
        failed.join(", ")
    );
    crate::fsutil::atomic_write(&stale, note.as_bytes())?;
    if let Ok(text) = std::fs::read_to_string(&summary_md) {
        if !text.starts_with("> **Stale results.**") {
            crate::fsutil::atomic_write(&summary_md, format!("{note}{text}").as_bytes())?;
        }
    }
    Ok(())
}

pub fn append_run(
    dir: &Path,
    started_at: &str,
    finished_at: &str,
    summary: &RunSummary,
    exit_code: u8,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("runs.csv");
    let exists = path.exists()
        && std::fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len()
            > 0;
    if exists {
        upgrade_runs_csv(&path)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut w = csv::WriterBuilder::new()
        .has_headers(!exists)
        .from_writer(file);
    w.serialize(RunRow {
        started_at,
        finished_at,
        version: TOOL_VERSION,
        git_rev: GIT_REV,
        jobs_run: summary.ran(),
        jobs_cached: summary.cached(),
        jobs_failed: summary.failed(),
        jobs_skipped: summary.skipped(),
        exit_code,
    })?;
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
