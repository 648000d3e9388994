//! What each job of a pipeline looked like at its last plan or run, so that `plan` can say why
//! a job must run ("params changed: lora_rank 64 -> 8", "input changed: ...").
//! Stored at `<cache>/pipelines/<name>.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobState {
    pub key: String,
    pub params: serde_json::Value,
    /// slot -> upstream labels
    pub inputs: BTreeMap<String, Vec<String>>,
    /// slot -> upstream keys
    pub input_keys: BTreeMap<String, Vec<String>>,
    pub sources: BTreeMap<String, String>,
    pub version: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PipelineState {
    /// job label -> state
    pub jobs: BTreeMap<String, JobState>,
}

fn path(cache_root: &Path, pipeline: &str) -> PathBuf {
    cache_root
        .join("pipelines")
        .join(format!("{pipeline}.json"))
}

pub fn load(cache_root: &Path, pipeline: &str) -> PipelineState {
    std::fs::read_to_string(path(cache_root, pipeline))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

pub fn save(cache_root: &Path, pipeline: &str, state: &PipelineState) -> anyhow::Result<()> {
    let p = path(cache_root, pipeline);
    crate::fsutil::atomic_write(&p, &serde_json::to_vec_pretty(state)?)
}

/// "a 1 -> 2, b.c \"x\" -> \"y\"" for the keys whose values differ.
pub fn diff(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out.join(", ")
}

fn diff_into(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_into(&p, x, y, out),
                    (None, Some(y)) => out.push(format!("{p} (new) = {y}")),
                    (Some(x), None) => out.push(format!("{p} {x} -> (removed)")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("{prefix} {a} -> {b}")),
        _ => {}
    }
}
