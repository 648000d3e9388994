//! The `eval-qa` artifact: scores.json (per task: metrics and every item's scores) and
//! prompts.json (the exact first prompt of each task).

use serde::{Deserialize, Serialize};

use super::{Record, Variant};
pub use crate::eval::harness::{ItemResult, MetricValue, PromptStyle};

/// The prompts' file name.
pub const PROMPTS: &str = "prompts.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub shots: usize,
    pub prompt: PromptStyle,
    pub metrics: Vec<MetricValue>,
    pub items: Vec<ItemResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub variant: Variant,
    pub model_key: String,
    /// A short unique name of the evaluated model ("base", "pruned/similarity/0.25", ...).
    pub label: String,
    pub results: Vec<TaskResult>,
}

impl Record for EvalRecord {
    const KIND: &'static str = "eval-qa";
    const FILE: &'static str = "scores.json";
}
