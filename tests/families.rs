//! The families beyond Llama (Qwen v1, Qwen3, Phi-2, Gemma-3, OLMo-2) through the paths that
//! iterate the family description: pruning (light and exported in Hugging Face layout) against
//! transformers with the same layers deleted (tests/fixtures/make_fixtures.py, parts "families"
//! and "gguf-pruned"), GGUF-sourced exports of every GGUF family, config.json round trips of
//! every family, LoRA targets per family, NF4 of every projection. Full-model parity is in
//! tests/model_parity.rs.

mod common;

use burn::tensor::DType;
use common::{fixtures, read_reference, rel_err, B};
use layerprune::heal::adapter::{AdapterSet, LoraConfig};
use layerprune::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch};
use layerprune::source;

fn open(name: &str, cache: &std::path::Path) -> ModelFiles {
    let dir = fixtures().join("models").join(name);
    ModelFiles::open(source::resolve_str(dir.to_str().unwrap(), cache).unwrap()).unwrap()
}

/// The reference batch's rows (real tokens only) and (batch, seq).
fn rows_of(reference: &std::collections::BTreeMap<String, common::RefTensor>) -> Vec<Vec<u32>> {
    let ids = &reference["input_ids"];
    let mask = &reference["attention_mask"].i64;
    let (b, t) = (ids.shape[0], ids.shape[1]);
    (0..b)
        .map(|i| {
            (0..t)
                .filter(|&j| mask[i * t + j] == 1)
                .map(|j| ids.i64[i * t + j] as u32)
                .collect()
        })
        .collect()
}

/// Logits of the real positions, row-major.
fn real_logits(flat: &[f32], rows: &[Vec<u32>], t: usize, vocab: usize) -> Vec<f32> {
    let mut v = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        for j in 0..r.len() {
            v.extend_from_slice(&flat[(i * t + j) * vocab..(i * t + j + 1) * vocab]);
        }
    }
    v
}

/// Every position's logits of `batch`, row-major.
fn all_logits(m: &layerprune::model::Transformer<B>, batch: &TokenBatch) -> Vec<f32> {
    to_f32_vec(
        m.forward(batch, Capture::None, Logits::All)
            .unwrap()
            .logits
            .unwrap(),
    )
    .unwrap()
}

/// A rank-2 LoRA (alpha 2, no dropout) on `targets`.
fn rank2_lora(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 2,
        alpha: 2.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
    }
}

/// Export the model keeping the original layers `keep` into `dir`, in f32.
fn export_to(files: &ModelFiles, keep: &[usize], dir: &std::path::Path) {
    layerprune::model::export::export_hf(
        files,
        keep,
        dir,
        layerprune::backend::Precision::F32,
        serde_json::json!({"kept_layers": keep}),
    )
    .unwrap();
}

/// The fixture `model` pruned to the original layers `keep`, light (the base's weights, only the
/// kept layers) and exported in Hugging Face layout into `out` and read back: both give the
/// logits of transformers' pruned model in reference/`reference`.safetensors within 1e-4
/// relative. Returns the source's files and the export's.
fn pruned_and_exported_match(
    model: &str,
    reference: &str,
    keep: &[usize],
    out: &std::path::Path,
    cache: &std::path::Path,
) -> (ModelFiles, ModelFiles) {
    let files = open(model, cache);
    let reference = read_reference(
        &fixtures()
            .join("reference")
            .join(format!("{reference}.safetensors")),
    );
    let rows = rows_of(&reference);
    let t = reference["input_ids"].shape[1];
    let vocab = files.config.vocab_size;
    let want = real_logits(&reference["logits"].f32, &rows, t, vocab);
    let batch = TokenBatch::right_padded(&rows, 0);
    let logits = |m: &layerprune::model::Transformer<B>| {
        real_logits(&all_logits(m, &batch), &rows, t, vocab)
    };
    let light = files
        .build_with_layers::<B>(&Default::default(), DType::F32, keep)
        .unwrap();
    let e = rel_err(&logits(&light), &want);
    assert!(e < 1e-4, "{model} light: relative error {e:e}");
    let _ = std::fs::remove_dir_all(out);
    export_to(&files, keep, out);
    let exported = open(out.to_str().unwrap(), cache);
    let m = exported
        .build::<B>(&Default::default(), DType::F32)
        .unwrap();
    let e = rel_err(&logits(&m), &want);
    assert!(e < 1e-4, "{model} exported: relative error {e:e}");
    (files, exported)
}

