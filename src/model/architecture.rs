//! The tensor layouts of the families: a decoder layer's norms and linear projections, which of
//! them belong to the MLP, their shapes from the config, and their names in the Hugging Face and
//! GGUF layouts. Loading, NF4 quantisation, LoRA targets, export and pruning iterate over this
//! description instead of listing the parts by hand. A family (`family.rs`) names its layout;
//! families with the same tensor names share one.

use anyhow::{bail, Result};

use super::config::ModelConfig;

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

impl Projection {
    /// Every projection, in layer order.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];
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
    /// Rows of a fused q/k/v module (Qwen v1's c_attn: [q; k; v]): q, k and v share `name`,
    /// each is its slice of rows (see `Projection::fused_rows`).
    pub fused: bool,
}

impl ProjectionSpec {
    /// `group.name`, e.g. "mlp.c_proj": what a LoRA target may say when the bare name is
    /// ambiguous.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.group, self.name)
    }
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
    /// The norm's length: hidden_size; head_dim for per-head q/k norms, or the whole q or k
    /// projection's width (`qk_norm_full_width`).
    pub fn size(&self, c: &ModelConfig) -> usize {
        match self.role {
            NormRole::Input | NormRole::AttnOut | NormRole::PreMlp | NormRole::MlpOut => {
                c.hidden_size
            }
            NormRole::Query if c.qk_norm_full_width => c.num_attention_heads * c.head_dim,
            NormRole::Key if c.qk_norm_full_width => c.num_key_value_heads * c.head_dim,
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

/// The attention's output norm (Gemma-3, OLMo-2; the HF name post_attention_layernorm, which
/// in Llama names the norm before the MLP).
const ATTN_OUT_NORM: NormSpec = NormSpec {
    role: NormRole::AttnOut,
    name: "post_attention_layernorm",
    gguf: "post_attention_norm",
    bias: false,
};
/// The MLP's output norm (Gemma-3, OLMo-2).
const MLP_OUT_NORM: NormSpec = NormSpec {
    role: NormRole::MlpOut,
    name: "post_feedforward_layernorm",
    gguf: "post_ffw_norm",
    bias: false,
};

/// Gemma-3: norms around attention and MLP, per-head q/k norms.
const GEMMA3_NORMS: [NormSpec; 6] = [
    INPUT_NORM,
    ATTN_OUT_NORM,
    NormSpec {
        role: NormRole::PreMlp,
        name: "pre_feedforward_layernorm",
        gguf: "ffn_norm",
        bias: false,
    },
    MLP_OUT_NORM,
    Q_NORM,
    K_NORM,
];

/// OLMo-2: norms of the attention's and the MLP's outputs only (no norm before either), q/k
/// norms over the whole projection.
const OLMO2_NORMS: [NormSpec; 4] = [ATTN_OUT_NORM, MLP_OUT_NORM, Q_NORM, K_NORM];

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
        fused: false,
    }
}

