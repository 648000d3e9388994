//! `layerprune report`, which computes nothing:
//! - `report FILE --history`: the pipeline's result snapshots (runner/history.rs) as one table
//!   over time, `results/<pipeline>/history/trend.csv`, and a figure,
//!   `history/trend.{svg,png}`: one panel per task and metric, the unpruned model and, per
//!   strategy (healed or not), the mean over its pruned models, against the snapshot number.
//! - `report A.toml B.toml ... [--out DIR]`: the published results of several pipelines (e.g.
//!   one per model) side by side, as the paper's multi-model figures: Fig. 2 (MMLU), Fig. 6
//!   (BoolQ) and Fig. 3 (loss / ln V), one panel per pipeline, and eval_all.csv (every row with
//!   its pipeline). A figure no pipeline has the inputs for is skipped with one log line.

use std::path::Path;

use anyhow::Result;

use super::pipeline_cmds::report_error;
use crate::artifacts::eval_table::{self, EvalTableRow};
use crate::pipeline;
use crate::report::figures::{fraction_figure, trend_figure, Curve, Marker, Panel};
use crate::runner::{exit, history};
use crate::stages::report::fraction_panels;

/// The multi-model figures: (file stem, task, metric, what the paper calls it).
const MODEL_FIGURES: [(&str, &str, &str, &str); 3] = [
    ("fig2_mmlu_by_model", "mmlu", "acc", "Fig. 2: MMLU accuracy"),
    (
        "fig6_boolq_by_model",
        "boolq",
        "acc",
        "Fig. 6: BoolQ accuracy",
    ),
    (
        "fig3_loss_by_model",
        "loss",
        "loss_normalized",
        "Fig. 3: held-out loss / ln V",
    ),
];

/// `report A.toml B.toml ... [--out DIR]`.
pub fn combined_report(
    files: &[std::path::PathBuf],
    sets: &[String],
    out: Option<&Path>,
) -> Result<u8> {
    let mut tables: Vec<(String, Vec<EvalTableRow>)> = Vec::new();
    for f in files {
        let cfg = match pipeline::load(f, sets) {
            Ok(c) => c,
            Err(e) => {
                report_error(&e.to_string());
                return Ok(exit::CONFIG);
            }
        };
        let path = cfg.results_dir.join(&cfg.name).join(eval_table::FILE);
        if !path.is_file() {
            report_error(&format!(
                "{}: {} does not exist: run the pipeline first (`layerprune run {}`)",
                f.display(),
                path.display(),
                f.display()
            ));
            return Ok(exit::CONFIG);
        }
        tables.push((cfg.name.clone(), eval_table::read(&path)?));
    }
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new("results").join("combined"));
    std::fs::create_dir_all(&dir)?;
    // eval.csv's columns after a "pipeline" column
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header_written = false;
    for (name, rows) in &tables {
        let mut one = csv::Writer::from_writer(Vec::new());
        for r in rows {
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
            let mut fields = vec![name.clone()];
            fields.extend(rec.iter().map(String::from));
            w.write_record(&fields)?;
        }
    }
    crate::fsutil::atomic_write(&dir.join("eval_all.csv"), &w.into_inner()?)?;
    let mut written = vec!["eval_all.csv".to_string()];
    for (stem, task, metric, title) in MODEL_FIGURES {
        let mut panels = Vec::new();
        for (name, rows) in &tables {
            let sel: Vec<EvalTableRow> = rows
                .iter()
                .filter(|r| r.task == task && r.metric == metric)
                .cloned()
                .collect();
            for mut p in fraction_panels(&sel) {
                p.title = format!("{name}: {}", p.title);
                panels.push(p);
            }
        }
        if panels.is_empty() {
            tracing::info!("{stem}: skipped (no pipeline has {task} {metric})");
            continue;
        }
        fraction_figure(&dir, stem, &panels, title)?;
        written.push(format!("{stem}.{{svg,png}}"));
    }
    println!(
        "{} pipelines ({}): {} in {}",
        tables.len(),
        tables
            .iter()
            .map(|(n, _)| n.as_str())
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
