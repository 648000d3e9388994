//! Data: tokenizers, text sources, benchmark tasks.

pub mod text;
pub mod tokenizer;
