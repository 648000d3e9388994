//! The method comparison, `comparison.csv` (written by the report stage beside eval.csv): for
//! every pruned model (strategy x healing method x fraction) each task's headline score as a
//! percentage of the unpruned model's ("retained %", as ShortGPT, LLM-Streamline, SLEB and
//! ReplaceMe report it), and their mean over the tasks ("average"). Computed from eval.csv rows
//! only; the one definition of its columns.
//!
//! The headline metric is the harness's: acc_norm where lm-evaluation-harness reports it
//! (TaskSpec::acc_norm), else acc. The standard error of a retained percentage is 100 *
//! stderr / base (the unpruned score taken as the fixed reference); of the average,
//! sqrt(sum of squares) / tasks. The held-out loss is not a score: it is carried as its own
//! row (task "loss", retained = 100 * base loss / loss) and left out of the average.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::eval_table::EvalTableRow;
use crate::data::tasks::TaskName;
use crate::method::selection::Strategy;

pub const FILE: &str = "comparison.csv";
/// The task name of the mean over tasks.
pub const AVERAGE: &str = "average";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub strategy: String,
    /// "none" (pruned only), "lora" (QLoRA / LoRA healing), "linear" (ReplaceMe map) or
    /// "partial" (the last layers and the head fine-tuned).
    pub heal: String,
    pub fraction: f64,
    pub n_dropped: usize,
    /// A task (with its shots), "average", or "loss".
    pub task: String,
    pub shots: usize,
    pub metric: String,
    pub value: f64,
    pub base: f64,
    pub retained_pct: f64,
    pub retained_stderr: f64,
    /// Tasks averaged (1 for a task's own row).
    pub tasks: usize,
}

/// The healing method of an eval.csv variant.
pub fn heal_of(variant: &str) -> Option<&'static str> {
    match variant {
        "pruned" => Some("none"),
        "healed" => Some("lora"),
        "healed-linear" => Some("linear"),
        "healed-partial" => Some("partial"),
        _ => None,
    }
}

/// The headline metric of a task: acc_norm where the harness reports it, else acc.
pub fn headline_metric(task: &str) -> Option<&'static str> {
    let t = TaskName::from_name(task)?;
    Some(if t.spec().acc_norm { "acc_norm" } else { "acc" })
}

/// Every pruned model's retained percentages, task by task then the average, sorted by
/// fraction, strategy (in `Strategy::ALL`'s order) and healing method.
pub fn compare(rows: &[EvalTableRow]) -> Vec<ComparisonRow> {
    let is_headline = |r: &EvalTableRow| {
        headline_metric(&r.task) == Some(r.metric.as_str())
            || (r.task == "loss" && r.metric == "loss")
    };
    let base_of = |r: &EvalTableRow| {
        rows.iter().find(|b| {
            b.variant == "base" && b.task == r.task && b.shots == r.shots && b.metric == r.metric
        })
    };
    let mut out: Vec<ComparisonRow> = Vec::new();
    for r in rows.iter().filter(|r| is_headline(r)) {
        let (Some(heal), Some(base)) = (heal_of(&r.variant), base_of(r)) else {
            continue;
        };
        if base.value == 0.0 || (r.task == "loss" && r.value == 0.0) {
            continue; // no percentage of zero
        }
        let loss = r.task == "loss";
        let (retained, se) = if loss {
            (
                100.0 * base.value / r.value,
                100.0 * base.value * r.stderr / (r.value * r.value),
            )
        } else {
            (100.0 * r.value / base.value, 100.0 * r.stderr / base.value)
        };
        out.push(ComparisonRow {
            strategy: r.strategy.clone(),
            heal: heal.into(),
            fraction: r.fraction,
            n_dropped: r.n_dropped,
            task: r.task.clone(),
            shots: r.shots,
            metric: r.metric.clone(),
            value: r.value,
            base: base.value,
            retained_pct: retained,
            retained_stderr: se,
            tasks: 1,
        });
    }
    // the mean over the score tasks of each model
    let models: Vec<(String, String, f64, usize)> = {
        let mut m: Vec<(String, String, f64, usize)> = out
            .iter()
            .map(|r| (r.strategy.clone(), r.heal.clone(), r.fraction, r.n_dropped))
            .collect();
        m.sort_by(|a, b| {
            a.2.total_cmp(&b.2)
                .then(strategy_rank(&a.0).cmp(&strategy_rank(&b.0)))
                .then(heal_rank(&a.1).cmp(&heal_rank(&b.1)))
        });
        m.dedup();
        m
    };
    let mut averages = Vec::new();
    for (strategy, heal, fraction, n) in &models {
        let scores: Vec<&ComparisonRow> = out
            .iter()
            .filter(|r| {
                &r.strategy == strategy
                    && &r.heal == heal
                    && r.fraction == *fraction
                    && r.task != "loss"
            })
            .collect();
        if scores.is_empty() {
            continue;
        }
        let k = scores.len() as f64;
        let mean = scores.iter().map(|r| r.retained_pct).sum::<f64>() / k;
        let se = scores
            .iter()
            .map(|r| r.retained_stderr.powi(2))
            .sum::<f64>()
            .sqrt()
            / k;
        averages.push(ComparisonRow {
            strategy: strategy.clone(),
            heal: heal.clone(),
            fraction: *fraction,
            n_dropped: *n,
            task: AVERAGE.into(),
            shots: 0,
            metric: "retained_pct".into(),
            value: mean,
            base: 100.0,
            retained_pct: mean,
            retained_stderr: se,
            tasks: scores.len(),
        });
    }
    out.extend(averages);
    out.sort_by(|a, b| {
        a.fraction
            .total_cmp(&b.fraction)
            .then(strategy_rank(&a.strategy).cmp(&strategy_rank(&b.strategy)))
            .then(heal_rank(&a.heal).cmp(&heal_rank(&b.heal)))
            .then(task_rank(&a.task).cmp(&task_rank(&b.task)))
            .then(a.task.cmp(&b.task))
            .then(a.shots.cmp(&b.shots))
    });
    out
}

