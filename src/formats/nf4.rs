//! NF4 ("4-bit NormalFloat") with double quantisation, bitsandbytes-compatible:
//! - the weight, flattened row-major, is cut into blocks of 64; each block's absmax = max |x|;
//!   each x / absmax is mapped to the nearest of the 16 NF4 code values (bitsandbytes' decision
//!   tree: thresholds at the midpoints) and two codes are packed per byte, the first in the
//!   high nibble;
//! - double quantisation: the absmax values minus their mean (the offset) are quantised in blocks
//!   of 256 with bitsandbytes' signed 8-bit dynamic code map, each block with its own f32 scale;
//! - dequantisation: absmax = code8[q] * scale + offset; x = nf4[code] * absmax.
//! A pure codec on host f32 values (no Burn types); the device weight is model::nf4_linear.

use anyhow::{bail, Result};

pub const BLOCK: usize = 64;
pub const BLOCK2: usize = 256;
/// The code of 0.0 in the NF4 book.
pub const NF4_ZERO_CODE: u8 = 7;

/// bitsandbytes' NF4 code book.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' create_dynamic_map(signed=True): 256 sorted values in [-1, 1], in float32.
pub fn dynamic_map_signed() -> Vec<f32> {
    let max_exponent_bits = 7i32;
    let non_sign_bits = 7i32;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let fraction_items = 2usize.pow((i + non_sign_bits - max_exponent_bits) as u32) + 1;
        // torch.linspace(0.1, 1, fraction_items) in float32
        let boundaries: Vec<f32> = (0..fraction_items)
            .map(|k| {
                if fraction_items == 1 {
                    0.1
                } else {
                    let step = (1.0f32 - 0.1f32) / (fraction_items - 1) as f32;
                    linspace_value(0.1, 1.0, step, k, fraction_items)
                }
            })
            .collect();
        // torch: float32 tensor * Python float, computed in float32
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        let means: Vec<f32> = boundaries.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|m| scale * m));
        data.extend(means.iter().map(|m| -scale * m));
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(|a, b| a.total_cmp(b));
    data
}

/// torch.linspace's float32 values: step = (end - start) / (n - 1) in f32; the first half is
/// start + step k, the second half end - step (n - 1 - k), each a fused multiply-add (one rounding,
/// as ATen's vectorised kernel; checked against torch).
fn linspace_value(start: f32, end: f32, step: f32, k: usize, n: usize) -> f32 {
    let halfway = n / 2;
    if k < halfway {
        step.mul_add(k as f32, start)
    } else {
        (-step).mul_add((n - k - 1) as f32, end)
    }
}

/// Midpoints (c_i + c_{i+1}) * 0.5 of a sorted code book, in f32.
fn midpoints(code: &[f32]) -> Vec<f32> {
    code.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect()
}

/// The code of a scaled value: the number of midpoints strictly below it (a value exactly on a
/// midpoint takes the lower code), i.e. the nearest code value.
fn code_of(mids: &[f32], s: f32) -> u8 {
    mids.partition_point(|&m| m < s) as u8
}

/// Blockwise absmax quantisation: per block, absmax = max |x|, s = x * (1 / absmax) (reciprocal
/// then multiply, in f32), code = code_of(s); an all-zero block gets `zero_code`.
fn blockwise(data: &[f32], block: usize, mids: &[f32], zero_code: u8) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(data.len());
    let mut absmax = Vec::with_capacity(data.len().div_ceil(block));
    for chunk in data.chunks(block) {
        let m = chunk.iter().fold(0f32, |m, x| m.max(x.abs()));
        absmax.push(m);
        if m == 0.0 {
            codes.extend(std::iter::repeat(zero_code).take(chunk.len()));
        } else {
            let inv = 1.0f32 / m;
            codes.extend(chunk.iter().map(|&x| code_of(mids, x * inv)));
        }
    }
    (codes, absmax)
}

