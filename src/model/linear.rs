//! A linear projection y = x W + b with W stored as [in, out] (Burn's convention; the Hugging
//! Face [out, in] matrix is transposed once at load). The frozen base weight is dense or NF4
//! (dequantised blockwise at every use, as QLoRA does); an optional LoRA adapter adds
//! scale * dropout(x) A B with A [in, r], B [r, out] (PEFT's lora_A^T and lora_B^T).

use burn::tensor::{backend::Backend, module::linear, Distribution, Tensor};

use super::nf4::Nf4Weight;

#[derive(Debug, Clone)]
pub enum BaseWeight<B: Backend> {
    /// [in, out]
    Dense(Tensor<B, 2>),
    Nf4(Nf4Weight<B>),
}

#[derive(Debug, Clone)]
pub struct LoraAdapter<B: Backend> {
    /// [in, r] (PEFT lora_A.weight is [r, in])
    pub a: Tensor<B, 2>,
    /// [r, out] (PEFT lora_B.weight is [out, r])
    pub b: Tensor<B, 2>,
    /// lora_alpha / r
    pub scale: f64,
    /// Dropout on the adapter's input, applied only while training.
    pub dropout: f64,
    pub training: bool,
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

    /// The base weight [in, out] (dequantised for NF4).
    pub fn weight(&self) -> Tensor<B, 2> {
        match &self.base {
            BaseWeight::Dense(w) => w.clone(),
            BaseWeight::Nf4(q) => q.dequantize().transpose(),
        }
    }

    /// x [..., in] -> [..., out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = linear(x.clone(), self.weight(), self.bias.clone());
        match &self.lora {
            None => y,
            Some(l) => {
                let x = if l.training && l.dropout > 0.0 {
                    // inverted dropout, as torch.nn.Dropout
                    let keep = Tensor::<B, D>::random(
                        x.shape(),
                        Distribution::Bernoulli(1.0 - l.dropout),
                        &x.device(),
                    );
                    x * keep / (1.0 - l.dropout)
                } else {
                    x
                };
                y + linear(linear(x, l.a.clone(), None), l.b.clone(), None) * l.scale
            }
        }
    }

    pub fn in_features(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(w) => w.dims()[0],
            BaseWeight::Nf4(q) => q.shape[1],
        }
    }

    pub fn out_features(&self) -> usize {
        match &self.base {
            BaseWeight::Dense(w) => w.dims()[1],
            BaseWeight::Nf4(q) => q.shape[0],
        }
    }
}
