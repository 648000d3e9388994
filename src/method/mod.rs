//! The paper's method: angular distances between layer boundaries and the choice of the block
//! of layers to drop (../shared/paper-spec.md §2-§3).

pub mod selection;
pub mod similarity;
