//! `report`: tables and figures of a sweep, published to results/<pipeline>/.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::artifacts::comparison::{self, ComparisonRow};
use crate::artifacts::eval_table::{self, EvalTableRow};
use crate::artifacts::findings;
use crate::artifacts::similarity::samples_path;
use crate::artifacts::{
    EvalRecord, InputArtifact, LoadRecord, LossRecord, Record, SelectionRecord, SimilarityRecord,
    Variant,
};
use crate::data::tasks::{TaskCategory, TaskName};
use crate::method::selection::Strategy;
use crate::report::figures::{Curve, DistanceGrid, Marker, Panel};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    pub title: String,
    /// The paper's model this pipeline runs (llama-2-7b, llama-2-13b, llama-2-70b, mistral-7b):
    /// summary.md then compares l*(n) with the authors' published list; empty: none.
    #[serde(default)]
    pub paper_model: String,
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
        // 3: comparison.csv and fig_comparison_retained (retained % per strategy and healing)
        // 4: findings in summary.md; fig1d, fig5 and the knowledge-versus-reasoning figure
        // 5: error bars, dotted unhealed curves, MMLU panels at the largest shot count, Fig. 9
        //    (LoRA rank sweeps), eval.csv's lora_rank column, l*(n) against the published lists
        5
    }
    fn description(&self) -> &'static str {
        "CSV tables and the paper's figures of a sweep, published to results/<pipeline>/"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/report.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[
            InputSlot::optional("similarity", &["similarity"]),
            InputSlot::optional("selection", &["select"]),
            InputSlot::gather("evals", &["eval-qa", "eval-loss"]),
        ];
        SLOTS
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
            let sim = SimilarityRecord::of(sim_in)?;
            let model = sim_in
                .manifest
                .inputs
                .get("model")
                .and_then(|k| k.first())
                .cloned()
                .unwrap_or_default();
            let title = if p.title.is_empty() {
                model_title(ctx, &model)?
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
                samples_path(&sim_in.dir),
                ctx.out("similarity_samples.jsonl"),
            )?;
            let grid = DistanceGrid {
                layers: sim.distances.layers,
                d: &sim.distances.d,
            };
            crate::report::figures::similarity_figures(&ctx.out_dir, &grid, &title)?;
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
        let mut selection = None;
        if let Some(sel_in) = ctx.optional_input("selection") {
            let sel = SelectionRecord::of(sel_in)?;
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
                // a selection that is not contiguous (bi) lists its layers; start and end in
                // selection.csv are then its span
                let dropped = if b.layers.is_empty() {
                    format!("[{}, {})", b.start, b.end)
                } else {
                    format!("layers {:?}", b.layers)
                };
                writeln!(
                    summary,
                    "| {} | {:.3} | {} | {dropped} | {:.4} |",
                    b.n, b.fraction, b.strategy, b.d
                )?;
            }
            writeln!(summary)?;
            selection = Some(sel);
        }
        let mut rows = Vec::new();
        if !ctx.inputs("evals").is_empty() {
            let title = if p.title.is_empty() {
                String::from("layer pruning")
            } else {
                p.title.clone()
            };
            rows = write_evals(ctx, &mut summary, &title)?;
        }
        let placed = selection
            .as_ref()
            .and_then(|s| findings::placement(s.layers, &s.blocks));
        write_findings(&mut summary, &rows, placed, &p.paper_model)?;
        std::fs::write(ctx.out("summary.md"), summary)?;
        Ok(())
    }
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

fn base_row(v: &Variant) -> EvalTableRow {
    EvalTableRow {
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
        lora_rank: v.lora_rank,
    }
}

/// Chance level of a task (gray dashed line of the figures); 1.0 for the normalised loss.
pub fn chance(task: &str, metric: &str) -> Option<f64> {
    match (task, metric) {
        ("loss", "loss_normalized") => Some(1.0),
        ("loss", _) => None,
        _ => TaskName::from_name(task).map(|t| t.spec().chance),
    }
}

