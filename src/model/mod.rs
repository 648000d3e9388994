//! The model core: configuration, weight formats and the Burn transformer.

pub mod config;
pub mod dequant;
pub mod export;
pub mod gguf;
pub mod host_tensor;
pub mod linear;
pub mod load;
pub mod nf4;
pub mod rope;
pub mod safetensors_dir;
pub mod transformer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use load::ModelFiles;
pub use transformer::{Capture, ForwardOutput, Logits, TokenBatch, Transformer};
