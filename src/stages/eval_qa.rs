//! `eval-qa`: MMLU, BoolQ and other multiple-choice tasks by log-likelihood, as a per-task run
//! of lm-evaluation-harness's hooks (eval::harness): build each task's request sets (MMLU: one
//! set per subject), score them, aggregate the metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{backend::Backend, DType};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    canonical, InputArtifact, InputSlot, JobContext, ParamError, Params, Stage, Switch,
    WeightStorage, ANY_MODEL,
};
use crate::artifacts::eval::{TaskResult, PROMPTS};
use crate::artifacts::{write_json, EvalRecord, ModelArtifact, ModelRef, Record};
use crate::backend::{dispatch, BackendKind, BackendTask};
use crate::data::tasks::{mmlu_items, mmlu_subjects, task_items, McItem, TaskName};
use crate::eval::below_cut::{score_reusing, set_budget_mb, Cut};
use crate::eval::harness::{aggregate, build_requests, item_results, Scoring};
use crate::eval::loglik::{score_sets, Request, ScoreOptions, Scored};
use crate::progress::Progress;

pub use crate::eval::harness::PromptStyle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    First,
    Sample,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalQaParams {
    pub tasks: Vec<TaskName>,
    pub mmlu_shots: usize,
    pub prompt: PromptStyle,
    pub limit: usize,
    /// Per-task overrides of `limit`.
    #[serde(default)]
    pub task_limits: BTreeMap<TaskName, usize>,
    pub subset: Subset,
    pub seed: u64,
    pub batch_size: usize,
    pub max_length: usize,
    pub data: String,
    /// "dense" or "nf4" (`WeightStorage`); left out of the canonical parameters when dense.
    #[serde(default, skip_serializing_if = "WeightStorage::is_dense")]
    pub weights: WeightStorage,
    /// true | false | "auto" (`Switch`): the layers' weights read from the model file at each
    /// use, the same results with one block's weights resident; not in the cache key.
    #[serde(default)]
    pub stream_weights: Switch,
}

impl Params for EvalQaParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.tasks.is_empty() {
            return Err(ParamError {
                path: "tasks".into(),
                message: "must name at least one task".into(),
            });
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if self.tasks[..i].contains(t) {
                return Err(ParamError {
                    path: format!("tasks[{i}]"),
                    message: format!("{t:?} is listed twice (each task is scored once)"),
                });
            }
        }
        if self.batch_size == 0 {
            return Err(ParamError {
                path: "batch_size".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.mmlu_shots > 5 {
            return Err(ParamError {
                path: "mmlu_shots".into(),
                message: format!(
                    "must be 0..=5 (the dev split has 5 rows per subject), got {}",
                    self.mmlu_shots
                ),
            });
        }
        if self.max_length < 16 {
            return Err(ParamError {
                path: "max_length".into(),
                message: format!("must be at least 16, got {}", self.max_length),
            });
        }
        Ok(())
    }
}

fn subset_fn(p: &EvalQaParams, task: TaskName) -> impl Fn(usize) -> Vec<usize> + '_ {
    let limit = p.task_limits.get(&task).copied().unwrap_or(p.limit);
    move |n: usize| {
        if limit == 0 || limit >= n {
            return (0..n).collect();
        }
        match p.subset {
            Subset::First => (0..limit).collect(),
            Subset::Sample => {
                let mut idx: Vec<usize> = (0..n).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
                idx.shuffle(&mut rng);
                let mut pick = idx[..limit].to_vec();
                pick.sort_unstable();
                pick
            }
        }
    }
}

/// One task's requests: one set per group of items that is scored together (MMLU: per
/// subject, sharing its few-shot prefix), and how to read the scores back.
pub struct TaskRequests {
    pub task: TaskName,
    pub shots: usize,
    pub items: Vec<Vec<McItem>>,
    pub sets: Vec<Vec<Request>>,
    pub scoring: Scoring,
    /// Whether the requests of a set share a cached prefix (few-shot MMLU).
    pub shared_prefix: bool,
}

impl TaskRequests {
    pub fn num_items(&self) -> usize {
        self.items.iter().map(|i| i.len()).sum()
    }
}

/// What an evaluation computed, besides the records: where the time went.
pub struct Evaluation {
    pub results: Vec<TaskResult>,
    pub prompts: BTreeMap<String, serde_json::Value>,
    /// Per task: seconds spent scoring (model built and requests tokenised before).
    pub score_seconds: Vec<f64>,
}

