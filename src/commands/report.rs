//! `layerprune report`, which computes nothing:
//! - `report FILE --history`: the pipeline's result snapshots (runner/history.rs) as one table
//!   over time, `results/<pipeline>/history/trend.csv`, and a figure,
//!   `history/trend.{svg,png}`: one panel per task and metric, the unpruned model and, per
//!   strategy (healed or not), the mean over its pruned models, against the snapshot number.
//! - `report A.toml B.toml ... [--figure NAME]... [--out DIR]`: the published results of several
//!   pipelines (e.g. one per model) side by side, as the paper's multi-model figures: Fig. 2
//!   (MMLU, a panel per model), Fig. 3 (loss / ln V of every model, one panel before healing and
//!   one after) and Fig. 6 (BoolQ, a panel per model); eval_all.csv (every row with its
//!   pipeline) and summary.md (each pipeline's findings in numbers). A figure no pipeline has the
//!   inputs for is skipped with one log line.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::pipeline_cmds::report_error;
use crate::artifacts::eval_table::{self, EvalTableRow};
use crate::artifacts::findings::{self, BlockPlacement};
use crate::method::selection::Strategy;
use crate::pipeline;
use crate::report::figures::{fraction_figure, trend_figure, Curve, Marker, Panel};
use crate::runner::{exit, history};
use crate::stages::report::{
    at_main_rank, chance, fraction_curve, fraction_panels, panel_rows, write_findings,
};

/// The multi-model figures `--figure` names: (file stem, title).
pub const COMBINED_FIGURES: [(&str, &str); 3] = [
    ("fig2_mmlu_by_model", "Fig. 2: MMLU accuracy"),
    (
        "fig3_loss_by_model",
        "Fig. 3: held-out loss / ln V, before and after healing",
    ),
    ("fig6_boolq_by_model", "Fig. 6: BoolQ accuracy"),
];

/// One pipeline's published results.
struct Published {
    name: String,
    rows: Vec<EvalTableRow>,
    placement: Option<BlockPlacement>,
    paper_model: String,
}

/// Where the similarity strategy's blocks sit, from a results directory's similarity.csv (for
/// L: n + l reaches L) and selection.csv; None without them.
fn placement_from_csv(dir: &Path) -> Result<Option<BlockPlacement>> {
    let (sim, sel) = (dir.join("similarity.csv"), dir.join("selection.csv"));
    if !sim.is_file() || !sel.is_file() {
        return Ok(None);
    }
    let mut layers = 0;
    let mut r =
        csv::Reader::from_path(&sim).with_context(|| format!("reading {}", sim.display()))?;
    for rec in r.deserialize::<(usize, usize, f64, f64)>() {
        let (n, l, _, _) =
            rec.with_context(|| format!("{}: expected n,l,d,stderr", sim.display()))?;
        layers = layers.max(n + l);
    }
    let mut starts = Vec::new();
    let mut r =
        csv::Reader::from_path(&sel).with_context(|| format!("reading {}", sel.display()))?;
    for rec in r.records() {
        let rec = rec.with_context(|| format!("reading {}", sel.display()))?;
        let num = |k: usize| -> Result<usize> {
            rec.get(k).and_then(|v| v.parse().ok()).with_context(|| {
                format!(
                    "{}: expected n,fraction,strategy,start,end,d",
                    sel.display()
                )
            })
        };
        if rec.get(2) == Some(Strategy::Similarity.as_str()) {
            starts.push((num(0)?, num(3)?));
        }
    }
    Ok(findings::placement_of(layers, starts))
}

/// Fig. 3: every pipeline's loss / ln V, one panel before healing and one after; the
/// similarity strategy's (the paper's), else the simple one's (named in the label).
fn loss_panels(pipelines: &[Published]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for (variant, state) in [("pruned", "before healing"), ("healed", "after healing")] {
        let curves: Vec<Curve> = pipelines
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let rows = at_main_rank(&p.rows);
                let sel = panel_rows(&rows, "loss");
                let similarity = fraction_curve(
                    &sel,
                    Strategy::Similarity,
                    variant,
                    p.name.clone(),
                    i,
                    false,
                );
                let mut c = similarity.or_else(|| {
                    let label = format!("{}, simple", p.name);
                    fraction_curve(&sel, Strategy::Simple, variant, label, i, false)
                })?;
                // a curve per model here: solid, marked by the healing state
                c.dashed = false;
                c.marker = Marker::of(variant == "pruned");
                Some(c)
            })
            .collect();
        if !curves.is_empty() {
            panels.push(Panel {
                title: format!("held-out loss / ln V, {state}"),
                y_label: "loss / ln V".into(),
                curves,
                baseline: None,
                reference: chance("loss", "loss_normalized"),
            });
        }
    }
    panels
}

