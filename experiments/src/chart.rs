//! Line and scatter charts written as PNG and SVG with plotters: one line (or cloud of points) per series,
//! dashed reference lines (the paper's values, y = x), an optional log2 x axis labelled in binary units (4K,
//! 8K, ..., 1M).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use crate::{Error, Result};

/// Font files tried in order (Debian's fonts-dejavu-core and fonts-liberation, and other common places).
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Registers the first font found (or the one named by `SPIKE_FONT`) as plotters' "sans-serif", once.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("SPIKE_FONT").ok();
        let candidates = env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // The font is registered for the life of the process, once: leaking it is what 'static asks.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "none of {} is a readable TrueType font (install fonts-dejavu-core, or set SPIKE_FONT)",
            FONT_CANDIDATES.join(", ")
        ))
    })
    .clone()
    .map_err(Error::Font)
}

/// One line of a chart.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub label: String,
    /// (x, y) in data units (for a log2 x axis, x is the raw value, e.g. bytes). Points whose x or y is not
    /// finite (a value that was not measured) are left out.
    pub points: Vec<(f64, f64)>,
    /// Text written beside each point (e.g. `K=3`), or none when empty.
    pub point_labels: Vec<String>,
    /// A vertical bar from `low` to `high` at each point (the spread over repeats, say), or none when empty;
    /// a pair that is not finite draws no bar.
    pub spread: Vec<(f64, f64)>,
    /// The colour: index into the data colours; by default the next one in order. Two series given the same
    /// index (a median and its tail, say) read as one quantity.
    pub color: Option<usize>,
    pub style: Style,
}

impl Series {
    /// A line through `points` with a marker at each.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points, ..Series::default() }
    }

    /// A dashed reference line through `points` (a paper's value, y = x).
    pub fn reference(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points, style: Style::Reference, ..Series::default() }
    }

    /// A dashed line without markers, in a data colour (a second statistic of the series of that colour).
    pub fn dashed(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points, style: Style::Dashed, ..Series::default() }
    }

    /// Markers only, one per point (a scatter).
    pub fn scatter(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { label: label.into(), points, style: Style::Points, ..Series::default() }
    }

    /// The points with finite coordinates, with their labels.
    fn finite(&self) -> impl Iterator<Item = (usize, (f64, f64))> + '_ {
        self.points.iter().copied().enumerate().filter(|(_, (x, y))| x.is_finite() && y.is_finite())
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Style {
    /// A solid line with a marker at each point.
    #[default]
    Line,
    /// Markers only.
    Points,
    /// A dashed line without markers, in a data colour.
    Dashed,
    /// A dashed line without markers, in the reference colours (black, then dark red, dark blue); a single
    /// point is drawn as a cross.
    Reference,
}

/// Colours of data series, in order (Tableau 10: distinct from one another and readable on white).
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colours of reference lines, in order.
const REFERENCE_COLORS: [RGBColor; 3] = [RGBColor(0, 0, 0), RGBColor(170, 20, 20), RGBColor(20, 40, 160)];

/// Where a chart's legend goes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum LegendAt {
    /// Of the corners, the middles of the sides and the centre, the place whose box covers the fewest
    /// samples of the lines and points (the first such in reading order).
    #[default]
    Auto,
    UpperLeft,
    UpperRight,
    MiddleRight,
    LowerRight,
    /// The legend's upper-left corner at these fractions of the plotting area's width and height (from its
    /// upper-left corner): for a band between lines that no named place finds.
    At(f64, f64),
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Plot x on a log2 axis with ticks at powers of two, labelled 512, 1K, 2K, ..., 1M, 2M, ...
    pub log2_x: bool,
    /// Plot y on a log10 axis (for values spanning decades, such as latencies); values that are not positive
    /// are left out.
    pub log_y: bool,
    /// Where the legend goes: where no line runs.
    pub legend: LegendAt,
    pub series: Vec<Series>,
}

