//! Result history for scheduled refreshes: every run in which an evaluation (or the report)
//! was computed anew keeps a dated copy of the published eval.csv,
//! `results/<pipeline>/history/<UTC time>/{eval.csv, meta.json}` (meta: the run's start, the
//! tool version and git revision, every job's label, key and outcome). `report FILE --history`
//! reads them back as one table over time (history/trend.csv) and a figure (history/trend.*).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Outcome, RunSummary};
use crate::artifacts::eval_table::{self, EvalTableRow};
use crate::artifacts::manifest::{GIT_REV, TOOL_VERSION};

/// Stage kinds whose recomputation changes the published results.
const RESULT_KINDS: [&str; 3] = ["eval-qa", "eval-loss", "report"];

#[derive(Serialize)]
struct JobMeta<'a> {
    label: &'a str,
    key: &'a str,
    outcome: &'static str,
}

/// Write a snapshot when the run computed a result anew and eval.csv exists; its directory.
pub fn snapshot(
    summary: &RunSummary,
    results_dir: &Path,
    started_at: &str,
) -> Result<Option<PathBuf>> {
    let changed = summary
        .jobs
        .iter()
        .any(|j| j.outcome == Outcome::Ran && RESULT_KINDS.contains(&j.kind.as_str()));
    let eval = results_dir.join("eval.csv");
    if !changed || !eval.is_file() {
        return Ok(None);
    }
    let dir = results_dir.join("history").join(super::utc_stamp_ms());
    let bytes = std::fs::read(&eval).with_context(|| format!("cannot read {}", eval.display()))?;
    crate::fsutil::atomic_write(&dir.join("eval.csv"), &bytes)?;
    let jobs: Vec<JobMeta> = summary
        .jobs
        .iter()
        .map(|j| JobMeta {
            label: &j.label,
            key: &j.key,
            outcome: match j.outcome {
                Outcome::Ran => "ran",
                Outcome::Cached => "cached",
                Outcome::Failed(_) => "failed",
                Outcome::Skipped(_) => "skipped",
                Outcome::NotNeeded => "not needed",
                Outcome::Interrupted(_) => "interrupted",
            },
        })
        .collect();
    let meta = serde_json::json!({
        "started_at": started_at,
        "tool_version": TOOL_VERSION,
        "git_rev": GIT_REV,
        "jobs": jobs,
    });
    crate::fsutil::atomic_write(&dir.join("meta.json"), &serde_json::to_vec_pretty(&meta)?)?;
    Ok(Some(dir))
}

/// The model of a row: "unpruned", or "<strategy> <fraction>[ healed]".
pub fn model(r: &EvalTableRow) -> String {
    if r.variant == "base" {
        "unpruned".into()
    } else {
        format!(
            "{} {}{}",
            r.strategy,
            r.fraction,
            if r.healed { " healed" } else { "" }
        )
    }
}

/// The quantity of a row: "task (shots) metric", e.g. "mmlu (5-shot) acc"; the held-out loss
/// by its metric alone ("loss", "loss_normalized").
pub fn quantity(r: &EvalTableRow) -> String {
    if r.task == "loss" {
        r.metric.clone()
    } else {
        format!("{} ({}-shot) {}", r.task, r.shots, r.metric)
    }
}

/// The snapshots in time order: (directory name = UTC time, rows of its eval.csv).
pub fn read(results_dir: &Path) -> Result<Vec<(String, Vec<EvalTableRow>)>> {
    let dir = results_dir.join("history");
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.path().join(eval_table::FILE).is_file())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let rows = eval_table::read(&dir.join(&n).join(eval_table::FILE))?;
        out.push((n, rows));
    }
    Ok(out)
}

/// quantity -> model -> value per snapshot (None where a snapshot lacks it).
pub type Trend = BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>;

pub fn trend(snapshots: &[(String, Vec<EvalTableRow>)]) -> Trend {
    let mut t: Trend = BTreeMap::new();
    for (i, (_, rows)) in snapshots.iter().enumerate() {
        for r in rows {
            let series = t
                .entry(quantity(r))
                .or_default()
                .entry(model(r))
                .or_insert_with(|| vec![None; snapshots.len()]);
            series[i] = Some(r.value);
        }
    }
    t
}

/// As `trend`, with the pruned models of one strategy (healed or not) averaged over their
/// fractions: "unpruned", "similarity", "similarity healed", ... (what the figure draws).
pub fn grouped_trend(snapshots: &[(String, Vec<EvalTableRow>)]) -> Trend {
    let mut sums: BTreeMap<(String, String), Vec<(f64, usize)>> = BTreeMap::new();
    for (i, (_, rows)) in snapshots.iter().enumerate() {
        for r in rows {
            let group = if r.variant == "base" {
                "unpruned".to_string()
            } else {
                format!("{}{}", r.strategy, if r.healed { " healed" } else { "" })
            };
            let s = sums
                .entry((quantity(r), group))
                .or_insert_with(|| vec![(0.0, 0); snapshots.len()]);
            s[i].0 += r.value;
            s[i].1 += 1;
        }
    }
    let mut t: Trend = BTreeMap::new();
    for ((q, g), s) in sums {
        let values = s
            .iter()
            .map(|&(sum, n)| (n > 0).then(|| sum / n as f64))
            .collect();
        t.entry(q).or_default().insert(g, values);
    }
    t
}

/// history/trend.csv: snapshot, quantity, model, value.
pub fn write_trend_csv(
    results_dir: &Path,
    snapshots: &[(String, Vec<EvalTableRow>)],
    t: &Trend,
) -> Result<PathBuf> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["snapshot", "quantity", "model", "value"])?;
    for (q, models) in t {
        for (m, values) in models {
            for (i, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    w.write_record([snapshots[i].0.as_str(), q, m, &v.to_string()])?;
                }
            }
        }
    }
    let p = results_dir.join("history").join("trend.csv");
    crate::fsutil::atomic_write(&p, &w.into_inner()?)?;
    Ok(p)
}
