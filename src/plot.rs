//! Line plots as standalone SVG, drawn with plotters: the interpolation
//! curve of `boomgpu eval` (perplexity against parameters), one line per
//! named series (boomerang patching today; naive pruning beside it later).

use std::ops::Range;

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// One point of a curve; `label` (a size name like "last-3") is written
/// next to it, or nothing when empty.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// A named curve; the name is its legend entry. Points are joined in the
/// order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const SIZE: (u32, u32) = (720, 460);
const FONT: &str = "sans-serif";
/// At most this many labelled ticks on an axis.
const MAX_TICKS: usize = 9;

/// Matplotlib's first colours: blue for the first series (boomerang), then
/// orange, green, red...
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// A line plot of `series` as a standalone SVG document: axes with tick
/// labels and the given axis names, each point marked and labelled, a
/// legend of the series names in the emptiest corner. The y axis is
/// logarithmic when the values span more than a factor of 10 (its name
/// then says "(log scale)"). Points with a non-finite x or y, or y <= 0,
/// are left out.
pub fn curve_svg(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String> {
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s
                .points
                .iter()
                .filter(|p| p.x.is_finite() && p.y.is_finite() && p.y > 0.0)
                .cloned()
                .collect(),
        })
        .collect();
    let all = || series.iter().flat_map(|s| &s.points);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in all() {
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
        y0 = y0.min(p.y);
        y1 = y1.max(p.y);
    }
    if all().next().is_none() {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
    }
    let log_y = y1 / y0 > 10.0;
    let x = pad(x0, x1);
    let y = if log_y {
        // Padding by a constant factor keeps the margins even on a log axis.
        let f = (y1 / y0).powf(0.06);
        y0 / f..y1 * f
    } else {
        pad(y0, y1)
    };
    let frame = Frame {
        x: x.clone(),
        y: y.clone(),
        log_y,
    };
    let (x_ticks, x_decimals) = linear_ticks(&x);
    let x_fmt = move |v: &f64| format!("{v:.x_decimals$}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let x_axis = Ticked::new(RangedCoordf64::from(x), x_ticks, Vec::new());
        let drawn = if log_y {
            let (bold, light) = log_ticks(&y);
            let y_fmt = |v: &f64| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            };
            let desc = format!("{y_desc} (log scale)");
            let y_axis = Ticked::new(LogCoord::from(y.log_scale()), bold, light);
            draw(
                &root,
                title,
                (x_desc, &desc),
                (x_axis, y_axis),
                (&x_fmt, &y_fmt),
                &series,
                &frame,
            )
        } else {
            let (ticks, decimals) = linear_ticks(&y);
            let y_fmt = move |v: &f64| format!("{v:.decimals$}");
            draw(
                &root,
                title,
                (x_desc, y_desc),
                (
                    x_axis,
                    Ticked::new(RangedCoordf64::from(y), ticks, Vec::new()),
                ),
                (&x_fmt, &y_fmt),
                &series,
                &frame,
            )
        };
        drawn.map_err(|e| Error::Invalid(format!("cannot draw the plot '{title}': {e}")))?;
    }
    Ok(svg)
}

/// The range with 6% of its span added on each side (±1 when it is a point).
fn pad(a: f64, b: f64) -> Range<f64> {
    if (b - a).abs() < 1e-12 {
        a - 1.0..b + 1.0
    } else {
        a - 0.06 * (b - a)..b + 0.06 * (b - a)
    }
}

/// Ticks at multiples of 1, 2 or 5 × 10^k inside `r` (at most `MAX_TICKS`),
/// and the number of decimals that writes them exactly.
fn linear_ticks(r: &Range<f64>) -> (Vec<f64>, usize) {
    let span = r.end - r.start;
    let mut exp = (span / MAX_TICKS as f64).log10().floor() as i32;
    let mut step;
    'search: loop {
        for m in [1.0, 2.0, 5.0] {
            step = m * 10f64.powi(exp);
            // Intervals, one fewer than ticks.
            if ((span / step).floor() as usize) < MAX_TICKS {
                break 'search;
            }
        }
        exp += 1;
    }
    let first = (r.start / step).ceil() as i64;
    let last = (r.end / step).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    let decimals = if exp < 0 { (-exp) as usize } else { 0 };
    (ticks, decimals)
}

