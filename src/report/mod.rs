//! Result tables and the paper's figures.

pub mod figures;
