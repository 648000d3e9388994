//! Rotary position embeddings in the half-split ("rotate_half") layout of Hugging Face
//! transformers: for a head vector x = [x1, x2] (two halves), out = x * cos + [-x2, x1] * sin,
//! where cos/sin repeat the frequency table twice. GGUF weights are un-permuted to this layout at
//! load time, so one rotation serves every source.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use super::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rope {
    /// Inverse frequencies, head_dim / 2 of them, computed in f32 as transformers does.
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.head_dim;
        let base = cfg.rope_theta as f32;
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                for f in &mut inv_freq {
                    *f /= *factor as f32;
                }
            }
            Some(RopeScaling::Factors { factors }) => {
                for (f, d) in inv_freq.iter_mut().zip(factors) {
                    *f /= *d as f32;
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, low, high, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_max_position_embeddings as f32,
                );
                let low_freq_wavelen = old / low;
                let high_freq_wavelen = old / high;
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
                    *f = if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        Self { inv_freq }
    }

    /// cos and sin tables for positions start..start+len: each [len, head_dim].
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
        dtype: DType,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(len * dim);
        let mut sin = Vec::with_capacity(len * dim);
        for p in start..start + len {
            let row: Vec<f32> = self.inv_freq.iter().map(|&f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|&a| (a as f64).cos() as f32));
                sin.extend(row.iter().map(|&a| (a as f64).sin() as f32));
            }
        }
        let make = |v: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [len, dim]), (device, dtype))
        };
        (make(cos), make(sin))
    }

    /// Rotate x [batch, heads, len, head_dim] with tables [len, head_dim].
    pub fn apply<B: Backend>(
        x: Tensor<B, 4>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
    ) -> Tensor<B, 4> {
        let [_, _, _, dim] = x.dims();
        let half = dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = cos.clone().unsqueeze::<4>(); // [1, 1, len, dim]
        let sin = sin.clone().unsqueeze::<4>();
        x * cos + rotated * sin
    }
}
