//! `eval-loss`: validation loss on fixed windows of a held-out text set.

use anyhow::Result;
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

use super::{
    canonical, InputSlot, JobContext, ParamError, Params, Stage, Switch, WeightStorage, ANY_MODEL,
};
use crate::artifacts::loss::DEFINITION;
use crate::artifacts::{LossRecord, ModelRef, Record};
use crate::backend::{dispatch, BackendTask};
use crate::data::text::{load_windows, TextSpec};
use crate::eval::loss::window_losses;
use crate::eval::metrics::mean_stderr;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalLossParams {
    pub seq_len: usize,
    pub windows: usize,
    pub batch_size: usize,
    /// "dense" or "nf4" (`WeightStorage`); left out of the canonical parameters when dense, so
    /// existing keys stay as they were.
    #[serde(default, skip_serializing_if = "WeightStorage::is_dense")]
    pub weights: WeightStorage,
    /// true | false | "auto" (`Switch`): the layers' weights read from the model file at each
    /// use, the same results with one block's weights resident; not in the cache key.
    #[serde(default)]
    pub stream_weights: Switch,
    pub text: TextSpec,
}

impl Params for EvalLossParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.seq_len < 2 {
            return Err(ParamError {
                path: "seq_len".into(),
                message: format!("must be at least 2, got {}", self.seq_len),
            });
        }
        if self.batch_size == 0 {
            return Err(ParamError {
                path: "batch_size".into(),
                message: "must be at least 1".into(),
            });
        }
        self.text.validate().map_err(|m| ParamError {
            path: "text.holdout_every".into(),
            message: m,
        })
    }
}

struct Compute<'a> {
    model: &'a ModelRef,
    windows: &'a [Vec<u32>],
    batch: usize,
    workers: usize,
    weights: WeightStorage,
    streamed: bool,
}

impl BackendTask for Compute<'_> {
    type Output = Vec<(f64, usize)>;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Self::Output> {
        let model = self
            .model
            .build_held::<B>(&device, dtype, self.weights, self.streamed)?;
        window_losses(&model, self.windows, self.batch, self.workers)
    }
}

pub struct EvalLossStage;

impl Stage for EvalLossStage {
    fn kind(&self) -> &'static str {
        "eval-loss"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "validation loss (nats per predicted token) and loss / ln(vocab) on fixed held-out windows"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/eval-loss.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[ANY_MODEL]
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["text.source"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<EvalLossParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        let p: EvalLossParams = super::parse_params(params).ok()?;
        // the batch that will run: never more rows than windows (0: every window of the text)
        let batch = match p.windows {
            0 => p.batch_size,
            w => p.batch_size.min(w),
        };
        let logit_rows = batch.saturating_mul(p.seq_len);
        let plan = super::MemoryPlan::inference_in(
            on,
            p.weights,
            p.stream_weights,
            batch,
            p.seq_len,
            logit_rows,
        );
        Some(
            plan.knob("batch_size", p.batch_size)
                .knob("seq_len", p.seq_len),
        )
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: EvalLossParams = ctx.params()?;
        let model = ModelRef::open(ctx.input("model")?, &ctx.cache_root)?;
        let text = ctx.source("text.source")?;
        super::check_context(&ctx.stage, "seq_len", p.seq_len, &model.files.config)?;
        let count = if p.windows == 0 {
            None
        } else {
            Some(p.windows)
        };
        let windows = load_windows(
            &text.path,
            &p.text,
            &model.files.tokenizer,
            p.seq_len,
            count,
        )?;
        let losses = dispatch(
            ctx.backend,
            ctx.precision,
            Compute {
                model: &model,
                windows: &windows,
                batch: p.batch_size,
                workers: ctx.workers(),
                weights: p.weights,
                streamed: p.stream_weights.for_job(super::STREAMING, ctx),
            },
        )?;
        let total: f64 = losses.iter().map(|(s, _)| s).sum();
        let count: usize = losses.iter().map(|(_, n)| n).sum();
        let per_window: Vec<f64> = losses.iter().map(|(s, n)| s / *n as f64).collect();
        let (_, stderr) = mean_stderr(&per_window);
        let vocab = model.files.config.vocab_size;
        let loss = total / count as f64;
        let record = LossRecord {
            label: model.variant.label(),
            variant: model.variant.clone(),
            model_key: model.key.clone(),
            definition: DEFINITION.into(),
            loss,
            loss_normalized: loss / (vocab as f64).ln(),
            stderr,
            vocab_size: vocab,
            windows: windows.len(),
            seq_len: p.seq_len,
            predicted_tokens: count,
            loss_per_window: per_window,
            window_first_ids: windows
                .iter()
                .map(|w| w[..w.len().min(8)].to_vec())
                .collect(),
        };
        tracing::info!(
            "loss {:.4} nats/token ({:.4} normalised) over {} windows",
            record.loss,
            record.loss_normalized,
            record.windows
        );
        record.write(&ctx.out_dir)
    }
}