/// The rows with LoRA-healed models at one rank only, the one most of them have (ties: the
/// smallest): what every table and figure but Fig. 9 shows when a pipeline sweeps the rank.
pub fn at_main_rank(rows: &[EvalTableRow]) -> Vec<EvalTableRow> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for r in rows.iter().filter_map(|r| r.lora_rank) {
        *counts.entry(r).or_default() += 1;
    }
    let main = counts
        .iter()
        .max_by_key(|(rank, n)| (**n, std::cmp::Reverse(**rank)))
        .map(|(rank, _)| *rank);
    rows.iter()
        .filter(|r| r.lora_rank.is_none() || r.lora_rank == main)
        .cloned()
        .collect()
}

/// eval.csv, eval_items.csv, the metric-against-fraction figure and a summary table.
fn write_evals(ctx: &JobContext, summary: &mut String, title: &str) -> Result<Vec<EvalTableRow>> {
    let all_rows = collect_eval_rows(ctx, ctx.inputs("evals"))?;
    eval_table::write(&ctx.out(eval_table::FILE), &all_rows)?;
    let rows = at_main_rank(&all_rows);
    let panels = fraction_panels(&rows);
    if !panels.is_empty() {
        crate::report::figures::fraction_figure(
            &ctx.out_dir,
            "fig_eval_vs_fraction",
            &panels,
            &format!("{title}: metrics against the fraction of layers dropped"),
        )?;
    }
    write_eval_summary(summary, &rows)?;
    let mut drawn = paper_figures(ctx, &rows, title)?;
    drawn.extend(rank_figure(ctx, &all_rows, title)?);
    if !drawn.is_empty() {
        writeln!(summary, "Paper figures: {}.\n", drawn.join(", "))?;
    }
    let compared = comparison::compare(&rows);
    if !compared.is_empty() {
        comparison::write(&ctx.out(comparison::FILE), &compared)?;
        crate::report::figures::fraction_figure(
            &ctx.out_dir,
            "fig_comparison_retained",
            &comparison_panels(&compared),
            &format!("{title}: score retained, % of the unpruned model"),
        )?;
        write_comparison_summary(summary, &compared)?;
    }
    Ok(rows)
}

/// The findings section of summary.md, in numbers (artifacts::findings).
pub fn write_findings(
    summary: &mut String,
    rows: &[EvalTableRow],
    placed: Option<findings::BlockPlacement>,
    paper_model: &str,
) -> Result<()> {
    let robust = findings::robustness(rows);
    let healed = findings::healed_losses(rows);
    if robust.is_empty() && healed.is_empty() && placed.is_none() {
        return Ok(());
    }
    writeln!(summary, "## Findings\n")?;
    if !robust.is_empty() {
        writeln!(
            summary,
            "Largest fraction of layers dropped up to which the score stays within two standard \
             errors of the unpruned model (|score - base| <= 2 sqrt(se^2 + se_base^2) at every \
             evaluated fraction up to it; 0: not even the smallest), and the first fraction whose \
             score is within two standard errors of chance (|score - chance| <= 2 se; -: none \
             evaluated):\n\n\
             | strategy | heal | task | shots | metric | unpruned (se) | largest fraction | at chance from (chance) | fractions evaluated |\n\
             |---|---|---|---|---|---|---|---|---|"
        )?;
        for r in &robust {
            let at_chance = match (r.chance, r.at_chance_from) {
                (Some(c), Some(f)) => format!("{f:.3} ({c})"),
                (Some(c), None) => format!("- ({c})"),
                (None, _) => String::new(),
            };
            writeln!(
                summary,
                "| {} | {} | {} | {} | {} | {:.4} ({:.4}) | {:.3} | {} | {} |",
                r.strategy,
                r.heal,
                r.task,
                r.shots,
                r.metric,
                r.base,
                r.base_stderr,
                r.max_fraction,
                at_chance,
                r.fractions
            )?;
        }
        let transition: Vec<String> = findings::PUBLISHED_TRANSITION
            .iter()
            .map(|(family, at)| format!("{family} {at}"))
            .collect();
        writeln!(
            summary,
            "\nThe paper's MMLU transition (the fraction after which MMLU falls sharply to \
             chance): {}.",
            transition.join(", ")
        )?;
        writeln!(summary)?;
    }
    if !healed.is_empty() {
        writeln!(
            summary,
            "Held-out loss (nats per token) of each healed model beside the same model unhealed:\n\n\
             | strategy | fraction | unhealed | healed |\n|---|---|---|---|"
        )?;
        for h in &healed {
            let parts: Vec<String> = h
                .healed
                .iter()
                .map(|(m, v)| format!("{m} {v:.4} ({:+.4})", v - h.unhealed))
                .collect();
            writeln!(
                summary,
                "| {} | {:.3} | {:.4} | {} |",
                h.strategy,
                h.fraction,
                h.unhealed,
                parts.join(", ")
            )?;
        }
        writeln!(summary)?;
    }
    if let Some(p) = placed {
        let starts: Vec<String> = p.starts.iter().map(|(n, l)| format!("{n}:{l}")).collect();
        writeln!(
            summary,
            "Where l*(n) sits (similarity strategy, L = {}): n:l*(n) = {}; {} of {} blocks are \
             the deepest block that keeps the final layer, [L-n-1, L-1).\n",
            p.layers,
            starts.join(", "),
            p.deepest,
            p.starts.len()
        )?;
        if !paper_model.is_empty() {
            match findings::published_agreement(paper_model, p.layers, &p.starts) {
                Some(a) => writeln!(
                    summary,
                    "Agreement with the authors' published l*(n) for {} (paper-spec 2.6): {} of {}                      n equal ({:.1}%), mean |l* - published| = {:.2} layers.\n",
                    a.model,
                    a.equal,
                    a.compared,
                    100.0 * a.equal as f64 / a.compared as f64,
                    a.mean_abs_diff
                )?,
                None => writeln!(
                    summary,
                    "No published l*(n) to compare for paper_model = {paper_model:?} at L = {}.\n",
                    p.layers
                )?,
            }
        }
    }
    Ok(())
}

