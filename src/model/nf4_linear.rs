//! An NF4-quantised frozen base weight on a Burn device (QLoRA): u8 codes and the
//! double-dequantised absmax per block, dequantised blockwise at every use. Burn has no NF4
//! type: the code book is a 16-entry lookup and the codes a u8 tensor. The codec itself
//! (bitsandbytes-exact) is formats::nf4.

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::formats::nf4::{Nf4Host, BLOCK, NF4};

/// An NF4 weight on a Burn device: u8 codes and the double-dequantised absmax per block.
#[derive(Debug, Clone)]
pub struct Nf4Weight<B: Backend> {
    /// [out, in] (Hugging Face layout of the quantised matrix)
    pub shape: [usize; 2],
    /// [out * in], one code per element: u8 where the backend supports 8-bit integers, else
    /// i32 (wgpu: WGSL has no 8-bit integers)
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
        if n % BLOCK != 0 {
            bail!("NF4 on a device needs whole blocks of {BLOCK}; the matrix has {n} values");
        }
        let codes = if B::supports_dtype(device, DType::U8) {
            Tensor::from_data(TensorData::new(q.codes(), [n]), (device, DType::U8))
        } else {
            let wide: Vec<i32> = q.codes().into_iter().map(i32::from).collect();
            Tensor::from_data(TensorData::new(wide, [n]), (device, DType::I32))
        };
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
        // i32 indices: WGSL (wgpu) has no 64-bit integers, and every backend accepts i32
        let codes = self.codes.clone().cast(DType::I32);
        let values = self
            .book
            .clone()
            .select(0, codes)
            .reshape([o * i / BLOCK, BLOCK]);
        (values * self.absmax.clone()).reshape([o, i])
    }
}
