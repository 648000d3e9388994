//! The model an upstream artifact stands for: the base model (`load`), a pruned model (`prune`:
//! the base plus the list of kept layers, no weights copied) or a healed one (`heal`: a pruned
//! model plus a LoRA adapter; `heal-linear`: a pruned model with one output projection
//! replaced). Evaluation and healing stages take any of them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

use super::heal::adapter_dir;
use super::heal_linear::replaced_dir;
use super::{
    HealRecord, InputArtifact, LinearHealRecord, LoadRecord, PartialHealRecord, PrunedRecord,
    Record,
};
use crate::heal::adapter::AdapterSet;
use crate::method::selection::Strategy;
use crate::model::load::WeightStorage;
use crate::model::{ModelFiles, Transformer};

/// How a model came about, for result tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    /// "base", "pruned", "healed" (LoRA), "healed-linear" (a fitted linear map) or
    /// "healed-partial" (the last layers and the head fine-tuned)
    pub variant: String,
    pub strategy: Option<Strategy>,
    pub fraction: f64,
    pub n_dropped: usize,
    pub start: Option<usize>,
    pub end: Option<usize>,
    pub healed: bool,
    /// The LoRA rank of a LoRA-healed model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<usize>,
}

impl Variant {
    pub fn base() -> Self {
        Self {
            variant: "base".into(),
            strategy: None,
            fraction: 0.0,
            n_dropped: 0,
            start: None,
            end: None,
            healed: false,
            lora_rank: None,
        }
    }

    pub fn pruned(r: &PrunedRecord) -> Self {
        Self {
            variant: "pruned".into(),
            strategy: Some(r.strategy),
            fraction: r.fraction,
            n_dropped: r.n,
            start: Some(r.start),
            end: Some(r.end),
            healed: false,
            lora_rank: None,
        }
    }

    /// The same model after healing.
    pub fn healed(&self) -> Self {
        Self {
            variant: "healed".into(),
            healed: true,
            ..self.clone()
        }
    }

    /// The same model after training-free healing by a linear map.
    pub fn healed_linear(&self) -> Self {
        Self {
            variant: "healed-linear".into(),
            healed: true,
            ..self.clone()
        }
    }

    /// The same model after partial fine-tuning.
    pub fn healed_partial(&self) -> Self {
        Self {
            variant: "healed-partial".into(),
            healed: true,
            ..self.clone()
        }
    }

    /// A short unique name: "base", "pruned/similarity/0.25", "healed/simple/0.25/r8" (LoRA:
    /// with its rank, which a pipeline may sweep).
    pub fn label(&self) -> String {
        let rank = self.lora_rank.map(|r| format!("/r{r}")).unwrap_or_default();
        match (&self.strategy, self.variant.as_str()) {
            (None, _) => format!("{}{rank}", self.variant),
            (Some(s), kind) => format!("{kind}/{s}/{}{rank}", self.fraction),
        }
    }
}

/// The record of a model artifact, whichever kind made it.
#[derive(Debug, Clone)]
pub enum ModelArtifact {
    Base(LoadRecord),
    Pruned(PrunedRecord),
    Healed(HealRecord),
    LinearHealed(LinearHealRecord),
    PartialHealed(PartialHealRecord),
}

impl ModelArtifact {
    /// Read the record of an upstream model artifact (load, prune, heal, heal-linear or
    /// heal-partial).
    pub fn of(input: &InputArtifact) -> Result<Self> {
        Ok(match input.kind.as_str() {
            LoadRecord::KIND => Self::Base(LoadRecord::of(input)?),
            PrunedRecord::KIND => Self::Pruned(PrunedRecord::of(input)?),
            HealRecord::KIND => Self::Healed(HealRecord::of(input)?),
            LinearHealRecord::KIND => Self::LinearHealed(LinearHealRecord::of(input)?),
            PartialHealRecord::KIND => Self::PartialHealed(PartialHealRecord::of(input)?),
            other => bail!(
                "stage {}: an artifact of kind {other} is not a model ({})",
                input.stage,
                input.dir.display()
            ),
        })
    }

