//! Partial fine-tuning ("Reassessing Layer Pruning in LLMs", Lu et al.): after pruning, train
//! the LM head and every tensor of the last k kept layers (projections with their biases, norms)
//! in full rank; everything else stays frozen. With tied embeddings the LM head IS the
//! embedding matrix, as in PyTorch: it is trained through both of its uses.
//!
//! The parameters live on the host in the model's layout (linear weights [in, out]); they are
//! uploaded with gradients before each micro-batch, and written out in Hugging Face names and
//! layout (original layer numbers) as the healed model's replaced tensors.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor, TensorData};

use super::gradients::{loss_and_gradients, GradientPass};
use super::train::{add_gradient, Trainable};
use crate::formats::host_tensor::{transpose, HostTensor};
use crate::model::architecture::{NormRole, Projection};
use crate::model::linear::{BaseWeight, Linear};
use crate::model::{to_f32_vec, Transformer};

/// Where a trained tensor sits in the model (layer positions in the pruned model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Site {
    Weight(usize, Projection),
    Bias(usize, Projection),
    NormWeight(usize, NormRole),
    NormBias(usize, NormRole),
    /// The embedding matrix [vocab, hidden], which is also the LM head (tied embeddings).
    TiedEmbedding,
    /// The untied LM head, [hidden, vocab] in the model.
    Head,
    HeadBias,
}

