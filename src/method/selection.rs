//! Which n layers to drop:
//! - `similarity`: l*(n) = argmin_l d(x(l), x(l+n)) (paper Eq. 6), ties to the smallest l;
//! - `simple`: the deepest block that keeps the final layer, 0-based layers L-n-1 .. L-2, i.e.
//!   the half-open block [L-n-1, L-1) (the paper's "(L-n) to (L-1)" in 1-based numbering, as the
//!   authors' code does it; paper-spec §3);
//! - `reverse`: the last n layers, the final one included, [L-n, L) ("Reassessing Layer Pruning
//!   in LLMs", ICLR 2026: a baseline distinct from `simple`);
//! - `cosine_all`: LLM-Streamline's contiguous block of highest mean cosine between x(l) and
//!   x(l+n) over all tokens (ties to the smallest l);
//! - `bi`: ShortGPT's Block Influence BI(l) = 1 - cos(x(l), x(l+1)) over all tokens: the n
//!   layers of lowest influence, not necessarily contiguous (ties to the smaller l).
//! - `loss_greedy`: SLEB / BlockPruner: the first n layers of a greedy removal by calibration
//!   loss (not necessarily contiguous);
//! - `attention`: LLM-Drop ("What Matters in Transformers"): the attention SUBLAYER only of the
//!   n layers of lowest attention importance 1 - cos(x(l), x(l) + attention output) over all
//!   tokens; those layers keep their MLPs.
//! `cosine_all`, `bi` and `attention` need the similarity stage's all-token statistics
//! (`all_tokens = true`), `loss_greedy` its greedy removal (`greedy_samples > 0`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::similarity::AllTokenStats;
use super::similarity::Distances;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Similarity,
    Simple,
    Reverse,
    CosineAll,
    Bi,
    LossGreedy,
    Attention,
}

impl Strategy {
    /// Every strategy, in the order tables and figures list them.
    pub const ALL: [Strategy; 7] = [
        Strategy::Similarity,
        Strategy::Simple,
        Strategy::Reverse,
        Strategy::CosineAll,
        Strategy::Bi,
        Strategy::LossGreedy,
        Strategy::Attention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Similarity => "similarity",
            Strategy::Simple => "simple",
            Strategy::Reverse => "reverse",
            Strategy::CosineAll => "cosine_all",
            Strategy::Bi => "bi",
            Strategy::LossGreedy => "loss_greedy",
            Strategy::Attention => "attention",
        }
    }

    /// Position in `ALL` (a figure's series index).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&s| s == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the selection table: drop layers [start, end) (0-based, half-open), or, for a
/// selection that is not contiguous (`bi`), the layers in `layers` ([start, end) is then their
/// span).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub n: usize,
    pub fraction: f64,
    pub strategy: Strategy,
    pub start: usize,
    pub end: usize,
    /// d(x(start), x(start + n)) of a contiguous block; for `bi`, the mean Block Influence of
    /// the dropped layers; for `loss_greedy`, the calibration loss without them.
    pub d: f64,
    /// The dropped layers when they are not contiguous (empty: [start, end)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
    /// Only the attention sublayers of these layers are dropped (`attention`); their MLPs stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attention_only: bool,
}

impl Block {
    /// The dropped layers, ascending.
    pub fn dropped(&self) -> Vec<usize> {
        if self.layers.is_empty() {
            (self.start..self.end).collect()
        } else {
            self.layers.clone()
        }
    }
}

/// n = round(f * L), halves rounded up.
pub fn n_for_fraction(fraction: f64, layers: usize) -> usize {
    (fraction * layers as f64 + 1e-9).round() as usize
}

