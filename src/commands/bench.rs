//! Benchmarks that print throughput and, where a reference Python environment with
//! transformers exists, the ratio to transformers doing the same work.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{backend::Backend, DType};
use serde::Serialize;

use crate::artifacts::ModelRef;
use crate::backend::{default_workers, dispatch, BackendKind, BackendTask, Precision};
use crate::data::tasks::TaskName;
use crate::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch};
use crate::stages::defaults_with;
use crate::stages::eval_qa::{EvalQaParams, EvalQaStage, Evaluate};
use crate::stages::similarity::Measure;

/// Deterministic pseudo-random token rows (xorshift64*), ids in [lo, hi).
pub fn random_rows(n: usize, len: usize, lo: u32, hi: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed.max(1);
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| lo + (next() % (hi - lo) as u64) as u32)
                .collect()
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// The boundary-keeping forward pass (final token at every boundary; no logits) over `rows`.
pub struct ForwardBench<'a> {
    pub files: &'a ModelFiles,
    pub rows: &'a [Vec<u32>],
    pub batch: usize,
    /// Sub-batches run on their own threads (CPU).
    pub workers: usize,
}

impl BackendTask for ForwardBench<'_> {
    type Output = Throughput;

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Throughput> {
        let model = self.files.build::<B>(&device, dtype)?;
        // warm-up on a short batch
        let warm =
            TokenBatch::right_padded(&[self.rows[0][..8.min(self.rows[0].len())].to_vec()], 0);
        let _ = to_f32_vec(
            model
                .forward(&warm, Capture::FinalToken, Logits::None)?
                .final_token_boundaries
                .unwrap(),
        )?;
        let start = Instant::now();
        let mut tokens = 0;
        for chunk in self.rows.chunks(self.batch) {
            let batch = TokenBatch::right_padded(chunk, 0);
            let out =
                model.forward_parallel(&batch, Capture::FinalToken, Logits::None, self.workers)?;
            // read back so that asynchronous backends finish the work inside the timing
            let _ = to_f32_vec(out.final_token_boundaries.unwrap())?;
            tokens += batch.lengths.iter().sum::<usize>();
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(Throughput {
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
        })
    }
}

