//! Causal self-attention computed on the host for CPU inference (Burn's flex backend in f32):
//! grouped-query, optionally continuing a cached prefix, optionally within a sliding window.
//!
//! Burn's CPU attention takes a boolean mask and computes every (query, key) score before
//! masking, on the calling thread, with a scalar `exp`. Here the masks are not tensors but the
//! rule itself (causal, after a prefix of known real length, inside a window), so each tile of
//! queries multiplies only the key ranges some query of the tile can see (about half the work of
//! a causal pass), the rep query heads of a key/value head read their keys in place (no copies
//! per head, no transposes: q, k, v stay in the projections' [batch, seq, heads, head_dim]
//! layout), tiles run on rayon's pool, and the softmax uses a vectorised `exp`.
//!
//! Training (autodiff) and GPU backends keep Burn's attention; `usable` says which applies.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rayon::prelude::*;

/// Queries per tile (per head). A tile's scores are [rep * QUERY_TILE, visible keys] in f32.
const QUERY_TILE: usize = 64;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Dims<'a> {
    /// New tokens per row. The rows lie back to back in q, k, v and the output: row r's tokens
    /// start at the sum of the lengths before it (right-padded rows: every length the padded
    /// one; packed rows: their real lengths, no padding computed).
    pub lengths: &'a [usize],
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// A cached prefix the new tokens continue: keys and values [cache rows, len, kv_heads,
/// head_dim] after RoPE.
#[derive(Debug, Clone, Copy)]
pub struct Prefix<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Padded length of the cached rows.
    pub len: usize,
    /// Per batch row: the cache row it continues.
    pub row_of: &'a [usize],
    /// Per batch row: the real tokens of its prefix (its new tokens sit at positions real ..).
    pub real: &'a [usize],
}

/// Whether `attention_tensors` serves this tensor: flex (not under autodiff) in f32.
pub fn usable<B: Backend>(x: &Tensor<B, 4>) -> bool {
    x.dtype() == DType::F32 && B::name(&x.device()) == "flex"
}

/// The attention of the new tokens, as a tensor: q [b, t, heads, hd], k and v [b, t, kv_heads,
/// hd] (contiguous, after RoPE), the prefix as host slices -> [b, t, heads * hd]. With `packed`
/// (b = 1), the single row holds rows of these lengths back to back (`Dims::lengths`).
pub fn attention_tensors<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    prefix: Option<Prefix>,
    packed: Option<&[usize]>,
    window: Option<usize>,
    scale: f32,
) -> Tensor<B, 3> {
    let device = q.device();
    let [batch, len, heads, head_dim] = q.dims();
    let kv_heads = k.dims()[2];
    let padded = vec![len; batch];
    let lengths = match packed {
        Some(lengths) => {
            assert_eq!(batch, 1, "packed rows lie in one batch row");
            assert_eq!(
                lengths.iter().sum::<usize>(),
                len,
                "packed lengths cover the row"
            );
            lengths
        }
        None => &padded,
    };
    let dims = Dims {
        lengths,
        heads,
        kv_heads,
        head_dim,
    };
    let out = attention(
        &host_values(q),
        &host_values(k),
        &host_values(v),
        dims,
        prefix,
        window,
        scale,
    );
    Tensor::from_data(
        TensorData::new(out, [batch, len, heads * head_dim]),
        &device,
    )
}

/// A tensor's values on the host (f32; without a copy where the tensor is the data's only owner).
pub fn host_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("f32 data of an f32 tensor")
}