    /// The base model it derives from.
    pub fn base(&self) -> &LoadRecord {
        match self {
            Self::Base(r) => r,
            Self::Pruned(r) => &r.base,
            Self::Healed(r) => &r.base,
            Self::LinearHealed(r) => &r.base,
            Self::PartialHealed(r) => &r.base,
        }
    }

    /// Original layer indices the model keeps, in order.
    pub fn kept(&self) -> Vec<usize> {
        match self {
            Self::Base(r) => (0..r.config.num_hidden_layers).collect(),
            Self::Pruned(r) => r.kept.clone(),
            Self::Healed(r) => r.kept.clone(),
            Self::LinearHealed(r) => r.kept.clone(),
            Self::PartialHealed(r) => r.kept.clone(),
        }
    }

    /// Layers (original numbers) whose attention sublayer the model drops.
    pub fn attention_dropped(&self) -> Vec<usize> {
        match self {
            Self::Base(_) => Vec::new(),
            Self::Pruned(r) => r.attention_dropped.clone(),
            Self::Healed(r) => r.attention_dropped.clone(),
            Self::LinearHealed(r) => r.attention_dropped.clone(),
            Self::PartialHealed(r) => r.attention_dropped.clone(),
        }
    }

    /// Original layers some of whose tensors the model replaces (heal-linear, heal-partial).
    pub fn replaced_layers(&self) -> Vec<usize> {
        match self {
            Self::LinearHealed(r) => r.blocks.iter().map(|b| b.folded_layer).collect(),
            Self::PartialHealed(r) => r.trained_layers.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether every stream of the model differs from its base's from the start: a LoRA
    /// adapter on its layers, or a replaced embedding matrix (heal-partial of a tied model).
    fn changes_every_stream(&self) -> bool {
        match self {
            Self::Healed(_) => true,
            Self::PartialHealed(r) => r.embedding_trained,
            _ => false,
        }
    }

    /// The number of leading base layers the model keeps unchanged: its residual stream below
    /// that boundary equals the base model's (the base itself: all of its layers). None when no
    /// stream of it does (an adapter, a replaced embedding).
    pub fn unchanged_prefix(&self) -> Option<usize> {
        if self.changes_every_stream() {
            return None;
        }
        let (replaced, dropped) = (self.replaced_layers(), self.attention_dropped());
        Some(
            self.kept()
                .iter()
                .enumerate()
                .take_while(|(i, k)| i == *k && !replaced.contains(k) && !dropped.contains(k))
                .count(),
        )
    }

    pub fn variant(&self) -> Variant {
        match self {
            Self::Base(_) => Variant::base(),
            Self::Pruned(r) => Variant::pruned(r),
            Self::Healed(r) => Variant {
                lora_rank: r.train.lora.as_ref().map(|l| l.r),
                ..r.variant.clone()
            },
            Self::LinearHealed(r) => r.variant.clone(),
            Self::PartialHealed(r) => r.variant.clone(),
        }
    }

    pub fn label(&self) -> String {
        self.variant().label()
    }
}

/// An opened model artifact: the base model's files, the layers kept, the adapter if healed.
pub struct ModelRef {
    pub files: ModelFiles,
    /// Original layer indices the model keeps, in order.
    pub kept: Vec<usize>,
    pub variant: Variant,
    /// A PEFT adapter directory (healed models), merged into the weights when built.
    pub adapter: Option<PathBuf>,
    /// Original layers some of whose tensors the model replaces (heal-linear, heal-partial),
    /// in `files`.
    pub replaced_layers: Vec<usize>,
    /// Whether it replaces the embedding matrix (heal-partial of a tied model): no stream of
    /// it equals the base model's then.
    pub embedding_replaced: bool,
    /// Original layers whose attention sublayer the model drops (strategy `attention`).
    pub attention_dropped: Vec<usize>,
    /// The artifact key of the model (for naming).
    pub key: String,
    pub artifact: ModelArtifact,
}

impl ModelRef {
    pub fn open(input: &InputArtifact, cache_root: &Path) -> Result<Self> {
        let artifact = ModelArtifact::of(input)?;
        let mut files = artifact.base().open(cache_root)?;
        let adapter = matches!(artifact, ModelArtifact::Healed(_)).then(|| adapter_dir(&input.dir));
        let mut embedding_replaced = false;
        match &artifact {
            ModelArtifact::LinearHealed(_) => {
                files = files.with_replaced(&replaced_dir(&input.dir))?;
            }
            ModelArtifact::PartialHealed(r) => {
                files = files.with_replaced(&replaced_dir(&input.dir))?;
                embedding_replaced = r.embedding_trained;
            }
            _ => {}
        }
        let replaced_layers = artifact.replaced_layers();
        Ok(Self {
            files,
            kept: artifact.kept(),
            variant: artifact.variant(),
            adapter,
            replaced_layers,
            embedding_replaced,
            attention_dropped: artifact.attention_dropped(),
            key: input.key.clone(),
            artifact,
        })
    }

    /// The unpruned model of opened files (benchmarks, tools): all layers, no adapter.
    pub fn base(files: ModelFiles, key: &str) -> Self {
        let artifact = ModelArtifact::Base(LoadRecord::describe(&files));
        Self {
            kept: artifact.kept(),
            variant: Variant::base(),
            adapter: None,
            replaced_layers: Vec::new(),
            embedding_replaced: false,
            attention_dropped: Vec::new(),
            key: key.to_string(),
            artifact,
            files,
        }
    }

    /// Build the Burn model (kept layers only).
    pub fn build<B: Backend>(&self, device: &B::Device, dtype: DType) -> Result<Transformer<B>> {
        self.build_stored(device, dtype, WeightStorage::Dense)
    }

    /// `build` with the projections held as `storage` says. Dense: a healed model's adapter
    /// merged, W + (alpha / r) B A; NF4: the adapter attached beside the 4-bit base, as PEFT
    /// evaluates a QLoRA model (a merge would need a second quantisation).
    pub fn build_stored<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        storage: WeightStorage,
    ) -> Result<Transformer<B>> {
        self.build_held(device, dtype, storage, false)
    }

    /// `build_stored`, or with `streamed` the layers' projections read from the model file at
    /// each use (dense only, `ModelFiles::build_streamed`); a healed model's adapter is then
    /// merged into each weight as it is read.
    pub fn build_held<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        storage: WeightStorage,
        streamed: bool,
    ) -> Result<Transformer<B>> {
        let mut model = if streamed {
            if storage != WeightStorage::Dense {
                anyhow::bail!("stream_weights reads dense weights from the model file; weights = \"nf4\" holds them quantised in memory: choose one");
            }
            self.files.build_streamed(device, dtype, &self.kept)?
        } else {
            self.files
                .build_stored(device, dtype, &self.kept, storage)?
        };
        model.drop_attention(&self.attention_dropped)?;
        if let Some(dir) = &self.adapter {
            let adapter = AdapterSet::load_peft(dir)?;
            match storage {
                // streamed: merged at each read, the same values
                WeightStorage::Dense => adapter.merge_into(&mut model)?,
                WeightStorage::Nf4 => {
                    adapter.attach(&mut model, false)?;
                }
            }
        }
        Ok(model)
    }

    /// The number of leading base layers the model keeps unchanged (see
    /// `ModelArtifact::unchanged_prefix`).
    pub fn unchanged_prefix(&self) -> Option<usize> {
        self.artifact.unchanged_prefix()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_kind_strategy_and_fraction() {
        assert_eq!(Variant::base().label(), "base");
        let v = Variant {
            variant: "pruned".into(),
            strategy: Some(Strategy::Simple),
            fraction: 0.25,
            n_dropped: 2,
            start: Some(5),
            end: Some(7),
            healed: false,
            lora_rank: None,
        };
        assert_eq!(v.label(), "pruned/simple/0.25");
        assert_eq!(v.healed().label(), "healed/simple/0.25");
        let lora = Variant {
            lora_rank: Some(8),
            ..v.healed()
        };
        assert_eq!(lora.label(), "healed/simple/0.25/r8");
        assert!(v.healed().healed);
    }
}