/// The evaluation of one model on the tasks of `params`.
pub struct Evaluate<'a> {
    pub model: &'a ModelRef,
    pub params: &'a EvalQaParams,
    pub data_root: &'a Path,
    pub workers: usize,
    pub backend: BackendKind,
    /// Layer streaming (dense weights only; the same results).
    pub streamed: bool,
}

impl Evaluate<'_> {
    fn opts(&self, shared_prefix: bool) -> ScoreOptions {
        ScoreOptions {
            batch_size: self.params.batch_size,
            workers: self.workers,
            shared_prefix,
            max_length: self.params.max_length,
            pad_id: self.model.files.config.eos_token_id.unwrap_or(0),
        }
    }

    /// Hook 1: the task's items and requests.
    pub fn build(&self, task: TaskName) -> Result<TaskRequests> {
        let select = subset_fn(self.params, task);
        let tok = &self.model.files.tokenizer;
        let (items, shots) = if task.is_mmlu() {
            let shots = self.params.mmlu_shots;
            let mut per_subject = Vec::new();
            for subject in &mmlu_subjects(self.data_root)? {
                per_subject.push(mmlu_items(self.data_root, task, subject, shots, &select)?);
            }
            (per_subject, shots)
        } else {
            let items = task_items(self.data_root, task, &select)?;
            tracing::info!("{}: {} items", task.as_str(), items.len());
            (vec![items], 0)
        };
        let mut sets = Vec::with_capacity(items.len());
        let mut scoring = Scoring::Harness;
        for group in &items {
            let (requests, s) = build_requests(tok, task, group, self.params.prompt)?;
            scoring = s;
            sets.push(requests);
        }
        Ok(TaskRequests {
            task,
            shots,
            items,
            sets,
            scoring,
            shared_prefix: task.is_mmlu() && shots > 0,
        })
    }

    /// Hook 2: scores of every request, per set. Without a shared prefix, a pruned model
    /// continues from the base model's stream below its cut where an earlier model of the sweep
    /// left it (all sets pooled); otherwise the sets run side by side on the workers.
    pub fn score<B: Backend>(
        &self,
        model: &crate::model::Transformer<B>,
        req: &TaskRequests,
        cut: Option<&Cut>,
    ) -> Result<Vec<Vec<Scored>>> {
        let grouped = req.sets.len() > 1;
        let progress = std::sync::Mutex::new(Progress::new(
            req.sets.len() as u64,
            &format!("{} subjects", req.task.as_str()),
        ));
        let tick = || {
            if grouped {
                progress.lock().expect("progress lock").inc(1)
            }
        };
        let scored = match cut {
            Some(cut) if !req.shared_prefix => {
                let all: Vec<Request> = req.sets.iter().flatten().cloned().collect();
                let (scored, stats) = score_reusing(model, &all, &self.opts(false), cut)?;
                tracing::info!(
                    "layers below the cut ({}) continued from boundary {}{}",
                    cut.cut,
                    stats.from_boundary,
                    if stats.stored {
                        "; x(cut) kept for the sweep"
                    } else {
                        ""
                    }
                );
                req.sets.iter().for_each(|_| tick());
                let mut flat = scored.into_iter();
                req.sets
                    .iter()
                    .map(|set| flat.by_ref().take(set.len()).collect())
                    .collect()
            }
            _ => score_sets(model, &req.sets, &self.opts(req.shared_prefix), &tick)?,
        };
        if grouped {
            progress.into_inner().expect("progress lock").finish();
        }
        for (k, set) in scored.iter().enumerate() {
            if let Some(i) = set.iter().position(|s| !s.loglik.is_finite()) {
                anyhow::bail!(
                    "eval-qa: {}: the log-likelihood of request {i} of set {k} is not finite ({})",
                    req.task.as_str(),
                    set[i].loglik
                );
            }
        }
        Ok(scored)
    }

    /// Hook 3: per-item predictions and the task's metrics.
    pub fn aggregate(&self, req: &TaskRequests, scored: Vec<Vec<Scored>>) -> TaskResult {
        let mut items = Vec::new();
        let mut results = Vec::new();
        for (group, scored) in req.items.iter().zip(scored) {
            results.extend(item_results(group, &scored, req.scoring));
            items.extend(group.iter().cloned());
        }
        let metrics = aggregate(req.task, &items, &results);
        for m in &metrics {
            tracing::info!(
                "{} {}-shot {} = {:.4} ± {:.4} ({} items)",
                req.task.as_str(),
                req.shots,
                m.metric,
                m.value,
                m.stderr,
                m.n_items
            );
        }
        TaskResult {
            task: req.task.as_str().to_string(),
            shots: req.shots,
            prompt: self.params.prompt,
            metrics,
            items: results,
        }
    }

    /// The base stream a pruned, unhealed model can reuse: it keeps the base's layers 0..cut.
    fn cut(&self, dtype: DType) -> Option<Cut> {
        let cut = self.model.unchanged_prefix()?;
        Some(Cut {
            base: format!(
                "{} {} {dtype:?} {:?}",
                self.model.files.source.identity(),
                self.backend,
                self.params.weights
            ),
            cut,
            base_layers: self.model.files.config.num_hidden_layers,
        })
    }
}

