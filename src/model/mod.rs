//! The model core: architecture descriptions, configuration, the Burn transformer and its
//! linears (dense, NF4, streamed from the file, LoRA), surgery on a built model, and export in Hugging Face layout.
//! Bytes-to-values formats (GGUF, safetensors, tokenizer files, NF4 codec) live in `formats`.

pub mod architecture;
pub mod config;
pub mod config_files;
pub mod export;
pub mod family;
pub mod host_attention;
pub mod host_mlp;
pub mod linear;
pub mod load;
pub mod lora;
pub mod memory;
pub mod nf4_linear;
pub mod nll;
pub mod packing;
pub mod readback;
pub mod rope;
pub mod streamed_linear;
pub mod surgery;
pub mod tracking;
pub mod transformer;
pub mod weights;

pub use architecture::{Layout, Projection, ProjectionSpec};
pub use config::{Architecture, ModelConfig};
pub use family::Family;
pub use load::ModelFiles;
pub use readback::to_f32_vec;
pub use transformer::{Capture, ForwardOutput, Logits, TokenBatch, Transformer};
