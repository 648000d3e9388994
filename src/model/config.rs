//! A model's configuration: its family and everything the forward pass needs. Read from and
//! written to files in `config_files.rs`, as the family's entry (`family.rs`) spells it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The families layerprune runs. The serialized names are part of stored records (and so of
/// cache keys): never rename one.
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
    /// OLMo-2: norms after attention and MLP only (none before), q/k RMSNorm over the whole
    /// projection (all heads) before RoPE.
    Olmo2,
}

/// The normalisation of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// x / sqrt(mean(x^2) + eps) * w
    #[default]
    Rms,
    /// (x - mean) / sqrt(var + eps) * w + b (biased variance, as torch.nn.LayerNorm)
    Layer,
}

/// The MLP of a family.
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
    /// The q/k RMSNorm spans the whole projection, all heads (OLMo-2).
    #[serde(default, skip_serializing_if = "is_default")]
    pub qk_norm_full_width: bool,
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
pub(super) fn check_size(name: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        bail!("{name} = {value} is implausible (at most {max}): a corrupt configuration?");
    }
    Ok(())
}

impl ModelConfig {
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

    pub(super) fn validate(&self) -> Result<()> {
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
}
