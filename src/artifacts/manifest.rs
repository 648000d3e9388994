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
}

/// The manifest's file name inside an artifact directory.
pub const FILE: &str = "manifest.json";

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REV: &str = env!("LAYERPRUNE_GIT_REV");
