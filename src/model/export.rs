//! Write a (pruned) model as a Hugging Face model directory that transformers loads:
//! config.json (num_hidden_layers updated, plus a "layerprune" entry), model.safetensors with the
//! kept layers renumbered from 0, tokenizer.json (and the source's tokenizer_config.json and
//! special_tokens_map.json when it has them). GGUF weights are written dequantised.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::config::RopeScaling;
use super::load::ModelFiles;
use crate::backend::Precision;
use crate::heal::adapter::AdapterSet;

/// Names of the tensors of one decoder layer (Hugging Face naming).
fn layer_tensors(files: &ModelFiles) -> Vec<&'static str> {
    let mut v = vec![
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    if files.config.qkv_bias {
        v.extend([
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.bias",
        ]);
    }
    if files.config.o_bias {
        v.push("self_attn.o_proj.bias");
    }
    v
}

fn encode(data: &[f32], precision: Precision) -> (Dtype, Vec<u8>) {
    match precision {
        Precision::F32 => (
            Dtype::F32,
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Precision::Bf16 => (
            Dtype::BF16,
            data.iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
        ),
        Precision::F16 => (
            Dtype::F16,
            data.iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
        ),
    }
}

/// Export the model keeping the original layers `kept` into `dir` (created).
pub fn export_hf(
    files: &ModelFiles,
    kept: &[usize],
    dir: &Path,
    precision: Precision,
    meta: serde_json::Value,
) -> Result<()> {
    let none = AdapterSet {
        config: crate::heal::adapter::LoraConfig {
            r: 1,
            alpha: 1.0,
            dropout: 0.0,
            target_modules: vec![],
        },
        modules: vec![],
    };
    export_hf_with_adapter(files, kept, &none, dir, precision, meta)
}

/// Export with a LoRA adapter merged into the weights (W + (alpha / r) B A); the adapter's layer
/// indices are those of the pruned model (0-based, renumbered).
pub fn export_hf_with_adapter(
    files: &ModelFiles,
    kept: &[usize],
    adapter: &AdapterSet,
    dir: &Path,
    precision: Precision,
    meta: serde_json::Value,
) -> Result<()> {
    let cfg = &files.config;
    if let Some(RopeScaling::Factors { .. }) = cfg.rope_scaling {
        bail!("cannot export: the model's RoPE uses per-frequency factors (GGUF rope_freqs), which a transformers config cannot express");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // config.json: the source's own for Hugging Face directories, else one made from the metadata
    let mut config = if files.format == "hf" {
        let p = files.source.path.join("config.json");
        serde_json::from_str(&std::fs::read_to_string(&p)?)
            .with_context(|| format!("{}: invalid JSON", p.display()))?
    } else {
        cfg.to_hf_json()
    };
    let dtype_name = match precision {
        Precision::F32 => "float32",
        Precision::Bf16 => "bfloat16",
        Precision::F16 => "float16",
    };
    let obj = config
        .as_object_mut()
        .context("config.json is not an object")?;
    obj.insert("num_hidden_layers".into(), kept.len().into());
    obj.insert("torch_dtype".into(), dtype_name.into());
    obj.remove("dtype");
    obj.remove("quantization_config");
    // transformers 5 configs may list per-layer attention types
    if let Some(types) = obj.get("layer_types").and_then(|v| v.as_array()).cloned() {
        let kept_types: Vec<serde_json::Value> =
            kept.iter().filter_map(|&i| types.get(i).cloned()).collect();
        obj.insert("layer_types".into(), kept_types.into());
    }
    obj.insert("layerprune".into(), meta);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;

    // weights
    let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    let mut push = |name: String, source_name: &str| -> Result<()> {
        let mut t = files.store.get(source_name, cfg)?;
        // merge the adapter of this (new layer, module), if any
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let mut parts = rest.split('.');
            let layer: usize = parts
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(usize::MAX);
            let _group = parts.next();
            let module = parts.next().unwrap_or("");
            if name.ends_with(".weight") {
                if let Some(m) = adapter
                    .modules
                    .iter()
                    .find(|m| m.layer == layer && m.module == module)
                {
                    let (r, scale) = (adapter.config.r, adapter.config.scale() as f32);
                    // W [out, in] += scale * B [out, r] A [r, in]
                    for o in 0..m.out_features {
                        for k in 0..r {
                            let bk = m.b[o * r + k] * scale;
                            if bk != 0.0 {
                                let row = &mut t.data[o * m.in_features..(o + 1) * m.in_features];
                                for (w, a) in row
                                    .iter_mut()
                                    .zip(&m.a[k * m.in_features..(k + 1) * m.in_features])
                                {
                                    *w += bk * a;
                                }
                            }
                        }
                    }
                }
            }
        }
        let (dt, bytes) = encode(&t.data, precision);
        tensors.push((name, t.shape, dt, bytes));
        Ok(())
    };
    push(
        "model.embed_tokens.weight".into(),
        "model.embed_tokens.weight",
    )?;
    for (new, &old) in kept.iter().enumerate() {
        for t in layer_tensors(files) {
            push(
                format!("model.layers.{new}.{t}"),
                &format!("model.layers.{old}.{t}"),
            )?;
        }
    }
    push("model.norm.weight".into(), "model.norm.weight")?;
    if !cfg.tie_word_embeddings {
        push("lm_head.weight".into(), "lm_head.weight")?;
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, dt, bytes)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let info: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(info), &dir.join("model.safetensors"))
        .with_context(|| format!("cannot write {}", dir.join("model.safetensors").display()))?;

    // tokenizer
    std::fs::write(dir.join("tokenizer.json"), &files.tokenizer.json)?;
    let mut copied_config = false;
    if files.format == "hf" {
        for f in [
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
        ] {
            let p = files.source.path.join(f);
            if p.exists() {
                std::fs::copy(&p, dir.join(f))?;
                copied_config |= f == "tokenizer_config.json";
            }
        }
    }
    if !copied_config {
        let name = |id: Option<u32>| id.and_then(|i| files.tokenizer.id_to_token(i));
        let tc = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": files.tokenizer.adds_bos,
            "bos_token": name(cfg.bos_token_id),
            "eos_token": name(cfg.eos_token_id),
        });
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tc)?,
        )?;
    }
    Ok(())
}