/// Labelled ticks of a log axis at 1, 2 and 5 × 10^k (only the powers of
/// ten when that would be too many), and grid lines at every n × 10^k.
fn log_ticks(r: &Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let inside = |v: &f64| *v >= r.start && *v <= r.end;
    let decades = r.start.log10().floor() as i32..=r.end.log10().ceil() as i32;
    let with = |ms: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| ms.iter().map(move |m| m * 10f64.powi(e)))
            .filter(inside)
            .collect()
    };
    let mut bold = with(&[1.0, 2.0, 5.0]);
    if bold.len() > MAX_TICKS {
        bold = with(&[1.0]);
    }
    let light = with(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    (bold, light)
}

/// An axis with the ticks given (plotters' own choice of log ticks labels
/// only the powers of ten); the tick labels come from the chart's
/// formatter.
struct Ticked<R> {
    axis: R,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ticked<R> {
    fn new(axis: R, bold: Vec<f64>, light: Vec<f64>) -> Self {
        Ticked { axis, bold, light }
    }
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn range(&self) -> Range<f64> {
        self.axis.range()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.axis.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> Range<i32> {
        self.axis.axis_pixel_range(limit)
    }
}

/// Where values fall in the plotting area, as fractions (0 = left/bottom).
struct Frame {
    x: Range<f64>,
    y: Range<f64>,
    log_y: bool,
}

impl Frame {
    fn at(&self, x: f64, y: f64) -> (f64, f64) {
        let fx = (x - self.x.start) / (self.x.end - self.x.start);
        let fy = if self.log_y {
            (y / self.y.start).ln() / (self.y.end / self.y.start).ln()
        } else {
            (y - self.y.start) / (self.y.end - self.y.start)
        };
        (fx, fy)
    }

    /// The legend's corner: the one that the curves cross least (upper
    /// right when there is a tie), judged from points sampled along them.
    fn legend_corner(&self, series: &[Series]) -> SeriesLabelPosition {
        let mut samples = Vec::new();
        for s in series {
            let at: Vec<(f64, f64)> = s.points.iter().map(|p| self.at(p.x, p.y)).collect();
            samples.extend(&at);
            for w in at.windows(2) {
                for i in 1..20 {
                    let t = i as f64 / 20.0;
                    samples.push((
                        w[0].0 + t * (w[1].0 - w[0].0),
                        w[0].1 + t * (w[1].1 - w[0].1),
                    ));
                }
            }
        }
        let corners = [
            (SeriesLabelPosition::UpperRight, true, true),
            (SeriesLabelPosition::UpperLeft, false, true),
            (SeriesLabelPosition::LowerRight, true, false),
            (SeriesLabelPosition::LowerLeft, false, false),
        ];
        let crowding = |right: bool, upper: bool| {
            samples
                .iter()
                .filter(|&&(fx, fy)| {
                    (if right { fx > 0.65 } else { fx < 0.35 })
                        && (if upper { fy > 0.75 } else { fy < 0.25 })
                })
                .count()
        };
        let mut best = 0;
        for (i, &(_, right, upper)) in corners.iter().enumerate() {
            if crowding(right, upper) < crowding(corners[best].1, corners[best].2) {
                best = i;
            }
        }
        corners
            .into_iter()
            .nth(best)
            .map(|c| c.0)
            .expect("four corners")
    }

    /// Where a point's label goes: above and to the right of the point; to
    /// its left near the right edge, and level with it near the top, so
    /// that it stays inside the plot.
    fn label_anchor(&self, x: f64, y: f64) -> ((i32, i32), Pos) {
        let (fx, fy) = self.at(x, y);
        let (side, h) = if fx > 0.85 {
            (-1, HPos::Right)
        } else {
            (1, HPos::Left)
        };
        if fy > 0.9 {
            ((8 * side, 0), Pos::new(h, VPos::Center))
        } else {
            ((6 * side, -6), Pos::new(h, VPos::Bottom))
        }
    }
}

type TickFormat<'a> = &'a dyn Fn(&f64) -> String;

type Drawn = std::result::Result<
    (),
    DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>,
>;

/// The chart on `root` for either kind of y axis (linear or logarithmic
/// coordinates are different types in plotters).
fn draw<Y: Ranged<ValueType = f64>>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (x, y): (Ticked<RangedCoordf64>, Ticked<Y>),
    (x_fmt, y_fmt): (TickFormat, TickFormat),
    series: &[Series],
    frame: &Frame,
) -> Drawn {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(x_fmt)
        .y_label_formatter(y_fmt)
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 12))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
        .draw()?;
    let label_colour = RGBColor(0x55, 0x55, 0x55);
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.x, p.y)),
                colour.stroke_width(2),
            ))?
            .label(s.name.as_str())
            .legend(move |(lx, ly)| {
                EmptyElement::at((lx, ly))
                    + PathElement::new(vec![(0, 0), (20, 0)], colour.stroke_width(2))
                    + Circle::new((10, 0), 4, colour.filled())
            });
        chart.draw_series(s.points.iter().map(|p| {
            let (offset, anchor) = frame.label_anchor(p.x, p.y);
            EmptyElement::at((p.x, p.y))
                + Circle::new((0, 0), 4, colour.filled())
                + Text::new(
                    p.label.clone(),
                    offset,
                    (FONT, 11).into_font().color(&label_colour).pos(anchor),
                )
        }))?;
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(frame.legend_corner(series))
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xaa, 0xaa, 0xaa))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{curve_svg, Point, Series};

    fn series(name: &str, pts: &[(f64, f64, &str)]) -> Series {
        Series {
            name: name.into(),
            points: pts
                .iter()
                .map(|&(x, y, label)| Point {
                    x,
                    y,
                    label: label.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn curve_plot_uses_log_scale_for_wide_ranges() {
        let wide = series(
            "boomerang",
            &[
                (85.0, 5636.0, "student"),
                (120.3, 2422.5, "first-2"),
                (134.5, 73.06, "teacher"),
            ],
        );
        let svg = curve_svg("t", "parameters (millions)", "perplexity", &[wide]).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("perplexity (log scale)"), "{svg}");
        // Three points and the legend's marker.
        assert_eq!(svg.matches("<circle").count(), 3 + 1, "{svg}");
        for label in [
            "student",
            "first-2",
            "teacher",
            "boomerang",
            "parameters (millions)",
        ] {
            assert!(
                svg.contains(&format!(">{label}<")) || svg.contains(&format!(">\n{label}\n<")),
                "{label}: {svg}"
            );
        }
        // Every tick label is a positive perplexity.
        assert!(!svg.contains(">-"), "{svg}");

        let narrow = series("boomerang", &[(0.05, 525.0, "a"), (0.07, 515.0, "b")]);
        let svg = curve_svg("t", "x", "perplexity", &[narrow]).unwrap();
        assert!(!svg.contains("log scale"), "{svg}");
        assert!(svg.contains("0.050") || svg.contains("0.060"), "{svg}");
    }

    #[test]
    fn curve_plot_draws_every_series_and_skips_bad_points() {
        let a = series("boomerang", &[(1.0, 10.0, "s"), (2.0, 5.0, "t")]);
        let b = series(
            "naive pruning",
            &[(1.0, 40.0, ""), (1.5, f64::NAN, ""), (2.0, 5.0, "")],
        );
        let svg = curve_svg("two", "x", "y", &[a, b]).unwrap();
        assert!(
            svg.contains("boomerang") && svg.contains("naive pruning"),
            "{svg}"
        );
        // 2 + 2 points (the NaN left out) and one legend marker per series.
        assert_eq!(svg.matches("<circle").count(), 4 + 2, "{svg}");
        let empty = curve_svg("none", "x", "y", &[]).unwrap();
        assert!(empty.starts_with("<svg"), "{empty}");
    }
}
