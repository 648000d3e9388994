//! The model an upstream artifact stands for: the base model (`load`), a pruned model (`prune`:
//! the base plus the list of kept layers, no weights copied) or a healed one (`heal`: a pruned
//! model plus a LoRA adapter). Evaluation and healing stages take any of them.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

use super::context::InputArtifact;
use super::load::{open_from_record, open_model, ModelRecord};
use crate::method::selection::Strategy;
use crate::model::{ModelFiles, Transformer};

/// What a pruned model is (prune artifact: pruned.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrunedRecord {
    pub base: ModelRecord,
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
}

/// How a model came about, for result tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    /// "base", "pruned" or "healed"
    pub variant: String,
    pub strategy: Option<Strategy>,
    pub fraction: f64,
    pub n_dropped: usize,
    pub start: Option<usize>,
    pub end: Option<usize>,
    pub healed: bool,
}

pub struct ModelRef {
    pub files: ModelFiles,
    /// Original layer indices the model keeps, in order.
    pub kept: Vec<usize>,
    pub variant: Variant,
    /// A PEFT adapter directory (healed models), merged into the weights when built.
    pub adapter: Option<std::path::PathBuf>,
    /// The artifact key of the model (for naming).
    pub key: String,
}

impl ModelRef {
    pub fn open(input: &InputArtifact, cache_root: &Path) -> Result<Self> {
        match input.kind.as_str() {
            "load" => {
                let files = open_model(&input.dir, cache_root)?;
                let kept = (0..files.config.num_hidden_layers).collect();
                Ok(Self {
                    files,
                    kept,
                    variant: Variant {
                        variant: "base".into(),
                        strategy: None,
                        fraction: 0.0,
                        n_dropped: 0,
                        start: None,
                        end: None,
                        healed: false,
                    },
                    adapter: None,
                    key: input.key.clone(),
                })
            }
            "prune" => {
                let rec = read_pruned(&input.dir)?;
                let files = open_from_record(&rec.base, cache_root)?;
                Ok(Self {
                    files,
                    kept: rec.kept.clone(),
                    variant: Variant {
                        variant: "pruned".into(),
                        strategy: Some(rec.strategy),
                        fraction: rec.fraction,
                        n_dropped: rec.n,
                        start: Some(rec.start),
                        end: Some(rec.end),
                        healed: false,
                    },
                    adapter: None,
                    key: input.key.clone(),
                })
            }
            "heal" => super::heal::open_healed(input, cache_root),
            other => anyhow::bail!("an artifact of kind {other} is not a model"),
        }
    }

    /// Build the Burn model (kept layers only).
    pub fn build<B: Backend>(&self, device: &B::Device, dtype: DType) -> Result<Transformer<B>> {
        let mut model = self.files.build_with_layers(device, dtype, &self.kept)?;
        if let Some(dir) = &self.adapter {
            // evaluation in the compute dtype with the adapter merged: W + (alpha / r) B A
            crate::heal::adapter::AdapterSet::load_peft(dir)?.merge_into(&mut model)?;
        }
        Ok(model)
    }
}

pub fn read_pruned(dir: &Path) -> Result<PrunedRecord> {
    let p = dir.join("pruned.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid", p.display()))
}
