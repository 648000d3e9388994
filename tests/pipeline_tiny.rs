//! A whole pipeline on the tiny fixture model and text: load, similarity, select, prune (light
//! and exported), report; the published results; the pruned models through both paths.

mod common;

use std::path::Path;
use std::process::Command;

use burn::tensor::DType;
use common::{fixtures, rel_err, B};
use layerprune::model::to_f32_vec;
use layerprune::model::{Capture, Logits, ModelFiles, TokenBatch};
use layerprune::source;

fn pipeline(dir: &Path) -> String {
    format!(
        r#"
name = "tiny"
results_dir = "{results}"

[sources]
model = "{model}"
text = "{text}"

[sweep]
fraction = [0.25, 0.5]
strategy = ["similarity", "simple"]

[stages.load]

[stages.similarity]
samples = 12
seq_len = 32
batch_size = 4
text = {{ source = "text", part = "all" }}

[stages.select]

[stages.prune]
fraction = "${{fraction}}"
strategy = "${{strategy}}"
export = true

[stages.report]
inputs = {{ similarity = "similarity", selection = "select" }}
"#,
        results = dir.join("results").display(),
        model = fixtures().join("models/tiny-llama").display(),
        text = fixtures().join("text").display(),
    )
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .args(args)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn tiny_pipeline_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tiny.toml"), pipeline(dir)).unwrap();
    let o = run(dir, &["run", "tiny.toml"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("8 jobs run, 0 cached, 0 failed"),
        "{stdout}"
    );

    let res = dir.join("results/tiny");
    // similarity.csv: n = 1..3, l = 0..4-n -> 4 + 3 + 2 rows
    let mut r = csv::Reader::from_path(res.join("similarity.csv")).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["n", "l", "d", "stderr"]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 9);
    for row in &rows {
        let d: f64 = row[2].parse().unwrap();
        assert!((0.0..=1.0).contains(&d) && d > 0.0, "{row:?}");
    }
    let mut r = csv::Reader::from_path(res.join("selection.csv")).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["n", "fraction", "strategy", "start", "end", "d"]
    );
    let sel: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(sel.len(), 4); // n = 1, 2 for both strategies
    let simple2 = sel
        .iter()
        .find(|x| &x[0] == "2" && &x[2] == "simple")
        .unwrap();
    assert_eq!(
        (&simple2[3], &simple2[4]),
        ("1", "3"),
        "simple keeps the last layer: L-n-1 .. L-2"
    );
    // the exact samples are published and the matrix recomputes from them
    let samples: Vec<Vec<u32>> = std::fs::read_to_string(res.join("similarity_samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    assert_eq!(samples.len(), 12);
    assert!(samples.iter().all(|s| s.len() == 32));
    let cache = dir.join("cache");
    let files = ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-llama").to_str().unwrap(),
            &cache,
        )
        .unwrap(),
    )
    .unwrap();
    let model = files.build::<B>(&Default::default(), DType::F32).unwrap();
    let again = layerprune::method::similarity::measure(&model, &samples, 5, 1, 0, false).unwrap();
    for row in &rows {
        let (n, l): (usize, usize) = (row[0].parse().unwrap(), row[1].parse().unwrap());
        let d: f64 = row[2].parse().unwrap();
        assert!((again.get(n, l) - d).abs() < 1e-9, "n={n} l={l}");
    }
    for f in ["fig4_similarity_heatmap.svg", "fig1c_angular_distance.svg"] {
        assert!(
            std::fs::read_to_string(res.join(f))
                .unwrap()
                .contains("<svg"),
            "{f}"
        );
    }
    for f in ["fig4_similarity_heatmap.png", "fig1c_angular_distance.png"] {
        assert_eq!(
            &std::fs::read(res.join(f)).unwrap()[..8],
            b"\x89PNG\r\n\x1a\n",
            "{f}"
        );
    }
    assert!(std::fs::read_to_string(res.join("summary.md"))
        .unwrap()
        .contains("half-open"));

    // every pruned model: the exported directory gives the same logits as the light artifact
    let batch = TokenBatch::right_padded(&[samples[0][..20].to_vec(), samples[1][..9].to_vec()], 0);
    let mut checked = 0;
    for e in std::fs::read_dir(cache.join("prune")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path().join("pruned.json")).unwrap())
                .unwrap();
        let kept: Vec<usize> = rec["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let light = files
            .build_with_layers::<B>(&Default::default(), DType::F32, &kept)
            .unwrap();
        let exported_dir = e.path().join("model");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(exported_dir.join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cfg["num_hidden_layers"].as_u64().unwrap() as usize,
            kept.len()
        );
        assert_eq!(cfg["layerprune"]["kept_layers"], rec["kept"]);
        assert_eq!(cfg["layerprune"]["dropped_layers"], rec["dropped"]);
        let exported =
            ModelFiles::open(source::resolve_str(exported_dir.to_str().unwrap(), &cache).unwrap())
                .unwrap();
        let exported = exported
            .build::<B>(&Default::default(), DType::F32)
            .unwrap();
        let a = to_f32_vec(
            light
                .forward(&batch, Capture::None, Logits::All)
                .unwrap()
                .logits
                .unwrap(),
        )
        .unwrap();
        let b = to_f32_vec(
            exported
                .forward(&batch, Capture::None, Logits::All)
                .unwrap()
                .logits
                .unwrap(),
        )
        .unwrap();
        assert!(rel_err(&b, &a) < 1e-6);
        checked += 1;
    }
    assert_eq!(checked, 4);

    let o = run(dir, &["run", "tiny.toml"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 jobs run, 8 cached"));

    // the pruned models gone (gc, or a cache that imported the rest): the report redrawn with
    // --target reads its cached inputs and recomputes none of the models
    std::fs::remove_dir_all(cache.join("prune")).unwrap();
    let target_report = [
        "run",
        "tiny.toml",
        "--target",
        "report",
        "--force",
        "report",
    ];
    let o = run(dir, &target_report);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && stdout.contains("1 jobs run, 3 cached, 0 failed, 0 skipped, 4 not needed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!cache.join("prune").exists() && !res.join("STALE.md").exists());
    // the report also reads the model's name from the load artifact (not one of its inputs):
    // without it the report fails, naming the way out, and the results are marked stale
    std::fs::remove_dir_all(cache.join("load")).unwrap();
    let o = run(dir, &target_report);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("--target load --target report"), "{stdout}");
    assert!(res.join("STALE.md").exists());
    let o = run(dir, &["run", "tiny.toml"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    // the model, the four pruned models and the report (the failed forced run replaced it)
    assert!(stdout.contains("6 jobs run, 2 cached"), "{stdout}");
    assert!(!res.join("STALE.md").exists());
}
