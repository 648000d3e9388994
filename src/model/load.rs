//! Open a model from a resolved source: a Hugging Face directory (config.json, safetensors,
//! tokenizer.json) or a GGUF file. Weights stay on disk (memory-mapped) until a Burn model is built.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, DType};

use super::config::ModelConfig;
use super::transformer::Transformer;
pub use super::weights::WeightStorage;
use super::weights::{Loader, WeightStore};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors_dir::SafetensorsSet;
use crate::formats::tokenizer::TextTokenizer;
use crate::source::ResolvedSource;

pub struct ModelFiles {
    pub source: ResolvedSource,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub store: Arc<WeightStore>,
    /// "hf" or "gguf"
    pub format: &'static str,
}

impl ModelFiles {
    pub fn open(source: ResolvedSource) -> Result<Self> {
        let path = source.path.clone();
        let (config, mut tokenizer, store, format) = if path.is_dir() {
            open_hf_dir(&path)?
        } else if crate::source::is_gguf_file(&path) {
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
        check_weights(&config, &store, &path)?;
        check_tokenizer(&mut tokenizer, &config, &path)?;
        Ok(Self {
            source,
            config,
            tokenizer,
            store: Arc::new(store),
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
        self.store = Arc::new(WeightStore::Overlay {
            top,
            base: self.store,
        });
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
        self.build_stored(device, dtype, keep, WeightStorage::Dense)
    }

    /// `build_with_layers`, the projections held as `storage` says.
    pub fn build_stored<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        keep: &[usize],
        storage: WeightStorage,
    ) -> Result<Transformer<B>> {
        self.loader(device, dtype, storage, false)
            .transformer(keep)
            .with_context(|| format!("loading weights from {}", self.source.path.display()))
    }

    /// `build_with_layers` with layer streaming: the layers' projections stay in the mapped
    /// model file and are read at each use (`model::streamed_linear`), so that only the running
    /// block's weights are resident; the same results as the resident model, bit for bit.
    pub fn build_streamed<B: Backend>(
        &self,
        device: &B::Device,
        dtype: DType,
        keep: &[usize],
    ) -> Result<Transformer<B>> {
        self.loader(device, dtype, WeightStorage::Dense, true)
            .transformer(keep)
            .with_context(|| format!("loading weights from {}", self.source.path.display()))
    }

    fn loader<'a, B: Backend>(
        &'a self,
        device: &'a B::Device,
        dtype: DType,
        storage: WeightStorage,
        streamed: bool,
    ) -> Loader<'a, B> {
        Loader::<B> {
            store: &self.store,
            cfg: &self.config,
            device,
            dtype,
            storage,
            streamed,
        }
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

/// The configuration checked against the tensors actually present, before anything is
/// allocated from it: the layer count no larger than the tensor count, every tensor of every
/// layer there, and the embedding [vocab_size, hidden_size] (the other shapes are checked as
/// each tensor is read).
fn check_weights(config: &ModelConfig, store: &WeightStore, path: &Path) -> Result<()> {
    let layout = config.architecture.layout();
    let layers = config.num_hidden_layers;
    if layers > store.tensor_count() {
        bail!(
            "{}: the configuration says {layers} layers but the file holds only {} tensors",
            path.display(),
            store.tensor_count()
        );
    }
    let suffixes = layout.layer_tensor_suffixes(config);
    for layer in 0..layers {
        for suffix in &suffixes {
            let name = format!("{}.{layer}.{suffix}", layout.layer_prefix);
            if !store.has(&name, config) {
                bail!(
                    "{}: the configuration says {layers} layers, but tensor {name} (layer \
                     {layer}) is not in the file",
                    path.display()
                );
            }
        }
    }
    let embed = layout.embed.hf;
    let expected = [config.vocab_size, config.hidden_size];
    match store.shape(embed, config) {
        Some(shape) if shape == expected => Ok(()),
        Some(shape) => bail!(
            "{}: tensor {embed} has shape {shape:?}, but the configuration's vocab_size and \
             hidden_size make it {expected:?}",
            path.display()
        ),
        None => bail!("{}: no tensor {embed}", path.display()),
    }
}

/// Every id the tokenizer produces (checked by `encode` from now on), and the configuration's
/// BOS / EOS ids, index the embedding: otherwise a token would read past it.
fn check_tokenizer(tokenizer: &mut TextTokenizer, config: &ModelConfig, path: &Path) -> Result<()> {
    let vocab = config.vocab_size;
    // not a check of the tokenizer's largest id: some list special tokens past the embedding
    // that text never produces (Gemma-3's image token); encode refuses those when it meets them
    tokenizer.limit_ids(vocab);
    for (what, id) in [
        ("bos_token_id", config.bos_token_id),
        ("eos_token_id", config.eos_token_id),
    ] {
        if let Some(id) = id {
            if id as usize >= vocab {
                bail!(
                    "{}: {what} = {id} is beyond the model's vocabulary of {vocab} embedding rows",
                    path.display()
                );
            }
        }
    }
    Ok(())
}