/// `keep`: the layers transformers' pruned reference keeps (make_fixtures.py FAMILY_PRUNE_KEEP).
fn pruned_matches_transformers(name: &str, keep: &[usize]) {
    let cache = common::temp_cache();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{name}-pruned");
    let (files, exported) = pruned_and_exported_match(
        name,
        &reference,
        keep,
        &dir.path().join("model"),
        cache.path(),
    );
    assert_eq!(exported.config.num_hidden_layers, 2);
    assert_eq!(exported.config.architecture, files.config.architecture);
}

#[test]
fn pruned_qwen3_matches_transformers_light_and_exported() {
    pruned_matches_transformers("tiny-qwen3", &[0, 2]);
}

/// OLMo-2 pruned, light and exported in Hugging Face layout (config.json from the source).
#[test]
fn pruned_olmo2_matches_transformers_light_and_exported() {
    pruned_matches_transformers("tiny-olmo2", &[0, 2]);
}

#[test]
fn pruned_phi_matches_transformers_light_and_exported() {
    pruned_matches_transformers("tiny-phi", &[0, 2]);
}

/// Qwen v1 pruned: light, and exported in its own layout (fused c_attn, n_layer-free config,
/// qwen.tiktoken) and read back; transformers itself loads Qwen v1 only with the upstream remote
/// code, so the exported copy is checked against the Qwen2 reference through layerprune.
#[test]
fn pruned_qwen1_matches_transformers_light_and_exported() {
    pruned_matches_transformers("tiny-qwen1", &[0, 2]);
    let cache = common::temp_cache();
    let files = open("tiny-qwen1", cache.path());
    let dir = tempfile::tempdir().unwrap();
    export_to(&files, &[0, 2], dir.path());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.contains(&"qwen.tiktoken".to_string()), "{names:?}");
    assert!(!names.contains(&"tokenizer.json".to_string()), "{names:?}");
    let st = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let mut tensors: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    tensors.sort();
    assert!(tensors.contains(&"transformer.h.1.attn.c_attn.weight".to_string()));
    assert_eq!(
        st.tensor("transformer.h.1.attn.c_attn.bias")
            .unwrap()
            .shape(),
        [192]
    );
    assert!(
        !tensors.iter().any(|t| t.starts_with("transformer.h.2.")),
        "{tensors:?}"
    );
    assert_eq!(tensors.len(), 3 + 2 * 8, "{tensors:?}");
}