/// The output directory is a directory, or nothing yet (then created when `create`); an
/// error says what is wrong with the path.
fn check_out_dir(dir: &Path, create: bool) -> Result<()> {
    use crate::fsutil::PathKind;
    match crate::fsutil::path_kind(dir) {
        Ok(PathKind::Dir) => Ok(()),
        Ok(PathKind::File) => anyhow::bail!("a file, expected a directory"),
        Ok(PathKind::Special(what)) => anyhow::bail!("{what}, expected a directory"),
        Err(_) if !create => Ok(()),
        Err(_) => {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create it ({e})"))
        }
    }
}

/// `report A.toml B.toml ... [--figure NAME]... [--out DIR]`.
pub fn combined_report(
    files: &[std::path::PathBuf],
    sets: &[String],
    out: Option<&Path>,
    figures: &[String],
) -> Result<u8> {
    if let Some(bad) = figures
        .iter()
        .find(|f| !COMBINED_FIGURES.iter().any(|(stem, _)| stem == f))
    {
        report_error(&format!(
            "--figure {bad}: not a multi-pipeline figure; expected one of {}",
            COMBINED_FIGURES
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(exit::CONFIG);
    }
    if let Some(out) = out {
        if let Err(e) = check_out_dir(out, false) {
            report_error(&format!("report --out {}: {e:#}", out.display()));
            return Ok(exit::CONFIG);
        }
    }
    let mut pipelines: Vec<Published> = Vec::new();
    for f in files {
        let cfg = match pipeline::load(f, sets) {
            Ok(c) => c,
            Err(e) => {
                report_error(&e.to_string());
                return Ok(exit::CONFIG);
            }
        };
        let dir = cfg.results_dir.join(&cfg.name);
        let path = dir.join(eval_table::FILE);
        if !path.is_file() {
            report_error(&format!(
                "{}: {} does not exist: run the pipeline first (`layerprune run {}`)",
                f.display(),
                path.display(),
                f.display()
            ));
            return Ok(exit::CONFIG);
        }
        let paper_model = cfg
            .stages
            .values()
            .find(|s| s.kind == "report")
            .and_then(|s| s.params.get("paper_model"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        pipelines.push(Published {
            name: cfg.name.clone(),
            rows: eval_table::read(&path)?,
            placement: placement_from_csv(&dir)?,
            paper_model,
        });
    }
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new("results").join("combined"));
    if let Err(e) = check_out_dir(&dir, true) {
        report_error(&format!("report --out {}: {e:#}", dir.display()));
        return Ok(exit::JOBS_FAILED);
    }
    // eval.csv's columns after a "pipeline" column
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header_written = false;
    for p in &pipelines {
        let mut one = csv::Writer::from_writer(Vec::new());
        for r in &p.rows {
            one.serialize(r)?;
        }
        let bytes = one.into_inner()?;
        let mut back = csv::Reader::from_reader(bytes.as_slice());
        if !header_written {
            let mut h = vec!["pipeline".to_string()];
            h.extend(back.headers()?.iter().map(String::from));
            w.write_record(&h)?;
            header_written = true;
        }
        for rec in back.records() {
            let rec = rec?;
            let mut fields = vec![p.name.clone()];
            fields.extend(rec.iter().map(String::from));
            w.write_record(&fields)?;
        }
    }
    crate::fsutil::atomic_write(&dir.join("eval_all.csv"), &w.into_inner()?)?;
    let mut written = vec!["eval_all.csv".to_string(), "summary.md".to_string()];
    let mut drawn = Vec::new();
    for (stem, title) in COMBINED_FIGURES {
        if !figures.is_empty() && !figures.iter().any(|f| f == stem) {
            continue;
        }
        let panels = match stem {
            "fig3_loss_by_model" => loss_panels(&pipelines),
            _ => {
                let task = if stem == "fig2_mmlu_by_model" {
                    "mmlu"
                } else {
                    "boolq"
                };
                let mut panels = Vec::new();
                for p in &pipelines {
                    let rows = at_main_rank(&p.rows);
                    let sel: Vec<EvalTableRow> =
                        panel_rows(&rows, task).into_iter().cloned().collect();
                    for mut panel in fraction_panels(&sel) {
                        panel.title = format!("{}: {}", p.name, panel.title);
                        panels.push(panel);
                    }
                }
                panels
            }
        };
        if panels.is_empty() {
            let inputs = match stem {
                "fig2_mmlu_by_model" => "mmlu acc",
                "fig6_boolq_by_model" => "boolq acc",
                _ => "loss_normalized of pruned models",
            };
            tracing::info!("{stem}: skipped (no pipeline has {inputs})");
            continue;
        }
        fraction_figure(&dir, stem, &panels, title)?;
        written.push(format!("{stem}.{{svg,png}}"));
        drawn.push((stem, title));
    }
    let mut summary = format!(
        "# Combined report: {}\n\nFrom the published results of each pipeline (nothing \
         recomputed). Layer numbering: 0-based, x(l) = input of layer l, blocks [start, end).\n\n\
         - eval_all.csv: every pipeline's eval.csv rows, with a pipeline column\n",
        pipelines
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (stem, title) in &drawn {
        writeln!(summary, "- {stem}.svg/.png: {title}")?;
    }
    writeln!(summary)?;
    for p in &pipelines {
        writeln!(summary, "## {}\n", p.name)?;
        let mut section = String::new();
        write_findings(
            &mut section,
            &at_main_rank(&p.rows),
            p.placement.clone(),
            &p.paper_model,
        )?;
        if section.is_empty() {
            section = "No pruned models evaluated.\n\n".into();
        }
        summary.push_str(&section.replacen("## Findings", "### Findings", 1));
    }
    crate::fsutil::atomic_write(&dir.join("summary.md"), summary.as_bytes())?;
    println!(
        "{} pipelines ({}): {} in {}",
        pipelines.len(),
        pipelines
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        written.join(", "),
        dir.display()
    );
    Ok(exit::SUCCESS)
}

pub fn history_report(file: &Path, sets: &[String]) -> Result<u8> {
    let cfg = match pipeline::load(file, sets) {
        Ok(c) => c,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    let results = cfg.results_dir.join(&cfg.name);
    let snapshots = history::read(&results)?;
    if snapshots.is_empty() {
        report_error(&format!(
            "{}: no snapshots yet (a run that computes an evaluation writes one)",
            results.join("history").display()
        ));
        return Ok(exit::CONFIG);
    }
    let full = history::trend(&snapshots);
    let csv = history::write_trend_csv(&results, &snapshots, &full)?;
    let grouped = history::grouped_trend(&snapshots);
    let mut panels = Vec::new();
    for (quantity, models) in &grouped {
        let mut curves = Vec::new();
        // the unpruned model first (series 0), then the strategies
        let mut ordered: Vec<(&String, &Vec<Option<f64>>)> = models.iter().collect();
        ordered.sort_by_key(|(m, _)| m.as_str() != "unpruned");
        for (i, (model, values)) in ordered.into_iter().enumerate() {
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| ((k + 1) as f64, v)))
                .collect();
            let dashed = !model.ends_with("healed") && model != "unpruned";
            curves.push(Curve {
                label: model.clone(),
                series: i,
                dashed,
                marker: Marker::of(dashed),
                points,
                errors: Vec::new(),
            });
        }
        panels.push(Panel {
            title: quantity.clone(),
            y_label: quantity.rsplit(' ').next().unwrap_or("value").to_string(),
            curves,
            baseline: None,
            reference: None,
        });
    }
    let dir = results.join("history");
    trend_figure(
        &dir,
        "trend",
        &panels,
        &format!("{}: results over {} snapshots", cfg.name, snapshots.len()),
    )?;
    println!(
        "{} snapshots ({} .. {}): {} and {}",
        snapshots.len(),
        snapshots[0].0,
        snapshots[snapshots.len() - 1].0,
        csv.display(),
        dir.join("trend.{svg,png}").display()
    );
    Ok(exit::SUCCESS)
}