/// The first item of a task as the prompt record shows it.
fn first_prompt(req: &TaskRequests) -> Option<serde_json::Value> {
    let first = req.items.iter().flatten().next()?;
    Some(
        serde_json::json!({"item": first.id, "contexts": first.contexts, "continuations": first.continuations, "gold": first.gold}),
    )
}

impl BackendTask for Evaluate<'_> {
    type Output = Evaluation;

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Evaluation> {
        let model =
            self.model
                .build_held::<B>(&device, dtype, self.params.weights, self.streamed)?;
        let cut = self.cut(dtype);
        let mut out = Evaluation {
            results: Vec::new(),
            prompts: BTreeMap::new(),
            score_seconds: Vec::new(),
        };
        for &task in &self.params.tasks {
            let req = self.build(task)?;
            let start = Instant::now();
            let scored = self.score(&model, &req, cut.as_ref())?;
            out.score_seconds.push(start.elapsed().as_secs_f64());
            if let Some(p) = first_prompt(&req) {
                out.prompts.insert(task.as_str().to_string(), p);
            }
            out.results.push(self.aggregate(&req, scored));
        }
        Ok(out)
    }
}

pub struct EvalQaStage;

impl Stage for EvalQaStage {
    fn kind(&self) -> &'static str {
        "eval-qa"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "MMLU, BoolQ and other multiple-choice tasks scored by log-likelihood as lm-evaluation-harness does"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/eval-qa.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[ANY_MODEL]
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["data"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn run_rank(&self, inputs: &BTreeMap<String, Vec<InputArtifact>>) -> Option<usize> {
        // the base stream below a model's cut is reused from the memo where an earlier model
        // of the run left it: shallow cuts first, the base (all layers) last, models with an
        // adapter (no stream shared) after them
        let model = inputs.get("model")?.first()?;
        ModelArtifact::of(model).ok()?.unchanged_prefix()
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<EvalQaParams>(params)
    }
    fn memory(
        &self,
        params: &serde_json::Value,
        on: &super::MemoryTarget,
    ) -> Option<super::MemoryPlan> {
        let p: EvalQaParams = super::parse_params(params).ok()?;
        // logits at the continuation tokens only: a few per row
        let mut plan = super::MemoryPlan::inference_in(
            on,
            p.weights,
            p.stream_weights,
            p.batch_size,
            p.max_length,
            p.batch_size.saturating_mul(16),
        );
        // the shared context's keys and values (few-shot prefix), kept while its requests score
        plan.estimate.add(
            "prefix KV",
            on.shape.kv_bytes(1, p.max_length as u64, on.elem),
        );
        if on.host {
            plan.estimate
                .add("stream memo (at most)", on.stream_memo_bytes);
        }
        Some(
            plan.knob("batch_size", p.batch_size)
                .knob("max_length", p.max_length),
        )
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: EvalQaParams = ctx.params()?;
        let model = ModelRef::open(ctx.input("model")?, &ctx.cache_root)?;
        let data = ctx.source("data")?;
        super::check_context(&ctx.stage, "max_length", p.max_length, &model.files.config)?;
        set_budget_mb(ctx.runtime.stream_memo_mb);
        let task = Evaluate {
            model: &model,
            params: &p,
            data_root: &data.path,
            workers: ctx.workers(),
            backend: ctx.backend,
            streamed: p.stream_weights.for_job(super::STREAMING, ctx),
        };
        let evaluation = dispatch(ctx.backend, ctx.precision, task)?;
        let record = EvalRecord {
            label: model.variant.label(),
            variant: model.variant.clone(),
            model_key: model.key.clone(),
            results: evaluation.results,
        };
        record.write(&ctx.out_dir)?;
        write_json(&ctx.out_dir, PROMPTS, &evaluation.prompts)
    }
}
