//! The `heal-linear` artifact: heal-linear.json (the pruned model it heals, the folded layer,
//! the fit), replaced/model.safetensors (the changed tensors: the folded layer's MLP output
//! projection, Hugging Face names with original layer numbers, f32), map.safetensors (the
//! fitted maps "linear_map.{folded layer}" [hidden, hidden], f32) and, when asked for, merged/
//! (Hugging Face layout).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LoadRecord, Record, Variant};

/// The replaced tensors' directory inside the artifact.
pub const REPLACED_DIR: &str = "replaced";
/// The fitted maps, tensors "linear_map.{folded layer}" [hidden, hidden]: m -> m T.
pub const MAP_FILE: &str = "map.safetensors";

/// The name of the map folded into `layer` (original number) in map.safetensors.
pub fn map_tensor(layer: usize) -> String {
    format!("linear_map.{layer}")
}

/// One replaced block and the fit of its map.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearBlock {
    /// The block [start, end), original layer numbers.
    pub start: usize,
    pub end: usize,
    /// The layer whose MLP output projection holds the map (start - 1), original number.
    pub folded_layer: usize,
    pub tokens: u64,
    /// Mean squared error per calibration token between the pruned model's stream at the cut
    /// and the unpruned model's x(end): plain pruning (T = I) and with the fitted map.
    pub mse_pruned: f64,
    pub mse_fitted: f64,
}

/// A dropped block left as pruned, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnhealedBlock {
    pub start: usize,
    pub end: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearHealRecord {
    pub base: LoadRecord,
    pub kept: Vec<usize>,
    /// Layers whose attention sublayer the (pruned, hence healed) model drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_dropped: Vec<usize>,
    pub variant: Variant,
    /// One map per contiguous run of dropped layers, ascending.
    pub blocks: Vec<LinearBlock>,
    /// Dropped blocks with no place for a map (starting at layer 0), left as pruned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealed: Vec<UnhealedBlock>,
    /// Hugging Face names of the replaced tensors.
    pub replaced: Vec<String>,
    pub windows: usize,
    pub seq_len: usize,
    pub seconds: f64,
}

impl Record for LinearHealRecord {
    const KIND: &'static str = "heal-linear";
    const FILE: &'static str = "heal-linear.json";
}

/// The replaced tensors of a heal-linear artifact.
pub fn replaced_dir(dir: &Path) -> PathBuf {
    dir.join(REPLACED_DIR)
}
