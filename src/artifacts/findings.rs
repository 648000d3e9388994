//! The findings of a sweep in numbers, for summary.md: computed from eval.csv rows and the
//! selection only (the report stage writes them; nothing here reads files).
//!
//! - Robustness: for each strategy, healing state and headline metric (each task's, and the
//!   held-out loss), the largest fraction dropped up to which the score STAYS within two
//!   standard errors of the unpruned model's: every evaluated fraction up to it satisfies
//!   |score - base| <= 2 sqrt(se^2 + se_base^2) (both scores measured on the same items, each
//!   with its own standard error; 0 when the smallest fraction already falls outside); and, for
//!   a task with a chance level, the first evaluated fraction whose score is within two standard
//!   errors of chance (|score - chance| <= 2 se): where the task is lost.
//! - Healing: the held-out loss at each healed fraction beside the same model unhealed.
//! - Where l*(n) sits: the similarity strategy's block start for each n, and how often it is
//!   the deepest block that keeps the final layer (the simple strategy's [L-n-1, L-1)).

use serde::Serialize;

use super::comparison::{headline_metric, heal_of, heal_rank, strategy_rank};
use super::eval_table::EvalTableRow;
use crate::data::tasks::TaskName;
use crate::method::selection::{Block, Strategy};

/// One robustness finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Robustness {
    pub strategy: String,
    /// "none", "lora" or "linear"
    pub heal: String,
    pub task: String,
    pub shots: usize,
    pub metric: String,
    /// The unpruned model's score and standard error.
    pub base: f64,
    pub base_stderr: f64,
    /// The largest fraction within two standard errors (0 if none).
    pub max_fraction: f64,
    /// The task's chance level (None: the loss).
    pub chance: Option<f64>,
    /// The first evaluated fraction whose score is within two standard errors of chance (None:
    /// none is, or no chance level).
    pub at_chance_from: Option<f64>,
    /// Fractions evaluated.
    pub fractions: usize,
}

/// Every strategy x healing x headline metric's robustness, in table order.
pub fn robustness(rows: &[EvalTableRow]) -> Vec<Robustness> {
    let headline = |r: &EvalTableRow| {
        headline_metric(&r.task) == Some(r.metric.as_str())
            || (r.task == "loss" && r.metric == "loss")
    };
    let mut keys: Vec<(String, String, String, usize, String)> = rows
        .iter()
        .filter(|r| headline(r))
        .filter_map(|r| {
            heal_of(&r.variant).map(|h| {
                (
                    r.strategy.clone(),
                    h.to_string(),
                    r.task.clone(),
                    r.shots,
                    r.metric.clone(),
                )
            })
        })
        .collect();
    keys.sort_by(|a, b| {
        (strategy_rank(&a.0), &a.2, a.3, &a.4, heal_rank(&a.1)).cmp(&(
            strategy_rank(&b.0),
            &b.2,
            b.3,
            &b.4,
            heal_rank(&b.1),
        ))
    });
    keys.dedup();
    let mut out = Vec::new();
    for (strategy, heal, task, shots, metric) in keys {
        let Some(base) = rows.iter().find(|b| {
            b.variant == "base" && b.task == task && b.shots == shots && b.metric == metric
        }) else {
            continue;
        };
        let mut points: Vec<&EvalTableRow> = rows
            .iter()
            .filter(|r| {
                r.strategy == strategy
                    && heal_of(&r.variant) == Some(heal.as_str())
                    && r.task == task
                    && r.shots == shots
                    && r.metric == metric
            })
            .collect();
        points.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
        let mut max_fraction = 0.0;
        for p in &points {
            let bound = 2.0 * (p.stderr.powi(2) + base.stderr.powi(2)).sqrt();
            if (p.value - base.value).abs() <= bound {
                max_fraction = p.fraction;
            } else {
                break;
            }
        }
        let chance = (task != "loss")
            .then(|| TaskName::from_name(&task).map(|t| t.spec().chance))
            .flatten();
        let at_chance_from = chance.and_then(|c| {
            points
                .iter()
                .find(|p| (p.value - c).abs() <= 2.0 * p.stderr)
                .map(|p| p.fraction)
        });
        out.push(Robustness {
            strategy,
            heal,
            task,
            shots,
            metric,
            base: base.value,
            base_stderr: base.stderr,
            max_fraction,
            chance,
            at_chance_from,
            fractions: points.len(),
        });
    }
    out
}

