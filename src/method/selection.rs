//! Which block of n layers to drop:
//! - `similarity`: l*(n) = argmin_l d(x(l), x(l+n)) (paper Eq. 6), ties to the smallest l;
//! - `simple`: the deepest block that keeps the final layer, 0-based layers L-n-1 .. L-2, i.e.
//!   the half-open block [L-n-1, L-1) (the paper's "(L-n) to (L-1)" in 1-based numbering, as the
//!   authors' code does it; paper-spec §3).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::similarity::Distances;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Similarity,
    Simple,
}

impl Strategy {
    /// Every strategy, in the order tables and figures list them.
    pub const ALL: [Strategy; 2] = [Strategy::Similarity, Strategy::Simple];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Similarity => "similarity",
            Strategy::Simple => "simple",
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

/// One row of the selection table: drop layers [start, end) (0-based, half-open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub n: usize,
    pub fraction: f64,
    pub strategy: Strategy,
    pub start: usize,
    pub end: usize,
    /// d(x(start), x(start + n)) of the block.
    pub d: f64,
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
    let start = match strategy {
        Strategy::Similarity => {
            let row = &dist.d[n - 1];
            let mut best = 0;
            for (l, &v) in row.iter().enumerate() {
                if v < row[best] {
                    best = l;
                }
            }
            best
        }
        Strategy::Simple => {
            if n + 1 > layers {
                bail!(
                    "the simple strategy keeps the final layer: n = {n} needs at least {} layers",
                    n + 1
                );
            }
            layers - n - 1
        }
    };
    Ok(Block {
        n,
        fraction: n as f64 / layers as f64,
        strategy,
        start,
        end: start + n,
        d: dist.get(n, start),
    })
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
    fn fractions_round_to_layers() {
        assert_eq!(n_for_fraction(0.1, 30), 3);
        assert_eq!(n_for_fraction(0.25, 30), 8); // 7.5 rounds up
        assert_eq!(n_for_fraction(0.5, 30), 15);
        assert_eq!(n_for_fraction(0.0, 30), 0);
    }
}
