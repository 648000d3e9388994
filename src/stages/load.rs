//! `load`: resolve a model source, read its config and tokenizer, record what it is.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::artifacts::{LoadRecord, Record};
use crate::model::ModelFiles;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    pub model: String,
}

impl Params for LoadParams {}

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
        let record = LoadRecord::describe(&files);
        record.write(&ctx.out_dir)?;
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
