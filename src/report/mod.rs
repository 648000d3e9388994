//! Result figures drawn from plain series (numbers, labels, series indices): no domain types.
//! Colours and markers are chosen here (`style`), never by the caller.

pub mod figures;
pub mod style;
