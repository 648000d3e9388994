//! The forward pass against Hugging Face transformers (reference outputs made by
//! tests/fixtures/make_fixtures.py): logits and every layer-boundary state of each tiny fixture
//! model, on a right-padded batch of unequal lengths, to a relative error of 1e-4 in f32
//! (max |ours - ref| / max |ref|, over the real, non-pad positions of each tensor).

mod common;

use burn::tensor::DType;
use common::{fixtures, read_reference, rel_err, B};
use layerprune::model::to_f32_vec;
use layerprune::model::{Capture, Logits, ModelFiles, TokenBatch};
use layerprune::source;

const TOL: f32 = 1e-4;

/// The token rows of a reference batch (its real positions), the mask, batch and width.
fn fixture_rows(
    reference: &std::collections::BTreeMap<String, common::RefTensor>,
) -> (Vec<Vec<u32>>, Vec<i64>, usize, usize) {
    let ids = &reference["input_ids"];
    let mask = reference["attention_mask"].i64.clone();
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let rows = (0..b)
        .map(|i| {
            (0..t)
                .filter(|&j| mask[i * t + j] == 1)
                .map(|j| ids.i64[i * t + j] as u32)
                .collect()
        })
        .collect();
    (rows, mask, b, t)
}

fn check_model(model_dir: &str, reference: &str) {
    let cache = common::temp_cache();
    let src = source::resolve_str(
        fixtures().join("models").join(model_dir).to_str().unwrap(),
        cache.path(),
    )
    .unwrap();
    let files = ModelFiles::open(src).unwrap();
    let reference = read_reference(
        &fixtures()
            .join("reference")
            .join(format!("{reference}.safetensors")),
    );
    let (rows, mask, b, t) = fixture_rows(&reference);
    assert!(
        rows.iter()
            .map(|r| r.len())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "fixture batch should have unequal lengths"
    );
    let batch = TokenBatch::right_padded(&rows, 0);
    let device = Default::default();
    let model = files.build::<B>(&device, DType::F32).unwrap();
    let out = model.forward(&batch, Capture::All, Logits::All).unwrap();

    let vocab = files.config.vocab_size;
    let hidden = files.config.hidden_size;
    let real = |i: usize, j: usize| mask[i * t + j] == 1;
    let pick = |flat: &[f32], width: usize| -> Vec<f32> {
        let mut v = Vec::new();
        for i in 0..b {
            for j in 0..t {
                if real(i, j) {
                    v.extend_from_slice(&flat[(i * t + j) * width..(i * t + j + 1) * width]);
                }
            }
        }
        v
    };
    let logits = to_f32_vec(out.logits.unwrap()).unwrap();
    let e = rel_err(
        &pick(&logits, vocab),
        &pick(&reference["logits"].f32, vocab),
    );
    eprintln!("{model_dir}: logits relative error {e:e}");
    assert!(e < TOL, "{model_dir}: logits relative error {e:e}");

    let boundaries = out.boundaries.unwrap();
    let ref_b = &reference["boundaries"];
    assert_eq!(
        boundaries.len(),
        ref_b.shape[0],
        "{model_dir}: number of boundaries (L + 1)"
    );
    let per = b * t * hidden;
    for (l, x) in boundaries.into_iter().enumerate() {
        let ours = to_f32_vec(x).unwrap();
        let e = rel_err(
            &pick(&ours, hidden),
            &pick(&ref_b.f32[l * per..(l + 1) * per], hidden),
        );
        assert!(e < TOL, "{model_dir}: boundary x({l}) relative error {e:e}");
    }

    // The cheap variant (final non-pad token only) must equal the full capture at those positions.
    let out2 = model
        .forward(&batch, Capture::FinalToken, Logits::FinalToken)
        .unwrap();
    let finals = to_f32_vec(out2.final_token_boundaries.unwrap()).unwrap(); // [L+1, b, hidden]
    let final_logits = to_f32_vec(out2.final_logits.unwrap()).unwrap(); // [b, vocab]
    for i in 0..b {
        let j = rows[i].len() - 1;
        for l in 0..ref_b.shape[0] {
            let r = &ref_b.f32[l * per + (i * t + j) * hidden..l * per + (i * t + j + 1) * hidden];
            let o = &finals[(l * b + i) * hidden..(l * b + i + 1) * hidden];
            assert!(
                rel_err(o, r) < TOL,
                "{model_dir}: final-token boundary {l} row {i}"
            );
        }
        let r = &reference["logits"].f32[(i * t + j) * vocab..(i * t + j + 1) * vocab];
        assert!(
            rel_err(&final_logits[i * vocab..(i + 1) * vocab], r) < TOL,
            "{model_dir}: final logits row {i}"
        );
    }
}

#[test]
fn tiny_llama_tied_f32_matches_transformers() {
    check_model("tiny-llama", "tiny-llama");
}

#[test]
fn tiny_llama3_rope_scaling_matches_transformers() {
    check_model("tiny-llama3", "tiny-llama3");
}

#[test]
fn tiny_mistral_bf16_sharded_matches_transformers() {
    check_model("tiny-mistral", "tiny-mistral");
}

