//! Charts of a sweep, drawn from its CSV files alone (never by running anything). Each figure is drawn when
//! the sweep's points have what it needs:
//!
//! - the windowing trade-off (DRAM held by the window against data read per token, over K) and aggregated
//!   neuron usage against the window size (the paper's Figure 4a): two window sizes or more;
//! - row-column bundling (read size, bytes read per token and read throughput, bundled against split, over the
//!   record type): bundled and split points;
//! - the predictor (over-prediction per layer for each rank; recall, precision and errors against the rank):
//!   predictors the sweep trained;
//! - perplexity and the neurons computed against the target sparsity (oracle and predictor): two sparsities;
//! - the cost model (predicted against measured I/O per token, with the y = x line): tokens with a prediction.
//!
//! Titles say `measured`, or `planted model` when the rows say planted; lines of the paper's values say
//! `paper`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::output::{self, Row};
use super::spec::SETTINGS;
use crate::chart::{number, LegendAt, LineChart, Series};
use crate::record::TokenRecord;
use crate::{paper, Error, Result};

/// Every chart [`plot`] may draw (file stems; a PNG and an SVG each), in the order it draws them.
pub const CHARTS: [&str; 10] = [
    "window-tradeoff",
    "window-usage",
    "bundling-read-size",
    "bundling-bytes",
    "bundling-throughput",
    "predictor-layers",
    "predictor-rank",
    "sparsity-perplexity",
    "sparsity-computed",
    "cost-model",
];

/// What [`plot`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plotted {
    /// The PNG files written (an SVG beside each).
    pub charts: Vec<PathBuf>,
    /// Why a figure was not drawn.
    pub notes: Vec<String>,
}

/// One point of `raw.csv`: its settings and its metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRows {
    pub index: usize,
    pub id: String,
    pub model: String,
    pub planted: bool,
    pub budget_decides: bool,
    /// Every setting's text ([`SETTINGS`]).
    pub settings: BTreeMap<&'static str, String>,
    /// The point's metrics (rows with an empty `layer`).
    pub metrics: BTreeMap<String, f64>,
    /// Per-layer metrics: metric -> layer -> value.
    pub layers: BTreeMap<String, BTreeMap<usize, f64>>,
    /// The number of prompts and of tokens decoded after each.
    pub prompts: usize,
    pub gen_tokens: usize,
}

impl PointRows {
    /// Setting `k`'s text ("" for an unknown key).
    pub fn setting(&self, k: &str) -> &str {
        self.settings.get(k).map_or("", String::as_str)
    }

    /// Metric `m`, if the point has it and it is a number.
    pub fn metric(&self, m: &str) -> Option<f64> {
        self.metrics.get(m).copied().filter(|v| v.is_finite())
    }
}

/// A sweep folder's CSV files, read and grouped by point.
#[derive(Debug, Clone, Default)]
pub struct SweepData {
    pub raw: PathBuf,
    /// The points in grid order.
    pub points: Vec<PointRows>,
    /// `tokens.csv` (none in folders made before it existed).
    pub tokens: Vec<TokenRecord>,
}

impl SweepData {
    /// Reads `dir/raw.csv` and, when present, `dir/tokens.csv`.
    pub fn read(dir: &Path) -> Result<SweepData> {
        let files = output::Files::of(dir);
        if !files.raw.exists() {
            return Err(Error::NotASweep { dir: dir.to_path_buf() });
        }
        let rows = output::read_rows(&files.raw)?;
        let points = points_of(&rows, &files.raw)?;
        let tokens = output::read_tokens(&files.tokens)?;
        Ok(SweepData { raw: files.raw, points, tokens })
    }

    /// `planted model` when any row says planted, else `measured`.
    pub fn kind(&self) -> &'static str {
        if self.points.iter().any(|p| p.planted) {
            "planted model"
        } else {
            "measured"
        }
    }

    /// The model's name without its extension (from the first point).
    pub fn model(&self) -> String {
        self.points.first().map_or_else(String::new, |p| {
            Path::new(&p.model).file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        })
    }
}

