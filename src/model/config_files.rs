//! A `ModelConfig` from and to the files that carry it, as each family (`family.rs`) spells
//! it: a Hugging Face `config.json` (read, and written on export) and GGUF metadata (read).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::config::{
    check_size, Architecture, MlpKind, ModelConfig, NormKind, RopeScaling, MAX_LAYERS,
};
use super::family::{BiasRule, ConfigDialect, Family, SlidingRule};
use crate::formats::gguf::GgufFile;

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
        let fam = match Family::by_model_type(model_type) {
            Some(f) => f,
            None if model_type == "gemma3" => bail!(
                "{}: model_type = \"gemma3\" is the multimodal Gemma-3; use the text model's \
                 config (model_type \"gemma3_text\", Gemma3ForCausalLM)",
                file.display()
            ),
            None => bail!(
                "{}: unsupported architecture model_type = \"{model_type}\" (supported: {})",
                file.display(),
                Family::model_types()
            ),
        };
        if fam.keys.dialect == ConfigDialect::QwenV1 {
            return Self::from_qwen_json(&k);
        }
        let block = &fam.block;
        let per_layer = fam.keys.sliding == SlidingRule::PerLayer;
        if !block.mlp_bias && k.opt_bool("mlp_bias")?.unwrap_or(false) {
            bail!("{}: mlp_bias = true is not supported", file.display());
        }
        let (act_key, expected_act) = fam.keys.activation;
        if let Some(act) = k.get(act_key).and_then(|v| v.as_str()) {
            if act != expected_act {
                bail!(
                    "{}: {act_key} = \"{act}\" is not supported (expected \"{expected_act}\")",
                    file.display()
                );
            }
        }
        if !block.qk_norm && k.opt_bool("qk_layernorm")?.unwrap_or(false) {
            bail!(
                "{}: qk_layernorm = true is not supported for {model_type}",
                file.display()
            );
        }
        if k.get("attn_logit_softcapping").is_some() {
            bail!(
                "{}: attn_logit_softcapping is not supported",
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
        let (rope_theta, rope_scaling, rope_local_theta) = read_rope(&k, per_layer)?;
        let sliding_window = match fam.keys.sliding {
            SlidingRule::None => None,
            SlidingRule::Window | SlidingRule::PerLayer => k.opt_usize("sliding_window")?,
            SlidingRule::UseFlag if k.opt_bool("use_sliding_window")?.unwrap_or(false) => {
                k.opt_usize("sliding_window")?
            }
            SlidingRule::UseFlag => None,
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
        let sliding_layers = if per_layer {
            read_layer_types(&k, num_hidden_layers)?
        } else {
            Vec::new()
        };
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            bail!(
                "{}: partial_rotary_factor must be in (0, 1], got {partial_rotary_factor}",
                file.display()
            );
        }
        let attention_bias = k.opt_bool("attention_bias")?.unwrap_or(false);
        let bias = |rule: BiasRule| match rule {
            BiasRule::Always => true,
            BiasRule::Never => false,
            BiasRule::AttentionBiasKey => attention_bias,
        };
        let (eps_key, eps_default) = fam.keys.norm_eps;
        let cfg = Self {
            architecture: fam.architecture,
            vocab_size: k.usize("vocab_size")?,
            hidden_size,
            intermediate_size: k.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: k.opt_f64(eps_key)?.unwrap_or(eps_default),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: k
                .opt_bool("tie_word_embeddings")?
                .unwrap_or(fam.keys.tied_by_default),
            qkv_bias: bias(block.qkv_bias),
            o_bias: bias(block.o_bias),
            max_position_embeddings: k.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            sliding_window,
            bos_token_id: k.opt_token("bos_token_id"),
            eos_token_id: k.opt_token("eos_token_id"),
            norm: block.norm,
            mlp: block.mlp,
            parallel_block: block.parallel_block,
            qk_norm: block.qk_norm,
            qk_norm_full_width: block.qk_norm_full_width,
            partial_rotary_factor,
            mlp_bias: block.mlp_bias,
            lm_head_bias: block.lm_head_bias,
            embed_scale: block.embed_scale,
            norm_offset: block.norm_offset,
            sliding_layers,
            rope_local_theta,
            query_pre_attn_scalar: match fam.keys.query_pre_attn_scalar {
                Some(default) => Some(k.opt_f64("query_pre_attn_scalar")?.unwrap_or(default)),
                None => None,
            },
            final_logit_softcapping: k.opt_f64("final_logit_softcapping")?,
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
            qk_norm_full_width: false,
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

    /// Read the configuration from GGUF metadata (llama.cpp key names).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.require_str("general.architecture")?;
        let fam = Family::by_gguf_arch(arch_name).with_context(|| {
            format!(
                "{}: unsupported architecture general.architecture = \"{arch_name}\" (supported: {})",
                g.path().display(),
                Family::gguf_archs()
            )
        })?;
        let block = &fam.block;
        let fused = fam.layout.projections.iter().any(|p| p.fused);
        if !fused && g.tensor_info("blk.0.attn_qkv.weight").is_some() {
            bail!(
                "{}: this {arch_name} file fuses q, k and v (blk.N.attn_qkv, converted from the \
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
        let rms_norm_eps = match block.norm {
            NormKind::Layer => g.require_f64(&key("attention.layer_norm_epsilon"))?,
            NormKind::Rms => g.require_f64(&key("attention.layer_norm_rms_epsilon"))?,
        };
        // the rotated dims per head (Phi-2's partial rotary)
        let partial_rotary_factor = match g.get(&key("rope.dimension_count")) {
            Some(_) if head_dim > 0 => {
                g.require_u64(&key("rope.dimension_count"))? as f64 / head_dim as f64
            }
            _ => 1.0,
        };
        let per_layer = fam.keys.sliding == SlidingRule::PerLayer;
        let num_hidden_layers = g.require_u64(&key("block_count"))? as usize;
        check_size(&key("block_count"), num_hidden_layers, MAX_LAYERS)
            .with_context(|| format!("{}", g.path().display()))?;
        let cfg = Self {
            architecture: fam.architecture,
            vocab_size,
            hidden_size,
            intermediate_size: g.require_u64(&key("feed_forward_length"))? as usize,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            // biases: GGUF files say by the tensors they hold
            qkv_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
            o_bias: g.tensor_info("blk.0.attn_output.bias").is_some(),
            max_position_embeddings: match g.get(&key("context_length")) {
                Some(_) => g.require_u64(&key("context_length"))? as usize,
                None => 4096,
            },
            sliding_window: if per_layer {
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
            norm: block.norm,
            mlp: block.mlp,
            parallel_block: block.parallel_block,
            qk_norm: block.qk_norm,
            qk_norm_full_width: block.qk_norm_full_width,
            partial_rotary_factor,
            mlp_bias: g.tensor_info("blk.0.ffn_up.bias").is_some(),
            lm_head_bias: g.tensor_info("output.bias").is_some(),
            embed_scale: block.embed_scale,
            norm_offset: block.norm_offset,
            // GGUF metadata holds no layer pattern, local RoPE base or attention scalar (Gemma-3):
            // transformers' Gemma3TextConfig defaults (every 6th layer global, 10000, 256), as
            // its GGUF loader uses them
            sliding_layers: if per_layer {
                (0..num_hidden_layers).map(|i| (i + 1) % 6 != 0).collect()
            } else {
                Vec::new()
            },
            rope_local_theta: per_layer.then_some(10000.0),
            query_pre_attn_scalar: fam.keys.query_pre_attn_scalar,
            final_logit_softcapping: None,
            context_limit: None,
        };
        cfg.validate()
            .with_context(|| format!("{}", g.path().display()))?;
        Ok(cfg)
    }

    /// A Hugging Face `config.json` for this model as its family spells it (what transformers
    /// >= 5 writes), read back by `from_hf_json` as this same configuration. Used when exporting
    /// a model whose source is not a Hugging Face directory. Errors name what the family's
    /// config.json cannot express.
    pub fn to_hf_json(&self) -> Result<Value> {
        let fam = self.architecture.family();
        if fam.keys.dialect == ConfigDialect::QwenV1 {
            return self.to_qwen_json();
        }
        let block = &fam.block;
        let cannot =
            |what: &str| anyhow::anyhow!("a {} config.json cannot express {what}", fam.model_type);
        let (act_key, act) = fam.keys.activation;
        let (eps_key, _) = fam.keys.norm_eps;
        let mut j = serde_json::json!({
            "architectures": [fam.hf_class],
            "model_type": fam.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            act_key: act,
            eps_key: self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": "float32",
        });
        let o = j.as_object_mut().expect("a JSON object");
        // biases: what the family fixes must hold; what it reads from attention_bias is written
        let mut attention_bias = None;
        for (rule, has, what) in [
            (block.qkv_bias, self.qkv_bias, "q/k/v biases"),
            (block.o_bias, self.o_bias, "an output projection bias"),
        ] {
            match rule {
                BiasRule::Always if !has => return Err(cannot(&format!("no {what}"))),
                BiasRule::Never if has => return Err(cannot(what)),
                BiasRule::AttentionBiasKey => {
                    if attention_bias.is_some_and(|b| b != has) {
                        return Err(cannot("q/k/v biases without an output bias or the reverse"));
                    }
                    attention_bias = Some(has);
                }
                _ => {}
            }
        }
        if let Some(b) = attention_bias {
            o.insert("attention_bias".into(), b.into());
        }
        if self.mlp_bias != block.mlp_bias {
            return Err(cannot(if self.mlp_bias {
                "MLP biases"
            } else {
                "an MLP without biases"
            }));
        }
        if self.lm_head_bias != block.lm_head_bias {
            return Err(cannot(if self.lm_head_bias {
                "an LM head bias"
            } else {
                "an LM head without bias"
            }));
        }
        if !block.mlp_bias {
            o.insert("mlp_bias".into(), false.into());
        }
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        if let Some(e) = self.eos_token_id {
            o.insert("eos_token_id".into(), e.into());
        }
        if let Some(s) = self.query_pre_attn_scalar {
            if fam.keys.query_pre_attn_scalar.is_none() {
                return Err(cannot("query_pre_attn_scalar"));
            }
            o.insert("query_pre_attn_scalar".into(), whole_as_integer(s));
        }
        if let Some(c) = self.final_logit_softcapping {
            o.insert("final_logit_softcapping".into(), c.into());
        }
        let types = |sliding: &dyn Fn(usize) -> bool| -> Value {
            (0..self.num_hidden_layers)
                .map(|i| {
                    if sliding(i) {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect::<Vec<_>>()
                .into()
        };
        let mut rope = rope_json(self.rope_theta, self.rope_scaling.as_ref())?;
        if self.partial_rotary_factor != 1.0 {
            rope.insert(
                "partial_rotary_factor".into(),
                self.partial_rotary_factor.into(),
            );
        }
        match fam.keys.sliding {
            SlidingRule::None if self.sliding_window.is_some() => {
                return Err(cannot("a sliding window"))
            }
            SlidingRule::None => {}
            SlidingRule::Window => {
                o.insert("sliding_window".into(), self.sliding_window.into());
            }
            SlidingRule::UseFlag => {
                // every layer slides (max_window_layers 0), as `from_hf_json` reads it
                o.insert(
                    "use_sliding_window".into(),
                    self.sliding_window.is_some().into(),
                );
                o.insert("sliding_window".into(), self.sliding_window.into());
                if self.sliding_window.is_some() {
                    o.insert("max_window_layers".into(), 0.into());
                }
                o.insert(
                    "layer_types".into(),
                    types(&|_| self.sliding_window.is_some()),
                );
            }
            SlidingRule::PerLayer => {
                o.insert("sliding_window".into(), self.sliding_window.into());
                o.insert("layer_types".into(), types(&|i| self.layer_is_sliding(i)));
                let local = rope_json(self.rope_local_theta.unwrap_or(10000.0), None)?;
                rope = serde_json::Map::from_iter([
                    ("full_attention".to_string(), Value::Object(rope)),
                    ("sliding_attention".to_string(), Value::Object(local)),
                ]);
            }
        }
        o.insert("rope_parameters".into(), Value::Object(rope));
        Ok(j)
    }

    /// Qwen v1's config.json (the later generation of its keys), read back by `from_qwen_json`.
    fn to_qwen_json(&self) -> Result<Value> {
        if self.rope_scaling.is_some() || self.sliding_window.is_some() {
            bail!("a qwen config.json cannot express RoPE scaling or a sliding window");
        }
        let mut j = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.hf_model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            // QWenMLP is intermediate_size / 2 wide
            "intermediate_size": self.intermediate_size * 2,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "kv_channels": self.head_dim,
            "layer_norm_epsilon": self.rms_norm_eps,
            "rotary_emb_base": self.rope_theta,
            "rotary_pct": self.partial_rotary_factor,
            "no_bias": !self.o_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "seq_length": self.context_limit.unwrap_or(self.max_position_embeddings),
            "use_dynamic_ntk": self.context_limit.is_some(),
            "use_logn_attn": self.context_limit.is_some(),
            "torch_dtype": "float32",
        });
        let o = j.as_object_mut().expect("a JSON object");
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        if let Some(e) = self.eos_token_id {
            o.insert("eos_token_id".into(), e.into());
        }
        Ok(j)
    }
}

/// `x` as a JSON integer when it is a whole number: transformers' configs type-check fields such
/// as query_pre_attn_scalar as int and refuse 256.0.
fn whole_as_integer(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        (x as i64).into()
    } else {
        x.into()
    }
}

/// A transformers >= 5 `rope_parameters` table.
fn rope_json(theta: f64, scaling: Option<&RopeScaling>) -> Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    match scaling {
        None => {
            m.insert("rope_type".into(), "default".into());
        }
        Some(RopeScaling::Linear { factor }) => {
            m.insert("rope_type".into(), "linear".into());
            m.insert("factor".into(), (*factor).into());
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            m.insert("rope_type".into(), "llama3".into());
            m.insert("factor".into(), (*factor).into());
            m.insert("low_freq_factor".into(), (*low_freq_factor).into());
            m.insert("high_freq_factor".into(), (*high_freq_factor).into());
            m.insert(
                "original_max_position_embeddings".into(),
                whole_as_integer(*original_max_position_embeddings),
            );
        }
        // transformers has no per-frequency-divisor configuration (GGUF's rope_freqs)
        Some(RopeScaling::Factors { .. }) => bail!(
            "the model's RoPE uses per-frequency factors (GGUF rope_freqs), which a transformers \
             config cannot express"
        ),
    }
    m.insert("rope_theta".into(), theta.into());
    Ok(m)
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

/// (rope_theta, rope_scaling, the sliding layers' rope_theta) of a config.json. transformers >= 5
/// nests rope settings in `rope_parameters` (one table per layer type where layers differ:
/// `per_layer`); older configs use `rope_theta`, `rope_scaling` and `rope_local_base_freq` at
/// the top level.
fn read_rope(k: &JsonKeys, per_layer: bool) -> Result<(f64, Option<RopeScaling>, Option<f64>)> {
    let file = k.file;
    let mut rope_params = k.get("rope_parameters").cloned();
    let mut rope_local_theta = None;
    if per_layer {
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
    let rope_scaling = match rope_params.or_else(|| k.get("rope_scaling").cloned()) {
        None => None,
        Some(s) => parse_rope_scaling(file, &s)?,
    };
    Ok((rope_theta, rope_scaling, rope_local_theta))
}

/// Per layer, whether it attends within the sliding window: config.json's `layer_types`, else
/// transformers' default of every `sliding_window_pattern`-th layer global.
fn read_layer_types(k: &JsonKeys, num_hidden_layers: usize) -> Result<Vec<bool>> {
    let file = k.file;
    let sliding = match k.get("layer_types") {
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
        None => {
            let pattern = k.opt_usize("sliding_window_pattern")?.unwrap_or(6);
            if pattern == 0 {
                bail!("{}: sliding_window_pattern must be positive", file.display());
            }
            (0..num_hidden_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    if sliding.len() != num_hidden_layers {
        bail!(
            "{}: layer_types lists {} layers, num_hidden_layers is {num_hidden_layers}",
            file.display(),
            sliding.len()
        );
    }
    Ok(sliding)
}