/// The rows of one panel: a task's headline metric, or the loss (`loss_normalized`: the paper's
/// loss / ln V); for lettered MMLU at the largest shot count evaluated (the paper's figures are
/// 5-shot), for the other tasks at the smallest.
pub fn panel_rows<'a>(rows: &'a [EvalTableRow], task: &str) -> Vec<&'a EvalTableRow> {
    let metric = if task == "loss" {
        "loss_normalized"
    } else {
        match comparison::headline_metric(task) {
            Some(m) => m,
            None => return Vec::new(),
        }
    };
    let evaluated = rows
        .iter()
        .filter(|r| r.task == task && r.metric == metric)
        .map(|r| r.shots);
    let shots = if task == "mmlu" {
        evaluated.max()
    } else {
        evaluated.min()
    };
    rows.iter()
        .filter(|r| r.task == task && r.metric == metric && Some(r.shots) == shots)
        .collect()
}

/// One curve against the fraction dropped, starting at the unpruned model (or None when the
/// rows have no such model). `normalise`: values divided by the unpruned model's.
pub fn fraction_curve(
    sel: &[&EvalTableRow],
    strategy: Strategy,
    variant: &str,
    label: String,
    series: usize,
    normalise: bool,
) -> Option<Curve> {
    let scale = match (
        normalise,
        sel.iter().find(|r| r.variant == "base").map(|r| r.value),
    ) {
        (true, Some(b)) if b != 0.0 => 1.0 / b,
        (true, _) => return None,
        _ => 1.0,
    };
    let base = sel.iter().find(|r| r.variant == "base");
    let mut rows: Vec<&&EvalTableRow> = sel
        .iter()
        .filter(|r| r.strategy == strategy.as_str() && r.variant == variant)
        .collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
    rows.splice(0..0, base);
    let dashed = variant == "pruned";
    Some(Curve {
        label,
        series,
        dashed,
        marker: Marker::of(dashed),
        points: rows.iter().map(|r| (r.fraction, r.value * scale)).collect(),
        errors: rows.iter().map(|r| r.stderr * scale).collect(),
    })
}

pub fn panel_of(task: &str, sel: &[&EvalTableRow], title: String, curves: Vec<Curve>) -> Panel {
    let metric = sel.first().map(|r| r.metric.clone()).unwrap_or_default();
    Panel {
        title,
        y_label: if task == "loss" {
            "loss / ln V".into()
        } else {
            metric.clone()
        },
        curves,
        baseline: sel.iter().find(|r| r.variant == "base").map(|r| r.value),
        reference: chance(task, &metric),
    }
}

pub fn task_title(task: &str, sel: &[&EvalTableRow]) -> String {
    match (task, sel.first()) {
        ("loss", _) => "held-out loss / ln V".into(),
        (t, Some(r)) if t.starts_with("mmlu") => format!("{t} {}-shot", r.shots),
        (t, _) => t.to_string(),
    }
}

