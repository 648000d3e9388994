//! One entry per model family: its names in the ecosystem (Hugging Face model types and class,
//! llama.cpp's GGUF architecture), its tensor layout, the traits of its block, and how its
//! config.json spells them. Reading a config (Hugging Face or GGUF), writing one on export, LoRA
//! targets and memory planning all derive from the entry, so a family that reuses an existing
//! block is one entry in `FAMILIES` (plus its layout in `architecture.rs` where its tensor names
//! differ).

use anyhow::{bail, Result};

use super::architecture::{self as layouts, Layout};
use super::config::{Architecture, MlpKind, NormKind};

/// Where a family's attention biases come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasRule {
    Always,
    Never,
    /// config.json's `attention_bias` (default false).
    AttentionBiasKey,
}

/// How a family's config.json states a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingRule {
    /// No sliding window.
    None,
    /// `sliding_window` (null: none), every layer (Mistral).
    Window,
    /// `sliding_window` when `use_sliding_window` is true, every layer (Qwen2, Qwen3).
    UseFlag,
    /// `sliding_window` on the layers `layer_types` marks "sliding_attention" (Gemma-3).
    PerLayer,
}

/// The generation of config.json keys a family uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigDialect {
    /// transformers' keys (hidden_size, num_attention_heads, rope_theta, ...).
    Transformers,
    /// Qwen v1's remote-code keys (kv_channels, rotary_emb_base, no_bias, ...), in either of
    /// its two generations (hidden_size or n_embd, ...).
    QwenV1,
}

/// What a family's block is made of beyond the Llama block (whose values are the defaults).
#[derive(Debug, Clone, Copy)]
pub struct BlockTraits {
    pub norm: NormKind,
    pub mlp: MlpKind,
    /// Attention and MLP read the same normed input and are added together (Phi).
    pub parallel_block: bool,
    /// Normalisation of q and k before RoPE (Qwen3, Gemma-3, OLMo-2).
    pub qk_norm: bool,
    /// The q/k norm spans the whole projection (all heads: OLMo-2), not each head.
    pub qk_norm_full_width: bool,
    /// Embeddings multiplied by sqrt(hidden_size) (Gemma).
    pub embed_scale: bool,
    /// Norm weights stored as offsets from 1 (Gemma, HF layout).
    pub norm_offset: bool,
    pub qkv_bias: BiasRule,
    pub o_bias: BiasRule,
    /// Bias on the MLP projections and on the LM head (Phi).
    pub mlp_bias: bool,
    pub lm_head_bias: bool,
}

const LLAMA_BLOCK: BlockTraits = BlockTraits {
    norm: NormKind::Rms,
    mlp: MlpKind::SwiGlu,
    parallel_block: false,
    qk_norm: false,
    qk_norm_full_width: false,
    embed_scale: false,
    norm_offset: false,
    qkv_bias: BiasRule::AttentionBiasKey,
    o_bias: BiasRule::AttentionBiasKey,
    mlp_bias: false,
    lm_head_bias: false,
};

/// How a family's config.json names what differs between families.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKeys {
    pub dialect: ConfigDialect,
    /// The activation's key and the one value supported.
    pub activation: (&'static str, &'static str),
    /// The norm epsilon's key and its default.
    pub norm_eps: (&'static str, f64),
    /// tie_word_embeddings when the key is absent.
    pub tied_by_default: bool,
    pub sliding: SlidingRule,
    /// Attention scores scaled by query_pre_attn_scalar^-0.5 (this its default) instead of
    /// head_dim^-0.5 (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
}

const TRANSFORMERS_KEYS: ConfigKeys = ConfigKeys {
    dialect: ConfigDialect::Transformers,
    activation: ("hidden_act", "silu"),
    norm_eps: ("rms_norm_eps", 1e-6),
    tied_by_default: false,
    sliding: SlidingRule::None,
    query_pre_attn_scalar: None,
};

/// One model family.
#[derive(Debug)]
pub struct Family {
    pub architecture: Architecture,
    /// Hugging Face `model_type`: the one written on export.
    pub model_type: &'static str,
    /// Hugging Face `architectures[0]`.
    pub hf_class: &'static str,
    /// llama.cpp's `general.architecture`, where the family has a GGUF layout of its own.
    pub gguf_arch: Option<&'static str>,
    pub layout: &'static Layout,
    pub block: BlockTraits,
    pub keys: ConfigKeys,
}

