//! What a decoder layer is made of, per architecture: its norms and linear projections, which of
//! them belong to the MLP, their shapes from the config, and their names in the Hugging Face and
//! GGUF layouts. Loading, NF4 quantisation, LoRA targets, export and pruning iterate over this
//! description instead of listing the parts by hand; a new architecture is one more description
//! plus the blocks of the forward pass that truly differ.

use anyhow::{bail, Result};

use super::config::{Architecture, ModelConfig};

/// One linear projection of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// A projection's names and role.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionSpec {
    pub projection: Projection,
    /// Hugging Face module name, e.g. "q_proj" (also PEFT's target_modules name).
    pub name: &'static str,
    /// Hugging Face parent module: "self_attn" or "mlp".
    pub group: &'static str,
    /// llama.cpp's GGUF tensor stem, e.g. "attn_q".
    pub gguf: &'static str,
    /// Part of the MLP (the paper's LoRA targets).
    pub mlp: bool,
}

/// What a per-layer norm normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormRole {
    /// The block's input (before attention; in a parallel block, before both).
    Input,
    /// The attention's output, before it joins the residual stream (Gemma).
    AttnOut,
    /// The residual stream after attention, before the MLP (Llama's post_attention_layernorm).
    PreMlp,
    /// The MLP's output, before it joins the residual stream (Gemma).
    MlpOut,
    /// Each head's queries (before RoPE), over head_dim.
    Query,
    /// Each head's keys (before RoPE), over head_dim.
    Key,
}

/// A per-layer norm and its names.
#[derive(Debug, Clone, Copy)]
pub struct NormSpec {
    pub role: NormRole,
    /// Hugging Face name inside the layer, e.g. "input_layernorm" or "self_attn.q_norm".
    pub name: &'static str,
    /// GGUF tensor stem, e.g. "attn_norm".
    pub gguf: &'static str,
    /// A bias beside the weight (LayerNorm).
    pub bias: bool,
}

impl NormSpec {
    /// The norm's length: hidden_size, or head_dim for per-head q/k norms.
    pub fn size(&self, c: &ModelConfig) -> usize {
        match self.role {
            NormRole::Input | NormRole::AttnOut | NormRole::PreMlp | NormRole::MlpOut => {
                c.hidden_size
            }
            NormRole::Query | NormRole::Key => c.head_dim,
        }
    }
}

/// A tensor outside the layers: (Hugging Face name, GGUF name), and the name of its bias when
/// the architecture has one.
#[derive(Debug, Clone, Copy)]
pub struct GlobalTensor {
    pub hf: &'static str,
    pub gguf: &'static str,
    pub bias: Option<(&'static str, &'static str)>,
}

/// The parts of one architecture.
#[derive(Debug)]
pub struct Layout {
    /// The prefix of layer `i`'s tensors is `{layer_prefix}.{i}` (Hugging Face layout).
    pub layer_prefix: &'static str,
    /// GGUF: `{gguf_layer_prefix}.{i}`.
    pub gguf_layer_prefix: &'static str,
    pub norms: &'static [NormSpec],
    pub projections: &'static [ProjectionSpec],
    pub embed: GlobalTensor,
    pub final_norm: GlobalTensor,
    pub lm_head: GlobalTensor,
    /// Whether llama.cpp stores q/k rows permuted for its interleaved RoPE (un-permuted at load).
    pub gguf_rope_permuted: bool,
}

const INPUT_NORM: NormSpec = NormSpec {
    role: NormRole::Input,
    name: "input_layernorm",
    gguf: "attn_norm",
    bias: false,
};
const POST_ATTENTION_NORM: NormSpec = NormSpec {
    role: NormRole::PreMlp,
    name: "post_attention_layernorm",
    gguf: "ffn_norm",
    bias: false,
};

const LLAMA_NORMS: [NormSpec; 2] = [INPUT_NORM, POST_ATTENTION_NORM];

const Q_NORM: NormSpec = NormSpec {
    role: NormRole::Query,
    name: "self_attn.q_norm",
    gguf: "attn_q_norm",
    bias: false,
};
const K_NORM: NormSpec = NormSpec {
    role: NormRole::Key,
    name: "self_attn.k_norm",
    gguf: "attn_k_norm",
    bias: false,
};

const QWEN3_NORMS: [NormSpec; 4] = [INPUT_NORM, POST_ATTENTION_NORM, Q_NORM, K_NORM];

