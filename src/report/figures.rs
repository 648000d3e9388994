//! The paper's figures with plotters, each written as SVG and PNG (text rendered with the
//! bundled DejaVu Sans, so PNGs look the same on every machine).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::series_color;

/// The angular distances of a similarity pass as plain numbers: `d[n - 1][l]` = d(x(l), x(l+n))
/// for n = 1..layers-1, l = 0..layers-n.
#[derive(Debug, Clone, Copy)]
pub struct DistanceGrid<'a> {
    pub layers: usize,
    pub d: &'a [Vec<f64>],
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            let _ = plotters::style::register_font("sans-serif", style, bytes);
        }
    });
}

/// Viridis (dark purple at 0, yellow at 1), linearly interpolated between five anchors.
pub fn viridis(t: f64) -> RGBColor {
    const A: [(f64, [f64; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let i = A.iter().rposition(|(x, _)| *x <= t).unwrap_or(0).min(3);
    let (x0, c0) = A[i];
    let (x1, c1) = A[i + 1];
    let f = (t - x0) / (x1 - x0);
    let c = |k: usize| (c0[k] + f * (c1[k] - c0[k])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Fig. 4: x = start layer l, y = block size n, colour = d normalised per row to [0, 1]
/// (yellow = the row's minimum, which is also marked), for n = 1..L-1 and l = 0..L-n.
pub fn heatmap<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    dist: &DistanceGrid<'_>,
    title: &str,
) -> Result<()> {
    let layers = dist.layers;
    root.fill(&WHITE).map_err(err)?;
    let (main, legend) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(90));
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d(
            -0.5f64..(layers as f64 - 0.5),
            0.5f64..(layers as f64 - 0.5),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("start layer l (0-based; x(l) = input of layer l)")
        .y_desc("block size n")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for n in 1..layers {
        let row = &dist.d[n - 1];
        let (lo, hi) = row
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let argmin = row
            .iter()
            .enumerate()
            .fold(0, |b, (i, &x)| if x < row[b] { i } else { b });
        let y0 = n as f64 - 0.5;
        chart
            .draw_series(row.iter().enumerate().map(|(l, &v)| {
                let t = (v - lo) / span;
                Rectangle::new(
                    [(l as f64 - 0.5, y0), (l as f64 + 0.5, y0 + 1.0)],
                    viridis(1.0 - t).filled(),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (argmin as f64 - 0.3, y0 + 0.2),
                    (argmin as f64 + 0.3, y0 + 0.8),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
    }
    // colour bar
    let mut bar = ChartBuilder::on(&legend)
        .margin_top(40)
        .margin_bottom(56)
        .margin_right(8)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(err)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc("normalised d per n")
        .label_style(("sans-serif", 11))
        .axis_desc_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    bar.draw_series((0..50).map(|i| {
        let t = i as f64 / 50.0;
        Rectangle::new([(0.0, t), (1.0, t + 0.02)], viridis(1.0 - t).filled())
    }))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Fig. 1(c): d against l, one curve per n (dark purple n = 1 to yellow n = max), and the
/// minima l*(n) traced in black.
pub fn distance_curves<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    dist: &DistanceGrid<'_>,
    title: &str,
) -> Result<()> {
    let layers = dist.layers;
    root.fill(&WHITE).map_err(err)?;
    let ymax = dist.d.iter().flatten().fold(0f64, |m, &x| m.max(x)) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(layers as f64), 0f64..ymax.max(1e-6))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("start layer l (0-based; x(l) = input of layer l)")
        .y_desc("angular distance d(x(l), x(l+n))")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let max_n = layers - 1;
    for n in 1..=max_n {
        let color = viridis(if max_n > 1 {
            (n - 1) as f64 / (max_n - 1) as f64
        } else {
            0.0
        });
        chart
            .draw_series(LineSeries::new(
                dist.d[n - 1]
                    .iter()
                    .enumerate()
                    .map(|(l, &v)| (l as f64, v)),
                color.stroke_width(1),
            ))
            .map_err(err)?;
    }
    let trace: Vec<(f64, f64)> = (1..=max_n)
        .map(|n| {
            let row = &dist.d[n - 1];
            let l = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, &x)| if x < row[b] { i } else { b });
            (l as f64, row[l])
        })
        .collect();
    chart
        .draw_series(LineSeries::new(trace.clone(), BLACK.stroke_width(2)))
        .map_err(err)?
        .label("l*(n) = argmin_l d")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(trace.iter().map(|&p| Circle::new(p, 3, BLACK.filled())))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Write Fig. 4 and Fig. 1(c) as SVG and PNG into `dir`.
pub fn similarity_figures(dir: &Path, dist: &DistanceGrid<'_>, model: &str) -> Result<()> {
    register_font();
    let t4 = format!("{model}: angular distance, normalised per n (yellow = minimum)");
    heatmap(
        SVGBackend::new(&dir.join("fig4_similarity_heatmap.svg"), (900, 760)).into_drawing_area(),
        dist,
        &t4,
    )?;
    heatmap(
        BitMapBackend::new(&dir.join("fig4_similarity_heatmap.png"), (900, 760))
            .into_drawing_area(),
        dist,
        &t4,
    )?;
    let t1 = format!("{model}: d(x(l), x(l+n)) for n = 1..{}", dist.layers - 1);
    distance_curves(
        SVGBackend::new(&dir.join("fig1c_angular_distance.svg"), (900, 600)).into_drawing_area(),
        dist,
        &t1,
    )?;
    distance_curves(
        BitMapBackend::new(&dir.join("fig1c_angular_distance.png"), (900, 600)).into_drawing_area(),
        dist,
        &t1,
    )?;
    Ok(())
}

/// One curve of a "metric against fraction of layers dropped" panel.
pub struct Curve {
    pub label: String,
    /// The series' index in its table (e.g. the strategy's): picks its colour (report::style).
    pub series: usize,
    /// Dotted curves are drawn thinner, for unhealed models next to healed ones (solid).
    pub dashed: bool,
    /// The marker at each point (e.g. the healing method's).
    pub marker: Marker,
    pub points: Vec<(f64, f64)>,
    /// The error bar at each point: +-1 standard error (0 or missing: none).
    pub errors: Vec<f64>,
}

impl Curve {
    /// Each point's (y - error, y + error).
    fn extents(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points.iter().enumerate().map(|(i, q)| {
            let e = self.errors.get(i).copied().unwrap_or(0.0);
            let e = if e.is_finite() { e.abs() } else { 0.0 };
            (q.1 - e, q.1 + e)
        })
    }
}

/// Point markers: small circles (unhealed), squares (healed), triangles and diamonds (healed
/// otherwise, e.g. by a linear map or a partial fine-tune).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
}

impl Marker {
    /// The marker of an unhealed (dashed) or healed curve.
    pub fn of(dashed: bool) -> Self {
        if dashed {
            Self::Circle
        } else {
            Self::Square
        }
    }
}

/// Draw `marker` centred at pixel (x, y) of `area` (the legend).
fn marker_element<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    marker: Marker,
    (x, y): (i32, i32),
    color: RGBColor,
) -> Result<()> {
    match marker {
        Marker::Circle => area.draw(&Circle::new((x, y), 3, color.filled())),
        Marker::Square => area.draw(&Rectangle::new(
            [(x - 4, y - 4), (x + 4, y + 4)],
            color.filled(),
        )),
        Marker::Triangle => area.draw(&Polygon::new(
            vec![(x, y - 5), (x - 5, y + 4), (x + 5, y + 4)],
            color.filled(),
        )),
        Marker::Diamond => area.draw(&Polygon::new(
            vec![(x, y - 5), (x - 5, y), (x, y + 5), (x + 5, y)],
            color.filled(),
        )),
    }
    .map_err(err)
}

/// One panel: a metric against the fraction of layers dropped, with the unpruned baseline (red,
/// dashed) and a reference line (gray, dashed: random guessing, or 1.0 for normalised loss).
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
    pub baseline: Option<f64>,
    pub reference: Option<f64>,
}

/// Pixels per drawn piece (and per gap) of a dashed and a dotted line.
const DASH_PX: f64 = 7.0;
const DOT_PX: f64 = 2.5;

/// A polyline broken into pieces of about `piece_px` pixels, every other one drawn; `pixels`
/// gives the length in pixels of a stretch between two data points.
fn broken_line(
    points: &[(f64, f64)],
    style: ShapeStyle,
    piece_px: f64,
    pixels: impl Fn((f64, f64), (f64, f64)) -> f64,
) -> Vec<PathElement<(f64, f64)>> {
    let mut out = Vec::new();
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let pieces = ((pixels(a, b) / piece_px).round() as usize).max(1) | 1; // odd: ends drawn
        for k in (0..pieces).step_by(2) {
            let t0 = k as f64 / pieces as f64;
            let t1 = (k + 1) as f64 / pieces as f64;
            out.push(PathElement::new(
                vec![
                    (a.0 + (b.0 - a.0) * t0, a.1 + (b.1 - a.1) * t0),
                    (a.0 + (b.0 - a.0) * t1, a.1 + (b.1 - a.1) * t1),
                ],
                style,
            ));
        }
    }
    out
}

/// `title` in lines of at most `max_chars` characters, broken at spaces.
fn wrap(title: &str, max_chars: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in title.split(' ') {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= max_chars => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    x_max: f64,
    x_label: &str,
) -> Result<()> {
    let mut ys: Vec<f64> = p
        .curves
        .iter()
        .flat_map(|c| c.extents().flat_map(|(a, b)| [a, b]))
        .collect();
    ys.extend(p.baseline);
    ys.extend(p.reference);
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&p.y_label)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let pixels = |a: (f64, f64), b: (f64, f64)| {
        let ((x0, y0), (x1, y1)) = (chart.backend_coord(&a), chart.backend_coord(&b));
        (((x1 - x0).pow(2) + (y1 - y0).pow(2)) as f64).sqrt()
    };
    let mut lines = Vec::new();
    if let Some(b) = p.baseline {
        lines.extend(broken_line(
            &[(0.0, b), (x_max, b)],
            RED.stroke_width(2),
            DASH_PX,
            pixels,
        ));
    }
    if let Some(r) = p.reference {
        lines.extend(broken_line(
            &[(0.0, r), (x_max, r)],
            GRAY.stroke_width(2),
            DASH_PX,
            pixels,
        ));
    }
    let dotted: Vec<Vec<PathElement<(f64, f64)>>> = p
        .curves
        .iter()
        .map(|c| {
            let style = series_color(c.series).stroke_width(2);
            broken_line(&c.points, style, DOT_PX, pixels)
        })
        .collect();
    chart.draw_series(lines).map_err(err)?;
    for (c, dots) in p.curves.iter().zip(dotted) {
        let color = series_color(c.series);
        // error bars: +-1 standard error, with short caps
        let cap = x_max * 0.006;
        for (&(x, _), (a, b)) in c.points.iter().zip(c.extents()) {
            if b > a {
                let style = color.mix(0.6).stroke_width(1);
                chart
                    .draw_series([
                        PathElement::new(vec![(x, a), (x, b)], style),
                        PathElement::new(vec![(x - cap, a), (x + cap, a)], style),
                        PathElement::new(vec![(x - cap, b), (x + cap, b)], style),
                    ])
                    .map_err(err)?;
            }
        }
        if c.dashed {
            chart.draw_series(dots).map_err(err)?;
        } else {
            chart
                .draw_series(LineSeries::new(
                    c.points.clone(),
                    series_color(c.series).stroke_width(2),
                ))
                .map_err(err)?;
        }
        // each point gets the curve's marker (healed: squares or triangles, unhealed: small
        // circles)
        for &q in &c.points {
            let fill = color.filled();
            match c.marker {
                Marker::Circle => chart.draw_series(std::iter::once(Circle::new(q, 3, fill))),
                Marker::Square => chart.draw_series(std::iter::once(
                    EmptyElement::at(q) + Rectangle::new([(-4, -4), (4, 4)], fill),
                )),
                Marker::Triangle => chart.draw_series(std::iter::once(
                    EmptyElement::at(q) + Polygon::new(vec![(0, -5), (-5, 4), (5, 4)], fill),
                )),
                Marker::Diamond => chart.draw_series(std::iter::once(
                    EmptyElement::at(q)
                        + Polygon::new(vec![(0, -5), (-5, 0), (0, 5), (5, 0)], fill),
                )),
            }
            .map_err(err)?;
        }
    }
    Ok(())
}

const GRAY: RGBColor = RGBColor(150, 150, 150);

/// One legend entry: a line sample (dashed or solid) with its marker, and a label.
struct LegendEntry {
    label: String,
    color: RGBColor,
    dashed: bool,
    marker: Option<Marker>,
}

/// Height of one legend row, in pixels.
const LEGEND_ROW: i32 = 22;

/// The legend's entries: the reference lines, then each distinct curve label.
fn legend_entries(panels: &[Panel]) -> Vec<LegendEntry> {
    let mut entries: Vec<LegendEntry> = Vec::new();
    if panels.iter().any(|p| p.baseline.is_some()) {
        entries.push(LegendEntry {
            label: "unpruned".into(),
            color: RED,
            dashed: true,
            marker: None,
        });
    }
    if panels.iter().any(|p| p.reference.is_some()) {
        entries.push(LegendEntry {
            label: "chance (normalised loss: 1)".into(),
            color: GRAY,
            dashed: true,
            marker: None,
        });
    }
    for c in panels.iter().flat_map(|p| &p.curves) {
        if !entries.iter().any(|e| e.label == c.label) {
            entries.push(LegendEntry {
                label: c.label.clone(),
                color: series_color(c.series),
                dashed: c.dashed,
                marker: Some(c.marker),
            });
        }
    }
    entries
}

/// Each entry's (row, x) in a legend `width` pixels wide: as wide as its label (about 7 px a
/// character at 13 px), wrapped onto a new row when the row is full.
fn legend_layout(entries: &[LegendEntry], width: u32) -> Vec<(i32, i32)> {
    let mut out = Vec::with_capacity(entries.len());
    let (mut row, mut x) = (0, 10);
    for e in entries {
        let w = 48 + 7 * e.label.chars().count() as i32;
        if x > 10 && x + w > width as i32 - 10 {
            row += 1;
            x = 10;
        }
        out.push((row, x));
        x += w;
    }
    out
}

/// The legend strip's height for `panels` in a figure `width` pixels wide.
fn legend_height(panels: &[Panel], width: u32) -> u32 {
    let rows = legend_layout(&legend_entries(panels), width)
        .last()
        .map(|(r, _)| r + 1)
        .unwrap_or(1);
    (14 + LEGEND_ROW * rows) as u32
}

/// The figure's one legend, in a strip under the panels, so that it never hides data.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<()> {
    let entries = legend_entries(panels);
    let (w, _) = area.dim_in_pixel();
    for (e, (row, x)) in entries.iter().zip(legend_layout(&entries, w)) {
        let y = 7 + LEGEND_ROW / 2 + row * LEGEND_ROW;
        let style = e.color.stroke_width(2);
        if e.dashed {
            // the reference lines dashed, unhealed curves dotted, as drawn in the panels
            let (step, len) = if e.marker.is_none() { (10, 6) } else { (4, 2) };
            for k in 0..26 / step + 1 {
                area.draw(&PathElement::new(
                    vec![(x + k * step, y), (x + k * step + len, y)],
                    style,
                ))
                .map_err(err)?;
            }
        } else {
            area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], style))
                .map_err(err)?;
        }
        if let Some(m) = e.marker {
            marker_element(area, m, (x + 13, y), e.color)?;
        }
        area.draw(&Text::new(
            e.label.clone(),
            (x + 32, y - 7),
            ("sans-serif", 13).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    Ok(())
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    cols: usize,
    title: &str,
    x_label: &str,
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    // the title, in as many lines as the width needs (about 10 px a character at 18 px)
    let (width, _) = root.dim_in_pixel();
    let lines = wrap(title, (width as usize).saturating_sub(20) / 10);
    let (head, root) = root.split_vertically(10 + 22 * lines.len() as u32);
    for (i, line) in lines.iter().enumerate() {
        head.draw(&Text::new(
            line.clone(),
            (width as i32 / 2, 6 + 22 * i as i32),
            ("sans-serif", 18)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
    }
    let (width, height) = root.dim_in_pixel();
    let (root, legend) = root.split_vertically(height.saturating_sub(legend_height(panels, width)));
    draw_legend(&legend, panels)?;
    let rows = panels.len().div_ceil(cols);
    let x_max = panels
        .iter()
        .flat_map(|p| p.curves.iter().flat_map(|c| c.points.iter().map(|q| q.0)))
        .fold(0.5f64, f64::max)
        * 1.05;
    let areas = root.split_evenly((rows, cols));
    for (area, p) in areas.iter().zip(panels) {
        draw_panel(area, p, x_max, x_label)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Metric-against-fraction panels (paper Figs. 1d, 2, 3, 5, 6) as `<stem>.svg` and `<stem>.png`.
pub fn fraction_figure(dir: &Path, stem: &str, panels: &[Panel], title: &str) -> Result<()> {
    let cols = panels.len().clamp(1, 3);
    panel_figure(dir, stem, panels, cols, title, "fraction of layers dropped")
}

/// The same, with the panels in a grid of `cols` columns filled row by row (paper Fig. 5: rows
/// of metrics, columns unhealed / healed; Fig. 1(d): one column).
pub fn fraction_grid_figure(
    dir: &Path,
    stem: &str,
    panels: &[Panel],
    cols: usize,
    title: &str,
) -> Result<()> {
    panel_figure(
        dir,
        stem,
        panels,
        cols.max(1),
        title,
        "fraction of layers dropped",
    )
}

/// Metrics over result snapshots (`report --history`): x is the snapshot's number (1 = the
/// oldest), as `<stem>.svg` and `<stem>.png`.
pub fn trend_figure(dir: &Path, stem: &str, panels: &[Panel], title: &str) -> Result<()> {
    panel_figure(
        dir,
        stem,
        panels,
        panels.len().clamp(1, 3),
        title,
        "snapshot (1 = oldest; times in trend.csv)",
    )
}

fn panel_figure(
    dir: &Path,
    stem: &str,
    panels: &[Panel],
    cols: usize,
    title: &str,
    x_label: &str,
) -> Result<()> {
    register_font();
    let rows = panels.len().div_ceil(cols).max(1) as u32;
    let width = 420 * cols as u32 + 20;
    let size = (width, 360 * rows + 40 + legend_height(panels, width));
    draw_panels(
        SVGBackend::new(&dir.join(format!("{stem}.svg")), size).into_drawing_area(),
        panels,
        cols,
        title,
        x_label,
    )?;
    draw_panels(
        BitMapBackend::new(&dir.join(format!("{stem}.png")), size).into_drawing_area(),
        panels,
        cols,
        title,
        x_label,
    )?;
    Ok(())
}

/// The healing loss curve (training loss and learning rate per optimizer step).
/// `points` are (optimizer step, training loss).
pub fn loss_curve(dir: &Path, points: &[(f64, f64)], title: &str) -> Result<()> {
    register_font();
    let points = points.to_vec();
    let panels = [Panel {
        title: title.to_string(),
        y_label: "training loss (nats/token)".into(),
        curves: vec![Curve {
            label: "loss".into(),
            series: 0,
            dashed: false,
            marker: Marker::Square,
            points,
            errors: Vec::new(),
        }],
        baseline: None,
        reference: None,
    }];
    let draw =
        |root: DrawingArea<SVGBackend, Shift>| -> Result<()> { draw_steps(root, &panels[0]) };
    draw(SVGBackend::new(&dir.join("loss_curve.svg"), (800, 500)).into_drawing_area())?;
    draw_steps(
        BitMapBackend::new(&dir.join("loss_curve.png"), (800, 500)).into_drawing_area(),
        &panels[0],
    )?;
    Ok(())
}

fn draw_steps<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, p: &Panel) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let pts = &p.curves[0].points;
    let x_max = pts.iter().map(|q| q.0).fold(1.0, f64::max);
    let (lo, hi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| {
            (a.min(q.1), b.max(q.1))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(&p.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc(&p.y_label)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            pts.clone(),
            series_color(p.curves[0].series).stroke_width(2),
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