/// Every family, in the order error messages list them.
pub static FAMILIES: [Family; 8] = [
    Family {
        architecture: Architecture::Llama,
        model_type: "llama",
        hf_class: "LlamaForCausalLM",
        gguf_arch: Some("llama"),
        layout: &layouts::LLAMA,
        block: LLAMA_BLOCK,
        keys: TRANSFORMERS_KEYS,
    },
    Family {
        architecture: Architecture::Mistral,
        model_type: "mistral",
        hf_class: "MistralForCausalLM",
        // llama.cpp writes Mistral as "llama"
        gguf_arch: None,
        layout: &layouts::LLAMA,
        block: LLAMA_BLOCK,
        keys: ConfigKeys {
            sliding: SlidingRule::Window,
            ..TRANSFORMERS_KEYS
        },
    },
    Family {
        architecture: Architecture::Qwen2,
        model_type: "qwen2",
        hf_class: "Qwen2ForCausalLM",
        gguf_arch: Some("qwen2"),
        layout: &layouts::QWEN2,
        block: BlockTraits {
            qkv_bias: BiasRule::Always,
            o_bias: BiasRule::Never,
            ..LLAMA_BLOCK
        },
        keys: ConfigKeys {
            sliding: SlidingRule::UseFlag,
            ..TRANSFORMERS_KEYS
        },
    },
    Family {
        architecture: Architecture::Qwen3,
        model_type: "qwen3",
        hf_class: "Qwen3ForCausalLM",
        gguf_arch: Some("qwen3"),
        layout: &layouts::QWEN3,
        block: BlockTraits {
            qk_norm: true,
            ..LLAMA_BLOCK
        },
        keys: ConfigKeys {
            sliding: SlidingRule::UseFlag,
            ..TRANSFORMERS_KEYS
        },
    },
    Family {
        architecture: Architecture::Qwen,
        model_type: "qwen",
        hf_class: "QWenLMHeadModel",
        gguf_arch: None,
        layout: &layouts::QWEN,
        // the o and MLP biases follow config.json's no_bias (read by the QwenV1 dialect)
        block: BlockTraits {
            qkv_bias: BiasRule::Always,
            ..LLAMA_BLOCK
        },
        keys: ConfigKeys {
            dialect: ConfigDialect::QwenV1,
            norm_eps: ("layer_norm_epsilon", 1e-6),
            ..TRANSFORMERS_KEYS
        },
    },
    Family {
        architecture: Architecture::Phi,
        model_type: "phi",
        hf_class: "PhiForCausalLM",
        gguf_arch: Some("phi2"),
        layout: &layouts::PHI,
        block: BlockTraits {
            norm: NormKind::Layer,
            mlp: MlpKind::GeluTanh,
            parallel_block: true,
            qkv_bias: BiasRule::Always,
            o_bias: BiasRule::Always,
            mlp_bias: true,
            lm_head_bias: true,
            ..LLAMA_BLOCK
        },
        keys: ConfigKeys {
            activation: ("hidden_act", "gelu_new"),
            norm_eps: ("layer_norm_eps", 1e-5),
            ..TRANSFORMERS_KEYS
        },
    },
    Family {
        architecture: Architecture::Gemma3,
        model_type: "gemma3_text",
        hf_class: "Gemma3ForCausalLM",
        gguf_arch: Some("gemma3"),
        layout: &layouts::GEMMA3,
        block: BlockTraits {
            mlp: MlpKind::GeluTanhGated,
            qk_norm: true,
            embed_scale: true,
            norm_offset: true,
            ..LLAMA_BLOCK
        },
        keys: ConfigKeys {
            activation: ("hidden_activation", "gelu_pytorch_tanh"),
            tied_by_default: true,
            sliding: SlidingRule::PerLayer,
            query_pre_attn_scalar: Some(256.0),
            ..TRANSFORMERS_KEYS
        },
    },
    Family {
        architecture: Architecture::Olmo2,
        model_type: "olmo2",
        hf_class: "Olmo2ForCausalLM",
        gguf_arch: Some("olmo2"),
        layout: &layouts::OLMO2,
        block: BlockTraits {
            qk_norm: true,
            qk_norm_full_width: true,
            ..LLAMA_BLOCK
        },
        keys: ConfigKeys {
            norm_eps: ("rms_norm_eps", 1e-5),
            ..TRANSFORMERS_KEYS
        },
    },
];

impl Architecture {
    /// Every family's architecture, in `FAMILIES` order.
    pub const ALL: [Architecture; 8] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen3,
        Self::Qwen,
        Self::Phi,
        Self::Gemma3,
        Self::Olmo2,
    ];

    /// This architecture's family entry.
    pub fn family(self) -> &'static Family {
        FAMILIES
            .iter()
            .find(|f| f.architecture == self)
            .expect("every Architecture has an entry in FAMILIES (tested)")
    }
    pub fn layout(self) -> &'static Layout {
        self.family().layout
    }
    pub fn hf_model_type(self) -> &'static str {
        self.family().model_type
    }
    pub fn hf_class(self) -> &'static str {
        self.family().hf_class
    }
}

