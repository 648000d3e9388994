//! Surgery on a model, in one place: drop a block of layers, quantise the frozen projections to
//! NF4, attach or merge low-rank (LoRA) updates. The updates are plain host matrices here; the
//! model knows nothing of how they were trained.

use std::ops::Range;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::architecture::Projection;
use super::linear::{BaseWeight, Linear};
use super::lora::LoraAdapter;
use super::nf4_linear::Nf4Weight;
use super::readback::to_f32_vec;
use super::transformer::{DecoderLayer, Transformer};
use crate::formats::host_tensor::transpose;
use crate::formats::nf4::Nf4Host;

/// The layers kept and dropped when the block `block` of a `layers`-layer model is removed
/// (0-based original numbers, in order).
pub fn kept_without(layers: usize, block: Range<usize>) -> Result<(Vec<usize>, Vec<usize>)> {
    if block.start >= block.end || block.end > layers {
        bail!(
            "cannot drop the block [{}, {}) of a {layers}-layer model",
            block.start,
            block.end
        );
    }
    let dropped: Vec<usize> = block.clone().collect();
    let kept: Vec<usize> = (0..layers).filter(|l| !block.contains(l)).collect();
    Ok((kept, dropped))
}

/// The layers kept and dropped when the layers `drop` (any set, e.g. ShortGPT's) are removed.
pub fn kept_without_layers(layers: usize, drop: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut dropped = drop.to_vec();
    dropped.sort_unstable();
    dropped.dedup();
    if dropped.is_empty() || dropped.len() >= layers || dropped.iter().any(|&l| l >= layers) {
        bail!("cannot drop layers {drop:?} of a {layers}-layer model");
    }
    let kept: Vec<usize> = (0..layers).filter(|l| !dropped.contains(l)).collect();
    Ok((kept, dropped))
}

impl<B: Backend> Transformer<B> {
    /// Drop the attention sublayer (keeping the MLP) of the layers whose ORIGINAL numbers are
    /// in `layers` (LLM-Drop).
    pub fn drop_attention(&mut self, layers: &[usize]) -> anyhow::Result<()> {
        for &l in layers {
            let layer = self
                .layers
                .iter_mut()
                .find(|x| x.original_index == l)
                .with_context(|| {
                    format!("cannot drop the attention of layer {l}: the model does not hold it")
                })?;
            layer.attention_dropped = true;
        }
        Ok(())
    }

    /// Drop the half-open block [start, start + n) of the CURRENT layer list.
    pub fn drop_block(&mut self, start: usize, n: usize) -> anyhow::Result<()> {
        if start + n > self.layers.len() {
            anyhow::bail!(
                "cannot drop layers [{start}, {}) of a model with {} layers",
                start + n,
                self.layers.len()
            );
        }
        self.layers.drain(start..start + n);
        self.config = self.config.with_layers(self.layers.len());
        Ok(())
    }
}

/// A low-rank update W += scale * B A of one projection of one layer (index in the model as
/// built, i.e. renumbered after pruning), in PEFT's layout: A [r, in], B [out, r], row-major.
#[derive(Debug, Clone, Copy)]
pub struct LowRankUpdate<'a> {
    pub layer: usize,
    pub projection: Projection,
    pub r: usize,
    pub scale: f64,
    pub in_features: usize,
    pub out_features: usize,
    pub a: &'a [f32],
    pub b: &'a [f32],
    /// Dropout on the adapter's input while training (attach only).
    pub dropout: f64,
}

impl LowRankUpdate<'_> {
    /// A^T [in, r] and B^T [r, out] on the model's device, in its dtype.
    fn device_factors<B: Backend>(&self, model: &Transformer<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (device, dtype) = (&model.device, model.dtype);
        let a = Tensor::<B, 2>::from_data(
            TensorData::new(
                transpose(self.a, self.r, self.in_features),
                [self.in_features, self.r],
            ),
            (device, dtype),
        );
        let b = Tensor::<B, 2>::from_data(
            TensorData::new(
                transpose(self.b, self.out_features, self.r),
                [self.r, self.out_features],
            ),
            (device, dtype),
        );
        (a, b)
    }

    /// Add the update to a host weight [out, in] (row-major), as an exported model stores it.
    pub fn merge_into_host(&self, w: &mut [f32]) {
        let (r, scale) = (self.r, self.scale as f32);
        // W [out, in] += scale * B [out, r] A [r, in]
        for o in 0..self.out_features {
            for k in 0..r {
                let bk = self.b[o * r + k] * scale;
                if bk != 0.0 {
                    let row = &mut w[o * self.in_features..(o + 1) * self.in_features];
                    for (w, a) in row
                        .iter_mut()
                        .zip(&self.a[k * self.in_features..(k + 1) * self.in_features])
                    {
                        *w += bk * a;
                    }
                }
            }
        }
    }
}

fn target<'m, B: Backend>(
    model: &'m mut Transformer<B>,
    layer: usize,
    projection: Projection,
) -> Result<&'m mut Linear<B>> {
    let layers = model.layers.len();
    let arch = model.config.architecture;
    model
        .layers
        .get_mut(layer)
        .with_context(|| format!("no layer {layer} (the model has {layers})"))?
        .projection_mut(projection)
        .with_context(|| format!("{arch:?} layers have no {projection:?} projection"))
}

