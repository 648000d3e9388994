//! The report's visual conventions in one place: series colours (matplotlib's tab10 order, so
//! series 0 is blue and series 1 orange, as the paper's figures, without tab10's red and gray,
//! which the unpruned baseline and the chance line use), and the reference lines.

use plotters::style::RGBColor;

/// Colours of series 0, 1, 2, ... (tab10 less red and gray).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(230, 120, 20),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i` (cycling after eight).
pub fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}
