//! `heal-partial`: partial fine-tuning of a pruned model, the LM head and the last k kept
//! layers trained in full rank (Reassessing Layer Pruning).

use anyhow::Result;
use burn::tensor::{backend::AutodiffBackend, DType};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage, Switch};
use crate::artifacts::heal::MERGED_DIR;
use crate::artifacts::heal_linear::replaced_dir;
use crate::artifacts::{ModelRef, PartialHealRecord, Record};
use crate::backend::{dispatch_autodiff, AutodiffTask};
use crate::data::text::TextSpec;
use crate::formats::safetensors_dir::write_f32;
use crate::heal::optim::AdamWConfig;
use crate::heal::partial::PartialSet;
use crate::heal::train::{train, Checkpoints, Execution, TrainConfig, TrainState};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialHealParams {
    pub last_layers: usize,
    pub steps: u64,
    pub warmup_steps: u64,
    pub lr: f64,
    pub global_batch: usize,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub merge: bool,
    /// true | false | "auto" (`Switch`); not in the cache key.
    #[serde(default)]
    pub gradient_checkpointing: Switch,
    pub text: TextSpec,
}

impl Params for PartialHealParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.last_layers == 0 {
            return Err(ParamError {
                path: "last_layers".into(),
                message: "must be at least 1".into(),
            });
        }
        super::check_training(
            self.steps,
            self.global_batch,
            self.micro_batch,
            self.lr,
            self.seq_len,
        )?;
        self.text.validate().map_err(|m| ParamError {
            path: "text.holdout_every".into(),
            message: m,
        })
    }
}

impl PartialHealParams {
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            lora: None,
            partial_layers: Some(self.last_layers),
            steps: self.steps,
            warmup_steps: self.warmup_steps,
            lr: self.lr,
            adamw: AdamWConfig {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            max_grad_norm: self.max_grad_norm,
            micro_batch: self.micro_batch,
            global_batch: self.global_batch,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
        }
    }
}

struct Finetune<'a> {
    model: &'a ModelRef,
    windows: &'a [Vec<u32>],
    config: TrainConfig,
    last_layers: usize,
    checkpoints: &'a Checkpoints,
    execution: Execution,
}

impl AutodiffTask for Finetune<'_> {
    type Output = TrainState<PartialSet>;
    fn run<B: AutodiffBackend>(self, device: B::Device, dtype: DType) -> Result<Self::Output> {
        let mut model = self.model.build::<B>(&device, dtype)?;
        let params = PartialSet::from_model(&model, self.last_layers)?;
        tracing::info!(
            "partial fine-tuning: {} parameters ({} tensors of the last {} layers and the LM head), {} windows, {} steps of {} sequences",
            params.num_params(),
            params.params.len(),
            self.last_layers,
            self.windows.len(),
            self.config.steps,
            self.config.global_batch
        );
        let state = TrainState::resume_or_fresh(&self.config, params, Some(self.checkpoints))?;
        train(
            &mut model,
            self.windows,
            &self.config,
            state,
            Some(self.checkpoints),
            &|_| {},
            self.execution,
        )
    }
}

pub struct PartialHealStage;

