//! Validation loss: mean next-token cross-entropy in nats per predicted token over fixed windows
//! of seq_len tokens (each window predicts its tokens 1..seq_len-1 from the ones before).

use anyhow::Result;
use burn::tensor::backend::Backend;

use crate::model::nll::next_token_nll;
use crate::model::{TokenBatch, Transformer};
use crate::progress::Progress;

/// Summed cross-entropy (nats) and prediction count of each window.
fn chunk_losses<B: Backend>(
    model: &Transformer<B>,
    windows: &[Vec<u32>],
    batch: usize,
    progress: Option<&std::sync::Mutex<Progress>>,
) -> Result<Vec<(f64, usize)>> {
    let mut out = Vec::new();
    for chunk in windows.chunks(batch.max(1)) {
        let tb = TokenBatch::right_padded(chunk, 0);
        let n_layers = model.num_layers();
        let x = model.run_layers(model.embed(tb.to_tensor::<B>(&model.device)), 0, n_layers); // [b, t, hidden]
        out.extend(next_token_nll(model, x, chunk)?);
        if let Some(p) = progress {
            p.lock().unwrap().inc(chunk.len() as u64);
        }
    }
    Ok(out)
}

/// Per-window (summed nats, predictions), using `workers` threads on CPU backends.
pub fn window_losses<B: Backend>(
    model: &Transformer<B>,
    windows: &[Vec<u32>],
    batch: usize,
    workers: usize,
) -> Result<Vec<(f64, usize)>> {
    let progress = std::sync::Mutex::new(Progress::new(windows.len() as u64, "eval-loss"));
    let workers = workers.clamp(1, windows.len().max(1));
    let per = windows.len().div_ceil(workers).max(1);
    let chunks: Vec<_> = windows.chunks(per).collect();
    let parts = crate::workers::scoped_map("loss", &chunks, |_, c| {
        chunk_losses(model, c, batch, Some(&progress))
    });
    progress.into_inner().unwrap().finish();
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    if let Some(i) = out.iter().position(|(s, _)| !s.is_finite()) {
        anyhow::bail!(
            "eval-loss: the loss of window {i} is not finite ({})",
            out[i].0
        );
    }
    Ok(out)
}
