//! The `load` artifact: model.json, what a model source is (no weights copied).

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Record;
use crate::model::{ModelConfig, ModelFiles};
use crate::source::{self, ResolvedSource};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRecord {
    pub source: ResolvedSource,
    pub format: String,
    pub storage_dtype: String,
    pub tokenizer_adds_bos: bool,
    pub config: ModelConfig,
}

impl Record for LoadRecord {
    const KIND: &'static str = "load";
    const FILE: &'static str = "model.json";
}

impl LoadRecord {
    /// What an opened model is.
    pub fn describe(files: &ModelFiles) -> Self {
        Self {
            source: files.source.clone(),
            format: files.format.to_string(),
            storage_dtype: files.store.storage_dtype(&files.config),
            tokenizer_adds_bos: files.tokenizer.adds_bos,
            config: files.config.clone(),
        }
    }

    /// Open the model, re-resolving the source if its path moved, and checking that its content
    /// did not change since it was loaded.
    pub fn open(&self, cache_root: &Path) -> Result<ModelFiles> {
        // cheap: pip members are already extracted, local files are hashed once per size and mtime
        let resolved = source::resolve(&self.source.spec, cache_root)?;
        if resolved.sha256 != self.source.sha256 {
            anyhow::bail!(
                "{}: the model changed since it was loaded (sha256 {} != {})",
                resolved.path.display(),
                resolved.sha256,
                self.source.sha256
            );
        }
        ModelFiles::open(resolved)
    }

    /// A short display name: the last component of the source ("SmolLM2-135M-Instruct.Q4_1.gguf").
    pub fn short_name(&self) -> String {
        let spec = self.source.spec.to_string();
        spec.rsplit(['/', ':']).next().unwrap_or(&spec).to_string()
    }
}
