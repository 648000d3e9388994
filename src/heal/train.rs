//! The healing loop: AdamW, cosine schedule with warmup, gradient accumulation and clipping,
//! checkpoints that make a killed run resume where it stopped and end bit-identical (on CPU) to
//! an uninterrupted one; over any `Trainable` set of host parameters: LoRA adapters on a frozen
//! (optionally NF4) base, or the full-rank tensors of the last layers (heal::partial).
//!
//! Determinism: the data order is a seeded permutation per epoch; dropout masks are drawn on the
//! host from (seed, step, micro-batch, adapter, row); all optimizer state is host f32 and saved
//! exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::AutodiffBackend, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::adapter::{AdapterSet, LoraConfig};
use super::gradients::{loss_and_gradients, GradientPass};
use super::optim::{clip_grad_norm, cosine_with_warmup, AdamW, AdamWConfig};
use crate::formats::host_tensor::transpose;
use crate::model::surgery::{all_projections, quantize_nf4};
use crate::model::{to_f32_vec, Transformer};
use crate::progress::Progress;

/// The frozen base of the adapted projections: NF4 with double quantisation (QLoRA) or dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    Nf4,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// LoRA healing: the adapters' configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// Partial fine-tuning: the number of last kept layers trained in full (with the LM head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_layers: Option<usize>,
    pub steps: u64,
    pub warmup_steps: u64,
    pub lr: f64,
    pub adamw: AdamWConfig,
    pub max_grad_norm: f64,
    pub micro_batch: usize,
    pub global_batch: usize,
    pub seed: u64,
    pub checkpoint_every: u64,
}

impl TrainConfig {
    pub fn accumulation(&self) -> usize {
        self.global_batch / self.micro_batch
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub seconds: f64,
}

/// What a training run updates: host f32 parameter vectors, how they enter the model with
/// gradients, and how a checkpoint names them.
pub trait Trainable: Clone {
    /// Lengths of the parameter vectors, in order (the optimizer's state follows it).
    fn param_sizes(&self) -> Vec<usize>;
    fn params_mut(&mut self) -> Vec<&mut Vec<f32>>;
    /// The loss of one micro-batch and the gradients of loss * loss_scale, in parameter order;
    /// `rows` are the micro-batch's rows first_row.., dropout seeded by `dropout_seed`;
    /// `checkpointing`: layer-by-layer recomputation (heal::gradients).
    fn micro_step<B: AutodiffBackend>(
        &self,
        model: &mut Transformer<B>,
        rows: &[Vec<u32>],
        loss_scale: f64,
        dropout_seed: u64,
        first_row: usize,
        checkpointing: bool,
    ) -> Result<(f64, Vec<Vec<f32>>)>;
    /// Named tensors (name, shape, values) for a checkpoint.
    fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])>;
    /// Restore the values of a checkpoint's named tensors.
    fn restore(&mut self, tensors: &std::collections::HashMap<String, Vec<f32>>) -> Result<()>;
}

