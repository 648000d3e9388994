//! The library side of each CLI command; `main.rs` only parses arguments and calls these.

pub mod bench;
pub mod bench_sweep;
pub mod cache_bundle;
pub mod forward;
pub mod gpu_check;
pub mod inspect;
pub mod pipeline_cmds;
pub mod report;
pub mod submit;