pub fn choose(dist: &Distances, n: usize, strategy: Strategy) -> Result<Block> {
    let layers = dist.layers;
    if n == 0 || n >= layers {
        bail!(
            "block size n = {n} is out of range for a model of {layers} layers (1..={})",
            layers - 1
        );
    }
    let all_tokens = || {
        dist.all_tokens.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "strategy {strategy} needs the all-token statistics: set all_tokens = true in the similarity stage"
            )
        })
    };
    // the first index of the smallest value (ties to the smallest l)
    let argmin = |row: &[f64]| {
        let mut best = 0;
        for (l, &v) in row.iter().enumerate() {
            if v < row[best] {
                best = l;
            }
        }
        best
    };
    let contiguous = |start: usize| Block {
        n,
        fraction: n as f64 / layers as f64,
        strategy,
        start,
        end: start + n,
        d: dist.get(n, start),
        layers: Vec::new(),
        attention_only: false,
    };
    Ok(match strategy {
        Strategy::Similarity => contiguous(argmin(&dist.d[n - 1])),
        Strategy::Simple => {
            if n + 1 > layers {
                bail!(
                    "the simple strategy keeps the final layer: n = {n} needs at least {} layers",
                    n + 1
                );
            }
            contiguous(layers - n - 1)
        }
        Strategy::Reverse => contiguous(layers - n),
        Strategy::CosineAll => {
            let negated: Vec<f64> = all_tokens()?.cos[n - 1].iter().map(|c| -c).collect();
            contiguous(argmin(&negated))
        }
        Strategy::Bi => {
            let bi = all_tokens()?.block_influence();
            let mut chosen = lowest(&bi, n);
            chosen.sort_unstable();
            let d = chosen.iter().map(|&l| bi[l]).sum::<f64>() / n as f64;
            layer_set(n, layers, strategy, chosen, d)
        }
        Strategy::LossGreedy => {
            let greedy = dist.loss_greedy.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "strategy loss_greedy needs the greedy removal: set greedy_samples > 0 in the similarity stage"
                )
            })?;
            layer_set(n, layers, strategy, greedy.first(n)?, greedy.loss[n - 1])
        }
        Strategy::Attention => {
            let stats = all_tokens()?;
            if stats.attention_cos.len() != layers {
                bail!(
                    "strategy attention needs the attention-sublayer statistics, which this similarity artifact predates: rerun the similarity stage (run --refresh similarity)"
                );
            }
            let imp = stats.attention_importance();
            let mut chosen = lowest(&imp, n);
            chosen.sort_unstable();
            let d = chosen.iter().map(|&l| imp[l]).sum::<f64>() / n as f64;
            Block {
                attention_only: true,
                ..layer_set(n, layers, strategy, chosen, d)
            }
        }
    })
}

