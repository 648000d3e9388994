//! `eval-qa`: MMLU, BoolQ and other multiple-choice tasks by log-likelihood.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, DType};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::model_ref::{ModelRef, Variant};
use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::backend::{default_workers, dispatch, BackendTask};
use crate::data::tasks::{mmlu_items, mmlu_subjects, task_items, McItem, TaskName};
use crate::eval::below_cut::{score_reusing, Cut};
use crate::eval::loglik::{next_token_requests, score, score_sets, Request, ScoreOptions, Scored};
use crate::eval::metrics::{argmax, mean_stderr};
use crate::progress::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    Harness,
    Paper,
}

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
}

impl Params for EvalQaParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.tasks.is_empty() {
            return Err(ParamError {
                path: "tasks".into(),
                message: "must name at least one task".into(),
            });
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    pub item: String,
    pub gold: usize,
    pub pred: usize,
    pub pred_norm: usize,
    pub loglik: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricValue {
    pub metric: String,
    pub value: f64,
    pub stderr: f64,
    pub n_items: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub shots: usize,
    pub prompt: PromptStyle,
    pub metrics: Vec<MetricValue>,
    pub items: Vec<ItemResult>,
}

/// The artifact: scores.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub variant: Variant,
    pub model_key: String,
    /// A short unique name of the evaluated model ("base", "pruned/similarity/0.25", ...).
    pub label: String,
    pub results: Vec<TaskResult>,
}

