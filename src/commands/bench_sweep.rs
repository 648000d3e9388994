//! `layerprune bench sweep`: the QA evaluation of a pruning sweep (the base model and every
//! pruned model of a selection table), scored twice on the same requests: as the eval-qa stage
//! scores them (the residual stream below each cut reused across the sweep, contexts shared by
//! their choices) and with both off (every request one full sequence from the embedding, as
//! lm-evaluation-harness feeds the model; identical sequences once). Prints the time of each,
//! the positions the decoder layers computed, and the ratio.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{backend::Backend, DType};

use crate::artifacts::ModelRef;
use crate::backend::{default_workers, dispatch, BackendKind, BackendTask, Precision};
use crate::data::tasks::TaskName;
use crate::eval::below_cut::{self, Cut};
use crate::eval::loglik::{score_streams, Grouped, Request, ScoreOptions, Scored, Streams};
use crate::method::selection::n_for_fraction;
use crate::model::transformer::layer_positions;
use crate::model::ModelFiles;
use crate::stages::defaults_with;
use crate::stages::eval_qa::{EvalQaParams, EvalQaStage, Evaluate, TaskRequests};

/// One pruned model of the sweep: the block [start, end) it drops.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepModel {
    pub strategy: String,
    pub fraction: f64,
    pub start: usize,
    pub end: usize,
}

/// The pruned models of `selection` (a report's selection.csv: n,fraction,strategy,start,end,d)
/// at `fractions` (each rounded to a block size as the prune stage does) for `strategies`.
pub fn sweep_models(
    selection: &Path,
    layers: usize,
    fractions: &[f64],
    strategies: &[String],
) -> Result<Vec<SweepModel>> {
    let mut rd = csv::Reader::from_path(selection)
        .with_context(|| format!("cannot read the selection table {}", selection.display()))?;
    let mut rows = Vec::new();
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", selection.display(), i + 1))?;
        let field = |k: usize, name: &str| -> Result<String> {
            rec.get(k).map(str::to_string).with_context(|| {
                format!(
                    "{}: row {} has no column {name} (expected n,fraction,strategy,start,end,d)",
                    selection.display(),
                    i + 1
                )
            })
        };
        let num = |k: usize, name: &str| -> Result<usize> {
            field(k, name)?.parse().with_context(|| {
                format!(
                    "{}: row {}: {name} is not a whole number",
                    selection.display(),
                    i + 1
                )
            })
        };
        rows.push((
            num(0, "n")?,
            field(2, "strategy")?,
            num(3, "start")?,
            num(4, "end")?,
        ));
    }
    let mut models = Vec::new();
    for strategy in strategies {
        for &fraction in fractions {
            let n = n_for_fraction(fraction, layers);
            let (_, _, start, end) = rows
                .iter()
                .find(|(rn, rs, _, _)| *rn == n && rs == strategy)
                .with_context(|| {
                    format!(
                        "{}: no block of n = {n} (fraction {fraction}) for strategy {strategy}",
                        selection.display()
                    )
                })?;
            models.push(SweepModel {
                strategy: strategy.clone(),
                fraction,
                start: *start,
                end: *end,
            });
        }
    }
    Ok(models)
}

/// Time and work of one pass over the sweep.
#[derive(Debug, Clone, Copy)]
pub struct SweepPass {
    pub seconds: f64,
    /// Positions computed by decoder layers (rows x length per layer call, padding included).
    pub layer_positions: u64,
}

struct SweepBench<'a> {
    base: &'a ModelRef,
    params: &'a EvalQaParams,
    data_root: &'a Path,
    models: &'a [SweepModel],
    backend: BackendKind,
}

/// Both passes, and whether they predicted the same answer for every item of every model.
pub struct SweepResult {
    pub reuse: SweepPass,
    pub plain: SweepPass,
    /// Items per model (all tasks), and how many of all models' items got the same prediction.
    pub items: usize,
    pub same_predictions: usize,
    pub predictions: usize,
}