/// softmax(q k^T * scale) v over the visible keys: query i of row r (position real_r + i) sees
/// the real prefix keys of its row and the new keys j <= i of its row, and with a window w only
/// keys at positions > its own - w. q [tokens, heads, hd], k and v [tokens, kv_heads, hd] ->
/// [tokens, heads * hd], the rows' tokens back to back (`Dims::lengths`). Query head h reads
/// key/value head h / (heads / kv_heads).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    prefix: Option<Prefix>,
    window: Option<usize>,
    scale: f32,
) -> Vec<f32> {
    let row_width = d.heads * d.head_dim;
    let tokens: usize = d.lengths.iter().sum();
    assert_eq!(q.len(), tokens * row_width, "q shape");
    assert_eq!(k.len(), tokens * d.kv_heads * d.head_dim, "k shape");
    assert_eq!(v.len(), k.len(), "v shape");
    let rows = d.lengths.len();
    if let Some(p) = &prefix {
        assert_eq!(p.row_of.len(), rows, "one cache row per batch row");
        assert_eq!(p.real.len(), rows, "one prefix length per batch row");
        assert!(
            p.real.iter().all(|&r| r <= p.len),
            "real prefix within the cache"
        );
    }
    let mut out = vec![0f32; tokens * row_width];
    if out.is_empty() {
        return out;
    }
    // each row's output and its first token
    let mut out_rows = Vec::with_capacity(rows);
    let (mut rest, mut start) = (out.as_mut_slice(), 0);
    for &len in d.lengths {
        let (this, tail) = rest.split_at_mut(len * row_width);
        out_rows.push((start, this));
        (rest, start) = (tail, start + len);
    }
    out_rows
        .into_par_iter()
        .enumerate()
        .for_each(|(row, (start, out_row))| {
            let len = d.lengths[row];
            out_row
                .par_chunks_mut(QUERY_TILE * row_width)
                .enumerate()
                .for_each(|(tile, out_tile)| {
                    let i0 = tile * QUERY_TILE;
                    let i1 = (i0 + QUERY_TILE).min(len);
                    let task = Tile {
                        row,
                        start,
                        i0,
                        i1,
                        q,
                        k,
                        v,
                        d,
                        prefix,
                        window,
                        scale,
                    };
                    task.run(out_tile);
                });
        });
    out
}

/// Queries i0..i1 of one batch row, all heads.
struct Tile<'a> {
    row: usize,
    /// The row's first token in q, k, v.
    start: usize,
    i0: usize,
    i1: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    d: Dims<'a>,
    prefix: Option<Prefix<'a>>,
    window: Option<usize>,
    scale: f32,
}

/// A contiguous range of key columns [lo, hi) of a score row.
#[derive(Debug, Clone, Copy)]
struct Cols {
    lo: usize,
    hi: usize,
}

impl Tile<'_> {
    /// Writes out_tile [i1 - i0, heads * hd].
    fn run(&self, out_tile: &mut [f32]) {
        let d = self.d;
        let (ti, hd) = (self.i1 - self.i0, d.head_dim);
        let rep = d.heads / d.kv_heads;
        let kv_width = d.kv_heads * hd;
        let row_width = d.heads * hd;
        // the prefix part: keys [p_lo, p_hi) of the cache row, the new part: keys [n_lo, n_hi)
        let (offset, cache_row, p_len) = match &self.prefix {
            Some(p) => (p.real[self.row], p.row_of[self.row], p.len),
            None => (0, 0, 0),
        };
        // the lowest key position the tile's first query sees (all of them without a window)
        let lowest =
            |first_pos: usize| self.window.map_or(0, |w| (first_pos + 1).saturating_sub(w));
        let p_hi = offset;
        let p_lo = lowest(offset + self.i0).min(p_hi);
        let n_hi = self.i1;
        let n_lo = lowest(offset + self.i0).saturating_sub(offset).min(self.i0);
        let (pc, nc) = (p_hi - p_lo, n_hi - n_lo);
        let cols = pc + nc;
        let mut scores = vec![0f32; rep * ti * cols];
        for g in 0..d.kv_heads {
            for r in 0..rep {
                let h = g * rep + r;
                // q rows (i0.., head h): stride heads * hd
                let q_ptr = self.q[((self.start + self.i0) * d.heads + h) * hd..].as_ptr();
                let s = &mut scores[r * ti * cols..(r + 1) * ti * cols];
                if pc > 0 {
                    let p = self.prefix.as_ref().expect("a prefix part needs a prefix");
                    let k_ptr = p.k[((cache_row * p_len + p_lo) * d.kv_heads + g) * hd..].as_ptr();
                    // s[:, 0..pc] = q k_prefix^T * scale
                    unsafe {
                        scores_gemm(
                            s.as_mut_ptr(),
                            cols,
                            q_ptr,
                            row_width,
                            k_ptr,
                            kv_width,
                            ti,
                            pc,
                            hd,
                            self.scale,
                        )
                    };
                }
                let k_ptr = self.k[((self.start + n_lo) * d.kv_heads + g) * hd..].as_ptr();
                // s[:, pc..] = q k_new^T * scale
                unsafe {
                    scores_gemm(
                        s[pc..].as_mut_ptr(),
                        cols,
                        q_ptr,
                        row_width,
                        k_ptr,
                        kv_width,
                        ti,
                        nc,
                        hd,
                        self.scale,
                    )
                };
                for qi in 0..ti {
                    let i = self.i0 + qi;
                    let pos = offset + i;
                    let low = lowest(pos);
                    let visible_prefix = Cols {
                        lo: low.clamp(p_lo, p_hi) - p_lo,
                        hi: pc,
                    };
                    let visible_new = Cols {
                        lo: pc + low.saturating_sub(offset).clamp(n_lo, i + 1) - n_lo,
                        hi: pc + i + 1 - n_lo,
                    };
                    softmax_row(
                        &mut s[qi * cols..(qi + 1) * cols],
                        visible_prefix,
                        visible_new,
                    );
                }
                // out rows (i0.., head h) = p v
                let o_ptr = out_tile[h * hd..].as_mut_ptr();
                if pc > 0 {
                    let p = self.prefix.as_ref().expect("a prefix part needs a prefix");
                    let v_ptr = p.v[((cache_row * p_len + p_lo) * d.kv_heads + g) * hd..].as_ptr();
                    unsafe {
                        values_gemm(
                            o_ptr,
                            row_width,
                            s.as_ptr(),
                            cols,
                            v_ptr,
                            kv_width,
                            ti,
                            pc,
                            hd,
                            false,
                        )
                    };
                }
                let v_ptr = self.v[((self.start + n_lo) * d.kv_heads + g) * hd..].as_ptr();
                unsafe {
                    values_gemm(
                        o_ptr,
                        row_width,
                        s[pc..].as_ptr(),
                        cols,
                        v_ptr,
                        kv_width,
                        ti,
                        nc,
                        hd,
                        pc > 0,
                    )
                };
            }
        }
    }
}

