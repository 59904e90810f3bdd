//! PNG plots: histogram comparisons with a ratio panel, and average-shower images per layer.
//!
//! Fonts: DejaVu Sans is embedded (see `assets/DejaVuSans-LICENSE.txt`), so no system font
//! library is needed.

use caloforge_core::Geometry;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static INIT: Once = Once::new();

fn init_font() {
    INIT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Data of one histogram comparison plot.
pub struct HistPlot<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x-axis label.
    pub xlabel: &'a str,
    /// Bin edges.
    pub edges: &'a [f64],
    /// Reference density per bin.
    pub reference: &'a [f64],
    /// Generated density per bin.
    pub generated: &'a [f64],
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Separation power shown in the legend.
    pub separation: f64,
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> String + '_ {
    move |e| format!("cannot draw {}: {e}", path.display())
}

fn fmt_tick(v: f64, log: bool) -> String {
    if log {
        let p = 10f64.powf(v);
        if (v - v.round()).abs() < 1e-9 {
            format!("1e{}", v.round() as i64)
        } else {
            format!("{p:.2e}")
        }
    } else if v.abs() >= 1000.0 || (v != 0.0 && v.abs() < 0.01) {
        format!("{v:.1e}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// Draws a histogram comparison (reference filled, generated as a line) with a
/// generated/reference ratio panel, to `path`.
pub fn hist_png(path: &Path, h: &HistPlot) -> Result<(), String> {
    init_font();
    let e = err(path);
    let root = BitMapBackend::new(path, (720, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (top, bottom) = root.split_vertically(530);
    let tx = |x: f64| if h.log_x { x.max(1e-300).log10() } else { x };
    let xs: Vec<f64> = h.edges.iter().map(|&x| tx(x)).collect();
    let (x0, x1) = (xs[0], *xs.last().unwrap());
    let positive: Vec<f64> = h
        .reference
        .iter()
        .chain(h.generated)
        .copied()
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let ymax = positive.iter().copied().fold(0.0, f64::max);
    let ymin_pos = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let ty = |y: f64| {
        if h.log_y {
            if y > 0.0 {
                y.log10()
            } else {
                f64::NEG_INFINITY
            }
        } else {
            y
        }
    };
    let (y0, y1) = if h.log_y && ymax > 0.0 {
        (ymin_pos.log10() - 0.5, ymax.log10() + 0.5)
    } else {
        (0.0, if ymax > 0.0 { ymax * 1.15 } else { 1.0 })
    };
    let mut chart = ChartBuilder::on(&top)
        .caption(h.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(10)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|v| fmt_tick(*v, h.log_y))
        .y_desc(if h.log_y { "density (log)" } else { "density" })
        .draw()
        .map_err(&e)?;
    let fill = RGBColor(120, 160, 220).mix(0.45);
    chart
        .draw_series(
            h.reference
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0)
                .map(|(i, v)| {
                    Rectangle::new([(xs[i], y0), (xs[i + 1], ty(*v).max(y0))], fill.filled())
                }),
        )
        .map_err(&e)?
        .label("reference")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], fill.filled()));
    let mut steps = Vec::new();
    for (i, v) in h.generated.iter().enumerate() {
        let y = if *v > 0.0 { ty(*v) } else { y0 };
        steps.push((xs[i], y.max(y0)));
        steps.push((xs[i + 1], y.max(y0)));
    }
    let red = RGBColor(200, 30, 30);
    chart
        .draw_series(LineSeries::new(steps, red.stroke_width(2)))
        .map_err(&e)?
        .label(format!("generated (sep. power {:.4})", h.separation))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(&e)?;
    let mut ratio = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.5f64..1.5f64)
        .map_err(&e)?;
    ratio
        .configure_mesh()
        .disable_x_mesh()
        .y_labels(3)
        .x_label_formatter(&|v| fmt_tick(*v, h.log_x))
        .x_desc(h.xlabel)
        .y_desc("gen / ref")
        .draw()
        .map_err(&e)?;
    ratio
        .draw_series(LineSeries::new(
            vec![(x0, 1.0), (x1, 1.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(&e)?;
    ratio
        .draw_series(
            h.reference
                .iter()
                .zip(h.generated)
                .enumerate()
                .filter(|(_, (r, _))| **r > 0.0)
                .map(|(i, (r, g))| {
                    let c = ((g / r).clamp(0.5, 1.5), (xs[i] + xs[i + 1]) / 2.0);
                    Circle::new((c.1, c.0), 3, red.filled())
                }),
        )
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// A perceptually ordered colour map (viridis-like) on t ∈ [0, 1].
fn colormap(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let lerp = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

fn draw_layer(
    area: &DrawingArea<BitMapBackend, Shift>,
    g: &Geometry,
    layer: usize,
    avg: &[f64],
    vmin: f64,
    vmax: f64,
    log_r: bool,
) {
    let (w, h) = area.dim_in_pixel();
    let size = w.min(h) as f64;
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let l = &g.layers[layer];
    let r_of = |r: f64| if log_r { (1.0 + r).ln() } else { r };
    let rmax = r_of(g.max_radius());
    let edges: Vec<f64> = l.r_edges.iter().map(|&r| r_of(r)).collect();
    let (lv0, lv1) = (vmin.log10(), vmax.log10());
    for py in 0..h {
        for px in 0..w {
            let dx = (px as f64 + 0.5 - cx) / (size / 2.0) * rmax;
            let dy = (cy - py as f64 - 0.5) / (size / 2.0) * rmax;
            let rho = (dx * dx + dy * dy).sqrt();
            if rho >= *edges.last().unwrap() || rho >= rmax {
                continue;
            }
            let ir = edges
                .partition_point(|&e| e <= rho)
                .saturating_sub(1)
                .min(l.n_r() - 1);
            let alpha = dy.atan2(dx); // [-pi, pi]
            let ia = (((alpha + std::f64::consts::PI) / (2.0 * std::f64::consts::PI)
                * l.n_alpha as f64) as usize)
                .min(l.n_alpha - 1);
            let v = avg[g.voxel_index(layer, ia, ir)];
            let t = if v > 0.0 {
                (v.log10() - lv0) / (lv1 - lv0)
            } else {
                -1.0
            };
            let color = if t < 0.0 {
                RGBColor(235, 235, 235)
            } else {
                colormap(t)
            };
            let _ = area.draw_pixel((px as i32, py as i32), &color);
        }
    }
}

/// Draws the average shower of one layer, reference beside generated, with a shared logarithmic
/// colour scale from `vmin` to `vmax` MeV.
#[allow(clippy::too_many_arguments)]
pub fn layer_avg_png(
    path: &Path,
    g: &Geometry,
    layer: usize,
    reference: &[f64],
    generated: &[f64],
    vmin: f64,
    vmax: f64,
    log_r: bool,
) -> Result<(), String> {
    init_font();
    let e = err(path);
    let root = BitMapBackend::new(path, (860, 470)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (body, bar) = root.split_vertically(410);
    let panels = body.split_evenly((1, 2));
    for (panel, (data, name)) in panels
        .iter()
        .zip([(reference, "Reference"), (generated, "Generated")])
    {
        let titled = panel
            .titled(&format!("{name} layer {layer}"), ("sans-serif", 20))
            .map_err(&e)?;
        let inner = titled.margin(5, 5, 5, 5);
        draw_layer(&inner, g, layer, data, vmin, vmax, log_r);
    }
    // Colour bar.
    let (bw, _) = bar.dim_in_pixel();
    let (x0, x1) = (100i32, bw as i32 - 100);
    for x in x0..x1 {
        let t = (x - x0) as f64 / (x1 - x0) as f64;
        bar.draw(&PathElement::new(vec![(x, 8), (x, 28)], colormap(t)))
            .map_err(&e)?;
    }
    let style = ("sans-serif", 15).into_font();
    bar.draw_text(&format!("{vmin:.0e}"), &style.color(&BLACK), (x0 - 45, 12))
        .map_err(&e)?;
    bar.draw_text(
        &format!("{vmax:.1e} MeV"),
        &style.color(&BLACK),
        (x1 + 5, 12),
    )
    .map_err(&e)?;
    bar.draw_text(
        "average energy per voxel (log scale)",
        &style.color(&BLACK),
        (bw as i32 / 2 - 130, 36),
    )
    .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}