/// Qwen v1's LoRA targets: w1, w2 and mlp.c_proj (the paper's FFN); bare "c_proj" names both
/// the attention output and the MLP's down projection and is refused as ambiguous (PEFT's
/// suffix match would take both); the fused c_attn is no target. PEFT names follow the layout.
/// Inputs beyond seq_length (where upstream rescales RoPE and attention) are refused.
#[test]
fn qwen1_lora_targets_context_limit_and_nf4() {
    let cache = common::temp_cache();
    let files = open("tiny-qwen1", cache.path());
    let mut model = files.build::<B>(&Default::default(), DType::F32).unwrap();
    let lora = rank2_lora;
    let err = format!(
        "{:#}",
        AdapterSet::init(&lora(&["w1", "w2", "c_proj"]), &model, 0).unwrap_err()
    );
    assert!(
        err.contains("ambiguous") && err.contains("attn.c_proj and mlp.c_proj"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        AdapterSet::init(&lora(&["c_attn"]), &model, 0).unwrap_err()
    );
    assert!(err.contains("fuses q, k and v"), "{err}");
    let set = AdapterSet::init(&lora(&["mlp.c_proj", "w2", "w1"]), &model, 0).unwrap();
    assert_eq!(set.modules.len(), 3 * 3);
    let names: Vec<String> = set.modules[..3].iter().map(|m| m.peft_name("A")).collect();
    assert_eq!(
        names,
        [
            "base_model.model.transformer.h.0.mlp.w2.lora_A.weight",
            "base_model.model.transformer.h.0.mlp.w1.lora_A.weight",
            "base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight",
        ]
    );
    // c_proj of the MLP: in = the MLP width (intermediate_size / 2 = 128), out = hidden
    assert_eq!(
        (set.modules[2].in_features, set.modules[2].out_features),
        (128, 64)
    );
    // saved and read back as a PEFT adapter: the same modules
    let dir = tempfile::tempdir().unwrap();
    set.save_peft(dir.path(), "tiny-qwen1").unwrap();
    let back = AdapterSet::load_peft(dir.path()).unwrap();
    assert_eq!(back.modules, set.modules);
    // the context limit (seq_length 32 in the fixture's config)
    assert_eq!(files.config.context_limit, Some(32));
    assert!(files.config.check_length("seq_len", 32).is_ok());
    let err = files
        .config
        .check_length("seq_len", 33)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seq_len = 33") && err.contains("seq_length = 32"),
        "{err}"
    );
    // NF4 on every projection (q, k and v from the fused module each)
    let batch = TokenBatch::right_padded(&[vec![3, 17, 42, 9]], 0);
    let logits = |m: &layerprune::model::Transformer<B>| all_logits(m, &batch);
    let dense = logits(&model);
    let all = layerprune::model::surgery::all_projections(&model);
    assert_eq!(all.len(), 7);
    layerprune::model::surgery::quantize_nf4(&mut model, &all, false).unwrap();
    // 4-bit weights on a random 3-layer model whose layers each move the stream by 1-6x its
    // norm: a visible but bounded difference (NF4 itself is checked against bitsandbytes in
    // tests/heal_parity.rs)
    let e = rel_err(&logits(&model), &dense);
    assert!(e > 0.0 && e < 0.5, "NF4 vs dense relative error {e}");
}

/// LoRA on every family's MLP targets: the adapter attached beside the frozen weights (as in
/// healing) and the adapter merged into them (as for evaluation) give the same logits, with a
/// nonzero B so the update matters; and NF4 applies to every projection the layout lists.
#[test]
fn lora_attached_equals_merged_and_nf4_for_every_family() {
    let cache = common::temp_cache();
    let families: [(&str, &[&str], usize); 5] = [
        ("tiny-qwen3", &["gate_proj", "up_proj", "down_proj"], 7),
        ("tiny-olmo2", &["gate_proj", "up_proj", "down_proj"], 7),
        ("tiny-gemma3", &["gate_proj", "up_proj", "down_proj"], 7),
        ("tiny-phi", &["fc1", "fc2"], 6),
        ("tiny-qwen1", &["w1", "w2", "mlp.c_proj"], 7),
    ];
    let batch = TokenBatch::right_padded(&[vec![3, 17, 42, 9, 5, 88, 120, 7, 61, 2, 33]], 0);
    let logits = |m: &layerprune::model::Transformer<B>| all_logits(m, &batch);
    for (name, targets, projections) in families {
        let files = open(name, cache.path());
        let base = files.build::<B>(&Default::default(), DType::F32).unwrap();
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
        };
        let mut set = AdapterSet::init(&lora, &base, 7).unwrap();
        assert_eq!(
            set.modules.len(),
            targets.len() * files.config.num_hidden_layers,
            "{name}"
        );
        for (k, m) in set.modules.iter_mut().enumerate() {
            for (i, b) in m.b.iter_mut().enumerate() {
                *b = 0.05 * (((i * 7 + k * 13) % 17) as f32 / 8.0 - 1.0);
            }
        }
        // the PEFT adapter directory reads back as the same modules
        let dir = tempfile::tempdir().unwrap();
        set.save_peft(dir.path(), name).unwrap();
        let back = AdapterSet::load_peft(dir.path()).unwrap();
        assert_eq!(back.modules, set.modules, "{name}: PEFT round trip");
        let plain = logits(&base);
        let mut attached = files.build::<B>(&Default::default(), DType::F32).unwrap();
        set.attach(&mut attached, false).unwrap();
        let mut merged = files.build::<B>(&Default::default(), DType::F32).unwrap();
        set.merge_into(&mut merged).unwrap();
        let (a, m) = (logits(&attached), logits(&merged));
        assert!(
            rel_err(&a, &plain) > 1e-3,
            "{name}: the update changes nothing"
        );
        let e = rel_err(&a, &m);
        assert!(e < 1e-5, "{name}: attached vs merged relative error {e:e}");
        let mut q = files.build::<B>(&Default::default(), DType::F32).unwrap();
        let all = layerprune::model::surgery::all_projections(&q);
        assert_eq!(all.len(), projections, "{name}");
        layerprune::model::surgery::quantize_nf4(&mut q, &all, false).unwrap();
        assert!(
            logits(&q).iter().all(|x| x.is_finite()),
            "{name}: NF4 forward"
        );
    }
}

