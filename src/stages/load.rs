//! `load`: resolve a model source, read its config and tokenizer, record what it is.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::model::{ModelConfig, ModelFiles};
use crate::source::{self, ResolvedSource};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    pub model: String,
}

impl Params for LoadParams {}

/// The load artifact: model.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub source: ResolvedSource,
    pub format: String,
    pub storage_dtype: String,
    pub tokenizer_adds_bos: bool,
    pub config: ModelConfig,
}

pub struct LoadStage;

impl Stage for LoadStage {
    fn kind(&self) -> &'static str {
        "load"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "resolve a model source; record its architecture, tokenizer and sha256 (no weights copied)"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/load.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[]
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["model"]
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<LoadParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let resolved = ctx.source("model")?.clone();
        let files = ModelFiles::open(resolved)?;
        let record = ModelRecord {
            source: files.source.clone(),
            format: files.format.to_string(),
            storage_dtype: files.store.storage_dtype(),
            tokenizer_adds_bos: files.tokenizer.adds_bos,
            config: files.config.clone(),
        };
        std::fs::write(
            ctx.out("model.json"),
            serde_json::to_string_pretty(&record)?,
        )?;
        tracing::info!(
            "loaded {} ({:?}, {} layers, hidden {})",
            record.source.spec,
            record.config.architecture,
            record.config.num_hidden_layers,
            record.config.hidden_size
        );
        Ok(())
    }
}

/// Open the model a `load` artifact describes (re-resolving the source if its path moved).
pub fn open_model(artifact_dir: &Path, cache_root: &Path) -> Result<ModelFiles> {
    let path = artifact_dir.join("model.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let record: ModelRecord =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
    open_from_record(&record, cache_root)
}

/// Open the model a `ModelRecord` describes, re-resolving the source if its path moved, and
/// checking that its content did not change since it was loaded.
pub fn open_from_record(record: &ModelRecord, cache_root: &Path) -> Result<ModelFiles> {
    // cheap: pip members are already extracted, local files are hashed once per size and mtime
    let resolved = source::resolve(&record.source.spec, cache_root)?;
    if resolved.sha256 != record.source.sha256 {
        anyhow::bail!(
            "{}: the model changed since it was loaded (sha256 {} != {})",
            resolved.path.display(),
            resolved.sha256,
            record.source.sha256
        );
    }
    ModelFiles::open(resolved)
}
