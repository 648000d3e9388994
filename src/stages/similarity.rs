//! `similarity`: angular distances between layer boundaries over a text set.

use std::io::Write;

use anyhow::Result;
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

use super::load::open_model;
use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};
use crate::backend::{default_workers, dispatch, BackendTask};
use crate::data::text::{load_windows, TextSpec};
use crate::method::similarity::{measure, Distances};
use crate::model::ModelFiles;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityParams {
    pub samples: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    pub text: TextSpec,
}

impl Params for SimilarityParams {
    fn validate(&self) -> Result<(), ParamError> {
        for (k, v) in [
            ("samples", self.samples),
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
        ] {
            if v == 0 {
                return Err(ParamError {
                    path: k.into(),
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.seq_len < 2 {
            return Err(ParamError {
                path: "seq_len".into(),
                message: format!("must be at least 2, got {}", self.seq_len),
            });
        }
        self.text.validate().map_err(|m| ParamError {
            path: "text.holdout_every".into(),
            message: m,
        })
    }
}

/// The artifact's distances.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimilarityRecord {
    pub numbering: String,
    pub seq_len: usize,
    pub tokenizer_adds_bos: bool,
    #[serde(flatten)]
    pub distances: Distances,
}

pub const NUMBERING: &str = "layers are numbered from 0; x(l) is the input of layer l, x(0) the embedding output, x(L) the last block's output before the final norm; d[n-1][l] = d(x(l), x(l+n)) for n = 1..L-1, l = 0..L-n";

pub struct SimilarityStage;

struct Measure<'a> {
    files: &'a ModelFiles,
    rows: &'a [Vec<u32>],
    batch: usize,
    workers: usize,
}

impl BackendTask for Measure<'_> {
    type Output = Distances;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Distances> {
        let model = self.files.build::<B>(&device, dtype)?;
        measure(
            &model,
            self.rows,
            self.batch,
            self.workers,
            self.files.config.eos_token_id.unwrap_or(0),
        )
    }
}

impl Stage for SimilarityStage {
    fn kind(&self) -> &'static str {
        "similarity"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "angular distance d(l, n) between layer boundaries at the final token, averaged over a text set"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/similarity.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        &[InputSlot {
            name: "model",
            kinds: &["load"],
            required: true,
            many: false,
        }]
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["text.source"]
    }
    fn numeric(&self) -> bool {
        true
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<SimilarityParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: SimilarityParams = ctx.params()?;
        let files = open_model(&ctx.input("model")?.dir, &ctx.cache_root)?;
        let text = ctx.source("text.source")?;
        let rows = load_windows(
            &text.path,
            &p.text,
            &files.tokenizer,
            p.seq_len,
            Some(p.samples),
        )?;
        tracing::info!(
            "similarity: {} samples of {} tokens from {}",
            rows.len(),
            p.seq_len,
            text.spec
        );
        let distances = dispatch(
            ctx.backend,
            ctx.precision,
            Measure {
                files: &files,
                rows: &rows,
                batch: p.batch_size,
                workers: default_workers(ctx.backend),
            },
        )?;
        let record = SimilarityRecord {
            numbering: NUMBERING.into(),
            seq_len: p.seq_len,
            tokenizer_adds_bos: files.tokenizer.adds_bos,
            distances,
        };
        std::fs::write(
            ctx.out("distances.json"),
            serde_json::to_string_pretty(&record)?,
        )?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(ctx.out("samples.jsonl"))?);
        for r in &rows {
            writeln!(f, "{}", serde_json::json!({ "tokens": r }))?;
        }
        f.flush()?;
        Ok(())
    }
}

pub fn read(dir: &std::path::Path) -> Result<SimilarityRecord> {
    let p = dir.join("distances.json");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}