impl Trainable for AdapterSet {
    fn param_sizes(&self) -> Vec<usize> {
        AdapterSet::param_sizes(self)
    }
    fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        AdapterSet::params_mut(self)
    }
    fn micro_step<B: AutodiffBackend>(
        &self,
        model: &mut Transformer<B>,
        rows: &[Vec<u32>],
        loss_scale: f64,
        dropout_seed: u64,
        first_row: usize,
        checkpointing: bool,
    ) -> Result<(f64, Vec<Vec<f32>>)> {
        let handles = self.attach(model, true)?;
        crate::model::surgery::seed_dropout(model, dropout_seed, first_row);
        let pass = GradientPass::checkpointed(checkpointing);
        adapter_gradients(model, self, handles, rows, loss_scale, pass)
    }
    fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let r = self.config.r;
        self.modules
            .iter()
            .flat_map(|m| {
                [
                    (m.peft_name("A"), vec![r, m.in_features], m.a.as_slice()),
                    (m.peft_name("B"), vec![m.out_features, r], m.b.as_slice()),
                ]
            })
            .collect()
    }
    fn restore(&mut self, tensors: &std::collections::HashMap<String, Vec<f32>>) -> Result<()> {
        for m in &mut self.modules {
            let get = |name: String| {
                tensors
                    .get(&name)
                    .cloned()
                    .with_context(|| format!("missing {name}"))
            };
            m.a = get(m.peft_name("A"))?;
            m.b = get(m.peft_name("B"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct TrainState<P = AdapterSet> {
    /// Optimizer steps completed.
    pub step: u64,
    /// Windows consumed (position in the concatenation of the per-epoch orders).
    pub cursor: u64,
    /// What is trained (LoRA adapters, or the tensors of a partial fine-tune).
    pub params: P,
    pub optim: AdamW,
    pub log: Vec<LogRow>,
}

impl<P: Trainable> TrainState<P> {
    /// The state before the first step: the given parameters, zero optimizer moments.
    pub fn fresh(config: &TrainConfig, params: P) -> Self {
        Self {
            step: 0,
            cursor: 0,
            optim: AdamW::new(config.adamw, &params.param_sizes()),
            params,
            log: vec![],
        }
    }

    /// Resume from the newest matching checkpoint, else start fresh.
    pub fn resume_or_fresh(
        config: &TrainConfig,
        params: P,
        checkpoints: Option<&Checkpoints>,
    ) -> Result<Self> {
        let resumed = match checkpoints {
            Some(c) => c.load(config, &params)?,
            None => None,
        };
        Ok(resumed.unwrap_or_else(|| Self::fresh(config, params)))
    }
}

/// How to build the model to heal: with an NF4 base that `setup` will not keep dequantised,
/// quantised layer by layer as it is built (`WeightStorage::Nf4`), so that the dense model never
/// exists whole (a 70B model in bf16 would not fit where its NF4 base does); `setup` then finds
/// the projections quantised already, the same codes.
pub fn base_storage<B: AutodiffBackend>(
    device: &B::Device,
    quant: Quant,
    execution: Execution,
) -> crate::model::load::WeightStorage {
    let keeps_dequantized = crate::backend::on_host::<B>(device) && !execution.checkpointing;
    if quant == Quant::Nf4 && !keeps_dequantized {
        crate::model::load::WeightStorage::Nf4
    } else {
        crate::model::load::WeightStorage::Dense
    }
}

/// Prepare a built model for healing: quantise its frozen projections (NF4) if asked, create the
/// adapters (PEFT's initialisation, seeded), and resume from the newest matching checkpoint.
/// Where the device is the host and the run is not checkpointed, each NF4 weight is dequantised
/// once and kept (one graph holds it for the backward pass anyway); checkpointed, a dequantised
/// weight lives only while its block runs, as in bitsandbytes' QLoRA.
pub fn setup<B: AutodiffBackend>(
    model: &mut Transformer<B>,
    config: &TrainConfig,
    quant: Quant,
    checkpoints: Option<&Checkpoints>,
    execution: Execution,
) -> Result<TrainState> {
    if quant == Quant::Nf4 {
        let projections = all_projections(model);
        let keep = crate::backend::on_host::<B>(&model.device) && !execution.checkpointing;
        quantize_nf4(model, &projections, keep)?;
    }
    let lora = config
        .lora
        .as_ref()
        .context("LoRA healing needs a LoRA configuration")?;
    let adapters = AdapterSet::init(lora, model, config.seed)?;
    TrainState::resume_or_fresh(config, adapters, checkpoints)
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    step: u64,
    cursor: u64,
    t: u64,
    log: Vec<LogRow>,
    config: TrainConfig,
}

/// Window indices of epoch `e`: a permutation seeded by (seed, e).
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut rng);
    idx
}

fn write_f32_tensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(d))?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn read_f32_tensors(path: &Path) -> Result<std::collections::HashMap<String, Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect())
}

/// Checkpoints of one job: `<dir>/step-<N>/` and `<dir>/latest`.
pub struct Checkpoints {
    pub dir: PathBuf,
}

