//! Weights by Hugging Face tensor name, whatever the file format, and the construction of a
//! Burn `Transformer` from them. GGUF names are mapped to HF names and llama q/k rows are
//! un-permuted here, once, so that the model code sees one layout.

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use super::config::{Architecture, ModelConfig};
use super::gguf::GgufFile;
use super::host_tensor::HostTensor;
use super::linear::Linear;
use super::rope::Rope;
use super::safetensors_dir::SafetensorsSet;
use super::transformer::{DecoderLayer, Transformer};

pub enum WeightStore {
    Safetensors(SafetensorsSet),
    Gguf(GgufFile),
}

/// Map a Hugging Face tensor name to llama.cpp's GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    if hf == "model.embed_tokens.weight" {
        return Some("token_embd.weight".into());
    }
    if hf == "model.norm.weight" {
        return Some("output_norm.weight".into());
    }
    if hf == "lm_head.weight" {
        return Some("output.weight".into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let mapped = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

impl WeightStore {
    pub fn has(&self, hf_name: &str) -> bool {
        match self {
            Self::Safetensors(s) => s.contains(hf_name),
            Self::Gguf(g) => gguf_name(hf_name).is_some_and(|n| g.tensor_info(&n).is_some()),
        }
    }

    /// One tensor in Hugging Face layout and naming, as f32.
    pub fn get(&self, hf_name: &str, cfg: &ModelConfig) -> Result<HostTensor> {
        match self {
            Self::Safetensors(s) => s.tensor_f32(hf_name),
            Self::Gguf(g) => {
                let name =
                    gguf_name(hf_name).with_context(|| format!("no GGUF name for {hf_name}"))?;
                let t = g.tensor_f32(&name)?;
                // llama.cpp permutes llama q/k for its interleaved RoPE; qwen2 uses NEOX (half-split) as is.
                if cfg.architecture != Architecture::Qwen2 {
                    let heads = if hf_name.contains("q_proj") {
                        Some(cfg.num_attention_heads)
                    } else if hf_name.contains("k_proj") {
                        Some(cfg.num_key_value_heads)
                    } else {
                        None
                    };
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
    pub fn storage_dtype(&self) -> String {
        match self {
            Self::Safetensors(s) => s
                .dtype("model.embed_tokens.weight")
                .unwrap_or_else(|| "?".into()),
            Self::Gguf(g) => {
                let mut counts = std::collections::BTreeMap::new();
                for t in &g.tensors {
                    *counts.entry(t.ggml_type.name()).or_insert(0usize) += 1;
                }
                let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                format!("GGUF {}", parts.join(", "))
            }
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

pub struct Loader<'a, B: Backend> {
    pub store: &'a WeightStore,
    pub cfg: &'a ModelConfig,
    pub device: &'a B::Device,
    pub dtype: DType,
}

impl<B: Backend> Loader<'_, B> {
    fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        upload(
            self.store.get(name, self.cfg)?,
            [len],
            name,
            self.device,
            self.dtype,
        )
    }

    /// HF linear weight [out, in] (+ optional bias) -> Linear with W [in, out].
    fn linear(&self, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear<B>> {
        let wname = format!("{prefix}.weight");
        let w = self.store.get(&wname, self.cfg)?;
        if w.shape != [out, inp] {
            bail!(
                "tensor {wname} has shape {:?}, expected [{out}, {inp}]",
                w.shape
            );
        }
        let weight = upload(w.transposed(), [inp, out], &wname, self.device, self.dtype)?;
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear::dense(weight, bias))
    }

    pub fn layer(&self, i: usize) -> Result<DecoderLayer<B>> {
        let c = self.cfg;
        let (h, q, kv, ff) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        );
        let p = format!("model.layers.{i}");
        Ok(DecoderLayer {
            original_index: i,
            input_norm: self.vector(&format!("{p}.input_layernorm.weight"), h)?,
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"), h, q, c.qkv_bias)?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"), h, kv, c.qkv_bias)?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"), h, kv, c.qkv_bias)?,
            o_proj: self.linear(&format!("{p}.self_attn.o_proj"), q, h, c.o_bias)?,
            post_attention_norm: self.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), h, ff, false)?,
            up_proj: self.linear(&format!("{p}.mlp.up_proj"), h, ff, false)?,
            down_proj: self.linear(&format!("{p}.mlp.down_proj"), ff, h, false)?,
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
        let embed_name = "model.embed_tokens.weight";
        let embed_tokens = upload(
            self.store.get(embed_name, c)?,
            [c.vocab_size, c.hidden_size],
            embed_name,
            self.device,
            self.dtype,
        )?;
        let lm_head = if c.tie_word_embeddings || !self.store.has("lm_head.weight") {
            if !c.tie_word_embeddings {
                bail!("tensor lm_head.weight is missing and tie_word_embeddings is false");
            }
            embed_tokens.clone().transpose()
        } else {
            let w = self.store.get("lm_head.weight", c)?;
            upload(
                w.transposed(),
                [c.hidden_size, c.vocab_size],
                "lm_head.weight",
                self.device,
                self.dtype,
            )?
        };
        let layers = keep
            .iter()
            .map(|&i| self.layer(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer {
            config: c.with_layers(layers.len()),
            embed_tokens,
            layers,
            norm: self.vector("model.norm.weight", c.hidden_size)?,
            lm_head,
            rope: Rope::new(c),
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }
}