/// The paper's figures from the evaluation rows, each skipped with one log line when the
/// pipeline does not produce its inputs: Fig. 1(d) (MMLU, BoolQ and loss stacked, every
/// strategy healed and unhealed), Fig. 5 (similarity against simple: rows MMLU / BoolQ / loss,
/// columns unhealed / healed) and the knowledge-versus-reasoning contrast of the ICLR version
/// (each task's score divided by the unpruned model's, a panel per paper strategy and healing
/// state).
/// Returns the names drawn.
fn paper_figures(ctx: &JobContext, rows: &[EvalTableRow], title: &str) -> Result<Vec<String>> {
    let mut drawn = Vec::new();
    let fig1d_tasks = ["mmlu", "boolq", "loss"];
    // Fig. 1(d)
    let mut panels = Vec::new();
    for task in fig1d_tasks {
        let sel = panel_rows(rows, task);
        let mut curves = Vec::new();
        for s in Strategy::ALL {
            for (variant, suffix) in [("pruned", ", not healed"), ("healed", ", healed")] {
                curves.extend(fraction_curve(
                    &sel,
                    s,
                    variant,
                    format!("{s}{suffix}"),
                    s.index(),
                    false,
                ));
            }
        }
        if !curves.is_empty() {
            panels.push(panel_of(task, &sel, task_title(task, &sel), curves));
        }
    }
    if panels.is_empty() {
        tracing::info!(
            "report: no fig1d_mmlu_boolq_loss (no MMLU, BoolQ or loss of pruned models)"
        );
    } else {
        crate::report::figures::fraction_grid_figure(
            &ctx.out_dir,
            "fig1d_mmlu_boolq_loss",
            &panels,
            1,
            &format!("{title}: MMLU, BoolQ and loss against the fraction dropped"),
        )?;
        drawn.push("fig1d_mmlu_boolq_loss".to_string());
    }
    // Fig. 5
    let mut panels = Vec::new();
    let mut both = false;
    for task in fig1d_tasks {
        let sel = panel_rows(rows, task);
        for (variant, state) in [("pruned", "not healed"), ("healed", "healed")] {
            let curves: Vec<Curve> = [Strategy::Similarity, Strategy::Simple]
                .into_iter()
                .filter_map(|s| fraction_curve(&sel, s, variant, s.to_string(), s.index(), false))
                .collect();
            both |= curves.len() == 2;
            if !curves.is_empty() {
                let t = format!("{}, {state}", task_title(task, &sel));
                panels.push(panel_of(task, &sel, t, curves));
            }
        }
    }
    if !both {
        tracing::info!(
            "report: no fig5_similarity_vs_simple (the evaluations do not have both strategies)"
        );
    } else {
        crate::report::figures::fraction_grid_figure(
            &ctx.out_dir,
            "fig5_similarity_vs_simple",
            &panels,
            if panels.iter().any(|p| p.title.ends_with(", healed")) {
                2
            } else {
                1
            },
            &format!("{title}: similarity-informed against simple pruning"),
        )?;
        drawn.push("fig5_similarity_vs_simple".to_string());
    }
    // knowledge against reasoning
    let knowledge = TaskName::names_in(TaskCategory::Knowledge);
    let reasoning = TaskName::names_in(TaskCategory::Reasoning);
    let has = |tasks: &[&str]| tasks.iter().any(|t| !panel_rows(rows, t).is_empty());
    if !(has(&knowledge) && has(&reasoning)) {
        tracing::info!(
            "report: no fig_knowledge_vs_reasoning (needs a knowledge task: {}; and a reasoning task: {})",
            knowledge.join(", "),
            reasoning.join(", ")
        );
    } else {
        let mut panels = Vec::new();
        for s in [Strategy::Similarity, Strategy::Simple] {
            for (variant, state) in [("pruned", "not healed"), ("healed", "healed")] {
                let mut curves = Vec::new();
                for (k, task) in knowledge.iter().chain(&reasoning).enumerate() {
                    let sel = panel_rows(rows, task);
                    let is_reasoning = k >= knowledge.len();
                    let category = if is_reasoning {
                        TaskCategory::Reasoning
                    } else {
                        TaskCategory::Knowledge
                    };
                    let label = format!("{task} ({})", category.as_str());
                    if let Some(mut c) = fraction_curve(&sel, s, variant, label, k, true) {
                        c.dashed = is_reasoning;
                        c.marker = Marker::of(c.dashed);
                        curves.push(c);
                    }
                }
                if !curves.is_empty() {
                    panels.push(Panel {
                        title: format!("{s}, {state}"),
                        y_label: "score / unpruned score".into(),
                        curves,
                        baseline: Some(1.0),
                        reference: None,
                    });
                }
            }
        }
        if panels.is_empty() {
            tracing::info!("report: no fig_knowledge_vs_reasoning (neither the similarity nor the simple strategy was evaluated)");
            return Ok(drawn);
        }
        crate::report::figures::fraction_grid_figure(
            &ctx.out_dir,
            "fig_knowledge_vs_reasoning",
            &panels,
            2,
            &format!("{title}: knowledge (solid) against reasoning (dotted), relative to the unpruned model"),
        )?;
        drawn.push("fig_knowledge_vs_reasoning".to_string());
    }
    Ok(drawn)
}

