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
    /// The sliding-window layers' own tables (Gemma-3: rope_local_base_freq, unscaled).
    local: Option<Box<Rope>>,
}

/// transformers' default inverse frequencies: 1 / base ** (arange(0, dim, 2).float() / dim), f32.
fn default_inv_freq(dim: usize, base: f64) -> Vec<f32> {
    let base = base as f32;
    (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect()
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        // the rotated part of each head: all of it, or the first partial_rotary_factor (Phi)
        let dim = cfg.rotary_dim();
        let local = cfg.rope_local_theta.map(|theta| {
            Box::new(Rope {
                inv_freq: default_inv_freq(dim, theta),
                local: None,
            })
        });
        let mut inv_freq = default_inv_freq(dim, cfg.rope_theta);
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
        Self { inv_freq, local }
    }

    /// The rotation for rows of `len` tokens, row r at positions starts[r] .. starts[r] + len
    /// (after a cached prefix of starts[r] tokens; 0 from the start): tables expanded to every
    /// (row, position, head) so that the per-layer work is contiguous element-wise products (fast
    /// on every backend), and rotate_half written as a matrix product, which is exact (one
    /// nonzero term per output).
    pub fn for_rows<B: Backend>(
        &self,
        starts: &[usize],
        len: usize,
        heads: &[usize],
        device: &B::Device,
        dtype: DType,
    ) -> RopeBatch<B> {
        let positions: Vec<usize> = starts.iter().flat_map(|&s| s..s + len).collect();
        self.for_positions(&positions, starts.len(), len, heads, device, dtype)
    }

    /// The rotation for `batch` rows of `len` tokens whose positions are given token by token
    /// (row-major): packed rows (`packing::Packing`) each continue their own position.
    pub fn for_positions<B: Backend>(
        &self,
        positions: &[usize],
        batch: usize,
        len: usize,
        heads: &[usize],
        device: &B::Device,
        dtype: DType,
    ) -> RopeBatch<B> {
        assert_eq!(positions.len(), batch * len, "a position per token");
        let local = self
            .local
            .as_ref()
            .map(|l| Box::new(l.for_positions(positions, batch, len, heads, device, dtype)));
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(batch * len * dim);
        let mut sin = Vec::with_capacity(batch * len * dim);
        for &p in positions {
            // transformers: angle = position * inv_freq in float32, then cos/sin
            let row: Vec<f32> = self.inv_freq.iter().map(|&f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|&a| (a as f64).cos() as f32));
                sin.extend(row.iter().map(|&a| (a as f64).sin() as f32));
            }
        }
        // rotate_half(x) = [-x2, x1] = x R with R[j + half, j] = -1 and R[j - half, j] = 1
        let mut r = vec![0f32; dim * dim];
        for j in 0..half {
            r[(j + half) * dim + j] = -1.0;
            r[j * dim + j + half] = 1.0;
        }
        let rotate = Tensor::<B, 2>::from_data(TensorData::new(r, [dim, dim]), (device, dtype));
        let upload = |v: Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v, [batch, len, 1, dim]), (device, dtype))
        };
        let (cos, sin) = (upload(cos), upload(sin));
        let expand = |t: &Tensor<B, 4>, h: usize| -> Tensor<B, 2> {
            // [batch, len, 1, dim] -> [batch, len, h, dim] -> [batch * len * h, dim]
            t.clone()
                .expand([batch, len, h, dim])
                .reshape([batch * len * h, dim])
        };
        let mut by_heads = Vec::new();
        for &h in heads {
            if !by_heads.iter().any(|(hh, _, _)| *hh == h) {
                by_heads.push((h, expand(&cos, h), expand(&sin, h)));
            }
        }
        RopeBatch {
            rotate,
            by_heads,
            local,
        }
    }
}

/// RoPE tables for one (batch, length, position offset).
#[derive(Debug, Clone)]
pub struct RopeBatch<B: Backend> {
    /// [head_dim, head_dim]
    rotate: Tensor<B, 2>,
    /// (heads, cos, sin) with tables [batch * len * heads, head_dim]
    by_heads: Vec<(usize, Tensor<B, 2>, Tensor<B, 2>)>,
    /// The sliding-window layers' tables, when they differ.
    local: Option<Box<RopeBatch<B>>>,
}

impl<B: Backend> RopeBatch<B> {
    /// The tables of a layer: the local ones for sliding-window layers that have their own.
    pub fn for_layer(&self, sliding: bool) -> &RopeBatch<B> {
        match (&self.local, sliding) {
            (Some(l), true) => l,
            _ => self,
        }
    }

    /// Rotate x [batch, len, heads, head_dim] (contiguous) -> same shape. With partial rotary
    /// (tables narrower than head_dim) only the first dimensions of each head turn.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, t, h, d] = x.dims();
        let (_, cos, sin) = self
            .by_heads
            .iter()
            .find(|(hh, _, _)| *hh == h)
            .expect("tables for this head count");
        let r = self.rotate.dims()[0];
        if r < d {
            let pass = x.clone().narrow(3, r, d - r); // [b, t, h, d - r]
            let rot = self.apply(x.narrow(3, 0, r));
            return Tensor::cat(vec![rot, pass], 3);
        }
        let x = x.reshape([b * t * h, d]);
        let rotated = x.clone().matmul(self.rotate.clone());
        (x * cos.clone() + rotated * sin.clone()).reshape([b, t, h, d])
    }
}
