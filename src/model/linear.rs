//! A linear projection y = x W + b with W stored as [in, out] (Burn's convention; the Hugging
//! Face [out, in] matrix is transposed once at load). The frozen base weight is dense or NF4
//! (dequantised blockwise at every use, as QLoRA does); an optional LoRA adapter adds
//! scale * dropout(x) A B with A [in, r], B [r, out] (PEFT's lora_A^T and lora_B^T).

use burn::tensor::{backend::Backend, module::linear, Tensor};

use super::lora::LoraAdapter;
use super::nf4_linear::Nf4Weight;
use super::streamed_linear::StreamedWeight;

#[derive(Debug, Clone)]
pub enum BaseWeight<B: Backend> {
    /// [in, out]
    Dense(Tensor<B, 2>),
    Nf4(Nf4Weight<B>),
    /// Read from the model file at each use (layer streaming).
    Streamed(StreamedWeight<B>),
}

#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    pub base: BaseWeight<B>,
    /// [out]
    pub bias: Option<Tensor<B, 1>>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn dense(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            base: BaseWeight::Dense(weight),
            bias,
            lora: None,
        }
    }

    pub fn streamed(weight: StreamedWeight<B>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            base: BaseWeight::Streamed(weight),
            bias,
            lora: None,
        }
    }

    /// The base weight [in, out] (dequantised for NF4, read from the file when streamed).
    pub fn weight(&self) -> Tensor<B, 2> {
        match &self.base {
            BaseWeight::Dense(w) => w.clone(),
            BaseWeight::Nf4(q) => q.dequantize().transpose(),
            BaseWeight::Streamed(s) => s.weight(),
        }
    }

    /// x [..., in] -> [..., out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = linear(x.clone(), self.weight(), self.bias.clone());
        match &self.lora {
            None => y,
            Some(l) => y + l.forward(x),
        }
    }

    pub fn in_features(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(w) => w.dims()[0],
            BaseWeight::Nf4(q) => q.shape[1],
            BaseWeight::Streamed(s) => s.shape[0],
        }
    }

    pub fn out_features(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(w) => w.dims()[1],
            BaseWeight::Nf4(q) => q.shape[0],
            BaseWeight::Streamed(s) => s.shape[1],
        }
    }
}