/// The LoRA ranks among the healed rows, ascending.
fn ranks_of<'a>(rows: impl IntoIterator<Item = &'a EvalTableRow>) -> Vec<usize> {
    let mut ranks: Vec<usize> = rows.into_iter().filter_map(|r| r.lora_rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    ranks
}

/// The number of LoRA ranks among the healed rows.
fn ranks_in(sel: &[&EvalTableRow]) -> usize {
    ranks_of(sel.iter().copied()).len()
}

/// A task's rows at its headline metric and at the shots evaluated on the most LoRA ranks (a rank
/// sweep may skip the paper's 5-shot MMLU); ties go to `panel_rows`' choice.
fn rank_panel_rows<'a>(rows: &'a [EvalTableRow], task: &str) -> Vec<&'a EvalTableRow> {
    let default = panel_rows(rows, task);
    let Some(metric) = default.first().map(|r| r.metric.as_str()) else {
        return default;
    };
    let mut shots: Vec<usize> = rows
        .iter()
        .filter(|r| r.task == task && r.metric == metric)
        .map(|r| r.shots)
        .collect();
    shots.sort_unstable();
    shots.dedup();
    let at = |k: usize| -> Vec<&'a EvalTableRow> {
        rows.iter()
            .filter(|r| r.task == task && r.metric == metric && r.shots == k)
            .collect()
    };
    let best = shots
        .into_iter()
        .map(at)
        .max_by_key(|sel| ranks_in(sel))
        .unwrap_or_default();
    if ranks_in(&best) > ranks_in(&default) {
        best
    } else {
        default
    }
}

