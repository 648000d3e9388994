//! Pipelines: TOML files layered over stage defaults, expanded into a job graph.

pub mod config;
pub mod config_error;
pub mod graph;

pub use config::{load, load_text, PipelineConfig};
pub use config_error::ConfigError;
pub use graph::{expand, expand_allowing_absent, Job, JobGraph};
