//! `similarity`: angular distances between layer boundaries over a text set.

use anyhow::{Context, Result};
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage, Switch, WeightStorage};
use crate::artifacts::similarity::{write_samples, NUMBERING};
use crate::artifacts::{LoadRecord, Record, SimilarityRecord};
use crate::backend::{dispatch, BackendTask};
use crate::data::text::{load_windows, TextSpec};
use crate::method::loss_greedy::greedy_removal;
use crate::method::similarity::{measure, Distances};
use crate::model::ModelFiles;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityParams {
    pub samples: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    pub text: TextSpec,
    /// Also the mean cosine over every token (for the bi and cosine_all strategies). Left out
    /// of the canonical parameters when false, so existing keys stay as they were.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_tokens: bool,
    /// Greedy removal by calibration loss on the first greedy_samples samples (for the
    /// loss_greedy strategy); 0 = off. Left out of the canonical parameters when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub greedy_samples: usize,
    /// Layers removed greedily; 0 = L - 2.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub greedy_steps: usize,
    /// "dense" or "nf4" (`WeightStorage`); left out of the canonical parameters when dense.
    #[serde(default, skip_serializing_if = "WeightStorage::is_dense")]
    pub weights: WeightStorage,
    /// true | false | "auto" (`Switch`): the layers' weights read from the model file at each
    /// use, the same results with one block's weights resident; not in the cache key.
    #[serde(default)]
    pub stream_weights: Switch,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Params for SimilarityParams {
    fn validate(&self) -> Result<(), ParamError> {
        for (k, v) in [
            ("samples", self.samples),
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
        ] {
            if v == 0 {
                return Err(ParamError {
                    path: k.into(),
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.seq_len < 2 {
            return Err(ParamError {
                path: "seq_len".into(),
                message: format!("must be at least 2, got {}", self.seq_len),
            });
        }
        if self.greedy_samples > self.samples {
            return Err(ParamError {
                path: "greedy_samples".into(),
                message: format!(
                    "must be at most samples ({}), got {}",
                    self.samples, self.greedy_samples
                ),
            });
        }
        self.text.validate().map_err(|m| ParamError {
            path: "text.holdout_every".into(),
            message: m,
        })
    }
}

pub struct SimilarityStage;

/// The similarity pass over token rows (padded with EOS), on any backend: what the stage
/// computes, and what `bench similarity` times.
pub struct Measure<'a> {
    pub files: &'a ModelFiles,
    pub rows: &'a [Vec<u32>],
    pub batch: usize,
    pub workers: usize,
    /// Accumulate every token's cosines too.
    pub all_tokens: bool,
    /// Greedy removal by loss on the first `greedy_samples` rows (0 = none), `greedy_steps`
    /// layers (0 = L - 2).
    pub greedy_samples: usize,
    pub greedy_steps: usize,
    /// How the model holds its projections.
    pub weights: WeightStorage,
    /// Layer streaming (dense weights only).
    pub streamed: bool,
}

impl Measure<'_> {
    /// The distances on a built model (rows padded with EOS).
    pub fn on<B: Backend>(&self, model: &crate::model::Transformer<B>) -> Result<Distances> {
        let mut d = measure(
            model,
            self.rows,
            self.batch,
            self.workers,
            self.files.config.eos_token_id.unwrap_or(0),
            self.all_tokens,
        )?;
        if self.greedy_samples > 0 {
            let layers = model.num_layers();
            let steps = match self.greedy_steps {
                0 => layers.saturating_sub(2).max(1),
                s => s,
            };
            d.loss_greedy = Some(
                greedy_removal(
                    model,
                    &self.rows[..self.greedy_samples],
                    self.batch,
                    self.workers,
                    steps,
                )
                .context("similarity stage, greedy_samples / greedy_steps")?,
            );
        }
        Ok(d)
    }
}

impl BackendTask for Measure<'_> {
    type Output = Distances;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Distances> {
        let all: Vec<usize> = (0..self.files.config.num_hidden_layers).collect();
        let model = if self.streamed {
            self.files.build_streamed::<B>(&device, dtype, &all)?
        } else {
            self.files
                .build_stored::<B>(&device, dtype, &all, self.weights)?
        };
        self.on(&model)
    }
}

impl Stage for SimilarityStage {
    fn kind(&self) -> &'static str {
        "similarity"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "angular distance d(l, n) between layer boundaries at the final token, averaged over a text set (optionally the all-token mean cosine too)"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/similarity.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[InputSlot::one("model", &["load"])];
        SLOTS
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["text.source"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<SimilarityParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        use crate::model::memory::mul;
        let p: SimilarityParams = super::parse_params(params).ok()?;
        // the batch that will run: never more rows than samples
        let batch = p.batch_size.min(p.samples.max(1));
        let mut plan =
            super::MemoryPlan::inference_in(on, p.weights, p.stream_weights, batch, p.seq_len, 0);
        if p.greedy_steps > 0 {
            // loss_greedy: the stream below each candidate, and next-token logits per row
            let rows = batch.min(p.greedy_samples.max(1)) as u64;
            let t = mul(&[rows, p.seq_len as u64]);
            plan.estimate
                .add(
                    "greedy streams",
                    mul(&[
                        t,
                        on.shape.cfg.hidden_size as u64,
                        on.elem,
                        on.shape.layers as u64,
                    ]),
                )
                .add("greedy logits", on.shape.logits(t, on.elem));
        }
        Some(
            plan.knob("batch_size", p.batch_size)
                .knob("seq_len", p.seq_len),
        )
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: SimilarityParams = ctx.params()?;
        let files = LoadRecord::of(ctx.input("model")?)?.open(&ctx.cache_root)?;
        let text = ctx.source("text.source")?;
        super::check_context(&ctx.stage, "seq_len", p.seq_len, &files.config)?;
        let rows = load_windows(
            &text.path,
            &p.text,
            &files.tokenizer,
            p.seq_len,
            Some(p.samples),
        )?;
        tracing::info!(
            "similarity: {} samples of {} tokens from {}",
            rows.len(),
            p.seq_len,
            text.spec
        );
        let distances = dispatch(
            ctx.backend,
            ctx.precision,
            Measure {
                files: &files,
                rows: &rows,
                batch: p.batch_size,
                workers: ctx.workers(),
                all_tokens: p.all_tokens,
                greedy_samples: p.greedy_samples,
                greedy_steps: p.greedy_steps,
                weights: p.weights,
                streamed: p.stream_weights.for_job(super::STREAMING, ctx),
            },
        )?;
        let record = SimilarityRecord {
            numbering: NUMBERING.into(),
            seq_len: p.seq_len,
            tokenizer_adds_bos: files.tokenizer.adds_bos,
            distances,
        };
        record.write(&ctx.out_dir)?;
        write_samples(&ctx.out_dir, &rows)
    }
}