/// Gemma-3 pruned to layers 1 (global) and 3 (sliding): each kept layer keeps its attention
/// type and RoPE tables, and the exported config.json lists the kept layers' layer_types.
#[test]
fn pruned_gemma3_keeps_each_layers_type_light_and_exported() {
    pruned_matches_transformers("tiny-gemma3", &[1, 3]);
    let cache = common::temp_cache();
    let files = open("tiny-gemma3", cache.path());
    let dir = tempfile::tempdir().unwrap();
    export_to(&files, &[1, 3], dir.path());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["layer_types"],
        serde_json::json!(["full_attention", "sliding_attention"])
    );
}

/// Phi's LoRA targets are its own module names (fc1, fc2: the paper's FFN); the Llama names are
/// refused with the family's module list; NF4 quantises every projection the layout has.
#[test]
fn phi_lora_targets_and_nf4_follow_its_layout() {
    let cache = common::temp_cache();
    let files = open("tiny-phi", cache.path());
    let mut model = files.build::<B>(&Default::default(), DType::F32).unwrap();
    let lora = rank2_lora;
    let err = AdapterSet::init(&lora(&["gate_proj", "up_proj"]), &model, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"gate_proj\" does not exist in Phi layers")
            && err.contains("q_proj, k_proj, v_proj, dense, fc1, fc2"),
        "{err}"
    );
    let set = AdapterSet::init(&lora(&["fc1", "fc2"]), &model, 0).unwrap();
    assert_eq!(set.modules.len(), 3 * 2);
    assert_eq!(
        set.modules[0].peft_name("A"),
        "base_model.model.model.layers.0.mlp.fc1.lora_A.weight"
    );
    assert_eq!(
        (set.modules[0].in_features, set.modules[0].out_features),
        (64, 128)
    );
    // NF4 on every projection, then the forward still runs and stays close
    let batch = TokenBatch::right_padded(&[vec![3, 17, 42, 9]], 0);
    let logits = |m: &layerprune::model::Transformer<B>| all_logits(m, &batch);
    let dense = logits(&model);
    let all = layerprune::model::surgery::all_projections(&model);
    assert_eq!(all.len(), 6);
    layerprune::model::surgery::quantize_nf4(&mut model, &all, false).unwrap();
    let q = logits(&model);
    let e = rel_err(&q, &dense);
    assert!(e > 0.0 && e < 0.2, "NF4 vs dense relative error {e}");
}