impl Checkpoints {
    pub fn save<P: Trainable>(&self, state: &TrainState<P>, config: &TrainConfig) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // one name, not one per process: the key's lock makes this the only writer, and a
        // checkpoint left half-written by a killed process is removed by the next save
        let tmp = self.dir.join(".tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        write_f32_tensors(
            &tmp.join("adapters.safetensors"),
            &state.params.named_tensors(),
        )?;
        let mut moments: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (k, (m, v)) in state.optim.m.iter().zip(&state.optim.v).enumerate() {
            moments.push((format!("m.{k}"), vec![m.len()], m));
            moments.push((format!("v.{k}"), vec![v.len()], v));
        }
        write_f32_tensors(&tmp.join("optimizer.safetensors"), &moments)?;
        let meta = CheckpointMeta {
            step: state.step,
            cursor: state.cursor,
            t: state.optim.t,
            log: state.log.clone(),
            config: config.clone(),
        };
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(&meta)?)?;
        let dest = self.dir.join(format!("step-{}", state.step));
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest)?;
        let latest_tmp = self.dir.join(".latest.tmp");
        std::fs::write(&latest_tmp, state.step.to_string())?;
        std::fs::rename(&latest_tmp, self.dir.join("latest"))?;
        // keep only the newest
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("step-") && name != format!("step-{}", state.step) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    /// The newest checkpoint, if it was made with the same configuration.
    pub fn load<P: Trainable>(
        &self,
        config: &TrainConfig,
        template: &P,
    ) -> Result<Option<TrainState<P>>> {
        let Ok(latest) = std::fs::read_to_string(self.dir.join("latest")) else {
            return Ok(None);
        };
        let dir = self.dir.join(format!("step-{}", latest.trim()));
        let meta: CheckpointMeta =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
                .with_context(|| format!("{}: unreadable checkpoint", dir.display()))?;
        if &meta.config != config {
            tracing::warn!(
                "ignoring checkpoint {} made with another configuration",
                dir.display()
            );
            return Ok(None);
        }
        let tensors = read_f32_tensors(&dir.join("adapters.safetensors"))?;
        let mut params = template.clone();
        params
            .restore(&tensors)
            .with_context(|| format!("{}: incomplete checkpoint", dir.display()))?;
        let moments = read_f32_tensors(&dir.join("optimizer.safetensors"))?;
        let sizes = params.param_sizes();
        let mut optim = AdamW::new(config.adamw, &sizes);
        optim.t = meta.t;
        for k in 0..sizes.len() {
            optim.m[k] = moments
                .get(&format!("m.{k}"))
                .cloned()
                .context("optimizer state")?;
            optim.v[k] = moments
                .get(&format!("v.{k}"))
                .cloned()
                .context("optimizer state")?;
        }
        tracing::info!(
            "resuming from checkpoint {} (step {})",
            dir.display(),
            meta.step
        );
        Ok(Some(TrainState {
            step: meta.step,
            cursor: meta.cursor,
            params,
            optim,
            log: meta.log,
        }))
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gradients of the adapters (PEFT layout, module order, A then B) for one micro-batch, and its
/// loss (dropout masks of seed 0).
pub fn micro_step<B: AutodiffBackend>(
    model: &mut Transformer<B>,
    adapters: &AdapterSet,
    rows: &[Vec<u32>],
    loss_scale: f64,
) -> Result<(f64, Vec<Vec<f32>>)> {
    micro_step_with(model, adapters, rows, loss_scale, GradientPass::default())
}

/// `micro_step` with the gradients computed as `pass` says.
pub fn micro_step_with<B: AutodiffBackend>(
    model: &mut Transformer<B>,
    adapters: &AdapterSet,
    rows: &[Vec<u32>],
    loss_scale: f64,
    pass: GradientPass,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let handles = adapters.attach(model, true)?;
    crate::model::surgery::seed_dropout(model, 0, 0);
    adapter_gradients(model, adapters, handles, rows, loss_scale, pass)
}

/// The loss of `rows` and the gradients of the attached adapters `handles`.
fn adapter_gradients<B: AutodiffBackend>(
    model: &Transformer<B>,
    adapters: &AdapterSet,
    handles: Vec<(Tensor<B, 2>, Tensor<B, 2>)>,
    rows: &[Vec<u32>],
    loss_scale: f64,
    pass: GradientPass,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let r = adapters.config.r;
    let mut sums: Vec<Option<Vec<f32>>> = vec![None; handles.len() * 2];
    let value = loss_and_gradients(model, rows, loss_scale, pass, &mut |grads| {
        for (k, (a, b)) in handles.iter().enumerate() {
            add_gradient(&mut sums[2 * k], a.grad(grads))?; // [in, r]
            add_gradient(&mut sums[2 * k + 1], b.grad(grads))?; // [r, out]
        }
        Ok(())
    })?;
    let mut out = Vec::with_capacity(sums.len());
    for (m, pair) in adapters.modules.iter().zip(sums.chunks_exact(2)) {
        let missing = || format!("no gradient for the LoRA factors of {}", m.peft_name("A"));
        let ga = pair[0].as_ref().with_context(missing)?;
        let gb = pair[1].as_ref().with_context(missing)?;
        out.push(transpose(ga, m.in_features, r));
        out.push(transpose(gb, r, m.out_features));
    }
    Ok((value, out))
}

/// sum += g (read back to the host), where the graph gave a gradient.
pub fn add_gradient<B: burn::tensor::backend::Backend, const D: usize>(
    sum: &mut Option<Vec<f32>>,
    g: Option<Tensor<B, D>>,
) -> Result<()> {
    let Some(g) = g else { return Ok(()) };
    let g = to_f32_vec(g)?;
    match sum {
        None => *sum = Some(g),
        Some(s) => s.iter_mut().zip(g).for_each(|(x, y)| *x += y),
    }
    Ok(())
}

/// How the steps of a training run are executed: the same result whatever the values (up to
/// the summation order of `workers`' sub-batches), so none of it is in a cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// Sub-batches of a micro-batch side by side (CPU threads; 1 on GPUs).
    pub workers: usize,
    /// Layer-by-layer recomputation of the backward pass (heal::gradients).
    pub checkpointing: bool,
}

