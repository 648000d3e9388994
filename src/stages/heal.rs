//! `heal`: QLoRA finetuning of a pruned model.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::AutodiffBackend, DType};
use serde::{Deserialize, Serialize};

use super::context::InputArtifact;
use super::load::ModelRecord;
use super::model_ref::{ModelRef, Variant};
use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::backend::{dispatch_autodiff, AutodiffTask};
use crate::data::text::{read_documents, select_part, TextSpec};
use crate::heal::adapter::{AdapterSet, LoraConfig, MODULES};
use crate::heal::optim::{AdamW, AdamWConfig};
use crate::heal::train::{train, Checkpoints, LogRow, TrainConfig, TrainState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    Nf4,
    None,
}

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
        if self.steps == 0 {
            return Err(perr("steps", "must be at least 1".into()));
        }
        if self.micro_batch == 0
            || self.global_batch == 0
            || self.global_batch % self.micro_batch != 0
        {
            return Err(perr(
                "global_batch",
                format!(
                    "must be a positive multiple of micro_batch ({}), got {}",
                    self.micro_batch, self.global_batch
                ),
            ));
        }
        if self.lora_rank == 0 {
            return Err(perr("lora_rank", "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(perr(
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.lora_dropout),
            ));
        }
        if !(self.lr > 0.0) {
            return Err(perr("lr", format!("must be positive, got {}", self.lr)));
        }
        if self.seq_len < 2 {
            return Err(perr(
                "seq_len",
                format!("must be at least 2, got {}", self.seq_len),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(perr(
                "target_modules",
                "must name at least one module".into(),
            ));
        }
        for m in &self.target_modules {
            if !MODULES.contains(&m.as_str()) {
                return Err(perr(
                    "target_modules",
                    format!("unknown module {m:?} (known: {})", MODULES.join(", ")),
                ));
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
            lora: LoraConfig {
                r: self.lora_rank,
                alpha: if self.lora_alpha > 0.0 {
                    self.lora_alpha
                } else {
                    self.lora_rank as f64
                },
                dropout: self.lora_dropout,
                target_modules: self.target_modules.clone(),
            },
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

/// The artifact's heal.json: enough to rebuild the healed model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealRecord {
    pub base: ModelRecord,
    pub kept: Vec<usize>,
    pub variant: Variant,
    pub train: TrainConfig,
    pub quant: Quant,
    pub steps: u64,
    pub tokens: u64,
    pub final_loss: f64,
    pub seconds: f64,
}

/// Packed training windows: the training documents tokenized, joined with EOS, cut into
/// consecutive windows of seq_len tokens.
pub fn packed_windows(
    path: &Path,
    spec: &TextSpec,
    tokenizer: &crate::data::tokenizer::TextTokenizer,
    eos: Option<u32>,
    seq_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let docs = select_part(
        read_documents(path, &spec.field)?,
        spec.part,
        spec.holdout_every,
    );
    let mut stream = Vec::new();
    for d in &docs {
        stream.extend(
            tokenizer
                .encode(&d.text)
                .with_context(|| format!("tokenizing {}", d.name))?,
        );
        if let Some(e) = eos {
            stream.push(e);
        }
    }
    let windows: Vec<Vec<u32>> = stream.chunks_exact(seq_len).map(|c| c.to_vec()).collect();
    if windows.is_empty() {
        bail!(
            "{}: the {:?} part has fewer than {seq_len} tokens",
            path.display(),
            spec.part
        );
    }
    Ok(windows)
}

struct Heal<'a> {
    model: &'a ModelRef,
    windows: &'a [Vec<u32>],
    config: TrainConfig,
    quant: Quant,
    checkpoints: Checkpoints,
}

impl AutodiffTask for Heal<'_> {
    type Output = TrainState;
    fn run<B: AutodiffBackend>(self, device: B::Device, dtype: DType) -> Result<TrainState> {
        let mut model = self.model.build::<B>(&device, dtype)?;
        if self.quant == Quant::Nf4 {
            crate::model::nf4::quantize_linears(&mut model, &crate::heal::adapter::MODULES)?;
        }
        let adapters = AdapterSet::init(&self.config.lora, &model, self.config.seed)?;
        let state = match self.checkpoints.load(&self.config, &adapters)? {
            Some(s) => s,
            None => {
                let sizes: Vec<usize> = adapters
                    .modules
                    .iter()
                    .flat_map(|m| [m.a.len(), m.b.len()])
                    .collect();
                TrainState {
                    step: 0,
                    cursor: 0,
                    optim: AdamW::new(self.config.adamw, &sizes),
                    adapters,
                    log: vec![],
                }
            }
        };
        tracing::info!(
            "healing: {} LoRA parameters (r = {}, alpha = {}), {} windows, {} steps of {} sequences",
            state.adapters.num_params(),
            self.config.lora.r,
            self.config.lora.alpha,
            self.windows.len(),
            self.config.steps,
            self.config.global_batch
        );
        train(
            &mut model,
            self.windows,
            &self.config,
            state,
            Some(&self.checkpoints),
        )
    }
}

#[derive(Serialize)]
struct LossRow {
    step: u64,
    lr: f64,
    loss: f64,
    grad_norm: f64,
    tokens: u64,
    seconds: f64,
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
        &[InputSlot {
            name: "model",
            kinds: &["prune", "load"],
            required: true,
            many: false,
        }]
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
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: HealParams = ctx.params()?;
        let input = ctx.input("model")?;
        let model = ModelRef::open(input, &ctx.cache_root)?;
        let text = ctx.source("text.source")?;
        let windows = packed_windows(
            &text.path,
            &p.text,
            &model.files.tokenizer,
            model.files.config.eos_token_id,
            p.seq_len,
        )?;
        let config = p.train_config();
        let checkpoints = Checkpoints {
            dir: ctx
                .cache_root
                .join("checkpoints")
                .join("heal")
                .join(&ctx.key),
        };
        let start = std::time::Instant::now();
        let state = dispatch_autodiff(
            ctx.backend,
            ctx.precision,
            Heal {
                model: &model,
                windows: &windows,
                config: config.clone(),
                quant: p.quant,
                checkpoints: Checkpoints {
                    dir: checkpoints.dir.clone(),
                },
            },
        )?;
        let base_name = base_model_name(input, &model);
        state.adapters.save_peft(&ctx.out("adapter"), &base_name)?;
        let mut w = csv::Writer::from_path(ctx.out("loss.csv"))?;
        for r in &state.log {
            w.serialize(LossRow {
                step: r.step,
                lr: r.lr,
                loss: r.loss,
                grad_norm: r.grad_norm,
                tokens: r.tokens,
                seconds: r.seconds,
            })?;
        }
        w.flush()?;
        crate::report::figures::loss_curve(
            &ctx.out_dir,
            &state.log,
            &format!("healing {}", super::eval_qa::variant_label(&model.variant)),
        )?;
        let record = HealRecord {
            base: model_record(input)?,
            kept: model.kept.clone(),
            variant: Variant {
                variant: "healed".into(),
                healed: true,
                ..model.variant.clone()
            },
            train: config,
            quant: p.quant,
            steps: state.step,
            tokens: state.log.iter().map(|r: &LogRow| r.tokens).sum(),
            final_loss: state.log.last().map(|r| r.loss).unwrap_or(f64::NAN),
            seconds: start.elapsed().as_secs_f64(),
        };
        std::fs::write(ctx.out("heal.json"), serde_json::to_string_pretty(&record)?)?;
        if p.merge {
            let meta =
                serde_json::json!({"kept_layers": model.kept, "healed": true, "adapter": "merged"});
            crate::model::export::export_hf_with_adapter(
                &model.files,
                &model.kept,
                &state.adapters,
                &ctx.out("merged"),
                ctx.precision,
                meta,
            )?;
        }
        checkpoints.remove();
        Ok(())
    }
}