/// Gemma-3's sliding window through the cached-prefix scoring paths (a shared few-shot prefix,
/// and multi-token continuations after their context's KV cache): every log-likelihood equals
/// scoring each request as one full sequence (no cache), with contexts far longer than the
/// window (4).
#[test]
fn gemma3_cached_prefix_scoring_equals_full_sequences_beyond_the_window() {
    use layerprune::eval::below_cut::{score_reusing, Cut};
    use layerprune::eval::loglik::{score, Request, ScoreOptions};
    let cache = common::temp_cache();
    let files = open("tiny-gemma3", cache.path());
    let model = files.build::<B>(&Default::default(), DType::F32).unwrap();
    let opts = |shared_prefix: bool| ScoreOptions {
        batch_size: 2,
        workers: 1,
        shared_prefix,
        max_length: 1000,
        pad_id: 0,
    };
    let prefix: Vec<u32> = (0..20).map(|i| 5 + (i * 7) % 300).collect();
    // single-token continuations after a shared 20-token prefix (the few-shot path)
    let single: Vec<Request> = (0..4)
        .map(|q| Request {
            context: [prefix.clone(), vec![40 + q, 41, 42]].concat(),
            continuation: vec![100 + q],
        })
        .collect();
    // multi-token continuations after 9-token contexts (the context-KV path)
    let multi: Vec<Request> = (0..3)
        .map(|q| Request {
            context: (0..9).map(|i| 10 + q * 11 + i).collect(),
            continuation: vec![200, 201 + q, 202],
        })
        .collect();
    for (requests, shared) in [(&single, true), (&multi, false)] {
        let cached = score(&model, requests, &opts(shared)).unwrap();
        let (full, _) = score_reusing(
            &model,
            requests,
            &opts(false),
            &Cut {
                base: format!("gemma3 window test {shared}"),
                cut: model.num_layers(),
                base_layers: model.num_layers(),
            },
        )
        .unwrap();
        for (a, b) in cached.iter().zip(&full) {
            assert!(
                (a.loglik - b.loglik).abs() <= 1e-4 * b.loglik.abs().max(1.0),
                "cached {} vs full sequence {}",
                a.loglik,
                b.loglik
            );
        }
    }
}