pub fn variant_label(v: &Variant) -> String {
    match (&v.strategy, v.variant.as_str()) {
        (None, _) => v.variant.clone(),
        (Some(s), kind) => format!("{kind}/{s}/{}", v.fraction),
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

/// Token-level requests of items, split as the harness does (trailing context whitespace moves to
/// the continuation; continuation = encode(context + continuation)[len(encode(context)):]).
pub fn encode_pair(
    tok: &crate::data::tokenizer::TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<Request> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed.to_string(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = tok.encode(&format!("{context}{continuation}"))?;
    let ctx = tok.encode(&context)?;
    // the harness slices by length even where the two encodings differ at the boundary
    if whole.len() <= ctx.len() {
        bail!("the continuation {continuation:?} adds no tokens after its context");
    }
    Ok(Request {
        continuation: whole[ctx.len()..].to_vec(),
        context: ctx,
    })
}

struct Evaluate<'a> {
    model: &'a ModelRef,
    params: &'a EvalQaParams,
    data_root: &'a Path,
    workers: usize,
}

fn task_metrics(task: TaskName, items: &[McItem], results: &[ItemResult]) -> Vec<MetricValue> {
    let acc: Vec<f64> = results
        .iter()
        .map(|r| (r.pred == r.gold) as u8 as f64)
        .collect();
    let (v, s) = mean_stderr(&acc);
    let mut out = vec![MetricValue {
        metric: "acc".into(),
        value: v,
        stderr: s,
        n_items: acc.len(),
    }];
    if task.has_acc_norm() {
        let accn: Vec<f64> = results
            .iter()
            .map(|r| (r.pred_norm == r.gold) as u8 as f64)
            .collect();
        let (v, s) = mean_stderr(&accn);
        out.push(MetricValue {
            metric: "acc_norm".into(),
            value: v,
            stderr: s,
            n_items: accn.len(),
        });
    }
    if task == TaskName::Mmlu {
        let mut by_subject: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (it, a) in items.iter().zip(&acc) {
            by_subject
                .entry(it.subject.as_deref().unwrap_or(""))
                .or_default()
                .push(*a);
        }
        let subject_acc: Vec<f64> = by_subject
            .values()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            .collect();
        let (v, s) = mean_stderr(&subject_acc);
        out.push(MetricValue {
            metric: "acc_macro".into(),
            value: v,
            stderr: s,
            n_items: acc.len(),
        });
    }
    out
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

    /// The requests that score `items`, and how to read their scores back.
    fn requests_for(&self, task: TaskName, items: &[McItem]) -> Result<(Vec<Request>, Scoring)> {
        let tok = &self.model.files.tokenizer;
        let paper = self.params.prompt == PromptStyle::Paper
            && matches!(task, TaskName::Mmlu | TaskName::Boolq);
        if paper {
            let cands: Vec<&str> = if task == TaskName::Mmlu {
                vec!["A", "B", "C", "D"]
            } else {
                vec!["No", "Yes", " No", " Yes"]
            };
            let ids: Vec<u32> = cands
                .iter()
                .map(|c| {
                    tok.encode_with(c, false)
                        .ok()
                        .and_then(|v| v.last().copied())
                        .ok_or_else(|| anyhow::anyhow!("{c:?} has no token"))
                })
                .collect::<Result<_>>()?;
            let contexts: Vec<Vec<u32>> = items
                .iter()
                .map(|it| tok.encode(&it.contexts[0]))
                .collect::<Result<_>>()?;
            return Ok((
                next_token_requests(&contexts, &ids),
                Scoring::NextToken {
                    candidates: ids.len(),
                },
            ));
        }
        let mut requests = Vec::new();
        for it in items {
            for (c, k) in it.requests() {
                requests.push(encode_pair(tok, &c, &k)?);
            }
        }
        Ok((requests, Scoring::Harness))
    }

    fn score_items<B: Backend>(
        &self,
        model: &crate::model::Transformer<B>,
        task: TaskName,
        items: &[McItem],
        shared_prefix: bool,
        cut: Option<&Cut>,
    ) -> Result<Vec<ItemResult>> {
        let (requests, scoring) = self.requests_for(task, items)?;
        let scored = self.score_requests(model, &requests, shared_prefix, cut)?;
        Ok(item_results(items, &scored, scoring))
    }

    /// Score requests; without a shared prefix, a pruned model continues from the base model's
    /// stream below its cut where an earlier model of the sweep left it.
    fn score_requests<B: Backend>(
        &self,
        model: &crate::model::Transformer<B>,
        requests: &[Request],
        shared_prefix: bool,
        cut: Option<&Cut>,
    ) -> Result<Vec<Scored>> {
        match cut {
            Some(cut) if !shared_prefix => {
                let (scored, stats) = score_reusing(model, requests, &self.opts(false), cut)?;
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
                Ok(scored)
            }
            _ => score(model, requests, &self.opts(shared_prefix)),
        }
    }

    /// The base stream a pruned, unhealed model can reuse: it keeps the base's layers 0..cut.
    fn cut<B: Backend>(&self, dtype: DType) -> Option<Cut> {
        if self.model.adapter.is_some() {
            return None;
        }
        let kept = &self.model.kept;
        let cut = kept.iter().enumerate().take_while(|(i, k)| i == *k).count();
        (cut < kept.len() || kept.len() < self.model.files.config.num_hidden_layers).then(|| Cut {
            base: format!(
                "{} {} {dtype:?}",
                self.model.files.source.identity(),
                std::any::type_name::<B>()
            ),
            cut,
        })
    }
}

/// How a task's scores map back to its items.
#[derive(Debug, Clone, Copy)]
enum Scoring {
    /// The paper's: one context per item, next-token log-probabilities of the answer tokens
    /// (choice i is candidate i modulo the number of choices).
    NextToken { candidates: usize },
    /// lm-evaluation-harness: one request per choice, acc on the sum of log-likelihoods and
    /// acc_norm on it divided by the choice's length in characters.
    Harness,
}

fn item_results(items: &[McItem], scored: &[Scored], scoring: Scoring) -> Vec<ItemResult> {
    let mut out = Vec::new();
    let mut k = 0;
    for it in items {
        let n = match scoring {
            Scoring::NextToken { candidates } => candidates,
            Scoring::Harness => it.choices.len(),
        };
        let ll: Vec<f64> = scored[k..k + n].iter().map(|s| s.loglik).collect();
        k += n;
        out.push(match scoring {
            Scoring::NextToken { .. } => {
                let pred = argmax(&ll) % it.choices.len();
                ItemResult {
                    item: it.id.clone(),
                    gold: it.gold,
                    pred,
                    pred_norm: pred,
                    loglik: ll,
                }
            }
            Scoring::Harness => {
                let norm: Vec<f64> = ll
                    .iter()
                    .zip(&it.choices)
                    .map(|(l, c)| l / c.chars().count() as f64)
                    .collect();
                ItemResult {
                    item: it.id.clone(),
                    gold: it.gold,
                    pred: argmax(&ll),
                    pred_norm: argmax(&norm),
                    loglik: ll,
                }
            }
        });
    }
    out
}

impl BackendTask for Evaluate<'_> {
    type Output = (Vec<TaskResult>, BTreeMap<String, serde_json::Value>);

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Self::Output> {
        let model = self.model.build::<B>(&device, dtype)?;
        let cut = self.cut::<B>(dtype);
        let mut results = Vec::new();
        let mut prompts = BTreeMap::new();
        for &task in &self.params.tasks {
            let select = subset_fn(self.params, task);
            let name = task.as_str();
            let (items, item_results, shots) = if task == TaskName::Mmlu {
                // one request set per subject: with few-shot exemplars each set shares its
                // subject's prefix, and subjects run side by side on the workers
                let subjects = mmlu_subjects(self.data_root)?;
                let mut per_subject = Vec::new();
                let mut sets = Vec::new();
                let mut scoring = Scoring::Harness;
                for subject in &subjects {
                    let items =
                        mmlu_items(self.data_root, subject, self.params.mmlu_shots, &select)?;
                    let (requests, s) = self.requests_for(task, &items)?;
                    scoring = s;
                    per_subject.push(items);
                    sets.push(requests);
                }
                let progress =
                    std::sync::Mutex::new(Progress::new(subjects.len() as u64, "mmlu subjects"));
                let scored = if self.params.mmlu_shots == 0 && cut.is_some() {
                    // 0-shot: one pool of requests, continuing below the cut
                    let all: Vec<Request> = sets.iter().flatten().cloned().collect();
                    let mut flat = self
                        .score_requests(&model, &all, false, cut.as_ref())?
                        .into_iter();
                    progress
                        .lock()
                        .expect("progress lock")
                        .inc(sets.len() as u64);
                    sets.iter()
                        .map(|set| flat.by_ref().take(set.len()).collect())
                        .collect()
                } else {
                    score_sets(
                        &model,
                        &sets,
                        &self.opts(self.params.mmlu_shots > 0),
                        &|| progress.lock().expect("progress lock").inc(1),
                    )?
                };
                progress.into_inner().expect("progress lock").finish();
                let mut all_items = Vec::new();
                let mut all_results = Vec::new();
                for (items, scored) in per_subject.into_iter().zip(scored) {
                    all_results.extend(item_results(&items, &scored, scoring));
                    all_items.extend(items);
                }
                (all_items, all_results, self.params.mmlu_shots)
            } else {
                let items = task_items(self.data_root, task, &select)?;
                tracing::info!("{name}: {} items", items.len());
                let r = self.score_items(&model, task, &items, false, cut.as_ref())?;
                (items, r, 0)
            };
            if let Some(first) = items.first() {
                prompts.insert(
                    name.to_string(),
                    serde_json::json!({"item": first.id, "contexts": first.contexts, "continuations": first.continuations, "gold": first.gold}),
                );
            }
            let metrics = task_metrics(task, &items, &item_results);
            for m in &metrics {
                tracing::info!(
                    "{name} {}-shot {} = {:.4} ± {:.4} ({} items)",
                    shots,
                    m.metric,
                    m.value,
                    m.stderr,
                    m.n_items
                );
            }
            results.push(TaskResult {
                task: name.to_string(),
                shots,
                prompt: self.params.prompt,
                metrics,
                items: item_results,
            });
        }
        Ok((results, prompts))
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
        &[InputSlot {
            name: "model",
            kinds: &["load", "prune", "heal"],
            required: true,
            many: false,
        }]
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["data"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<EvalQaParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: EvalQaParams = ctx.params()?;
        let model = ModelRef::open(ctx.input("model")?, &ctx.cache_root)?;
        let data = ctx.source("data")?;
        let task = Evaluate {
            model: &model,
            params: &p,
            data_root: &data.path,
            workers: default_workers(ctx.backend),
        };
        let (results, prompts) = dispatch(ctx.backend, ctx.precision, task)?;
        let record = EvalRecord {
            label: variant_label(&model.variant),
            variant: model.variant.clone(),
            model_key: model.key.clone(),
            results,
        };
        std::fs::write(
            ctx.out("scores.json"),
            serde_json::to_string_pretty(&record)?,
        )?;
        std::fs::write(
            ctx.out("prompts.json"),
            serde_json::to_string_pretty(&prompts)?,
        )?;
        Ok(())
    }
}
