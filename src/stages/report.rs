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
        1
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
        std::fs::write(ctx.out("summary.md"), summary)?;
        Ok(())
    }
}

/// "SmolLM2-135M-Instruct.Q4_1.gguf"-style name of the model behind a similarity artifact.
fn model_title(ctx: &JobContext, sim: &super::context::InputArtifact) -> Result<String> {
    let _ = ctx;
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
