//! The paper's figures with plotters, each written as SVG and PNG (text rendered with the
//! bundled DejaVu Sans, so PNGs look the same on every machine).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::method::similarity::Distances;

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
    dist: &Distances,
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
    dist: &Distances,
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
pub fn similarity_figures(dir: &Path, dist: &Distances, model: &str) -> Result<()> {
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
