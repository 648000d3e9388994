//! Open a model from a resolved source: a Hugging Face directory (config.json, safetensors,
//! tokenizer.json) or a GGUF file. Weights stay on disk (memory-mapped) until a Burn model is built.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, DType};

use super::config::ModelConfig;
use super::transformer::Transformer;
use super::weights::{Loader, WeightStore};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors_dir::SafetensorsSet;
use crate::formats::tokenizer::TextTokenizer;
use crate::source::ResolvedSource;

pub struct ModelFiles {
    pub source: ResolvedSource,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub store: WeightStore,
    /// "hf" or "gguf"
    pub format: &'static str,
}

impl ModelFiles {
    pub fn open(source: ResolvedSource) -> Result<Self> {
        let path = source.path.clone();
        let (config, tokenizer, store, format) = if path.is_dir() {
            open_hf_dir(&path)?
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let g = GgufFile::open(&path)?;
            let config = ModelConfig::from_gguf(&g)?;
            let tokenizer = TextTokenizer::from_gguf(&g)?;
            (config, tokenizer, WeightStore::Gguf(g), "gguf")
        } else {
            bail!(
                "{}: not a model; expected a Hugging Face model directory (config.json, *.safetensors, \
                 tokenizer.json) or a .gguf file",
                path.display()
            );
        };
        Ok(Self {
            source,
            config,
            tokenizer,
            store,
            format,
        })
    }

    /// The same model with some tensors replaced by those of `dir/model.safetensors` (Hugging
    /// Face names, original layer numbers): a healed model's changed weights.
    pub fn with_replaced(mut self, dir: &Path) -> Result<Self> {
        let top = SafetensorsSet::open_dir(dir)?;
        for name in top.names() {
            if !self.store.has(name, &self.config) {
                bail!(
                    "{}: replaces {name}, which the model {} does not have",
                    dir.display(),
                    self.source.path.display()
                );
            }
        }
        self.store = WeightStore::Overlay {
            top,
            base: Box::new(self.store),
        };
        Ok(self)
    }

    /// Build the Burn model with all layers.
    pub fn build<B: Backend>(&self, device: &B::Device, dtype: DType) -> Result<Transformer<B>> {
        let all: Vec<usize> = (0..self.config.num_hidden_layers).collect();
        self.build_with_layers(device, dtype, &all)
    }

    /// Build the Burn model holding only the original layers `keep`.
    pub fn build_with_layers<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        keep: &[usize],
    ) -> Result<Transformer<B>> {
        Loader::<B> {
            store: &self.store,
            cfg: &self.config,
            device,
            dtype,
        }
        .transformer(keep)
        .with_context(|| format!("loading weights from {}", self.source.path.display()))
    }
}

fn open_hf_dir(dir: &Path) -> Result<(ModelConfig, TextTokenizer, WeightStore, &'static str)> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        bail!(
            "{}: missing config.json (expected a Hugging Face model directory)",
            dir.display()
        );
    }
    let config = ModelConfig::from_hf_config_file(&config_path)?;
    let tok_path = dir.join("tokenizer.json");
    let tiktoken_path = dir.join("qwen.tiktoken");
    let tokenizer = if tok_path.exists() {
        TextTokenizer::from_file(&tok_path)?
    } else if tiktoken_path.exists() {
        TextTokenizer::from_qwen_tiktoken(&tiktoken_path)?
    } else {
        bail!(
            "{}: missing tokenizer.json (or, for Qwen v1, qwen.tiktoken)",
            dir.display()
        );
    };
    let store = WeightStore::Safetensors(SafetensorsSet::open_dir(dir)?);
    Ok((config, tokenizer, store, "hf"))
}
