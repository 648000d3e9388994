//! The `eval-loss` artifact: loss.json.

use serde::{Deserialize, Serialize};

use super::{Record, Variant};

pub const DEFINITION: &str = "mean next-token cross-entropy in nats per predicted token over fixed windows; normalized = loss / ln(vocab_size)";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossRecord {
    pub variant: Variant,
    pub model_key: String,
    pub label: String,
    pub definition: String,
    /// Mean cross-entropy in nats per predicted token.
    pub loss: f64,
    /// loss / ln(vocab_size)
    pub loss_normalized: f64,
    /// Standard error of the per-window mean losses.
    pub stderr: f64,
    pub vocab_size: usize,
    pub windows: usize,
    pub seq_len: usize,
    pub predicted_tokens: usize,
    pub loss_per_window: Vec<f64>,
    pub window_first_ids: Vec<Vec<u32>>,
}

impl Record for LossRecord {
    const KIND: &'static str = "eval-loss";
    const FILE: &'static str = "loss.json";
}
