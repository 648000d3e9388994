//! 4-bit inference (`weights = "nf4"` of similarity, eval-qa and eval-loss): a model built in
//! NF4 gives the logits of transformers' model with the weights bitsandbytes makes of it under
//! `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
//! bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=float32)` (its `dequantize_4bit`, in a
//! dense f32 forward: bitsandbytes' own CPU matmul is not a faithful reference without its
//! kernels; tests/fixtures/make_heal_fixtures.py, part nf4-inference); the layers quantised as
//! they are built equal a dense build quantised afterwards; and the stages run with it, under
//! their own keys. Tolerances: 1e-5 relative against the fixture's
//! numpy codec (which the Rust codec equals bit for bit), 3e-4 against bitsandbytes' weights,
//! whose native CPU quantiser picks the other of two near-tied 8-bit absmax codes in one block
//! of a few tensors (tiny-llama: 3 of 28, 1.3e-4 relative in the logits).

mod common;

use burn::tensor::DType;
use common::cli::{stderr, stdout, Env};
use common::{fixtures, read_reference, real_positions, reference_rows, rel_err, B};
use layerprune::model::load::WeightStorage;
use layerprune::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch, Transformer};
use layerprune::source;

fn open(name: &str, cache: &std::path::Path) -> ModelFiles {
    let dir = fixtures().join("models").join(name);
    ModelFiles::open(source::resolve_str(dir.to_str().unwrap(), cache).unwrap()).unwrap()
}

fn logits(m: &Transformer<B>, batch: &TokenBatch) -> Vec<f32> {
    let out = m.forward(batch, Capture::None, Logits::All).unwrap();
    to_f32_vec(out.logits.unwrap()).unwrap()
}

#[test]
fn nf4_logits_match_transformers_with_bitsandbytes() {
    let r = read_reference(&fixtures().join("reference/nf4-inference.safetensors"));
    let (rows, mask) = reference_rows(&r);
    let batch = TokenBatch::right_padded(&rows, 0);
    let cache = common::temp_cache();
    for name in ["tiny-llama", "tiny-qwen2"] {
        let files = open(name, cache.path());
        let vocab = files.config.vocab_size;
        let all: Vec<usize> = (0..files.config.num_hidden_layers).collect();
        let device = Default::default();
        let nf4 = files
            .build_stored::<B>(&device, DType::F32, &all, WeightStorage::Nf4)
            .unwrap();
        let ours = real_positions(&logits(&nf4, &batch), &mask, vocab);
        // this project's codec (the fixture script's numpy NF4, bit for bit the Rust one)
        let codec = real_positions(&r[&format!("{name}.nf4_codec_logits")].f32, &mask, vocab);
        let e = rel_err(&ours, &codec);
        assert!(
            e < 1e-5,
            "{name}: NF4 logits vs the codec's, relative error {e:e}"
        );
        // bitsandbytes' weights: the same but for the absmax of one block in a few tensors,
        // where bitsandbytes' native CPU quantiser picks the other of two near-tied codes
        let want = real_positions(&r[&format!("{name}.nf4_logits")].f32, &mask, vocab);
        let e = rel_err(&ours, &want);
        assert!(
            e < 3e-4,
            "{name}: NF4 logits vs bitsandbytes', relative error {e:e}"
        );
        // the reference's quantisation matters: NF4 is visibly not f32
        let dense = real_positions(&r[&format!("{name}.f32_logits")].f32, &mask, vocab);
        let gap = rel_err(&want, &dense);
        assert!(gap > 10.0 * e, "{name}: NF4 vs f32 only {gap:e} apart");
        // quantised layer by layer while building = a dense build quantised afterwards
        let mut after = files.build::<B>(&device, DType::F32).unwrap();
        let projections = layerprune::model::surgery::all_projections(&after);
        layerprune::model::surgery::quantize_nf4(&mut after, &projections, false).unwrap();
        assert_eq!(
            logits(&after, &batch),
            logits(&nf4, &batch),
            "{name}: built in NF4 vs quantised after"
        );
    }
}

/// eval-loss and similarity with `weights = "nf4"` run beside their dense jobs under other
/// keys, and the NF4 loss differs from the dense one by a little.
#[test]
fn stages_run_in_nf4_under_their_own_keys() {
    let env = Env::new();
    let model = fixtures().join("models/tiny-llama");
    let text = fixtures().join("text");
    env.write(
        "q.toml",
        &format!(
            r#"
name = "q"

[sources]
model = "{}"
text = "{}"

[stages.load]
model = "model"

[stages.similarity]
samples = 4
seq_len = 16
batch_size = 4
weights = "nf4"
text = {{ source = "text", part = "all" }}

[stages.loss]
kind = "eval-loss"
inputs = {{ model = ["load"] }}
seq_len = 32
windows = 4
text = {{ source = "text", part = "all" }}

[stages.loss_nf4]
kind = "eval-loss"
inputs = {{ model = ["load"] }}
seq_len = 32
windows = 4
weights = "nf4"
text = {{ source = "text", part = "all" }}
"#,
            model.display(),
            text.display()
        ),
    );
    let plan = env.run(&["plan", "q.toml", "--memory"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text_out = stdout(&plan);
    assert!(text_out.contains("weights (NF4)"), "{text_out}");
    // each job's short key, from the plan: "  loss  0123456789ab  ..."
    let short_key = |label: &str| -> String {
        text_out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("{label} in {text_out}"))
            .to_string()
    };
    let (dense_key, nf4_key) = (short_key("loss"), short_key("loss_nf4"));
    assert_ne!(dense_key, nf4_key, "NF4 is part of the key");
    let out = env.run(&["run", "q.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let loss = |key: &str| -> f64 {
        let entry = std::fs::read_dir(env.path("cache/eval-loss"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(key))
            .unwrap_or_else(|| panic!("no eval-loss artifact {key}"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path().join("loss.json")).unwrap())
                .unwrap();
        json["loss"].as_f64().unwrap_or_else(|| panic!("{json}"))
    };
    let (dense, nf4) = (loss(&dense_key), loss(&nf4_key));
    let rel = ((nf4 - dense) / dense).abs();
    assert!(rel > 1e-6 && rel < 0.2, "NF4 loss {nf4} vs dense {dense}");
}
