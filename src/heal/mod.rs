//! Healing: QLoRA finetuning of a pruned model (paper §4): LoRA adapters on a frozen base
//! (NF4 or dense), trained with AdamW on packed token windows, saved in PEFT layout; and the
//! training-free alternative, one least-squares linear map in place of the dropped block.

pub mod adapter;
pub mod gradients;
pub mod host_loss;
pub mod linear_map;
pub mod optim;
pub mod partial;
pub mod train;
