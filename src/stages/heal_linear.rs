//! `heal-linear`: training-free healing of a pruned model by one least-squares linear map in
//! place of the dropped block, folded into the last kept layer's MLP output projection
//! (ReplaceMe).

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::artifacts::heal::MERGED_DIR;
use crate::artifacts::heal_linear::{
    map_tensor, replaced_dir, LinearBlock, UnhealedBlock, MAP_FILE,
};
use crate::artifacts::{LinearHealRecord, ModelArtifact, ModelRef, Record};
use crate::backend::{dispatch, BackendTask};
use crate::data::text::{load_windows, TextSpec};
use crate::formats::host_tensor::HostTensor;
use crate::formats::safetensors_dir::write_f32;
use crate::heal::linear_map::{accumulate, contiguous_runs, LinearFit, NormalEquations};
use crate::model::architecture::NormRole;
use crate::model::{Projection, TokenBatch};
use crate::progress::Progress;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearHealParams {
    pub windows: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    pub merge: bool,
    pub text: TextSpec,
}

fn perr(path: &str, message: &str) -> ParamError {
    ParamError {
        path: path.into(),
        message: message.into(),
    }
}

impl Params for LinearHealParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.windows == 0 {
            return Err(perr("windows", "must be at least 1"));
        }
        if self.seq_len == 0 {
            return Err(perr("seq_len", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(perr("batch_size", "must be at least 1"));
        }
        self.text
            .validate()
            .map_err(|m| perr("text.holdout_every", &m))
    }
}

/// Accumulate the normal equations over the calibration windows on the unpruned model.
struct Fit<'a> {
    model: &'a ModelRef,
    windows: &'a [Vec<u32>],
    batch: usize,
    blocks: &'a [(usize, usize)],
}

impl BackendTask for Fit<'_> {
    type Output = Vec<NormalEquations>;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Vec<NormalEquations>> {
        // only the layers up to the last block's end are needed
        let last = self.blocks.last().map(|b| b.1).unwrap_or(0);
        let through: Vec<usize> = (0..last).collect();
        let model = self
            .model
            .files
            .build_with_layers::<B>(&device, dtype, &through)?;
        let mut eqs = vec![NormalEquations::new(model.config.hidden_size); self.blocks.len()];
        let mut progress = Progress::new(self.windows.len() as u64, "heal-linear");
        for chunk in self.windows.chunks(self.batch) {
            let batch = TokenBatch::right_padded(chunk, 0);
            accumulate(&model, &batch, self.blocks, &mut eqs)?;
            progress.inc(chunk.len() as u64);
        }
        progress.finish();
        Ok(eqs)
    }
}

pub struct LinearHealStage;

