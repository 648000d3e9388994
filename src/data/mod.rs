//! Data: tokenizers, text sources, benchmark tasks.

pub mod tokenizer;
