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
}

pub fn write_jobs(summary: &RunSummary, dir: &Path) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for j in &summary.jobs {
        let (status, error) = match &j.outcome {
            Outcome::Ran => ("ran", ""),
            Outcome::Cached => ("cached", ""),
            Outcome::Failed(e) => ("failed", e.as_str()),
            Outcome::Skipped(e) => ("skipped", e.as_str()),
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
    jobs_failed: usize,
    exit_code: u8,
}

pub fn append_run(
    dir: &Path,
    started_at: &str,
    finished_at: &str,
    summary: &RunSummary,
    exit_code: u8,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("runs.csv");
    let exists = path.exists() && std::fs::metadata(&path)?.len() > 0;
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
        jobs_failed: summary.failed() + summary.skipped(),
        exit_code,
    })?;
    w.flush()?;
    Ok(())
}
