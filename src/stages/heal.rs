//! `heal`: QLoRA finetuning of a pruned model.

use anyhow::Result;
use burn::tensor::{backend::AutodiffBackend, DType};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage, Switch};
use crate::artifacts::heal::{adapter_dir, MERGED_DIR};
use crate::artifacts::pruned::EXPORT_DIR;
use crate::artifacts::{HealRecord, InputArtifact, ModelRef, Record};
use crate::backend::{dispatch_autodiff, AutodiffTask};
use crate::data::text::TextSpec;
use crate::heal::adapter::LoraConfig;
use crate::heal::optim::AdamWConfig;
use crate::heal::train::{
    base_storage, setup, train, Checkpoints, Execution, LogRow, TrainConfig, TrainState,
};
use crate::model::family::check_target_name;

pub use crate::heal::train::Quant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealParams {
    pub steps: u64,
    pub warmup_steps: u64,
    pub lr: f64,
    pub global_batch: usize,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub quant: Quant,
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

fn perr(path: &str, message: String) -> ParamError {
    ParamError {
        path: path.into(),
        message,
    }
}

impl Params for HealParams {
    fn validate(&self) -> Result<(), ParamError> {
        super::check_training(
            self.steps,
            self.global_batch,
            self.micro_batch,
            self.lr,
            self.seq_len,
        )?;
        if self.lora_rank == 0 {
            return Err(perr("lora_rank", "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(perr(
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.lora_dropout),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(perr(
                "target_modules",
                "must name at least one module".into(),
            ));
        }
        for m in &self.target_modules {
            if let Err(e) = check_target_name(m) {
                return Err(perr("target_modules", e.to_string()));
            }
        }
        self.text
            .validate()
            .map_err(|m| perr("text.holdout_every", m))
    }
}

impl HealParams {
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            lora: Some(LoraConfig {
                r: self.lora_rank,
                alpha: if self.lora_alpha > 0.0 {
                    self.lora_alpha
                } else {
                    self.lora_rank as f64
                },
                dropout: self.lora_dropout,
                target_modules: self.target_modules.clone(),
            }),
            partial_layers: None,
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

struct Heal<'a> {
    model: &'a ModelRef,
    windows: &'a [Vec<u32>],
    config: TrainConfig,
    quant: Quant,
    checkpoints: &'a Checkpoints,
    /// Sleep after every step (a test hook, from the runtime options).
    step_delay_ms: Option<u64>,
    execution: Execution,
}

impl AutodiffTask for Heal<'_> {
    type Output = TrainState;
    fn run<B: AutodiffBackend>(self, device: B::Device, dtype: DType) -> Result<TrainState> {
        let storage = base_storage::<B>(&device, self.quant, self.execution);
        let mut model = self.model.build_stored::<B>(&device, dtype, storage)?;
        let state = setup(
            &mut model,
            &self.config,
            self.quant,
            Some(self.checkpoints),
            self.execution,
        )?;
        let lora = &state.params.config;
        tracing::info!(
            "healing: {} LoRA parameters (r = {}, alpha = {}), {} windows, {} steps of {} sequences{}",
            state.params.num_params(),
            lora.r,
            lora.alpha,
            self.windows.len(),
            self.config.steps,
            self.config.global_batch,
            if self.execution.checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            }
        );
        let delay = self.step_delay_ms;
        train(
            &mut model,
            self.windows,
            &self.config,
            state,
            Some(self.checkpoints),
            &|_| {
                if let Some(ms) = delay {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            },
            self.execution,
        )
    }
}

pub struct HealStage;

impl Stage for HealStage {
    fn kind(&self) -> &'static str {
        "heal"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "QLoRA healing of a pruned model: LoRA on a frozen NF4 base, AdamW, cosine schedule; PEFT adapter"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/heal.toml")
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
        canonical::<HealParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        use crate::model::memory::{mul, BaseWeights, HeadLoss};
        let p: HealParams = super::parse_params(params).ok()?;
        let (r, s, e, sh) = (p.micro_batch as u64, p.seq_len as u64, on.elem, &on.shape);
        let base = match p.quant {
            Quant::Nf4 => BaseWeights::Nf4,
            Quant::None => BaseWeights::Dense,
        };
        let layout = sh.cfg.architecture.layout();
        let lora: u64 = layout
            .projections
            .iter()
            .filter(|s| {
                !s.fused
                    && p.target_modules
                        .iter()
                        .any(|t| *t == s.name || *t == s.qualified())
            })
            .map(|s| {
                let (i, o) = s.projection.dims(&sh.cfg);
                mul(&[p.lora_rank as u64, (i + o) as u64])
            })
            .fold(0u64, u64::saturating_add)
            .saturating_mul(sh.layers as u64);
        let graphs = on.workers.clamp(1, p.micro_batch.max(1)) as u64;
        let estimate = |checkpointing: bool| {
            let mut estimate = crate::model::memory::MemoryEstimate::default();
            estimate.add("weights", sh.weight_bytes(e, base));
            if base == BaseWeights::Nf4 {
                if checkpointing {
                    // one block's projections in each sub-batch's graph, and the one being
                    // dequantised for its matmul
                    estimate.add(
                        "NF4 dequantised, one block per graph",
                        mul(&[sh.nf4_one_block(e), graphs]),
                    );
                    estimate.add("NF4 dequantising", sh.nf4_transient(e));
                } else {
                    // on the host the frozen base is dequantised once and kept
                    // (Nf4Weight::keep_dequantized), one copy that every sub-batch graph
                    // reads; elsewhere each sub-batch's graph (train::micro_step_parts)
                    // dequantises and keeps its own
                    let copies = if on.host { 1 } else { graphs };
                    estimate.add(
                        "NF4 dequantised, kept for backward",
                        mul(&[
                            sh.nf4_kept_for_backward(e)
                                .saturating_add(sh.nf4_transient(e)),
                            copies,
                        ]),
                    );
                }
            }
            estimate.add(
                "LoRA + AdamW",
                mul(&[lora, crate::model::memory::TRAINABLE_BYTES]),
            );
            if checkpointing {
                // the frozen head's loss on the host where it can (heal::host_loss::usable)
                let head = if on.host && e == 4 {
                    HeadLoss::Host
                } else {
                    HeadLoss::GraphBlocks
                };
                sh.add_checkpointed_step(&mut estimate, r, s, e, sh.layers, head);
            } else {
                sh.add_training_step(&mut estimate, r, s, e, sh.layers);
            }
            estimate
        };
        let plan = super::training_plan(p.gradient_checkpointing, on, estimate);
        Some(
            plan.knob("micro_batch", p.micro_batch)
                .knob("seq_len", p.seq_len),
        )
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: HealParams = ctx.params()?;
        let input = ctx.input("model")?;
        let model = ModelRef::open(input, &ctx.cache_root)?;
        let (windows, checkpoints) =
            super::training_setup(ctx, &p.text, &model, p.seq_len, HealRecord::KIND)?;
        let config = p.train_config();
        let start = std::time::Instant::now();
        let state = dispatch_autodiff(
            ctx.backend,
            ctx.precision,
            Heal {
                model: &model,
                windows: &windows,
                config: config.clone(),
                quant: p.quant,
                checkpoints: &checkpoints,
                step_delay_ms: ctx.runtime.heal_step_delay_ms,
                execution: Execution {
                    workers: ctx.workers(),
                    checkpointing: p.gradient_checkpointing.for_job(super::CHECKPOINTING, ctx),
                },
            },
        )?;
        let base_name = base_model_name(input, &model);
        state
            .params
            .save_peft(&adapter_dir(&ctx.out_dir), &base_name)?;
        super::write_training_log(
            ctx,
            &state.log,
            &format!("healing {}", model.variant.label()),
        )?;
        let record = HealRecord {
            base: model.artifact.base().clone(),
            kept: model.kept.clone(),
            attention_dropped: model.attention_dropped.clone(),
            variant: model.variant.healed(),
            train: config,
            quant: p.quant,
            steps: state.step,
            tokens: state.log.iter().map(|r: &LogRow| r.tokens).sum(),
            final_loss: state.log.last().map(|r| r.loss).unwrap_or(f64::NAN),
            seconds: start.elapsed().as_secs_f64(),
        };
        record.write(&ctx.out_dir)?;
        if p.merge {
            let meta =
                serde_json::json!({"kept_layers": model.kept, "healed": true, "adapter": "merged"});
            crate::model::export::export_hf_with_updates(
                &model.files,
                &model.kept,
                &state.params.updates(&model.files.config)?,
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

/// What adapter_config.json names as the base: the exported pruned model if there is one.
fn base_model_name(input: &InputArtifact, model: &ModelRef) -> String {
    let exported = input.dir.join(EXPORT_DIR);
    if exported.join("config.json").exists() {
        return exported.display().to_string();
    }
    format!("{} (layers {:?})", model.files.source.spec, model.kept)
}