impl Stage for LinearHealStage {
    fn kind(&self) -> &'static str {
        "heal-linear"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "training-free healing (ReplaceMe): the dropped block replaced by a least-squares linear map folded into the last kept MLP"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/heal-linear.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[InputSlot::one("model", &["prune"])];
        SLOTS
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["text.source"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<LinearHealParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        let p: LinearHealParams = super::parse_params(params).ok()?;
        let d = on.shape.cfg.hidden_size as u64;
        let mut plan = super::MemoryPlan::inference(on, p.batch_size, p.seq_len, 0);
        // the normal equations (d x d and d x d in f64) and the map
        plan.estimate
            .add("normal equations", crate::model::memory::mul(&[3, d, d, 8]));
        Some(
            plan.knob("batch_size", p.batch_size)
                .knob("seq_len", p.seq_len),
        )
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: LinearHealParams = ctx.params()?;
        let input = ctx.input("model")?;
        let ModelArtifact::Pruned(pruned) = ModelArtifact::of(input)? else {
            bail!(
                "stage {}: heal-linear heals a pruned model (a prune stage's artifact)",
                ctx.stage
            );
        };
        // blocks without a kept layer before them, and attention-only drops, have no place
        // for a map: they stay as pruned (recorded, with a warning), so that a sweep over
        // strategies runs through
        let mut blocks = contiguous_runs(&pruned.dropped);
        let mut unhealed = Vec::new();
        if let Some(&(0, end)) = blocks.first() {
            let reason = "starts at layer 0: no kept layer precedes it to hold a map".to_string();
            tracing::warn!(
                "stage {}: the dropped block [0, {end}) {reason}; it stays unhealed",
                ctx.stage
            );
            unhealed.push(UnhealedBlock {
                start: 0,
                end,
                reason,
            });
            blocks.remove(0);
        }
        if !pruned.attention_dropped.is_empty() {
            tracing::warn!(
                "stage {}: the model drops only attention sublayers ({:?}): heal-linear has no dropped layer to replace, the model stays as pruned",
                ctx.stage,
                pruned.attention_dropped
            );
        }
        let model = ModelRef::open(input, &ctx.cache_root)?;
        let cfg = &model.files.config;
        if cfg.architecture.layout().norm(NormRole::MlpOut).is_some() {
            bail!(
                "stage {}: {:?} layers normalise the MLP output before the residual add, so a linear map cannot be folded into the MLP output projection",
                ctx.stage,
                cfg.architecture
            );
        }
        super::check_context(&ctx.stage, "seq_len", p.seq_len, cfg)?;
        let text = ctx.source("text.source")?;
        let windows = load_windows(
            &text.path,
            &p.text,
            &model.files.tokenizer,
            p.seq_len,
            Some(p.windows),
        )?;
        let began = std::time::Instant::now();
        let eqs = if blocks.is_empty() {
            Vec::new()
        } else {
            dispatch(
                ctx.backend,
                ctx.precision,
                Fit {
                    model: &model,
                    windows: &windows,
                    batch: p.batch_size,
                    blocks: &blocks,
                },
            )?
        };
        let mut replaced = Vec::new();
        let mut maps = Vec::new();
        let mut fitted = Vec::new();
        for (&(start, end), eq) in blocks.iter().zip(&eqs) {
            let fit = eq
                .solve()
                .with_context(|| format!("fitting the map of the block [{start}, {end})"))?;
            tracing::info!(
                "heal-linear: block [{start}, {end}) fitted on {} tokens; stream error at the cut {:.4e} -> {:.4e} per token",
                fit.tokens,
                fit.mse_pruned,
                fit.mse_fitted
            );
            replaced.extend(folded_tensors(&model, start - 1, &fit)?);
            let d = fit.dim;
            maps.push((
                map_tensor(start - 1),
                HostTensor::new(vec![d, d], fit.t.iter().map(|&x| x as f32).collect())?,
            ));
            fitted.push(LinearBlock {
                start,
                end,
                folded_layer: start - 1,
                tokens: fit.tokens,
                mse_pruned: fit.mse_pruned,
                mse_fitted: fit.mse_fitted,
            });
        }
        let dir = replaced_dir(&ctx.out_dir);
        std::fs::create_dir_all(&dir)?;
        write_f32(&dir.join("model.safetensors"), &replaced)?;
        write_f32(&ctx.out(MAP_FILE), &maps)?;
        let record = LinearHealRecord {
            base: pruned.base.clone(),
            kept: pruned.kept.clone(),
            attention_dropped: pruned.attention_dropped.clone(),
            variant: model.variant.healed_linear(),
            blocks: fitted,
            unhealed,
            replaced: replaced.iter().map(|(n, _)| n.clone()).collect(),
            windows: windows.len(),
            seq_len: p.seq_len,
            seconds: began.elapsed().as_secs_f64(),
        };
        record.write(&ctx.out_dir)?;
        if p.merge {
            let healed = model.files.with_replaced(&dir)?;
            let meta = serde_json::json!({
                "kept_layers": pruned.kept,
                "dropped_layers": pruned.dropped,
                "healed": "one linear map per dropped block, folded into the MLP output projection of the layer before it (ReplaceMe)",
                "folded_layers": record.blocks.iter().map(|b| b.folded_layer).collect::<Vec<_>>(),
            });
            crate::model::export::export_hf_with_updates(
                &healed,
                &pruned.kept,
                &[],
                &pruned.attention_dropped,
                &ctx.out(MERGED_DIR),
                ctx.precision,
                meta,
            )?;
        }
        Ok(())
    }
}

/// The folded layer's MLP output projection (weight, and bias where it has one) with T folded
/// in, under their Hugging Face names (original layer number).
fn folded_tensors(
    model: &ModelRef,
    layer: usize,
    fit: &LinearFit,
) -> Result<Vec<(String, HostTensor)>> {
    let cfg = &model.files.config;
    let layout = cfg.architecture.layout();
    let spec = layout
        .projection(Projection::Down)
        .expect("every layout has an MLP output projection");
    let weight = layout.projection_tensor(layer, spec, "weight");
    let folded = fit
        .fold_weight(&model.files.store.get(&weight, cfg)?)
        .with_context(|| format!("folding the map into {weight}"))?;
    let mut out = vec![(weight.clone(), folded)];
    if Projection::Down.has_bias(cfg) {
        let bias = layout.projection_tensor(layer, spec, "bias");
        let b = model.files.store.get(&bias, cfg)?;
        let folded = fit
            .fold_bias(&b)
            .with_context(|| format!("folding the map into {bias}"))?;
        out.push((bias, folded));
    }
    Ok(out)
}
