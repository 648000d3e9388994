//! Bytes to typed values, beneath model and data: GGUF files and ggml quant types, safetensors
//! directories, tokenizer files, the bitsandbytes NF4 codec, and plain host tensors. No Burn
//! model types live here.

pub mod contained;
pub mod ggml_quant;
pub mod gguf;
pub mod host_tensor;
pub mod kquants;
pub mod nf4;
pub mod safetensors_dir;
pub mod tiktoken;
pub mod tokenizer;
