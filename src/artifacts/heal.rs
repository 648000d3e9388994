//! The `heal` artifact: heal.json (enough to rebuild the healed model), adapter/ (PEFT layout),
//! loss.csv (one row per optimizer step) and, when asked for, merged/ (Hugging Face layout).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{LoadRecord, Record, Variant};
use crate::heal::train::{LogRow, Quant, TrainConfig};

/// The adapter's directory inside a heal artifact.
pub const ADAPTER_DIR: &str = "adapter";
/// The merged model's directory inside a heal artifact.
pub const MERGED_DIR: &str = "merged";
pub const LOSS_CSV: &str = "loss.csv";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealRecord {
    pub base: LoadRecord,
    pub kept: Vec<usize>,
    /// Layers (original numbers) whose attention sublayer the healed model drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_dropped: Vec<usize>,
    pub variant: Variant,
    pub train: TrainConfig,
    pub quant: Quant,
    pub steps: u64,
    pub tokens: u64,
    pub final_loss: f64,
    pub seconds: f64,
}

impl Record for HealRecord {
    const KIND: &'static str = "heal";
    const FILE: &'static str = "heal.json";
}

/// The PEFT adapter of a heal artifact.
pub fn adapter_dir(dir: &Path) -> PathBuf {
    dir.join(ADAPTER_DIR)
}

/// loss.csv: step, lr, loss, grad_norm, tokens, seconds.
pub fn write_loss_csv(dir: &Path, log: &[LogRow]) -> Result<()> {
    let p = dir.join(LOSS_CSV);
    let mut w =
        csv::Writer::from_path(&p).with_context(|| format!("cannot write {}", p.display()))?;
    for r in log {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}