/// One trained tensor: its Hugging Face name, its place, its shape and values in the model.
#[derive(Debug, Clone)]
pub struct PartialParam {
    pub name: String,
    pub site: Site,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The trained tensors of a partial fine-tune.
#[derive(Debug, Clone)]
pub struct PartialSet {
    pub params: Vec<PartialParam>,
    /// Gemma stores norm weights as w with the forward pass multiplying by 1 + w.
    norm_offset: bool,
}

/// A tensor of the model that takes a gradient.
enum Handle<B: Backend> {
    One(Tensor<B, 1>),
    Two(Tensor<B, 2>),
}

const ALL_NORMS: [NormRole; 6] = [
    NormRole::Input,
    NormRole::AttnOut,
    NormRole::PreMlp,
    NormRole::MlpOut,
    NormRole::Query,
    NormRole::Key,
];

fn norm_tensors<B: Backend>(
    layer: &crate::model::transformer::DecoderLayer<B>,
    role: NormRole,
) -> Option<(Tensor<B, 1>, Option<Tensor<B, 1>>)> {
    let n = match role {
        NormRole::Input => layer.input_norm.as_ref(),
        NormRole::AttnOut => layer.attn_out_norm.as_ref(),
        NormRole::PreMlp => layer.pre_mlp_norm.as_ref(),
        NormRole::MlpOut => layer.mlp_out_norm.as_ref(),
        NormRole::Query => return layer.q_norm.clone().map(|w| (w, None)),
        NormRole::Key => return layer.k_norm.clone().map(|w| (w, None)),
    }?;
    Some((n.weight.clone(), n.bias.clone()))
}

impl PartialSet {
    /// The LM head and every tensor of the last `last_layers` layers of a built (dense) model.
    pub fn from_model<B: Backend>(model: &Transformer<B>, last_layers: usize) -> Result<Self> {
        let cfg = &model.config;
        let layout = cfg.architecture.layout();
        let n = model.num_layers();
        if last_layers == 0 || last_layers > n {
            bail!("partial fine-tuning: last_layers must be in 1..={n}, got {last_layers}");
        }
        if layout.projections.iter().any(|p| p.fused) {
            bail!(
                "partial fine-tuning of a layout with fused q/k/v ({:?}) is not implemented",
                cfg.architecture
            );
        }
        let host = |t: Tensor<B, 2>| -> Result<(Vec<usize>, Vec<f32>)> {
            Ok((t.dims().to_vec(), to_f32_vec(t)?))
        };
        let mut params = Vec::new();
        for pos in n - last_layers..n {
            let layer = &model.layers[pos];
            let orig = layer.original_index;
            // a dropped attention sublayer's tensors take no part in the forward pass: they
            // are not trained (and neither is the input norm of a sequential block, which only
            // the attention reads)
            let attention_part = |p: Projection| {
                matches!(
                    p,
                    Projection::Q | Projection::K | Projection::V | Projection::O
                )
            };
            let unused_norm = |role: NormRole| {
                layer.attention_dropped
                    && match role {
                        NormRole::Query | NormRole::Key | NormRole::AttnOut => true,
                        NormRole::Input => !cfg.parallel_block,
                        _ => false,
                    }
            };
            for p in Projection::ALL {
                if layer.attention_dropped && attention_part(p) {
                    continue;
                }
                let (Some(lin), Some(spec)) = (layer.projection(p), layout.projection(p)) else {
                    continue;
                };
                let BaseWeight::Dense(w) = &lin.base else {
                    bail!("partial fine-tuning needs dense weights (layer {orig} {p:?} is NF4)");
                };
                let (shape, data) = host(w.clone())?;
                params.push(PartialParam {
                    name: layout.projection_tensor(orig, spec, "weight"),
                    site: Site::Weight(pos, p),
                    shape,
                    data,
                });
                if let Some(b) = &lin.bias {
                    params.push(PartialParam {
                        name: layout.projection_tensor(orig, spec, "bias"),
                        site: Site::Bias(pos, p),
                        shape: b.dims().to_vec(),
                        data: to_f32_vec(b.clone())?,
                    });
                }
            }
            for role in ALL_NORMS {
                if unused_norm(role) {
                    continue;
                }
                let (Some((w, b)), Some(spec)) = (norm_tensors(layer, role), layout.norm(role))
                else {
                    continue;
                };
                params.push(PartialParam {
                    name: layout.norm_tensor(orig, spec, "weight"),
                    site: Site::NormWeight(pos, role),
                    shape: w.dims().to_vec(),
                    data: to_f32_vec(w)?,
                });
                if let Some(b) = b {
                    params.push(PartialParam {
                        name: layout.norm_tensor(orig, spec, "bias"),
                        site: Site::NormBias(pos, role),
                        shape: b.dims().to_vec(),
                        data: to_f32_vec(b)?,
                    });
                }
            }
        }
        if cfg.tie_word_embeddings {
            let (shape, data) = host(model.embed_tokens.clone())?;
            params.push(PartialParam {
                name: layout.embed.hf.into(),
                site: Site::TiedEmbedding,
                shape,
                data,
            });
        } else {
            let (shape, data) = host(model.lm_head.clone())?;
            params.push(PartialParam {
                name: layout.lm_head.hf.into(),
                site: Site::Head,
                shape,
                data,
            });
        }
        if let (Some(b), Some((name, _))) = (&model.lm_head_bias, layout.lm_head.bias) {
            params.push(PartialParam {
                name: name.into(),
                site: Site::HeadBias,
                shape: b.dims().to_vec(),
                data: to_f32_vec(b.clone())?,
            });
        }
        Ok(Self {
            params,
            norm_offset: cfg.norm_offset,
        })
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    /// Put the parameters into the model (with gradients when `trainable`); returns the handles
    /// in parameter order.
    fn attach<B: Backend>(
        &self,
        model: &mut Transformer<B>,
        trainable: bool,
    ) -> Result<Vec<Handle<B>>> {
        let (device, dtype) = (model.device.clone(), model.dtype);
        let mut handles = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let data = TensorData::new(p.data.clone(), p.shape.clone());
            let grad = |h: Handle<B>| match h {
                Handle::One(t) if trainable => Handle::One(t.require_grad()),
                Handle::Two(t) if trainable => Handle::Two(t.require_grad()),
                h => h,
            };
            let h = match p.shape.len() {
                1 => grad(Handle::One(Tensor::from_data(data, (&device, dtype)))),
                _ => grad(Handle::Two(Tensor::from_data(data, (&device, dtype)))),
            };
            let missing = || format!("partial fine-tuning: the model has no place for {}", p.name);
            match (&h, p.site) {
                (Handle::Two(w), Site::Weight(pos, proj)) => {
                    let lin = model.layers[pos]
                        .projection_mut(proj)
                        .with_context(missing)?;
                    *lin = Linear::dense(w.clone(), lin.bias.clone());
                }
                (Handle::One(b), Site::Bias(pos, proj)) => {
                    let lin = model.layers[pos]
                        .projection_mut(proj)
                        .with_context(missing)?;
                    lin.bias = Some(b.clone());
                }
                (Handle::One(w), Site::NormWeight(pos, role)) => {
                    set_norm(&mut model.layers[pos], role, w.clone(), false)
                        .with_context(missing)?
                }
                (Handle::One(b), Site::NormBias(pos, role)) => {
                    set_norm(&mut model.layers[pos], role, b.clone(), true).with_context(missing)?
                }
                (Handle::Two(e), Site::TiedEmbedding) => {
                    // one leaf, both uses: the lookup and the head (its transpose)
                    model.embed_tokens = e.clone();
                    model.lm_head = e.clone().transpose();
                }
                (Handle::Two(w), Site::Head) => model.lm_head = w.clone(),
                (Handle::One(b), Site::HeadBias) => model.lm_head_bias = Some(b.clone()),
                _ => bail!(
                    "partial fine-tuning: {} has an unexpected shape {:?}",
                    p.name,
                    p.shape
                ),
            }
            handles.push(h);
        }
        Ok(handles)
    }