/// Groups `rows` (of the file `raw`, for messages) by point, checking that each point's rows agree on its
/// settings and that per-layer rows name a layer by number.
pub fn points_of(rows: &[Row], raw: &Path) -> Result<Vec<PointRows>> {
    let mut points: BTreeMap<usize, PointRows> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        // Line 1 is the header.
        let bad = |what: String| Error::Csv { path: raw.to_path_buf(), what: format!("line {}: {what}", i + 2) };
        let p = points.entry(r.point).or_insert_with(|| PointRows {
            index: r.point,
            id: r.point_id.clone(),
            model: r.model.clone(),
            planted: r.planted,
            budget_decides: r.budget_decides,
            settings: SETTINGS.iter().map(|&k| (k, r.setting(k).unwrap_or_default().to_string())).collect(),
            metrics: BTreeMap::new(),
            layers: BTreeMap::new(),
            prompts: r.prompts,
            gen_tokens: r.gen_tokens,
        });
        if p.id != r.point_id {
            return Err(bad(format!("point {} has ids {} and {}", r.point, p.id, r.point_id)));
        }
        if let Some(k) = SETTINGS.iter().find(|&&k| p.setting(k) != r.setting(k).unwrap_or_default()) {
            return Err(bad(format!("point {} has two values of setting `{k}`", r.point)));
        }
        if r.layer.is_empty() {
            p.metrics.insert(r.metric.clone(), r.value);
        } else {
            let layer: usize = r.layer.parse().map_err(|_| {
                bad(format!("metric {} of point {}: layer `{}` is not a layer number", r.metric, r.point, r.layer))
            })?;
            p.layers.entry(r.metric.clone()).or_default().insert(layer, r.value);
        }
    }
    Ok(points.into_values().collect())
}

/// Draws the charts that `dir`'s CSV files have the points for, into `dir`.
pub fn plot(dir: &Path) -> Result<Plotted> {
    let data = SweepData::read(dir)?;
    let mut out = Plotted::default();
    let figures: [(&str, Drawer); 5] = [
        ("window", window),
        ("bundling", bundling),
        ("predictor", predictor),
        ("sparsity", sparsity),
        ("cost-model", cost_model),
    ];
    for (name, figure) in figures {
        match figure(&data) {
            Ok(charts) => {
                for (file, chart) in charts {
                    debug_assert!(CHARTS.contains(&file), "{file} is listed in CHARTS");
                    let (png, svg) = (dir.join(format!("{file}.png")), dir.join(format!("{file}.svg")));
                    chart.write(&png, &svg)?;
                    out.charts.push(png);
                }
            }
            Err(why) => out.notes.push(format!("no {name} charts: {why}")),
        }
    }
    Ok(out)
}

