//! Write a (pruned) model as a Hugging Face model directory that transformers loads:
//! config.json (num_hidden_layers updated, plus a "layerprune" entry), model.safetensors with the
//! kept layers renumbered from 0, tokenizer.json (and the source's tokenizer_config.json and
//! special_tokens_map.json when it has them). GGUF weights are written dequantised. Qwen v1
//! models keep their own layout (fused c_attn, qwen.tiktoken): transformers loads them only with
//! the upstream remote code (trust_remote_code).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::architecture::Projection;
use super::config::RopeScaling;
use super::load::ModelFiles;
use super::surgery::LowRankUpdate;
use crate::backend::Precision;

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
    export_hf_with_updates(files, kept, &[], &[], dir, precision, meta)
}

/// Export with low-rank updates (a LoRA adapter) merged into the weights (W + (alpha / r) B A);
/// the updates' layer indices are those of the pruned model (0-based, renumbered). The layers
/// of `attention_dropped` (original numbers) get an all-zero attention output projection
/// (weight and bias): their attention sublayer then adds nothing to the residual stream, which
/// is what dropping it means, in a layout plain transformers loads.
pub fn export_hf_with_updates(
    files: &ModelFiles,
    kept: &[usize],
    updates: &[LowRankUpdate<'_>],
    attention_dropped: &[usize],
    dir: &Path,
    precision: Precision,
    meta: serde_json::Value,
) -> Result<()> {
    let cfg = &files.config;
    let layout = cfg.architecture.layout();
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
        cfg.to_hf_json().context("cannot export")?
    };
    let dtype_name = match precision {
        Precision::F32 => "float32",
        Precision::Bf16 => "bfloat16",
        Precision::F16 => "float16",
    };
    let obj = config
        .as_object_mut()
        .context("config.json is not an object")?;
    // Qwen v1's first configs count layers in n_layer
    if obj.contains_key("n_layer") {
        obj.insert("n_layer".into(), kept.len().into());
    } else {
        obj.insert("num_hidden_layers".into(), kept.len().into());
    }
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
        // merge the update of this (new layer, projection), if any
        if name.ends_with(".weight") {
            if let Some((layer, spec)) = layout.parse_projection_tensor(&name) {
                for u in updates
                    .iter()
                    .filter(|u| u.layer == layer && u.projection == spec.projection)
                {
                    u.merge_into_host(&mut t.data);
                }
            }
        }
        // a dropped attention sublayer adds nothing: its output projection is zero (after any
        // update, so that nothing undoes the drop)
        if let Some((layer, spec)) = layout.parse_projection_tensor(&name) {
            if spec.projection == Projection::O && attention_dropped.contains(&kept[layer]) {
                t.data.iter_mut().for_each(|x| *x = 0.0);
            }
        }
        let (dt, bytes) = encode(&t.data, precision);
        tensors.push((name, t.shape, dt, bytes));
        Ok(())
    };
    push(layout.embed.hf.into(), layout.embed.hf)?;
    let prefix = layout.layer_prefix;
    for (new, &old) in kept.iter().enumerate() {
        for t in layout.layer_tensor_suffixes(cfg) {
            push(
                format!("{prefix}.{new}.{t}"),
                &format!("{prefix}.{old}.{t}"),
            )?;
        }
    }
    push(layout.final_norm.hf.into(), layout.final_norm.hf)?;
    if let Some((bias, _)) = layout.final_norm.bias {
        push(bias.into(), bias)?;
    }
    if !cfg.tie_word_embeddings {
        push(layout.lm_head.hf.into(), layout.lm_head.hf)?;
    }
    if let (Some((bias, _)), true) = (layout.lm_head.bias, cfg.lm_head_bias) {
        push(bias.into(), bias)?;
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, dt, bytes)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let info: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(info), &dir.join("model.safetensors"))
        .with_context(|| format!("cannot write {}", dir.join("model.safetensors").display()))?;

    // tokenizer (tokenizer.json, or Qwen v1's qwen.tiktoken)
    for (name, bytes) in &files.tokenizer.files {
        std::fs::write(dir.join(name), bytes)?;
    }
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
