//! The end-of-run picture: train and eval loss, and the learning rate, against the step, as a
//! self-contained SVG (no plotting dependency).

use std::fmt::Write;

use crate::metrics_log::MetricsRecord;

/// One line of a chart.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// CSS color.
    pub color: &'a str,
    /// (x, y) points; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN: f64 = 56.0;

/// An SVG with one panel per `(title, series)` entry, stacked vertically, sharing nothing but
/// the width.
pub fn svg_panels(panels: &[(&str, Vec<Series<'_>>)]) -> String {
    let height = PANEL_HEIGHT * panels.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        panel(&mut svg, i as f64 * PANEL_HEIGHT, title, series);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, top: f64, title: &str, series: &[Series<'_>]) {
    let points = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let (left, right) = (MARGIN, WIDTH - 16.0);
    let (upper, lower) = (top + 28.0, top + PANEL_HEIGHT - 32.0);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (right - left);
    let sy = |y: f64| lower - (y - y0) / (y1 - y0) * (lower - upper);
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
        top + 18.0
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{upper}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        right - left,
        lower - upper
    );
    for (value, y) in [(y1, upper), (y0, lower)] {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            y + 4.0,
            short(value)
        );
    }
    for (value, x) in [(x0, left), (x1, right)] {
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            lower + 16.0,
            short(value)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                s.color,
                path.join(" ")
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{}\" text-anchor=\"end\">{}</text>",
            right - 4.0,
            upper + 16.0 + 14.0 * i as f64,
            s.color,
            s.label
        );
    }
}

fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// The training run's plot: train and eval loss in one panel, the learning rate in another.
pub fn training_plot(records: &[MetricsRecord]) -> String {
    let of = |split: &str, value: fn(&MetricsRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter(|r| r.split == split)
            .filter_map(|r| value(r).map(|v| (r.step as f64, v)))
            .collect()
    };
    svg_panels(&[
        (
            "loss",
            vec![
                Series {
                    label: "train",
                    color: "#1f77b4",
                    points: of("train", |r| Some(r.loss)),
                },
                Series {
                    label: "eval",
                    color: "#d62728",
                    points: of("eval", |r| Some(r.loss)),
                },
            ],
        ),
        (
            "learning rate",
            vec![Series {
                label: "lr",
                color: "#2ca02c",
                points: of("train", |r| r.lr),
            }],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_one_polyline_per_series_with_every_point() {
        let records: Vec<MetricsRecord> = (1..=5)
            .map(|step| MetricsRecord {
                step,
                split: "train".into(),
                loss: 1.0 / step as f64,
                lr: Some(0.1),
                grad_norm: None,
                loss_scale: None,
                units_per_s: None,
                perplexity: None,
                accuracy: None,
            })
            .collect();
        let svg = training_plot(&records);
        assert!(svg.starts_with("<svg"));
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "train loss and lr; eval is empty"
        );
        let loss_line = svg
            .lines()
            .find(|l| l.contains("#1f77b4\" stroke-width"))
            .unwrap();
        assert_eq!(loss_line.matches(',').count(), 5);
    }
}
