//! The published evaluation table, `results/<pipeline>/eval.csv` (written by the report stage):
//! one row per model, task and metric. The one definition of its columns, for the report stage
//! that writes it and for what reads published results back (the result history, the
//! multi-pipeline report).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One row of eval.csv. `strategy`, `start` and `end` are empty for the unpruned model; the
/// held-out loss has task "loss", shots 0 and metrics "loss" and "loss_normalized" (loss / ln V).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalTableRow {
    pub variant: String,
    pub strategy: String,
    pub fraction: f64,
    pub n_dropped: usize,
    pub start: String,
    pub end: String,
    pub healed: bool,
    pub task: String,
    pub shots: usize,
    pub metric: String,
    pub value: f64,
    pub stderr: f64,
    pub n_items: usize,
    /// The LoRA rank of a LoRA-healed model (empty otherwise, and in tables of earlier
    /// versions).
    #[serde(default)]
    pub lora_rank: Option<usize>,
}

pub const FILE: &str = "eval.csv";

pub fn write(path: &Path, rows: &[EvalTableRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    crate::fsutil::atomic_write(path, &w.into_inner()?)
}

pub fn read(path: &Path) -> Result<Vec<EvalTableRow>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.deserialize()
        .collect::<Result<Vec<EvalTableRow>, _>>()
        .with_context(|| format!("{}: not an eval.csv of this version", path.display()))
}
