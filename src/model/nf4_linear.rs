//! An NF4-quantised frozen base weight on a Burn device (QLoRA): 4-bit codes packed eight per
//! 32-bit word (half a byte per value, on every backend: WGSL has no 8-bit integers) and the
//! double-dequantised absmax per block, dequantised blockwise at every use (or once, where the
//! device is the host: `keep_dequantized`). Burn has no NF4
//! type: the code book is a 16-entry lookup. The codec itself (bitsandbytes-exact) is
//! formats::nf4.

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, DType, ElementConversion, Int, Tensor, TensorData};

use crate::formats::nf4::{Nf4Host, BLOCK, NF4};

/// An NF4 weight on a Burn device: packed codes and the double-dequantised absmax per block.
#[derive(Debug, Clone)]
pub struct Nf4Weight<B: Backend> {
    /// The dequantised matrix, kept after its first use when `keep_dequantized` asked for it
    /// (shared by clones: every sub-batch graph of a step reads the same one).
    kept: Option<Arc<OnceLock<Tensor<B, 2>>>>,
    /// [out, in] (Hugging Face layout of the quantised matrix)
    pub shape: [usize; 2],
    codes: Codes<B>,
}

/// Where the codes live and how they are decoded.
#[derive(Debug, Clone)]
enum Codes<B: Backend> {
    /// On the device, decoded by tensor operations.
    Device {
        /// [out * in / 8] i32 words; element 8w + k is bits 4k..4k+3 of word w
        words: Tensor<B, 1, Int>,
        /// [out * in / 64, 1]
        absmax: Tensor<B, 2>,
        /// [16]
        book: Tensor<B, 1>,
    },
    /// The device is the host and computes in f32 (flex): the quantised form itself, decoded on
    /// the host in parallel (flex runs the device decoding's element-wise operations on one
    /// thread), to the same values.
    Host(Arc<Nf4Host>, B::Device),
}

impl<B: Backend> Nf4Weight<B> {
    pub fn from_host(q: &Nf4Host, device: &B::Device, dtype: DType) -> Result<Self> {
        if q.shape.len() != 2 {
            bail!("NF4 weights must be matrices, got shape {:?}", q.shape);
        }
        let n = q.shape[0] * q.shape[1];
        if n % BLOCK != 0 {
            bail!("NF4 on a device needs whole blocks of {BLOCK}; the matrix has {n} values");
        }
        let shape = [q.shape[0], q.shape[1]];
        if dtype == DType::F32 && crate::backend::on_host::<B>(device) {
            return Ok(Self {
                kept: None,
                shape,
                codes: Codes::Host(Arc::new(q.clone()), device.clone()),
            });
        }
        let words = Tensor::from_data(
            TensorData::new(pack_words(&q.codes()), [n / 8]),
            (device, DType::I32),
        );
        let absmax = q.absmax();
        let blocks = absmax.len();
        Ok(Self {
            kept: None,
            shape,
            codes: Codes::Device {
                words,
                absmax: Tensor::from_data(TensorData::new(absmax, [blocks, 1]), (device, dtype)),
                book: Tensor::from_data(TensorData::new(NF4.to_vec(), [16]), (device, dtype)),
            },
        })
    }

    /// The same weight, dequantised once at its first use and kept: where the device is the
    /// host, the autodiff graph of a step holds the dequantised matrix anyway, so keeping it
    /// costs one dense copy of the frozen base and saves dequantising it in every sub-batch of
    /// every step (the values are the same).
    pub fn keep_dequantized(mut self) -> Self {
        self.kept = Some(Arc::new(OnceLock::new()));
        self
    }

    /// The dequantised matrix [out, in].
    pub fn dequantize(&self) -> Tensor<B, 2> {
        match &self.kept {
            Some(kept) => kept.get_or_init(|| self.dequantize_now()).clone(),
            None => self.dequantize_now(),
        }
    }

    fn dequantize_now(&self) -> Tensor<B, 2> {
        let [o, i] = self.shape;
        let (words, absmax, book) = match &self.codes {
            Codes::Host(q, device) => {
                return Tensor::from_data(TensorData::new(q.dequantize(), [o, i]), device);
            }
            Codes::Device {
                words,
                absmax,
                book,
            } => (words, absmax, book),
        };
        // i32 indices: WGSL (wgpu) has no 64-bit integers, and every backend accepts i32;
        // the arithmetic shift's sign bits are masked away
        let nibbles: Vec<Tensor<B, 2, Int>> = (0..8)
            .map(|k| {
                words
                    .clone()
                    .bitwise_right_shift_scalar((4 * k).elem())
                    .bitwise_and_scalar(15.elem())
                    .unsqueeze_dim(1)
            })
            .collect();
        let codes = Tensor::cat(nibbles, 1).reshape([o * i]); // [out * in]
        let values = book
            .clone()
            .select(0, codes)
            .reshape([o * i / BLOCK, BLOCK]);
        (values * absmax.clone()).reshape([o, i])
    }
}

/// Eight 4-bit codes per i32 word, element 8w + k in bits 4k..4k+3 (`codes.len()` a multiple of 8).
fn pack_words(codes: &[u8]) -> Vec<i32> {
    codes
        .chunks_exact(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (k, &code)| w | (u32::from(code & 15) << (4 * k)))
                as i32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_codes_per_word_low_nibble_first() {
        let codes: Vec<u8> = (0..16).map(|i| (i * 7 % 16) as u8).collect();
        let words = pack_words(&codes);
        assert_eq!(words.len(), 2);
        for (j, &c) in codes.iter().enumerate() {
            assert_eq!(
                (words[j / 8] >> (4 * (j % 8))) & 15,
                i32::from(c),
                "element {j}"
            );
        }
        // the top nibble set makes the word negative; the shift and mask still recover it
        assert!(pack_words(&[0, 0, 0, 0, 0, 0, 0, 15])[0] < 0);
    }
}
