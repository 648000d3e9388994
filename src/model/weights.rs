//! Weights by Hugging Face tensor name, whatever the file format, and the construction of a
//! Burn `Transformer` from them. GGUF names are mapped to HF names and llama q/k rows are
//! un-permuted here, once, so that the model code sees one layout.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use super::architecture::{NormRole, Projection};
use super::config::ModelConfig;
use super::linear::Linear;
use super::rope::Rope;
use super::streamed_linear::StreamedWeight;
use super::surgery::quantize_layer_nf4;
use super::transformer::{DecoderLayer, Norm, Transformer};
use crate::formats::gguf::GgufFile;
use crate::formats::host_tensor::HostTensor;
use crate::formats::safetensors_dir::SafetensorsSet;

pub enum WeightStore {
    Safetensors(SafetensorsSet),
    Gguf(GgufFile),
    /// Some tensors replaced (a healed model's changed weights, Hugging Face names and layout,
    /// original layer numbers); every other tensor from `base`.
    Overlay {
        top: SafetensorsSet,
        base: Arc<WeightStore>,
    },
}

impl WeightStore {
    pub fn has(&self, hf_name: &str, cfg: &ModelConfig) -> bool {
        match self {
            Self::Safetensors(s) => s.contains(hf_name),
            Self::Gguf(g) => cfg
                .architecture
                .layout()
                .gguf_name(hf_name)
                .is_some_and(|n| g.tensor_info(&n).is_some()),
            Self::Overlay { top, base } => top.contains(hf_name) || base.has(hf_name, cfg),
        }
    }

    /// `get`, then the mapped file's pages the read touched released: what building a model
    /// reads (the model holds its own copy, or reads the tensor again when streamed), so that
    /// the file does not stay resident beside the weights.
    pub fn get_released(&self, hf_name: &str, cfg: &ModelConfig) -> Result<HostTensor> {
        let t = self.get(hf_name, cfg)?;
        self.release(hf_name, cfg);
        Ok(t)
    }

    /// Release the mapped file pages holding a tensor, where this process holds them.
    pub fn release(&self, hf_name: &str, cfg: &ModelConfig) {
        match self {
            Self::Safetensors(s) => s.release(hf_name),
            Self::Gguf(g) => {
                if let Some(n) = cfg.architecture.layout().gguf_name(hf_name) {
                    g.release(&n)
                }
            }
            Self::Overlay { top, base } => {
                if top.contains(hf_name) {
                    top.release(hf_name)
                } else {
                    base.release(hf_name, cfg)
                }
            }
        }
    }

    /// How many tensors the files hold.
    pub fn tensor_count(&self) -> usize {
        match self {
            Self::Safetensors(s) => s.len(),
            Self::Gguf(g) => g.tensors.len(),
            Self::Overlay { base, .. } => base.tensor_count(),
        }
    }

    /// The stored shape of a tensor in Hugging Face layout ([out, in] for a projection),
    /// without reading it.
    pub fn shape(&self, hf_name: &str, cfg: &ModelConfig) -> Option<Vec<usize>> {
        match self {
            Self::Safetensors(s) => s.shape(hf_name),
            Self::Gguf(g) => {
                let name = cfg.architecture.layout().gguf_name(hf_name)?;
                Some(g.tensor_info(&name)?.shape())
            }
            Self::Overlay { top, base } => top.shape(hf_name).or_else(|| base.shape(hf_name, cfg)),
        }
    }

    /// One tensor in Hugging Face layout and naming, as f32; NaN or infinite values are an
    /// error naming the tensor (checked once, here, while converting).
    pub fn get(&self, hf_name: &str, cfg: &ModelConfig) -> Result<HostTensor> {
        if let Self::Overlay { top, base } = self {
            if !top.contains(hf_name) {
                return base.get(hf_name, cfg);
            }
        }
        let t = self.get_unchecked(hf_name, cfg)?;
        let origin = match self {
            Self::Safetensors(s) | Self::Overlay { top: s, .. } => {
                s.file_of(hf_name).unwrap_or(std::path::Path::new("?"))
            }
            Self::Gguf(g) => g.path(),
        };
        t.check_finite(hf_name, origin)?;
        Ok(t)
    }

