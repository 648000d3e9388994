//! A healing job killed mid-way resumes from its last checkpoint and ends with adapters
//! bit-identical to an uninterrupted run (CPU); a non-finite loss stops the job with an error
//! naming the step.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::fixtures;

fn pipeline(results: &Path, lr: &str) -> String {
    format!(
        r#"
name = "heal-resume"
results_dir = "{results}"
[sources]
model = "{model}"
text = "{text}"
[stages.load]
[stages.similarity]
samples = 8
seq_len = 32
text = {{ source = "text", part = "all" }}
[stages.select]
[stages.prune]
fraction = 0.25
[stages.heal]
steps = 12
warmup_steps = 2
lr = {lr}
global_batch = 4
micro_batch = 2
seq_len = 32
lora_rank = 4
lora_dropout = 0.05
checkpoint_every = 3
text = {{ source = "text", part = "train", holdout_every = 5 }}
"#,
        results = results.display(),
        model = fixtures().join("models/tiny-llama").display(),
        text = fixtures().join("text").display(),
    )
}

fn cmd(dir: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layerprune"));
    c.args(["run", "p.toml", "--cache-dir"])
        .arg(cache)
        .current_dir(dir)
        .env_remove("LAYERPRUNE_HEAL_STEP_DELAY_MS");
    c
}

fn heal_artifact(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache.join("heal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .expect("a heal artifact")
}

#[test]
fn killed_heal_resumes_to_identical_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("p.toml"), pipeline(&dir.join("results"), "1e-2")).unwrap();

    // uninterrupted
    let a = dir.join("cache-a");
    let o = cmd(dir, &a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference =
        std::fs::read(heal_artifact(&a).join("adapter/adapter_model.safetensors")).unwrap();

    // killed after its step-6 checkpoint, then resumed
    let b = dir.join("cache-b");
    let mut child = cmd(dir, &b)
        .env("LAYERPRUNE_HEAL_STEP_DELAY_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt_root = b.join("checkpoints/heal");
    let mut resumed_from = 0;
    for _ in 0..600 {
        if let Some(latest) = std::fs::read_dir(&ckpt_root)
            .ok()
            .and_then(|d| d.flatten().next())
            .and_then(|e| std::fs::read_to_string(e.path().join("latest")).ok())
        {
            resumed_from = latest.trim().parse().unwrap();
            if resumed_from >= 6 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(resumed_from >= 6, "no checkpoint appeared");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::read_dir(b.join("heal"))
            .unwrap()
            .flatten()
            .all(|e| e.file_name().to_string_lossy().starts_with('.')),
        "the killed job left no complete artifact"
    );
    let o = cmd(dir, &b).env("RUST_LOG", "info").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("resuming from checkpoint"), "{log}");
    let resumed =
        std::fs::read(heal_artifact(&b).join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        resumed == reference,
        "adapters after resume differ from the uninterrupted run"
    );
    // the loss curve covers every step once
    let curve = std::fs::read_to_string(heal_artifact(&b).join("loss.csv")).unwrap();
    assert_eq!(curve.lines().count(), 1 + 12);
    // checkpoints are cleaned up once the artifact is published
    assert!(!ckpt_root.exists() || std::fs::read_dir(&ckpt_root).unwrap().next().is_none());
}

#[test]
fn a_non_finite_loss_stops_with_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("p.toml"), pipeline(&dir.join("results"), "1e30")).unwrap();
    let o = cmd(dir, &dir.join("cache")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("heal: step ") && out.contains("is not finite"),
        "{out}"
    );
}
