//! `layerprune inspect MODEL`: what a model source holds.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::model::{ModelConfig, ModelFiles};
use crate::source;

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub source: String,
    pub path: String,
    pub sha256: String,
    pub format: String,
    pub storage_dtype: String,
    pub tokenizer_adds_bos: bool,
    pub config: ModelConfig,
}

pub fn inspect(model: &str, cache_root: &Path) -> Result<InspectReport> {
    let files = ModelFiles::open(source::resolve_model_str(model, cache_root)?)?;
    Ok(InspectReport {
        source: files.source.spec.to_string(),
        path: files.source.path.display().to_string(),
        sha256: files.source.sha256.clone(),
        format: files.format.to_string(),
        storage_dtype: files.store.storage_dtype(&files.config),
        tokenizer_adds_bos: files.tokenizer.adds_bos,
        config: files.config.clone(),
    })
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(f, "source        {}", self.source)?;
        writeln!(f, "path          {}", self.path)?;
        writeln!(f, "sha256        {}", self.sha256)?;
        writeln!(f, "format        {} ({})", self.format, self.storage_dtype)?;
        writeln!(f, "architecture  {:?}", c.architecture)?;
        writeln!(
            f,
            "layers        {} (numbered 0..{}; x(l) = input of layer l)",
            c.num_hidden_layers,
            c.num_hidden_layers - 1
        )?;
        writeln!(f, "hidden size   {}", c.hidden_size)?;
        writeln!(f, "intermediate  {}", c.intermediate_size)?;
        writeln!(
            f,
            "heads         {} query, {} key/value, head_dim {}",
            c.num_attention_heads, c.num_key_value_heads, c.head_dim
        )?;
        writeln!(f, "vocab         {}", c.vocab_size)?;
        writeln!(
            f,
            "rope          theta {}, scaling {:?}",
            c.rope_theta, c.rope_scaling
        )?;
        writeln!(f, "tied embed    {}", c.tie_word_embeddings)?;
        write!(f, "adds BOS      {}", self.tokenizer_adds_bos)
    }
}
