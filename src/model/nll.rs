//! Next-token negative log-likelihood of token rows from the last layer's residual stream:
//! final norm, LM head and log-softmax at the predicting positions only (each row predicts its
//! tokens 1..len-1 from the ones before).

use anyhow::Result;
use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor, TensorData};

use super::readback::to_f32_vec;
use super::transformer::{gather_rows, to_f32, Transformer};

/// Summed cross-entropy (nats) and prediction count of each row; x [batch, seq, hidden] is the
/// stream after the last layer for the right-padded `rows` (seq = the longest row).
pub fn next_token_nll<B: Backend>(
    model: &Transformer<B>,
    x: Tensor<B, 3>,
    rows: &[Vec<u32>],
) -> Result<Vec<(f64, usize)>> {
    let seq = x.dims()[1];
    let mut flat = Vec::new();
    let mut targets = Vec::new();
    for (r, w) in rows.iter().enumerate() {
        for j in 0..w.len().saturating_sub(1) {
            flat.push((r * seq + j) as i64);
            targets.push(w[j + 1] as i64);
        }
    }
    let n = flat.len();
    if n == 0 {
        return Ok(rows.iter().map(|_| (0.0, 0)).collect());
    }
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [n]), &model.device);
    let logp = log_softmax(to_f32(model.head(gather_rows(x, &idx))), 1); // [n, vocab], f32
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &model.device);
    let lp = to_f32_vec(logp.gather(1, tgt))?; // [n]
    let mut out = Vec::with_capacity(rows.len());
    let mut k = 0;
    for w in rows {
        let m = w.len().saturating_sub(1);
        out.push((lp[k..k + m].iter().map(|&v| -(v as f64)).sum(), m));
        k += m;
    }
    Ok(out)
}
