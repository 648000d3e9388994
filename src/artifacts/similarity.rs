//! The `similarity` artifact: distances.json (the matrix d(l, n) and its standard errors) and
//! samples.jsonl (the token ids of every sample, one `{"tokens": [...]}` per line).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Record;
use crate::method::similarity::Distances;

pub const NUMBERING: &str = "layers are numbered from 0; x(l) is the input of layer l, x(0) the embedding output, x(L) the last block's output before the final norm; d[n-1][l] = d(x(l), x(l+n)) for n = 1..L-1, l = 0..L-n";

/// The samples' file name.
pub const SAMPLES: &str = "samples.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimilarityRecord {
    pub numbering: String,
    pub seq_len: usize,
    pub tokenizer_adds_bos: bool,
    #[serde(flatten)]
    pub distances: Distances,
}

impl Record for SimilarityRecord {
    const KIND: &'static str = "similarity";
    const FILE: &'static str = "distances.json";
}

/// Write the samples' token ids.
pub fn write_samples(dir: &Path, rows: &[Vec<u32>]) -> Result<()> {
    let p = dir.join(SAMPLES);
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&p).with_context(|| format!("cannot write {}", p.display()))?,
    );
    for r in rows {
        writeln!(f, "{}", serde_json::json!({ "tokens": r }))?;
    }
    f.flush()?;
    Ok(())
}

/// Where the samples of a similarity artifact are.
pub fn samples_path(dir: &Path) -> PathBuf {
    dir.join(SAMPLES)
}
