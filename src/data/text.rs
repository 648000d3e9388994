//! Text sets: documents from a folder of .txt files, a JSONL file ({"text": ...} per line), a
//! gzipped JSONL file (the C4 shard format, .json.gz / .jsonl.gz) or a folder of such files;
//! split by document into a training and a held-out part; cut into token windows.
//!
//! Rules (deterministic, declared in the stage parameters):
//! - documents are read in file-name order (lines in file order within a JSONL file);
//! - document i (0-based) is held out when i % holdout_every == holdout_every - 1 (the 10th,
//!   20th, ... for holdout_every = 10); the rest is the training part;
//! - each document is tokenized on its own (with the model's default special tokens) and cut into
//!   consecutive non-overlapping windows of seq_len tokens from its first token; a remainder
//!   shorter than seq_len is dropped;
//! - `count` windows are taken evenly from all windows in document order: indices
//!   floor(k * N / count), k = 0..count-1.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::formats::tokenizer::TextTokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Every holdout_every-th document.
    Heldout,
    /// The other documents.
    Train,
    /// All documents.
    All,
}

/// Which text and which part of it (a table in stage parameters).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// A key of [sources] or a literal source: a folder of .txt files, a .jsonl or .json.gz file,
    /// or a folder of .jsonl / .json.gz files.
    pub source: String,
    pub part: Part,
    pub holdout_every: usize,
    /// JSON field holding the text (JSONL and json.gz).
    pub field: String,
}

impl TextSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.holdout_every < 2 && self.part != Part::All {
            return Err(format!(
                "holdout_every must be at least 2, got {}",
                self.holdout_every
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Document {
    /// File name (and line number for JSONL).
    pub name: String,
    pub text: String,
}

fn is_jsonl(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    n.ends_with(".jsonl")
        || n.ends_with(".json")
        || n.ends_with(".jsonl.gz")
        || n.ends_with(".json.gz")
}

fn read_jsonl(path: &Path, field: &str, out: &mut Vec<Document>) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let reader: Box<dyn Read> = if name.to_lowercase().ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        let text = v.get(field).and_then(|t| t.as_str()).with_context(|| {
            format!("{}:{}: no string field \"{field}\"", path.display(), i + 1)
        })?;
        out.push(Document {
            name: format!("{name}:{}", i + 1),
            text: text.to_string(),
        });
    }
    Ok(())
}

/// All documents of a text source, in the declared order.
pub fn read_documents(path: &Path, field: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    if path.is_file() {
        if is_jsonl(path) {
            read_jsonl(path, field, &mut docs)?;
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
            docs.push(Document {
                name: path.file_name().unwrap().to_string_lossy().to_string(),
                text,
            });
        }
    } else if path.is_dir() {
        let mut files: Vec<PathBuf> = Vec::new();
        collect(path, &mut files)?;
        files.sort();
        let (txt, json): (Vec<PathBuf>, Vec<PathBuf>) = files
            .into_iter()
            .partition(|p| p.extension().is_some_and(|e| e == "txt"));
        if !txt.is_empty() && !json.is_empty() {
            bail!(
                "{}: mixes .txt and JSON files; point the source at one kind",
                path.display()
            );
        }
        for f in &txt {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("{}: not UTF-8 text", f.display()))?;
            docs.push(Document {
                name: f.strip_prefix(path).unwrap().to_string_lossy().to_string(),
                text,
            });
        }
        for f in &json {
            read_jsonl(f, field, &mut docs)?;
        }
    } else {
        bail!("{}: no such file or directory", path.display());
    }
    if docs.is_empty() {
        bail!(
            "{}: no documents (expected .txt files, .jsonl or .json.gz)",
            path.display()
        );
    }
    Ok(docs)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "txt") || is_jsonl(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The documents of one part.
pub fn select_part(docs: Vec<Document>, part: Part, every: usize) -> Vec<Document> {
    docs.into_iter()
        .enumerate()
        .filter(|(i, _)| match part {
            Part::All => true,
            Part::Heldout => i % every == every - 1,
            Part::Train => i % every != every - 1,
        })
        .map(|(_, d)| d)
        .collect()
}

/// Consecutive non-overlapping windows of `seq_len` tokens of each document, in order.
pub fn windows(
    tokenizer: &TextTokenizer,
    docs: &[Document],
    seq_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    for d in docs {
        let ids = tokenizer
            .encode(&d.text)
            .with_context(|| format!("tokenizing {}", d.name))?;
        out.extend(ids.chunks_exact(seq_len).map(|c| c.to_vec()));
    }
    Ok(out)
}

/// Packed training windows: the training documents tokenized, joined with EOS, cut into
/// consecutive windows of seq_len tokens.
pub fn packed_windows(
    path: &Path,
    spec: &TextSpec,
    tokenizer: &TextTokenizer,
    eos: Option<u32>,
    seq_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let docs = select_part(
        read_documents(path, &spec.field)?,
        spec.part,
        spec.holdout_every,
    );
    let mut stream = Vec::new();
    for d in &docs {
        stream.extend(
            tokenizer
                .encode(&d.text)
                .with_context(|| format!("tokenizing {}", d.name))?,
        );
        if let Some(e) = eos {
            stream.push(e);
        }
    }
    let windows: Vec<Vec<u32>> = stream.chunks_exact(seq_len).map(|c| c.to_vec()).collect();
    if windows.is_empty() {
        bail!(
            "{}: the {:?} part has fewer than {seq_len} tokens",
            path.display(),
            spec.part
        );
    }
    Ok(windows)
}

/// `count` items evenly spread over `items`: indices floor(k * N / count).
pub fn pick_evenly<T: Clone>(items: &[T], count: usize) -> Vec<T> {
    let n = items.len();
    (0..count).map(|k| items[k * n / count].clone()).collect()
}

/// Resolve, read, split, tokenize and pick: the windows a stage works on.
pub fn load_windows(
    path: &Path,
    spec: &TextSpec,
    tokenizer: &TextTokenizer,
    seq_len: usize,
    count: Option<usize>,
) -> Result<Vec<Vec<u32>>> {
    let docs = select_part(
        read_documents(path, &spec.field)?,
        spec.part,
        spec.holdout_every,
    );
    if docs.is_empty() {
        bail!(
            "{}: the {:?} part has no documents",
            path.display(),
            spec.part
        );
    }
    let all = windows(tokenizer, &docs, seq_len)?;
    match count {
        None => Ok(all),
        Some(c) if c <= all.len() => Ok(pick_evenly(&all, c)),
        Some(c) => bail!(
            "{}: {} documents ({:?} part) give only {} windows of {seq_len} tokens, {c} requested",
            path.display(),
            docs.len(),
            spec.part,
            all.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heldout_is_every_nth_and_train_the_rest() {
        let docs: Vec<Document> = (0..25)
            .map(|i| Document {
                name: format!("{i:02}"),
                text: String::new(),
            })
            .collect();
        let held: Vec<String> = select_part(docs.clone(), Part::Heldout, 10)
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(held, vec!["09", "19"]);
        assert_eq!(select_part(docs, Part::Train, 10).len(), 23);
    }

    #[test]
    fn evenly_spread() {
        let v: Vec<usize> = (0..10).collect();
        assert_eq!(pick_evenly(&v, 4), vec![0, 2, 5, 7]);
        assert_eq!(pick_evenly(&v, 10), v);
    }
}
