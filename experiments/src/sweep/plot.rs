//! Charts of a sweep, drawn from its `raw.csv` alone (never by running anything): the windowing trade-off
//! (DRAM held by the window against data read per token, over K) and aggregated neuron usage against the
//! window size (the paper's Figure 4a).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::output::{self, Row};
use super::spec::SETTINGS;
use crate::chart::{LegendAt, LineChart, Series};
use crate::Result;

/// What [`plot`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plotted {
    /// The PNG files written (an SVG beside each).
    pub charts: Vec<PathBuf>,
    /// Why a chart was not drawn.
    pub notes: Vec<String>,
}

/// One point of the CSV: its settings and its metrics.
struct PointRows {
    window: u32,
    model: String,
    planted: bool,
    budget_decides: bool,
    /// The settings other than the window (the cache policy with its length taken out): the series key.
    group: Vec<(&'static str, String)>,
    metrics: BTreeMap<String, f64>,
}

/// Draws the charts that `dir/raw.csv` has the points for, into `dir`.
pub fn plot(dir: &Path) -> Result<Plotted> {
    let raw = output::Files::of(dir).raw;
    let rows = output::read_rows(&raw)?;
    let mut out = Plotted::default();
    let mut points: BTreeMap<usize, PointRows> = BTreeMap::new();
    for r in &rows {
        let Ok(window) = r.window.parse::<u32>() else { continue };
        let p = points.entry(r.point).or_insert_with(|| PointRows {
            window,
            model: r.model.clone(),
            planted: r.planted,
            budget_decides: r.budget_decides,
            group: group_of(r),
            metrics: BTreeMap::new(),
        });
        p.metrics.insert(r.metric.clone(), r.value);
    }
    let mut groups: BTreeMap<Vec<(&'static str, String)>, Vec<&PointRows>> = BTreeMap::new();
    for p in points.values() {
        groups.entry(p.group.clone()).or_default().push(p);
    }
    for g in groups.values_mut() {
        g.sort_by_key(|p| p.window);
    }
    let windows = points.values().map(|p| p.window).collect::<std::collections::BTreeSet<_>>();
    if windows.len() < 2 {
        out.notes.push(format!(
            "no window charts: {} has {} window size(s); they need at least 2 (grid.window)",
            raw.display(),
            windows.len()
        ));
        return Ok(out);
    }
    let labels = series_labels(&groups);
    let first = points.values().next().expect("two window sizes mean points");
    let model = Path::new(&first.model).file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let kind = if points.values().any(|p| p.planted) { "planted model" } else { "measured" };
    let metric = |p: &PointRows, m: &str| p.metrics.get(m).copied();

    let mut tradeoff = Vec::new();
    let mut usage = Vec::new();
    for (key, pts) in &groups {
        let label = &labels[key];
        let budget_note = if pts.iter().any(|p| p.budget_decides) { " (budget caps the cache)" } else { "" };
        let (mut xy, mut ks) = (Vec::new(), Vec::new());
        for p in pts {
            if let (Some(held), Some(read)) = (metric(p, "window_held_mb"), metric(p, "mb_read_per_token")) {
                xy.push((held, read));
                ks.push(p.window);
            }
        }
        let names = k_labels(&xy, &ks);
        tradeoff.push(Series { label: format!("{label}{budget_note}"), points: xy, point_labels: names });
        let share = |m: &str| -> Vec<(f64, f64)> {
            pts.iter().filter_map(|p| metric(p, m).map(|v| (f64::from(p.window), 100.0 * v))).collect()
        };
        let sep = ": ";
        usage.push(Series {
            label: format!("{label}{sep}held by the window (aggregated usage){budget_note}"),
            points: share("window_held_share"),
            point_labels: Vec::new(),
        });
        usage.push(Series {
            label: format!("{label}{sep}read from flash per token (new)"),
            points: share("new_per_token_share"),
            point_labels: Vec::new(),
        });
    }
    let charts = [
        (
            "window-tradeoff",
            LineChart {
                title: format!("Windowing trade-off over window size K, {model} ({kind})"),
                x_label: "DRAM held by the window's neuron records (MB, median over tokens)".into(),
                y_label: "read from flash per token (MB, median)".into(),
                log2_x: false,
                legend: LegendAt::UpperRight,
                series: tradeoff,
            },
        ),
        (
            "window-usage",
            LineChart {
                title: format!("Aggregated neuron usage vs window size, {model} ({kind})"),
                x_label: "window size K (tokens)".into(),
                y_label: "share of the FFN's neurons, all layers (%, median over tokens)".into(),
                log2_x: false,
                legend: LegendAt::MiddleRight,
                series: usage,
            },
        ),
    ];
    for (name, chart) in charts {
        let (png, svg) = (dir.join(format!("{name}.png")), dir.join(format!("{name}.svg")));
        chart.write(&png, &svg)?;
        out.charts.push(png);
    }
    Ok(out)
}

/// A point's settings but the window, with the cache policy's window length taken out (`window:3` ->
/// `window`), so that one series runs over K.
fn group_of(r: &Row) -> Vec<(&'static str, String)> {
    let mut g = vec![("model", r.model.clone())];
    for k in SETTINGS.iter().copied().filter(|k| *k != "window") {
        let v = r.setting(k).unwrap_or_default();
        let v = if k == "cache" {
            match v.find("window:") {
                Some(i) => format!("{}window", &v[..i]),
                None => v.to_string(),
            }
        } else {
            v.to_string()
        };
        g.push((k, v));
    }
    g
}

/// Labels `K=k` for points `xy` of window sizes `ks`, joined into `K=a..b` where points lie closer than 4% of
/// the plot's extent, whose labels would overlap.
fn k_labels(xy: &[(f64, f64)], ks: &[u32]) -> Vec<String> {
    let extent = |f: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = xy.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        (hi - lo).max(f64::MIN_POSITIVE)
    };
    let (wx, wy) = (extent(|p| p.0), extent(|p| p.1));
    let near = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0) / wx).hypot((a.1 - b.1) / wy) < 0.04;
    let mut labels = vec![String::new(); xy.len()];
    let mut start = 0;
    while start < xy.len() {
        let mut end = start;
        while end + 1 < xy.len() && near(xy[start], xy[end + 1]) {
            end += 1;
        }
        labels[start] = if end == start { format!("K={}", ks[start]) } else { format!("K={}..{}", ks[start], ks[end]) };
        start = end + 1;
    }
    labels
}

