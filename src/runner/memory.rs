//! Memory planning: every job's estimated peak on the pipeline's device (the stage's own
//! estimate for the model it runs, plus what the runtime needs), the memory the device has, and
//! the check `run` makes before any job starts.

use std::path::Path;

use crate::backend::{self, BackendKind};
use crate::formats::gguf::GgufFile;
use crate::method::selection::n_for_fraction;
use crate::model::config::ModelConfig;
use crate::model::memory::{human_bytes, ModelShape, PROCESS_OVERHEAD};
use crate::pipeline::{JobGraph, PipelineConfig};
use crate::source::{self, SourceSpec};
use crate::stages::{MemoryPlan, MemoryTarget};

/// What a CUDA / Vulkan runtime holds on the device besides tensors (context, kernels, the
/// memory pool's slack): a planning margin, not yet measured on a GPU.
pub const DEVICE_RUNTIME: u64 = 768 << 20;

/// One job's estimate.
#[derive(Debug, Clone)]
pub struct JobMemory {
    pub plan: MemoryPlan,
    /// Where the model's shape came from.
    pub model: String,
}

impl JobMemory {
    pub fn total(&self) -> u64 {
        self.plan.estimate.total()
    }
}

/// The memory jobs may use: bytes and where the number comes from.
#[derive(Debug, Clone)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub origin: String,
}

/// `memory_limit` from the pipeline, else what the device reports (None: unknown).
pub fn limit(cfg: &PipelineConfig) -> Option<MemoryLimit> {
    if let Some(b) = cfg.memory_limit {
        return Some(MemoryLimit {
            bytes: b,
            origin: format!("memory_limit (configuration of {})", cfg.file.display()),
        });
    }
    backend::device_memory(cfg.backend).map(|(bytes, origin)| MemoryLimit { bytes, origin })
}

/// The model a job's model input chain starts from, and how many of its layers the chain keeps.
struct ChainModel {
    load: usize,
    /// Prune fractions along the chain (each applies to the base's layer count).
    fractions: Vec<f64>,
}

fn chain(graph: &JobGraph, i: usize) -> Option<ChainModel> {
    let mut fractions = Vec::new();
    let mut j = i;
    for _ in 0..graph.jobs.len() {
        let job = &graph.jobs[j];
        if job.kind.kind() == "load" {
            return Some(ChainModel { load: j, fractions });
        }
        // a prune drops whole layers, except LLM-Drop's attention sublayers (all layers kept)
        if job.kind.kind() == "prune"
            && job.params.get("strategy").and_then(|s| s.as_str()) != Some("attention")
        {
            fractions.push(job.params.get("fraction")?.as_f64()?);
        }
        j = *job.inputs.get("model")?.first()?;
    }
    None
}

/// The configuration of the load job's model and the size of its weight files (memory-mapped
/// on the host while the model is built). A hub source absent here is looked up as
/// `configs/<org>--<name>/config.json` beside the pipeline file (pipelines/paper/configs).
fn model_config(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    load: usize,
    cache_root: &Path,
) -> Option<(ModelConfig, String)> {
    let sref = graph.jobs[load].sources.get("model")?;
    if sref.absent.is_some() {
        let SourceSpec::Hf { repo, .. } = &sref.spec else {
            return None;
        };
        let dir = cfg
            .file
            .parent()
            .unwrap_or(Path::new("."))
            .join("configs")
            .join(repo.replace('/', "--"));
        let c = ModelConfig::from_hf_config_file(&dir.join("config.json")).ok()?;
        return Some((c, dir.join("config.json").display().to_string()));
    }
    // planning fetches and hashes nothing: a source not yet here has no estimate
    let path = source::locate_present(&sref.spec, cache_root)?;
    read_config(&path).map(|c| (c, sref.spec.to_string()))
}

fn read_config(path: &Path) -> Option<ModelConfig> {
    if path.is_dir() {
        ModelConfig::from_hf_config_file(&path.join("config.json")).ok()
    } else {
        ModelConfig::from_gguf(&GgufFile::open(path).ok()?).ok()
    }
}