/// Gemma-3: norms around attention and MLP (the HF name post_attention_layernorm is the
/// attention's output norm here), per-head q/k norms.
const GEMMA3_NORMS: [NormSpec; 6] = [
    INPUT_NORM,
    NormSpec {
        role: NormRole::AttnOut,
        name: "post_attention_layernorm",
        gguf: "post_attention_norm",
        bias: false,
    },
    NormSpec {
        role: NormRole::PreMlp,
        name: "pre_feedforward_layernorm",
        gguf: "ffn_norm",
        bias: false,
    },
    NormSpec {
        role: NormRole::MlpOut,
        name: "post_feedforward_layernorm",
        gguf: "post_ffw_norm",
        bias: false,
    },
    Q_NORM,
    K_NORM,
];

const PHI_NORMS: [NormSpec; 1] = [NormSpec {
    bias: true,
    ..INPUT_NORM
}];

const fn projection(
    projection: Projection,
    name: &'static str,
    group: &'static str,
    gguf: &'static str,
) -> ProjectionSpec {
    ProjectionSpec {
        projection,
        name,
        group,
        gguf,
        mlp: matches!(
            projection,
            Projection::Gate | Projection::Up | Projection::Down
        ),
    }
}

const LLAMA_PROJECTIONS: [ProjectionSpec; 7] = [
    projection(Projection::Q, "q_proj", "self_attn", "attn_q"),
    projection(Projection::K, "k_proj", "self_attn", "attn_k"),
    projection(Projection::V, "v_proj", "self_attn", "attn_v"),
    projection(Projection::O, "o_proj", "self_attn", "attn_output"),
    projection(Projection::Gate, "gate_proj", "mlp", "ffn_gate"),
    projection(Projection::Up, "up_proj", "mlp", "ffn_up"),
    projection(Projection::Down, "down_proj", "mlp", "ffn_down"),
];

/// Phi-2: no gate; the MLP is fc1 (up) and fc2 (down), the output projection "dense".
const PHI_PROJECTIONS: [ProjectionSpec; 6] = [
    projection(Projection::Q, "q_proj", "self_attn", "attn_q"),
    projection(Projection::K, "k_proj", "self_attn", "attn_k"),
    projection(Projection::V, "v_proj", "self_attn", "attn_v"),
    projection(Projection::O, "dense", "self_attn", "attn_output"),
    projection(Projection::Up, "fc1", "mlp", "ffn_up"),
    projection(Projection::Down, "fc2", "mlp", "ffn_down"),
];

const EMBED: GlobalTensor = GlobalTensor {
    hf: "model.embed_tokens.weight",
    gguf: "token_embd.weight",
    bias: None,
};
const FINAL_NORM: GlobalTensor = GlobalTensor {
    hf: "model.norm.weight",
    gguf: "output_norm.weight",
    bias: None,
};
const LM_HEAD: GlobalTensor = GlobalTensor {
    hf: "lm_head.weight",
    gguf: "output.weight",
    bias: None,
};

const fn llama_layout(norms: &'static [NormSpec], gguf_rope_permuted: bool) -> Layout {
    Layout {
        layer_prefix: "model.layers",
        gguf_layer_prefix: "blk",
        norms,
        projections: &LLAMA_PROJECTIONS,
        embed: EMBED,
        final_norm: FINAL_NORM,
        lm_head: LM_HEAD,
        gguf_rope_permuted,
    }
}

/// Llama and Mistral: llama.cpp permutes q/k for its interleaved RoPE.
static LLAMA: Layout = llama_layout(&LLAMA_NORMS, true);
/// Qwen2: the Llama block with q/k/v biases; llama.cpp keeps NEOX (half-split) RoPE as is.
static QWEN2: Layout = llama_layout(&LLAMA_NORMS, false);
/// Qwen3: the Qwen2 block without biases, with per-head q/k RMSNorms.
static QWEN3: Layout = llama_layout(&QWEN3_NORMS, false);
/// Gemma-3: the Llama projections, Gemma's norms; llama.cpp keeps NEOX RoPE as is.
static GEMMA3: Layout = llama_layout(&GEMMA3_NORMS, false);
/// Phi-2 (HF layout): one LayerNorm with bias per layer, final_layernorm, LM head with bias.
static PHI: Layout = Layout {
    layer_prefix: "model.layers",
    gguf_layer_prefix: "blk",
    norms: &PHI_NORMS,
    projections: &PHI_PROJECTIONS,
    embed: EMBED,
    final_norm: GlobalTensor {
        hf: "model.final_layernorm.weight",
        gguf: "output_norm.weight",
        bias: Some(("model.final_layernorm.bias", "output_norm.bias")),
    },
    lm_head: GlobalTensor {
        bias: Some(("lm_head.bias", "output.bias")),
        ..LM_HEAD
    },
    gguf_rope_permuted: false,
};