/// Fig. 9, when the LoRA-healed models have more than one rank: for the similarity and the
/// simple strategy, a knowledge task (MMLU, else MMLU cloze, else BoolQ, at the shots the swept
/// ranks were evaluated at: the first the unpruned model is above chance on) and the loss / ln V
/// against the fraction dropped, a curve per rank (healed) beside the unhealed models (dotted).
fn rank_figure(ctx: &JobContext, rows: &[EvalTableRow], title: &str) -> Result<Option<String>> {
    let ranks = ranks_of(rows);
    if ranks.len() < 2 {
        tracing::info!(
            "report: no fig9_lora_rank (the healed models have {} LoRA rank(s); Fig. 9 needs a sweep)",
            ranks.len()
        );
        return Ok(None);
    }
    // the knowledge panel: among the tasks (at the shots) the swept ranks were evaluated on, the
    // first on which the unpruned model is above chance by two standard errors (a small model's
    // lettered MMLU is at chance), else the first of them, else the first evaluated at all
    let above_chance = |sel: &[&EvalTableRow]| {
        let base = sel.iter().find(|r| r.variant == "base");
        match (base, sel.first().and_then(|r| chance(&r.task, &r.metric))) {
            (Some(b), Some(c)) => b.value > c + 2.0 * b.stderr,
            _ => false,
        }
    };
    let knowledge_tasks = TaskName::names_in(TaskCategory::Knowledge);
    let swept: Vec<Vec<&EvalTableRow>> = knowledge_tasks
        .iter()
        .map(|t| rank_panel_rows(rows, t))
        .filter(|sel| ranks_in(sel) >= 2)
        .collect();
    let knowledge = swept
        .iter()
        .find(|sel| above_chance(sel))
        .or(swept.first())
        .cloned()
        .or_else(|| {
            knowledge_tasks
                .iter()
                .map(|t| panel_rows(rows, t))
                .find(|sel| !sel.is_empty())
        });
    let mut panels = Vec::new();
    for sel in knowledge.into_iter().chain([panel_rows(rows, "loss")]) {
        let Some(&first) = sel.first() else {
            continue;
        };
        let task = first.task.as_str();
        for s in [Strategy::Similarity, Strategy::Simple] {
            let mut curves: Vec<Curve> =
                fraction_curve(&sel, s, "pruned", "not healed".into(), 0, false)
                    .into_iter()
                    .collect();
            for (i, &rank) in ranks.iter().enumerate() {
                let at: Vec<&EvalTableRow> = sel
                    .iter()
                    .copied()
                    .filter(|r| r.lora_rank.is_none() || r.lora_rank == Some(rank))
                    .collect();
                curves.extend(fraction_curve(
                    &at,
                    s,
                    "healed",
                    format!("healed, LoRA rank {rank}"),
                    i + 1,
                    false,
                ));
            }
            if curves.iter().any(|c| !c.dashed) {
                let t = format!("{}, {s}", task_title(task, &sel));
                panels.push(panel_of(task, &sel, t, curves));
            }
        }
    }
    if panels.is_empty() {
        tracing::info!("report: no fig9_lora_rank (no healed similarity or simple models)");
        return Ok(None);
    }
    crate::report::figures::fraction_grid_figure(
        &ctx.out_dir,
        "fig9_lora_rank",
        &panels,
        2,
        &format!("{title}: LoRA rank sweep"),
    )?;
    Ok(Some("fig9_lora_rank".to_string()))
}

/// Retained % against the fraction dropped: the mean over tasks, then the loss (base / loss);
/// a curve per strategy and healing method (not healed: dashed).
pub fn comparison_panels(rows: &[ComparisonRow]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for (task, title) in [
        (comparison::AVERAGE, "score retained (mean over tasks)"),
        ("loss", "loss retained (base loss / loss)"),
    ] {
        let mut curves = Vec::new();
        for strategy in Strategy::ALL {
            for (heal, marker) in [
                ("none", Marker::Circle),
                ("lora", Marker::Square),
                ("linear", Marker::Triangle),
                ("partial", Marker::Diamond),
            ] {
                let mut pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.task == task && r.strategy == strategy.as_str() && r.heal == heal)
                    .map(|r| (r.fraction, r.retained_pct))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.insert(0, (0.0, 100.0));
                curves.push(Curve {
                    label: format!("{strategy}, heal: {heal}"),
                    series: strategy.index(),
                    dashed: heal == "none",
                    marker,
                    points: pts,
                    errors: Vec::new(),
                });
            }
        }
        if !curves.is_empty() {
            panels.push(Panel {
                title: title.into(),
                y_label: "% of unpruned".into(),
                curves,
                baseline: Some(100.0),
                reference: None,
            });
        }
    }
    panels
}