/// The Python interpreter of the reference environment: `$LAYERPRUNE_REF_PYTHON`, if set.
pub fn reference_python() -> Option<String> {
    std::env::var("LAYERPRUNE_REF_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Run an embedded reference script with `python`; it prints one JSON line last.
pub fn run_reference(python: &str, script: &str, args: &[String]) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("reference.py");
    std::fs::write(&path, script)?;
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .env("TRANSFORMERS_VERBOSITY", "error")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .with_context(|| format!("cannot run the reference interpreter {python}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "reference script failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .context("reference script printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("reference script printed {last:?}"))
}

pub const FORWARD_REFERENCE_SCRIPT: &str = include_str!("../../scripts/reference_forward_bench.py");

/// What the reference forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceWork {
    /// The whole causal LM with every hidden state, as PruneMe runs it (LM head at every
    /// position).
    Full,
    /// The decoder stack only (no LM head): the work layerprune's pass does.
    Stack,
}

/// Time transformers on the same rows; `model_path` is the resolved model file or directory.
pub fn reference_forward(
    python: &str,
    model_path: &Path,
    rows: &[Vec<u32>],
    batch: usize,
    threads: usize,
    work: ReferenceWork,
) -> Result<Throughput> {
    let dir = tempfile::tempdir()?;
    let tokens_path = dir.path().join("tokens.json");
    std::fs::write(
        &tokens_path,
        serde_json::to_string(&serde_json::json!({ "rows": rows }))?,
    )?;
    let v = run_reference(
        python,
        FORWARD_REFERENCE_SCRIPT,
        &[
            model_path.display().to_string(),
            tokens_path.display().to_string(),
            batch.to_string(),
            threads.to_string(),
            match work {
                ReferenceWork::Full => "full",
                ReferenceWork::Stack => "stack",
            }
            .to_string(),
        ],
    )?;
    Ok(Throughput {
        tokens: v["tokens"].as_u64().unwrap_or(0) as usize,
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        tokens_per_s: v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Number of worker threads of rayon's global pool (what flex uses).
pub fn cpu_threads() -> usize {
    default_workers(BackendKind::Flex)
}

/// Floating-point operations per token of the decoder stack over rows of `seq` tokens (no LM
/// head): two per weight of every projection, and the causal attention's two products over
/// (seq + 1) / 2 keys on average.
pub fn stack_flops_per_token(cfg: &crate::model::config::ModelConfig, seq: usize) -> f64 {
    let shape = crate::model::memory::ModelShape {
        cfg: cfg.clone(),
        layers: cfg.num_hidden_layers,
    };
    let attention = 4.0 * (cfg.num_attention_heads * cfg.head_dim) as f64 * (seq as f64 + 1.0)
        / 2.0
        * cfg.num_hidden_layers as f64;
    2.0 * shape.projection_parameters() as f64 + attention
}

/// The process's peak resident set size so far, for the benchmark lines.
pub fn peak_rss_line() -> String {
    match crate::peak_rss::peak_bytes() {
        Some(b) => format!("peak RSS {:.0} MiB", b as f64 / (1u64 << 20) as f64),
        None => "peak RSS unknown".into(),
    }
}

fn print_reference(
    ours: &Throughput,
    files: &ModelFiles,
    rows: &[Vec<u32>],
    batch: usize,
) -> Result<()> {
    let threads = cpu_threads();
    let seq = rows.first().map(|r| r.len()).unwrap_or(0);
    let flops = stack_flops_per_token(&files.config, seq);
    let weights_f32 = crate::model::memory::ModelShape {
        cfg: files.config.clone(),
        layers: files.config.num_hidden_layers,
    }
    .parameters()
        * 4;
    println!(
        "layerprune    {:>10.1} GFLOP/s of the decoder stack ({:.3} GFLOP per token); {} (f32 weights {:.0} MiB)",
        ours.tokens_per_s * flops / 1e9,
        flops / 1e9,
        peak_rss_line(),
        weights_f32 as f64 / (1u64 << 20) as f64
    );
    match reference_python() {
        None => println!("reference     skipped (set LAYERPRUNE_REF_PYTHON to a Python with torch + transformers + gguf)"),
        Some(py) => {
            for (work, what) in [
                (ReferenceWork::Full, "full model, output_hidden_states (PruneMe)"),
                (ReferenceWork::Stack, "decoder stack only, the same work"),
            ] {
                let r = reference_forward(&py, &files.source.path, rows, batch, threads, work)?;
                println!("transformers  {:>10.1} tokens/s  ({:.2} s, torch threads {threads}, {what}; stack {:.1} GFLOP/s)", r.tokens_per_s, r.seconds, r.tokens_per_s * flops / 1e9);
                println!("ratio         {:>10.2}x (layerprune / transformers, {what})", ours.tokens_per_s / r.tokens_per_s);
            }
        }
    }
    Ok(())
}

/// `layerprune bench forward`.
pub fn forward(
    files: &ModelFiles,
    sequences: usize,
    seq_len: usize,
    batch: usize,
    backend: BackendKind,
    precision: Precision,
) -> Result<()> {
    let rows = random_rows(
        sequences,
        seq_len,
        1,
        files.config.vocab_size as u32,
        0x5EED,
    );
    println!(
        "forward keeping every boundary: {sequences} sequences x {seq_len} tokens, batch {batch}, {backend} {precision}, {} CPU threads",
        cpu_threads()
    );
    let ours = dispatch(
        backend,
        precision,
        ForwardBench {
            files,
            rows: &rows,
            batch,
            workers: default_workers(backend),
        },
    )?;
    println!(
        "layerprune    {:>10.1} tokens/s  ({:.2} s)",
        ours.tokens_per_s, ours.seconds
    );
    print_reference(&ours, files, &rows, batch)
}

/// The similarity stage's pass (`stages::similarity::Measure`), timed without the model build.
struct SimilarityBench<'a>(Measure<'a>);

impl BackendTask for SimilarityBench<'_> {
    type Output = Throughput;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Throughput> {
        let model = self.0.files.build::<B>(&device, dtype)?;
        let start = Instant::now();
        let d = self.0.on(&model)?;
        let seconds = start.elapsed().as_secs_f64();
        let tokens: usize = self.0.rows.iter().map(|r| r.len()).sum();
        tracing::debug!("d(1, l) = {:?}", d.d[0]);
        Ok(Throughput {
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
        })
    }
}

/// `layerprune bench similarity`: the similarity stage's work on held-out text windows.
pub fn similarity(
    files: &ModelFiles,
    text: &Path,
    samples: usize,
    seq_len: usize,
    batch: usize,
    backend: BackendKind,
    precision: Precision,
) -> Result<()> {
    let spec = crate::data::text::TextSpec {
        source: text.display().to_string(),
        part: crate::data::text::Part::Heldout,
        holdout_every: 10,
        field: "text".into(),
    };
    let rows =
        crate::data::text::load_windows(text, &spec, &files.tokenizer, seq_len, Some(samples))?;
    println!(
        "similarity: {samples} held-out windows x {seq_len} tokens, batch {batch}, {backend} {precision}, {} CPU threads",
        cpu_threads()
    );
    let ours = dispatch(
        backend,
        precision,
        SimilarityBench(Measure {
            files,
            rows: &rows,
            batch,
            workers: default_workers(backend),
            all_tokens: false,
            greedy_samples: 0,
            greedy_steps: 0,
            weights: crate::model::load::WeightStorage::Dense,
            streamed: false,
        }),
    )?;
    println!(
        "layerprune    {:>10.1} tokens/s  ({:.2} s, distances included)",
        ours.tokens_per_s, ours.seconds
    );
    print_reference(&ours, files, &rows, batch)
}

pub const MMLU_REFERENCE_SCRIPT: &str = include_str!("../../scripts/reference_mmlu_bench.py");

/// MMLU as the eval-qa stage scores it (its defaults; `stages::eval_qa::Evaluate`'s hooks),
/// timing the scoring only.
struct MmluBench<'a> {
    model: &'a ModelRef,
    params: &'a EvalQaParams,
    data_root: &'a Path,
    backend: BackendKind,
}

struct MmluRun {
    seconds: f64,
    prompt_tokens: usize,
    /// Positions the decoder layers computed, per layer (padding included where rows run padded).
    computed_tokens: usize,
    questions: usize,
    preds: Vec<usize>,
    /// Per question: the log-likelihood of each choice.
    logliks: Vec<Vec<f64>>,
    /// Per question: the context ids and the first token of each choice (the reference's input).
    reference_input: Vec<serde_json::Value>,
}

impl BackendTask for MmluBench<'_> {
    type Output = MmluRun;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<MmluRun> {
        let ev = Evaluate {
            model: self.model,
            params: self.params,
            data_root: self.data_root,
            workers: default_workers(self.backend),
            backend: self.backend,
            streamed: false,
        };
        let model = self.model.build::<B>(&device, dtype)?;
        let req = ev.build(TaskName::Mmlu)?;
        let positions = crate::model::transformer::layer_positions();
        let start = Instant::now();
        let scored = ev.score(&model, &req, None)?;
        let seconds = start.elapsed().as_secs_f64();
        let computed_tokens = ((crate::model::transformer::layer_positions() - positions)
            / model.num_layers().max(1) as u64) as usize;
        let result = ev.aggregate(&req, scored);
        let mut prompt_tokens = 0;
        let mut reference_input = Vec::new();
        for (items, set) in req.items.iter().zip(&req.sets) {
            let mut k = 0;
            for it in items {
                let reqs = &set[k..k + it.choices.len()];
                k += it.choices.len();
                // the ids layerprune scores: cut from the left to max_length, as the harness does
                let context =
                    crate::eval::loglik::truncate(&reqs[0], self.params.max_length).context;
                prompt_tokens += context.len();
                reference_input.push(serde_json::json!({
                    "context": context,
                    "choices": reqs.iter().map(|r| r.continuation[0]).collect::<Vec<_>>(),
                }));
            }
        }
        Ok(MmluRun {
            seconds,
            prompt_tokens,
            computed_tokens,
            questions: req.num_items(),
            preds: result.items.iter().map(|r| r.pred).collect(),
            logliks: result.items.iter().map(|r| r.loglik.clone()).collect(),
            reference_input,
        })
    }
}

/// `layerprune bench mmlu`: MMLU k-shot on the first `per_subject` questions of every subject,
/// with the eval-qa stage's defaults otherwise.
pub fn mmlu(
    files: ModelFiles,
    data_root: &Path,
    shots: usize,
    per_subject: usize,
    backend: BackendKind,
    precision: Precision,
) -> Result<()> {
    let params: EvalQaParams = defaults_with(
        &EvalQaStage,
        serde_json::json!({"tasks": ["mmlu"], "mmlu_shots": shots, "limit": per_subject, "subset": "first"}),
    )?;
    let model = ModelRef::base(files, "bench");
    println!(
        "MMLU {shots}-shot: first {per_subject} questions per subject, batch {}, max length {}, {backend} {precision}, {} CPU threads",
        params.batch_size,
        params.max_length,
        cpu_threads()
    );
    let run = dispatch(
        backend,
        precision,
        MmluBench {
            model: &model,
            params: &params,
            data_root,
            backend,
        },
    )?;
    let (seconds, tokens, n) = (run.seconds, run.prompt_tokens, run.questions);
    println!("layerprune    {seconds:>8.2} s  {:>9.1} prompt tokens/s  ({n} questions, {tokens} prompt tokens; {} positions computed per layer: shared few-shot prefixes once, padding only where rows run padded (not on the CPU); {})", tokens as f64 / seconds, run.computed_tokens, peak_rss_line());
    match reference_python() {
        None => println!("reference     skipped (set LAYERPRUNE_REF_PYTHON to a Python with torch + transformers + gguf)"),
        Some(py) => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("prompts.json");
            std::fs::write(&path, serde_json::to_string(&serde_json::json!({ "questions": run.reference_input }))?)?;
            let v = run_reference(&py, MMLU_REFERENCE_SCRIPT, &[model.files.source.path.display().to_string(), path.display().to_string(), cpu_threads().to_string()])?;
            let ref_seconds = v["seconds"].as_f64().unwrap_or(f64::NAN);
            let ref_preds: Vec<usize> = v["preds"].as_array().map(|a| a.iter().map(|x| x.as_u64().unwrap_or(99) as usize).collect()).unwrap_or_default();
            let same = run.preds.iter().zip(&ref_preds).filter(|(a, b)| a == b).count();
            println!("transformers  {ref_seconds:>8.2} s  {:>9.1} prompt tokens/s  (one forward per question)", tokens as f64 / ref_seconds);
            println!("ratio         {:>8.2}x (transformers time / layerprune time); same predictions on {same}/{n}", ref_seconds / seconds);
            // how far the log-likelihoods are apart, and how close the questions that differ were
            let ref_logps: Vec<Vec<f64>> = v["logps"].as_array().map(|a| a.iter().map(|q| q.as_array().map(|c| c.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()).collect()).unwrap_or_default();
            let max_diff = run.logliks.iter().zip(&ref_logps).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs())).fold(0.0f64, f64::max);
            println!("log-likelihoods: largest |layerprune - transformers| {max_diff:.2e}");
            for (i, ((p, rp), ll)) in run.preds.iter().zip(&ref_preds).zip(&run.logliks).enumerate() {
                if p != rp {
                    let gap = (ll[*p] - ll.get(*rp).copied().unwrap_or(f64::NAN)).abs();
                    println!("question {i}: layerprune picks {p}, transformers {rp}; their log-likelihoods differ by {gap:.2e} here");
                }
            }
        }
    }
    Ok(())
}

