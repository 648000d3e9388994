//! Angular distance between layer boundaries (paper Eq. 7):
//! d(x(l), x(l+n)) = arccos(x_T(l) . x_T(l+n) / (|x_T(l)| |x_T(l+n)|)) / pi at the final token T,
//! averaged over samples. x(l) is the input of layer l; x(L) is taken before the final norm.
//!
//! With `all_tokens`, the same pass also accumulates the mean cosine similarity
//! cos(x_t(l), x_t(l+n)) over every real token t of every sample (`AllTokenStats`): what
//! ShortGPT's Block Influence (BI(l) = 1 - cos(x(l), x(l+1))) and LLM-Streamline's contiguous
//! block of highest cosine need; and cos(x_t(l), x_t(l) + attention output of layer l), what
//! LLM-Drop's attention drop needs. Statistics are summed per token as they come, never stored.

use anyhow::Result;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::loss_greedy::GreedyRemoval;
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
    /// Over every token, when the similarity stage was asked for them (`all_tokens = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_tokens: Option<AllTokenStats>,
    /// Greedy removal by calibration loss, when the similarity stage was asked for it
    /// (`greedy_samples > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_greedy: Option<GreedyRemoval>,
}

/// Mean cosine similarity between boundaries over every real token of every sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AllTokenStats {
    /// Tokens averaged over.
    pub tokens: usize,
    /// cos[n - 1][l] = mean over tokens of cos(x_t(l), x_t(l+n)), n = 1..L-1, l = 0..L-n (the
    /// shape of `Distances::d`).
    pub cos: Vec<Vec<f64>>,
    /// attention_cos[l] = mean over tokens of cos(x_t(l), y_t(l)), y(l) = x(l) + layer l's
    /// attention output (LLM-Drop's attention importance is 1 - this), l = 0..L-1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_cos: Vec<f64>,
}

impl AllTokenStats {
    /// ShortGPT's Block Influence of layer l = 0..L-1: 1 - mean cos(x(l), x(l+1)).
    pub fn block_influence(&self) -> Vec<f64> {
        self.cos[0].iter().map(|c| 1.0 - c).collect()
    }

    /// LLM-Drop's importance of layer l's attention sublayer, l = 0..L-1:
    /// 1 - mean cos(x(l), x(l) + attention output).
    pub fn attention_importance(&self) -> Vec<f64> {
        self.attention_cos.iter().map(|c| 1.0 - c).collect()
    }
}

/// Sums of cosines over tokens, in f64.
pub struct AllTokenAccumulator {
    layers: usize,
    tokens: usize,
    sum: Vec<Vec<f64>>,
    attention_sum: Vec<f64>,
}

/// The cosine of two vectors (1 when either is zero, as angular_distance treats them).
fn cosine(a: &[f32], b: &[f32], na: f64, nb: f64) -> f64 {
    let denom = (na * nb).sqrt();
    if denom == 0.0 {
        return 1.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    (dot / denom).clamp(-1.0, 1.0)
}

impl AllTokenAccumulator {
    pub fn new(layers: usize) -> Self {
        Self {
            layers,
            tokens: 0,
            sum: (1..layers).map(|n| vec![0.0; layers - n + 1]).collect(),
            attention_sum: vec![0.0; layers],
        }
    }

    /// One token: its vector at each of the L + 1 boundaries, [L + 1, hidden] flat, and after
    /// each layer's attention sublayer, [L, hidden] flat.
    pub fn add(&mut self, boundaries: &[f32], mids: &[f32], hidden: usize) {
        let v = |l: usize| &boundaries[l * hidden..(l + 1) * hidden];
        let sq = |a: &[f32]| a.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        let norms: Vec<f64> = (0..=self.layers).map(|l| sq(v(l))).collect();
        for n in 1..self.layers {
            for l in 0..=self.layers - n {
                self.sum[n - 1][l] += cosine(v(l), v(l + n), norms[l], norms[l + n]);
            }
        }
        for l in 0..self.layers {
            let y = &mids[l * hidden..(l + 1) * hidden];
            self.attention_sum[l] += cosine(v(l), y, norms[l], sq(y));
        }
        self.tokens += 1;
    }

    pub fn finish(self) -> AllTokenStats {
        let t = self.tokens.max(1) as f64;
        AllTokenStats {
            tokens: self.tokens,
            cos: self
                .sum
                .into_iter()
                .map(|r| r.into_iter().map(|x| x / t).collect())
                .collect(),
            attention_cos: self.attention_sum.into_iter().map(|x| x / t).collect(),
        }
    }
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
            all_tokens: None,
            loss_greedy: None,
        }
    }
}