/// One micro-batch's loss and the gradients of loss * loss_scale, its rows split into `workers`
/// sub-batches, each on its own thread with its own copy of the model (its own autodiff graph;
/// the frozen weights are shared): Burn's flex backend runs element-wise work on the calling
/// thread, so one graph keeps one core busy between matrix products. Each sub-batch's loss
/// counts by its share of the rows (the windows have equal lengths); the gradients are summed.
/// Dropout masks depend on (seed, row) only, not on the split.
fn micro_step_parts<B: AutodiffBackend, P: Trainable + Sync>(
    model: &Transformer<B>,
    params: &P,
    rows: &[Vec<u32>],
    loss_scale: f64,
    dropout_seed: u64,
    execution: Execution,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let workers = execution.workers.clamp(1, rows.len().max(1));
    let per = rows.len().div_ceil(workers).max(1);
    let run = |first: usize, part: &[Vec<u32>]| -> Result<(f64, Vec<Vec<f32>>)> {
        let mut m = model.clone();
        let share = part.len() as f64 / rows.len() as f64;
        let (loss, g) = params.micro_step(
            &mut m,
            part,
            loss_scale * share,
            dropout_seed,
            first,
            execution.checkpointing,
        )?;
        Ok((loss * share, g))
    };
    let results: Vec<Result<(f64, Vec<Vec<f32>>)>> = if workers == 1 {
        vec![run(0, rows)]
    } else {
        let chunks: Vec<_> = rows.chunks(per).collect();
        crate::workers::scoped_map("training", &chunks, |i, part| run(i * per, part))
    };
    let mut loss = 0.0;
    let mut grads: Option<Vec<Vec<f32>>> = None;
    for r in results {
        let (l, g) = r?;
        loss += l;
        add_into(&mut grads, g);
    }
    Ok((loss, grads.context("no rows in the micro-batch")?))
}

