//! The `heal-partial` artifact: heal-partial.json (the pruned model it heals, the training),
//! replaced/model.safetensors (every trained tensor: the last layers' and the LM head, Hugging
//! Face names with original layer numbers, f32), loss.csv (one row per optimizer step) and,
//! when asked for, merged/ (Hugging Face layout).

use serde::{Deserialize, Serialize};

use super::{LoadRecord, Record, Variant};
use crate::heal::train::TrainConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartialHealRecord {
    pub base: LoadRecord,
    pub kept: Vec<usize>,
    /// Layers whose attention sublayer the (pruned, hence healed) model drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_dropped: Vec<usize>,
    pub variant: Variant,
    /// The layers trained in full (original numbers).
    pub trained_layers: Vec<usize>,
    /// Whether the embedding matrix was trained (tied embeddings: it is the LM head).
    pub embedding_trained: bool,
    /// Hugging Face names of the replaced tensors.
    pub replaced: Vec<String>,
    pub trained_params: usize,
    pub train: TrainConfig,
    pub steps: u64,
    pub tokens: u64,
    pub final_loss: f64,
    pub seconds: f64,
}

impl Record for PartialHealRecord {
    const KIND: &'static str = "heal-partial";
    const FILE: &'static str = "heal-partial.json";
}
