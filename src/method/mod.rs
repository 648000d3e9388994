//! The paper's method and its peers: angular distances between layer boundaries, the choice of
//! the layers to drop (../shared/paper-spec.md §2-§3), and greedy removal by calibration loss.

pub mod loss_greedy;
pub mod selection;
pub mod similarity;