/// The indices of the n smallest values (stable: equal values keep the smaller index first).
fn lowest(values: &[f64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order.truncate(n);
    order
}

/// A block of any n layers (ascending): [start, end) is their span, `layers` lists them when
/// they are not contiguous.
fn layer_set(n: usize, layers: usize, strategy: Strategy, chosen: Vec<usize>, d: f64) -> Block {
    let (start, end) = (chosen[0], chosen[n - 1] + 1);
    Block {
        n,
        fraction: n as f64 / layers as f64,
        strategy,
        start,
        end,
        d,
        layers: if end - start == n { Vec::new() } else { chosen },
        attention_only: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist() -> Distances {
        // L = 4: rows n = 1 (5 entries... l = 0..=3), n = 2 (l = 0..=2), n = 3 (l = 0..=1)
        Distances {
            layers: 4,
            samples: 1,
            d: vec![
                vec![0.5, 0.2, 0.2, 0.9],
                vec![0.3, 0.1, 0.6],
                vec![0.4, 0.4],
            ],
            stderr: vec![vec![0.0; 4], vec![0.0; 3], vec![0.0; 2]],
            all_tokens: None,
            loss_greedy: None,
        }
    }

    #[test]
    fn similarity_takes_the_argmin_with_ties_to_the_smallest_l() {
        let b = choose(&dist(), 1, Strategy::Similarity).unwrap();
        assert_eq!((b.start, b.end, b.d), (1, 2, 0.2));
        let b = choose(&dist(), 3, Strategy::Similarity).unwrap();
        assert_eq!((b.start, b.end), (0, 3));
    }

    #[test]
    fn simple_keeps_the_final_layer() {
        // L = 4, n = 2: layers 1 and 2 (0-based), block [1, 3)
        let b = choose(&dist(), 2, Strategy::Simple).unwrap();
        assert_eq!((b.start, b.end, b.d), (1, 3, 0.1));
        let b = choose(&dist(), 3, Strategy::Simple).unwrap();
        assert_eq!((b.start, b.end), (0, 3));
        assert!(choose(&dist(), 4, Strategy::Simple).is_err());
    }

    #[test]
    fn reverse_cosine_all_and_bi() {
        let mut d = dist();
        // reverse: the last n layers, the final one included
        let b = choose(&d, 2, Strategy::Reverse).unwrap();
        assert_eq!((b.start, b.end, b.dropped()), (2, 4, vec![2, 3]));
        // the all-token strategies need the statistics
        let e = choose(&d, 1, Strategy::Bi).unwrap_err().to_string();
        assert!(e.contains("all_tokens = true"), "{e}");
        d.all_tokens = Some(AllTokenStats {
            tokens: 10,
            cos: vec![
                vec![0.5, 0.95, 0.7, 0.9],
                vec![0.4, 0.8, 0.8],
                vec![0.3, 0.6],
            ],
            attention_cos: vec![0.9, 0.99, 0.95, 0.97],
        });
        // cosine_all: the highest mean cosine, ties to the smallest l
        let b = choose(&d, 2, Strategy::CosineAll).unwrap();
        assert_eq!((b.start, b.end), (1, 3));
        // bi: 1 - cos = [0.5, 0.05, 0.3, 0.1]: lowest two are layers 1 and 3, not contiguous
        let b = choose(&d, 2, Strategy::Bi).unwrap();
        assert_eq!((b.start, b.end, b.dropped()), (1, 4, vec![1, 3]));
        assert_eq!(b.layers, vec![1, 3]);
        assert!((b.d - 0.075).abs() < 1e-12);
        // a contiguous choice is stored as a plain block
        let b = choose(&d, 1, Strategy::Bi).unwrap();
        assert_eq!((b.start, b.end, b.layers.len()), (1, 2, 0));
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "similarity",
                "simple",
                "reverse",
                "cosine_all",
                "bi",
                "loss_greedy",
                "attention"
            ]
        );
        // attention: 1 - cos = [0.1, 0.01, 0.05, 0.03]: the sublayers of layers 1 and 3
        let b = choose(&d, 2, Strategy::Attention).unwrap();
        assert!(b.attention_only);
        assert_eq!(b.dropped(), vec![1, 3]);
        let parsed: Strategy = serde_json::from_str("\"cosine_all\"").unwrap();
        assert_eq!(parsed, Strategy::CosineAll);
    }

    #[test]
    fn loss_greedy_takes_the_first_removals() {
        let mut d = dist();
        let e = choose(&d, 1, Strategy::LossGreedy).unwrap_err().to_string();
        assert!(e.contains("greedy_samples > 0"), "{e}");
        d.loss_greedy = Some(crate::method::loss_greedy::GreedyRemoval {
            samples: 2,
            tokens: 10,
            base_loss: 1.0,
            order: vec![2, 0],
            loss: vec![1.1, 1.5],
        });
        let b = choose(&d, 1, Strategy::LossGreedy).unwrap();
        assert_eq!((b.start, b.end, b.d, b.layers.len()), (2, 3, 1.1, 0));
        let b = choose(&d, 2, Strategy::LossGreedy).unwrap();
        assert_eq!((b.start, b.end, b.dropped()), (0, 3, vec![0, 2]));
        let e = choose(&d, 3, Strategy::LossGreedy).unwrap_err().to_string();
        assert!(e.contains("raise greedy_steps"), "{e}");
    }

    #[test]
    fn fractions_round_to_layers() {
        assert_eq!(n_for_fraction(0.1, 30), 3);
        assert_eq!(n_for_fraction(0.25, 30), 8); // 7.5 rounds up
        assert_eq!(n_for_fraction(0.5, 30), 15);
        assert_eq!(n_for_fraction(0.0, 30), 0);
    }
}
