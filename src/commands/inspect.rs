//! `layerprune inspect MODEL`: what a model source holds. A directory with only config.json (as
//! `huggingface-cli download REPO config.json` leaves it, or pipelines/paper/configs/*) is
//! read as a configuration without weights.

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
    /// None when the source holds no tokenizer (a configuration only).
    pub tokenizer_adds_bos: Option<bool>,
    pub parameters: u64,
    /// The names LoRA targets may use for this architecture.
    pub lora_targets: Vec<String>,
    pub config: ModelConfig,
}

/// Whether a model directory holds a configuration but no weights.
fn config_only(dir: &Path) -> bool {
    dir.is_dir()
        && dir.join("config.json").is_file()
        && !std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            })
            .unwrap_or(false)
}

pub fn inspect(model: &str, cache_root: &Path) -> Result<InspectReport> {
    let resolved = source::resolve_model_str(model, cache_root)?;
    if config_only(&resolved.path) {
        let config = ModelConfig::from_hf_config_file(&resolved.path.join("config.json"))?;
        let layout = config.architecture.layout();
        return Ok(InspectReport {
            source: resolved.spec.to_string(),
            path: resolved.path.display().to_string(),
            sha256: resolved.sha256.clone(),
            format: "config only".into(),
            storage_dtype: "no weights here".into(),
            tokenizer_adds_bos: None,
            parameters: layout.parameter_count(&config),
            lora_targets: layout.projection_names(),
            config,
        });
    }
    let files = ModelFiles::open(resolved)?;
    let layout = files.config.architecture.layout();
    Ok(InspectReport {
        source: files.source.spec.to_string(),
        path: files.source.path.display().to_string(),
        sha256: files.source.sha256.clone(),
        format: files.format.to_string(),
        storage_dtype: files.store.storage_dtype(&files.config),
        tokenizer_adds_bos: Some(files.tokenizer.adds_bos),
        parameters: layout.parameter_count(&files.config),
        lora_targets: layout.projection_names(),
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
        writeln!(
            f,
            "parameters    {} ({:.2} B)",
            self.parameters,
            self.parameters as f64 / 1e9
        )?;
        if let Some(limit) = c.context_limit {
            writeln!(
                f,
                "context       at most {limit} tokens per sequence in inference (seq_length)"
            )?;
        }
        writeln!(f, "LoRA targets  {}", self.lora_targets.join(", "))?;
        match self.tokenizer_adds_bos {
            Some(b) => write!(f, "adds BOS      {b}"),
            None => write!(f, "tokenizer     none here (configuration only)"),
        }
    }
}
