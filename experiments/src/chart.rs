//! Line charts written as PNG and SVG with plotters: one line per series, an optional log2 x axis labelled in
//! binary units (4K, 8K, ..., 1M).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
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
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// (x, y) in data units (for a log2 x axis, x is the raw value, e.g. bytes).
    pub points: Vec<(f64, f64)>,
    /// Text written beside each point (e.g. `K=3`), or none when empty.
    pub point_labels: Vec<String>,
}

/// Where a chart's legend goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LegendAt {
    #[default]
    UpperLeft,
    UpperRight,
    MiddleRight,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Plot x on a log2 axis with ticks at powers of two, labelled 512, 1K, 2K, ..., 1M, 2M, ...
    pub log2_x: bool,
    /// Where the legend goes: where no line runs.
    pub legend: LegendAt,
    pub series: Vec<Series>,
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
    /// Writes the chart to `png` (1200 x 800) and `svg`.
    pub fn write(&self, png: &Path, svg: &Path) -> Result<()> {
        ensure_font()?;
        let err = |path: &Path, what: String| Error::Chart { path: path.to_path_buf(), what };
        {
            let root = BitMapBackend::new(png, (1200, 800)).into_drawing_area();
            self.draw(&root).map_err(|e| err(png, e))?;
            root.present().map_err(|e| err(png, e.to_string()))?;
        }
        {
            let root = SVGBackend::new(svg, (1200, 800)).into_drawing_area();
            self.draw(&root).map_err(|e| err(svg, e))?;
            root.present().map_err(|e| err(svg, e.to_string()))?;
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let fx = |x: f64| if self.log2_x { x.max(f64::MIN_POSITIVE).log2() } else { x };
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1) =
            all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(fx(p.0)), b.max(fx(p.0))));
        let y1 = all().fold(0.0f64, |a, p| a.max(p.1));
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let y1 = if y1 > 0.0 { y1 * 1.08 } else { 1.0 };
        // Room on the right for the last point's label.
        if !no_point_labels(self) {
            x1 += (x1 - x0) * 0.06;
        }
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 30))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(e)?;
        let log2_x = self.log2_x;
        let n_x = if log2_x { (x1 - x0).round() as usize + 1 } else { 10 };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(n_x)
            .x_label_formatter(&|x| if log2_x { binary_label(x.exp2()) } else { tick_label(*x, x1 - x0) })
            .y_label_formatter(&|y| tick_label(*y, y1))
            .label_style(("sans-serif", 20))
            .axis_desc_style(("sans-serif", 22))
            .draw()
            .map_err(e)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (fx(p.0), p.1)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                .map_err(e)?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(e)?;
            let style = ("sans-serif", 17).into_font().color(&color);
            chart
                .draw_series(
                    pts.iter()
                        .zip(&s.point_labels)
                        .map(|(&p, text)| EmptyElement::at(p) + Text::new(text.clone(), (7, -20), style.clone())),
                )
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(match self.legend {
                LegendAt::UpperLeft => SeriesLabelPosition::UpperLeft,
                LegendAt::UpperRight => SeriesLabelPosition::UpperRight,
                LegendAt::MiddleRight => SeriesLabelPosition::MiddleRight,
            })
            .label_font(("sans-serif", 20))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// Whether no series has point labels (then the x range needs no room for them).
fn no_point_labels(chart: &LineChart) -> bool {
    chart.series.iter().all(|s| s.point_labels.is_empty())
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
            legend: LegendAt::UpperLeft,
            series: vec![Series {
                label: "qd 1".into(),
                points: vec![(4096.0, 50.0), (65536.0, 400.0)],
                point_labels: vec!["a".into(), "b".into()],
            }],
        };
        let (png, svg) = (dir.path().join("c.png"), dir.path().join("c.svg"));
        chart.write(&png, &svg).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    }
}
