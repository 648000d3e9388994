//! Reuse of the residual stream below the cut across a sweep.
//!
//! A pruned model that keeps layers 0..cut of its base unchanged (no adapter) computes, on a
//! given input, exactly the base model's x(cut) below the cut. Over a sweep of pruned models
//! evaluated on the same requests, that stream is computed once per boundary: it is kept in a
//! process-wide memo (host memory, under a byte budget, least recently used evicted first), and
//! a later model with a deeper cut continues from the deepest boundary already known instead of
//! starting again at the embedding.
//!
//! Every request runs as one full sequence, context + continuation[..-1] (as the harness feeds
//! the model), identical sequences once. Used for requests scored without a shared prefix.

use std::sync::{Mutex, OnceLock};

use anyhow::Result;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use sha2::{Digest, Sha256};

use super::loglik::{
    in_batches, length_batches, prepared, target_logprobs, Request, ScoreOptions, Scored,
};
use crate::model::to_f32_vec;
use crate::model::{TokenBatch, Transformer};

/// Where the streams come from: the base model (its source identity, backend and dtype) and the
/// number of leading base layers the pruned model keeps unchanged.
#[derive(Debug, Clone)]
pub struct Cut {
    pub base: String,
    pub cut: usize,
}

/// What a call reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseStats {
    /// The boundary the computation started from (0: the embedding).
    pub from_boundary: usize,
    /// Whether x(cut) was stored for later models.
    pub stored: bool,
}

struct Entry {
    base: String,
    fingerprint: [u8; 32],
    boundary: usize,
    /// One row per unique sequence: [len * hidden], row-major.
    rows: Vec<Vec<f32>>,
    bytes: usize,
    last_used: u64,
}

struct Memo {
    entries: Vec<Entry>,
    bytes: usize,
    clock: u64,
    budget: usize,
}

fn memo() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(|| {
        Mutex::new(Memo {
            entries: Vec::new(),
            bytes: 0,
            clock: 0,
            budget: crate::runtime::DEFAULT_STREAM_MEMO_MB << 20,
        })
    })
}

/// Set the memo's budget in MiB (0 disables it); streams over the new budget are evicted.
pub fn set_budget_mb(mb: usize) {
    let mut m = memo().lock().expect("stream memo lock");
    m.budget = mb.saturating_mul(1 << 20);
    m.evict_to(0);
}

fn budget_bytes() -> usize {
    memo().lock().expect("stream memo lock").budget
}

/// Forget every stored stream (tests; a long-lived process between unrelated sweeps).
pub fn clear() {
    let mut m = memo().lock().expect("stream memo lock");
    m.entries.clear();
    m.bytes = 0;
}

impl Memo {
    /// Evict least recently used streams until `extra` more bytes fit the budget.
    fn evict_to(&mut self, extra: usize) {
        while !self.entries.is_empty() && self.bytes + extra > self.budget {
            let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used) else {
                break;
            };
            let old = self.entries.swap_remove(i);
            self.bytes -= old.bytes;
        }
    }
}

