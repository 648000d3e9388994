//! `select`: the block to drop for each n, by strategy.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::method::selection::{choose, Block, Strategy};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionRecord {
    pub layers: usize,
    pub numbering: String,
    pub blocks: Vec<Block>,
}

impl SelectionRecord {
    pub fn find(&self, n: usize, strategy: Strategy) -> Option<&Block> {
        self.blocks
            .iter()
            .find(|b| b.n == n && b.strategy == strategy)
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
        "the block [start, end) to drop for each n: similarity (argmin of d) or simple (deepest before the last)"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/select.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[InputSlot {
            name: "similarity",
            kinds: &["similarity"],
            required: true,
            many: false,
        }]
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<SelectParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: SelectParams = ctx.params()?;
        let sim = super::similarity::read(&ctx.input("similarity")?.dir)?;
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
            numbering: "0-based layers; drop the half-open block [start, end)".into(),
            blocks,
        };
        std::fs::write(
            ctx.out("selection.json"),
            serde_json::to_string_pretty(&record)?,
        )?;
        Ok(())
    }
}

pub fn read(dir: &std::path::Path) -> Result<SelectionRecord> {
    let p = dir.join("selection.json");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}
