//! The architecture description of a Llama-family decoder, read from a Hugging Face
//! `config.json` or from GGUF metadata. Everything the forward pass needs comes from here.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::formats::gguf::GgufFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    /// The Qwen2 block without q/k/v biases and with q/k RMSNorm per head before RoPE.
    Qwen3,
    /// Qwen v1 (QWenLMHeadModel, remote code upstream): Qwen2's block with fused q/k/v
    /// (attn.c_attn) and GPT-2-style names and config keys.
    Qwen,
    /// Phi-2: one LayerNorm (with bias) feeding attention and MLP in parallel, partial rotary,
    /// GELU (tanh) MLP fc1/fc2, biases on every linear and on the LM head.
    Phi,
    /// Gemma-3 (text): embedding scaled by sqrt(hidden), q/k RMSNorm, norms before and after
    /// attention and MLP with (1 + w) weights, GELU-tanh gated MLP, sliding-window and global
    /// layers with their own RoPE bases, attention scaled by query_pre_attn_scalar.
    Gemma3,
}

impl Architecture {
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Qwen => "qwen",
            Self::Phi => "phi",
            Self::Gemma3 => "gemma3_text",
        }
    }
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Qwen => "QWenLMHeadModel",
            Self::Phi => "PhiForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
        }
    }
}

/// The normalisation of an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// x / sqrt(mean(x^2) + eps) * w
    #[default]
    Rms,
    /// (x - mean) / sqrt(var + eps) * w + b (biased variance, as torch.nn.LayerNorm)
    Layer,
}

/// The MLP of an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// down(silu(gate(h)) * up(h))
    #[default]
    SwiGlu,
    /// down(gelu_tanh(up(h))) (Phi's fc2(gelu_new(fc1(h))))
    GeluTanh,
    /// down(gelu_tanh(gate(h)) * up(h)) (Gemma's gelu_pytorch_tanh)
    GeluTanhGated,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn one() -> f64 {
    1.0
}