/// torch.sum of a contiguous float32 CPU tensor, single-threaded, reproduced bit for bit (ATen's
/// cascade sum over 8-lane vectors: rows of 4 vectors into 4 levels of accumulators, levels
/// flushed every 2^max(4, ceil_log2(rows) / 4) rows; then leftovers, lanes and the scalar tail).
/// bitsandbytes takes the double-quantisation offset as torch's float32 mean of the absmax values.
pub fn torch_sum_f32(x: &[f32]) -> f32 {
    let n = x.len();
    let (lanes, scalar_tail) = if n < 8 {
        (1usize, false)
    } else {
        (8usize, true)
    };
    let nvec = n / lanes;
    let rows = nvec / 4;
    let ceil_log2 = |v: usize| {
        if v <= 2 {
            1
        } else {
            (usize::BITS - (v - 1).leading_zeros()) as usize
        }
    };
    let lp = 4.max(ceil_log2(rows) / 4);
    let step = 1usize << lp;
    let lmask = step - 1;
    let vec_at = |j: usize| &x[j * lanes..(j + 1) * lanes];
    let mut acc = vec![vec![vec![0f32; lanes]; 4]; 4]; // [level][k][lane]
    let add_row = |acc: &mut Vec<Vec<Vec<f32>>>, r: usize| {
        for k in 0..4 {
            for (a, v) in acc[0][k].iter_mut().zip(vec_at(4 * r + k)) {
                *a += v;
            }
        }
    };
    let mut i = 0;
    while i + step <= rows {
        for _ in 0..step {
            add_row(&mut acc, i);
            i += 1;
        }
        for j in 1..4 {
            for k in 0..4 {
                for l in 0..lanes {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0;
                }
            }
            if i & (lmask << (j * lp)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        add_row(&mut acc, i);
        i += 1;
    }
    for j in 1..4 {
        for k in 0..4 {
            for l in 0..lanes {
                acc[0][k][l] += acc[j][k][l];
            }
        }
    }
    let mut p = acc[0].clone();
    for r in rows * 4..nvec {
        for (a, v) in p[0].iter_mut().zip(vec_at(r)) {
            *a += v;
        }
    }
    for k in 1..4 {
        for l in 0..lanes {
            p[0][l] += p[k][l];
        }
    }
    if !scalar_tail {
        return 0.0 + p[0][0];
    }
    let mut s = 0f32;
    for &v in &x[nvec * lanes..] {
        s += v;
    }
    for l in 0..lanes {
        s += p[0][l];
    }
    s
}

/// The quantised form of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Host {
    pub shape: Vec<usize>,
    /// Two 4-bit codes per byte, the first element in the high nibble.
    pub packed: Vec<u8>,
    /// 8-bit codes of (absmax - offset), one per block of 64.
    pub absmax_codes: Vec<u8>,
    /// One f32 scale per block of 256 absmax values.
    pub absmax2: Vec<f32>,
    pub offset: f32,
}

impl Nf4Host {
    pub fn quantize(shape: &[usize], data: &[f32]) -> Result<Self> {
        if data.is_empty() {
            bail!("NF4: nothing to quantise");
        }
        let (mut codes, absmax) = blockwise(data, BLOCK, &midpoints(&NF4), NF4_ZERO_CODE);
        if codes.len() % 2 == 1 {
            codes.push(NF4_ZERO_CODE);
        }
        let packed = codes.chunks(2).map(|c| (c[0] << 4) | c[1]).collect();
        let offset = torch_sum_f32(&absmax) / absmax.len() as f32;
        let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let code8 = dynamic_map_signed();
        let zero8 = code8.iter().position(|&c| c == 0.0).unwrap_or(127) as u8;
        let (absmax_codes, absmax2) = blockwise(&centered, BLOCK2, &midpoints(&code8), zero8);
        Ok(Self {
            shape: shape.to_vec(),
            packed,
            absmax_codes,
            absmax2,
            offset,
        })
    }

    /// The per-block absmax after double dequantisation.
    pub fn absmax(&self) -> Vec<f32> {
        let code8 = dynamic_map_signed();
        self.absmax_codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                // two roundings, no fused multiply-add (as bitsandbytes)
                let scaled = std::hint::black_box(code8[q as usize] * self.absmax2[i / BLOCK2]);
                scaled + self.offset
            })
            .collect()
    }

    /// 4-bit codes, one per element.
    pub fn codes(&self) -> Vec<u8> {
        let n: usize = self.shape.iter().product();
        let mut out = Vec::with_capacity(n);
        for &b in &self.packed {
            out.push(b >> 4);
            out.push(b & 0x0F);
        }
        out.truncate(n);
        out
    }

    /// The values in f32, row-major: code book value times its block's absmax (blocks decoded
    /// in parallel).
    pub fn dequantize(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let absmax = self.absmax();
        let n: usize = self.shape.iter().product();
        let mut out = vec![0f32; n];
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, block)| {
                for (j, v) in block.iter_mut().enumerate() {
                    let i = b * BLOCK + j;
                    let byte = self.packed[i / 2];
                    let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                    *v = NF4[code as usize] * absmax[b];
                }
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_book_and_tree_agree() {
        let mids = midpoints(&NF4);
        for (i, &v) in NF4.iter().enumerate() {
            assert_eq!(code_of(&mids, v) as usize, i);
        }
        // on a midpoint: the lower code
        assert_eq!(code_of(&mids, mids[3]), 3);
        let map = dynamic_map_signed();
        assert_eq!(map.len(), 256);
        assert_eq!(map[255], 1.0);
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn round_trip_is_close_and_packs_high_nibble_first() {
        let data: Vec<f32> = (0..128).map(|i| ((i as f32) * 0.37).sin()).collect();
        let q = Nf4Host::quantize(&[2, 64], &data).unwrap();
        assert_eq!(q.packed.len(), 64);
        let m0 = data[..64].iter().fold(0f32, |m, x| m.max(x.abs()));
        let mids = midpoints(&NF4);
        assert_eq!(q.packed[0] >> 4, code_of(&mids, data[0] * (1.0 / m0)));
        assert_eq!(q.packed[0] & 0x0F, code_of(&mids, data[1] * (1.0 / m0)));
        let back = q.dequantize();
        for (a, b) in data.iter().zip(&back) {
            assert!((a - b).abs() < 0.2, "{a} vs {b}");
        }
    }
}