#[test]
fn tiny_qwen2_f16_qkv_bias_matches_transformers() {
    check_model("tiny-qwen2", "tiny-qwen2");
}

#[test]
fn tiny_llama_gguf_mixed_quant_matches_transformers() {
    check_model("tiny-llama.gguf", "tiny-llama-gguf");
}

/// Each dequantised GGUF tensor (F16, Q8_0, Q4_0, Q4_1; q/k un-permuted) equals what
/// transformers' GGUF loader produces.
#[test]
fn gguf_dequantised_weights_match_transformers() {
    let cache = common::temp_cache();
    let src = source::resolve_str(
        fixtures().join("models/tiny-llama.gguf").to_str().unwrap(),
        cache.path(),
    )
    .unwrap();
    let files = ModelFiles::open(src).unwrap();
    let reference =
        read_reference(&fixtures().join("reference/tiny-llama-gguf-weights.safetensors"));
    assert!(reference.len() >= 8);
    for (name, r) in &reference {
        let ours = files.store.get(name, &files.config).unwrap();
        assert_eq!(ours.shape, r.shape, "{name}");
        let max_diff = ours
            .data
            .iter()
            .zip(&r.f32)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_diff <= 1e-6, "{name}: max difference {max_diff}");
    }
}

#[test]
fn tokenizers_match_transformers() {
    let cache = common::temp_cache();
    let text = std::fs::read_to_string(fixtures().join("reference/tokenizer.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hf = ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-llama").to_str().unwrap(),
            cache.path(),
        )
        .unwrap(),
    )
    .unwrap();
    let gguf = ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-llama.gguf").to_str().unwrap(),
            cache.path(),
        )
        .unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let gguf_ids: Vec<u32> = c["gguf_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            hf.tokenizer.encode(text).unwrap(),
            ids,
            "tokenizer.json on {text:?}"
        );
        assert_eq!(
            gguf.tokenizer.encode(text).unwrap(),
            gguf_ids,
            "GGUF tokenizer on {text:?}"
        );
    }
    assert!(!hf.tokenizer.adds_bos && !gguf.tokenizer.adds_bos);
}

/// Dropping a block is a list edit, and running layers start..end reproduces the forward pass.
#[test]
fn run_layers_composes_and_drop_block_renumbers() {
    let cache = common::temp_cache();
    let files = ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-llama").to_str().unwrap(),
            cache.path(),
        )
        .unwrap(),
    )
    .unwrap();
    let device = Default::default();
    let mut model = files.build::<B>(&device, DType::F32).unwrap();
    let batch = TokenBatch::right_padded(&[vec![5, 6, 7, 8, 9]], 0);
    let full = model
        .forward(&batch, Capture::All, Logits::None)
        .unwrap()
        .boundaries
        .unwrap();
    let x0 = model.embed(batch.to_tensor::<B>(&device));
    let x2 = model.run_layers(x0, 0, 2);
    let x4 = model.run_layers(x2.clone(), 2, 4);
    assert!(
        rel_err(
            &to_f32_vec(x2).unwrap(),
            &to_f32_vec(full[2].clone()).unwrap()
        ) < 1e-6
    );
    assert!(
        rel_err(
            &to_f32_vec(x4).unwrap(),
            &to_f32_vec(full[4].clone()).unwrap()
        ) < 1e-6
    );
    model.drop_block(1, 2).unwrap();
    assert_eq!(model.kept_layers(), vec![0, 3]);
    assert_eq!(model.config.num_hidden_layers, 2);
    assert!(model.drop_block(1, 5).is_err());
}

#[test]
fn tiny_qwen3_qk_norm_matches_transformers() {
    check_model("tiny-qwen3", "tiny-qwen3");
}

#[test]
fn tiny_phi_parallel_block_layernorm_partial_rotary_matches_transformers() {
    check_model("tiny-phi", "tiny-phi");
}

/// llama.cpp's qwen3 and phi2 GGUF layouts (F32 tensors made from the same weights,
/// make_fixtures.py part "families-gguf"): equal to transformers on the Hugging Face checkpoints.
#[test]
fn tiny_qwen3_and_phi_gguf_match_transformers() {
    check_model("tiny-qwen3.gguf", "tiny-qwen3");
    check_model("tiny-phi.gguf", "tiny-phi");
}

/// OLMo-2 (norms after attention and MLP only, q/k RMSNorm over all heads before RoPE): logits
/// and every boundary equal to transformers' Olmo2ForCausalLM (make_fixtures.py part
/// "families"), from the Hugging Face checkpoint and from llama.cpp's olmo2 GGUF layout (F32,
/// the same weights; part "gguf-pruned").
#[test]
fn tiny_olmo2_post_norm_full_width_qk_norm_matches_transformers() {
    check_model("tiny-olmo2", "tiny-olmo2");
    check_model("tiny-olmo2.gguf", "tiny-olmo2");
}

/// Gemma-3 from llama.cpp's gemma3 GGUF layout (norms stored as 1 + w; the layer pattern, local
/// RoPE base and attention scalar at transformers' defaults): equal to transformers' GGUF
/// loader on the same file (make_fixtures.py part "gguf-pruned").
#[test]
fn tiny_gemma3_gguf_matches_transformers() {
    check_model("tiny-gemma3.gguf", "tiny-gemma3-gguf");
}

