//! Angular distance between layer boundaries (paper Eq. 7):
//! d(x(l), x(l+n)) = arccos(x_T(l) . x_T(l+n) / (|x_T(l)| |x_T(l+n)|)) / pi at the final token T,
//! averaged over samples. x(l) is the input of layer l; x(L) is taken before the final norm.

use anyhow::Result;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::model::to_f32_vec;
use crate::model::{Capture, Logits, TokenBatch, Transformer};
use crate::progress::Progress;

/// d(l, n) for n = 1..L-1 and l = 0..L-n, averaged over samples, with standard errors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Distances {
    /// Number of layers L of the model measured.
    pub layers: usize,
    pub samples: usize,
    /// d[n - 1][l], row n has L - n + 1 entries.
    pub d: Vec<Vec<f64>>,
    /// Standard error of the mean: sample standard deviation / sqrt(samples).
    pub stderr: Vec<Vec<f64>>,
}

impl Distances {
    pub fn get(&self, n: usize, l: usize) -> f64 {
        self.d[n - 1][l]
    }
}

/// Accumulates per-sample distances in f64.
pub struct Accumulator {
    layers: usize,
    count: usize,
    sum: Vec<Vec<f64>>,
    sum_sq: Vec<Vec<f64>>,
}

/// arccos(clamped cosine) / pi of two vectors (0 for identical directions, 1 for opposite).
pub fn angular_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let denom = (na * nb).sqrt();
    let cos = if denom > 0.0 {
        (dot / denom).clamp(-1.0, 1.0)
    } else {
        1.0
    };
    cos.acos() / std::f64::consts::PI
}

impl Accumulator {
    pub fn new(layers: usize) -> Self {
        let shape = |_: usize| {
            (1..layers)
                .map(|n| vec![0.0; layers - n + 1])
                .collect::<Vec<_>>()
        };
        Self {
            layers,
            count: 0,
            sum: shape(0),
            sum_sq: shape(0),
        }
    }

    /// One sample: the final token's vector at each of the L + 1 boundaries, [L + 1, hidden] flat.
    pub fn add(&mut self, boundaries: &[f32], hidden: usize) {
        let l_count = self.layers;
        assert_eq!(boundaries.len(), (l_count + 1) * hidden);
        let v = |l: usize| &boundaries[l * hidden..(l + 1) * hidden];
        for n in 1..l_count {
            for l in 0..=l_count - n {
                let d = angular_distance(v(l), v(l + n));
                self.sum[n - 1][l] += d;
                self.sum_sq[n - 1][l] += d * d;
            }
        }
        self.count += 1;
    }

    pub fn finish(self) -> Distances {
        let s = self.count as f64;
        let mean: Vec<Vec<f64>> = self
            .sum
            .iter()
            .map(|r| r.iter().map(|x| x / s).collect())
            .collect();
        let stderr = self
            .sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, m)| {
                sq.iter()
                    .zip(m)
                    .map(|(q, mu)| {
                        if self.count < 2 {
                            return 0.0;
                        }
                        let var = ((q - s * mu * mu) / (s - 1.0)).max(0.0);
                        (var / s).sqrt()
                    })
                    .collect()
            })
            .collect();
        Distances {
            layers: self.layers,
            samples: self.count,
            d: mean,
            stderr,
        }
    }
}

/// Run the boundary-keeping forward pass over `rows` (batched, right-padded) and average.
pub fn measure<B: Backend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    batch: usize,
    workers: usize,
    pad_id: u32,
) -> Result<Distances> {
    let layers = model.num_layers();
    let hidden = model.config.hidden_size;
    let mut acc = Accumulator::new(layers);
    let mut progress = Progress::new(rows.len() as u64, "similarity");
    let mut done = 0;
    for chunk in rows.chunks(batch.max(1)) {
        let tb = TokenBatch::right_padded(chunk, pad_id);
        let out = model.forward_parallel(&tb, Capture::FinalToken, Logits::None, workers)?;
        let flat = to_f32_vec(out.final_token_boundaries.expect("requested"))?; // [L + 1, b, hidden]
        let b = chunk.len();
        if let Some(k) = flat.iter().position(|x| !x.is_finite()) {
            let (l, i) = (k / hidden / b, k / hidden % b);
            anyhow::bail!(
                "similarity: the residual stream x({l}) of sample {} is not finite (NaN or infinity): \
                 the model's activations overflow in this precision",
                done + i
            );
        }
        for i in 0..b {
            let mut sample = Vec::with_capacity((layers + 1) * hidden);
            for l in 0..=layers {
                sample.extend_from_slice(&flat[(l * b + i) * hidden..(l * b + i + 1) * hidden]);
            }
            acc.add(&sample, hidden);
        }
        progress.inc(b as u64);
        done += b;
    }
    progress.finish();
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angular_distance_extremes() {
        assert!(angular_distance(&[1.0, 0.0], &[2.0, 0.0]).abs() < 1e-12);
        assert!((angular_distance(&[1.0, 0.0], &[-1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((angular_distance(&[1.0, 0.0], &[0.0, 3.0]) - 0.5).abs() < 1e-12);
        // rounding can push |cos| above 1: clamped, never NaN
        let a = [0.1f32; 7];
        assert!(!angular_distance(&a, &a).is_nan());
    }

    #[test]
    fn mean_and_stderr() {
        let mut acc = Accumulator::new(1 + 1); // L = 2: n = 1 only, l = 0..=1
                                               // sample 1: x0 = e1, x1 = e1, x2 = e2 ; sample 2: x0 = e1, x1 = e2, x2 = e2
        acc.add(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0], 2);
        acc.add(&[1.0, 0.0, 0.0, 1.0, 0.0, 1.0], 2);
        let d = acc.finish();
        assert_eq!(d.d, vec![vec![0.25, 0.25]]);
        // values 0 and 0.5: sample sd = 0.3536, / sqrt(2) = 0.25
        assert!((d.stderr[0][0] - 0.25).abs() < 1e-12);
    }
}
