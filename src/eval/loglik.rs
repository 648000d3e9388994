//! Log-likelihoods of continuations given contexts, the way lm-evaluation-harness scores
//! multiple-choice tasks, with the forward passes shared where the mathematics allows:
//!
//! - requests with the same context (the choices of one question) share one forward pass of the
//!   context; a single-token continuation needs nothing more, a longer one runs as a short suffix
//!   on the context's cached keys/values;
//! - with `shared_prefix`, the longest token prefix common to all contexts (an MMLU subject's
//!   few-shot exemplars) is computed once and every context continues it from the cache.
//!
//! The input of a request is (context + continuation)[-(max_length + 1):][:-1], as in the
//! harness; its log-likelihood is the sum of the log-softmax at the continuation tokens.

use std::collections::HashMap;

use anyhow::Result;
use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor, TensorData};

use crate::model::to_f32_vec;
use crate::model::transformer::{gather_rows, PrefixCache};
use crate::model::{TokenBatch, Transformer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub loglik: f64,
    /// Every continuation token is the argmax of its distribution.
    pub greedy: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    pub batch_size: usize,
    pub workers: usize,
    pub shared_prefix: bool,
    pub max_length: usize,
    pub pad_id: u32,
}

/// Requests with one context.
pub(crate) struct Group {
    pub context: Vec<u32>,
    pub members: Vec<usize>,
}

/// Requests cut to the maximum length, grouped by identical context (groups in order of first
/// appearance, members in request order).
pub(crate) struct Grouped {
    pub requests: Vec<Request>,
    pub groups: Vec<Group>,
}

impl Grouped {
    /// Requests with the same context share it (its keys/values serve every continuation).
    pub fn new(requests: &[Request], max_length: usize) -> Result<Self> {
        Self::by(requests, max_length, |r| r.context.clone())
    }

    /// Each distinct full sequence, context + continuation[..-1], on its own (as the harness
    /// feeds the model, identical sequences once): no context shared between choices.
    pub fn full_sequences(requests: &[Request], max_length: usize) -> Result<Self> {
        Self::by(requests, max_length, |r| {
            let mut k = r.context.clone();
            k.push(u32::MAX); // the context's end: keys of different splits never collide
            k.extend_from_slice(&r.continuation[..r.continuation.len() - 1]);
            k
        })
    }

    fn by(
        requests: &[Request],
        max_length: usize,
        key: impl Fn(&Request) -> Vec<u32>,
    ) -> Result<Self> {
        let requests = prepared(requests, max_length)?;
        let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match index.get(&key(r)) {
                Some(&g) => groups[g].members.push(i),
                None => {
                    index.insert(key(r), groups.len());
                    groups.push(Group {
                        context: r.context.clone(),
                        members: vec![i],
                    });
                }
            }
        }
        Ok(Self { requests, groups })
    }

    /// The tokens a continuation runs as after its context (all but its last token); empty for
    /// a single-token continuation, which the context's last position scores.
    pub fn suffix(&self, request: usize) -> &[u32] {
        let c = &self.requests[request].continuation;
        &c[..c.len() - 1]
    }
}

/// Residual-stream rows at one boundary: per group its context's positions, per request with a
/// multi-token continuation its suffix's positions ([len * hidden] each, row-major; None for
/// requests without a suffix).
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamRows {
    pub contexts: Vec<Vec<f32>>,
    pub suffixes: Vec<Option<Vec<f32>>>,
}

impl StreamRows {
    pub fn bytes(&self) -> usize {
        let n: usize = self.contexts.iter().map(Vec::len).sum::<usize>()
            + self.suffixes.iter().flatten().map(Vec::len).sum::<usize>();
        n * 4
    }
}

/// Where a scoring pass starts and what it keeps: the decoder layers run from boundary `from`
/// (rows of x(from) given in `known`, or the embedding when `from` is 0), and x(capture) is
/// returned for every context and suffix when `capture` is set (from <= capture <= layers).
#[derive(Clone, Copy)]
pub(crate) struct Streams<'a> {
    pub from: usize,
    pub known: Option<&'a StreamRows>,
    pub capture: Option<usize>,
}

impl Streams<'_> {
    /// From the embedding, nothing kept.
    pub const PLAIN: Streams<'static> = Streams {
        from: 0,
        known: None,
        capture: None,
    };
}