    fn get_unchecked(&self, hf_name: &str, cfg: &ModelConfig) -> Result<HostTensor> {
        match self {
            Self::Safetensors(s) | Self::Overlay { top: s, .. } => s.tensor_f32(hf_name),
            Self::Gguf(g) => {
                let layout = cfg.architecture.layout();
                let name = layout
                    .gguf_name(hf_name)
                    .with_context(|| format!("no GGUF name for {hf_name}"))?;
                let mut t = g.tensor_f32(&name)?;
                // llama.cpp's Gemma converters store norm weights as 1 + w: back to HF's w
                // (as transformers' GGUF loader does)
                if cfg.norm_offset && layout.is_norm_weight(hf_name) {
                    for w in &mut t.data {
                        *w -= 1.0;
                    }
                }
                // llama.cpp permutes llama q/k for its interleaved RoPE; qwen2 uses NEOX (half-split) as is.
                if layout.gguf_rope_permuted {
                    let heads = layout
                        .parse_projection_tensor(hf_name)
                        .and_then(|(_, spec)| spec.projection.rope_heads(cfg));
                    if let Some(heads) = heads {
                        return if hf_name.ends_with(".bias") {
                            t.unpermute_rope_vector(heads)
                        } else {
                            t.unpermute_rope_rows(heads)
                        };
                    }
                }
                Ok(t)
            }
        }
    }

    /// A short description of the stored tensor types, e.g. "Q4_1 (GGUF)" or "BF16".
    pub fn storage_dtype(&self, cfg: &ModelConfig) -> String {
        match self {
            Self::Safetensors(s) => s
                .dtype(cfg.architecture.layout().embed.hf)
                .unwrap_or_else(|| "?".into()),
            Self::Gguf(g) => {
                let mut counts = std::collections::BTreeMap::new();
                for t in &g.tensors {
                    *counts.entry(t.ggml_type.name()).or_insert(0usize) += 1;
                }
                let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                format!("GGUF {}", parts.join(", "))
            }
            Self::Overlay { base, .. } => base.storage_dtype(cfg),
        }
    }
}

/// Upload a host tensor with a checked shape.
fn upload<B: Backend, const D: usize>(
    t: HostTensor,
    expected: [usize; D],
    name: &str,
    device: &B::Device,
    dtype: DType,
) -> Result<Tensor<B, D>> {
    if t.shape != expected {
        bail!(
            "tensor {name} has shape {:?}, expected {:?}",
            t.shape,
            expected
        );
    }
    Ok(Tensor::from_data(
        TensorData::new(t.data, expected),
        (device, dtype),
    ))
}

/// How a built model holds its layers' projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightStorage {
    /// In the compute precision.
    #[default]
    Dense,
    /// bitsandbytes NF4 with double quantisation (as the paper's authors loaded every model),
    /// dequantised blockwise at each use and computed in the compute precision; embeddings,
    /// norms and the LM head stay in the compute precision. Each layer is quantised as it is
    /// built, so that one layer at a time is dense on the device.
    Nf4,
}

impl WeightStorage {
    pub fn is_dense(&self) -> bool {
        *self == Self::Dense
    }
}

pub struct Loader<'a, B: Backend> {
    pub store: &'a Arc<WeightStore>,
    pub cfg: &'a ModelConfig,
    pub device: &'a B::Device,
    pub dtype: DType,
    /// How the layers' projections are held (NF4: each layer quantised as it is built).
    pub storage: WeightStorage,
    /// Layer streaming: the layers' projections stay in the (mapped) model file and are read,
    /// converted and dropped at each use (`StreamedWeight`); dense storage only.
    pub streamed: bool,
}

/// Reads one projection's weight in Hugging Face layout, [rows, in]: the whole stored tensor,
/// or rows `first..first + rows` of a fused [q; k; v] one. Shareable, for streamed weights.
#[derive(Clone)]
struct ProjectionReader {
    store: Arc<WeightStore>,
    cfg: Arc<ModelConfig>,
    name: String,
    /// The stored tensor's shape: [stored_rows, in].
    stored: [usize; 2],
    /// The rows kept: (first, count).
    rows: (usize, usize),
    fused: bool,
}

