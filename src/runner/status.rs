//! `layerprune status FILE`: per stage, how many of its jobs are done (a valid artifact), running
//! (their key's lock is held by some process), failed (their last attempt failed and nothing
//! valid exists) or pending. It reads the store and the failure records; it computes nothing.

use std::path::Path;

use anyhow::Result;

use super::failures;
use super::store::{Status, Store};
use crate::pipeline::config::PipelineConfig;
use crate::pipeline::JobGraph;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Done,
    Running,
    Failed,
    Pending,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageCounts {
    pub stage: String,
    pub jobs: usize,
    pub done: usize,
    pub running: usize,
    pub failed: usize,
    pub pending: usize,
}

/// One job's status.
pub fn job_status(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    i: usize,
    store: &Store,
    cache_root: &Path,
) -> Result<JobStatus> {
    let j = &graph.jobs[i];
    let kind = j.kind.kind();
    if matches!(store.status(kind, &j.key, false), Status::Valid(_)) {
        return Ok(JobStatus::Done);
    }
    if store.try_lock(kind, &j.key)?.is_none() {
        return Ok(JobStatus::Running);
    }
    if failures::last(cache_root, &cfg.name, &j.key).is_some() {
        return Ok(JobStatus::Failed);
    }
    Ok(JobStatus::Pending)
}

/// Counts per stage, in the graph's stage order, and the failed jobs with their errors.
pub fn status(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    cache_root: &Path,
) -> Result<(Vec<StageCounts>, Vec<(String, String)>)> {
    let store = Store::new(cache_root);
    let mut stages: Vec<StageCounts> = Vec::new();
    let mut failed = Vec::new();
    for (i, j) in graph.jobs.iter().enumerate() {
        let pos = match stages.iter().position(|s| s.stage == j.stage) {
            Some(p) => p,
            None => {
                stages.push(StageCounts {
                    stage: j.stage.clone(),
                    ..Default::default()
                });
                stages.len() - 1
            }
        };
        let c = &mut stages[pos];
        c.jobs += 1;
        match job_status(cfg, graph, i, &store, cache_root)? {
            JobStatus::Done => c.done += 1,
            JobStatus::Running => c.running += 1,
            JobStatus::Failed => {
                c.failed += 1;
                let e = failures::last(cache_root, &cfg.name, &j.key).unwrap_or_default();
                failed.push((j.label(), e));
            }
            JobStatus::Pending => c.pending += 1,
        }
    }
    Ok((stages, failed))
}