impl Stage for PartialHealStage {
    fn kind(&self) -> &'static str {
        "heal-partial"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "partial fine-tuning (Reassessing Layer Pruning): the LM head and the last k kept layers trained in full rank"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/heal-partial.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[InputSlot::one("model", &["prune", "load"])];
        SLOTS
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["text.source"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<PartialHealParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        use crate::model::memory::{mul, BaseWeights};
        let p: PartialHealParams = super::parse_params(params).ok()?;
        let (r, s, e, sh) = (p.micro_batch as u64, p.seq_len as u64, on.elem, &on.shape);
        let k = p.last_layers.min(sh.layers);
        // trained: the last k layers and the LM head (the embedding too when tied)
        let layers_only = sh.layer_parameters(k);
        let head = (sh.cfg.vocab_size * sh.cfg.hidden_size) as u64;
        // checkpointed, the blocks from the lowest trained one up are recomputed (with a tied
        // embedding trained, every block: its gradient reaches the lookup)
        let tied = sh.cfg.tie_word_embeddings;
        let recomputed = if tied { sh.layers } else { k };
        let estimate = |checkpointing: bool| {
            let mut estimate = crate::model::memory::MemoryEstimate::default();
            estimate
                .add("weights", sh.weight_bytes(e, BaseWeights::Dense))
                .add(
                    "trained + AdamW",
                    mul(&[layers_only + head, crate::model::memory::TRAINABLE_BYTES]),
                )
                .add(
                    // every further sub-batch graph (train::micro_step_parts) uploads its own
                    // copy of the trained tensors and returns full-size f32 gradients to the
                    // host
                    "trained copies and gradients of the other sub-batches",
                    mul(&[
                        on.workers.clamp(1, p.micro_batch.max(1)) as u64 - 1,
                        layers_only + head,
                        e + 4,
                    ]),
                );
            if checkpointing {
                let head = crate::model::memory::HeadLoss::GraphWhole;
                sh.add_checkpointed_step(&mut estimate, r, s, e, recomputed, head);
            } else {
                sh.add_training_step(&mut estimate, r, s, e, k);
            }
            estimate
        };
        Some(
            super::training_plan(p.gradient_checkpointing, on, estimate)
                .knob("micro_batch", p.micro_batch)
                .knob("seq_len", p.seq_len)
                .knob("last_layers", p.last_layers),
        )
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: PartialHealParams = ctx.params()?;
        let input = ctx.input("model")?;
        let model = ModelRef::open(input, &ctx.cache_root)?;
        if p.last_layers > model.kept.len() {
            anyhow::bail!(
                "stage {}: last_layers = {} but the model keeps {} layers",
                ctx.stage,
                p.last_layers,
                model.kept.len()
            );
        }
        let (windows, checkpoints) =
            super::training_setup(ctx, &p.text, &model, p.seq_len, PartialHealRecord::KIND)?;
        let config = p.train_config();
        let began = std::time::Instant::now();
        let state = dispatch_autodiff(
            ctx.backend,
            ctx.precision,
            Finetune {
                model: &model,
                windows: &windows,
                config: config.clone(),
                last_layers: p.last_layers,
                checkpoints: &checkpoints,
                execution: Execution {
                    workers: ctx.workers(),
                    checkpointing: p.gradient_checkpointing.for_job(super::CHECKPOINTING, ctx),
                },
            },
        )?;
        let tensors = state.params.hf_tensors()?;
        let dir = replaced_dir(&ctx.out_dir);
        std::fs::create_dir_all(&dir)?;
        write_f32(&dir.join("model.safetensors"), &tensors)?;
        super::write_training_log(
            ctx,
            &state.log,
            &format!("partial fine-tuning {}", model.variant.label()),
        )?;
        let n = model.kept.len();
        let layout = model.files.config.architecture.layout();
        let record = PartialHealRecord {
            base: model.artifact.base().clone(),
            kept: model.kept.clone(),
            attention_dropped: model.attention_dropped.clone(),
            variant: model.variant.healed_partial(),
            trained_layers: model.kept[n - p.last_layers..].to_vec(),
            embedding_trained: tensors.iter().any(|(name, _)| name == layout.embed.hf),
            replaced: tensors.iter().map(|(name, _)| name.clone()).collect(),
            trained_params: state.params.num_params(),
            train: config,
            steps: state.step,
            tokens: state.log.iter().map(|r| r.tokens).sum(),
            final_loss: state.log.last().map(|r| r.loss).unwrap_or(f64::NAN),
            seconds: began.elapsed().as_secs_f64(),
        };
        record.write(&ctx.out_dir)?;
        if p.merge {
            let healed = ModelRef::open(input, &ctx.cache_root)?
                .files
                .with_replaced(&dir)?;
            let meta = serde_json::json!({
                "kept_layers": model.kept,
                "healed": "partial fine-tuning: the LM head and the last layers trained in full",
                "trained_layers": record.trained_layers,
            });
            crate::model::export::export_hf_with_updates(
                &healed,
                &model.kept,
                &[],
                &model.attention_dropped,
                &ctx.out(MERGED_DIR),
                ctx.precision,
                meta,
            )?;
        }
        checkpoints.remove();
        Ok(())
    }
}