/// The tick label of a log10 axis at `exponent` (its log10): `1`, `10`, `100`, `1000`, `10000`, then `1e5`...;
/// `0.1`, `0.01`, `0.001`, then `1e-4`...; between decades (not drawn as ticks) the value in 3 digits.
pub fn decade_label(exponent: f64) -> String {
    let k = exponent.round();
    if (exponent - k).abs() > 1e-9 {
        return number(10f64.powf(exponent), 3);
    }
    match k as i32 {
        k @ 0..=4 => format!("{}", 10u64.pow(k as u32)),
        k @ -3..=-1 => format!("{:.*}", (-k) as usize, 10f64.powi(k)),
        k => format!("1e{k}"),
    }
}

/// A power of two of bytes as 4K, 1M, ...
pub fn binary_label(v: f64) -> String {
    let v = v.round() as u64;
    match v {
        v if v >= 1 << 30 && v % (1 << 30) == 0 => format!("{}G", v >> 30),
        v if v >= 1 << 20 && v % (1 << 20) == 0 => format!("{}M", v >> 20),
        v if v >= 1 << 10 && v % (1 << 10) == 0 => format!("{}K", v >> 10),
        v => v.to_string(),
    }
}

impl LineChart {
    /// Whether no font for chart text can be found (tests skip drawing then, saying so).
    pub fn font_missing() -> bool {
        ensure_font().is_err()
    }

    /// For tests that draw: true (after saying on stderr that the test is skipped) when no font can be found.
    pub fn skip_without_font() -> bool {
        let missing = Self::font_missing();
        if missing {
            eprintln!("SKIPPED: no font installed (fonts-dejavu-core)");
        }
        missing
    }

    /// Writes the chart to `png` (1200 x 800) and `svg`.
    pub fn write(&self, png: &Path, svg: &Path) -> Result<()> {
        write_png_svg(self, png, svg, (1200, 800))
    }
}

/// A chart that draws itself on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String>;
}

/// Draws `chart` into `png` and `svg`, both `size` pixels.
fn write_png_svg(chart: &impl Draw, png: &Path, svg: &Path, size: (u32, u32)) -> Result<()> {
    ensure_font()?;
    let err = |path: &Path, what: String| Error::Chart { path: path.to_path_buf(), what };
    {
        let root = BitMapBackend::new(png, size).into_drawing_area();
        chart.draw(&root).map_err(|e| err(png, e))?;
        root.present().map_err(|e| err(png, e.to_string()))?;
    }
    {
        let root = SVGBackend::new(svg, size).into_drawing_area();
        chart.draw(&root).map_err(|e| err(svg, e))?;
        root.present().map_err(|e| err(svg, e.to_string()))?;
    }
    Ok(())
}

