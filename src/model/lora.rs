//! A LoRA adapter on a Burn device: the update scale * dropout(x) A B added to a linear's
//! output, with A [in, r], B [r, out] (PEFT's lora_A^T and lora_B^T).

use burn::tensor::{backend::Backend, module::linear, Distribution, Tensor};

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

impl<B: Backend> LoraAdapter<B> {
    /// x [..., in] -> scale * dropout(x) A B [..., out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = if self.training && self.dropout > 0.0 {
            // inverted dropout, as torch.nn.Dropout
            let keep = Tensor::<B, D>::random(
                x.shape(),
                Distribution::Bernoulli(1.0 - self.dropout),
                &x.device(),
            );
            x * keep / (1.0 - self.dropout)
        } else {
            x
        };
        linear(linear(x, self.a.clone(), None), self.b.clone(), None) * self.scale
    }
}