/// A GGUF-sourced model pruned to the original layers `keep` (make_fixtures.py GGUF_PRUNE_KEEP)
/// and exported in Hugging Face layout: its config.json reads back as the GGUF's configuration
/// with only the kept layers (the family's own keys: activation, norm epsilon, biases, sliding
/// window and layer types, RoPE tables, attention scalar), and the exported model's logits equal
/// transformers' pruned model (make_fixtures.py part "gguf-pruned") within 1e-4 relative, as do
/// the light pruned model's. With LAYERPRUNE_KEEP_EXPORTS=DIR the export is kept as DIR/`name`
/// for scripts/check_export_in_transformers.py, which loads it in transformers.
fn gguf_export_matches_transformers(name: &str, keep: &[usize]) {
    let cache = common::temp_cache();
    let scratch = tempfile::tempdir().unwrap();
    let out = match std::env::var_os("LAYERPRUNE_KEEP_EXPORTS") {
        Some(root) => std::path::PathBuf::from(root).join(name),
        None => scratch.path().join(name),
    };
    let (files, exported) = pruned_and_exported_match(
        &format!("{name}.gguf"),
        &format!("{name}-gguf-pruned"),
        keep,
        &out,
        cache.path(),
    );
    assert_eq!(files.format, "gguf");
    let mut expected = files.config.with_layers(keep.len());
    if !expected.sliding_layers.is_empty() {
        expected.sliding_layers = keep.iter().map(|&i| expected.sliding_layers[i]).collect();
    }
    assert_eq!(exported.config, expected, "{name}: exported config.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let family = files.config.architecture.family();
    assert_eq!(json["architectures"][0], family.hf_class, "{name}");
    assert_eq!(
        json[family.keys.activation.0], family.keys.activation.1,
        "{name}"
    );
    // transformers type-checks integer fields (256.0 is refused where an int is expected)
    for key in [
        "query_pre_attn_scalar",
        "sliding_window",
        "head_dim",
        "num_hidden_layers",
    ] {
        let v = &json[key];
        assert!(
            v.is_null() || v.is_u64(),
            "{name}: {key} = {v} should be an integer"
        );
    }
}

#[test]
fn gguf_llama_pruned_exports_as_transformers_reads_it() {
    gguf_export_matches_transformers("tiny-llama", &[0, 2]);
}

#[test]
fn gguf_qwen2_pruned_exports_as_transformers_reads_it() {
    gguf_export_matches_transformers("tiny-qwen2", &[0, 2]);
}

#[test]
fn gguf_qwen3_pruned_exports_as_transformers_reads_it() {
    gguf_export_matches_transformers("tiny-qwen3", &[0, 2]);
}

#[test]
fn gguf_phi_pruned_exports_as_transformers_reads_it() {
    gguf_export_matches_transformers("tiny-phi", &[0, 2]);
}

#[test]
fn gguf_olmo2_pruned_exports_as_transformers_reads_it() {
    gguf_export_matches_transformers("tiny-olmo2", &[0, 2]);
}

/// Gemma-3 from GGUF: every 6th layer global by default; the kept global layer 5 becomes layer 1
/// and keeps its type, RoPE base and window in the exported layer_types and rope_parameters.
#[test]
fn gguf_gemma3_pruned_exports_as_transformers_reads_it() {
    gguf_export_matches_transformers("tiny-gemma3", &[1, 5]);
}

/// Every family's configuration, written as its config.json and read back, is the same
/// configuration: the fixtures of every family (Hugging Face and GGUF) and the variants their
/// config.json spells differently (a Mistral window, a Qwen2 sliding window, Llama's
/// attention_bias, Llama-3 RoPE scaling).
#[test]
fn every_family_config_round_trips_through_config_json() {
    use layerprune::model::ModelConfig;
    let cache = common::temp_cache();
    let mut configs = Vec::new();
    for name in [
        "tiny-llama",
        "tiny-llama3",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-qwen1",
        "tiny-phi",
        "tiny-gemma3",
        "tiny-olmo2",
        "tiny-llama.gguf",
        "tiny-qwen2.gguf",
        "tiny-qwen3.gguf",
        "tiny-phi.gguf",
        "tiny-gemma3.gguf",
        "tiny-olmo2.gguf",
    ] {
        configs.push((name.to_string(), open(name, cache.path()).config));
    }
    let by_name = |n: &str| configs.iter().find(|(m, _)| m == n).unwrap().1.clone();
    let mut mistral = by_name("tiny-mistral");
    mistral.sliding_window = Some(8);
    let mut qwen2 = by_name("tiny-qwen2");
    qwen2.sliding_window = Some(16);
    let mut llama = by_name("tiny-llama");
    llama.qkv_bias = true;
    llama.o_bias = true;
    let variants = [
        ("mistral with a window".to_string(), mistral),
        ("qwen2 with a sliding window".to_string(), qwen2),
        ("llama with attention_bias".to_string(), llama),
    ];
    let mut odd = by_name("tiny-llama");
    configs.extend(variants);
    let mut seen = std::collections::BTreeSet::new();
    for (name, cfg) in &configs {
        let json = cfg.to_hf_json().unwrap();
        let back = ModelConfig::from_hf_json(std::path::Path::new(name), &json)
            .unwrap_or_else(|e| panic!("{name}: {e:#}\n{json:#}"));
        assert_eq!(&back, cfg, "{name}: {json:#}");
        seen.insert(cfg.architecture.hf_model_type());
    }
    assert_eq!(
        seen.len(),
        layerprune::model::family::FAMILIES.len(),
        "{seen:?}"
    );
    // what a family's config.json cannot say is refused, naming it
    odd.qkv_bias = true;
    let err = format!("{:#}", odd.to_hf_json().unwrap_err());
    assert!(err.contains("llama config.json cannot express"), "{err}");
}