/// The comparison section of summary.md: one table per fraction, a row per strategy and
/// healing method, each task's retained % (+- standard error), their mean and the loss's.
fn write_comparison_summary(summary: &mut String, rows: &[ComparisonRow]) -> Result<()> {
    writeln!(
        summary,
        "## Method comparison\n\n\
         - comparison.csv: each task's headline score (acc_norm where the harness reports it, else acc) \
         as a percentage of the unpruned model's, their mean over tasks, and the held-out loss as \
         base loss / loss; standard error 100 * stderr / base (the mean: sqrt(sum of squares) / tasks)\n\
         - fig_comparison_retained.svg/.png: retained % against the fraction dropped\n"
    )?;
    let mut tasks: Vec<String> = rows
        .iter()
        .filter(|r| r.task != comparison::AVERAGE && r.task != "loss")
        .map(|r| r.task.clone())
        .collect();
    tasks.sort();
    tasks.dedup();
    let mut fractions: Vec<f64> = rows.iter().map(|r| r.fraction).collect();
    fractions.dedup();
    for f in fractions {
        let sel: Vec<&ComparisonRow> = rows.iter().filter(|r| r.fraction == f).collect();
        let n = sel.first().map(|r| r.n_dropped).unwrap_or(0);
        writeln!(
            summary,
            "### {:.0}% of layers dropped (n = {n})\n",
            100.0 * f
        )?;
        let mut header = String::from("| strategy | heal |");
        let mut rule = String::from("|---|---|");
        for t in tasks
            .iter()
            .map(String::as_str)
            .chain([comparison::AVERAGE, "loss"])
        {
            header.push_str(&format!(" {t} |"));
            rule.push_str("---|");
        }
        writeln!(summary, "{header}\n{rule}")?;
        let mut models: Vec<(&str, &str)> = sel
            .iter()
            .map(|r| (r.strategy.as_str(), r.heal.as_str()))
            .collect();
        models.dedup();
        for (strategy, heal) in models {
            let mut line = format!("| {strategy} | {heal} |");
            for t in tasks
                .iter()
                .map(String::as_str)
                .chain([comparison::AVERAGE, "loss"])
            {
                match sel
                    .iter()
                    .find(|r| r.strategy == strategy && r.heal == heal && r.task == t)
                {
                    Some(r) => line.push_str(&format!(
                        " {:.1} +- {:.1} |",
                        r.retained_pct, r.retained_stderr
                    )),
                    None => line.push_str(" - |"),
                }
            }
            writeln!(summary, "{line}")?;
        }
        writeln!(summary)?;
    }
    Ok(())
}

