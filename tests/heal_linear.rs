//! Training-free healing by a linear map (ReplaceMe) against an independent reference
//! (tests/fixtures/make_fixtures.py part `linear`: numpy's least squares on transformers' states,
//! the map folded into the weights by hand in PyTorch): the fitted map to 1e-4 (relative,
//! Frobenius), the healed model's logits to 1e-4 (max |ours - ref| / max |ref|), and the
//! `heal-linear` stage in a pipeline through evaluation and export.

mod common;

use std::path::Path;

use burn::tensor::DType;
use common::{fixtures, read_reference, rel_err, B};
use layerprune::formats::safetensors_dir::write_f32;
use layerprune::heal::linear_map::{accumulate, LinearFit, NormalEquations};
use layerprune::model::{to_f32_vec, Capture, Logits, ModelFiles, Projection, TokenBatch};
use layerprune::source;

const TOL: f64 = 1e-4;

fn reference_doc() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/linear.json")).unwrap(),
    )
    .unwrap()
}

fn open(model: &str, cache: &Path) -> ModelFiles {
    ModelFiles::open(
        source::resolve_str(
            fixtures().join("models").join(model).to_str().unwrap(),
            cache,
        )
        .unwrap(),
    )
    .unwrap()
}

/// A reference case: its model, its blocks [start, end) and the layers the healed model keeps.
fn case(doc: &serde_json::Value, name: &str) -> (String, Vec<(usize, usize)>, Vec<usize>) {
    let c = &doc["models"][name];
    let blocks = c["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start"].as_u64().unwrap() as usize,
                b["end"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let kept = serde_json::from_value(c["kept"].clone()).unwrap();
    (c["model"].as_str().unwrap().to_string(), blocks, kept)
}

fn fit_case(name: &str) {
    let doc = reference_doc();
    let rows: Vec<Vec<u32>> = serde_json::from_value(doc["rows"].clone()).unwrap();
    let (model, blocks, _) = case(&doc, name);
    let cache = common::temp_cache();
    let files = open(&model, cache.path());
    let net = files.build::<B>(&Default::default(), DType::F32).unwrap();
    let mut eqs = vec![NormalEquations::new(files.config.hidden_size); blocks.len()];
    // three right-padded batches of unequal lengths: the sums run over real tokens only
    for chunk in rows.chunks(3) {
        let batch = TokenBatch::right_padded(chunk, 0);
        accumulate(&net, &batch, &blocks, &mut eqs).unwrap();
    }
    let reference =
        read_reference(&fixtures().join(format!("reference/linear-{name}.safetensors")));
    for (k, (&(start, end), eq)) in blocks.iter().zip(&eqs).enumerate() {
        let fit = eq.solve().unwrap();
        let want = &doc["models"][name]["blocks"][k];
        assert_eq!(
            fit.tokens,
            want["tokens"].as_u64().unwrap(),
            "{name}: tokens"
        );
        let t_ref = &reference[&format!("map.{}", start - 1)].f32;
        let num: f64 = fit
            .t
            .iter()
            .zip(t_ref)
            .map(|(a, &b)| (a - b as f64).powi(2))
            .sum();
        let den: f64 = t_ref.iter().map(|&b| (b as f64).powi(2)).sum();
        let e = (num / den).sqrt();
        eprintln!("{name} [{start}, {end}): map relative error {e:e}");
        assert!(e < TOL, "{name} [{start}, {end}): map relative error {e:e}");
        for (ours, key) in [
            (fit.mse_pruned, "mse_pruned"),
            (fit.mse_fitted, "mse_fitted"),
        ] {
            let r = want[key].as_f64().unwrap();
            assert!((ours - r).abs() <= TOL * r, "{name}: {key} {ours} vs {r}");
        }
        assert!(fit.mse_fitted < fit.mse_pruned);
    }
}

#[test]
fn fitted_map_matches_numpy_least_squares_llama() {
    fit_case("tiny-llama");
}

#[test]
fn fitted_map_matches_numpy_least_squares_phi_parallel_block_with_bias() {
    fit_case("tiny-phi");
}

#[test]
fn two_blocks_fitted_in_one_pass_match_numpy() {
    fit_case("tiny-llama-two-blocks");
}

/// The reference maps folded by our code (and read back through the replaced-tensor overlay)
/// give the logits of the model PyTorch folded by hand.
fn fold_case(name: &str) {
    let doc = reference_doc();
    let (model, blocks, kept) = case(&doc, name);
    let cache = common::temp_cache();
    let files = open(&model, cache.path());
    let reference =
        read_reference(&fixtures().join(format!("reference/linear-{name}.safetensors")));
    let d = files.config.hidden_size;
    let layout = files.config.architecture.layout();
    let spec = layout.projection(Projection::Down).unwrap();
    let mut tensors = Vec::new();
    for &(start, _) in &blocks {
        let fit = LinearFit {
            dim: d,
            t: reference[&format!("map.{}", start - 1)]
                .f32
                .iter()
                .map(|&x| x as f64)
                .collect(),
            tokens: 0,
            mse_pruned: 0.0,
            mse_fitted: 0.0,
        };
        let w = layout.projection_tensor(start - 1, spec, "weight");
        let folded = fit.fold_weight(&files.store.get(&w, &files.config).unwrap());
        tensors.push((w, folded.unwrap()));
        if Projection::Down.has_bias(&files.config) {
            let b = layout.projection_tensor(start - 1, spec, "bias");
            let folded = fit.fold_bias(&files.store.get(&b, &files.config).unwrap());
            tensors.push((b, folded.unwrap()));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    write_f32(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let healed = files.with_replaced(tmp.path()).unwrap();
    let net = healed
        .build_with_layers::<B>(&Default::default(), DType::F32, &kept)
        .unwrap();
    let (rows, mask) = common::reference_rows(&reference);
    let out = net
        .forward(
            &TokenBatch::right_padded(&rows, 0),
            Capture::None,
            Logits::All,
        )
        .unwrap();
    let logits = to_f32_vec(out.logits.unwrap()).unwrap();
    let vocab = healed.config.vocab_size;
    let pick = |flat: &[f32]| common::real_positions(flat, &mask, vocab);
    let e = rel_err(&pick(&logits), &pick(&reference["logits"].f32));
    eprintln!("{name}: healed logits relative error {e:e}");
    assert!(
        (e as f64) < TOL,
        "{name}: healed logits relative error {e:e}"
    );
}

#[test]
fn folded_map_gives_the_reference_healed_logits_llama() {
    fold_case("tiny-llama");
}

#[test]
fn folded_map_gives_the_reference_healed_logits_phi() {
    fold_case("tiny-phi");
}

#[test]
fn two_folded_maps_give_the_reference_healed_logits() {
    fold_case("tiny-llama-two-blocks");
}

#[test]
fn blocks_without_a_place_for_the_map_are_refused() {
    let cache = common::temp_cache();
    let rows = vec![vec![5u32, 6, 7, 8]];
    let batch = TokenBatch::right_padded(&rows, 0);
    let llama = open("tiny-llama", cache.path())
        .build::<B>(&Default::default(), DType::F32)
        .unwrap();
    let mut eq = vec![NormalEquations::new(64)];
    let e = accumulate(&llama, &batch, &[(0, 2)], &mut eq)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 0"), "{e}");
    // blocks must be separated by a kept layer that holds the second map
    let mut two = vec![NormalEquations::new(64), NormalEquations::new(64)];
    let e = accumulate(&llama, &batch, &[(1, 2), (2, 3)], &mut two)
        .unwrap_err()
        .to_string();
    assert!(e.contains("separated by a kept layer"), "{e}");
    // Gemma-3 normalises the MLP output before the residual add
    let gemma = open("tiny-gemma3", cache.path())
        .build::<B>(&Default::default(), DType::F32)
        .unwrap();
    let e = accumulate(&gemma, &batch, &[(2, 3)], &mut eq)
        .unwrap_err()
        .to_string();
    assert!(e.contains("norm before the residual add"), "{e}");
    assert_eq!(eq[0].tokens, 0, "nothing was accumulated");
}

fn pipeline(dir: &Path) -> String {
    format!(
        r#"
name = "tiny-linear"
results_dir = "{results}"

[sources]
model = "{model}"
text = "{text}"

[stages.load]

[stages.similarity]
samples = 8
seq_len = 32
batch_size = 4
text = {{ source = "text", part = "all" }}

[stages.select]

# simple at n = 1 of 4 layers: drop [2, 3), fold into layer 1
[stages.prune]
fraction = 0.25
strategy = "simple"

[stages.heal_linear]
kind = "heal-linear"
windows = 12
seq_len = 32
batch_size = 4
merge = true
text = {{ source = "text", part = "all" }}

[stages.loss]
kind = "eval-loss"
inputs = {{ model = ["load", "prune", "heal_linear"] }}
seq_len = 32
windows = 6
text = {{ source = "text", part = "all" }}

[stages.report]
inputs = {{ similarity = "similarity", selection = "select", evals = ["loss"] }}
"#,
        results = dir.join("results").display(),
        model = fixtures().join("models/tiny-llama").display(),
        text = fixtures().join("text").display(),
    )
}

#[test]
fn heal_linear_stage_in_a_pipeline() {
    let env = common::cli::Env::new();
    env.write("p.toml", &pipeline(env.dir.path()));
    let o = env.run(&["run", "p.toml"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // the artifact: record, replaced tensors, map, merged export
    let arts: Vec<_> = std::fs::read_dir(env.path("cache/heal-linear"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("heal-linear.json").exists())
        .collect();
    assert_eq!(arts.len(), 1);
    let art = &arts[0];
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(art.join("heal-linear.json")).unwrap())
            .unwrap();
    let blocks = rec["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1);
    let block = &blocks[0];
    assert_eq!(
        (block["start"].as_u64(), block["end"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(block["folded_layer"], 1);
    assert_eq!(
        rec["replaced"],
        serde_json::json!(["model.layers.1.mlp.down_proj.weight"])
    );
    assert_eq!(block["tokens"], 12 * 32);
    assert!(block["mse_fitted"].as_f64().unwrap() < block["mse_pruned"].as_f64().unwrap());
    assert_eq!(rec["variant"]["variant"], "healed-linear");
    let map = read_reference(&art.join("map.safetensors"));
    assert_eq!(map["linear_map.1"].shape, vec![64, 64]);

    // the merged export (our loader) and the overlay give the same model
    let cache = common::temp_cache();
    let merged = ModelFiles::open(
        source::resolve_str(art.join("merged").to_str().unwrap(), cache.path()).unwrap(),
    )
    .unwrap();
    assert_eq!(merged.config.num_hidden_layers, 3);
    let overlay = open("tiny-llama", cache.path())
        .with_replaced(&art.join("replaced"))
        .unwrap();
    let rows = vec![vec![3u32, 17, 90, 4, 200, 11], vec![8, 9, 10]];
    let batch = TokenBatch::right_padded(&rows, 0);
    let logits = |m: layerprune::model::Transformer<B>| {
        to_f32_vec(
            m.forward(&batch, Capture::None, Logits::All)
                .unwrap()
                .logits
                .unwrap(),
        )
        .unwrap()
    };
    let a = logits(merged.build::<B>(&Default::default(), DType::F32).unwrap());
    let b = logits(
        overlay
            .build_with_layers::<B>(&Default::default(), DType::F32, &[0, 1, 3])
            .unwrap(),
    );
    let e = rel_err(&a, &b);
    assert!(e < 1e-6, "merged vs overlay: {e:e}");
    // and it differs from the plainly pruned model
    let plain = open("tiny-llama", cache.path());
    let c = logits(
        plain
            .build_with_layers::<B>(&Default::default(), DType::F32, &[0, 1, 3])
            .unwrap(),
    );
    assert!(rel_err(&c, &b) > 1e-3);

    // the report lists the healed model's loss beside the pruned one's
    let mut r = csv::Reader::from_path(env.path("results/tiny-linear/eval.csv")).unwrap();
    let variants: Vec<String> = r
        .records()
        .map(|x| x.unwrap())
        .filter(|x| &x[10] != "" && &x[9] == "loss")
        .map(|x| x[0].to_string())
        .collect();
    assert_eq!(
        variants,
        ["base", "pruned", "healed-linear"],
        "{variants:?}"
    );

    // a second run is fully cached
    let o = env.run(&["run", "p.toml"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("0 jobs run"),
        "{stdout}"
    );
}
