//! `report`: tables and figures of a sweep, published to results/<pipeline>/.

use std::fmt::Write as _;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    pub title: String,
}

impl Params for ReportParams {}

pub struct ReportStage;

#[derive(Serialize)]
struct SimilarityRow {
    n: usize,
    l: usize,
    d: f64,
    stderr: f64,
}

#[derive(Serialize)]
struct SelectionRow<'a> {
    n: usize,
    fraction: f64,
    strategy: &'a str,
    start: usize,
    end: usize,
    d: f64,
}

impl Stage for ReportStage {
    fn kind(&self) -> &'static str {
        "report"
    }
    fn version(&self) -> u32 {
        // 2: one shared legend strip, healed points marked by squares
        2
    }
    fn description(&self) -> &'static str {
        "CSV tables and the paper's figures of a sweep, published to results/<pipeline>/"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/report.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[
            InputSlot {
                name: "similarity",
                kinds: &["similarity"],
                required: false,
                many: false,
            },
            InputSlot {
                name: "selection",
                kinds: &["select"],
                required: false,
                many: false,
            },
            InputSlot {
                name: "evals",
                kinds: &["eval-qa", "eval-loss"],
                required: false,
                many: true,
            },
        ]
    }
    fn publishes(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<ReportParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: ReportParams = ctx.params()?;
        let mut summary = String::new();
        writeln!(summary, "# Results\n")?;
        writeln!(
            summary,
            "Layer numbering in every file: layers are numbered from 0; x(l) is the input of layer l, \
             x(0) the embedding output, x(L) the last block's output before the final norm; a dropped \
             block is the half-open range [start, end).\n"
        )?;
        if let Some(sim_in) = ctx.optional_input("similarity") {
            let sim = super::similarity::read(&sim_in.dir)?;
            let model = sim_in
                .manifest
                .inputs
                .get("model")
                .and_then(|k| k.first())
                .cloned()
                .unwrap_or_default();
            let title = if p.title.is_empty() {
                model_title(ctx, sim_in)?
            } else {
                p.title.clone()
            };
            let mut w = csv::Writer::from_path(ctx.out("similarity.csv"))?;
            for (i, row) in sim.distances.d.iter().enumerate() {
                for (l, &d) in row.iter().enumerate() {
                    w.serialize(SimilarityRow {
                        n: i + 1,
                        l,
                        d,
                        stderr: sim.distances.stderr[i][l],
                    })?;
                }
            }
            w.flush()?;
            std::fs::copy(
                sim_in.dir.join("samples.jsonl"),
                ctx.out("similarity_samples.jsonl"),
            )?;
            crate::report::figures::similarity_figures(&ctx.out_dir, &sim.distances, &title)?;
            writeln!(
                summary,
                "## Angular distances\n\n{} samples of {} tokens; model {title} ({} layers; load artifact {}).\n\n\
                 - similarity.csv: d(x(l), x(l+n)) and its standard error for n = 1..L-1, l = 0..L-n\n\
                 - similarity_samples.jsonl: the token ids of every sample\n\
                 - fig4_similarity_heatmap.svg/.png (paper Fig. 4), fig1c_angular_distance.svg/.png (Fig. 1c)\n",
                sim.distances.samples,
                sim.seq_len,
                sim.distances.layers,
                &model.get(..12).unwrap_or(&model)
            )?;
        }
        if let Some(sel_in) = ctx.optional_input("selection") {
            let sel = super::select::read(&sel_in.dir)?;
            let mut w = csv::Writer::from_path(ctx.out("selection.csv"))?;
            for b in &sel.blocks {
                let strategy = b.strategy.to_string();
                w.serialize(SelectionRow {
                    n: b.n,
                    fraction: b.fraction,
                    strategy: &strategy,
                    start: b.start,
                    end: b.end,
                    d: b.d,
                })?;
            }
            w.flush()?;
            writeln!(summary, "## Selected blocks\n\n| n | fraction | strategy | dropped [start, end) | d |\n|---|---|---|---|---|")?;
            for b in &sel.blocks {
                writeln!(
                    summary,
                    "| {} | {:.3} | {} | [{}, {}) | {:.4} |",
                    b.n, b.fraction, b.strategy, b.start, b.end, b.d
                )?;
            }
            writeln!(summary)?;
        }
        if !ctx.inputs("evals").is_empty() {
            let title = if p.title.is_empty() {
                String::from("layer pruning")
            } else {
                p.title.clone()
            };
            write_evals(ctx, &mut summary, &title)?;
        }
        std::fs::write(ctx.out("summary.md"), summary)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
struct EvalRow {
    variant: String,
    strategy: String,
    fraction: f64,
    n_dropped: usize,
    start: String,
    end: String,
    healed: bool,
    task: String,
    shots: usize,
    metric: String,
    value: f64,
    stderr: f64,
    n_items: usize,
}

#[derive(Serialize)]
struct ItemRow<'a> {
    variant: &'a str,
    task: &'a str,
    shots: usize,
    item: &'a str,
    gold: usize,
    pred: usize,
}