const fn fused_qkv(
    projection: Projection,
    name: &'static str,
    gguf: &'static str,
) -> ProjectionSpec {
    ProjectionSpec {
        fused: true,
        ..self::projection(projection, name, "attn", gguf)
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

/// Qwen v1 (QWenLMHeadModel): q, k, v fused in attn.c_attn; the MLP is
/// c_proj(w1(x) * silu(w2(x))), so w2 is the gated branch (Llama's gate) and w1 the up branch.
/// "c_proj" names both the attention output and the MLP's down projection.
const QWEN_PROJECTIONS: [ProjectionSpec; 7] = [
    fused_qkv(Projection::Q, "c_attn", "attn_qkv"),
    fused_qkv(Projection::K, "c_attn", "attn_qkv"),
    fused_qkv(Projection::V, "c_attn", "attn_qkv"),
    projection(Projection::O, "c_proj", "attn", "attn_output"),
    projection(Projection::Gate, "w2", "mlp", "ffn_gate"),
    projection(Projection::Up, "w1", "mlp", "ffn_up"),
    projection(Projection::Down, "c_proj", "mlp", "ffn_down"),
];

const QWEN_NORMS: [NormSpec; 2] = [
    NormSpec {
        name: "ln_1",
        ..INPUT_NORM
    },
    NormSpec {
        name: "ln_2",
        ..POST_ATTENTION_NORM
    },
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
pub(super) static LLAMA: Layout = llama_layout(&LLAMA_NORMS, true);
/// Qwen2: the Llama block with q/k/v biases; llama.cpp keeps NEOX (half-split) RoPE as is.
pub(super) static QWEN2: Layout = llama_layout(&LLAMA_NORMS, false);
/// Qwen3: the Qwen2 block without biases, with per-head q/k RMSNorms.
pub(super) static QWEN3: Layout = llama_layout(&QWEN3_NORMS, false);
/// Gemma-3: the Llama projections, Gemma's norms; llama.cpp keeps NEOX RoPE as is.
pub(super) static GEMMA3: Layout = llama_layout(&GEMMA3_NORMS, false);
/// OLMo-2: the Llama projections, its own norms; llama.cpp keeps NEOX RoPE as is.
pub(super) static OLMO2: Layout = llama_layout(&OLMO2_NORMS, false);
/// Phi-2 (HF layout): one LayerNorm with bias per layer, final_layernorm, LM head with bias.
pub(super) static PHI: Layout = Layout {
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

/// Qwen v1: transformer.wte, transformer.h.{i}.{ln_1, attn, ln_2, mlp}, transformer.ln_f.
pub(super) static QWEN: Layout = Layout {
    layer_prefix: "transformer.h",
    gguf_layer_prefix: "blk",
    norms: &QWEN_NORMS,
    projections: &QWEN_PROJECTIONS,
    embed: GlobalTensor {
        hf: "transformer.wte.weight",
        ..EMBED
    },
    final_norm: GlobalTensor {
        hf: "transformer.ln_f.weight",
        ..FINAL_NORM
    },
    lm_head: LM_HEAD,
    gguf_rope_permuted: false,
};

impl Layout {
    /// The projection `p`, if the architecture has it (Phi has no gate).
    pub fn projection(&self, p: Projection) -> Option<&ProjectionSpec> {
        self.projections.iter().find(|s| s.projection == p)
    }

    /// The norm of `role`, if the architecture has it.
    pub fn norm(&self, role: NormRole) -> Option<&NormSpec> {
        self.norms.iter().find(|n| n.role == role)
    }

    /// The projection a LoRA target names: its Hugging Face module name ("gate_proj") or, where
    /// that is ambiguous, `group.name` ("mlp.c_proj"). Fused modules (Qwen v1's c_attn) cannot be
    /// targets. Errors list the names the architecture accepts.
    pub fn projection_named(&self, target: &str) -> Result<&ProjectionSpec> {
        let matches: Vec<&ProjectionSpec> = self
            .projections
            .iter()
            .filter(|s| s.name == target || s.qualified() == target)
            .collect();
        match matches.as_slice() {
            [] => bail!(
                "unknown module {target:?} (known: {})",
                self.projection_names().join(", ")
            ),
            [s, ..] if s.fused => bail!(
                "module {target:?} fuses q, k and v; LoRA on it is not supported (known: {})",
                self.projection_names().join(", ")
            ),
            [s] => Ok(s),
            several => bail!(
                "module {target:?} is ambiguous: it names {}; write one of these",
                several
                    .iter()
                    .map(|s| s.qualified())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        }
    }

    /// The names LoRA targets may use: each module's name, or `group.name` where two modules
    /// share a name; fused modules are left out.
    pub fn projection_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in self.projections.iter().filter(|s| !s.fused) {
            let shared = self.projections.iter().filter(|o| o.name == s.name).count() > 1;
            let n = if shared {
                s.qualified()
            } else {
                s.name.to_string()
            };
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
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
        let mut push = |name: String| {
            if !v.contains(&name) {
                v.push(name);
            }
        };
        for p in self.projections {
            push(format!("{}.{}.weight", p.group, p.name));
        }
        for p in self
            .projections
            .iter()
            .filter(|p| p.projection.has_bias(cfg))
        {
            push(format!("{}.{}.bias", p.group, p.name));
        }
        v
    }

    /// The number of parameters a model of this layout and `cfg` has (embedding, layers, final
    /// norm, LM head unless tied; biases where the config has them).
    pub fn parameter_count(&self, cfg: &ModelConfig) -> u64 {
        let (v, h) = (cfg.vocab_size as u64, cfg.hidden_size as u64);
        let mut layer = 0u64;
        for n in self.norms {
            layer += n.size(cfg) as u64 * if n.bias { 2 } else { 1 };
        }
        for p in self.projections {
            let (inp, out) = p.projection.dims(cfg);
            layer += (inp * out) as u64;
            if p.projection.has_bias(cfg) {
                layer += out as u64;
            }
        }
        let mut total = v * h + layer * cfg.num_hidden_layers as u64;
        total += h * if self.final_norm.bias.is_some() { 2 } else { 1 };
        if !cfg.tie_word_embeddings {
            total += v * h;
        }
        if cfg.lm_head_bias {
            total += v;
        }
        total
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
        for n in self.norms {
            for suffix in ["weight", "bias"] {
                if name == format!("{}.{suffix}", n.name) {
                    return Some(format!(
                        "{}.{layer}.{}.{suffix}",
                        self.gguf_layer_prefix, n.gguf
                    ));
                }
            }
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

    /// The rows of a fused [q; k; v] weight that hold this projection: (first row, rows).
    pub fn fused_rows(self, c: &ModelConfig) -> (usize, usize) {
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        match self {
            Self::Q => (0, q),
            Self::K => (q, kv),
            Self::V => (q + kv, kv),
            other => (0, other.dims(c).1),
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
        let l = &LLAMA;
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
        assert!(&LLAMA.gguf_rope_permuted);
        assert!(!&QWEN2.gguf_rope_permuted);
    }

    #[test]
    fn projection_tensor_names_round_trip() {
        let l = &LLAMA;
        for spec in l.projections {
            let name = l.projection_tensor(5, spec, "weight");
            let (layer, back) = l.parse_projection_tensor(&name).unwrap();
            assert_eq!((layer, back.projection), (5, spec.projection));
        }
        assert!(l.projection_named("gate_proj").unwrap().mlp);
        let qwen = &QWEN;
        assert_eq!(
            qwen.projection_names(),
            ["attn.c_proj", "w2", "w1", "mlp.c_proj"]
        );
        assert_eq!(
            qwen.projection_named("mlp.c_proj").unwrap().projection,
            Projection::Down
        );
        assert_eq!(
            qwen.projection_named("w2").unwrap().projection,
            Projection::Gate
        );
        let err = qwen.projection_named("c_proj").unwrap_err().to_string();
        assert!(
            err.contains("ambiguous") && err.contains("attn.c_proj and mlp.c_proj"),
            "{err}"
        );
        let err = qwen.projection_named("c_attn").unwrap_err().to_string();
        assert!(err.contains("fuses q, k and v"), "{err}");
        let phi = &PHI;
        assert!(phi.projection(Projection::Gate).is_none());
        assert_eq!(phi.projection(Projection::Up).unwrap().name, "fc1");
        assert!(phi.projection_named("fc2").unwrap().mlp);
        assert_eq!(
            QWEN3.norm(NormRole::Query).unwrap().name,
            "self_attn.q_norm"
        );
        let err = l.projection_named("w1").unwrap_err().to_string();
        assert!(err.contains("known: q_proj, k_proj"), "{err}");
    }
}