fn model_record(input: &InputArtifact) -> Result<ModelRecord> {
    match input.kind.as_str() {
        "load" => Ok(serde_json::from_str(&std::fs::read_to_string(
            input.dir.join("model.json"),
        )?)?),
        _ => Ok(super::model_ref::read_pruned(&input.dir)?.base),
    }
}

/// What adapter_config.json names as the base: the exported pruned model if there is one.
fn base_model_name(input: &InputArtifact, model: &ModelRef) -> String {
    let exported = input.dir.join("model");
    if exported.join("config.json").exists() {
        return exported.display().to_string();
    }
    format!("{} (layers {:?})", model.files.source.spec, model.kept)
}

/// Rebuild a healed model reference from its artifact.
pub fn open_healed(input: &InputArtifact, cache_root: &Path) -> Result<ModelRef> {
    let rec: HealRecord =
        serde_json::from_str(&std::fs::read_to_string(input.dir.join("heal.json"))?)
            .with_context(|| format!("{}: invalid heal.json", input.dir.display()))?;
    let files = super::load::open_from_record(&rec.base, cache_root)?;
    Ok(ModelRef {
        files,
        kept: rec.kept,
        variant: rec.variant,
        adapter: Some(input.dir.join("adapter")),
        key: input.key.clone(),
    })
}