fn base_row(v: &super::model_ref::Variant) -> EvalRow {
    EvalRow {
        variant: v.variant.clone(),
        strategy: v.strategy.map(|s| s.to_string()).unwrap_or_default(),
        fraction: v.fraction,
        n_dropped: v.n_dropped,
        start: v.start.map(|x| x.to_string()).unwrap_or_default(),
        end: v.end.map(|x| x.to_string()).unwrap_or_default(),
        healed: v.healed,
        task: String::new(),
        shots: 0,
        metric: String::new(),
        value: 0.0,
        stderr: 0.0,
        n_items: 0,
    }
}

/// Chance level of a task (gray dashed line of the figures).
fn chance(task: &str, metric: &str) -> Option<f64> {
    match (task, metric) {
        ("loss", "loss_normalized") => Some(1.0),
        ("loss", _) => None,
        ("boolq" | "piqa" | "winogrande", _) => Some(0.5),
        _ => Some(0.25),
    }
}

/// eval.csv, eval_items.csv, the metric-against-fraction figure and a summary table.
fn write_evals(ctx: &JobContext, summary: &mut String, title: &str) -> Result<()> {
    use super::eval_loss::LossRecord;
    use super::eval_qa::EvalRecord;
    let mut rows: Vec<EvalRow> = Vec::new();
    let mut items = csv::Writer::from_path(ctx.out("eval_items.csv"))?;
    for a in ctx.inputs("evals") {
        if a.kind == "eval-qa" {
            let r: EvalRecord =
                serde_json::from_str(&std::fs::read_to_string(a.dir.join("scores.json"))?)?;
            for t in &r.results {
                for m in &t.metrics {
                    rows.push(EvalRow {
                        task: t.task.clone(),
                        shots: t.shots,
                        metric: m.metric.clone(),
                        value: m.value,
                        stderr: m.stderr,
                        n_items: m.n_items,
                        ..base_row(&r.variant)
                    });
                }
                for it in &t.items {
                    items.serialize(ItemRow {
                        variant: &r.label,
                        task: &t.task,
                        shots: t.shots,
                        item: &it.item,
                        gold: it.gold,
                        pred: it.pred,
                    })?;
                }
            }
        } else {
            let r: LossRecord =
                serde_json::from_str(&std::fs::read_to_string(a.dir.join("loss.json"))?)?;
            let ln_v = (r.vocab_size as f64).ln();
            for (metric, value, stderr) in [
                ("loss", r.loss, r.stderr),
                ("loss_normalized", r.loss_normalized, r.stderr / ln_v),
            ] {
                rows.push(EvalRow {
                    task: "loss".into(),
                    shots: 0,
                    metric: metric.into(),
                    value,
                    stderr,
                    n_items: r.windows,
                    ..base_row(&r.variant)
                });
            }
        }
    }
    items.flush()?;
    let order = |v: &str| match v {
        "base" => 0,
        "pruned" => 1,
        _ => 2,
    };
    rows.sort_by(|a, b| {
        (
            a.task.as_str(),
            a.shots,
            a.metric.as_str(),
            order(&a.variant),
            a.strategy.as_str(),
            a.healed,
        )
            .cmp(&(
                b.task.as_str(),
                b.shots,
                b.metric.as_str(),
                order(&b.variant),
                b.strategy.as_str(),
                b.healed,
            ))
            .then(a.fraction.total_cmp(&b.fraction))
    });
    let mut w = csv::Writer::from_path(ctx.out("eval.csv"))?;
    for r in &rows {
        w.serialize(r)?;
    }
    w.flush()?;

    // figure: one panel per (task, shots, metric) of interest
    let mut keys: Vec<(String, usize, String)> = rows
        .iter()
        .filter(|r| matches!(r.metric.as_str(), "acc" | "loss_normalized" | "loss"))
        .map(|r| (r.task.clone(), r.shots, r.metric.clone()))
        .collect();
    keys.dedup();
    let mut panels = Vec::new();
    for (task, shots, metric) in &keys {
        let sel: Vec<&EvalRow> = rows
            .iter()
            .filter(|r| &r.task == task && r.shots == *shots && &r.metric == metric)
            .collect();
        let base = sel.iter().find(|r| r.variant == "base").map(|r| r.value);
        let any_healed = sel.iter().any(|r| r.healed);
        let mut curves = Vec::new();
        for strategy in ["similarity", "simple"] {
            for healed in [false, true] {
                let mut pts: Vec<(f64, f64)> = sel
                    .iter()
                    .filter(|r| r.strategy == strategy && r.healed == healed && r.variant != "base")
                    .map(|r| (r.fraction, r.value))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                if let Some(b) = base {
                    pts.insert(0, (0.0, b));
                }
                let color = if strategy == "similarity" {
                    plotters::style::RGBColor(31, 119, 180)
                } else {
                    plotters::style::RGBColor(230, 120, 20)
                };
                curves.push(crate::report::figures::Curve {
                    label: format!(
                        "{strategy}{}",
                        if healed {
                            ", healed"
                        } else if any_healed {
                            ", not healed"
                        } else {
                            ""
                        }
                    ),
                    color,
                    dashed: any_healed && !healed,
                    points: pts,
                });
            }
        }
        let name = if task == "loss" {
            metric.replace('_', " ")
        } else {
            format!("{task} {shots}-shot")
        };
        panels.push(crate::report::figures::Panel {
            title: name,
            y_label: if task == "loss" {
                metric.clone()
            } else {
                "accuracy".into()
            },
            curves,
            baseline: base,
            reference: chance(task, metric),
        });
    }
    if !panels.is_empty() {
        crate::report::figures::fraction_figure(
            &ctx.out_dir,
            "fig_eval_vs_fraction",
            &panels,
            &format!("{title}: metrics against the fraction of layers dropped"),
        )?;
    }
    writeln!(summary, "## Evaluation

- eval.csv: one row per model, task and metric
- eval_items.csv: every scored item's gold and predicted answer
- fig_eval_vs_fraction.svg/.png: metrics against the fraction of layers dropped (red dashed: unpruned; gray dashed: chance, or 1.0 for normalised loss; in a sweep that heals, thin dashed with dots: not healed, solid with squares: healed)
")?;
    writeln!(summary, "| variant | strategy | fraction | dropped | healed | task | shots | metric | value | stderr | items |\n|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &rows {
        let dropped = if r.start.is_empty() {
            String::from("-")
        } else {
            format!("[{}, {})", r.start, r.end)
        };
        writeln!(
            summary,
            "| {} | {} | {:.2} | {dropped} | {} | {} | {} | {} | {:.4} | {:.4} | {} |",
            r.variant,
            r.strategy,
            r.fraction,
            r.healed,
            r.task,
            r.shots,
            r.metric,
            r.value,
            r.stderr,
            r.n_items
        )?;
    }
    writeln!(summary)?;
    Ok(())
}

/// "SmolLM2-135M-Instruct.Q4_1.gguf"-style name of the model behind a similarity artifact.
fn model_title(ctx: &JobContext, sim: &super::context::InputArtifact) -> Result<String> {
    let key = sim
        .manifest
        .inputs
        .get("model")
        .and_then(|k| k.first())
        .cloned()
        .unwrap_or_default();
    let load_dir = ctx.cache_root.join("load").join(&key);
    let record: super::load::ModelRecord =
        serde_json::from_str(&std::fs::read_to_string(load_dir.join("model.json"))?)?;
    let spec = record.source.spec.to_string();
    Ok(spec.rsplit(['/', ':']).next().unwrap_or(&spec).to_string())
}