/// What one batch of groups produced: (request index, score), and the captured rows
/// (group index, rows) and (request index, suffix rows).
type ChunkOut = (
    Vec<(usize, Scored)>,
    Vec<(usize, Vec<f32>)>,
    Vec<(usize, Vec<f32>)>,
);

/// Minimum shared prefix worth caching (shorter prefixes are recomputed).
const MIN_SHARED_PREFIX: usize = 16;

pub(crate) fn truncate(r: &Request, max_length: usize) -> Request {
    let total = r.context.len() + r.continuation.len();
    if total <= max_length + 1 {
        return r.clone();
    }
    let drop = (total - (max_length + 1)).min(r.context.len().saturating_sub(1));
    Request {
        context: r.context[drop..].to_vec(),
        continuation: r.continuation.clone(),
    }
}

/// Log-probabilities of `targets` at rows of x(L) [b, t, hidden] selected by flat indices.
pub(crate) fn target_logprobs<B: Backend>(
    model: &Transformer<B>,
    x: Tensor<B, 3>,
    flat: Vec<i64>,
    targets: Vec<i64>,
) -> Result<(Vec<f32>, Vec<bool>)> {
    if flat.is_empty() {
        return Ok((vec![], vec![]));
    }
    let n = flat.len();
    let device = &model.device;
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [n]), device);
    let logits = model.head(gather_rows(x, &idx)); // [n, vocab]
    let logp = log_softmax(crate::model::transformer::to_f32(logits), 1); // f32
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(targets.clone(), [n, 1]), device);
    let values = to_f32_vec(logp.clone().gather(1, tgt))?;
    let argmax = logp
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let greedy = argmax.iter().zip(&targets).map(|(a, t)| a == t).collect();
    Ok((values, greedy))
}

/// x(from) [rows, t, hidden] of right-padded rows: the given stream rows (zero-padded: padding
/// sits after every real token, so causal attention never reads it), or the embedding.
fn start_rows<B: Backend>(
    model: &Transformer<B>,
    batch: &TokenBatch,
    known: Option<Vec<&Vec<f32>>>,
) -> Tensor<B, 3> {
    let Some(rows) = known else {
        return model.embed(batch.to_tensor::<B>(&model.device));
    };
    let (b, t, hidden) = (batch.batch, batch.seq, model.config.hidden_size);
    let mut data = vec![0f32; b * t * hidden];
    for (r, row) in rows.iter().enumerate() {
        data[r * t * hidden..r * t * hidden + row.len()].copy_from_slice(row);
    }
    Tensor::<B, 3>::from_data(TensorData::new(data, [b, t, hidden]), &model.device)
        .cast(model.dtype)
}

/// Each row's real positions of x [rows, t, hidden], as host values.
fn real_rows<B: Backend>(x: Tensor<B, 3>, lengths: &[usize]) -> Result<Vec<Vec<f32>>> {
    let [_, t, hidden] = x.dims();
    let flat = to_f32_vec(x)?;
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(r, &len)| flat[r * t * hidden..(r * t + len) * hidden].to_vec())
        .collect())
}