/// Flat scores in request order, cut back into the task's sets.
fn split_by_sets(flat: Vec<Scored>, sets: &[Vec<Request>]) -> Vec<Vec<Scored>> {
    let mut flat = flat.into_iter();
    sets.iter()
        .map(|set| flat.by_ref().take(set.len()).collect())
        .collect()
}

impl SweepBench<'_> {
    /// Every model's predictions on every task: with `reuse` as the eval-qa stage scores them,
    /// otherwise every request one full sequence with no memo.
    fn pass<B: Backend>(
        &self,
        ev: &Evaluate,
        base: &crate::model::Transformer<B>,
        tasks: &[TaskRequests],
        reuse: bool,
    ) -> Result<(SweepPass, Vec<usize>)> {
        below_cut::clear();
        below_cut::set_budget_mb(if reuse {
            crate::runtime::RuntimeOptions::from_env().stream_memo_mb
        } else {
            0
        });
        let opts = ScoreOptions {
            batch_size: self.params.batch_size,
            workers: default_workers(self.backend),
            shared_prefix: false,
            max_length: self.params.max_length,
            pad_id: self.base.files.config.eos_token_id.unwrap_or(0),
        };
        let positions = layer_positions();
        let start = Instant::now();
        let mut preds = Vec::new();
        // in the order a pipeline run takes (the eval-qa stage's run_rank): shallow cuts first,
        // each model continuing the stream the previous one left, the base (all layers) last
        let mut order: Vec<Option<&SweepModel>> = self.models.iter().map(Some).collect();
        order.sort_by_key(|m| m.map(|m| m.start));
        order.push(None);
        for m in order {
            let mut model = base.clone();
            if let Some(m) = m {
                model.drop_block(m.start, m.end - m.start)?;
            }
            for req in tasks {
                let scored = if reuse {
                    let cut = Cut {
                        base: "bench sweep".into(),
                        cut: m.map_or(base.num_layers(), |m| m.start),
                        base_layers: base.num_layers(),
                    };
                    ev.score(&model, req, Some(&cut))?
                } else {
                    let all: Vec<Request> = req.sets.iter().flatten().cloned().collect();
                    let grouped = Grouped::full_sequences(&all, opts.max_length)?;
                    let (flat, _) = score_streams(&model, &grouped, Streams::PLAIN, &opts)?;
                    split_by_sets(flat, &req.sets)
                };
                preds.extend(ev.aggregate(req, scored).items.iter().map(|r| r.pred));
            }
        }
        let pass = SweepPass {
            seconds: start.elapsed().as_secs_f64(),
            layer_positions: layer_positions() - positions,
        };
        below_cut::clear();
        below_cut::set_budget_mb(crate::runtime::RuntimeOptions::from_env().stream_memo_mb);
        Ok((pass, preds))
    }
}

impl BackendTask for SweepBench<'_> {
    type Output = SweepResult;

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<SweepResult> {
        let ev = Evaluate {
            model: self.base,
            params: self.params,
            data_root: self.data_root,
            workers: default_workers(self.backend),
            backend: self.backend,
            streamed: false,
        };
        let base = self.base.build::<B>(&device, dtype)?;
        let tasks = self
            .params
            .tasks
            .iter()
            .map(|&t| ev.build(t))
            .collect::<Result<Vec<_>>>()?;
        let items = tasks.iter().map(|t| t.num_items()).sum();
        let (plain, plain_preds) = self.pass(&ev, &base, &tasks, false)?;
        let (reuse, reuse_preds) = self.pass(&ev, &base, &tasks, true)?;
        let same_predictions = plain_preds
            .iter()
            .zip(&reuse_preds)
            .filter(|(a, b)| a == b)
            .count();
        Ok(SweepResult {
            reuse,
            plain,
            items,
            same_predictions,
            predictions: plain_preds.len(),
        })
    }
}

