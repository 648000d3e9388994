//! layerprune: layer pruning of open-weight LLMs after Gromov et al., "The Unreasonable
//! Ineffectiveness of the Deeper Layers" (ICLR 2025), on Burn.
//!
//! Layer numbering everywhere: layers are 0-based, x(l) is the input of layer l, x(0) the
//! embedding output, x(L) the last block's output before the final norm; a block is [l, l + n).

pub mod artifacts;
pub mod backend;
pub mod commands;
pub mod data;
pub mod digest;
pub mod eval;
pub mod formats;
pub mod fsutil;
pub mod heal;
pub mod method;
pub mod model;
pub mod paths;
pub mod peak_rss;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod runner;
pub mod runtime;
pub mod source;
pub mod stages;
pub mod workers;
