//! What a running job sees: its parameters, its inputs' artifacts, its resolved sources, the
//! directory to write into, and the compute settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{parse_params, Params};
pub use crate::artifacts::InputArtifact;
use crate::backend::{BackendKind, Precision};
use crate::runtime::RuntimeOptions;
use crate::source::ResolvedSource;

pub struct JobContext {
    pub stage: String,
    pub kind: String,
    pub key: String,
    /// Canonical parameters (sweep values substituted, defaults applied).
    pub params: serde_json::Value,
    /// The sweep axis values of this job.
    pub assignment: BTreeMap<String, serde_json::Value>,
    pub inputs: BTreeMap<String, Vec<InputArtifact>>,
    /// Source parameters, resolved to local paths.
    pub sources: BTreeMap<String, ResolvedSource>,
    /// Write the artifact here (a temporary directory, published atomically on success).
    pub out_dir: PathBuf,
    pub cache_root: PathBuf,
    pub backend: BackendKind,
    pub precision: Precision,
    /// Process-wide options that change speed or observability, never results.
    pub runtime: RuntimeOptions,
    /// Settings the job's memory plan chose for parameters on "auto" (`MemoryPlan::settings`).
    pub planned: BTreeMap<String, serde_json::Value>,
}

impl JobContext {
    pub fn params<P: Params>(&self) -> Result<P> {
        parse_params(&self.params)
            .map_err(|e| anyhow::anyhow!("stage {}: {}: {}", self.stage, e.path, e.message))
    }

    /// The single artifact of a one-job input slot.
    pub fn input(&self, slot: &str) -> Result<&InputArtifact> {
        self.inputs
            .get(slot)
            .and_then(|v| v.first())
            .with_context(|| format!("stage {}: input \"{slot}\" is not connected", self.stage))
    }

    pub fn optional_input(&self, slot: &str) -> Option<&InputArtifact> {
        self.inputs.get(slot).and_then(|v| v.first())
    }

    /// All artifacts of a gathering input slot.
    pub fn inputs(&self, slot: &str) -> &[InputArtifact] {
        self.inputs.get(slot).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn source(&self, param: &str) -> Result<&ResolvedSource> {
        self.sources.get(param).with_context(|| {
            format!(
                "stage {}: source parameter \"{param}\" is not set",
                self.stage
            )
        })
    }

    /// Sub-batches to run concurrently on this job's backend.
    pub fn workers(&self) -> usize {
        crate::backend::workers_for(self.backend, self.runtime.cpu_threads)
    }

    pub fn out(&self, file: &str) -> PathBuf {
        self.out_dir.join(file)
    }
}