/// A figure's charts (file stem and chart), or why it cannot be drawn from the data.
type Figure = std::result::Result<Vec<(&'static str, LineChart)>, String>;

/// What draws one figure from a sweep's data.
type Drawer = fn(&SweepData) -> Figure;

/// A point's model and settings but `except`, with the cache policy's window length taken out (`window:3` ->
/// `window`): points that differ only in `except` share a key.
pub(crate) fn group_of(p: &PointRows, except: &[&str]) -> Vec<(&'static str, String)> {
    let mut g = vec![("model", p.model.clone())];
    for k in SETTINGS.iter().copied().filter(|k| !except.contains(k)) {
        let v = p.setting(k);
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

/// Points grouped by [`group_of`], in grid order within each group.
pub(crate) fn groups<'a>(
    points: impl Iterator<Item = &'a PointRows>,
    except: &[&str],
) -> BTreeMap<Vec<(&'static str, String)>, Vec<&'a PointRows>> {
    let mut g: BTreeMap<_, Vec<&PointRows>> = BTreeMap::new();
    for p in points {
        g.entry(group_of(p, except)).or_default().push(p);
    }
    g
}

/// The windowing trade-off and aggregated usage against K.
fn window(data: &SweepData) -> Figure {
    let with_k: Vec<(&PointRows, u32)> =
        data.points.iter().filter_map(|p| p.setting("window").parse::<u32>().ok().map(|k| (p, k))).collect();
    let windows: BTreeSet<u32> = with_k.iter().map(|(_, k)| *k).collect();
    if windows.len() < 2 {
        return Err(format!(
            "{} has {} window size(s); they need at least 2 (grid.window)",
            data.raw.display(),
            windows.len()
        ));
    }
    let mut groups = groups(with_k.iter().map(|(p, _)| *p), &["window"]);
    let k_of = |p: &PointRows| p.setting("window").parse::<u32>().unwrap_or(0);
    for g in groups.values_mut() {
        g.sort_by_key(|p| k_of(p));
    }
    let labels = series_labels(&groups);
    let (model, kind) = (data.model(), data.kind());
    let mut tradeoff = Vec::new();
    let mut usage = Vec::new();
    for (key, pts) in &groups {
        let label = &labels[key];
        let budget_note = if pts.iter().any(|p| p.budget_decides) { " (budget caps the cache)" } else { "" };
        let (mut xy, mut ks) = (Vec::new(), Vec::new());
        for p in pts {
            if let (Some(held), Some(read)) = (p.metric("window_held_mb"), p.metric("mb_read_per_token")) {
                xy.push((held, read));
                ks.push(k_of(p));
            }
        }
        let names = k_labels(&xy, &ks);
        tradeoff.push(Series { point_labels: names, ..Series::line(format!("{label}{budget_note}"), xy) });
        let share = |m: &str| -> Vec<(f64, f64)> {
            pts.iter().filter_map(|p| p.metric(m).map(|v| (f64::from(k_of(p)), 100.0 * v))).collect()
        };
        usage.push(Series::line(
            format!("{label}: held by the window (aggregated usage){budget_note}"),
            share("window_held_share"),
        ));
        usage.push(Series::line(format!("{label}: read from flash per token (new)"), share("new_per_token_share")));
    }
    for id in ["window_held_k5", "window_new_k5", "window_new_k0"] {
        let c = paper::claim(id).map_err(|e| e.to_string())?;
        let k = if id.ends_with("k0") { 0.0 } else { 5.0 };
        usage.push(Series::reference(
            format!("paper ({}): {} ({}%)", c.model, c.quantity, number(100.0 * c.value, 3)),
            vec![(k, 100.0 * c.value)],
        ));
    }
    Ok(vec![
        (
            "window-tradeoff",
            LineChart {
                title: format!("Windowing trade-off over window size K, {model} ({kind})"),
                x_label: "DRAM held by the window's neuron records (MB, median over tokens)".into(),
                y_label: "read from flash per token (MB, median)".into(),
                log2_x: false,
                log_y: false,
                legend: LegendAt::Auto,
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
                log_y: false,
                legend: LegendAt::Auto,
                series: usage,
            },
        ),
    ])
}

/// Bundled against split over the record type: read size, bytes read per token, read throughput.
fn bundling(data: &SweepData) -> Figure {
    let layouts: BTreeSet<&str> = data.points.iter().map(|p| p.setting("layout")).collect();
    if !(layouts.contains("bundled") && layouts.contains("split")) {
        return Err(format!("{} has no bundled and split points side by side (grid.layout)", data.raw.display()));
    }
    let groups = groups(data.points.iter(), &["layout", "dtype"]);
    let labels = series_labels(&groups);
    let many = groups.len() > 1;
    let series = |metric: &str, scale: f64| -> Vec<Series> {
        let mut out = Vec::new();
        for (key, pts) in &groups {
            for layout in ["bundled", "split"] {
                let mut xy: Vec<(f64, f64, String)> = pts
                    .iter()
                    .filter(|p| p.setting("layout") == layout)
                    .filter_map(|p| {
                        Some((p.metric("record_bytes")?, p.metric(metric)? * scale, p.setting("dtype").to_string()))
                    })
                    .collect();
                xy.sort_by(|a, b| a.0.total_cmp(&b.0));
                let label = if many { format!("{layout}, {}", labels[key]) } else { layout.to_string() };
                out.push(Series {
                    point_labels: xy.iter().map(|p| p.2.clone()).collect(),
                    ..Series::line(label, xy.iter().map(|p| (p.0, p.1)).collect())
                });
            }
        }
        out
    };
    let series = |metric: &str, scale: f64| top_labels_only(series(metric, scale));
    let (model, kind) = (data.model(), data.kind());
    let x_label = "bytes of one neuron's record (gate row + up row + down column), by record type";
    let chart = |what: &str, y: &str, s: Vec<Series>| LineChart {
        title: format!("Row-column bundling: {what}, {model} ({kind})"),
        x_label: x_label.into(),
        y_label: y.into(),
        log2_x: false,
        log_y: false,
        legend: LegendAt::Auto,
        series: s,
    };
    Ok(vec![
        (
            "bundling-read-size",
            chart(
                "mean device read, bundled vs split",
                "bytes per device read (KiB, all measured tokens)",
                series("mean_read_bytes", 1.0 / 1024.0),
            ),
        ),
        (
            "bundling-bytes",
            chart(
                "data read per token, bundled vs split",
                "read from flash per token (MB, median)",
                series("mb_read_per_token", 1.0),
            ),
        ),
        (
            "bundling-throughput",
            chart(
                "read throughput, bundled vs split",
                "bytes read / read wait per token (MB/s, median)",
                series("io_mb_s", 1.0),
            ),
        ),
    ])
}

/// Keeps each x's point label on the highest point there only: series over the same x values (record types)
/// would otherwise write the same label once per series, on top of one another.
fn top_labels_only(mut series: Vec<Series>) -> Vec<Series> {
    let mut top: BTreeMap<u64, f64> = BTreeMap::new();
    for s in &series {
        for &(x, y) in s.points.iter().filter(|p| p.1.is_finite()) {
            let t = top.entry(x.to_bits()).or_insert(y);
            *t = t.max(y);
        }
    }
    for s in &mut series {
        let keep: Vec<bool> = s.points.iter().map(|&(x, y)| top.get(&x.to_bits()) == Some(&y)).collect();
        for (label, keep) in s.point_labels.iter_mut().zip(keep) {
            if !keep {
                label.clear();
            }
        }
    }
    // The highest point at an x may be in two series: its label once.
    let mut seen = BTreeSet::new();
    for s in &mut series {
        for (&(x, _), label) in s.points.iter().zip(s.point_labels.iter_mut()) {
            if !label.is_empty() && !seen.insert(x.to_bits()) {
                label.clear();
            }
        }
    }
    series
}

/// The predictors the sweep trained: over-prediction per layer for each rank, and quality against the rank.
fn predictor(data: &SweepData) -> Figure {
    let trained: Vec<&PointRows> =
        data.points.iter().filter(|p| p.layers.contains_key("valid_predicted_true_ratio")).collect();
    if trained.is_empty() {
        return Err(format!(
            "{} has no predictor trained by the sweep (selection = \"predictor\")",
            data.raw.display()
        ));
    }
    let claim = |id: &str| paper::claim(id).map_err(|e| e.to_string());
    let (over, fnr, fp) = (claim("predictor_over")?, claim("predictor_fnr")?, claim("predictor_fp")?);
    let (model, kind) = (data.model(), data.kind());
    // Over-prediction per layer, a line per trained predictor.
    let by_point = groups(trained.iter().copied(), &[]);
    let labels = series_labels(&by_point);
    let mut layers = Vec::new();
    let mut last = 0usize;
    let mut ordered: Vec<_> = by_point.iter().collect();
    let rank_of = |p: &PointRows| p.setting("rank").parse::<usize>().unwrap_or(0);
    ordered.sort_by_key(|(_, pts)| pts.first().map_or(0, |p| rank_of(p)));
    for (key, pts) in ordered {
        for p in pts {
            let per = &p.layers["valid_predicted_true_ratio"];
            last = last.max(per.keys().copied().max().unwrap_or(0));
            layers.push(Series::line(labels[key].clone(), per.iter().map(|(&l, &v)| (l as f64, v)).collect()));
        }
    }
    layers.push(Series::reference(
        format!("paper ({}): about {}x", over.model, number(over.value, 3)),
        vec![(0.0, over.value), (last as f64, over.value)],
    ));
    // Against the rank: means over layers, a set of lines per group of the other settings.
    let by_rest = groups(trained.iter().copied(), &["rank"]);
    let rest_labels = series_labels(&by_rest);
    let many = by_rest.len() > 1;
    let mut quality = Vec::new();
    let (mut r0, mut r1) = (f64::INFINITY, f64::NEG_INFINITY);
    for (key, pts) in &by_rest {
        let mut pts = pts.clone();
        pts.sort_by_key(|p| rank_of(p));
        let line = |name: &str, f: &dyn Fn(&PointRows) -> Option<f64>| {
            let xy: Vec<(f64, f64)> = pts.iter().filter_map(|p| f(p).map(|v| (rank_of(p) as f64, 100.0 * v))).collect();
            let label = if many { format!("{name}, {}", rest_labels[key]) } else { name.to_string() };
            Series::line(label, xy)
        };
        for p in &pts {
            r0 = r0.min(rank_of(p) as f64);
            r1 = r1.max(rank_of(p) as f64);
        }
        quality.push(line("recall (the decision threshold keeps train.recall of validation)", &|p| {
            p.metric("valid_recall")
        }));
        quality.push(line("precision", &|p| p.metric("valid_precision")));
        quality.push(line("false negatives (share of the truly active)", &|p| p.metric("valid_false_negative_rate")));
        quality.push(line("false positives (share of all neurons)", &false_positive_share));
    }
    quality.push(Series::reference(
        format!("paper ({}): false negatives {}%", fnr.model, number(100.0 * fnr.value, 3)),
        vec![(r0, 100.0 * fnr.value), (r1, 100.0 * fnr.value)],
    ));
    quality.push(Series::reference(
        format!("paper ({}): false positives {}%", fp.model, number(100.0 * fp.value, 3)),
        vec![(r0, 100.0 * fp.value), (r1, 100.0 * fp.value)],
    ));
    let layers_chart = (
        "predictor-layers",
        LineChart {
            title: format!("Predictor over-prediction per layer, {model} ({kind})"),
            x_label: "layer".into(),
            y_label: "neurons predicted / neurons truly active (validation split)".into(),
            log2_x: false,
            log_y: false,
            legend: LegendAt::Auto,
            series: layers,
        },
    );
    let ranks: BTreeSet<usize> = trained.iter().map(|p| rank_of(p)).collect();
    if ranks.len() < 2 {
        // Quality against the rank needs two ranks; one would draw dots over a one-value axis.
        return Ok(vec![layers_chart]);
    }
    Ok(vec![
        layers_chart,
        (
            "predictor-rank",
            LineChart {
                title: format!("Predictor quality vs rank, means over layers, {model} ({kind})"),
                x_label: "predictor rank (log2 scale)".into(),
                y_label: "% (validation split)".into(),
                log2_x: true,
                log_y: false,
                legend: LegendAt::Auto,
                series: quality,
            },
        ),
    ])
}

/// Neurons predicted active that are not, as a share of all neurons (mean over layers): predicted active
/// share minus the recalled part of the truly active share, layer by layer.
pub fn false_positive_share(p: &PointRows) -> Option<f64> {
    let pred = p.layers.get("valid_predicted_active_fraction")?;
    let truly = p.layers.get("valid_true_active_fraction")?;
    let recall = p.layers.get("valid_recall")?;
    let per: Vec<f64> = pred.iter().filter_map(|(l, &pa)| Some(pa - recall.get(l)? * truly.get(l)?)).collect();
    (!per.is_empty()).then(|| per.iter().sum::<f64>() / per.len() as f64)
}

/// The points of a perplexity-against-sparsity figure: those with a target sparsity, of at least two
/// sparsities, alike but for the selection, the sparsity and the rank (a sweep that varies other settings as
/// well, such as the layout, is about those).
pub fn sparsity_points(data: &SweepData) -> std::result::Result<Vec<&PointRows>, String> {
    let sparse: Vec<&PointRows> = data.points.iter().filter(|p| !p.setting("sparsity").is_empty()).collect();
    let levels: BTreeSet<&str> = sparse.iter().map(|p| p.setting("sparsity")).collect();
    if levels.len() < 2 {
        return Err(format!(
            "{} has {} target sparsities; they need at least 2 (grid.sparsity)",
            data.raw.display(),
            levels.len()
        ));
    }
    let others = groups(sparse.iter().copied(), &["selection", "sparsity", "rank"]);
    if others.len() > 1 {
        let varied = series_labels(&others).into_values().next().unwrap_or_default();
        return Err(format!(
            "{}: the points with a sparsity also differ in other settings ({varied}, ...)",
            data.raw.display()
        ));
    }
    Ok(sparse)
}

/// The points that compute every neuron (`selection = all`) with the other settings of `sparse` (see
/// [`sparsity_points`]): the dense reference of a perplexity-against-sparsity figure.
pub fn dense_points<'a>(data: &'a SweepData, sparse: &[&PointRows]) -> Vec<&'a PointRows> {
    let except = ["selection", "sparsity", "rank"];
    let Some(key) = sparse.first().map(|p| group_of(p, &except)) else { return Vec::new() };
    data.points.iter().filter(|p| p.setting("selection") == "all" && group_of(p, &except) == key).collect()
}

/// Perplexity and the neurons computed against the target sparsity, a line per selection.
fn sparsity(data: &SweepData) -> Figure {
    let sparse = sparsity_points(data)?;
    let s_of = |p: &PointRows| p.setting("sparsity").parse::<f64>().unwrap_or(f64::NAN);
    let (x0, x1) = sparse
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(100.0 * s_of(p)), b.max(100.0 * s_of(p))));
    let groups = groups(sparse.iter().copied(), &["sparsity"]);
    let labels = series_labels(&groups);
    let line = |metric: &str, scale: f64| -> Vec<Series> {
        groups
            .iter()
            .map(|(key, pts)| {
                let mut xy: Vec<(f64, f64)> =
                    pts.iter().filter_map(|p| p.metric(metric).map(|v| (100.0 * s_of(p), scale * v))).collect();
                xy.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series::line(labels[key].clone(), xy)
            })
            .collect()
    };
    let mut ppl = line("prompt_perplexity", 1.0);
    for p in dense_points(data, &sparse) {
        if let Some(v) = p.metric("prompt_perplexity") {
            ppl.push(Series::reference(
                format!("every neuron (selection all, point {})", p.index),
                vec![(x0, v), (x1, v)],
            ));
        }
    }
    let mut computed = line("active_share", 100.0);
    computed.push(Series::reference("100% - target sparsity", vec![(x0, 100.0 - x0), (x1, 100.0 - x1)]));
    let (model, kind) = (data.model(), data.kind());
    let prompts = sparse.first().map_or(0, |p| p.prompts);
    Ok(vec![
        (
            "sparsity-perplexity",
            LineChart {
                title: format!("Perplexity vs target sparsity, {model} ({kind})"),
                x_label: "target sparsity of the activation thresholds (% of neurons inactive)".into(),
                y_label: format!("perplexity of the {prompts} prompts' tokens"),
                log2_x: false,
                log_y: false,
                legend: LegendAt::Auto,
                series: ppl,
            },
        ),
        (
            "sparsity-computed",
            LineChart {
                title: format!("Neurons computed vs target sparsity, {model} ({kind})"),
                x_label: "target sparsity of the activation thresholds (% of neurons inactive)".into(),
                y_label: "neurons selected per token (% of the FFN, median)".into(),
                log2_x: false,
                log_y: false,
                legend: LegendAt::Auto,
                series: computed,
            },
        ),
    ])
}