    /// The trained tensors in Hugging Face names and layout (linear weights [out, in], Gemma's
    /// norm weights without their offset), for the healed model's replaced tensors.
    pub fn hf_tensors(&self) -> Result<Vec<(String, HostTensor)>> {
        self.params
            .iter()
            .map(|p| {
                let t = match p.site {
                    Site::Weight(..) | Site::Head => {
                        let (r, c) = (p.shape[0], p.shape[1]);
                        HostTensor::new(vec![c, r], transpose(&p.data, r, c))?
                    }
                    Site::NormWeight(..) if self.norm_offset => {
                        HostTensor::new(p.shape.clone(), p.data.iter().map(|w| w - 1.0).collect())?
                    }
                    _ => HostTensor::new(p.shape.clone(), p.data.clone())?,
                };
                Ok((p.name.clone(), t))
            })
            .collect()
    }
}

fn set_norm<B: Backend>(
    layer: &mut crate::model::transformer::DecoderLayer<B>,
    role: NormRole,
    t: Tensor<B, 1>,
    bias: bool,
) -> Option<()> {
    let norm = match role {
        NormRole::Query if !bias => {
            layer.q_norm = Some(t);
            return Some(());
        }
        NormRole::Key if !bias => {
            layer.k_norm = Some(t);
            return Some(());
        }
        NormRole::Input => layer.input_norm.as_mut()?,
        NormRole::AttnOut => layer.attn_out_norm.as_mut()?,
        NormRole::PreMlp => layer.pre_mlp_norm.as_mut()?,
        NormRole::MlpOut => layer.mlp_out_norm.as_mut()?,
        NormRole::Query | NormRole::Key => return None,
    };
    if bias {
        norm.bias = Some(t);
    } else {
        norm.weight = t;
    }
    Some(())
}

impl PartialSet {
    /// One micro-batch's loss and the gradients of loss * loss_scale of the trained tensors,
    /// computed as `pass` says (the trait's `micro_step` with the default pass).
    pub fn micro_step_with<B: AutodiffBackend>(
        &self,
        model: &mut Transformer<B>,
        rows: &[Vec<u32>],
        loss_scale: f64,
        pass: GradientPass,
    ) -> Result<(f64, Vec<Vec<f32>>)> {
        let handles = self.attach(model, true)?;
        // (the head is trained here, so its loss stays in the graph)
        let mut sums: Vec<Option<Vec<f32>>> = vec![None; handles.len()];
        let value = loss_and_gradients(model, rows, loss_scale, pass, &mut |grads| {
            for (h, sum) in handles.iter().zip(sums.iter_mut()) {
                match h {
                    Handle::One(t) => add_gradient(sum, t.grad(grads))?,
                    Handle::Two(t) => add_gradient(sum, t.grad(grads))?,
                }
            }
            Ok(())
        })?;
        let out = sums
            .into_iter()
            .zip(&self.params)
            .map(|(g, p)| g.with_context(|| format!("no gradient for {}", p.name)))
            .collect::<Result<Vec<_>>>()?;
        Ok((value, out))
    }
}

impl Trainable for PartialSet {
    fn param_sizes(&self) -> Vec<usize> {
        self.params.iter().map(|p| p.data.len()).collect()
    }
    fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        self.params.iter_mut().map(|p| &mut p.data).collect()
    }
    fn micro_step<B: AutodiffBackend>(
        &self,
        model: &mut Transformer<B>,
        rows: &[Vec<u32>],
        loss_scale: f64,
        _dropout_seed: u64,
        _first_row: usize,
        checkpointing: bool,
    ) -> Result<(f64, Vec<Vec<f32>>)> {
        // (no dropout in partial fine-tuning)
        self.micro_step_with(
            model,
            rows,
            loss_scale,
            GradientPass::checkpointed(checkpointing),
        )
    }
    fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone(), p.data.as_slice()))
            .collect()
    }
    fn restore(&mut self, tensors: &HashMap<String, Vec<f32>>) -> Result<()> {
        for p in &mut self.params {
            let t = tensors
                .get(&p.name)
                .with_context(|| format!("missing {}", p.name))?;
            if t.len() != p.data.len() {
                bail!("{}: {} values, expected {}", p.name, t.len(), p.data.len());
            }
            p.data = t.clone();
        }
        Ok(())
    }
}
