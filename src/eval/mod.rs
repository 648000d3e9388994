//! Evaluation: lm-evaluation-harness's request building and aggregation, log-likelihood
//! scoring (with shared prefixes and the stream reuse below the cut), metrics, validation loss.

pub mod below_cut;
pub mod harness;
pub mod loglik;
pub mod loss;
pub mod metrics;
