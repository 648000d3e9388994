//! Healing: QLoRA finetuning of a pruned model (paper §4): LoRA adapters on a frozen base
//! (NF4 or dense), trained with AdamW on packed token windows, saved in PEFT layout.

pub mod adapter;
pub mod optim;
pub mod train;