/// dst [m, n] (row stride dst_rs) = scale * lhs [m, k] (row stride lhs_rs) x rhs^T, rhs [n, k]
/// (row stride rhs_rs).
///
/// # Safety
/// The pointers address the stated extents.
#[allow(clippy::too_many_arguments)]
unsafe fn scores_gemm(
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        rhs_rs as isize, // column j of rhs^T is row j of rhs
        1,
        0.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// dst [m, n] (row stride dst_rs) (+)= lhs [m, k] (row stride lhs_rs) x rhs [k, n] (row stride
/// rhs_rs).
///
/// # Safety
/// The pointers address the stated extents.
#[allow(clippy::too_many_arguments)]
unsafe fn values_gemm(
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    if m == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        1,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// In place: the softmax of the row over the visible columns (two ranges), zero elsewhere.
fn softmax_row(row: &mut [f32], a: Cols, b: Cols) {
    let max = max_of(&row[a.lo..a.hi]).max(max_of(&row[b.lo..b.hi]));
    let sum = exp_minus(&mut row[a.lo..a.hi], max) + exp_minus(&mut row[b.lo..b.hi], max);
    let inv = 1.0 / sum;
    row[..a.lo].fill(0.0);
    row[a.hi..b.lo].fill(0.0);
    row[b.hi..].fill(0.0);
    for x in &mut row[a.lo..a.hi] {
        *x *= inv;
    }
    for x in &mut row[b.lo..b.hi] {
        *x *= inv;
    }
}

/// The largest element (-inf for none), in eight lanes so that it vectorises.
pub fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = if *x > *l { *x } else { *l };
        }
    }
    rest.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The sum, in eight lanes so that it vectorises.