pub const HEAL_REFERENCE_SCRIPT: &str = include_str!("../../scripts/reference_heal_bench.py");

/// Which frozen bases `bench heal` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HealBase {
    Dense,
    Nf4,
    Both,
}

impl HealBase {
    /// The runs, as "is the base NF4".
    fn runs(self) -> Vec<bool> {
        match self {
            Self::Dense => vec![false],
            Self::Nf4 => vec![true],
            Self::Both => vec![false, true],
        }
    }
}

/// What `bench heal` measures.
#[derive(Debug, Clone, Copy)]
pub struct HealSetup {
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub steps: u64,
    pub base: HealBase,
    pub checkpointing: bool,
}

struct HealBench<'a> {
    files: &'a ModelFiles,
    rows: &'a [Vec<u32>],
    rank: usize,
    steps: u64,
    nf4: bool,
    /// Sub-batches per micro-batch side by side (the heal stage's default), checkpointing.
    execution: crate::heal::train::Execution,
}

impl crate::backend::AutodiffTask for HealBench<'_> {
    type Output = (f64, f64);
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
        dtype: DType,
    ) -> Result<(f64, f64)> {
        use crate::heal::adapter::LoraConfig;
        use crate::heal::train::{base_storage, setup, train, Quant, TrainConfig};
        let quant = if self.nf4 { Quant::Nf4 } else { Quant::None };
        let all: Vec<usize> = (0..self.files.config.num_hidden_layers).collect();
        let storage = base_storage::<B>(&device, quant, self.execution);
        let mut model = self
            .files
            .build_stored::<B>(&device, dtype, &all, storage)?;
        let lora = LoraConfig {
            r: self.rank,
            alpha: self.rank as f64,
            dropout: 0.05,
            target_modules: vec!["gate_proj".into(), "up_proj".into(), "down_proj".into()],
        };
        let config = one_batch_config(lora, self.rows.len(), 1e-4);
        // the heal stage's setup: NF4 base when asked, PEFT-initialised adapters
        let state = setup(&mut model, &config, quant, None, self.execution)?;
        // one warm-up step, then the timed ones (the same batch every step: `rows` is one batch)
        let state = train(
            &mut model,
            self.rows,
            &config,
            state,
            None,
            &|_| {},
            self.execution,
        )?;
        let timed = TrainConfig {
            steps: 1 + self.steps,
            ..config
        };
        let start = Instant::now();
        let state = train(
            &mut model,
            self.rows,
            &timed,
            state,
            None,
            &|_| {},
            self.execution,
        )?;
        let seconds = start.elapsed().as_secs_f64() / self.steps as f64;
        Ok((
            seconds,
            state.log.last().map(|r| r.loss).unwrap_or(f64::NAN),
        ))
    }
}