/// A legend label per series: the settings that differ between series; with one series, the two that say
/// most about what it is (selection, budget), short enough for the legend. File settings by their file name only (no machine
/// paths).
fn series_labels<T>(
    groups: &BTreeMap<Vec<(&'static str, String)>, T>,
) -> BTreeMap<Vec<(&'static str, String)>, String> {
    let keys: Vec<&Vec<(&'static str, String)>> = groups.keys().collect();
    let varies = |i: usize| keys.iter().any(|k| k[i].1 != keys[0][i].1);
    let n = keys.first().map_or(0, |k| k.len());
    let mut varied: Vec<usize> = (0..n).filter(|&i| varies(i)).collect();
    if varied.is_empty() {
        let describe = ["selection", "budget"];
        varied = (0..n).filter(|&i| keys.iter().any(|k| describe.contains(&k[i].0))).collect();
    }
    keys.iter()
        .map(|k| {
            let parts: Vec<String> = varied
                .iter()
                .map(|&i| {
                    let (name, v) = &k[i];
                    let short = match v.rsplit_once('/') {
                        Some((head, file)) => match head.split_once(':') {
                            Some((kind, _)) => format!("{kind}:{file}"),
                            None => file.to_string(),
                        },
                        None => v.clone(),
                    };
                    format!("{name} {short}")
                })
                .collect();
            ((*k).clone(), parts.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_points_share_one_label() {
        let xy = [(0.0, 60.0), (35.0, 38.0), (61.0, 0.2), (61.2, 0.1), (61.3, 0.0)];
        assert_eq!(k_labels(&xy, &[0, 1, 8, 9, 10]), ["K=0", "K=1", "K=8..10", "", ""]);
    }
}