fn sum_of(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += *x;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// x <- exp(x - max) for every element, returning their sum.
pub fn exp_minus(xs: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for
            return unsafe { exp_minus_avx2(xs, max) };
        }
    }
    exp_minus_portable(xs, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_minus_avx2(xs: &mut [f32], max: f32) -> f32 {
    exp_minus_portable(xs, max)
}

#[inline(always)]
fn exp_minus_portable(xs: &mut [f32], max: f32) -> f32 {
    for x in xs.iter_mut() {
        *x = exp_f32(*x - max);
    }
    sum_of(xs)
}

/// exp(x) for x <= 0 with a relative error below 2e-7 (Cephes' expf polynomial after the
/// reduction x = n ln 2 + r, |r| <= ln 2 / 2), 0 below -87.3 (where f32 underflows); written
/// with plain arithmetic and bit operations so that loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.3;
    let x = x.max(-87.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * r2 + r + 1.0;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: every score, masked by the rule, softmax in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d: Dims,
        prefix: Option<(&[f32], &[f32], usize, &[usize], &[usize])>,
        window: Option<usize>,
        scale: f32,
    ) -> Vec<f32> {
        let hd = d.head_dim;
        let rep = d.heads / d.kv_heads;
        let tokens: usize = d.lengths.iter().sum();
        let mut out = vec![0f32; tokens * d.heads * hd];
        for (b, &len) in d.lengths.iter().enumerate() {
            let start: usize = d.lengths[..b].iter().sum();
            let (off, crow, plen) = prefix.map_or((0, 0, 0), |p| (p.4[b], p.3[b], p.2));
            for h in 0..d.heads {
                let g = h / rep;
                for i in 0..len {
                    let pos = off + i;
                    let qv = &q[((start + i) * d.heads + h) * hd..][..hd];
                    // (key position, key, value)
                    let mut keys: Vec<(usize, &[f32], &[f32])> = Vec::new();
                    if let Some(p) = prefix {
                        for j in 0..off {
                            let at = ((crow * plen + j) * d.kv_heads + g) * hd;
                            keys.push((j, &p.0[at..at + hd], &p.1[at..at + hd]));
                        }
                    }
                    for j in 0..=i {
                        let at = ((start + j) * d.kv_heads + g) * hd;
                        keys.push((off + j, &k[at..at + hd], &v[at..at + hd]));
                    }
                    let keys: Vec<_> = keys
                        .into_iter()
                        .filter(|(p, _, _)| window.is_none_or(|w| pos - p < w))
                        .collect();
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|(_, kk, _)| {
                            qv.iter().zip(*kk).map(|(a, b)| (a * b) as f64).sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let o = &mut out[((start + i) * d.heads + h) * hd..][..hd];
                    for (w, (_, _, vv)) in e.iter().zip(&keys) {
                        for (oo, x) in o.iter_mut().zip(*vv) {
                            *oo += (w / z * *x as f64) as f32;
                        }
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // a small LCG: deterministic values in [-1, 1)
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "largest difference {worst} > {tol}");
    }

    #[test]
    fn exp_matches_std_within_2e_7_relative() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001;
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn causal_grouped_query_attention_matches_the_definition() {
        // 130 new tokens: three query tiles, the last one partial; 6 heads on 2 kv heads; two
        // rows of one length (right-padded), then packed rows of different lengths
        let cases: [(Option<usize>, &[usize]); 6] = [
            (None, &[130, 130]),
            (Some(7), &[130, 130]),
            (None, &[1, 1]),
            (Some(100), &[70, 70]),
            (None, &[130, 1, 64, 65]),
            (Some(7), &[3, 130]),
        ];
        for (window, lengths) in cases {
            let d = Dims {
                lengths,
                heads: 6,
                kv_heads: 2,
                head_dim: 8,
            };
            let tokens: usize = lengths.iter().sum();
            let q = values(tokens * 6 * 8, 1);
            let k = values(tokens * 2 * 8, 2);
            let v = values(tokens * 2 * 8, 3);
            let got = attention(&q, &k, &v, d, None, window, 0.35);
            let want = naive(&q, &k, &v, d, None, window, 0.35);
            assert_close(&got, &want, 1e-5);
        }
    }

    #[test]
    fn attention_after_a_prefix_matches_the_definition() {
        // three batch rows continuing cache rows 1, 0, 1 whose real lengths are 90, 3, 90 (the
        // cache is padded to 100); with and without a window that cuts into the prefix
        let plen = 100;
        let pk = values(2 * plen * 2 * 8, 4);
        let pv = values(2 * plen * 2 * 8, 5);
        let row_of = [1, 0, 1];
        let real = [90, 3, 90];
        // right-padded rows of one length, then packed rows of their own lengths (the second
        // row's 130 tokens take three query tiles)
        let cases: [(Option<usize>, &[usize]); 6] = [
            (None, &[70, 70, 70]),
            (Some(20), &[70, 70, 70]),
            (None, &[1, 1, 1]),
            (Some(5), &[3, 3, 3]),
            (None, &[70, 130, 1]),
            (Some(20), &[5, 130, 64]),
        ];
        for (window, lengths) in cases {
            let d = Dims {
                lengths,
                heads: 4,
                kv_heads: 2,
                head_dim: 8,
            };
            let tokens: usize = lengths.iter().sum();
            let q = values(tokens * 4 * 8, 6);
            let k = values(tokens * 2 * 8, 7);
            let v = values(tokens * 2 * 8, 8);
            let prefix = Prefix {
                k: &pk,
                v: &pv,
                len: plen,
                row_of: &row_of,
                real: &real,
            };
            let got = attention(&q, &k, &v, d, Some(prefix), window, 0.3);
            let want = naive(
                &q,
                &k,
                &v,
                d,
                Some((&pk, &pv, plen, &row_of, &real)),
                window,
                0.3,
            );
            assert_close(&got, &want, 1e-5);
        }
    }
}
