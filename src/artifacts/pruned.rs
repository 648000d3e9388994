//! The `prune` artifact: pruned.json, the base model and the layers it keeps (no weights
//! copied); `model/` holds the Hugging Face export when asked for.

use serde::{Deserialize, Serialize};

use super::{LoadRecord, Record};
use crate::method::selection::Strategy;

/// The exported model's directory inside a prune artifact.
pub const EXPORT_DIR: &str = "model";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrunedRecord {
    pub base: LoadRecord,
    /// Layers of the base model.
    pub layers: usize,
    pub n: usize,
    pub fraction: f64,
    pub strategy: Strategy,
    /// Dropped block [start, end), 0-based original layer numbers.
    pub start: usize,
    pub end: usize,
    pub d: f64,
    pub kept: Vec<usize>,
    pub dropped: Vec<usize>,
    /// Layers (original numbers) whose attention sublayer only is dropped (strategy
    /// `attention`; `kept` then holds every layer and `dropped` none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_dropped: Vec<usize>,
}

impl Record for PrunedRecord {
    const KIND: &'static str = "prune";
    const FILE: &'static str = "pruned.json";
}
