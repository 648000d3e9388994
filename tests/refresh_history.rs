//! Scheduled refreshes: `run --refresh STAGE` recomputes that stage's jobs and their dependants
//! under new keys while the previous artifacts stay cached; every run that computes a result
//! anew writes a dated snapshot of eval.csv; `report --history` draws the snapshots over time.
//! `report A.toml B.toml` draws several pipelines' published results side by side. On the tiny
//! fixture model with a held-out loss evaluation.

mod common;

use common::cli::{stderr, stdout, Env};
use common::fixtures;

fn pipeline(env: &Env) -> String {
    let text = format!(
        r#"
name = "hist"
results_dir = "results"

[sources]
model = "{model}"
text = "{text}"

[sweep]
fraction = [0.25]

[stages.load]

[stages.similarity]
samples = 4
seq_len = 16
batch_size = 4
text = {{ source = "text", part = "all" }}

[stages.select]

[stages.prune]
fraction = "${{fraction}}"
strategy = "simple"

[stages.loss]
kind = "eval-loss"
inputs = {{ model = ["load", "prune"] }}
seq_len = 16
windows = 4
text = {{ source = "text", part = "all" }}

[stages.report]
inputs = {{ similarity = "similarity", selection = "select", evals = ["loss"] }}
"#,
        model = fixtures().join("models/tiny-llama").display(),
        text = env.path("text").display(),
    );
    std::fs::create_dir_all(env.path("text")).unwrap();
    for (i, f) in ["doc00.txt", "doc01.txt", "doc02.txt"].iter().enumerate() {
        let t = std::fs::read_to_string(fixtures().join("text").join(f)).unwrap();
        std::fs::write(env.path(&format!("text/doc{i}.txt")), t).unwrap();
    }
    env.write("hist.toml", &text);
    "hist.toml".into()
}

fn snapshots(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.path("results/hist/history"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn artifacts_of(env: &Env, kind: &str) -> usize {
    std::fs::read_dir(env.path(&format!("cache/{kind}")))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .count()
}

#[test]
fn refresh_keeps_old_artifacts_snapshots_record_each_change_and_history_draws_them() {
    let env = Env::new();
    let f = pipeline(&env);
    let out = env.run(&["run", &f]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshots(&env).len(), 1);
    assert_eq!(artifacts_of(&env, "eval-loss"), 2);
    // an unchanged rerun computes nothing and writes no snapshot
    let out = env.run(&["run", &f]);
    assert!(stdout(&out).contains(" 0 jobs run"), "{}", stdout(&out));
    assert_eq!(snapshots(&env).len(), 1);
    // refresh the loss stage (by kind): its two jobs and the report run again, nothing else
    let out = env.run(&["run", &f, "--refresh", "eval-loss"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(": 3 jobs run"), "{}", stdout(&out));
    assert_eq!(
        artifacts_of(&env, "eval-loss"),
        4,
        "the previous artifacts stay"
    );
    assert_eq!(artifacts_of(&env, "similarity"), 1);
    assert_eq!(snapshots(&env).len(), 2);
    // the refreshed keys are remembered: a plain run finds everything cached
    let out = env.run(&["run", &f]);
    assert!(stdout(&out).contains(" 0 jobs run"), "{}", stdout(&out));
    let plan = stdout(&env.run(&["plan", &f]));
    assert!(plan.contains("0 to run"), "{plan}");
    // a changed input (the text) and another refresh: a third snapshot with other values
    std::fs::write(
        env.path("text/doc0.txt"),
        "A different held-out text, short and plain. ".repeat(40),
    )
    .unwrap();
    let out = env.run(&["run", &f, "--refresh", "loss"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let snaps = snapshots(&env);
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    let read = |s: &str| {
        std::fs::read_to_string(env.path(&format!("results/hist/history/{s}/eval.csv"))).unwrap()
    };
    assert_eq!(
        read(&snaps[0]),
        read(&snaps[1]),
        "a refresh with unchanged inputs reproduces the results"
    );
    assert_ne!(read(&snaps[1]), read(&snaps[2]));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.path(&format!("results/hist/history/{}/meta.json", snaps[2])))
            .unwrap(),
    )
    .unwrap();
    assert!(meta["git_rev"].is_string());
    assert!(
        meta["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["label"] == "loss[fraction=0.25,model=prune]" && j["outcome"] == "ran"),
        "{meta}"
    );
    // the history report: a table over time and a figure
    let out = env.run(&["report", &f, "--history"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("3 snapshots ("),
        "{}",
        stdout(&out)
    );
    let trend = std::fs::read_to_string(env.path("results/hist/history/trend.csv")).unwrap();
    let rows: Vec<&str> = trend.lines().skip(1).collect();
    let models: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.split(',').nth(2).unwrap()).collect();
    assert!(
        models.contains("unpruned") && models.contains("simple 0.25"),
        "{models:?}"
    );
    assert!(
        rows.iter().filter(|r| r.contains(",unpruned,")).count() >= 3,
        "{trend}"
    );
    for ext in ["svg", "png"] {
        assert!(
            env.path(&format!("results/hist/history/trend.{ext}"))
                .metadata()
                .unwrap()
                .len()
                > 1000
        );
    }
    // a stage that does not exist
    let out = env.run(&["run", &f, "--refresh", "evals"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--refresh evals: no stage has this name or kind"),
        "{}",
        stderr(&out)
    );
}

/// Two pipelines' published results side by side: eval_all.csv holds every row of both with its
/// pipeline, the loss figure has a panel per pipeline, figures without inputs are skipped.
#[test]
fn report_combines_pipelines_and_skips_figures_without_inputs() {
    let env = Env::new();
    let f = pipeline(&env);
    let text = std::fs::read_to_string(env.path(&f))
        .unwrap()
        .replace("name = \"hist\"", "name = \"other\"");
    env.write("other.toml", &text);
    for p in [f.as_str(), "other.toml"] {
        let out = env.run(&["run", p]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = env.run(&["report", &f, "other.toml", "--out", "both"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "2 pipelines (hist, other): eval_all.csv, summary.md, fig3_loss_by_model.{svg,png}"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("fig2_mmlu_by_model: skipped (no pipeline has mmlu acc)"),
        "{}",
        stderr(&out)
    );
    let all = std::fs::read_to_string(env.path("both/eval_all.csv")).unwrap();
    let own = std::fs::read_to_string(env.path("results/hist/eval.csv")).unwrap();
    assert!(
        all.starts_with("pipeline,variant,strategy,fraction"),
        "{all}"
    );
    // every row of each pipeline's eval.csv, prefixed by its name
    for line in own.lines().skip(1) {
        assert!(all.lines().any(|l| l == format!("hist,{line}")), "{line}");
        assert!(all.lines().any(|l| l == format!("other,{line}")), "{line}");
    }
    assert_eq!(all.lines().count(), 1 + 2 * (own.lines().count() - 1));
    assert!(
        env.path("both/fig3_loss_by_model.png")
            .metadata()
            .unwrap()
            .len()
            > 1000
    );
    assert!(!env.path("both/fig2_mmlu_by_model.png").exists());
    // a pipeline that has not run: a clear error
    let text = text.replace("name = \"other\"", "name = \"never\"");
    env.write("never.toml", &text);
    let out = env.run(&["report", &f, "never.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("eval.csv does not exist: run the pipeline first"),
        "{}",
        stderr(&out)
    );
}
