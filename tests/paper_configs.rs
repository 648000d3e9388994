//! The paper's seven models without their weights: the committed config.json files
//! (pipelines/paper/configs/<org>--<name>/, the public configuration values) are read by
//! `inspect` with the published parameter counts, every pipelines/paper/*.toml plans on a
//! machine without the models (its jobs wait for the sources), and each pipeline's LoRA targets
//! exist in its model's architecture.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{stderr, stdout, Env};
use layerprune::model::config::{Architecture, ModelConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config_dir(hf_repo: &str) -> PathBuf {
    repo()
        .join("pipelines/paper/configs")
        .join(hf_repo.replace('/', "--"))
}

/// (hub repo, architecture, layers, parameters as published)
const MODELS: [(&str, Architecture, usize, u64); 7] = [
    (
        "meta-llama/Llama-2-7b-hf",
        Architecture::Llama,
        32,
        6_738_415_616,
    ),
    (
        "meta-llama/Llama-2-13b-hf",
        Architecture::Llama,
        40,
        13_015_864_320,
    ),
    (
        "meta-llama/Llama-2-70b-hf",
        Architecture::Llama,
        80,
        68_976_648_192,
    ),
    (
        "mistralai/Mistral-7B-v0.1",
        Architecture::Mistral,
        32,
        7_241_732_096,
    ),
    ("Qwen/Qwen-7B", Architecture::Qwen, 32, 7_721_324_544),
    ("Qwen/Qwen-14B", Architecture::Qwen, 40, 14_167_290_880),
    ("microsoft/phi-2", Architecture::Phi, 32, 2_779_683_840),
];

#[test]
fn inspect_reads_the_seven_paper_configs() {
    let cache = common::temp_cache();
    for (hf, arch, layers, params) in MODELS {
        let dir = config_dir(hf);
        let r = layerprune::commands::inspect::inspect(dir.to_str().unwrap(), cache.path())
            .unwrap_or_else(|e| panic!("{hf}: {e:#}"));
        assert_eq!(r.format, "config only", "{hf}");
        assert_eq!(r.config.architecture, arch, "{hf}");
        assert_eq!(r.config.num_hidden_layers, layers, "{hf}");
        assert_eq!(r.parameters, params, "{hf}: parameter count");
        assert_eq!(r.tokenizer_adds_bos, None);
    }
    // Qwen v1: the MLP is intermediate_size / 2 wide; inference limited to seq_length
    let q14 = layerprune::commands::inspect::inspect(
        config_dir("Qwen/Qwen-14B").to_str().unwrap(),
        cache.path(),
    )
    .unwrap();
    assert_eq!(q14.config.intermediate_size, 13696);
    assert_eq!(q14.config.context_limit, Some(2048));
    assert_eq!(q14.lora_targets, ["attn.c_proj", "w2", "w1", "mlp.c_proj"]);
    // and through the binary, as a user sees it
    let env = Env::new();
    let out = env.run(&["inspect", config_dir("microsoft/phi-2").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("architecture  Phi"), "{text}");
    assert!(text.contains("parameters    2779683840 (2.78 B)"), "{text}");
    assert!(text.contains("configuration only"), "{text}");
}

/// Qwen v1's first configs (GPT-2-style keys) read as the later ones.
#[test]
fn qwen_v1_first_release_keys_read_as_the_later_ones() {
    let new: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(config_dir("Qwen/Qwen-7B").join("config.json")).unwrap(),
    )
    .unwrap();
    let mut old = new.clone();
    for (from, to) in [
        ("hidden_size", "n_embd"),
        ("num_attention_heads", "n_head"),
        ("num_hidden_layers", "n_layer"),
        ("intermediate_size", "ffn_hidden_size"),
        ("vocab_size", "padded_vocab_size"),
        ("max_position_embeddings", "n_positions"),
    ] {
        let o = old.as_object_mut().unwrap();
        let v = o.remove(from).unwrap();
        o.insert(to.into(), v);
    }
    let f = Path::new("config.json");
    let a = ModelConfig::from_hf_json(f, &new).unwrap();
    let b = ModelConfig::from_hf_json(f, &old).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        (a.hidden_size, a.intermediate_size, a.head_dim),
        (4096, 11008, 128)
    );
    old.as_object_mut().unwrap().remove("n_layer");
    let err = ModelConfig::from_hf_json(f, &old).unwrap_err().to_string();
    assert!(
        err.contains("missing key \"num_hidden_layers\" (or \"n_layer\")"),
        "{err}"
    );
}