/// `layerprune bench sweep`.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    files: ModelFiles,
    data_root: &Path,
    selection: &Path,
    fractions: &[f64],
    strategies: &[String],
    tasks: &[TaskName],
    limit: usize,
    mmlu_per_subject: usize,
    backend: BackendKind,
    precision: Precision,
) -> Result<()> {
    let layers = files.config.num_hidden_layers;
    let models = sweep_models(selection, layers, fractions, strategies)?;
    let task_limits: serde_json::Map<String, serde_json::Value> = tasks
        .iter()
        .filter(|t| !t.is_mmlu())
        .map(|t| (t.as_str().to_string(), serde_json::json!(limit)))
        .collect();
    let params: EvalQaParams = defaults_with(
        &EvalQaStage,
        serde_json::json!({
            "tasks": tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "mmlu_shots": 0,
            "limit": mmlu_per_subject,
            "task_limits": task_limits,
            "subset": "first",
        }),
    )?;
    let base = ModelRef::base(files, "bench");
    println!(
        "sweep: the base model and {} pruned models ({} x fractions {:?}, blocks from {}), tasks {:?} (MMLU 0-shot {mmlu_per_subject} per subject, others {limit} items), batch {}, {backend} {precision}, {} CPU threads",
        models.len(),
        strategies.join("/"),
        fractions,
        selection.display(),
        tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        params.batch_size,
        super::bench::cpu_threads()
    );
    let r = dispatch(
        backend,
        precision,
        SweepBench {
            base: &base,
            params: &params,
            data_root,
            models: &models,
            backend,
        },
    )?;
    let line = |name: &str, p: &SweepPass| {
        println!(
            "{name:<13} {:>8.2} s  {:>12} layer positions computed",
            p.seconds, p.layer_positions
        )
    };
    line("no reuse", &r.plain);
    line("reuse", &r.reuse);
    println!(
        "ratio         {:>8.2}x (time without / with reuse); {:.2}x fewer layer positions; same predictions on {}/{} ({} items per model); {}",
        r.plain.seconds / r.reuse.seconds,
        r.plain.layer_positions as f64 / r.reuse.layer_positions.max(1) as f64,
        r.same_predictions,
        r.predictions,
        r.items,
        super::bench::peak_rss_line()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_models_come_from_the_selection_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("selection.csv");
        std::fs::write(
            &path,
            "n,fraction,strategy,start,end,d\n3,0.1,similarity,13,16,0.1\n3,0.1,simple,26,29,0.3\n8,0.26,similarity,9,17,0.2\n8,0.26,simple,21,29,0.4\n",
        )
        .unwrap();
        let strategies = vec!["similarity".to_string(), "simple".to_string()];
        // 0.1 and 0.25 of 30 layers: blocks of 3 and 8 (rounded as the prune stage does)
        let models = sweep_models(&path, 30, &[0.1, 0.25], &strategies).unwrap();
        let blocks: Vec<(&str, usize, usize)> = models
            .iter()
            .map(|m| (m.strategy.as_str(), m.start, m.end))
            .collect();
        assert_eq!(
            blocks,
            vec![
                ("similarity", 13, 16),
                ("similarity", 9, 17),
                ("simple", 26, 29),
                ("simple", 21, 29)
            ]
        );
        // a fraction the table has no block for names the file, n and the strategy
        let err = sweep_models(&path, 30, &[0.5], &strategies).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("selection.csv") && msg.contains("n = 15"),
            "{msg}"
        );
        // a malformed row names the file and the column
        std::fs::write(
            &path,
            "n,fraction,strategy,start,end,d\nx,0.1,simple,1,2,0\n",
        )
        .unwrap();
        let msg = format!(
            "{:#}",
            sweep_models(&path, 30, &[0.1], &strategies).unwrap_err()
        );
        assert!(
            msg.contains("row 1") && msg.contains("n is not a whole number"),
            "{msg}"
        );
    }
}
