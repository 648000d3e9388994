//! lm-evaluation-harness's hooks for multiple-choice tasks, on token ids: build the requests of
//! a task's items (the harness's context/continuation split, or the paper's next-token scoring),
//! read the scores back into per-item predictions, and aggregate them into the task's metrics.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::loglik::{next_token_requests, Request, Scored};
use super::metrics::{argmax, mean_stderr};
use crate::data::tasks::{McItem, TaskName};
use crate::formats::tokenizer::TextTokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    Harness,
    Paper,
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

/// How a task's scores map back to its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// The paper's: one context per item, next-token log-probabilities of the answer tokens
    /// (choice i is candidate i modulo the number of choices).
    NextToken { candidates: usize },
    /// lm-evaluation-harness: one request per choice, acc on the sum of log-likelihoods and
    /// acc_norm on it divided by the choice's length in characters.
    Harness,
}

/// Token-level requests of items, split as the harness does (trailing context whitespace moves to
/// the continuation; continuation = encode(context + continuation)[len(encode(context)):]).
pub fn encode_pair(tok: &TextTokenizer, context: &str, continuation: &str) -> Result<Request> {
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

/// The requests that score `items` of `task`, and how to read their scores back. The paper's
/// scoring applies to the tasks whose spec names answer tokens; the others use the harness's.
pub fn build_requests(
    tok: &TextTokenizer,
    task: TaskName,
    items: &[McItem],
    style: PromptStyle,
) -> Result<(Vec<Request>, Scoring)> {
    if let (PromptStyle::Paper, Some(cands)) = (style, task.spec().paper_answers) {
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

/// Per-item predictions from the scores of `build_requests`' requests (in order).
pub fn item_results(items: &[McItem], scored: &[Scored], scoring: Scoring) -> Vec<ItemResult> {
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

/// The task's metrics: acc, acc_norm where the harness reports it, MMLU's acc_macro (the mean of
/// per-subject accuracies; mmlu_cloze also acc_norm_macro); each with its standard error.
pub fn aggregate(task: TaskName, items: &[McItem], results: &[ItemResult]) -> Vec<MetricValue> {
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
    if task.is_mmlu() {
        // the mean of per-subject accuracies (and, where the task has it, of per-subject
        // acc_norm: mmlu_cloze's headline)
        let macro_of = |per_item: &[f64]| {
            let mut by_subject: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for (it, a) in items.iter().zip(per_item) {
                by_subject
                    .entry(it.subject.as_deref().unwrap_or(""))
                    .or_default()
                    .push(*a);
            }
            let subject_means: Vec<f64> = by_subject
                .values()
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
                .collect();
            mean_stderr(&subject_means)
        };
        let (v, s) = macro_of(&acc);
        out.push(MetricValue {
            metric: "acc_macro".into(),
            value: v,
            stderr: s,
            n_items: acc.len(),
        });
        if task.has_acc_norm() {
            let accn: Vec<f64> = results
                .iter()
                .map(|r| (r.pred_norm == r.gold) as u8 as f64)
                .collect();
            let (v, s) = macro_of(&accn);
            out.push(MetricValue {
                metric: "acc_norm_macro".into(),
                value: v,
                stderr: s,
                n_items: accn.len(),
            });
        }
    }
    out
}