impl Draw for LineChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let fx = |x: f64| if self.log2_x { x.max(f64::MIN_POSITIVE).log2() } else { x };
        let log_y = self.log_y;
        // On a log axis y is drawn as its log10, and values that are not positive have no place.
        let fy = |y: f64| {
            if log_y {
                if y > 0.0 {
                    y.log10()
                } else {
                    f64::NAN
                }
            } else {
                y
            }
        };
        let spread_ys = || {
            self.series.iter().flat_map(|s| s.spread.iter().flat_map(|&(lo, hi)| [lo, hi])).filter(|v| v.is_finite())
        };
        let all = || self.series.iter().flat_map(|s| s.finite().map(|(_, p)| p));
        let (mut x0, mut x1) =
            all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(fx(p.0)), b.max(fx(p.0))));
        if self.log2_x && x0.is_finite() {
            // Whole powers of two at both ends, so that every tick is one and carries a binary label.
            (x0, x1) = (x0.floor(), x1.ceil());
        }
        let y1 = all().map(|p| p.1).chain(spread_ys()).fold(0.0f64, f64::max);
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let (y0, y1) = if log_y {
            // Whole decades at both ends, so that the ticks 1, 10, 100, ... bound the data.
            let ys = all().map(|p| fy(p.1)).chain(spread_ys().map(fy)).filter(|v| v.is_finite());
            let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
            if lo.is_finite() {
                (lo.floor(), if hi.ceil() > lo.floor() { hi.ceil() } else { lo.floor() + 1.0 })
            } else {
                (0.0, 1.0)
            }
        } else {
            (0.0, if y1 > 0.0 { y1 * 1.08 } else { 1.0 })
        };
        // Room on the right for the last point's label.
        if !no_point_labels(self) {
            x1 += (x1 - x0) * 0.06;
        }
        // The largest title font up to 30 px whose title fits the width.
        let (width, _) = root.dim_in_pixel();
        let mut size = 30.0;
        while size > 14.0
            && root.estimate_text_size(&self.title, &("sans-serif", size).into_text_style(root)).map_or(0, |(w, _)| w)
                > width.saturating_sub(40)
        {
            size -= 1.0;
        }
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", size))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        let log2_x = self.log2_x;
        let n_x = if log2_x { (x1 - x0).round() as usize + 1 } else { 10 };
        // A log axis: a tick per decade (at most 10; the labels are 10^k in plain digits).
        let n_y = if log_y { ((y1 - y0).round() as usize + 1).min(10) } else { 10 };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(n_x)
            .y_labels(n_y)
            // Light lines split a decade of a log axis evenly in log10, which is no round value: none.
            .y_max_light_lines(if log_y { 0 } else { 10 })
            .x_label_formatter(&|x| if log2_x { binary_label(x.exp2()) } else { tick_label(*x, x1 - x0) })
            .y_label_formatter(&|y| if log_y { decade_label(*y) } else { tick_label(*y, y1) })
            .label_style(("sans-serif", 20))
            .axis_desc_style(("sans-serif", 22))
            .draw()
            .map_err(e)?;
        let (mut data, mut refs) = (0, 0);
        for s in &self.series {
            let color = match s.style {
                Style::Reference => {
                    refs += 1;
                    REFERENCE_COLORS[(refs - 1) % REFERENCE_COLORS.len()].to_rgba()
                }
                _ => match s.color {
                    Some(i) => SERIES_COLORS[i % SERIES_COLORS.len()].to_rgba(),
                    None => {
                        data += 1;
                        SERIES_COLORS[(data - 1) % SERIES_COLORS.len()].to_rgba()
                    }
                },
            };
            let kept = || s.finite().filter(|(_, p)| fy(p.1).is_finite());
            let pts: Vec<(f64, f64)> = kept().map(|(_, p)| (fx(p.0), fy(p.1))).collect();
            let labels: Vec<&String> = kept().filter_map(|(i, _)| s.point_labels.get(i)).collect();
            // The spread bars first, under the line: a thin vertical bar with short caps.
            let bars: Vec<(f64, f64, f64)> = kept()
                .filter_map(|(i, p)| s.spread.get(i).map(|&(lo, hi)| (fx(p.0), fy(lo), fy(hi))))
                .filter(|(_, lo, hi)| lo.is_finite() && hi.is_finite())
                .collect();
            let cap = (x1 - x0) * 0.006;
            for &(x, lo, hi) in &bars {
                let bar = color.mix(0.7).stroke_width(2);
                chart
                    .draw_series([
                        PathElement::new(vec![(x, lo), (x, hi)], bar),
                        PathElement::new(vec![(x - cap, lo), (x + cap, lo)], bar),
                        PathElement::new(vec![(x - cap, hi), (x + cap, hi)], bar),
                    ])
                    .map_err(e)?;
            }
            let anno = match s.style {
                Style::Line => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(e)?;
                    chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(3))).map_err(e)?
                }
                Style::Points => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.mix(0.6).filled()))).map_err(e)?
                }
                Style::Dashed => {
                    chart.draw_series(DashedLineSeries::new(pts.clone(), 10, 7, color.stroke_width(2))).map_err(e)?
                }
                // A reference of one point (a value the paper gives at one setting) is a cross.
                Style::Reference if pts.len() == 1 => {
                    chart.draw_series(pts.iter().map(|&p| Cross::new(p, 9, color.stroke_width(3)))).map_err(e)?
                }
                Style::Reference => {
                    chart.draw_series(DashedLineSeries::new(pts.clone(), 10, 7, color.stroke_width(2))).map_err(e)?
                }
            };
            let single = pts.len() == 1;
            let style = s.style;
            // A series without a label has no legend entry (the title says what it is).
            if !s.label.is_empty() {
                anno.label(&s.label).legend(move |(x, y)| match style {
                    Style::Points => Circle::new((x + 12, y), 5, color.filled()).into_dyn(),
                    Style::Line => PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)).into_dyn(),
                    Style::Reference if single => Cross::new((x + 12, y), 6, color.stroke_width(3)).into_dyn(),
                    Style::Reference | Style::Dashed => plotters::element::DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        6,
                        4,
                        color.stroke_width(2),
                    )
                    .into_dyn(),
                });
            }
            let font = ("sans-serif", 17).into_font().color(&color);
            chart
                .draw_series(
                    pts.iter()
                        .zip(labels)
                        .map(|(&p, text)| EmptyElement::at(p) + Text::new(text.clone(), (7, -20), font.clone())),
                )
                .map_err(e)?;
        }
        let (pw, ph) = chart.plotting_area().dim_in_pixel();
        let auto = match self.legend {
            LegendAt::Auto => {
                let font = ("sans-serif", 20).into_text_style(root);
                let widest = self
                    .series
                    .iter()
                    .filter_map(|s| root.estimate_text_size(&s.label, &font).ok())
                    .map(|(w, _)| w as i32)
                    .max()
                    .unwrap_or(0);
                // The legend box as plotters lays it out: 10 px margins, 30 px for the markers, a line per series.
                let entries = self.series.iter().filter(|s| !s.label.is_empty()).count() as i32;
                let size = (widest + 30 + 20, entries * 25 + 20);
                let (xr, yr) = chart.plotting_area().get_pixel_range();
                let mut samples = Vec::new();
                for s in &self.series {
                    let pts: Vec<(f64, f64)> =
                        s.finite().map(|(_, p)| (fx(p.0), fy(p.1))).filter(|p| p.1.is_finite()).collect();
                    let mut push = |p: (f64, f64)| {
                        let (x, y) = chart.backend_coord(&p);
                        samples.push((x - xr.start, y - yr.start));
                    };
                    match s.style {
                        Style::Points => pts.iter().for_each(|&p| push(p)),
                        _ if pts.len() == 1 => push(pts[0]),
                        _ => {
                            for w in pts.windows(2) {
                                for k in 0..=24 {
                                    let t = f64::from(k) / 24.0;
                                    push((w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1)));
                                }
                            }
                        }
                    }
                }
                Some(legend_place(size, (pw as i32, ph as i32), &samples))
            }
            _ => None,
        };
        chart
            .configure_series_labels()
            .position(match self.legend {
                LegendAt::Auto => {
                    let (x, y) = auto.expect("computed above for Auto");
                    SeriesLabelPosition::Coordinate(x, y)
                }
                LegendAt::At(fx, fy) => SeriesLabelPosition::Coordinate(
                    (fx.clamp(0.0, 1.0) * f64::from(pw)) as i32,
                    (fy.clamp(0.0, 1.0) * f64::from(ph)) as i32,
                ),
                LegendAt::UpperLeft => SeriesLabelPosition::UpperLeft,
                LegendAt::UpperRight => SeriesLabelPosition::UpperRight,
                LegendAt::MiddleRight => SeriesLabelPosition::MiddleRight,
                LegendAt::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .label_font(("sans-serif", 20))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// One horizontal bar of a [`StackedBars`] chart: its label and one value per segment (NaN draws nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub values: Vec<f64>,
}

/// A group of bars sharing one value axis, under its own heading (ours, the paper's).
#[derive(Debug, Clone, PartialEq)]
pub struct BarPanel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// Horizontal stacked bars, one panel per group, each with its own value axis (the paper's milliseconds and
/// ours differ by orders of magnitude); the segments' names in a legend under the title; each bar's total
/// written at its end. Labels go left of the bars, so long row names never overlap.
#[derive(Debug, Clone, PartialEq)]
pub struct StackedBars {
    pub title: String,
    /// The value axis' description, with its unit.
    pub x_label: String,
    /// Segment names, in stacking order (left to right).
    pub segments: Vec<String>,
    /// The unit written after each bar's total (`ms`).
    pub unit: String,
    pub panels: Vec<BarPanel>,
}

/// Pixel heights of a [`StackedBars`] chart: the title and legend, a panel's frame, one bar.
const BARS_HEAD: u32 = 110;
const PANEL_FRAME: u32 = 130;
const BAR_HEIGHT: u32 = 46;

impl StackedBars {
    /// Height in pixels: the title and legend, then each panel's frame and bars.
    pub fn height(&self) -> u32 {
        BARS_HEAD + self.panels.iter().map(|p| PANEL_FRAME + BAR_HEIGHT * p.bars.len().max(1) as u32).sum::<u32>()
    }

    /// Writes the chart to `png` (1200 pixels wide, as tall as its bars need) and `svg`.
    pub fn write(&self, png: &Path, svg: &Path) -> Result<()> {
        write_png_svg(self, png, svg, (1200, self.height()))
    }
}

impl Draw for StackedBars {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (width, _) = root.dim_in_pixel();
        let text_w = |text: &str, size: f64| {
            root.estimate_text_size(text, &("sans-serif", size).into_text_style(root)).map_or(0, |(w, _)| w)
        };
        let mut size = 30.0;
        while size > 14.0 && text_w(&self.title, size) > width.saturating_sub(40) {
            size -= 1.0;
        }
        let body = root.titled(&self.title, ("sans-serif", size)).map_err(e)?;
        let (legend, mut rest) = body.split_vertically(BARS_HEAD as i32 - 50);
        // The legend: a box and a name per segment, centred in a line.
        let entries: Vec<u32> = self.segments.iter().map(|s| 24 + 8 + text_w(s, 20.0) + 28).collect();
        let mut x = (width.saturating_sub(entries.iter().sum::<u32>()) / 2) as i32;
        for (i, (name, w)) in self.segments.iter().zip(&entries).enumerate() {
            let color = SERIES_COLORS[i % SERIES_COLORS.len()];
            legend.draw(&Rectangle::new([(x, 14), (x + 24, 34)], color.filled())).map_err(e)?;
            legend.draw(&Text::new(name.clone(), (x + 32, 13), ("sans-serif", 20).into_font())).map_err(e)?;
            x += *w as i32;
        }
        let label_w = self.panels.iter().flat_map(|p| &p.bars).map(|b| text_w(&b.label, 19.0)).max().unwrap_or(0);
        for (pi, panel) in self.panels.iter().enumerate() {
            let n = panel.bars.len().max(1);
            let h = PANEL_FRAME + BAR_HEIGHT * n as u32;
            let area = if pi + 1 == self.panels.len() {
                rest.clone()
            } else {
                let (a, r) = rest.split_vertically(h as i32);
                rest = r;
                a
            };
            let totals: Vec<f64> =
                panel.bars.iter().map(|b| b.values.iter().filter(|v| v.is_finite()).sum::<f64>()).collect();
            let top = totals.iter().copied().fold(0.0f64, f64::max);
            // Room right of the longest bar for its total.
            let x1 = if top > 0.0 { top * 1.2 } else { 1.0 };
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, ("sans-serif", 22))
                .margin(16)
                .x_label_area_size(55)
                .y_label_area_size(label_w + 24)
                .build_cartesian_2d(0.0..x1, 0.0..n as f64)
                .map_err(e)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n)
                .y_label_formatter(&|_| String::new())
                .x_desc(&self.x_label)
                .x_label_formatter(&|x| tick_label(*x, x1))
                .label_style(("sans-serif", 19))
                .axis_desc_style(("sans-serif", 21))
                .draw()
                .map_err(e)?;
            let (base_x, base_y) = area.get_base_pixel();
            for (i, (bar, total)) in panel.bars.iter().zip(&totals).enumerate() {
                // The first bar at the top.
                let y = (n - 1 - i) as f64;
                let mut left = 0.0;
                for (k, v) in bar.values.iter().enumerate() {
                    if !(v.is_finite() && *v > 0.0) {
                        continue;
                    }
                    let color = SERIES_COLORS[k % SERIES_COLORS.len()];
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(left, y + 0.18), (left + v, y + 0.82)],
                            color.filled(),
                        )))
                        .map_err(e)?;
                    left += v;
                }
                let (px, py) = chart.backend_coord(&(*total, y + 0.5));
                let (lx, _) = chart.backend_coord(&(0.0, y + 0.5));
                let value = format!("{} {}", number(*total, if *total >= 100.0 { 0 } else { 1 }), self.unit);
                let font = ("sans-serif", 19).into_text_style(&area);
                let left_of = font.pos(Pos::new(HPos::Left, VPos::Center));
                area.draw(&Text::new(value, (px - base_x + 8, py - base_y), left_of)).map_err(e)?;
                let right_of = font.pos(Pos::new(HPos::Right, VPos::Center));
                area.draw(&Text::new(bar.label.clone(), (lx - base_x - 10, py - base_y), right_of)).map_err(e)?;
            }
        }
        Ok(())
    }
}