fn paper_pipelines() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("pipelines/paper"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// Every paper pipeline plans on a machine without its models and data (an empty Hugging Face
/// cache): exit 0, every job listed as waiting, one warning per missing source; `run` refuses.
#[test]
fn every_paper_pipeline_plans_without_its_sources() {
    let files = paper_pipelines();
    assert_eq!(files.len(), 7);
    let env = Env::new();
    std::fs::create_dir_all(env.path("hub")).unwrap();
    for f in &files {
        let out = env
            .cmd(&["plan", f.to_str().unwrap()])
            .env("HF_HUB_CACHE", env.path("hub"))
            .output()
            .unwrap();
        let (o, e) = (stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(0), "{}: {o}\n{e}", f.display());
        let jobs: usize = o
            .lines()
            .next()
            .and_then(|l| l.split(" (").nth(1))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: {o}", f.display()));
        assert!(jobs > 300, "{}: {jobs} jobs", f.display());
        assert!(
            o.contains(&format!("0 to run, 0 cached, {jobs} waiting for sources")),
            "{}: {o}",
            f.display()
        );
        assert!(
            e.contains("sources.model:") && e.contains("huggingface-cli download"),
            "{e}"
        );
    }
    // run refuses before any job: the sources (on the CPU backend), and first of all a backend
    // this build lacks (the paper pipelines are for cuda)
    let out = env
        .cmd(&["run", files[0].to_str().unwrap(), "--set", "backend=flex"])
        .env("HF_HUB_CACHE", env.path("hub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not in the local Hugging Face cache"),
        "{}",
        stderr(&out)
    );
    #[cfg(not(feature = "cuda"))]
    {
        let out = env
            .cmd(&["run", files[0].to_str().unwrap()])
            .env("HF_HUB_CACHE", env.path("hub"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("this build has no cuda backend"),
            "{}",
            stderr(&out)
        );
    }
}

/// Each paper pipeline's heal targets exist in its model's architecture (the committed config
/// of its sources.model), so a GPU run does not stop at the first heal job.
#[test]
fn paper_pipelines_lora_targets_exist_in_their_models() {
    for f in paper_pipelines() {
        let cfg = layerprune::pipeline::load(&f, &[]).unwrap();
        let model = cfg.sources["model"]
            .strip_prefix("hf:")
            .unwrap()
            .to_string();
        let config =
            ModelConfig::from_hf_config_file(&config_dir(&model).join("config.json")).unwrap();
        let layout = config.architecture.layout();
        let targets = cfg.stages["heal"].params["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        for t in &targets {
            let spec = layout
                .projection_named(t)
                .unwrap_or_else(|e| panic!("{}: {t}: {e}", f.display()));
            assert!(spec.mlp, "{}: {t} is not an MLP projection", f.display());
        }
    }
}

/// `plan --memory` estimates the paper's jobs from the committed configs (the models are not
/// here): Llama-2-7B's weights in bf16 are 6.74 B x 2 bytes = 12.6 GiB; healing, checkpointed as
/// the paper pipelines ask, holds the NF4 base, one block's dequantised projections, every
/// block's input and one block's activations, within one 40 GB GPU at the paper's batch.
#[test]
fn plan_estimates_the_paper_jobs_from_their_configs() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("hub")).unwrap();
    let f = repo().join("pipelines/paper/llama-2-7b.toml");
    let out = env
        .cmd(&["plan", f.to_str().unwrap(), "--memory"])
        .env("HF_HUB_CACHE", env.path("hub"))
        .output()
        .unwrap();
    let o = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{o}\n{}", stderr(&out));
    let after = |label: &str| {
        let i = o
            .lines()
            .position(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label}: {o}"));
        (
            o.lines().nth(i).unwrap().to_string(),
            o.lines().nth(i + 1).unwrap().to_string(),
        )
    };
    let (_, similarity) = after("similarity ");
    assert!(similarity.contains("weights 12.6 GiB"), "{similarity}");
    // 12.5% of 32 layers pruned: 28 kept; their projections in NF4 (half a byte per value and a
    // bf16 absmax per 64), embedding and LM head in bf16: 3.29 GiB
    let (row, heal) = after("heal[fraction=0.125,strategy=simple]");
    let words: Vec<&str> = row.split_whitespace().collect();
    let gib = words
        .iter()
        .position(|w| *w == "GiB")
        .expect("an estimate in GiB");
    let total: f64 = words[gib - 1].parse().unwrap();
    assert!(total < 40.0, "healing at the paper's batch: {row}");
    assert!(heal.trim_start().starts_with("weights 3.3 GiB"), "{heal}");
    // the attention strategy keeps every layer (LLM-Drop drops sublayers): 32 layers in NF4
    let out = env
        .cmd(&[
            "plan",
            f.to_str().unwrap(),
            "--memory",
            "--set",
            "sweep.strategy=[\"attention\"]",
        ])
        .env("HF_HUB_CACHE", env.path("hub"))
        .output()
        .unwrap();
    let o2 = stdout(&out);
    let i = o2
        .lines()
        .position(|l| {
            l.trim_start()
                .starts_with("heal[fraction=0.125,strategy=attention]")
        })
        .unwrap_or_else(|| panic!("{o2}\n{}", stderr(&out)));
    let attention_heal = o2.lines().nth(i + 1).unwrap();
    assert!(
        attention_heal.trim_start().starts_with("weights 3.7 GiB"),
        "{attention_heal}"
    );
    for part in [
        "NF4 dequantised, one block per graph",
        "block inputs",
        "one block's saved activations",
        "LoRA + AdamW",
    ] {
        assert!(heal.contains(part), "{part}: {heal}");
    }
    assert!(o.contains("peak device memory per job estimated"), "{o}");
}