/// The held-out loss of one pruned model unhealed and healed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealedLoss {
    pub strategy: String,
    pub fraction: f64,
    pub unhealed: f64,
    /// By healing method ("lora", "linear"): the healed loss.
    pub healed: Vec<(String, f64)>,
}

/// Each fraction and strategy with a healed model: its loss beside the unhealed one.
pub fn healed_losses(rows: &[EvalTableRow]) -> Vec<HealedLoss> {
    let loss = |r: &&EvalTableRow| r.task == "loss" && r.metric == "loss";
    let mut out: Vec<HealedLoss> = Vec::new();
    for r in rows.iter().filter(loss).filter(|r| r.variant == "pruned") {
        let healed: Vec<(String, f64)> = rows
            .iter()
            .filter(loss)
            .filter(|h| h.strategy == r.strategy && h.fraction == r.fraction && h.healed)
            .filter_map(|h| heal_of(&h.variant).map(|m| (m.to_string(), h.value)))
            .collect();
        if !healed.is_empty() {
            out.push(HealedLoss {
                strategy: r.strategy.clone(),
                fraction: r.fraction,
                unhealed: r.value,
                healed,
            });
        }
    }
    out.sort_by(|a, b| {
        a.fraction
            .total_cmp(&b.fraction)
            .then(strategy_rank(&a.strategy).cmp(&strategy_rank(&b.strategy)))
    });
    out
}

/// Where the similarity strategy's blocks sit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockPlacement {
    pub layers: usize,
    /// (n, l*(n)) for every n tabulated.
    pub starts: Vec<(usize, usize)>,
    /// How many of them are the deepest block that keeps the final layer, [L-n-1, L-1).
    pub deepest: usize,
}

pub fn placement(layers: usize, blocks: &[Block]) -> Option<BlockPlacement> {
    placement_of(
        layers,
        blocks
            .iter()
            .filter(|b| b.strategy == Strategy::Similarity)
            .map(|b| (b.n, b.start))
            .collect(),
    )
}

/// Where the blocks (n, l*(n)) of the similarity strategy sit in a model of `layers` layers.
pub fn placement_of(layers: usize, mut starts: Vec<(usize, usize)>) -> Option<BlockPlacement> {
    if starts.is_empty() {
        return None;
    }
    starts.sort_unstable();
    let deepest = starts
        .iter()
        .filter(|&&(n, l)| n < layers && l + n + 1 == layers)
        .count();
    Some(BlockPlacement {
        layers,
        starts,
        deepest,
    })
}

/// The authors' l*(n) lists (paper-spec section 2.6, their BoolQ sweep script): (model, L, list)
/// where entry k is l* for n = k + 1. The file has none for Qwen or Phi-2.
pub const PUBLISHED_LSTAR: [(&str, usize, &[usize]); 4] = [
    (
        "llama-2-7b",
        32,
        &[
            23, 24, 23, 23, 23, 22, 22, 21, 20, 19, 18, 18, 17, 16, 15, 8, 8, 7, 4, 4, 4, 2, 2, 2,
        ],
    ),
    (
        "llama-2-13b",
        40,
        &[
            33, 32, 31, 30, 29, 28, 27, 27, 27, 26, 25, 24, 24, 23, 22, 22, 20, 19, 18, 18, 17, 17,
            15, 3, 3, 3, 3, 3, 3, 3, 3, 3,
        ],
    ),
    (
        "llama-2-70b",
        80,
        &[
            62, 62, 61, 62, 61, 60, 61, 58, 59, 58, 58, 57, 56, 55, 54, 53, 53, 53, 53, 53, 51, 50,
            49, 50, 49, 49, 48, 48, 46, 46, 45, 44, 43, 42, 41, 40, 39, 37, 35, 35, 33, 33, 29, 30,
            29, 28, 28, 28, 26, 25, 23, 22, 22, 21, 20, 19, 19, 18, 16, 16, 14, 14, 13, 10,
        ],
    ),
    (
        "mistral-7b",
        32,
        &[
            26, 24, 23, 23, 23, 22, 21, 21, 20, 20, 19, 17, 17, 16, 13, 13, 11, 8, 8, 6, 6, 5, 4, 3,
        ],
    ),
];