/// Qwen v1 (QWenLMHeadModel names and config keys, fused c_attn, the MLP's w1/w2 roles,
/// intermediate_size halved) against transformers' Qwen2 on the same weights
/// (make_fixtures.py part "qwen1").
#[test]
fn tiny_qwen1_fused_qkv_matches_transformers_qwen2() {
    check_model("tiny-qwen1", "tiny-qwen1");
}

/// qwen.tiktoken through tiktoken-rs with Qwen's pattern and special tokens, NFC first, special
/// tokens in the text encoded as themselves: equal to Python's tiktoken on the same file.
#[test]
fn qwen_tiktoken_matches_python_tiktoken() {
    let cache = common::temp_cache();
    let files = ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-qwen1").to_str().unwrap(),
            cache.path(),
        )
        .unwrap(),
    )
    .unwrap();
    let text =
        std::fs::read_to_string(fixtures().join("reference/tiny-qwen1-tokenizer.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tok = &files.tokenizer;
    let (ranks, specials) = (
        doc["ranks"].as_u64().unwrap() as u32,
        doc["specials"].as_u64().unwrap() as usize,
    );
    assert_eq!(tok.vocab_size(), ranks as usize + specials);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(ranks));
    assert_eq!(tok.token_to_id("<|extra_204|>"), Some(ranks + 207));
    assert!(!tok.adds_bos);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "qwen.tiktoken on {text:?}");
        // decoding gives the NFC text back
        let nfc: String = unicode_normalization::UnicodeNormalization::nfc(text).collect();
        assert_eq!(tok.decode(&ids).unwrap(), nfc);
    }
}

/// Gemma-3 with sliding (window 4) and global layers on inputs of up to 12 tokens: the window
/// is exact, not rejected; local and global RoPE bases (global with linear scaling), q/k norms,
/// (1 + w) norms around attention and MLP, sqrt(hidden) embedding scale, query_pre_attn_scalar.
#[test]
fn tiny_gemma3_sliding_and_global_layers_match_transformers() {
    check_model("tiny-gemma3", "tiny-gemma3");
}

/// The bf16 path against transformers computing in bf16 (make_fixtures.py part "bf16"): weights
/// rounded to bf16, matmuls in bf16, norms and the log-softmax of the loss in f32. Two bf16
/// implementations round differently, so the tolerance is bf16's: logits within 3e-2 relative
/// of transformers' bf16 logits, and the mean next-token loss within 2e-3 relative (the loss
/// path: LM head, f32 log-softmax, gather). Skipped where the backend has no bf16 (lavapipe).
#[test]
fn bf16_compute_matches_transformers_bf16() {
    use burn::tensor::backend::Backend;
    let device = Default::default();
    if !B::supports_dtype(&device, DType::BF16) {
        eprintln!("skipped: this backend has no bf16");
        return;
    }
    for name in ["tiny-llama", "tiny-qwen3"] {
        let cache = common::temp_cache();
        let src = source::resolve_str(
            fixtures().join("models").join(name).to_str().unwrap(),
            cache.path(),
        )
        .unwrap();
        let files = ModelFiles::open(src).unwrap();
        let reference = read_reference(
            &fixtures()
                .join("reference")
                .join(format!("{name}-bf16.safetensors")),
        );
        let (rows, mask, b, t) = fixture_rows(&reference);
        let model = files.build::<B>(&device, DType::BF16).unwrap();
        let batch = TokenBatch::right_padded(&rows, 0);
        let out = model.forward(&batch, Capture::None, Logits::All).unwrap();
        let logits = to_f32_vec(out.logits.unwrap()).unwrap();
        let vocab = files.config.vocab_size;
        let real = |flat: &[f32]| -> Vec<f32> {
            let mut v = Vec::new();
            for i in 0..b {
                for j in 0..t {
                    if mask[i * t + j] == 1 {
                        v.extend_from_slice(&flat[(i * t + j) * vocab..(i * t + j + 1) * vocab]);
                    }
                }
            }
            v
        };
        let e = rel_err(&real(&logits), &real(&reference["logits"].f32));
        eprintln!("{name} bf16: logits relative error {e:e} against transformers bf16");
        assert!(e < 3e-2, "{name} bf16 logits: {e:e}");
        // the loss path in bf16
        let x = model.run_layers(
            model.embed(batch.to_tensor::<B>(&device)),
            0,
            model.num_layers(),
        );
        let nll = layerprune::model::nll::next_token_nll(&model, x, &rows).unwrap();
        let (sum, n) = nll.iter().fold((0.0, 0), |(s, c), (a, m)| (s + a, c + m));
        let ours = sum / n as f64;
        let theirs = reference["mean_nll"].f32[0] as f64;
        eprintln!("{name} bf16: mean nll {ours:.5} vs transformers {theirs:.5}");
        assert!(
            ((ours - theirs) / theirs).abs() < 2e-3,
            "{name}: {ours} vs {theirs}"
        );
    }
}
