//! Line charts as self-contained SVG (no plotting dependency): [`svg_panels`] draws any named
//! (x, y) series, [`training_plot`] the end-of-run picture (train and eval loss, and the
//! learning rate, against the step) with it.

use std::fmt::Write;

use crate::metrics_log::MetricsRecord;

/// Matplotlib's `tab10` colors, for charts with many series.
pub const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One line of a chart.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// CSS color.
    pub color: &'a str,
    /// (x, y) points; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title (which names the y axis), the name of the x axis, and the lines.
pub struct Panel<'a> {
    /// Written above the chart.
    pub title: &'a str,
    /// Written under the x axis.
    pub x_label: &'a str,
    /// The lines, each with its legend entry.
    pub series: Vec<Series<'a>>,
}

/// Width of a panel without its legend.
const WIDTH: f64 = 720.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN: f64 = 56.0;

/// An SVG with the panels stacked vertically, each scaled to its own points, with its legend
/// in a column to the right of it (outside the lines).
pub fn svg_panels(panels: &[Panel<'_>]) -> String {
    let height = PANEL_HEIGHT * panels.len() as f64;
    let longest_label = panels
        .iter()
        .flat_map(|p| p.series.iter())
        .map(|s| s.label.chars().count())
        .max();
    // A swatch, a gap, about 7 px per character at 12 px, and a margin.
    let width = WIDTH + longest_label.map_or(0.0, |n| 36.0 + 7.0 * n as f64);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut svg, i as f64 * PANEL_HEIGHT, p);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, top: f64, panel: &Panel<'_>) {
    let series = &panel.series;
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
        "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{}</text>",
        top + 18.0,
        escape(panel.title)
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
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (left + right) / 2.0,
        lower + 28.0,
        escape(panel.x_label)
    );
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
        let y = upper + 10.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{WIDTH}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke-width=\"3\" stroke=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            WIDTH + 20.0,
            s.color,
            WIDTH + 26.0,
            y + 4.0,
            escape(s.label)
        );
    }
}

/// Text for SVG: `&` and `<` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e5 {
        format!("{v:.0}")
    } else if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
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
        Panel {
            title: "loss",
            x_label: "step",
            series: vec![
                Series {
                    label: "train",
                    color: COLORS[0],
                    points: of("train", |r| Some(r.loss)),
                },
                Series {
                    label: "eval",
                    color: COLORS[3],
                    points: of("eval", |r| Some(r.loss)),
                },
            ],
        },
        Panel {
            title: "learning rate",
            x_label: "step",
            series: vec![Series {
                label: "lr",
                color: COLORS[2],
                points: of("train", |r| r.lr),
            }],
        },
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

    #[test]
    fn panels_scale_their_own_points_skip_non_finite_ones_and_escape_text() {
        let svg = svg_panels(&[
            Panel {
                title: "loss & accuracy",
                x_label: "epoch",
                series: vec![
                    Series {
                        label: "a<b",
                        color: COLORS[0],
                        points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)],
                    },
                    Series {
                        label: "empty",
                        color: COLORS[1],
                        points: vec![],
                    },
                ],
            },
            Panel {
                title: "second",
                x_label: "step",
                series: vec![Series {
                    label: "c",
                    color: COLORS[2],
                    points: vec![(10.0, 0.5), (20.0, 0.25)],
                }],
            },
        ]);
        assert!(
            svg.contains("width=\"791\" height=\"520\""),
            "two panels of 260, a legend column for 5-character labels"
        );
        assert!(svg.contains(">loss &amp; accuracy</text>"));
        assert!(svg.contains(">a&lt;b</text>"));
        assert!(svg.contains(">epoch</text>") && svg.contains(">step</text>"));
        let lines: Vec<&str> = svg.lines().filter(|l| l.contains("<polyline")).collect();
        assert_eq!(lines.len(), 2, "the empty series draws no line");
        // The NaN point is dropped; the others span the panel's plot area exactly.
        assert!(
            lines[0].contains("points=\"56.0,228.0 704.0,28.0\""),
            "{}",
            lines[0]
        );
        // The second panel has its own scale: x from 10 to 20, y from 0.25 to 0.5.
        assert!(
            lines[1].contains("points=\"56.0,288.0 704.0,488.0\""),
            "{}",
            lines[1]
        );
        assert!(svg.contains(">10</text>") && svg.contains(">20</text>"));
    }
}