/// The cost model's predicted I/O per token against the measured, a cloud of tokens per value of the first
/// setting that varies, with the y = x line.
fn cost_model(data: &SweepData) -> Figure {
    let by_id: BTreeMap<&str, &PointRows> = data.points.iter().map(|p| (p.id.as_str(), p)).collect();
    let tokens: Vec<(&PointRows, &TokenRecord)> = data
        .tokens
        .iter()
        .filter(|t| t.reads > 0 && t.predicted_io_ms > 0.0)
        .filter_map(|t| by_id.get(t.label.as_str()).map(|p| (*p, t)))
        .collect();
    if tokens.is_empty() {
        return Err(format!(
            "no token of {} has a predicted I/O time (fixed.profile names a device profile)",
            data.raw.with_file_name("tokens.csv").display()
        ));
    }
    let pts: BTreeSet<usize> = tokens.iter().map(|(p, _)| p.index).collect();
    let varies = |k: &str| tokens.iter().map(|(p, _)| p.setting(k)).collect::<BTreeSet<_>>().len() > 1;
    let key = SETTINGS
        .iter()
        .copied()
        .filter(|k| *k != "window")
        .find(|k| varies(k))
        .or_else(|| varies("window").then_some("window"));
    let mut clouds: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (p, t) in &tokens {
        let label = key.map_or_else(|| "tokens".to_string(), |k| format!("{k} {}", short(p.setting(k))));
        clouds.entry(label).or_default().push((t.predicted_io_ms, t.io_ms));
    }
    let top = tokens.iter().fold(0.0f64, |m, (_, t)| m.max(t.predicted_io_ms).max(t.io_ms));
    let mut series: Vec<Series> = clouds.into_iter().map(|(label, xy)| Series::scatter(label, xy)).collect();
    series.push(Series::reference("y = x (prediction exact)", vec![(0.0, 0.0), (top, top)]));
    let (model, kind) = (data.model(), data.kind());
    Ok(vec![(
        "cost-model",
        LineChart {
            title: format!("Cost model: predicted vs measured I/O per token, {model} ({kind})"),
            x_label: format!(
                "predicted I/O time (ms; device profile, read sizes; {} tokens of {} points)",
                tokens.len(),
                pts.len()
            ),
            y_label: "measured read wait (ms)".into(),
            log2_x: false,
            log_y: false,
            legend: LegendAt::Auto,
            series,
        },
    )])
}

/// A setting's value for a legend: a file by its name only (no machine paths), `kind:file` for selections.
fn short(v: &str) -> String {
    match v.rsplit_once('/') {
        Some((head, file)) => match head.split_once(':') {
            Some((kind, _)) => format!("{kind}:{file}"),
            None => file.to_string(),
        },
        None => v.to_string(),
    }
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
/// most about what it is (selection, budget), short enough for the legend. File settings by their file name
/// only (no machine paths).
pub fn series_labels<T>(
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
            // A setting a series does not have (a rank beside the oracle) says nothing.
            let parts: Vec<String> = varied
                .iter()
                .filter(|&&i| !k[i].1.is_empty())
                .map(|&i| format!("{} {}", k[i].0, short(&k[i].1)))
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
