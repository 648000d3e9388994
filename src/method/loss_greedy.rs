//! SLEB / BlockPruner-style greedy removal by calibration loss: remove one layer at a time,
//! each time the one whose removal raises the mean next-token loss on the calibration rows
//! least (ties to the shallower layer), and record the order and the loss after each removal.
//! The first n removals are the `loss_greedy` strategy's n layers (not necessarily contiguous).
//!
//! Cost: a step over K remaining layers runs the stream up to each candidate once and, from
//! there, the layers after it: K (K + 1) / 2 layer passes, instead of K full passes of K - 1
//! layers (the stream below each candidate is shared).

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::model::nll::next_token_nll;
use crate::model::{TokenBatch, Transformer};
use crate::progress::Progress;

/// The greedy removal order and the loss after each removal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GreedyRemoval {
    /// Calibration rows and predicted tokens (the loss's denominator).
    pub samples: usize,
    pub tokens: usize,
    /// Mean loss (nats per predicted token) of the unpruned model.
    pub base_loss: f64,
    /// Original layer numbers in the order they were removed.
    pub order: Vec<usize>,
    /// loss[k] = mean loss with the first k + 1 layers of `order` removed.
    pub loss: Vec<f64>,
}

impl GreedyRemoval {
    /// The n layers the strategy drops, ascending.
    pub fn first(&self, n: usize) -> Result<Vec<usize>> {
        if n > self.order.len() {
            bail!(
                "strategy loss_greedy: the similarity stage removed {} layers greedily, n = {n} asks for more (raise greedy_steps)",
                self.order.len()
            );
        }
        let mut l = self.order[..n].to_vec();
        l.sort_unstable();
        Ok(l)
    }
}

/// For each batch of `batches`: the summed loss of every candidate removal (position p of
/// `kept` skipped), and of the model with all of `kept`.
fn candidate_losses<B: Backend>(
    model: &Transformer<B>,
    kept: &[usize],
    batches: &[&[Vec<u32>]],
    progress: &std::sync::Mutex<Progress>,
) -> Result<Vec<(Vec<f64>, f64)>> {
    let total = |v: Vec<(f64, usize)>| v.iter().map(|(s, _)| s).sum::<f64>();
    let mut out = Vec::with_capacity(batches.len());
    for chunk in batches {
        let mut sums = vec![0.0; kept.len()];
        let tb = TokenBatch::right_padded(chunk, 0);
        let mut x = model.embed(tb.to_tensor::<B>(&model.device)); // [b, t, hidden]
        let rope = model.rope_for(tb.batch, tb.seq);
        for (p, &layer) in kept.iter().enumerate() {
            // skip kept[p]: the stream below it is x, shared with every later candidate
            let mut y = x.clone();
            for &after in &kept[p + 1..] {
                y = model.layers[after].forward(y, &model.config, &rope);
            }
            sums[p] = total(next_token_nll(model, y, chunk)?);
            x = model.layers[layer].forward(x, &model.config, &rope);
        }
        let full = total(next_token_nll(model, x, chunk)?);
        progress.lock().unwrap().inc(chunk.len() as u64);
        out.push((sums, full));
    }
    Ok(out)
}

/// Remove `steps` layers greedily (at most L - 1), with `workers` threads over batches of
/// `batch` rows; the batches and the order of the sums do not depend on `workers`, so neither
/// does the result.
pub fn greedy_removal<B: Backend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    batch: usize,
    workers: usize,
    steps: usize,
) -> Result<GreedyRemoval> {
    let layers = model.num_layers();
    if steps == 0 || steps >= layers {
        bail!("greedy removal: steps must be in 1..{layers}, got {steps}");
    }
    let tokens: usize = rows.iter().map(|r| r.len().saturating_sub(1)).sum();
    if tokens == 0 {
        bail!("greedy removal: the calibration rows predict no tokens");
    }
    let progress = std::sync::Mutex::new(Progress::new((steps * rows.len()) as u64, "loss-greedy"));
    let batches: Vec<&[Vec<u32>]> = rows.chunks(batch.max(1)).collect();
    let workers = workers.clamp(1, batches.len().max(1));
    let per = batches.len().div_ceil(workers).max(1);
    let mut kept: Vec<usize> = (0..layers).collect();
    let mut out = GreedyRemoval {
        samples: rows.len(),
        tokens,
        base_loss: f64::NAN,
        order: Vec::new(),
        loss: Vec::new(),
    };
    for step in 0..steps {
        let chunks: Vec<_> = batches.chunks(per).collect();
        let parts = crate::workers::scoped_map("loss", &chunks, |_, c| {
            candidate_losses(model, &kept, c, &progress)
        });
        let mut sums = vec![0.0; kept.len()];
        let mut full = 0.0;
        for part in parts {
            for (s, f) in part? {
                sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
                full += f;
            }
        }
        if step == 0 {
            out.base_loss = full / tokens as f64;
        }
        let mut best = 0;
        for (p, &s) in sums.iter().enumerate() {
            if s < sums[best] {
                best = p;
            }
        }
        if !sums[best].is_finite() {
            bail!("greedy removal: the calibration loss is not finite at step {step}");
        }
        out.order.push(model.layers[kept[best]].original_index);
        out.loss.push(sums[best] / tokens as f64);
        kept.remove(best);
    }
    progress.into_inner().unwrap().finish();
    Ok(out)
}