/// Score one batch of groups (their contexts, then the multi-token continuations as suffixes on
/// the contexts' keys/values), optionally continuing a shared prefix (then from the embedding,
/// nothing captured).
fn score_groups<B: Backend>(
    model: &Transformer<B>,
    grouped: &Grouped,
    chunk: &[usize],
    shared: Option<(&PrefixCache<B>, usize)>,
    streams: Streams,
    opts: &ScoreOptions,
) -> Result<ChunkOut> {
    let requests = &grouped.requests;
    let groups: Vec<&Group> = chunk.iter().map(|&g| &grouped.groups[g]).collect();
    let layers = model.num_layers();
    let capture = streams.capture.unwrap_or(streams.from);
    let skip = shared.map(|(_, p)| p).unwrap_or(0);
    let rows: Vec<Vec<u32>> = groups.iter().map(|g| g.context[skip..].to_vec()).collect();
    let batch = TokenBatch::right_padded(&rows, opts.pad_id);
    // contexts: x(L), their keys/values (when a continuation runs after them), x(capture)
    let multi = groups.iter().any(|g| {
        g.members
            .iter()
            .any(|&m| requests[m].continuation.len() > 1)
    });
    let mut captured_contexts = Vec::new();
    let (x, cache) = match shared {
        Some((prefix, _)) => {
            assert!(
                streams.from == 0 && streams.capture.is_none(),
                "a shared prefix starts at the embedding"
            );
            (
                model.suffix_pass(prefix, &vec![0; rows.len()], &batch),
                None,
            )
        }
        None => {
            let known = streams
                .known
                .map(|k| chunk.iter().map(|&g| &k.contexts[g]).collect());
            let x = start_rows(model, &batch, known);
            let mut cache = PrefixCache::empty(streams.from, &batch.lengths, batch.seq);
            let x = model.prefix_layers(x, &mut cache, capture, multi);
            if streams.capture.is_some() {
                captured_contexts = chunk
                    .iter()
                    .copied()
                    .zip(real_rows(x.clone(), &batch.lengths)?)
                    .collect();
            }
            let x = model.prefix_layers(x, &mut cache, layers, multi);
            (x, Some(cache))
        }
    };
    // first continuation token of every request: at the last context position
    let mut flat = Vec::new();
    let mut targets = Vec::new();
    let mut owners = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let last = (gi * batch.seq + rows[gi].len() - 1) as i64;
        for &m in &g.members {
            flat.push(last);
            targets.push(requests[m].continuation[0] as i64);
            owners.push(m);
        }
    }
    let (values, greedy) = target_logprobs(model, x, flat, targets)?;
    let mut scores: HashMap<usize, Scored> = HashMap::new();
    for ((m, v), g) in owners.into_iter().zip(values).zip(greedy) {
        scores.insert(
            m,
            Scored {
                loglik: v as f64,
                greedy: g,
            },
        );
    }
    // longer continuations: the rest runs as suffixes on the contexts' cache, one row per
    // distinct suffix of a context (`suffix_owner`: the requests it serves)
    let mut suffix_rows: Vec<Vec<u32>> = Vec::new();
    let mut prefix_of = Vec::new();
    let mut suffix_owner: Vec<Vec<usize>> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let first_row = suffix_rows.len();
        for &m in &g.members {
            if requests[m].continuation.len() > 1 {
                let suffix = grouped.suffix(m);
                match suffix_rows[first_row..].iter().position(|r| r == suffix) {
                    Some(r) => suffix_owner[first_row + r].push(m),
                    None => {
                        suffix_rows.push(suffix.to_vec());
                        prefix_of.push(gi);
                        suffix_owner.push(vec![m]);
                    }
                }
            }
        }
    }
    let mut captured_suffixes = Vec::new();
    if !suffix_rows.is_empty() {
        let cache = cache.ok_or_else(|| {
            anyhow::anyhow!("multi-token continuations cannot continue a shared prefix")
        })?;
        let sb = TokenBatch::right_padded(&suffix_rows, opts.pad_id);
        let known = streams.known.map(|k| {
            suffix_owner
                .iter()
                .map(|ms| k.suffixes[ms[0]].as_ref().expect("stored suffix rows"))
                .collect()
        });
        let x = start_rows(model, &sb, known);
        let x = model.suffix_layers(x, &sb.lengths, &cache, &prefix_of, streams.from, capture);
        if streams.capture.is_some() {
            for (ms, row) in suffix_owner.iter().zip(real_rows(x.clone(), &sb.lengths)?) {
                captured_suffixes.extend(ms.iter().map(|&m| (m, row.clone())));
            }
        }
        let x = model.suffix_layers(x, &sb.lengths, &cache, &prefix_of, capture, layers);
        let mut flat = Vec::new();
        let mut targets = Vec::new();
        let mut owners = Vec::new();
        for (r, ms) in suffix_owner.iter().enumerate() {
            for &m in ms {
                let cont = &requests[m].continuation;
                for j in 0..cont.len() - 1 {
                    flat.push((r * sb.seq + j) as i64);
                    targets.push(cont[j + 1] as i64);
                    owners.push(m);
                }
            }
        }
        let (values, greedy) = target_logprobs(model, x, flat, targets)?;
        for ((m, v), g) in owners.into_iter().zip(values).zip(greedy) {
            let s = scores.get_mut(&m).expect("first token scored");
            s.loglik += v as f64;
            s.greedy &= g;
        }
    }
    let mut members: Vec<usize> = groups
        .iter()
        .flat_map(|g| g.members.iter().copied())
        .collect();
    members.sort_unstable();
    Ok((
        members.into_iter().map(|m| (m, scores[&m])).collect(),
        captured_contexts,
        captured_suffixes,
    ))
}