fn fingerprint(seqs: &[Vec<u32>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for s in seqs {
        h.update((s.len() as u64).to_le_bytes());
        for t in s {
            h.update(t.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// The deepest stored boundary <= cut for these sequences, with its rows.
fn lookup(base: &str, fp: &[u8; 32], cut: usize) -> Option<(usize, Vec<Vec<f32>>)> {
    let mut m = memo().lock().expect("stream memo lock");
    m.clock += 1;
    let now = m.clock;
    let e = m
        .entries
        .iter_mut()
        .filter(|e| e.base == base && &e.fingerprint == fp && e.boundary <= cut)
        .max_by_key(|e| e.boundary)?;
    e.last_used = now;
    Some((e.boundary, e.rows.clone()))
}

fn store(base: &str, fp: [u8; 32], boundary: usize, rows: Vec<Vec<f32>>) -> bool {
    let bytes: usize = rows.iter().map(|r| r.len() * 4).sum();
    let budget = budget_bytes();
    if bytes > budget {
        return false;
    }
    let mut m = memo().lock().expect("stream memo lock");
    if m.entries
        .iter()
        .any(|e| e.base == base && e.fingerprint == fp && e.boundary == boundary)
    {
        return true;
    }
    m.evict_to(bytes);
    m.clock += 1;
    let now = m.clock;
    m.bytes += bytes;
    m.entries.push(Entry {
        base: base.to_string(),
        fingerprint: fp,
        boundary,
        rows,
        bytes,
        last_used: now,
    });
    true
}

/// Score `requests` on a model whose first `cut.cut` layers are its base's, reusing and
/// extending the memo of base streams. Results are in request order.
pub fn score_reusing<B: Backend>(
    model: &Transformer<B>,
    requests: &[Request],
    opts: &ScoreOptions,
    cut: &Cut,
) -> Result<(Vec<Scored>, ReuseStats)> {
    let requests = prepared(requests, opts.max_length)?;
    if cut.cut > model.num_layers() {
        anyhow::bail!(
            "cut at {} is beyond the model's {} layers",
            cut.cut,
            model.num_layers()
        );
    }
    // unique full sequences: context + continuation[..-1]
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut seq_of = Vec::with_capacity(requests.len());
    for r in &requests {
        let mut s = r.context.clone();
        s.extend_from_slice(&r.continuation[..r.continuation.len() - 1]);
        let n = seqs.len();
        let i = *index.entry(s.clone()).or_insert(n);
        if i == n {
            seqs.push(s);
        }
        seq_of.push(i);
    }
    let mut requests_of: Vec<Vec<usize>> = vec![Vec::new(); seqs.len()];
    for (q, &i) in seq_of.iter().enumerate() {
        requests_of[i].push(q);
    }
    let fp = fingerprint(&seqs);
    let known = if budget_bytes() > 0 {
        lookup(&cut.base, &fp, cut.cut)
    } else {
        None
    };
    let from = known.as_ref().map(|k| k.0).unwrap_or(0);
    // x(cut) goes to the host only when the memo can keep it
    let keep = from < cut.cut && budget_bytes() > 0;
    let hidden = model.config.hidden_size;

    // batches of sequence indices, longest first
    let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
    let batches = length_batches(&lengths, opts.batch_size);
    let known_rows = known.as_ref().map(|k| &k.1);
    let run = |batch_idx: &Vec<usize>| -> Result<(Vec<(usize, Vec<f32>)>, Vec<(usize, Scored)>)> {
        let mut cut_rows = Vec::new();
        let mut scores = Vec::new();
        {
            let rows: Vec<Vec<u32>> = batch_idx.iter().map(|&i| seqs[i].clone()).collect();
            let tb = TokenBatch::right_padded(&rows, opts.pad_id);
            let (b, t) = (tb.batch, tb.seq);
            // x(from) [b, t, hidden]: stored rows (zero-padded; padding sits after every real
            // token, so causal attention never reads it) or the embedding
            let x = match known_rows {
                Some(stored) => {
                    let mut data = vec![0f32; b * t * hidden];
                    for (r, &i) in batch_idx.iter().enumerate() {
                        let row = &stored[i];
                        data[r * t * hidden..r * t * hidden + row.len()].copy_from_slice(row);
                    }
                    Tensor::<B, 3>::from_data(TensorData::new(data, [b, t, hidden]), &model.device)
                        .cast(model.dtype)
                }
                None => model.embed(tb.to_tensor::<B>(&model.device)),
            };
            let x = model.run_layers(x, from, cut.cut); // x(cut) [b, t, hidden]
            if keep {
                let flat = to_f32_vec(x.clone())?;
                for (r, &i) in batch_idx.iter().enumerate() {
                    let len = seqs[i].len();
                    cut_rows.push((i, flat[r * t * hidden..(r * t + len) * hidden].to_vec()));
                }
            }
            let x = model.run_layers(x, cut.cut, model.num_layers()); // x(L) [b, t, hidden]
                                                                      // every continuation token of every request whose sequence is in this batch
            let mut flat = Vec::new();
            let mut targets = Vec::new();
            let mut owners = Vec::new();
            for (r, &i) in batch_idx.iter().enumerate() {
                for &q in &requests_of[i] {
                    let req = &requests[q];
                    let start = req.context.len() - 1;
                    for (j, &tok) in req.continuation.iter().enumerate() {
                        flat.push((r * t + start + j) as i64);
                        targets.push(tok as i64);
                        owners.push(q);
                    }
                }
            }
            let (values, greedy) = target_logprobs(model, x, flat, targets)?;
            let mut acc: std::collections::BTreeMap<usize, Scored> = Default::default();
            for ((q, v), g) in owners.into_iter().zip(values).zip(greedy) {
                let s = acc.entry(q).or_insert(Scored {
                    loglik: 0.0,
                    greedy: true,
                });
                s.loglik += v as f64;
                s.greedy &= g;
            }
            scores.extend(acc);
        }
        Ok((cut_rows, scores))
    };
    let parts = in_batches(&batches, opts.workers, run)?;
    let mut cut_rows: Vec<Option<Vec<f32>>> = vec![None; seqs.len()];
    let mut scores: Vec<Option<Scored>> = vec![None; requests.len()];
    for (rows, sc) in parts {
        for (i, row) in rows {
            cut_rows[i] = Some(row);
        }
        for (q, s) in sc {
            scores[q] = Some(s);
        }
    }
    let stored = keep
        && store(
            &cut.base,
            fp,
            cut.cut,
            cut_rows
                .into_iter()
                .map(|r| r.expect("every sequence ran"))
                .collect(),
        );
    Ok((
        scores
            .into_iter()
            .map(|s| s.expect("every request scored"))
            .collect(),
        ReuseStats {
            from_boundary: from,
            stored,
        },
    ))
}