/// One row per (model, task, metric) of the evaluation artifacts, sorted for the table; every
/// scored item goes to eval_items.csv on the way.
fn collect_eval_rows(ctx: &JobContext, evals: &[InputArtifact]) -> Result<Vec<EvalTableRow>> {
    let mut rows: Vec<EvalTableRow> = Vec::new();
    let mut items = csv::Writer::from_path(ctx.out("eval_items.csv"))?;
    for a in evals {
        if a.kind == EvalRecord::KIND {
            let r = EvalRecord::of(a)?;
            for t in &r.results {
                for m in &t.metrics {
                    rows.push(EvalTableRow {
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
            let r = LossRecord::of(a)?;
            let ln_v = (r.vocab_size as f64).ln();
            for (metric, value, stderr) in [
                ("loss", r.loss, r.stderr),
                ("loss_normalized", r.loss_normalized, r.stderr / ln_v),
            ] {
                rows.push(EvalTableRow {
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
    Ok(rows)
}

/// One panel per (task, shots, metric) of interest: a curve per strategy (and healed or not)
/// against the fraction dropped, starting at the unpruned model.
pub fn fraction_panels(rows: &[EvalTableRow]) -> Vec<Panel> {
    let mut keys: Vec<(String, usize, String)> = rows
        .iter()
        .filter(|r| matches!(r.metric.as_str(), "acc" | "loss_normalized" | "loss"))
        .map(|r| (r.task.clone(), r.shots, r.metric.clone()))
        .collect();
    keys.dedup();
    let mut panels = Vec::new();
    for (task, shots, metric) in &keys {
        let sel: Vec<&EvalTableRow> = rows
            .iter()
            .filter(|r| &r.task == task && r.shots == *shots && &r.metric == metric)
            .collect();
        let base = sel.iter().find(|r| r.variant == "base");
        let any_healed = sel.iter().any(|r| r.healed);
        let mut curves = Vec::new();
        for strategy in Strategy::ALL {
            for (variant, suffix, marker) in [
                ("pruned", ", not healed", Marker::Circle),
                ("healed", ", healed", Marker::Square),
                ("healed-linear", ", healed (linear map)", Marker::Triangle),
                ("healed-partial", ", healed (partial FT)", Marker::Diamond),
            ] {
                let mut pts: Vec<&&EvalTableRow> = sel
                    .iter()
                    .filter(|r| r.strategy == strategy.as_str() && r.variant == variant)
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.sort_by(|a, b| a.fraction.total_cmp(&b.fraction));
                pts.splice(0..0, base);
                let pruned = variant == "pruned";
                curves.push(Curve {
                    label: format!(
                        "{strategy}{}",
                        if pruned && !any_healed { "" } else { suffix }
                    ),
                    series: strategy.index(),
                    dashed: any_healed && pruned,
                    marker,
                    points: pts.iter().map(|r| (r.fraction, r.value)).collect(),
                    errors: pts.iter().map(|r| r.stderr).collect(),
                });
            }
        }
        let name = if task == "loss" {
            metric.replace('_', " ")
        } else {
            format!("{task} {shots}-shot")
        };
        panels.push(Panel {
            title: name,
            y_label: if task == "loss" {
                metric.clone()
            } else {
                "accuracy".into()
            },
            curves,
            baseline: base.map(|r| r.value),
            reference: chance(task, metric),
        });
    }
    panels
}

/// The evaluation section of summary.md.
fn write_eval_summary(summary: &mut String, rows: &[EvalTableRow]) -> Result<()> {
    writeln!(summary, "## Evaluation

- eval.csv: one row per model, task and metric
- eval_items.csv: every scored item's gold and predicted answer
- fig_eval_vs_fraction.svg/.png: metrics against the fraction of layers dropped (red dashed: unpruned; gray dashed: chance, or 1.0 for normalised loss; in a sweep that heals, dotted with circles: not healed, solid with squares: healed; error bars: +-1 standard error)
")?;
    writeln!(summary, "| variant | strategy | fraction | dropped | healed | task | shots | metric | value | stderr | items |\n|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in rows {
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

/// The model's short name ("SmolLM2-135M-Instruct.Q4_1.gguf"), from the load artifact the
/// similarity pass read. That artifact is
/// not an input of the report, so `run --target report` may leave it out of the cache (its
/// readers all cached): an error naming the two ways out, never a figure titled otherwise.
fn model_title(ctx: &JobContext, model_key: &str) -> Result<String> {
    LoadRecord::in_cache(&ctx.cache_root, model_key)
        .map(|r| r.short_name())
        .with_context(|| {
            format!(
                "report: the figures' title is the model's name, read from its load artifact \
                 ({}), which is not in the cache: run the pipeline with --target load \
                 --target report (seconds), or set stages.report.title",
                &model_key[..model_key.len().min(12)]
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, rank: Option<usize>) -> EvalTableRow {
        EvalTableRow {
            variant: variant.into(),
            strategy: "simple".into(),
            fraction: 0.25,
            n_dropped: 2,
            start: String::new(),
            end: String::new(),
            healed: rank.is_some(),
            task: "boolq".into(),
            shots: 0,
            metric: "acc".into(),
            value: 0.5,
            stderr: 0.03,
            n_items: 100,
            lora_rank: rank,
        }
    }

    #[test]
    fn tables_keep_the_most_frequent_lora_rank() {
        let rows = [
            row("pruned", None),
            row("healed", Some(8)),
            row("healed", Some(2)),
            row("healed", Some(2)),
            row("healed", Some(8)),
            row("healed", Some(64)),
        ];
        // 2 and 8 twice each: the smaller wins the tie
        let kept: Vec<Option<usize>> = at_main_rank(&rows).iter().map(|r| r.lora_rank).collect();
        assert_eq!(kept, vec![None, Some(2), Some(2)]);
        assert_eq!(at_main_rank(&rows[..1]).len(), 1);
    }

    #[test]
    fn the_rank_panel_takes_the_shots_the_swept_ranks_were_evaluated_at() {
        let mmlu = |variant: &str, rank: Option<usize>, shots: usize| EvalTableRow {
            task: "mmlu".into(),
            shots,
            ..row(variant, rank)
        };
        // 5-shot (the paper's MMLU) only for the main rank, 0-shot for every rank
        let rows = [
            mmlu("base", None, 0),
            mmlu("base", None, 5),
            mmlu("healed", Some(8), 0),
            mmlu("healed", Some(8), 5),
            mmlu("healed", Some(2), 0),
            mmlu("healed", Some(32), 0),
        ];
        assert!(panel_rows(&rows, "mmlu").iter().all(|r| r.shots == 5));
        let sel = rank_panel_rows(&rows, "mmlu");
        assert_eq!(sel.len(), 4);
        assert!(sel.iter().all(|r| r.shots == 0));
        assert_eq!(ranks_in(&sel), 3);
        // every rank at 5 shots too: the paper's 5-shot stays
        let mut all = rows.to_vec();
        all.push(mmlu("healed", Some(2), 5));
        all.push(mmlu("healed", Some(32), 5));
        assert!(rank_panel_rows(&all, "mmlu").iter().all(|r| r.shots == 5));
    }
}