impl Family {
    /// The family whose Hugging Face `model_type` is `model_type`.
    pub fn by_model_type(model_type: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.model_type == model_type)
    }
    /// The family whose GGUF `general.architecture` is `name`.
    pub fn by_gguf_arch(name: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.gguf_arch == Some(name))
    }
    /// "a, b, c": the model types layerprune reads (for error messages).
    pub fn model_types() -> String {
        let v: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
        v.join(", ")
    }
    /// The GGUF architectures layerprune reads (for error messages).
    pub fn gguf_archs() -> String {
        let v: Vec<&str> = FAMILIES.iter().filter_map(|f| f.gguf_arch).collect();
        v.join(", ")
    }
}

/// Every LoRA target name of every architecture, in layout order.
pub fn known_modules() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for f in &FAMILIES {
        for n in f.layout.projection_names() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Whether some architecture accepts `target` as a LoRA target; else the reason (ambiguous in
/// the architecture that has it, or unknown, with the known names).
pub fn check_target_name(target: &str) -> Result<()> {
    let mut ambiguous = None;
    for f in &FAMILIES {
        match f.layout.projection_named(target) {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("ambiguous") => {
                ambiguous = Some(format!("{e} ({:?} layers)", f.architecture))
            }
            Err(_) => {}
        }
    }
    match ambiguous {
        Some(e) => bail!(e),
        None => bail!(
            "unknown module {target:?} (known: {})",
            known_modules().join(", ")
        ),
    }
}

/// A PEFT module path inside the model ("model.layers.3.mlp.gate_proj") parsed against every
/// layout: (layer, the target name the layout uses for it: "gate_proj", or "mlp.c_proj" where the
/// bare name is shared).
pub fn parse_module_path(path: &str) -> Option<(usize, String)> {
    for f in &FAMILIES {
        let l = f.layout;
        let Some(rest) = path
            .strip_prefix(l.layer_prefix)
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let (layer, module) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        // several layouts share a layer prefix (model.layers): the one with this module
        let Some(spec) = l
            .projections
            .iter()
            .find(|s| !s.fused && s.qualified() == module)
        else {
            continue;
        };
        let names = l.projection_names();
        let name = if names.iter().any(|n| n == module) {
            module.to_string()
        } else {
            spec.name.to_string()
        };
        return Some((layer, name));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_module_paths_parse_against_every_layout() {
        assert_eq!(
            parse_module_path("model.layers.3.mlp.down_proj"),
            Some((3, "down_proj".to_string()))
        );
        assert_eq!(
            parse_module_path("transformer.h.12.mlp.c_proj"),
            Some((12, "mlp.c_proj".to_string()))
        );
        assert_eq!(
            parse_module_path("transformer.h.0.mlp.w2"),
            Some((0, "w2".to_string()))
        );
        assert_eq!(parse_module_path("transformer.h.0.attn.c_attn"), None);
        // Phi shares Llama's layer prefix: its modules are found in its own layout
        assert_eq!(
            parse_module_path("model.layers.2.mlp.fc1"),
            Some((2, "fc1".to_string()))
        );
        assert_eq!(
            parse_module_path("model.layers.2.self_attn.dense"),
            Some((2, "dense".to_string()))
        );
        assert_eq!(parse_module_path("model.layers.2.mlp.nope"), None);
        // llama 7, phi fc1 fc2 dense, qwen w1 w2 attn.c_proj mlp.c_proj
        assert_eq!(known_modules().len(), 14);
    }

    #[test]
    fn every_architecture_has_one_entry_and_names_are_unique() {
        assert_eq!(Architecture::ALL.len(), FAMILIES.len());
        for (a, f) in Architecture::ALL.iter().zip(FAMILIES.iter()) {
            assert_eq!(*a, f.architecture);
        }
        for (i, f) in FAMILIES.iter().enumerate() {
            for g in &FAMILIES[i + 1..] {
                assert_ne!(f.model_type, g.model_type);
                assert_ne!(f.hf_class, g.hf_class);
                assert!(f.gguf_arch.is_none() || f.gguf_arch != g.gguf_arch);
            }
            assert_eq!(
                Family::by_model_type(f.model_type).unwrap().architecture,
                f.architecture
            );
            if let Some(g) = f.gguf_arch {
                assert_eq!(
                    Family::by_gguf_arch(g).unwrap().architecture,
                    f.architecture
                );
            }
        }
    }
}
