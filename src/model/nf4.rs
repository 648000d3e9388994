//! NF4 ("4-bit NormalFloat") with double quantisation, bitsandbytes-compatible:
//! - the weight, flattened row-major, is cut into blocks of 64; each block's absmax = max |x|;
//!   each x / absmax is mapped to the nearest of the 16 NF4 code values (bitsandbytes' decision
//!   tree: thresholds at the midpoints) and two codes are packed per byte, the first in the
//!   high nibble;
//! - double quantisation: the absmax values minus their mean (the offset) are quantised in blocks
//!   of 256 with bitsandbytes' signed 8-bit dynamic code map, each block with its own f32 scale;
//! - dequantisation: absmax = code8[q] * scale + offset; x = nf4[code] * absmax.
//! Burn has no NF4 type: the code book is a 16-entry lookup and the codes a u8 tensor.

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

pub const BLOCK: usize = 64;
pub const BLOCK2: usize = 256;

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

/// bitsandbytes' dQuantizeNF4 decision tree (x already divided by the block's absmax).
pub fn quantize_nf4_value(x: f32) -> u8 {
    if x > 0.039_790_15 {
        if x > 0.389_312_54 {
            if x > 0.642_786_9 {
                if x > 0.861_478_4 {
                    15
                } else {
                    14
                }
            } else if x > 0.501_663_4 {
                13
            } else {
                12
            }
        } else if x > 0.203_521_25 {
            if x > 0.292_013_77 {
                11
            } else {
                10
            }
        } else if x > 0.120_255_25 {
            9
        } else {
            8
        }
    } else if x > -0.339_679_43 {
        if x > -0.137_911_73 {
            if x > -0.045_525_018 {
                7
            } else {
                6
            }
        } else if x > -0.234_607_4 {
            5
        } else {
            4
        }
    } else if x > -0.610_632_9 {
        if x > -0.459_995_27 {
            3
        } else {
            2
        }
    } else if x > -0.848_096_4 {
        1
    } else {
        0
    }
}

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
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i);
        for w in boundaries.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push((scale * mean as f64) as f32);
        }
        for w in boundaries.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push((-(scale) * mean as f64) as f32);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(|a, b| a.total_cmp(b));
    data
}

/// torch.linspace's float32 values (it fills the first half from the start and the second half
/// from the end).
fn linspace_value(start: f32, end: f32, step: f32, k: usize, n: usize) -> f32 {
    let halfway = n / 2;
    if k < halfway {
        start + step * k as f32
    } else {
        end - step * (n - k - 1) as f32
    }
}

/// Index of the code value closest to x (ties to the lower index).
fn closest(code: &[f32], x: f32) -> u8 {
    let mut best = 0usize;
    let mut best_d = f32::INFINITY;
    for (i, &c) in code.iter().enumerate() {
        let d = (c - x).abs();
        if d < best_d {
            best = i;
            best_d = d;
        }
    }
    best as u8
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
        let n = data.len();
        if n % BLOCK != 0 {
            bail!("NF4: {n} values are not a whole number of blocks of {BLOCK}");
        }
        let blocks = n / BLOCK;
        let mut codes = Vec::with_capacity(n);
        let mut absmax = Vec::with_capacity(blocks);
        for block in data.chunks(BLOCK) {
            let m = block.iter().fold(0f32, |m, x| m.max(x.abs()));
            absmax.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            codes.extend(block.iter().map(|&x| quantize_nf4_value(x * inv)));
        }
        let packed = codes
            .chunks(2)
            .map(|c| (c[0] << 4) | c.get(1).copied().unwrap_or(0))
            .collect();
        let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / blocks as f64) as f32;
        let code8 = dynamic_map_signed();
        let mut absmax_codes = Vec::with_capacity(blocks);
        let mut absmax2 = Vec::new();
        for chunk in absmax.chunks(BLOCK2) {
            let centered: Vec<f32> = chunk.iter().map(|a| a - offset).collect();
            let m = centered.iter().fold(0f32, |m, x| m.max(x.abs()));
            absmax2.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            absmax_codes.extend(centered.iter().map(|&x| closest(&code8, x * inv)));
        }
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
            .map(|(i, &q)| code8[q as usize] * self.absmax2[i / BLOCK2] + self.offset)
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

    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.absmax();
        self.codes()
            .iter()
            .enumerate()
            .map(|(i, &c)| NF4[c as usize] * absmax[i / BLOCK])
            .collect()
    }
}

/// An NF4 weight on a Burn device: u8 codes and the double-dequantised absmax per block.
#[derive(Debug, Clone)]
pub struct Nf4Weight<B: Backend> {
    /// [out, in] (Hugging Face layout of the quantised matrix)
    pub shape: [usize; 2],
    /// [out * in], one code per element, u8
    codes: Tensor<B, 1, Int>,
    /// [out * in / 64, 1]
    absmax: Tensor<B, 2>,
    /// [16]
    book: Tensor<B, 1>,
}

impl<B: Backend> Nf4Weight<B> {
    pub fn from_host(q: &Nf4Host, device: &B::Device, dtype: DType) -> Result<Self> {
        if q.shape.len() != 2 {
            bail!("NF4 weights must be matrices, got shape {:?}", q.shape);
        }
        let n = q.shape[0] * q.shape[1];
        let codes = Tensor::from_data(TensorData::new(q.codes(), [n]), (device, DType::U8));
        let absmax = q.absmax();
        let blocks = absmax.len();
        Ok(Self {
            shape: [q.shape[0], q.shape[1]],
            codes,
            absmax: Tensor::from_data(TensorData::new(absmax, [blocks, 1]), (device, dtype)),
            book: Tensor::from_data(TensorData::new(NF4.to_vec(), [16]), (device, dtype)),
        })
    }

    /// The dequantised matrix [out, in].
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let [o, i] = self.shape;
        let codes = self.codes.clone().cast(DType::I64);
        let values = self
            .book
            .clone()
            .select(0, codes)
            .reshape([o * i / BLOCK, BLOCK]);
        (values * self.absmax.clone()).reshape([o, i])
    }
}

/// Replace the dense base weights of every projection of every layer by NF4 (QLoRA quantises all
/// linear layers of the blocks; embeddings, norms and the LM head stay in the compute dtype).
pub fn quantize_linears<B: Backend>(model: &mut crate::model::Transformer<B>) -> Result<()> {
    let device = model.device.clone();
    let dtype = model.dtype;
    for layer in &mut model.layers {
        for lin in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ] {
            if let crate::model::linear::BaseWeight::Dense(w) = &lin.base {
                let [inp, out] = w.dims();
                let data = crate::commands::forward::to_f32_vec(w.clone().transpose())?; // [out, in]
                let q = Nf4Host::quantize(&[out, inp], &data)?;
                lin.base = crate::model::linear::BaseWeight::Nf4(Nf4Weight::from_host(
                    &q, &device, dtype,
                )?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_book_and_tree_agree() {
        for (i, &v) in NF4.iter().enumerate() {
            assert_eq!(quantize_nf4_value(v) as usize, i);
        }
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
        assert_eq!(q.packed[0] >> 4, quantize_nf4_value(data[0] * (1.0 / m0)));
        assert_eq!(q.packed[0] & 0x0F, quantize_nf4_value(data[1] * (1.0 / m0)));
        let back = q.dequantize();
        for (a, b) in data.iter().zip(&back) {
            assert!((a - b).abs() < 0.2, "{a} vs {b}");
        }
    }
}