impl Architecture {
    pub const ALL: [Architecture; 6] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen3,
        Self::Phi,
        Self::Gemma3,
    ];

    pub fn layout(self) -> &'static Layout {
        match self {
            Self::Llama | Self::Mistral => &LLAMA,
            Self::Qwen2 => &QWEN2,
            Self::Qwen3 => &QWEN3,
            Self::Phi => &PHI,
            Self::Gemma3 => &GEMMA3,
        }
    }
}

impl Layout {
    /// The projection `p`, if the architecture has it (Phi has no gate).
    pub fn projection(&self, p: Projection) -> Option<&ProjectionSpec> {
        self.projections.iter().find(|s| s.projection == p)
    }

    /// The norm of `role`, if the architecture has it.
    pub fn norm(&self, role: NormRole) -> Option<&NormSpec> {
        self.norms.iter().find(|n| n.role == role)
    }

    /// The projection named `name` (Hugging Face module name), or an error listing the known names.
    pub fn projection_named(&self, name: &str) -> Result<&ProjectionSpec> {
        match self.projections.iter().find(|s| s.name == name) {
            Some(s) => Ok(s),
            None => bail!(
                "unknown module {name:?} (known: {})",
                self.projection_names().join(", ")
            ),
        }
    }

    pub fn projection_names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|s| s.name).collect()
    }

    /// Hugging Face name of a layer tensor: `model.layers.{i}.{group}.{name}.{suffix}`.
    pub fn projection_tensor(&self, layer: usize, spec: &ProjectionSpec, suffix: &str) -> String {
        format!("{}.{suffix}", self.projection_prefix(layer, spec))
    }

    /// Hugging Face module path of a projection: `model.layers.{i}.{group}.{name}`.
    pub fn projection_prefix(&self, layer: usize, spec: &ProjectionSpec) -> String {
        format!("{}.{layer}.{}.{}", self.layer_prefix, spec.group, spec.name)
    }

    /// Hugging Face name of a layer norm's `suffix` ("weight" or "bias").
    pub fn norm_tensor(&self, layer: usize, norm: &NormSpec, suffix: &str) -> String {
        format!("{}.{layer}.{}.{suffix}", self.layer_prefix, norm.name)
    }

    /// The tensors of one layer in Hugging Face naming relative to the layer prefix
    /// (norm weights, projection weights, and the biases the config enables).
    pub fn layer_tensor_suffixes(&self, cfg: &ModelConfig) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for n in self.norms {
            v.push(format!("{}.weight", n.name));
            if n.bias {
                v.push(format!("{}.bias", n.name));
            }
        }
        v.extend(
            self.projections
                .iter()
                .map(|p| format!("{}.{}.weight", p.group, p.name)),
        );
        v.extend(
            self.projections
                .iter()
                .filter(|p| p.projection.has_bias(cfg))
                .map(|p| format!("{}.{}.bias", p.group, p.name)),
        );
        v
    }

    /// Whether a Hugging Face tensor name is a norm weight (of a layer or the final norm).
    pub fn is_norm_weight(&self, hf: &str) -> bool {
        if hf == self.final_norm.hf {
            return true;
        }
        let Some(rest) = hf
            .strip_prefix(self.layer_prefix)
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        let name = rest.split_once('.').map(|(_, n)| n).unwrap_or("");
        self.norms
            .iter()
            .any(|n| name == format!("{}.weight", n.name))
    }

    /// Map a Hugging Face tensor name to llama.cpp's GGUF name.
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        for g in [&self.embed, &self.final_norm, &self.lm_head] {
            if hf == g.hf {
                return Some(g.gguf.into());
            }
            if let Some((hf_bias, gguf_bias)) = g.bias {
                if hf == hf_bias {
                    return Some(gguf_bias.into());
                }
            }
        }
        let rest = hf.strip_prefix(self.layer_prefix)?.strip_prefix('.')?;
        let (layer, name) = rest.split_once('.')?;
        if let Some(n) = self
            .norms
            .iter()
            .find(|n| name == format!("{}.weight", n.name))
        {
            return Some(format!(
                "{}.{layer}.{}.weight",
                self.gguf_layer_prefix, n.gguf
            ));
        }
        for p in self.projections {
            for suffix in ["weight", "bias"] {
                if name == format!("{}.{}.{suffix}", p.group, p.name) {
                    return Some(format!(
                        "{}.{layer}.{}.{suffix}",
                        self.gguf_layer_prefix, p.gguf
                    ));
                }
            }
        }
        None
    }

    /// The projection a Hugging Face layer-tensor name belongs to: (layer, spec).
    pub fn parse_projection_tensor(&self, hf: &str) -> Option<(usize, &ProjectionSpec)> {
        let rest = hf.strip_prefix(self.layer_prefix)?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        let layer = parts.next()?.parse().ok()?;
        let group = parts.next()?;
        let name = parts.next()?;
        let spec = self
            .projections
            .iter()
            .find(|p| p.group == group && p.name == name)?;
        Some((layer, spec))
    }
}

