//! The comparison's plots, each as SVG and PNG (plotters; text drawn with the DejaVu Sans font
//! embedded in the binary, so a PNG looks the same on a machine without fonts).

use super::Cell;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// Line colours, distinct on white (matplotlib's "tab10").
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line of a chart: a label and its points.
type Series = (String, Vec<(f64, f64)>);

/// Registers the embedded font once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Only fails on a font that does not parse, which the embedded one does.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// A chart's title, axis names and scale.
struct Chart<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    log_y: bool,
    /// Where the legend goes: the corner the lines leave free (rising lines: upper left).
    legend: SeriesLabelPosition,
}

/// Draws `series` as lines with points onto `root`.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    series: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot {}: {e}", chart.title);
    root.fill(&WHITE).map_err(err)?;
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points.filter(|(_, y)| y.is_finite() && (!chart.log_y || *y > 0.0)) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
    }
    let pad_x = ((x1 - x0) * 0.05).max(0.01);
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    let x_range = (x0 - pad_x)..(x1 + pad_x);
    let palette = |i: usize| PALETTE[i % PALETTE.len()].to_rgba();
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_desc)
                .y_desc(chart.y_desc)
                .draw()
                .map_err(err)?;
            for (i, (label, pts)) in series.iter().enumerate() {
                let color = palette(i);
                let pts: Vec<(f64, f64)> = pts
                    .iter()
                    .copied()
                    .filter(|(_, y)| y.is_finite() && (!chart.log_y || *y > 0.0))
                    .collect();
                ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            ctx.configure_series_labels()
                .position(chart.legend.clone())
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(err)?;
        }};
    }
    if chart.log_y {
        let (lo, hi) = (y0 / 1.2, y1 * 1.2);
        body!(builder
            .build_cartesian_2d(x_range, (lo..hi).log_scale())
            .map_err(err)?);
    } else {
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        body!(builder
            .build_cartesian_2d(x_range, (y0 - pad)..(y1 + pad))
            .map_err(err)?);
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `OUT/<stem>.svg` and `OUT/<stem>.png`.
fn write_chart(out: &Path, stem: &str, chart: &Chart, series: &[Series]) -> Result<()> {
    register_font();
    let size = (800, 520);
    for ext in ["svg", "png"] {
        let final_path = out.join(format!("{stem}.{ext}"));
        let tmp = out.join(format!(".{stem}.tmp.{ext}"));
        if ext == "svg" {
            draw(
                &SVGBackend::new(&tmp, size).into_drawing_area(),
                chart,
                series,
            )?;
        } else {
            draw(
                &BitMapBackend::new(&tmp, size).into_drawing_area(),
                chart,
                series,
            )?;
        }
        std::fs::rename(&tmp, &final_path)?;
    }
    Ok(())
}

/// Per method, `value` against the achieved sparsity (the fraction of P_main each cell removed:
/// whole-block methods remove more than the target, SliceGPT less), the dense model as every
/// line's point at 0.
fn by_method(cells: &[Cell], value: impl Fn(&Cell) -> Option<f64>) -> Vec<Series> {
    let dense = cells.iter().find(|c| c.method == "dense");
    let mut methods: Vec<&str> = Vec::new();
    for c in cells.iter().filter(|c| c.method != "dense") {
        if !methods.contains(&c.method.as_str()) {
            methods.push(&c.method);
        }
    }
    methods
        .iter()
        .map(|m| {
            let pts = dense
                .into_iter()
                .chain(cells.iter().filter(|c| c.method == *m))
                .filter_map(|c| value(c).map(|v| (c.sparsity_achieved, v)))
                .collect();
            (m.to_string(), pts)
        })
        .collect()
}

/// Writes the plots: perplexity vs sparsity per corpus, mean task accuracy vs sparsity, pruning
/// time per method.
pub fn write_all(out: &Path, cells: &[Cell]) -> Result<()> {
    let Some(first) = cells.first() else {
        return Ok(());
    };
    for (k, corpus) in first.scores.perplexity.iter().enumerate() {
        let series = by_method(cells, |c| c.scores.perplexity.get(k).map(|p| p.ppl));
        let title = format!("Perplexity on {} vs sparsity", corpus.corpus);
        let chart = Chart {
            title: &title,
            x_desc: "fraction of decoder-block parameters removed (achieved)",
            y_desc: "perplexity (log scale)",
            log_y: true,
            legend: SeriesLabelPosition::UpperLeft,
        };
        write_chart(out, &format!("ppl_{}", corpus.corpus), &chart, &series)?;
    }
    if first.mean_acc.is_some() {
        let chart = Chart {
            title: "Mean zero-shot accuracy vs sparsity",
            x_desc: "fraction of decoder-block parameters removed (achieved)",
            y_desc: "mean accuracy",
            log_y: false,
            legend: SeriesLabelPosition::LowerLeft,
        };
        write_chart(
            out,
            "mean_accuracy",
            &chart,
            &by_method(cells, |c| c.mean_acc),
        )?;
    }
    let pruned: Vec<Cell> = cells
        .iter()
        .filter(|c| c.method != "dense")
        .cloned()
        .collect();
    let chart = Chart {
        title: "Pruning time vs sparsity",
        x_desc: "target sparsity",
        y_desc: "seconds (log scale)",
        log_y: true,
        legend: SeriesLabelPosition::UpperLeft,
    };
    write_chart(
        out,
        "prune_seconds",
        &chart,
        &by_method(&pruned, |c| Some(c.prune_seconds)),
    )
}