/// RoPE frequency scaling, as in transformers' `rope_scaling` / `rope_parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor` (inverse frequencies divided by `factor`).
    Linear { factor: f64 },
    /// Llama 3.1's piecewise scaling of the inverse frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as GGUF stores Llama 3 scaling (`rope_freqs.weight`).
    Factors { factors: Vec<f64> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` also sets it).
    pub o_bias: bool,
    pub max_position_embeddings: usize,
    /// Mistral's sliding window; sequences longer than it are rejected (not implemented).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    // The parts where families differ from the Llama block; the defaults are Llama's, and are
    // left out of serialized configs so that Llama-family records stay as they were.
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm: NormKind,
    #[serde(default, skip_serializing_if = "is_default")]
    pub mlp: MlpKind,
    /// Attention and MLP read the same normed input and are added together (Phi).
    #[serde(default, skip_serializing_if = "is_default")]
    pub parallel_block: bool,
    /// RMSNorm of each head's q and k before RoPE (Qwen3).
    #[serde(default, skip_serializing_if = "is_default")]
    pub qk_norm: bool,
    /// The rotated fraction of each head's dimensions (Phi: partial_rotary_factor).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub partial_rotary_factor: f64,
    /// Bias on the MLP projections.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mlp_bias: bool,
    /// Bias on the LM head (Phi).
    #[serde(default, skip_serializing_if = "is_default")]
    pub lm_head_bias: bool,
    /// Embeddings multiplied by sqrt(hidden_size) (Gemma).
    #[serde(default, skip_serializing_if = "is_default")]
    pub embed_scale: bool,
    /// Norm weights stored as offsets from 1: the norm multiplies by (1 + w) (Gemma, HF layout).
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm_offset: bool,
    /// Per original layer: whether it attends within `sliding_window` only (Gemma-3's
    /// layer_types); empty: every layer does when `sliding_window` is set (Mistral).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding-window layers (Gemma-3: rope_local_base_freq), unscaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_theta: Option<f64>,
    /// Attention scores scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// logits = cap * tanh(logits / cap)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Inputs longer than this are refused: beyond it the reference model changes its
    /// computation (Qwen v1's dynamic NTK RoPE and log-n attention scaling beyond seq_length),
    /// which layerprune does not implement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_limit: Option<usize>,
}

/// Reads keys of a JSON config with errors that name the file and the key.
struct JsonKeys<'a> {
    file: &'a Path,
    json: &'a Value,
}

impl JsonKeys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .with_context(|| format!("{}: missing key \"{key}\"", self.file.display()))?;
        v.as_u64().map(|x| x as usize).with_context(|| {
            format!(
                "{}: key \"{key}\" should be a non-negative integer, found {v}",
                self.file.display()
            )
        })
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.usize(key)).transpose()
    }
    fn f64(&self, key: &str) -> Result<f64> {
        let v = self
            .get(key)
            .with_context(|| format!("{}: missing key \"{key}\"", self.file.display()))?;
        v.as_f64().with_context(|| {
            format!(
                "{}: key \"{key}\" should be a number, found {v}",
                self.file.display()
            )
        })
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64(key)).transpose()
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool().with_context(|| {
                    format!(
                        "{}: key \"{key}\" should be true or false, found {v}",
                        self.file.display()
                    )
                })
            })
            .transpose()
    }
    /// A token id; HF configs sometimes hold a list (several EOS ids): take the first.
    fn opt_token(&self, key: &str) -> Option<u32> {
        match self.get(key)? {
            Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
            v => v.as_u64().map(|x| x as u32),
        }
    }
}

/// Bounds on a configuration's sizes, far above any released model (Llama-3.1-405B: 126
/// layers, width 16384, MLP 53248; Gemma-3: 262k vocabulary): a value beyond them is a corrupt
/// or hostile file, refused before anything is allocated from it.
pub const MAX_LAYERS: usize = 4096;
pub const MAX_VOCAB: usize = 1 << 23;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 14;
pub const MAX_POSITIONS: usize = 1 << 26;

/// `name` = `value` within `max`, else an error naming both.
fn check_size(name: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        bail!("{name} = {value} is implausible (at most {max}): a corrupt configuration?");
    }
    Ok(())
}

impl ModelConfig {
    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_config_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_capped_text(path, crate::fsutil::caps::CONFIG)?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        Self::from_hf_json(path, &json)
    }

    pub fn from_hf_json(file: &Path, json: &Value) -> Result<Self> {
        let k = JsonKeys { file, json };
        let model_type = k
            .get("model_type")
            .and_then(|v| v.as_str())
            .with_context(|| format!("{}: missing key \"model_type\"", file.display()))?;
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi" => Architecture::Phi,
            "gemma3_text" => Architecture::Gemma3,
            "qwen" => return Self::from_qwen_json(&k),
            "gemma3" => bail!(
                "{}: model_type = \"gemma3\" is the multimodal Gemma-3; use the text model's \
                 config (model_type \"gemma3_text\", Gemma3ForCausalLM)",
                file.display()
            ),
            other => bail!(
                "{}: unsupported architecture model_type = \"{other}\" (supported: llama, mistral, qwen, qwen2, qwen3, phi, gemma3_text)",
                file.display()
            ),
        };
        let phi = architecture == Architecture::Phi;
        let gemma = architecture == Architecture::Gemma3;
        if !phi && k.opt_bool("mlp_bias")?.unwrap_or(false) {
            bail!("{}: mlp_bias = true is not supported", file.display());
        }
        let (act_key, expected_act) = match architecture {
            Architecture::Phi => ("hidden_act", "gelu_new"),
            Architecture::Gemma3 => ("hidden_activation", "gelu_pytorch_tanh"),
            _ => ("hidden_act", "silu"),
        };
        if let Some(act) = k.get(act_key).and_then(|v| v.as_str()) {
            if act != expected_act {
                bail!(
                    "{}: hidden_act = \"{act}\" is not supported (expected \"{expected_act}\")",
                    file.display()
                );
            }
        }
        if phi && k.opt_bool("qk_layernorm")?.unwrap_or(false) {
            bail!(
                "{}: qk_layernorm = true is not supported for phi",
                file.display()
            );
        }
        let hidden_size = k.usize("hidden_size")?;
        let num_attention_heads = k.usize("num_attention_heads")?;
        if num_attention_heads == 0
            || hidden_size % num_attention_heads != 0 && k.get("head_dim").is_none()
        {
            bail!("{}: hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}", file.display());
        }
        let num_key_value_heads = k
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!(
                "{}: num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}",
                file.display()
            );
        }
        let head_dim = k
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        // transformers >= 5 nests rope settings in `rope_parameters` (Gemma-3: one table per
        // layer type); older configs use `rope_theta` and `rope_scaling` at the top level.
        let mut rope_params = k.get("rope_parameters").cloned();
        let mut rope_local_theta = None;
        if gemma {
            let local = rope_params
                .as_ref()
                .and_then(|p| p.get("sliding_attention").cloned());
            rope_local_theta = match &local {
                Some(p) => {
                    if parse_rope_scaling(file, p)?.is_some() {
                        bail!(
                            "{}: rope scaling on the sliding-attention layers is not supported",
                            file.display()
                        );
                    }
                    JsonKeys { file, json: p }.opt_f64("rope_theta")?
                }
                None => k.opt_f64("rope_local_base_freq")?,
            }
            .or(Some(10000.0));
            if let Some(p) = &rope_params {
                if p.get("full_attention").is_some() {
                    rope_params = p.get("full_attention").cloned();
                }
            }
        }
        let rope_theta = match &rope_params {
            Some(p) => JsonKeys { file, json: p }.opt_f64("rope_theta")?,
            None => None,
        }
        .or(k.opt_f64("rope_theta")?)
        .unwrap_or(10000.0);
        let scaling_json = rope_params.or_else(|| k.get("rope_scaling").cloned());
        let rope_scaling = match scaling_json {
            None => None,
            Some(s) => parse_rope_scaling(file, &s)?,
        };
        let attention_bias = k.opt_bool("attention_bias")?.unwrap_or(false);
        let sliding_window = match architecture {
            Architecture::Mistral | Architecture::Gemma3 => k.opt_usize("sliding_window")?,
            Architecture::Qwen2 | Architecture::Qwen3
                if k.opt_bool("use_sliding_window")?.unwrap_or(false) =>
            {
                k.opt_usize("sliding_window")?
            }
            _ => None,
        };
        // Phi: partial_rotary_factor at the top level (older configs) or in rope_parameters
        let partial_rotary_factor = match k.get("rope_parameters") {
            Some(p) => JsonKeys { file, json: p }.opt_f64("partial_rotary_factor")?,
            None => None,
        }
        .or(k.opt_f64("partial_rotary_factor")?)
        .unwrap_or(1.0);
        let num_hidden_layers = k.usize("num_hidden_layers")?;
        check_size("num_hidden_layers", num_hidden_layers, MAX_LAYERS)
            .with_context(|| format!("{}", file.display()))?;
        let sliding_layers = if gemma {
            match k.get("layer_types") {
                Some(Value::Array(types)) => types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => bail!(
                            "{}: layer_types: expected \"sliding_attention\" or \"full_attention\", found {t}",
                            file.display()
                        ),
                    })
                    .collect::<Result<Vec<bool>>>()?,
                Some(other) => bail!("{}: layer_types should be a list, found {other}", file.display()),
                // transformers' default: every sliding_window_pattern-th layer is global
                None => {
                    let pattern = k.opt_usize("sliding_window_pattern")?.unwrap_or(6);
                    if pattern == 0 {
                        bail!("{}: sliding_window_pattern must be positive", file.display());
                    }
                    (0..num_hidden_layers).map(|i| (i + 1) % pattern != 0).collect()
                }
            }
        } else {
            Vec::new()
        };
        if gemma && sliding_layers.len() != num_hidden_layers {
            bail!(
                "{}: layer_types lists {} layers, num_hidden_layers is {num_hidden_layers}",
                file.display(),
                sliding_layers.len()
            );
        }
        if gemma && k.get("attn_logit_softcapping").is_some() {
            bail!(
                "{}: attn_logit_softcapping is not supported",
                file.display()
            );
        }
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            bail!(
                "{}: partial_rotary_factor must be in (0, 1], got {partial_rotary_factor}",
                file.display()
            );
        }
        let cfg = Self {
            architecture,
            vocab_size: k.usize("vocab_size")?,
            hidden_size,
            intermediate_size: k.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: if phi {
                k.opt_f64("layer_norm_eps")?.unwrap_or(1e-5)
            } else {
                k.opt_f64("rms_norm_eps")?.unwrap_or(1e-6)
            },
            rope_theta,
            rope_scaling,
            tie_word_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(gemma),
            qkv_bias: architecture == Architecture::Qwen2 || phi || attention_bias,
            o_bias: phi || architecture != Architecture::Qwen2 && attention_bias,
            max_position_embeddings: k.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            sliding_window,
            bos_token_id: k.opt_token("bos_token_id"),
            eos_token_id: k.opt_token("eos_token_id"),
            norm: if phi { NormKind::Layer } else { NormKind::Rms },
            mlp: match architecture {
                Architecture::Phi => MlpKind::GeluTanh,
                Architecture::Gemma3 => MlpKind::GeluTanhGated,
                _ => MlpKind::SwiGlu,
            },
            parallel_block: phi,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            partial_rotary_factor,
            mlp_bias: phi,
            lm_head_bias: phi,
            embed_scale: gemma,
            norm_offset: gemma,
            sliding_layers,
            rope_local_theta,
            query_pre_attn_scalar: if gemma {
                Some(k.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0))
            } else {
                None
            },
            final_logit_softcapping: if gemma {
                k.opt_f64("final_logit_softcapping")?
            } else {
                None
            },
            context_limit: None,
        };
        cfg.validate()
            .with_context(|| format!("{}", file.display()))?;
        Ok(cfg)
    }

    /// Qwen v1's config.json (configuration_qwen.py), in either generation of its key names:
    /// hidden_size / num_attention_heads / num_hidden_layers / intermediate_size /
    /// max_position_embeddings, or the first release's n_embd / n_head / n_layer /
    /// ffn_hidden_size / n_positions (and padded_vocab_size). The MLP is intermediate_size / 2
    /// wide (modeling_qwen.py's QWenMLP).
    fn from_qwen_json(k: &JsonKeys) -> Result<Self> {
        let file = k.file;
        let either = |new: &str, old: &str| -> Result<usize> {
            match k.get(new) {
                Some(_) => k.usize(new),
                None if k.get(old).is_some() => k.usize(old),
                None => bail!("{}: missing key \"{new}\" (or \"{old}\")", file.display()),
            }
        };
        let hidden_size = either("hidden_size", "n_embd")?;
        let num_attention_heads = either("num_attention_heads", "n_head")?;
        let num_hidden_layers = either("num_hidden_layers", "n_layer")?;
        let ffn = either("intermediate_size", "ffn_hidden_size")?;
        let vocab_size = either("vocab_size", "padded_vocab_size")?;
        if num_attention_heads == 0 {
            bail!("{}: num_attention_heads must be positive", file.display());
        }
        if ffn % 2 != 0 {
            bail!(
                "{}: intermediate_size {ffn} should be even (Qwen's MLP is intermediate_size / 2 wide)",
                file.display()
            );
        }
        if k.opt_bool("scale_attn_weights")? == Some(false) {
            bail!(
                "{}: scale_attn_weights = false is not supported",
                file.display()
            );
        }
        let head_dim = k
            .opt_usize("kv_channels")?
            .unwrap_or(hidden_size / num_attention_heads);
        let seq_length = k.opt_usize("seq_length")?.unwrap_or(2048);
        let max_positions = match k.get("max_position_embeddings") {
            Some(_) => k.usize("max_position_embeddings")?,
            None => k.opt_usize("n_positions")?.unwrap_or(seq_length),
        };
        // beyond seq_length, upstream rescales RoPE (dynamic NTK) and queries (log-n)
        let rescales = k.opt_bool("use_dynamic_ntk")?.unwrap_or(false)
            || k.opt_bool("use_logn_attn")?.unwrap_or(false);
        let biases = !k.opt_bool("no_bias")?.unwrap_or(true);
        let cfg = Self {
            architecture: Architecture::Qwen,
            vocab_size,
            hidden_size,
            intermediate_size: ffn / 2,
            num_hidden_layers,
            num_attention_heads,
            // Qwen v1 has no grouped-query attention
            num_key_value_heads: num_attention_heads,
            head_dim,
            rms_norm_eps: k.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-6),
            rope_theta: k.opt_f64("rotary_emb_base")?.unwrap_or(10000.0),
            rope_scaling: None,
            tie_word_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: true,
            o_bias: biases,
            max_position_embeddings: if rescales {
                seq_length.min(max_positions)
            } else {
                max_positions
            },
            sliding_window: None,
            bos_token_id: k.opt_token("bos_token_id"),
            eos_token_id: k.opt_token("eos_token_id"),
            norm: NormKind::Rms,
            mlp: MlpKind::SwiGlu,
            parallel_block: false,
            qk_norm: false,
            partial_rotary_factor: k.opt_f64("rotary_pct")?.unwrap_or(1.0),
            mlp_bias: biases,
            lm_head_bias: false,
            embed_scale: false,
            norm_offset: false,
            sliding_layers: Vec::new(),
            rope_local_theta: None,
            query_pre_attn_scalar: None,
            final_logit_softcapping: None,
            context_limit: rescales.then_some(seq_length),
        };
        let rotary = cfg.partial_rotary_factor;
        if !(rotary > 0.0 && rotary <= 1.0) {
            bail!(
                "{}: rotary_pct must be in (0, 1], got {rotary}",
                file.display()
            );
        }
        cfg.validate()
            .with_context(|| format!("{}", file.display()))?;
        Ok(cfg)
    }

    /// Refuse an input of `len` tokens that the model would compute differently from its
    /// reference (see `context_limit`); `what` names the setting that asked for it.
    pub fn check_length(&self, what: &str, len: usize) -> Result<()> {
        if let Some(limit) = self.context_limit {
            if len > limit {
                bail!(
                    "{what} = {len} is longer than the model's seq_length = {limit}: beyond it {:?} \
                     rescales RoPE (dynamic NTK) and attention (log-n), which layerprune does not \
                     implement; use at most {limit} tokens",
                    self.architecture
                );
            }
        }
        Ok(())
    }

    /// Read the architecture from GGUF metadata (llama.cpp key names).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.require_str("general.architecture")?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "phi2" => Architecture::Phi,
            "gemma3" => Architecture::Gemma3,
            other => bail!(
                "{}: unsupported architecture general.architecture = \"{other}\" (supported: llama, qwen2, qwen3, phi2, gemma3)",
                g.path().display()
            ),
        };
        let gemma = architecture == Architecture::Gemma3;
        let phi = architecture == Architecture::Phi;
        if phi && g.tensor_info("blk.0.attn_qkv.weight").is_some() {
            bail!(
                "{}: this phi2 file fuses q, k and v (blk.N.attn_qkv, converted from Microsoft's \
                 original checkpoint layout), which is not supported; convert the transformers \
                 layout (separate attn_q, attn_k, attn_v) instead",
                g.path().display()
            );
        }
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = g.require_u64(&key("embedding_length"))? as usize;
        let num_attention_heads = g.require_u64(&key("attention.head_count"))? as usize;
        let num_key_value_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => g.require_u64(&key("attention.head_count_kv"))? as usize,
            None => num_attention_heads,
        };
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => g.require_u64(&key("attention.key_length"))? as usize,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => bail!(
                "{}: {} is 0",
                g.path().display(),
                key("attention.head_count")
            ),
        };
        let embd = g
            .tensor_info("token_embd.weight")
            .with_context(|| format!("{}: no tensor token_embd.weight", g.path().display()))?;
        let vocab_size = match g.get(&key("vocab_size")) {
            Some(_) => g.require_u64(&key("vocab_size"))? as usize,
            None => embd.shape()[0],
        };
        let rope_theta = match g.get(&key("rope.freq_base")) {
            Some(_) => g.require_f64(&key("rope.freq_base"))?,
            None => 10000.0,
        };
        let rope_scaling = match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: g.require_f64(&key("rope.scaling.factor"))?,
            }),
            Some(other) => bail!(
                "{}: unsupported {} = \"{other}\"",
                g.path().display(),
                key("rope.scaling.type")
            ),
        };
        let rope_scaling = match (rope_scaling, g.tensor_info("rope_freqs.weight")) {
            (s, None) => s,
            (None, Some(_)) => {
                let f = g.tensor_f32("rope_freqs.weight")?;
                Some(RopeScaling::Factors {
                    factors: f.data.iter().map(|&x| x as f64).collect(),
                })
            }
            (Some(_), Some(_)) => bail!(
                "{}: both rope.scaling.type and rope_freqs.weight are set",
                g.path().display()
            ),
        };
        let qkv_bias = g.tensor_info("blk.0.attn_q.bias").is_some();
        // Phi-2: LayerNorm (attention.layer_norm_epsilon) and the rotated dims per head
        let rms_norm_eps = if phi {
            g.require_f64(&key("attention.layer_norm_epsilon"))?
        } else {
            g.require_f64(&key("attention.layer_norm_rms_epsilon"))?
        };
        let partial_rotary_factor = match g.get(&key("rope.dimension_count")) {
            Some(_) if phi => g.require_u64(&key("rope.dimension_count"))? as f64 / head_dim as f64,
            _ => 1.0,
        };
        let cfg = Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: g.require_u64(&key("feed_forward_length"))? as usize,
            num_hidden_layers: g.require_u64(&key("block_count"))? as usize,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            qkv_bias,
            o_bias: g.tensor_info("blk.0.attn_output.bias").is_some(),
            max_position_embeddings: match g.get(&key("context_length")) {
                Some(_) => g.require_u64(&key("context_length"))? as usize,
                None => 4096,
            },
            sliding_window: if gemma {
                Some(g.require_u64(&key("attention.sliding_window"))? as usize)
            } else {
                None
            },
            bos_token_id: g
                .get("tokenizer.ggml.bos_token_id")
                .and_then(|v| v.as_u64())
                .map(|x| x as u32),
            eos_token_id: g
                .get("tokenizer.ggml.eos_token_id")
                .and_then(|v| v.as_u64())
                .map(|x| x as u32),
            norm: if phi { NormKind::Layer } else { NormKind::Rms },
            mlp: if gemma {
                MlpKind::GeluTanhGated
            } else if phi {
                MlpKind::GeluTanh
            } else {
                MlpKind::SwiGlu
            },
            parallel_block: phi,
            qk_norm: gemma || g.tensor_info("blk.0.attn_q_norm.weight").is_some(),
            partial_rotary_factor,
            mlp_bias: g.tensor_info("blk.0.ffn_up.bias").is_some(),
            lm_head_bias: g.tensor_info("output.bias").is_some(),
            embed_scale: gemma,
            norm_offset: gemma,
            // Gemma-3 GGUF metadata holds no layer pattern, local RoPE base or attention scalar:
            // transformers' Gemma3TextConfig defaults (every 6th layer global, 10000, 256), as
            // its GGUF loader uses them
            sliding_layers: Vec::new(),
            rope_local_theta: gemma.then_some(10000.0),
            query_pre_attn_scalar: gemma.then_some(256.0),
            final_logit_softcapping: None,
            context_limit: None,
        };
        let mut cfg = cfg;
        check_size(&key("block_count"), cfg.num_hidden_layers, MAX_LAYERS)
            .with_context(|| format!("{}", g.path().display()))?;
        if gemma {
            cfg.sliding_layers = (0..cfg.num_hidden_layers)
                .map(|i| (i + 1) % 6 != 0)
                .collect();
        }
        cfg.validate()
            .with_context(|| format!("{}", g.path().display()))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        // sizes are checked against plausible bounds before anything is allocated from them
        // (the loader then checks them against the tensors actually present)
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ] {
            check_size(name, v, max)?;
        }
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                bail!("{name} must be positive");
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim % 2 != 0 {
            bail!("head_dim {} must be even for RoPE", self.head_dim);
        }
        if self.rotary_dim() % 2 != 0 || self.rotary_dim() == 0 {
            bail!(
                "the rotated part of each head ({} of head_dim {}) must be even and positive",
                self.rotary_dim(),
                self.head_dim
            );
        }
        if let Some(RopeScaling::Factors { factors }) = &self.rope_scaling {
            if factors.len() != self.head_dim / 2 {
                bail!(
                    "rope frequency factors: {} values for head_dim {}",
                    factors.len(),
                    self.head_dim
                );
            }
        }
        Ok(())
    }

    /// Whether original layer `i` attends within the sliding window only.
    pub fn layer_is_sliding(&self, i: usize) -> bool {
        match self.sliding_window {
            None => false,
            Some(_) if self.sliding_layers.is_empty() => true,
            Some(_) => self.sliding_layers.get(i).copied().unwrap_or(false),
        }
    }

    /// How many of each head's dimensions RoPE rotates (the first ones).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// The config with a different layer count (after pruning).
    pub fn with_layers(&self, n: usize) -> Self {
        Self {
            num_hidden_layers: n,
            ..self.clone()
        }
    }

    /// A Hugging Face `config.json` for this architecture (used when exporting).
    pub fn to_hf_json(&self) -> Value {
        let mut j = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.hf_model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": "float32",
        });
        let o = j.as_object_mut().unwrap();
        if self.architecture == Architecture::Llama {
            o.insert("attention_bias".into(), self.qkv_bias.into());
            o.insert("mlp_bias".into(), false.into());
        }
        if self.architecture == Architecture::Mistral {
            o.insert("sliding_window".into(), self.sliding_window.into());
        }
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        if let Some(e) = self.eos_token_id {
            o.insert("eos_token_id".into(), e.into());
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                o.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "linear", "factor": factor}),
                );
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                o.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings}),
                );
            }
            // transformers has no per-frequency-divisor config; exporting such a model is refused upstream.
            Some(RopeScaling::Factors { .. }) => {}
        }
        j
    }
}

fn parse_rope_scaling(file: &Path, s: &Value) -> Result<Option<RopeScaling>> {
    let k = JsonKeys { file, json: s };
    let kind = k
        .get("rope_type")
        .or_else(|| k.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: k.f64("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: k.f64("factor")?,
            low_freq_factor: k.f64("low_freq_factor")?,
            high_freq_factor: k.f64("high_freq_factor")?,
            original_max_position_embeddings: k.f64("original_max_position_embeddings")?,
        }),
        other => bail!(
            "{}: unsupported rope scaling type \"{other}\" (supported: default, linear, llama3)",
            file.display()
        ),
    })
}