/// Strategies in the order of `Strategy::ALL`.
pub fn strategy_rank(s: &str) -> usize {
    Strategy::ALL
        .iter()
        .position(|x| x.as_str() == s)
        .unwrap_or(Strategy::ALL.len())
}

/// Healing methods in table order: none, lora, linear, partial.
pub fn heal_rank(h: &str) -> usize {
    ["none", "lora", "linear", "partial"]
        .iter()
        .position(|x| *x == h)
        .unwrap_or(4)
}

/// Tasks first, then the average, then the loss.
fn task_rank(t: &str) -> usize {
    match t {
        AVERAGE => 1,
        "loss" => 2,
        _ => 0,
    }
}

pub fn write(path: &Path, rows: &[ComparisonRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    crate::fsutil::atomic_write(path, &w.into_inner()?)
}

pub fn read(path: &Path) -> Result<Vec<ComparisonRow>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    r.deserialize()
        .collect::<Result<Vec<ComparisonRow>, _>>()
        .with_context(|| format!("{}: not a comparison.csv of this version", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, strategy: &str, task: &str, metric: &str, value: f64) -> EvalTableRow {
        EvalTableRow {
            variant: variant.into(),
            strategy: strategy.into(),
            fraction: if variant == "base" { 0.0 } else { 0.25 },
            n_dropped: if variant == "base" { 0 } else { 2 },
            start: String::new(),
            end: String::new(),
            healed: variant.starts_with("healed"),
            task: task.into(),
            shots: 0,
            metric: metric.into(),
            value,
            stderr: 0.02,
            n_items: 100,
            lora_rank: variant.starts_with("healed").then_some(8),
        }
    }

    #[test]
    fn retained_percentages_and_their_average() {
        let rows = vec![
            row("base", "", "boolq", "acc", 0.8),
            row("base", "", "hellaswag", "acc_norm", 0.5),
            row("base", "", "hellaswag", "acc", 0.4),
            row("base", "", "loss", "loss", 2.0),
            row("pruned", "simple", "boolq", "acc", 0.6),
            row("pruned", "simple", "hellaswag", "acc_norm", 0.45),
            row("pruned", "simple", "hellaswag", "acc", 0.1),
            row("pruned", "simple", "loss", "loss", 4.0),
            row("healed-linear", "simple", "boolq", "acc", 0.72),
        ];
        let c = compare(&rows);
        let get = |heal: &str, task: &str| {
            c.iter()
                .find(|r| r.heal == heal && r.task == task)
                .unwrap_or_else(|| panic!("{heal} {task}: {c:?}"))
        };
        assert!((get("none", "boolq").retained_pct - 75.0).abs() < 1e-9);
        // hellaswag's headline is acc_norm: 0.45 / 0.5
        let h = get("none", "hellaswag");
        assert_eq!(h.metric, "acc_norm");
        assert!((h.retained_pct - 90.0).abs() < 1e-9);
        assert!((h.retained_stderr - 4.0).abs() < 1e-9); // 100 * 0.02 / 0.5
                                                         // the average over the two score tasks, not the loss
        let a = get("none", AVERAGE);
        assert_eq!(a.tasks, 2);
        assert!((a.retained_pct - 82.5).abs() < 1e-9);
        let se = ((2.5f64).powi(2) + 4f64.powi(2)).sqrt() / 2.0;
        assert!((a.retained_stderr - se).abs() < 1e-9);
        // loss: base / pruned
        assert!((get("none", "loss").retained_pct - 50.0).abs() < 1e-9);
        assert!((get("linear", "boolq").retained_pct - 90.0).abs() < 1e-9);
        assert_eq!(get("linear", AVERAGE).tasks, 1);
        // the base model itself is no row; order: none before linear, tasks before the average
        assert!(c.iter().all(|r| r.heal != "base"));
        let order: Vec<(&str, &str)> = c
            .iter()
            .map(|r| (r.heal.as_str(), r.task.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("none", "boolq"),
                ("none", "hellaswag"),
                ("none", AVERAGE),
                ("none", "loss"),
                ("linear", "boolq"),
                ("linear", AVERAGE)
            ]
        );
    }
}