/// Where a paper job does not fit, `plan` names the setting that makes it fit first: layer
/// streaming for inference, gradient checkpointing for healing (both here turned off), each with
/// what it does to the results and the estimate with it; on "auto" the similarity pass streams.
#[test]
fn a_paper_job_that_does_not_fit_is_told_the_setting_that_does() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("hub")).unwrap();
    let f = repo().join("pipelines/paper/llama-2-7b.toml");
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            f.to_str().unwrap(),
            "--memory",
            "--set",
            "memory_limit=\"16GiB\"",
            "--set",
            "stages.heal.gradient_checkpointing=false",
        ];
        args.extend_from_slice(extra);
        let out = env
            .cmd(&args)
            .env("HF_HUB_CACHE", env.path("hub"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (stdout(&out), stderr(&out))
    };
    // streaming off: told the setting that keeps the results and fits
    let (_, err) = plan(&["--set", "stages.similarity.stream_weights=false"]);
    assert!(
        err.contains("set stages.similarity.stream_weights = true (the same results"),
        "{err}"
    );
    assert!(
        err.contains("set stages.heal.gradient_checkpointing = true (the same results; then about"),
        "{err}"
    );
    // on "auto" (the default) the similarity pass streams and fits: no warning for it
    let (out, err) = plan(&[]);
    let similarity = out
        .split("\n  similarity")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    let block: String = similarity.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(block.contains("planned: stream_weights = true"), "{block}");
    assert!(!err.contains("similarity needs about"), "{err}");
}