/// Run the boundary-keeping forward pass over `rows` (batched, right-padded) and average; with
/// `all_tokens`, every position's boundaries are read too and their cosines accumulated.
pub fn measure<B: Backend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    batch: usize,
    workers: usize,
    pad_id: u32,
    all_tokens: bool,
) -> Result<Distances> {
    let layers = model.num_layers();
    let hidden = model.config.hidden_size;
    let mut acc = Accumulator::new(layers);
    let mut all = all_tokens.then(|| AllTokenAccumulator::new(layers));
    let mut progress = Progress::new(rows.len() as u64, "similarity");
    let mut done = 0;
    for chunk in rows.chunks(batch.max(1)) {
        let tb = TokenBatch::right_padded(chunk, pad_id);
        let b = chunk.len();
        // [L + 1, b, hidden] at the final tokens; with all_tokens also [L + 1][b, seq, hidden]
        let (finals, every) = if all_tokens {
            let out =
                model.forward_parallel(&tb, Capture::AllWithAttention, Logits::None, workers)?;
            let mut per_layer = Vec::with_capacity(layers + 1);
            for t in out.boundaries.expect("requested") {
                per_layer.push(to_f32_vec(t)?);
            }
            let mut mids = Vec::with_capacity(layers);
            for t in out.attention_residuals.expect("requested") {
                mids.push(to_f32_vec(t)?);
            }
            let seq = tb.seq;
            let mut finals = Vec::with_capacity((layers + 1) * b * hidden);
            for layer in &per_layer {
                for (i, r) in chunk.iter().enumerate() {
                    let at = (i * seq + r.len() - 1) * hidden;
                    finals.extend_from_slice(&layer[at..at + hidden]);
                }
            }
            (finals, Some((per_layer, mids, seq)))
        } else {
            let out = model.forward_parallel(&tb, Capture::FinalToken, Logits::None, workers)?;
            (
                to_f32_vec(out.final_token_boundaries.expect("requested"))?,
                None,
            )
        };
        if let Some(k) = finals.iter().position(|x| !x.is_finite()) {
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
                sample.extend_from_slice(&finals[(l * b + i) * hidden..(l * b + i + 1) * hidden]);
            }
            acc.add(&sample, hidden);
        }
        if let (Some(all), Some((per_layer, mids, seq))) = (all.as_mut(), every) {
            let mut token = Vec::with_capacity((layers + 1) * hidden);
            let mut token_mids = Vec::with_capacity(layers * hidden);
            for (i, r) in chunk.iter().enumerate() {
                for t in 0..r.len() {
                    let at = (i * seq + t) * hidden;
                    token.clear();
                    for layer in &per_layer {
                        token.extend_from_slice(&layer[at..at + hidden]);
                    }
                    token_mids.clear();
                    for layer in &mids {
                        token_mids.extend_from_slice(&layer[at..at + hidden]);
                    }
                    if token.iter().chain(&token_mids).any(|x| !x.is_finite()) {
                        anyhow::bail!(
                            "similarity: the residual stream of sample {} at token {t} is not finite",
                            done + i
                        );
                    }
                    all.add(&token, &token_mids, hidden);
                }
            }
        }
        progress.inc(b as u64);
        done += b;
    }
    progress.finish();
    let mut d = acc.finish();
    d.all_tokens = all.map(AllTokenAccumulator::finish);
    Ok(d)
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