/// Every projection name of every architecture, in layout order (what LoRA can target).
pub fn known_modules() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for a in Architecture::ALL {
        for n in a.layout().projection_names() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// The Hugging Face parent module ("self_attn", "mlp") of a projection name, where every
/// architecture agrees on it (PEFT tensor names need it).
pub fn module_group(name: &str) -> Option<&'static str> {
    let mut group = None;
    for a in Architecture::ALL {
        if let Some(s) = a.layout().projections.iter().find(|s| s.name == name) {
            match group {
                None => group = Some(s.group),
                Some(g) if g == s.group => {}
                Some(_) => return None,
            }
        }
    }
    group
}

impl Projection {
    /// (in_features, out_features) from the config.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let (h, q, kv, ff) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        );
        match self {
            Self::Q => (h, q),
            Self::K | Self::V => (h, kv),
            Self::O => (q, h),
            Self::Gate | Self::Up => (h, ff),
            Self::Down => (ff, h),
        }
    }

    pub fn has_bias(self, c: &ModelConfig) -> bool {
        match self {
            Self::Q | Self::K | Self::V => c.qkv_bias,
            Self::O => c.o_bias,
            Self::Gate | Self::Up | Self::Down => c.mlp_bias,
        }
    }

    /// RoPE heads of a projection whose rows llama.cpp permutes (q and k).
    pub fn rope_heads(self, c: &ModelConfig) -> Option<usize> {
        match self {
            Self::Q => Some(c.num_attention_heads),
            Self::K => Some(c.num_key_value_heads),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_follow_llama_cpp() {
        let l = Architecture::Llama.layout();
        assert_eq!(
            l.gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            l.gguf_name("model.layers.3.self_attn.q_proj.weight")
                .as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            l.gguf_name("model.layers.0.self_attn.o_proj.bias")
                .as_deref(),
            Some("blk.0.attn_output.bias")
        );
        assert_eq!(
            l.gguf_name("model.layers.12.post_attention_layernorm.weight")
                .as_deref(),
            Some("blk.12.ffn_norm.weight")
        );
        assert_eq!(
            l.gguf_name("model.layers.1.mlp.down_proj.weight")
                .as_deref(),
            Some("blk.1.ffn_down.weight")
        );
        assert_eq!(l.gguf_name("model.layers.1.mlp.nope.weight"), None);
        assert!(Architecture::Llama.layout().gguf_rope_permuted);
        assert!(!Architecture::Qwen2.layout().gguf_rope_permuted);
    }

    #[test]
    fn projection_tensor_names_round_trip() {
        let l = Architecture::Llama.layout();
        for spec in l.projections {
            let name = l.projection_tensor(5, spec, "weight");
            let (layer, back) = l.parse_projection_tensor(&name).unwrap();
            assert_eq!((layer, back.projection), (5, spec.projection));
        }
        assert!(l.projection_named("gate_proj").unwrap().mlp);
        assert_eq!(module_group("down_proj"), Some("mlp"));
        assert_eq!(module_group("o_proj"), Some("self_attn"));
        assert_eq!(known_modules().len(), 10);
        let phi = Architecture::Phi.layout();
        assert!(phi.projection(Projection::Gate).is_none());
        assert_eq!(phi.projection(Projection::Up).unwrap().name, "fc1");
        assert!(phi.projection_named("fc2").unwrap().mlp);
        assert_eq!(module_group("dense"), Some("self_attn"));
        assert_eq!(
            Architecture::Qwen3
                .layout()
                .norm(NormRole::Query)
                .unwrap()
                .name,
            "self_attn.q_norm"
        );
        let err = l.projection_named("w1").unwrap_err().to_string();
        assert!(err.contains("known: q_proj, k_proj"), "{err}");
    }
}
