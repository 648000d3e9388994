//! `layerprune report FILE --history`: the pipeline's result snapshots (runner/history.rs) as
//! one table over time, `results/<pipeline>/history/trend.csv`, and a figure,
//! `history/trend.{svg,png}`: one panel per task and metric, the unpruned model and, per
//! strategy (healed or not), the mean over its pruned models, against the snapshot number. It
//! computes nothing.

use std::path::Path;

use anyhow::Result;

use super::pipeline_cmds::report_error;
use crate::pipeline;
use crate::report::figures::{trend_figure, Curve, Panel};
use crate::runner::{exit, history};

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
            curves.push(Curve {
                label: model.clone(),
                series: i,
                dashed: !model.ends_with("healed") && model != "unpruned",
                points,
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