/// Every job's estimate (None for jobs that load no model, or whose model is unknown here).
pub fn estimate(
    cfg: &PipelineConfig,
    graph: &JobGraph,
    cache_root: &Path,
) -> Vec<Option<JobMemory>> {
    let runtime = crate::runtime::current();
    let host = cfg.backend == BackendKind::Flex;
    let elem = match cfg.precision {
        crate::backend::Precision::F32 => 4,
        _ => 2,
    };
    let mut configs: std::collections::BTreeMap<usize, Option<(ModelConfig, String)>> =
        Default::default();
    let limit = limit(cfg).map(|l| l.bytes);
    (0..graph.jobs.len())
        .map(|i| {
            let job = &graph.jobs[i];
            let c = chain(graph, i)?;
            let (mcfg, origin) = configs
                .entry(c.load)
                .or_insert_with(|| model_config(cfg, graph, c.load, cache_root))
                .clone()?;
            let base_layers = mcfg.num_hidden_layers;
            let dropped: usize = c
                .fractions
                .iter()
                .map(|&f| n_for_fraction(f, base_layers))
                .sum();
            // what the runtime holds besides the job's own work (the model file is memory-mapped,
            // but the loader releases the pages of every tensor it reads: model::weights)
            let runtime_parts: Vec<(&'static str, u64)> = if host {
                vec![("process", PROCESS_OVERHEAD)]
            } else {
                vec![("device runtime", DEVICE_RUNTIME)]
            };
            let held: u64 = runtime_parts.iter().map(|(_, b)| b).sum();
            let target = MemoryTarget {
                shape: ModelShape {
                    cfg: mcfg,
                    layers: base_layers.saturating_sub(dropped),
                },
                elem,
                host,
                stream_memo_bytes: (runtime.stream_memo_mb as u64) << 20,
                workers: crate::backend::workers_for(cfg.backend, runtime.cpu_threads),
                available: limit.map(|l| l.saturating_sub(held)),
            };
            let mut plan = job.kind.memory(&job.params, &target)?;
            let alternative = plan.alternative.as_mut().map(|a| &mut a.estimate);
            for estimate in std::iter::once(&mut plan.estimate).chain(alternative) {
                for (name, bytes) in &runtime_parts {
                    estimate.add(name, *bytes);
                }
            }
            Some(JobMemory {
                plan,
                model: origin,
            })
        })
        .collect()
}

/// The message for a job that does not fit: what it needs, what there is, and the knobs.
pub fn does_not_fit(stage: &str, label: &str, m: &JobMemory, limit: &MemoryLimit) -> String {
    let knobs: Vec<String> = m
        .plan
        .knobs
        .iter()
        .map(|k| format!("stages.{stage}.{k}"))
        .collect();
    let weights = |e: &crate::model::memory::MemoryEstimate| -> u64 {
        e.parts
            .iter()
            .filter(|(n, _)| n.starts_with("weights"))
            .map(|(_, b)| b)
            .sum()
    };
    // a setting first (alone where it is enough), then the knobs
    let (setting, enough, its_weights) = match &m.plan.alternative {
        Some(a) => (
            format!(
                "set stages.{stage}.{} ({}; then about {})",
                a.setting,
                a.effect,
                human_bytes(a.estimate.total())
            ),
            a.estimate.total() <= limit.bytes,
            weights(&a.estimate),
        ),
        None => (String::new(), false, u64::MAX),
    };
    let lower = if knobs.is_empty() {
        "lower the job's size".to_string()
    } else {
        format!("lower {}", knobs.join(" or "))
    };
    let remedy = if enough {
        setting
    } else if weights(&m.plan.estimate) >= limit.bytes && its_weights >= limit.bytes {
        "the weights alone do not fit: use a device with more memory (training does not stream \
         its layers yet)"
            .to_string()
    } else if setting.is_empty() {
        lower
    } else {
        format!("{setting} and {lower}")
    };
    format!(
        "{label} needs about {} ({}) but {} is {}; {remedy}, or set memory_limit if the device \
         has more",
        human_bytes(m.total()),
        m.plan.estimate.breakdown(),
        limit.origin,
        human_bytes(limit.bytes),
    )
}