/// Put the updates into the model as LoRA adapters (Burn tensors); with `trainable`, they
/// require gradients and dropout is active. Returns the (A [in, r], B [r, out]) tensors in order.
pub fn attach_lora<B: Backend>(
    model: &mut Transformer<B>,
    updates: &[LowRankUpdate<'_>],
    trainable: bool,
) -> Result<Vec<(Tensor<B, 2>, Tensor<B, 2>)>> {
    let mut handles = Vec::with_capacity(updates.len());
    for u in updates {
        let (mut a, mut b) = u.device_factors(model);
        if trainable {
            a = a.require_grad();
            b = b.require_grad();
        }
        target(model, u.layer, u.projection)?.lora = Some(LoraAdapter {
            a: a.clone(),
            b: b.clone(),
            scale: u.scale,
            dropout: u.dropout,
            training: trainable,
            dropout_seed: 0,
            first_row: 0,
        });
        handles.push((a, b));
    }
    Ok(handles)
}

/// Seed every adapter's dropout for one micro-batch: adapter (layer, projection) draws from
/// mix(seed, layer, projection), and the model's input rows are the micro-batch's rows
/// first_row.. (a sub-batch of it).
pub fn seed_dropout<B: Backend>(model: &mut Transformer<B>, seed: u64, first_row: usize) {
    use super::lora::mix;
    for layer in &mut model.layers {
        let index = layer.original_index as u64;
        for (k, p) in Projection::ALL.iter().enumerate() {
            if let Some(lora) = layer.projection_mut(*p).and_then(|l| l.lora.as_mut()) {
                lora.dropout_seed = mix(seed ^ mix((index << 8) | k as u64));
                lora.first_row = first_row;
            }
        }
    }
}

/// Merge the updates into dense base weights (for evaluation): W [in, out] += scale * A^T B^T
/// (a streamed weight adds it at each read).
pub fn merge_lora<B: Backend>(
    model: &mut Transformer<B>,
    updates: &[LowRankUpdate<'_>],
) -> Result<()> {
    for u in updates {
        let (a, b) = u.device_factors(model);
        let lin = target(model, u.layer, u.projection)?;
        let base = match &lin.base {
            // merged at each read, with the same operations
            BaseWeight::Streamed(w) => BaseWeight::Streamed(w.plus_low_rank(a, b, u.scale)),
            _ => BaseWeight::Dense(lin.weight() + a.matmul(b) * u.scale),
        };
        *lin = Linear {
            base,
            bias: lin.bias.clone(),
            lora: None,
        };
    }
    Ok(())
}

/// Replace the dense base weights of the given projections of every layer by NF4 (QLoRA quantises
/// all linear layers of the blocks; embeddings, norms and the LM head stay in the compute dtype).
/// `keep_dequantized`: each weight is dequantised once and kept (`Nf4Weight::keep_dequantized`).
pub fn quantize_nf4<B: Backend>(
    model: &mut Transformer<B>,
    projections: &[Projection],
    keep_dequantized: bool,
) -> Result<()> {
    let (device, dtype) = (model.device.clone(), model.dtype);
    for layer in &mut model.layers {
        quantize_layer_nf4(layer, projections, keep_dequantized, &device, dtype)?;
    }
    Ok(())
}

/// `quantize_nf4` for one layer (a model loaded in NF4 quantises each layer as it is built, so
/// that one layer at a time is dense on the device).
pub fn quantize_layer_nf4<B: Backend>(
    layer: &mut DecoderLayer<B>,
    projections: &[Projection],
    keep_dequantized: bool,
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> Result<()> {
    for &p in projections {
        let Some(lin) = layer.projection_mut(p) else {
            continue;
        };
        if let BaseWeight::Dense(w) = &lin.base {
            let [inp, out] = w.dims();
            let data = to_f32_vec(w.clone().transpose())?; // [out, in]
            let q = Nf4Host::quantize(&[out, inp], &data)?;
            let w = Nf4Weight::from_host(&q, device, dtype)?;
            lin.base = BaseWeight::Nf4(if keep_dequantized {
                w.keep_dequantized()
            } else {
                w
            });
        }
    }
    Ok(())
}

/// Every projection of the model's architecture (what QLoRA quantises).
pub fn all_projections<B: Backend>(model: &Transformer<B>) -> Vec<Projection> {
    model
        .config
        .architecture
        .layout()
        .projections
        .iter()
        .map(|s| s.projection)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_block_keeps_the_rest_in_order() {
        let (kept, dropped) = kept_without(6, 2..4).unwrap();
        assert_eq!(kept, vec![0, 1, 4, 5]);
        assert_eq!(dropped, vec![2, 3]);
        assert!(kept_without(6, 5..7).is_err());
        assert!(kept_without(6, 3..3).is_err());
    }

    #[test]
    fn host_merge_adds_scaled_b_times_a() {
        // in = 2, out = 2, r = 1: W += 0.5 * B A
        let (a, b) = ([1.0f32, 2.0], [3.0f32, -1.0]);
        let u = LowRankUpdate {
            layer: 0,
            projection: Projection::Up,
            r: 1,
            scale: 0.5,
            in_features: 2,
            out_features: 2,
            a: &a,
            b: &b,
            dropout: 0.0,
        };
        let mut w = vec![0.0f32; 4];
        u.merge_into_host(&mut w);
        assert_eq!(w, vec![1.5, 3.0, -0.5, -1.0]);
    }
}
