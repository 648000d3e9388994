//! Stage kinds. A kind is a typed parameter struct (serde, `deny_unknown_fields`) with documented
//! defaults in `stages/<kind>.toml` (compiled in), the input slots it reads, and the artifact it
//! writes into its output directory.

pub mod context;
pub mod eval_loss;
pub mod eval_qa;
pub mod heal;
pub mod load;
pub mod model_ref;
pub mod prune;
pub mod report;
pub mod select;
pub mod similarity;
pub mod test_kinds;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use context::JobContext;

/// One named input of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSlot {
    pub name: &'static str,
    /// Accepted upstream kinds.
    pub kinds: &'static [&'static str],
    pub required: bool,
    /// A list of stages whose jobs are gathered across the sweep axes this stage does not use
    /// (e.g. the report); otherwise one upstream job per job of this stage.
    pub many: bool,
}

/// A parameter error: dotted path inside the stage table and message.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: String,
    pub message: String,
}

pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Bumped whenever the artifact's meaning or format changes (part of every cache key).
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    /// The documented defaults (stages/<kind>.toml).
    fn defaults(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputSlot];
    /// Parameters whose values name sources (a key of [sources] or a literal source).
    fn source_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether results depend on the compute backend's precision (then it is part of the key).
    fn numeric(&self) -> bool {
        false
    }
    /// Whether the artifact's files are copied into results/<pipeline>/ (report stages).
    fn publishes(&self) -> bool {
        false
    }
    /// Type-check and range-check the parameters; returns their canonical JSON form.
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError>;
    /// Compute the artifact into `ctx.out_dir`.
    fn run(&self, ctx: &JobContext) -> Result<()>;
}

/// Parameters that can check their own ranges.
pub trait Params: DeserializeOwned + Serialize {
    fn validate(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

/// Deserialize typed parameters with the failing key path, then validate ranges.
pub fn parse_params<P: Params>(value: &serde_json::Value) -> Result<P, ParamError> {
    let p: P = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ParamError {
            path: if path == "." { String::new() } else { path },
            message: inner,
        }
    })?;
    p.validate()?;
    Ok(p)
}

/// Canonical JSON of typed parameters.
pub fn canonical<P: Params>(value: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let p: P = parse_params(value)?;
    Ok(serde_json::to_value(&p).expect("parameters serialize"))
}

/// Every stage kind this build knows. Test kinds appear when LAYERPRUNE_TEST_STAGES=1.
pub fn registry() -> Vec<&'static dyn Stage> {
    let mut kinds: Vec<&'static dyn Stage> = vec![
        &load::LoadStage,
        &similarity::SimilarityStage,
        &select::SelectStage,
        &prune::PruneStage,
        &eval_qa::EvalQaStage,
        &eval_loss::EvalLossStage,
        &heal::HealStage,
        &report::ReportStage,
    ];
    if std::env::var("LAYERPRUNE_TEST_STAGES").is_ok_and(|v| v == "1") {
        kinds.push(&test_kinds::TestValueStage);
    }
    kinds
}

pub fn find(kind: &str) -> Option<&'static dyn Stage> {
    registry().into_iter().find(|s| s.kind() == kind)
}
