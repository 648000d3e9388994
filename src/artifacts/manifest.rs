//! manifest.json: how an artifact was made. Written last (by the runner's store), so an
//! artifact without one is not complete. Shared by the store, which writes and checks it, and
//! the stages, which read their inputs' manifests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRecord {
    pub spec: String,
    pub identity: String,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: String,
    pub version: u32,
    pub key: String,
    /// The stage (and sweep values) that first made it.
    pub stage: String,
    pub assignment: BTreeMap<String, serde_json::Value>,
    pub params: serde_json::Value,
    /// slot -> upstream keys
    pub inputs: BTreeMap<String, Vec<String>>,
    pub sources: BTreeMap<String, SourceRecord>,
    /// relative path -> size and sha256
    pub files: BTreeMap<String, FileRecord>,
    pub started_at: String,
    pub finished_at: String,
    pub seconds: f64,
    pub tool_version: String,
    pub git_rev: String,
    pub backend: String,
    pub precision: String,
    /// The refresh mark that is part of the key (`run --refresh`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
}

/// The parts of a job's settings its cache key is made of.
pub struct KeyParts<'a> {
    pub kind: &'a str,
    pub version: u32,
    /// The parameters with every source parameter's value replaced by the source's identity.
    pub key_params: &'a serde_json::Value,
    /// slot -> the input jobs' keys
    pub inputs: &'a BTreeMap<String, Vec<String>>,
    /// The compute precision, for numeric stages only.
    pub precision: Option<&'a str>,
    pub refresh: Option<&'a str>,
}

/// The cache key: sha256 of the canonical JSON (sorted keys) of kind, version, parameters
/// (sources by identity), the inputs' keys per slot, the precision for numeric stages and the
/// refresh mark. The one definition: the pipeline computes keys with it and `cache import`
/// recomputes a bundled artifact's key from its manifest with it.
pub fn cache_key(parts: &KeyParts) -> String {
    let mut doc = serde_json::json!({
        "kind": parts.kind,
        "version": parts.version,
        "params": parts.key_params,
        "inputs": parts.inputs,
        "precision": parts.precision,
    });
    if let Some(mark) = parts.refresh {
        doc["refresh"] = serde_json::Value::String(mark.to_string());
    }
    crate::digest::sha256_bytes(serde_json::to_string(&doc).unwrap_or_default().as_bytes())
}

/// The JSON pointer of a dotted parameter path: "text.source" is "/text/source".
pub fn json_pointer(path: &str) -> String {
    format!("/{}", path.replace('.', "/"))
}

/// Parameters that say how a job runs, never what it computes (beyond rounding, as the number
/// of threads): left out of every key, so that turning them on or off reuses the artifacts.
/// `gradient_checkpointing` recomputes each block in the backward pass; on flex in f32 the
/// LoRA gradients are bit-identical to one graph's (tests/heal_parity.rs); `stream_weights`
/// reads the layers' weights from the model file at each use, the same values
/// (tests/layer_streaming.rs).
pub const EXECUTION_PARAMS: &[&str] = &["gradient_checkpointing", "stream_weights"];

/// `params` with the value of every source parameter (dotted path -> identity) replaced by
/// the identity, and the execution parameters left out, as keys hash them.
pub fn key_params<'a>(
    params: &serde_json::Value,
    identities: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> serde_json::Value {
    let mut out = params.clone();
    if let Some(obj) = out.as_object_mut() {
        for name in EXECUTION_PARAMS {
            obj.remove(*name);
        }
    }
    for (path, identity) in identities {
        if let Some(slot) = out.pointer_mut(&json_pointer(path)) {
            *slot = serde_json::Value::String(identity.to_string());
        }
    }
    out
}

impl Manifest {
    /// The key this manifest's settings make (`numeric`: whether the stage kind's keys hold
    /// the precision): a bundle's artifact is accepted only under that key.
    pub fn expected_key(&self, numeric: bool) -> String {
        let key_params = key_params(
            &self.params,
            self.sources
                .iter()
                .map(|(p, s)| (p.as_str(), s.identity.as_str())),
        );
        cache_key(&KeyParts {
            kind: &self.kind,
            version: self.version,
            key_params: &key_params,
            inputs: &self.inputs,
            precision: numeric.then_some(self.precision.as_str()),
            refresh: self.refresh.as_deref(),
        })
    }
}

/// The manifest's file name inside an artifact directory.
pub const FILE: &str = "manifest.json";

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REV: &str = env!("LAYERPRUNE_GIT_REV");