/// One optimizer step per batch of `n` rows (no accumulation, no warmup), AdamW with
/// transformers' defaults, clipping at 1.0: the training setup of the benchmarks.
pub fn one_batch_config(
    lora: crate::heal::adapter::LoraConfig,
    n: usize,
    lr: f64,
) -> crate::heal::train::TrainConfig {
    crate::heal::train::TrainConfig {
        lora: Some(lora),
        partial_layers: None,
        steps: 1,
        warmup_steps: 0,
        lr,
        adamw: crate::heal::optim::AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        max_grad_norm: 1.0,
        micro_batch: n,
        global_batch: n,
        seed: 0,
        checkpoint_every: 0,
    }
}

/// `layerprune bench heal`: seconds per optimizer step and tokens/s of LoRA healing on one batch.
pub fn heal(
    files: &ModelFiles,
    setup: &HealSetup,
    backend: BackendKind,
    precision: Precision,
) -> Result<()> {
    let HealSetup {
        batch,
        seq_len,
        rank,
        steps,
        base,
        checkpointing,
    } = *setup;
    let rows = random_rows(batch, seq_len, 1, files.config.vocab_size as u32, 0x5EED);
    let tokens = (batch * seq_len) as f64;
    let checkpointed = if checkpointing {
        ", gradient checkpointing"
    } else {
        ""
    };
    println!("LoRA healing step: batch {batch} x {seq_len} tokens, rank {rank}, gate/up/down, {steps} timed steps, {backend} {precision}, {} CPU threads{checkpointed}", cpu_threads());
    // per base: seconds per step and peak memory
    let mut ours = [(f64::NAN, None); 2];
    for nf4 in base.runs() {
        crate::peak_rss::reset();
        let (sps, loss) = crate::backend::dispatch_autodiff(
            backend,
            precision,
            HealBench {
                files,
                rows: &rows,
                rank,
                steps,
                nf4,
                execution: crate::heal::train::Execution {
                    workers: default_workers(backend),
                    checkpointing,
                },
            },
        )?;
        ours[nf4 as usize] = (sps, crate::peak_rss::peak_bytes());
        println!(
            "layerprune {:5} {sps:>8.3} s/step  {:>9.1} tokens/s  (loss {loss:.3}; {})",
            if nf4 { "nf4" } else { "dense" },
            tokens / sps,
            peak_rss_line()
        );
    }
    match reference_python() {
        None => println!("reference        skipped (set LAYERPRUNE_REF_PYTHON to a Python with torch + transformers + peft + gguf)"),
        Some(py) => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("batch.json");
            std::fs::write(&path, serde_json::to_string(&serde_json::json!({ "rows": rows }))?)?;
            for nf4 in base.runs() {
                let (base, what) = if nf4 { ("nf4", "peft + bitsandbytes nf4") } else { ("dense", "peft dense") };
                let gc = if checkpointing { "gc" } else { "plain" };
                let args = [files.source.path.display().to_string(), path.display().to_string(), rank.to_string(), steps.to_string(), cpu_threads().to_string(), base.to_string(), gc.to_string()];
                let v = match run_reference(&py, HEAL_REFERENCE_SCRIPT, &args) {
                    Ok(v) => v,
                    Err(e) => {
                        println!("{what:16} failed: {e:#}");
                        continue;
                    }
                };
                let sps = v["seconds_per_step"].as_f64().unwrap_or(f64::NAN);
                let peak = v["peak_rss_bytes"].as_u64();
                let peak_text = peak.map(|b| format!("; peak RSS {}", crate::model::memory::human_bytes(b))).unwrap_or_default();
                println!("{what:16} {sps:>8.3} s/step  {:>9.1} tokens/s  (loss {:.3}{peak_text})", tokens / sps, v["loss"].as_f64().unwrap_or(f64::NAN));
                let (our_sps, our_peak) = ours[nf4 as usize];
                println!("ratio            {:>8.2}x (layerprune {base} / {what}, tokens/s)", sps / our_sps);
                if let (Some(theirs), Some(ours)) = (peak, our_peak) {
                    println!("memory ratio     {:>8.2}x (layerprune {base} peak RSS / {what} peak RSS)", ours as f64 / theirs as f64);
                }
            }
        }
    }
    Ok(())
}
