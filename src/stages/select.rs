//! `select`: the block to drop for each n, by strategy.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::artifacts::selection::NUMBERING;
use crate::artifacts::{Record, SelectionRecord, SimilarityRecord};
use crate::method::selection::{choose, Strategy};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {
    pub n: Vec<usize>,
    pub strategies: Vec<Strategy>,
}

impl Params for SelectParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.strategies.is_empty() {
            return Err(ParamError {
                path: "strategies".into(),
                message: "must name at least one strategy".into(),
            });
        }
        if self.n.contains(&0) {
            return Err(ParamError {
                path: "n".into(),
                message: "block sizes must be at least 1".into(),
            });
        }
        Ok(())
    }
}

pub struct SelectStage;

impl Stage for SelectStage {
    fn kind(&self) -> &'static str {
        "select"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "the layers to drop for each n: similarity (argmin of d), simple (deepest before the last), reverse (the last n), cosine_all and bi (all-token cosine and Block Influence), loss_greedy (SLEB's greedy removal by loss), attention (LLM-Drop's attention sublayers)"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/select.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[InputSlot::one("similarity", &["similarity"])];
        SLOTS
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<SelectParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: SelectParams = ctx.params()?;
        let sim = SimilarityRecord::of(ctx.input("similarity")?)?;
        let layers = sim.distances.layers;
        let sizes: Vec<usize> = if p.n.is_empty() {
            (1..layers.saturating_sub(1)).collect()
        } else {
            p.n.clone()
        };
        let mut blocks = Vec::new();
        for &strategy in &p.strategies {
            for &n in &sizes {
                blocks.push(choose(&sim.distances, n, strategy)?);
            }
        }
        let record = SelectionRecord {
            layers,
            numbering: NUMBERING.into(),
            blocks,
        };
        record.write(&ctx.out_dir)?;
        Ok(())
    }
}
