//! A frozen linear projection y = x W + b with W stored as [in, out] (Burn's convention; the
//! Hugging Face [out, in] matrix is transposed once at load).

use burn::tensor::{backend::Backend, module::linear, Tensor};

#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// [in, out]
    pub weight: Tensor<B, 2>,
    /// [out]
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// x [..., in] -> [..., out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.weight.clone(), self.bias.clone())
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }
}