/// Where a legend box of `size` (pixels) goes in a plotting area of `area`: at the left, the middle or the
/// right, at one of 21 heights from the top to the bottom, the place whose box, with 6 px around it, holds the
/// fewest of `samples` (pixel positions of the lines and points); the first such in reading order.
fn legend_place(size: (i32, i32), area: (i32, i32), samples: &[(i32, i32)]) -> (i32, i32) {
    let (w, h) = size;
    let xs = [8, (area.0 - w) / 2, area.0 - w - 8];
    let span = (area.1 - h - 16).max(0);
    let ys: Vec<i32> = (0..=20).map(|k| 8 + span * k / 20).collect();
    let mut best = ((8, 8), usize::MAX);
    for &y in &ys {
        for &x in &xs {
            let inside = samples
                .iter()
                .filter(|&&(sx, sy)| sx >= x - 6 && sx <= x + w + 6 && sy >= y - 6 && sy <= y + h + 6)
                .count();
            if inside < best.1 {
                best = ((x.max(0), y.max(0)), inside);
            }
        }
    }
    best.0
}

/// Whether no series has point labels (then the x range needs no room for them).
fn no_point_labels(chart: &LineChart) -> bool {
    chart.series.iter().all(|s| s.point_labels.is_empty())
}

/// `v` with at most `digits` decimals and no trailing zeros (7 for 7.000000000000001, 2.4 for 2.4000000001).
pub fn number(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A tick value with as many decimals as an axis spanning `range` needs (none from 10 up, up to 3 below 0.1).
pub fn tick_label(v: f64, range: f64) -> String {
    let decimals = match range.abs() {
        r if r >= 10.0 => 0,
        r if r >= 1.0 => 1,
        r if r >= 0.1 => 2,
        _ => 3,
    };
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(binary_label(4096.0), "4K");
        assert_eq!(binary_label(1048576.0), "1M");
        assert_eq!(binary_label(512.0), "512");
        assert_eq!(tick_label(0.25, 0.5), "0.25");
        assert_eq!(tick_label(120.0, 300.0), "120");
        assert_eq!(number(100.0 * 0.07, 3), "7");
        assert_eq!(number(2.4000000001, 3), "2.4");
        assert_eq!(number(1536.0, 2), "1536");
    }

    #[test]
    fn the_legend_goes_where_no_line_runs() {
        // A line across at height 100: the legend goes just below it, at the left.
        let samples: Vec<(i32, i32)> = (0..100).map(|x| (x * 10, 100)).collect();
        let (x, y) = legend_place((200, 100), (1000, 600), &samples);
        assert_eq!(x, 8);
        assert!(y > 106 && y < 200, "{y}");
        // Nothing drawn: the upper left.
        assert_eq!(legend_place((200, 100), (1000, 600), &[]), (8, 8));
    }

    #[test]
    fn writes_png_and_svg() {
        if ensure_font().is_err() {
            eprintln!("SKIPPED: no font installed (fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let chart = LineChart {
            title: "throughput".into(),
            x_label: "chunk".into(),
            y_label: "MiB/s".into(),
            log2_x: true,
            log_y: false,
            legend: LegendAt::UpperLeft,
            series: vec![
                Series {
                    label: "qd 1".into(),
                    points: vec![(4096.0, 50.0), (65536.0, 400.0), (f64::NAN, 3.0)],
                    point_labels: vec!["a".into(), "b".into(), "c".into()],
                    ..Series::default()
                },
                Series::reference("paper", vec![(4096.0, 100.0), (65536.0, 100.0)]),
                Series::scatter("tokens", vec![(8192.0, 20.0), (16384.0, 30.0)]),
            ],
        };
        let (png, svg) = (dir.path().join("c.png"), dir.path().join("c.svg"));
        chart.write(&png, &svg).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    }
}
