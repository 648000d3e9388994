//! Data: tokenizers, text sources, benchmark tasks.

pub mod records;
pub mod tasks;
pub mod text;
