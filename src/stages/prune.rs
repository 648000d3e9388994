//! `prune`: the base model without one block of layers (a light artifact: kept layer list), and
//! optionally exported in Hugging Face layout.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::artifacts::pruned::EXPORT_DIR;
use crate::artifacts::{LoadRecord, PrunedRecord, Record, SelectionRecord};
use crate::method::selection::{n_for_fraction, Strategy};
use crate::model::surgery::kept_without_layers;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    pub fraction: f64,
    pub strategy: Strategy,
    pub export: bool,
}

impl Params for PruneParams {
    fn validate(&self) -> Result<(), ParamError> {
        if !(self.fraction > 0.0 && self.fraction < 1.0) {
            return Err(ParamError {
                path: "fraction".into(),
                message: format!(
                    "must be in (0, 1), got {} (evaluate the unpruned model from the load stage)",
                    self.fraction
                ),
            });
        }
        Ok(())
    }
}

pub struct PruneStage;

impl Stage for PruneStage {
    fn kind(&self) -> &'static str {
        "prune"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "the model without the selected block (kept-layer list; optional Hugging Face export)"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/prune.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[
            InputSlot::one("model", &["load"]),
            InputSlot::one("selection", &["select"]),
        ];
        SLOTS
    }
    fn numeric(&self) -> bool {
        // the exported weights are written in the compute dtype
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<PruneParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        let p: PruneParams = super::parse_params(params).ok()?;
        if !p.export {
            return None;
        }
        // the export reads every kept tensor and writes it in the pipeline's precision
        let mut estimate = crate::model::memory::MemoryEstimate::default();
        estimate.add(
            "export buffers",
            2 * on
                .shape
                .weight_bytes(on.elem, crate::model::memory::BaseWeights::Dense),
        );
        Some(super::MemoryPlan::of(estimate).knob("export", true))
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: PruneParams = ctx.params()?;
        let base = LoadRecord::of(ctx.input("model")?)?;
        let selection = SelectionRecord::of(ctx.input("selection")?)?;
        let layers = base.config.num_hidden_layers;
        if selection.layers != layers {
            bail!(
                "the selection was made for {} layers but the model has {layers}",
                selection.layers
            );
        }
        let n = n_for_fraction(p.fraction, layers);
        if n == 0 {
            bail!(
                "fraction {} of {layers} layers rounds to 0 layers",
                p.fraction
            );
        }
        if n >= layers {
            bail!(
                "fraction {} of {layers} layers rounds to n = {n}, which would drop every layer; \
                 a block has at most {} layers (fraction at most {:.3})",
                p.fraction,
                layers - 1,
                (layers - 1) as f64 / layers as f64
            );
        }
        let block = selection.find(n, p.strategy).ok_or_else(|| {
            anyhow::anyhow!("the selection has no {} block of n = {n} layers (fraction {}); add it to the select stage's n", p.strategy, p.fraction)
        })?;
        let (kept, dropped, attention_dropped) = if block.attention_only {
            ((0..layers).collect(), Vec::new(), block.dropped())
        } else {
            let (kept, dropped) = kept_without_layers(layers, &block.dropped())?;
            (kept, dropped, Vec::new())
        };
        let record = PrunedRecord {
            base: base.clone(),
            layers,
            n,
            fraction: p.fraction,
            strategy: p.strategy,
            start: block.start,
            end: block.end,
            d: block.d,
            kept: kept.clone(),
            dropped: dropped.clone(),
            attention_dropped: attention_dropped.clone(),
        };
        if attention_dropped.is_empty() {
            tracing::info!(
                "prune: drop {n} of {layers} layers {dropped:?} ({})",
                p.strategy
            );
        } else {
            tracing::info!(
                "prune: drop the attention sublayers of {n} of {layers} layers {attention_dropped:?} ({})",
                p.strategy
            );
        }
        record.write(&ctx.out_dir)?;
        if p.export {
            let files = base.open(&ctx.cache_root)?;
            let mut meta = serde_json::json!({
                "numbering": "0-based original layer numbers",
                "kept_layers": kept,
                "dropped_layers": dropped,
                "strategy": p.strategy,
                "fraction": p.fraction,
                "base_source": base.source.spec.to_string(),
                "base_sha256": base.source.sha256,
            });
            if !attention_dropped.is_empty() {
                meta["attention_dropped_layers"] = serde_json::json!(attention_dropped);
                meta["attention_dropped_means"] = serde_json::json!(
                    "the attention output projection (o_proj weight and bias) of these layers is all zeros: their attention sublayer adds nothing to the residual stream"
                );
            }
            crate::model::export::export_hf_with_updates(
                &files,
                &kept,
                &[],
                &attention_dropped,
                &ctx.out(EXPORT_DIR),
                ctx.precision,
                meta,
            )?;
        }
        Ok(())
    }
}