/// How the similarity strategy's l*(n) compares with the authors' published list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishedAgreement {
    pub model: String,
    /// The n both lists have.
    pub compared: usize,
    /// Of those, the n whose l* equals the published one.
    pub equal: usize,
    /// The mean |l* - published l*| over the compared n.
    pub mean_abs_diff: f64,
}

/// The paper's knowledge-task transition (MMLU, Fig. 1d / 2): the fraction of layers dropped
/// after which the score falls sharply to chance, by model family (paper-spec; approximate, read
/// from the figures).
pub const PUBLISHED_TRANSITION: [(&str, &str); 4] = [
    ("Llama-2 family", "45-55%"),
    ("Mistral-7B", "35%"),
    ("Phi-2", "25%"),
    ("Qwen family", "20%"),
];

/// The agreement of `starts` ((n, l*(n))) with the published list of `model` (a key of
/// PUBLISHED_LSTAR, whose L must equal `layers`); None for an unknown model, another depth or no
/// common n.
pub fn published_agreement(
    model: &str,
    layers: usize,
    starts: &[(usize, usize)],
) -> Option<PublishedAgreement> {
    let (_, depth, list) = PUBLISHED_LSTAR.iter().find(|(m, _, _)| *m == model)?;
    if *depth != layers {
        return None;
    }
    let pairs: Vec<(usize, usize)> = starts
        .iter()
        .filter_map(|&(n, l)| Some((l, *list.get(n.checked_sub(1)?)?)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some(PublishedAgreement {
        model: model.to_string(),
        compared: pairs.len(),
        equal: pairs.iter().filter(|(a, b)| a == b).count(),
        mean_abs_diff: pairs
            .iter()
            .map(|&(a, b)| a.abs_diff(b) as f64)
            .sum::<f64>()
            / pairs.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, fraction: f64, task: &str, metric: &str, value: f64) -> EvalTableRow {
        EvalTableRow {
            variant: variant.into(),
            strategy: if variant == "base" { "" } else { "simple" }.into(),
            fraction,
            n_dropped: (fraction * 10.0) as usize,
            start: String::new(),
            end: String::new(),
            healed: variant.starts_with("healed"),
            task: task.into(),
            shots: 0,
            metric: metric.into(),
            value,
            stderr: 0.03,
            n_items: 100,
            lora_rank: variant.starts_with("healed").then_some(8),
        }
    }

    #[test]
    fn robustness_stops_at_the_first_fraction_outside_two_standard_errors() {
        // 2 sqrt(0.03^2 + 0.03^2) = 0.0849
        let rows = vec![
            row("base", 0.0, "boolq", "acc", 0.80),
            row("pruned", 0.1, "boolq", "acc", 0.75),
            row("pruned", 0.2, "boolq", "acc", 0.70),
            row("pruned", 0.3, "boolq", "acc", 0.78),
            row("healed", 0.2, "boolq", "acc", 0.79),
            row("pruned", 0.1, "boolq", "acc_norm", 0.1),
        ];
        let r = robustness(&rows);
        assert_eq!(r.len(), 2, "{r:?}");
        // 0.70 is outside; 0.78 at 0.3 does not count: the score must stay within
        assert_eq!(
            (r[0].heal.as_str(), r[0].max_fraction, r[0].fractions),
            ("none", 0.1, 3)
        );
        assert_eq!((r[1].heal.as_str(), r[1].max_fraction), ("lora", 0.2));
        assert_eq!(
            (r[0].base, r[0].base_stderr, r[0].chance),
            (0.80, 0.03, Some(0.5))
        );
        assert_eq!(r[0].at_chance_from, None, "never within 0.06 of 0.5");
    }

    #[test]
    fn a_task_is_lost_at_the_first_fraction_within_two_standard_errors_of_chance() {
        // MMLU chance 0.25; 2 se = 0.06; within the base: 2 sqrt(2) 0.03 = 0.0849
        let rows = vec![
            row("base", 0.0, "mmlu", "acc", 0.40),
            row("pruned", 0.1, "mmlu", "acc", 0.38),
            row("pruned", 0.2, "mmlu", "acc", 0.312),
            row("pruned", 0.3, "mmlu", "acc", 0.30),
            row("pruned", 0.4, "mmlu", "acc", 0.33),
            row("pruned", 0.1, "loss", "loss", 3.0),
            row("base", 0.0, "loss", "loss", 2.9),
        ];
        let r = robustness(&rows);
        let mmlu = r.iter().find(|r| r.task == "mmlu").unwrap();
        assert_eq!(mmlu.max_fraction, 0.1);
        assert_eq!(mmlu.chance, Some(0.25));
        // 0.312 is 0.062 above chance; 0.30 is within
        assert_eq!(mmlu.at_chance_from, Some(0.3));
        let loss = r.iter().find(|r| r.task == "loss").unwrap();
        assert_eq!((loss.chance, loss.at_chance_from), (None, None));
    }

    #[test]
    fn agreement_with_the_published_lists() {
        // Llama-2-7B: l*(1..3) = 23, 24, 23; ours 23, 20, 23 and an n the list lacks
        let a =
            published_agreement("llama-2-7b", 32, &[(1, 23), (2, 20), (3, 23), (30, 0)]).unwrap();
        assert_eq!((a.compared, a.equal), (3, 2));
        assert!((a.mean_abs_diff - 4.0 / 3.0).abs() < 1e-12);
        assert!(published_agreement("llama-2-7b", 40, &[(1, 23)]).is_none());
        assert!(published_agreement("qwen-7b", 32, &[(1, 23)]).is_none());
        for (_, layers, list) in PUBLISHED_LSTAR {
            assert!(list.iter().enumerate().all(|(k, &l)| l + k + 1 < layers));
        }
    }

    #[test]
    fn healed_losses_and_block_placement() {
        let rows = vec![
            row("base", 0.0, "loss", "loss", 2.0),
            row("pruned", 0.2, "loss", "loss", 3.0),
            row("healed", 0.2, "loss", "loss", 2.4),
            row("healed-linear", 0.2, "loss", "loss", 2.7),
            row("pruned", 0.3, "loss", "loss", 3.5),
        ];
        let h = healed_losses(&rows);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].unhealed, 3.0);
        assert_eq!(
            h[0].healed,
            vec![("lora".to_string(), 2.4), ("linear".to_string(), 2.7)]
        );
        let block = |n: usize, start: usize| Block {
            n,
            fraction: n as f64 / 10.0,
            strategy: Strategy::Similarity,
            start,
            end: start + n,
            d: 0.1,
            layers: vec![],
            attention_only: false,
        };
        // L = 10: the deepest block keeping the last layer for n = 2 is [7, 9)
        let p = placement(10, &[block(2, 7), block(3, 2)]).unwrap();
        assert_eq!(p.starts, vec![(2, 7), (3, 2)]);
        assert_eq!(p.deepest, 1);
    }
}
