//! Evaluation: log-likelihood scoring, multiple-choice metrics, validation loss.

pub mod below_cut;
pub mod loglik;
pub mod loss;
pub mod metrics;
