//! The `select` artifact: selection.json, the block each strategy drops for each n.

use serde::{Deserialize, Serialize};

use super::Record;
use crate::method::selection::{Block, Strategy};

pub const NUMBERING: &str = "0-based layers; drop the half-open block [start, end)";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionRecord {
    pub layers: usize,
    pub numbering: String,
    pub blocks: Vec<Block>,
}

impl Record for SelectionRecord {
    const KIND: &'static str = "select";
    const FILE: &'static str = "selection.json";
}

impl SelectionRecord {
    pub fn find(&self, n: usize, strategy: Strategy) -> Option<&Block> {
        self.blocks
            .iter()
            .find(|b| b.n == n && b.strategy == strategy)
    }
}
