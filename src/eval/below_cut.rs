//! Reuse of the residual stream below the cut across a sweep.
//!
//! A pruned model that keeps layers 0..cut of its base unchanged (no adapter) computes, on a
//! given input, exactly the base model's x(cut) below the cut. Over a sweep of pruned models
//! evaluated on the same requests, that stream is computed once per boundary: it is kept in a
//! process-wide memo (host memory, under a byte budget, least recently used evicted first), and
//! a later model with a deeper cut continues from the deepest boundary already known instead of
//! starting again at the embedding.
//!
//! Requests are scored as everywhere else (contexts once, shared by their choices; multi-token
//! continuations as suffixes on the contexts' keys/values); what is stored at a boundary is
//! x(boundary) at every context and suffix position. Used for requests scored without a
//! shared few-shot prefix.

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use burn::tensor::backend::Backend;
use sha2::{Digest, Sha256};

use super::loglik::{score_streams, Grouped, Request, ScoreOptions, Scored, StreamRows, Streams};
use crate::model::Transformer;

/// Where the streams come from: the base model (its source identity, backend and dtype), the
/// number of leading base layers the model keeps unchanged, and the base's number of layers.
#[derive(Debug, Clone)]
pub struct Cut {
    pub base: String,
    pub cut: usize,
    /// The base model's layers: x(base_layers) is never kept (no model continues from there).
    pub base_layers: usize,
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
    rows: Arc<StreamRows>,
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

/// Identifies a set of requests (after truncation) by their contexts and continuations.
fn fingerprint(grouped: &Grouped) -> [u8; 32] {
    let mut h = Sha256::new();
    for r in &grouped.requests {
        for part in [&r.context, &r.continuation] {
            h.update((part.len() as u64).to_le_bytes());
            for t in part {
                h.update(t.to_le_bytes());
            }
        }
    }
    h.finalize().into()
}

/// The deepest stored boundary <= cut for these requests, with its rows (shared, not copied).
fn lookup(base: &str, fp: &[u8; 32], cut: usize) -> Option<(usize, Arc<StreamRows>)> {
    let mut m = memo().lock().expect("stream memo lock");
    m.clock += 1;
    let now = m.clock;
    let e = m
        .entries
        .iter_mut()
        .filter(|e| e.base == base && &e.fingerprint == fp && e.boundary <= cut)
        .max_by_key(|e| e.boundary)?;
    e.last_used = now;
    Some((e.boundary, Arc::clone(&e.rows)))
}

fn store(base: &str, fp: [u8; 32], boundary: usize, rows: StreamRows) -> bool {
    let bytes = rows.bytes();
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
        rows: Arc::new(rows),
        bytes,
        last_used: now,
    });
    true
}

/// The bytes of x(boundary) at every context and suffix position of `grouped` (what a capture
/// stores).
fn capture_bytes(grouped: &Grouped, hidden: usize) -> usize {
    let contexts: usize = grouped.groups.iter().map(|g| g.context.len()).sum();
    let suffixes: usize = (0..grouped.requests.len())
        .map(|m| grouped.suffix(m).len())
        .sum();
    (contexts + suffixes) * hidden * 4
}

/// Score `requests` on a model whose first `cut.cut` layers are its base's, reusing and
/// extending the memo of base streams. Results are in request order.
pub fn score_reusing<B: Backend>(
    model: &Transformer<B>,
    requests: &[Request],
    opts: &ScoreOptions,
    cut: &Cut,
) -> Result<(Vec<Scored>, ReuseStats)> {
    if cut.cut > model.num_layers() {
        anyhow::bail!(
            "cut at {} is beyond the model's {} layers",
            cut.cut,
            model.num_layers()
        );
    }
    let grouped = Grouped::new(requests, opts.max_length)?;
    let fp = fingerprint(&grouped);
    let known = if budget_bytes() > 0 {
        lookup(&cut.base, &fp, cut.cut)
    } else {
        None
    };
    let from = known.as_ref().map(|k| k.0).unwrap_or(0);
    // x(cut) goes to the host only when the memo can keep it, and not at the base model's last
    // boundary (no model of the sweep continues from there)
    let keep = from < cut.cut && cut.cut < cut.base_layers && budget_bytes() > 0;
    if keep {
        // the rows about to be captured count against the budget while they are computed: the
        // memo and the new rows together stay within it (the rows this call continues from are
        // the memo's most recently used, evicted last)
        let mut m = memo().lock().expect("stream memo lock");
        m.evict_to(capture_bytes(&grouped, model.config.hidden_size));
    }
    let streams = Streams {
        from,
        known: known.as_ref().map(|k| k.1.as_ref()),
        capture: keep.then_some(cut.cut),
    };
    let (scores, rows) = score_streams(model, &grouped, streams, opts)?;
    let stored = match rows {
        Some(rows) => store(&cut.base, fp, cut.cut, rows),
        None => false,
    };
    Ok((
        scores,
        ReuseStats {
            from_boundary: from,
            stored,
        },
    ))
}
