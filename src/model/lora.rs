//! A LoRA adapter on a Burn device: the update scale * dropout(x) A B added to a linear's
//! output, with A [in, r], B [r, out] (PEFT's lora_A^T and lora_B^T).

use burn::tensor::{backend::Backend, module::linear, Tensor, TensorData};
use rand::{RngCore, SeedableRng};

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
    /// The dropout masks' seed (this adapter, this micro-batch) and the micro-batch row of the
    /// input's first row: the mask of a row depends on (seed, row) only, so a micro-batch split
    /// into sub-batches on several threads draws the masks one pass over it would.
    pub dropout_seed: u64,
    pub first_row: usize,
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl<B: Backend> LoraAdapter<B> {
    /// x [..., in] -> scale * dropout(x) A B [..., out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = if self.training && self.dropout > 0.0 {
            // inverted dropout, as torch.nn.Dropout: keep with probability 1 - p, scale by
            // 1 / (1 - p); the masks drawn on the host, row by row (see `dropout_seed`)
            let dims = x.dims();
            let per_row: usize = dims[1..].iter().product();
            let threshold = ((1.0 - self.dropout) * 4_294_967_296.0) as u64;
            let mut keep = Vec::with_capacity(dims[0] * per_row);
            for r in 0..dims[0] {
                let row = (self.first_row + r) as u64;
                let mut rng =
                    rand::rngs::SmallRng::seed_from_u64(mix(self.dropout_seed ^ mix(row)));
                keep.extend(
                    (0..per_row).map(|_| ((rng.next_u32() as u64) < threshold) as u8 as f32),
                );
            }
            let keep =
                Tensor::<B, D>::from_data(TensorData::new(keep, dims), (&x.device(), x.dtype()));
            x * keep / (1.0 - self.dropout)
        } else {
            x
        };
        linear(linear(x, self.a.clone(), None), self.b.clone(), None) * self.scale
    }
}