/// acc += g, element by element (acc empty: g).
fn add_into(acc: &mut Option<Vec<Vec<f32>>>, g: Vec<Vec<f32>>) {
    match acc {
        None => *acc = Some(g),
        Some(acc) => {
            for (a, b) in acc.iter_mut().zip(g) {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            }
        }
    }
}

/// Train from `state` (fresh or resumed) to `config.steps`, checkpointing as configured;
/// `after_step` sees the state after every optimizer step (and its checkpoint). Each
/// micro-batch runs as `execution.workers` sub-batches side by side (CPU; 1 on GPUs); a resumed
/// run ends bit-identical to an uninterrupted one with the same `workers`.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffBackend, P: Trainable + Sync>(
    model: &mut Transformer<B>,
    windows: &[Vec<u32>],
    config: &TrainConfig,
    mut state: TrainState<P>,
    checkpoints: Option<&Checkpoints>,
    after_step: &dyn Fn(&TrainState<P>),
    execution: Execution,
) -> Result<TrainState<P>> {
    if windows.is_empty() {
        bail!("no training windows");
    }
    let accum = config.accumulation();
    let n = windows.len();
    let mut progress = Progress::new(config.steps, "heal");
    progress.inc(state.step);
    let mut order_cache: Option<(u64, Vec<usize>)> = None;
    while state.step < config.steps {
        let start = Instant::now();
        let lr = config.lr * cosine_with_warmup(state.step, config.warmup_steps, config.steps);
        let mut grads: Option<Vec<Vec<f32>>> = None;
        let mut loss_sum = 0.0;
        let mut tokens = 0u64;
        for micro in 0..accum {
            let mut rows = Vec::with_capacity(config.micro_batch);
            for _ in 0..config.micro_batch {
                let epoch = state.cursor / n as u64;
                if order_cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
                    order_cache = Some((epoch, epoch_order(n, config.seed, epoch)));
                }
                let order = &order_cache.as_ref().unwrap().1;
                rows.push(windows[order[(state.cursor % n as u64) as usize]].clone());
                state.cursor += 1;
            }
            tokens += rows.iter().map(|r| r.len() as u64).sum::<u64>();
            let dropout_seed = config.seed ^ (state.step << 16) ^ micro as u64 ^ 0xD0_D0;
            let (loss, g) = micro_step_parts(
                model,
                &state.params,
                &rows,
                1.0 / accum as f64,
                dropout_seed,
                execution,
            )?;
            if !loss.is_finite() {
                let last = checkpoints
                    .map(|_| {
                        format!(
                            "; the last good checkpoint is at step {}",
                            state.log.last().map(|r| r.step).unwrap_or(0)
                        )
                    })
                    .unwrap_or_default();
                bail!(
                    "step {}: the loss is not finite ({loss}){last}",
                    state.step + 1
                );
            }
            loss_sum += loss;
            add_into(&mut grads, g);
        }
        let mut grads = grads.expect("at least one micro-batch");
        let grad_norm = clip_grad_norm(&mut grads, config.max_grad_norm);
        if !grad_norm.is_finite() {
            bail!("step {}: the gradient norm is not finite", state.step + 1);
        }
        let mut params = state.params.params_mut();
        state.optim.step(&mut params, &grads, lr);
        state.step += 1;
        let row = LogRow {
            step: state.step,
            lr,
            loss: loss_sum / accum as f64,
            grad_norm,
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        };
        tracing::debug!(
            "step {} loss {:.4} lr {:.2e} grad norm {:.3}",
            row.step,
            row.loss,
            row.lr,
            row.grad_norm
        );
        state.log.push(row);
        progress.inc(1);
        if let Some(c) = checkpoints {
            if config.checkpoint_every > 0
                && state.step % config.checkpoint_every == 0
                && state.step < config.steps
            {
                c.save(&state, config)?;
                tracing::info!("checkpoint at step {}", state.step);
            }
        }
        after_step(&state);
    }
    progress.finish();
    Ok(state)
}