impl ProjectionReader {
    fn read(&self) -> Result<HostTensor> {
        let w = self.store.get_released(&self.name, &self.cfg)?;
        let [stored_rows, inp] = self.stored;
        if w.shape != self.stored {
            let fused = if self.fused {
                " (q, k and v fused)"
            } else {
                ""
            };
            bail!(
                "tensor {} has shape {:?}, expected [{stored_rows}, {inp}]{fused}",
                self.name,
                w.shape
            );
        }
        let (first, rows) = self.rows;
        if (first, rows) == (0, stored_rows) {
            return Ok(w);
        }
        HostTensor::new(
            vec![rows, inp],
            w.data[first * inp..(first + rows) * inp].to_vec(),
        )
    }
}

impl<B: Backend> Loader<'_, B> {
    fn read(&self, name: &str) -> Result<HostTensor> {
        self.store.get_released(name, self.cfg)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        upload(self.read(name)?, [len], name, self.device, self.dtype)
    }

    /// A norm weight as the forward pass multiplies by it: Gemma's stored offset w becomes 1 + w
    /// (in f32, as transformers' Gemma3RMSNorm computes it), here, once.
    fn norm_weight(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let mut t = self.read(name)?;
        if self.cfg.norm_offset {
            for w in &mut t.data {
                *w += 1.0;
            }
        }
        upload(t, [len], name, self.device, self.dtype)
    }

    /// HF linear weight [out, in] (+ optional bias) -> Linear with W [in, out].
    fn linear(&self, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear<B>> {
        let reader = self.reader(format!("{prefix}.weight"), [out, inp], (0, out), false);
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        self.projection(reader, bias)
    }

    /// A projection whose rows are a slice of a fused [q; k; v] module (Qwen v1's c_attn):
    /// the fused weight [q + 2 kv, in] (and bias) is read, and this projection's rows kept.
    fn fused_linear(
        &self,
        prefix: &str,
        p: Projection,
        inp: usize,
        bias: bool,
    ) -> Result<Linear<B>> {
        let c = self.cfg;
        let (first, rows) = p.fused_rows(c);
        let (v_first, v_rows) = Projection::V.fused_rows(c);
        let fused_rows = v_first + v_rows;
        let reader = self.reader(
            format!("{prefix}.weight"),
            [fused_rows, inp],
            (first, rows),
            true,
        );
        let bias = if bias {
            let bname = format!("{prefix}.bias");
            let b = self.read(&bname)?;
            if b.shape != [fused_rows] {
                bail!(
                    "tensor {bname} has shape {:?}, expected [{fused_rows}]",
                    b.shape
                );
            }
            let part = HostTensor::new(vec![rows], b.data[first..first + rows].to_vec())?;
            Some(upload(part, [rows], &bname, self.device, self.dtype)?)
        } else {
            None
        };
        self.projection(reader, bias)
    }

    fn reader(
        &self,
        name: String,
        stored: [usize; 2],
        rows: (usize, usize),
        fused: bool,
    ) -> ProjectionReader {
        ProjectionReader {
            store: self.store.clone(),
            cfg: Arc::new(self.cfg.clone()),
            name,
            stored,
            rows,
            fused,
        }
    }

    /// The projection W [in, out] read by `reader`: uploaded now, or, streamed, read once here
    /// (its shape and values checked) and again at each use; every read releases the file pages
    /// it touched.
    fn projection(
        &self,
        reader: ProjectionReader,
        bias: Option<Tensor<B, 1>>,
    ) -> Result<Linear<B>> {
        let (inp, rows) = (reader.stored[1], reader.rows.1);
        let w = reader.read()?;
        if !self.streamed {
            let weight = upload(
                w.transposed(),
                [inp, rows],
                &reader.name,
                self.device,
                self.dtype,
            )?;
            return Ok(Linear::dense(weight, bias));
        }
        drop(w);
        let (device, dtype) = (self.device.clone(), self.dtype);
        let fetch = move || -> Result<Tensor<B, 2>> {
            let w = reader.read()?;
            upload(w.transposed(), [inp, rows], &reader.name, &device, dtype)
        };
        Ok(Linear::streamed(
            StreamedWeight::new(Arc::new(fetch), [inp, rows]),
            bias,
        ))
    }

    /// A norm's weight (and bias, where the spec has one).
    fn norm(&self, name: impl Fn(&str) -> String, size: usize, bias: bool) -> Result<Norm<B>> {
        Ok(Norm {
            weight: self.norm_weight(&name("weight"), size)?,
            bias: if bias {
                Some(self.vector(&name("bias"), size)?)
            } else {
                None
            },
        })
    }

    pub fn layer(&self, i: usize) -> Result<DecoderLayer<B>> {
        let c = self.cfg;
        let layout = c.architecture.layout();
        let norm = |role: NormRole| -> Result<Option<Norm<B>>> {
            layout
                .norm(role)
                .map(|spec| self.norm(|s| layout.norm_tensor(i, spec, s), spec.size(c), spec.bias))
                .transpose()
        };
        let proj = |p: Projection| -> Result<Option<Linear<B>>> {
            let Some(spec) = layout.projection(p) else {
                return Ok(None);
            };
            let (inp, out) = p.dims(c);
            let prefix = layout.projection_prefix(i, spec);
            if spec.fused {
                return self.fused_linear(&prefix, p, inp, p.has_bias(c)).map(Some);
            }
            self.linear(&prefix, inp, out, p.has_bias(c)).map(Some)
        };
        let required = |p: Projection| -> Result<Linear<B>> {
            proj(p)?.with_context(|| format!("{:?} has no {p:?} projection", c.architecture))
        };
        let input_norm = norm(NormRole::Input)?;
        if c.parallel_block && input_norm.is_none() {
            bail!("{:?}: a parallel block needs an input norm", c.architecture);
        }
        Ok(DecoderLayer {
            original_index: i,
            input_norm,
            q_proj: required(Projection::Q)?,
            k_proj: required(Projection::K)?,
            v_proj: required(Projection::V)?,
            o_proj: required(Projection::O)?,
            q_norm: norm(NormRole::Query)?.map(|n| n.weight),
            k_norm: norm(NormRole::Key)?.map(|n| n.weight),
            pre_mlp_norm: norm(NormRole::PreMlp)?,
            attn_out_norm: norm(NormRole::AttnOut)?,
            mlp_out_norm: norm(NormRole::MlpOut)?,
            sliding: c.layer_is_sliding(i),
            attention_dropped: false,
            gate_proj: proj(Projection::Gate)?,
            up_proj: required(Projection::Up)?,
            down_proj: required(Projection::Down)?,
        })
    }

    /// Build the model holding only the original layers `keep` (in that order).
    pub fn transformer(&self, keep: &[usize]) -> Result<Transformer<B>> {
        let c = self.cfg;
        for &i in keep {
            if i >= c.num_hidden_layers {
                bail!(
                    "layer {i} does not exist (the model has {} layers)",
                    c.num_hidden_layers
                );
            }
        }
        if self.streamed && self.storage != WeightStorage::Dense {
            bail!("layer streaming reads dense weights from the model file; NF4 holds them quantised in memory: choose one");
        }
        let layout = c.architecture.layout();
        let embed_name = layout.embed.hf;
        let embed_tokens = upload(
            self.read(embed_name)?,
            [c.vocab_size, c.hidden_size],
            embed_name,
            self.device,
            self.dtype,
        )?;
        let head_name = layout.lm_head.hf;
        let lm_head = if c.tie_word_embeddings || !self.store.has(head_name, c) {
            if !c.tie_word_embeddings {
                bail!("tensor {head_name} is missing and tie_word_embeddings is false");
            }
            embed_tokens.clone().transpose()
        } else {
            let w = self.read(head_name)?;
            upload(
                w.transposed(),
                [c.hidden_size, c.vocab_size],
                head_name,
                self.device,
                self.dtype,
            )?
        };
        let projections: Vec<_> = layout.projections.iter().map(|s| s.projection).collect();
        let layers = keep
            .iter()
            .map(|&i| {
                let mut layer = self.layer(i)?;
                if self.storage == WeightStorage::Nf4 {
                    quantize_layer_nf4(&mut layer, &projections, false, self.device, self.dtype)?;
                }
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer {
            config: c.with_layers(layers.len()),
            embed_tokens,
            layers,
            norm: Norm {
                weight: self.norm_weight(layout.final_norm.hf, c.hidden_size)?,
                bias: match layout.final_norm.bias {
                    Some((name, _)) => Some(self.vector(name, c.hidden_size)?),
                    None => None,
                },
            },
            lm_head_bias: match layout.lm_head.bias {
                Some((name, _)) if c.lm_head_bias => Some(self.vector(name, c.vocab_size)?),
                _ => None,
            },
            lm_head,
            rope: Rope::new(c),
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }
}