fn common_prefix_len(groups: &[Group]) -> usize {
    let Some(first) = groups.first() else {
        return 0;
    };
    let mut n = first.context.len();
    for g in &groups[1..] {
        n = n.min(
            first
                .context
                .iter()
                .zip(&g.context)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    n
}

/// The requests cut to `max_length` (from the left, as the harness does), each checked to have a
/// context and a continuation.
pub fn prepared(requests: &[Request], max_length: usize) -> Result<Vec<Request>> {
    let requests: Vec<Request> = requests.iter().map(|r| truncate(r, max_length)).collect();
    for (i, r) in requests.iter().enumerate() {
        if r.context.is_empty() || r.continuation.is_empty() {
            anyhow::bail!("request {i} has an empty context or continuation");
        }
    }
    Ok(requests)
}

/// Score every request; results are in request order.
pub fn score<B: Backend>(
    model: &Transformer<B>,
    requests: &[Request],
    opts: &ScoreOptions,
) -> Result<Vec<Scored>> {
    let grouped = Grouped::new(requests, opts.max_length)?;
    let groups = &grouped.groups;
    let single_token = grouped.requests.iter().all(|r| r.continuation.len() == 1);
    let min_ctx = groups.iter().map(|g| g.context.len()).min().unwrap_or(0);
    let shared_len = if opts.shared_prefix && single_token && groups.len() > 1 {
        common_prefix_len(groups).min(min_ctx.saturating_sub(1))
    } else {
        0
    };
    if shared_len < MIN_SHARED_PREFIX {
        return Ok(score_streams(model, &grouped, Streams::PLAIN, opts)?.0);
    }
    let batch = TokenBatch::right_padded(&[groups[0].context[..shared_len].to_vec()], opts.pad_id);
    let shared = model.prefix_pass(&batch).1;
    let lengths: Vec<usize> = groups.iter().map(|g| g.context.len()).collect();
    let batches = length_batches(&lengths, opts.batch_size);
    let parts = in_batches(&batches, opts.workers, |chunk| {
        score_groups(
            model,
            &grouped,
            chunk,
            Some((&shared, shared_len)),
            Streams::PLAIN,
            opts,
        )
    })?;
    Ok(in_request_order(
        grouped.requests.len(),
        parts.into_iter().map(|p| p.0),
    ))
}

/// Score every request of `grouped` from `streams.from` on, returning the scores in request
/// order and, when `streams.capture` is set, x(capture) of every context and suffix.
pub(crate) fn score_streams<B: Backend>(
    model: &Transformer<B>,
    grouped: &Grouped,
    streams: Streams,
    opts: &ScoreOptions,
) -> Result<(Vec<Scored>, Option<StreamRows>)> {
    let lengths: Vec<usize> = grouped.groups.iter().map(|g| g.context.len()).collect();
    let batches = length_batches(&lengths, opts.batch_size);
    let parts = in_batches(&batches, opts.workers, |chunk| {
        score_groups(model, grouped, chunk, None, streams, opts)
    })?;
    let mut rows = streams.capture.map(|_| StreamRows {
        contexts: vec![Vec::new(); grouped.groups.len()],
        suffixes: vec![None; grouped.requests.len()],
    });
    let mut scores = Vec::with_capacity(parts.len());
    for (sc, contexts, suffixes) in parts {
        if let Some(rows) = rows.as_mut() {
            for (g, r) in contexts {
                rows.contexts[g] = r;
            }
            for (m, r) in suffixes {
                rows.suffixes[m] = Some(r);
            }
        }
        scores.push(sc);
    }
    Ok((
        in_request_order(grouped.requests.len(), scores.into_iter()),
        rows,
    ))
}

/// Per-batch (request index, score) lists as one list in request order.
fn in_request_order(n: usize, parts: impl Iterator<Item = Vec<(usize, Scored)>>) -> Vec<Scored> {
    let mut scores = vec![None; n];
    for (i, s) in parts.flatten() {
        scores[i] = Some(s);
    }
    scores
        .into_iter()
        .map(|s| s.expect("every request scored"))
        .collect()
}

/// Run `f` on every item, `workers` threads taking the next item from a shared counter (so a
/// slow item does not hold up the others); results in item order, a panicking worker as an error.
pub(crate) fn in_batches<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = workers.clamp(1, items.len().max(1));
    if workers == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = crate::workers::scoped_map("scoring", &vec![(); workers], |_, _| {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= items.len() {
                return Ok(done);
            }
            done.push((i, f(&items[i])?));
        }
    });
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for part in done {
        for (i, r) in part? {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect())
}

/// The least share of a batch's positions that are real tokens (the rest is padding).
const MIN_BATCH_FILL: f64 = 0.75;

/// Indices 0..lengths.len() longest first (ties in order), cut into batches of at most
/// `batch_size` rows of similar length: a row joins the batch only while the batch's real tokens
/// stay at least `MIN_BATCH_FILL` of its padded positions (the harness sorts its requests by
/// length the same way; a few-shot subject's questions of 60 and 300 tokens would otherwise
/// compute mostly padding).
pub(crate) fn length_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let (mut real, mut longest) = (0usize, 0usize);
    for i in order {
        let len = lengths[i];
        let full = current.len() >= batch_size.max(1);
        let sparse =
            ((real + len) as f64) < MIN_BATCH_FILL * ((current.len() + 1) * longest) as f64;
        if !current.is_empty() && (full || sparse) {
            batches.push(std::mem::take(&mut current));
            real = 0;
        }
        if current.is_empty() {
            longest = len;
        }
        current.push(i);
        real += len;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Score several request sets (an MMLU task's subjects), results per set in request order.
///
/// Without `shared_prefix` the sets are one pool: batches then mix sets and fill up. With it,
/// each set keeps its own shared prefix (a subject's few-shot exemplars) and the sets are spread
/// over the workers, each worker running whole sets one after another: a single long prefix
/// cannot be split across threads, but two subjects' prefixes can run side by side.
/// `on_set_done` is called once per finished set (for progress), from any worker.
pub fn score_sets<B: Backend>(
    model: &Transformer<B>,
    sets: &[Vec<Request>],
    opts: &ScoreOptions,
    on_set_done: &(dyn Fn() + Sync),
) -> Result<Vec<Vec<Scored>>> {
    if !opts.shared_prefix {
        let all: Vec<Request> = sets.iter().flatten().cloned().collect();
        let mut scored = score(model, &all, opts)?.into_iter();
        let out = sets
            .iter()
            .map(|set| scored.by_ref().take(set.len()).collect())
            .collect();
        sets.iter().for_each(|_| on_set_done());
        return Ok(out);
    }
    let workers = opts.workers.clamp(1, sets.len().max(1));
    let one = ScoreOptions {
        workers: 1,
        ..*opts
    };
    let run_set = |set: &Vec<Request>| -> Result<Vec<Scored>> {
        let r = score(model, set, if workers == 1 { opts } else { &one });
        on_set_done();
        r
    };
    in_batches(sets, workers, run_set)
}

/// One single-token request per (context, candidate), contexts outermost.
pub fn next_token_requests(contexts: &[Vec<u32>], candidates: &[u32]) -> Vec<Request> {
    contexts
        .iter()
        .flat_map(|c| {
            candidates.iter().map(move |&t| Request {
                context: c.clone(),
                continuation: vec![t],
            })
        })
        .collect()
}

/// Log-softmax at the last context token for a few candidate tokens (the paper's scoring:
/// next-token probabilities of the answer tokens). Returns [contexts][candidates].
pub fn next_token_logprobs<B: Backend>(
    model: &Transformer<B>,
    contexts: &[Vec<u32>],
    candidates: &[u32],
    opts: &ScoreOptions,
) -> Result<Vec<Vec<f64>>> {
    let scored = score(model, &next_token_requests(contexts, candidates), opts)?;
    Ok(scored
        .chunks(candidates.len())
        .map(|c| c.iter().map(|s| s.loglik).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::length_batches;

    #[test]
    fn batches_are_longest_first_full_and_mostly_real_tokens() {
        // equal lengths: plain chunks of batch_size, in order
        assert_eq!(
            length_batches(&[5, 5, 5, 5, 5], 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        // sorted longest first; 300 and 120 would be 70% real tokens: separate batches; 30
        // after 120, 110, 100, 60 would make 70% too
        let lengths = [60, 300, 120, 100, 110, 30];
        let batches = length_batches(&lengths, 8);
        assert_eq!(batches, vec![vec![1], vec![2, 4, 3, 0], vec![5]]);
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            let real: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(real as f64 >= 0.75 * (b.len() * longest) as f64);
        }
        // every index exactly once
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
    }
}
