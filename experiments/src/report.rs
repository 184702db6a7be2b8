//! `spike report DIR`: `DIR/REPORT.md`, the paper's claims beside ours. For every sweep folder in `DIR` (`DIR`
//! itself, its subfolders, or the folders of `DIR/sweeps/`), each claim its points can speak to: the paper's
//! number (from [`crate::paper`], with where the paper gives it), ours (computed here from the folder's CSV
//! files, never written in by hand), their ratio, the chart and the command that made it. Sweeps of planted
//! checkpoints are reported apart from measurements of real models.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::chart::number;
use crate::latency::{self, LatencyTable, PaperRow};
use crate::paper::{self, Claim};
use crate::summary::median;
use crate::sweep::output::{self, SweepInfo};
use crate::sweep::plot::{self, PointRows, SweepData};
use crate::{Error, Result};

/// One number of ours, with the paper's beside it when the paper has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// What is compared.
    pub quantity: String,
    /// The points it comes from (the settings that tell them apart).
    pub setting: String,
    /// The paper's number, if it gives one for this quantity.
    pub paper: Option<Claim>,
    pub ours: f64,
    /// `share` (shown as %), `ratio`, `GB/s`, `MB/s`, `ms`, `perplexity`, `tokens`.
    pub unit: &'static str,
}

impl Line {
    /// Ours beside the paper's `claim` (its quantity).
    pub fn vs(claim: &Claim, setting: impl Into<String>, ours: f64, unit: &'static str) -> Line {
        Line { quantity: claim.quantity.clone(), setting: setting.into(), paper: Some(claim.clone()), ours, unit }
    }

    /// Ours alone: the paper has no number for `quantity`.
    pub fn ours(quantity: impl Into<String>, setting: impl Into<String>, ours: f64, unit: &'static str) -> Line {
        Line { quantity: quantity.into(), setting: setting.into(), paper: None, ours, unit }
    }

    /// Ours over the paper's, when the paper has a number and it is not 0.
    pub fn ratio(&self) -> Option<f64> {
        self.paper.as_ref().filter(|c| c.value != 0.0).map(|c| self.ours / c.value)
    }
}

/// One claim of the paper as one sweep folder shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `windowing`, `bundling`, `predictor`, `sparsity` or `cost model`.
    pub topic: &'static str,
    pub title: String,
    /// The sweep folder, as found from `DIR` (for commands).
    pub sweep: PathBuf,
    pub planted: bool,
    pub lines: Vec<Line>,
    /// Chart links relative to the report's folder.
    pub charts: Vec<String>,
    /// What the numbers are and are not, computed from the same data where they carry numbers.
    pub notes: Vec<String>,
}

/// What `spike report` built.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `DIR/REPORT.md`.
    pub path: PathBuf,
    /// The sweep folders read.
    pub sweeps: Vec<PathBuf>,
    pub sections: Vec<Section>,
    /// The latency tables read (Tables 2 and 3, Fig. 1): bench summaries and paper-scale `table3.csv` files.
    pub latency: Vec<LatencyTable>,
    /// The paper's claims no folder speaks to.
    pub missing: Vec<String>,
    pub markdown: String,
}

/// The topics a report covers, with what a sweep needs to show each (for the `missing` list).
const TOPICS: [(&str, &str); 7] = [
    ("windowing", "Fig. 4a and the windowing trade-off: a sweep over `window` (experiments/specs/window-default.toml)"),
    ("bundling", "row-column bundling: `layout` bundled and split (experiments/specs/bundling-default.toml)"),
    ("predictor", "the predictor's accuracy: `selection = \"predictor\"` over `rank` (experiments/specs/predictor-rank-default.toml)"),
    ("sparsity", "perplexity vs sparsity: `sparsity` with the oracle and the predictor (experiments/specs/sparsity-default.toml)"),
    ("cost model", "the cost model: a sweep with `profile` (experiments/specs/cost-model-default.toml)"),
    ("table 2", "Table 2 (bytes and I/O time per token): a flash bench summary (`spike bench --layout ... --csv DIR/flash/bench.csv` writes DIR/flash/bench.summary.csv) or a paper-scale DIR/paper-scale/*/table3.csv"),
    ("table 3", "Table 3 and Fig. 1 (latency per token: I/O, memory management, compute): the same files as Table 2"),
];

/// The sweep folders of `dir`: `dir` itself when it is one, else its subfolders and those of `dir/sweeps`
/// that are, in name order.
pub fn sweep_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let is_sweep = |d: &Path| output::Files::of(d).raw.exists() && output::Files::of(d).info.exists();
    if is_sweep(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        return Err(Error::Invalid(format!("{}: not a folder", dir.display())));
    }
    let mut found = Vec::new();
    for parent in [dir.to_path_buf(), dir.join("sweeps")] {
        if !parent.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&parent).map_err(|e| Error::Io { path: parent.clone(), source: e })?;
        for e in entries {
            let e = e.map_err(|e| Error::Io { path: parent.clone(), source: e })?;
            if is_sweep(&e.path()) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Builds the report of `dir` (see the module documentation) without writing it.
pub fn build(dir: &Path) -> Result<Report> {
    let sweeps = sweep_dirs(dir)?;
    let latency_files = latency::files(dir)?;
    if sweeps.is_empty() && latency_files.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no sweep folders (raw.csv and sweep.json) in it or in {}, and no flash bench summary \
             (bench.summary.csv in it, flash/ or bench/) or paper-scale table3.csv",
            dir.display(),
            dir.join("sweeps").display()
        )));
    }
    let latency = latency_files.iter().map(|f| LatencyTable::read(f)).collect::<Result<Vec<_>>>()?;
    let mut sections = Vec::new();
    let mut header = Vec::new();
    for s in &sweeps {
        let data = SweepData::read(s)?;
        let info: SweepInfo = output::read_json(&output::Files::of(s).info)?;
        header.push(describe(s, dir, &data, &info)?);
        for topic in [windowing, bundling, predictor, sparsity, cost_model] {
            if let Some(mut sec) = topic(&data)? {
                sec.sweep = s.clone();
                sec.charts = sec.charts.iter().filter_map(|c| link(dir, s, c)).collect();
                sections.push(sec);
            }
        }
    }
    // The paper's order: windowing, bundling, the predictor, sparsity, the cost model; folders in name order
    // within a topic.
    sections.sort_by_key(|s| TOPICS.iter().position(|(t, _)| *t == s.topic).unwrap_or(TOPICS.len()));
    let mut covered: BTreeSet<&str> = sections.iter().map(|s| s.topic).collect();
    if !latency.is_empty() {
        covered.extend(["table 2", "table 3"]);
    }
    let missing = TOPICS.iter().filter(|(t, _)| !covered.contains(t)).map(|(_, what)| what.to_string()).collect();
    let mut report =
        Report { path: dir.join("REPORT.md"), sweeps, sections, latency, missing, markdown: String::new() };
    report.markdown = markdown(dir, &report, &header)?;
    Ok(report)
}

/// Draws the latency charts of `dir`'s bench summaries and paper-scale tables (from their CSV files), builds
/// the report of `dir` and writes it to `dir/REPORT.md`.
pub fn write(dir: &Path) -> Result<Report> {
    for f in latency::files(dir)? {
        latency::plot(&f)?;
    }
    let report = build(dir)?;
    spike_flash::io::write_atomic(&report.path, |w| w.write_all(report.markdown.as_bytes()))?;
    Ok(report)
}

/// The chart `file` of sweep folder `sweep`, as a link relative to `dir`: its SVG if there is one, else its
/// PNG; `None` when neither was drawn.
fn link(dir: &Path, sweep: &Path, file: &str) -> Option<String> {
    let rel = sweep.strip_prefix(dir).unwrap_or(sweep);
    ["svg", "png"].iter().find_map(|ext| {
        let name = format!("{file}.{ext}");
        sweep.join(&name).exists().then(|| {
            let p = rel.join(&name);
            p.to_string_lossy().replace('\\', "/")
        })
    })
}

/// A sweep folder's line in the report's list: where it ran, on what, and the commands.
fn describe(s: &Path, dir: &Path, data: &SweepData, info: &SweepInfo) -> Result<String> {
    let machine: serde_json::Value = output::read_json(&output::Files::of(s).machine).unwrap_or_default();
    let host = match (&machine["cpu"], &machine["merged_from"]) {
        (serde_json::Value::String(cpu), _) => {
            let load = machine["load_average"]
                .as_f64()
                .map_or_else(String::new, |l| format!(", load average {l:.1} at the start"));
            let cores = machine["cores"].as_u64().map_or_else(String::new, |c| format!(", {c} cores"));
            let commit = machine["commit"].as_str().map_or_else(String::new, |c| format!(", commit {c}"));
            format!("{cpu}{cores}{load}{commit}")
        }
        (_, serde_json::Value::Array(shards)) => format!("merged from {} shards (machine.json)", shards.len()),
        _ => "machine not recorded".to_string(),
    };
    let rel = s.strip_prefix(dir).unwrap_or(s).display().to_string();
    let tokens = data.points.first().map_or(0, |p| p.prompts * p.gen_tokens);
    Ok(format!(
        "- [`{rel}`]({rel}/): sweep `{}`, {} of {} points, {} model, {tokens} decoded tokens per point; {host}.\n  \
         Made by `{}`; charts by `spike sweep plot {}`.",
        info.name,
        info.points_done,
        info.points_total,
        data.kind(),
        command(s, info),
        s.display()
    ))
}

/// The command that ran sweep folder `s`.
fn command(s: &Path, info: &SweepInfo) -> String {
    match &info.spec_path {
        Some(spec) => format!("spike sweep {spec} -o {}", s.display()),
        None => format!("spike sweep {} -o {}", s.join("spec.toml").display(), s.display()),
    }
}

fn claim(id: &str) -> Result<Claim> {
    paper::claim(id)
}

/// Windowing: the FFN read per token without a window and with K = 5, and held by the window at K = 5.
fn windowing(data: &SweepData) -> Result<Option<Section>> {
    let with_k: Vec<&PointRows> = data.points.iter().filter(|p| p.setting("window").parse::<u32>().is_ok()).collect();
    let ks: BTreeSet<u32> = with_k.iter().filter_map(|p| p.setting("window").parse().ok()).collect();
    if ks.len() < 2 {
        return Ok(None);
    }
    let groups = plot::groups(with_k.iter().copied(), &["window"]);
    let names = plot::series_labels(&groups);
    let mut lines = Vec::new();
    let mut without: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (key, pts) in &groups {
        let at = |k: u32| pts.iter().find(|p| p.setting("window") == k.to_string());
        let setting = |k: u32| format!("K = {k}, {}", names[key]);
        for (k, metric, id) in [
            (0, "new_per_token_share", "window_new_k0"),
            (5, "new_per_token_share", "window_new_k5"),
            (5, "window_held_share", "window_held_k5"),
        ] {
            let c = claim(id)?;
            match at(k).and_then(|p| p.metric(metric)) {
                Some(v) => lines.push(Line::vs(&c, setting(k), v, "share")),
                None => without.entry(k).or_default().push(names[key].clone()),
            }
        }
        if let Some(a) = at(0).and_then(|p| p.metric("active_share")) {
            let c = claim("ffn_active")?;
            lines.push(Line::vs(&c, setting(0), a, "share"));
        }
    }
    Ok(Some(Section {
        topic: "windowing",
        title: "Windowing (Fig. 4a): aggregated neuron usage and data read per token".into(),
        sweep: PathBuf::new(),
        planted: with_k.iter().any(|p| p.planted),
        lines,
        charts: vec!["window-usage".into(), "window-tradeoff".into()],
        notes: without
            .into_iter()
            .map(|(k, who)| {
                format!(
                    "No point at K = {k} ({}): the paper's numbers at K = {k} are not compared here.",
                    who.join("; ")
                )
            })
            .chain(std::iter::once(
                "The more neurons a token activates, the faster the window fills: compare the active shares first."
                    .into(),
            ))
            .collect(),
    }))
}

/// Bundling: bundled over split, per record type, of the read size and the read throughput.
fn bundling(data: &SweepData) -> Result<Option<Section>> {
    let layouts: BTreeSet<&str> = data.points.iter().map(|p| p.setting("layout")).collect();
    if !(layouts.contains("bundled") && layouts.contains("split")) {
        return Ok(None);
    }
    let (chunk, split_t, bundled_t) =
        (claim("bundling_chunk")?, claim("throughput_split")?, claim("throughput_bundled")?);
    // The paper gives the two throughputs and the two I/O times; their ratios are the claims that travel
    // between devices.
    let t_ratio = Claim::ratio(&bundled_t, &split_t, "read throughput, bundled over split");
    let (io_w, io_b) = (claim("table2_io_window")?, claim("table2_io_bundled")?);
    let io_ratio = Claim::ratio(&io_w, &io_b, "I/O time per token, split over bundled");
    let groups = plot::groups(data.points.iter(), &["layout", "dtype"]);
    let names = plot::series_labels(&groups);
    let many = groups.len() > 1;
    let mut lines = Vec::new();
    for (key, pts) in &groups {
        let mut dtypes: Vec<(f64, &str)> =
            pts.iter().map(|p| (p.metric("record_bytes").unwrap_or(f64::NAN), p.setting("dtype"))).collect();
        dtypes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        dtypes.dedup_by(|a, b| a.1 == b.1);
        for (_, dtype) in dtypes {
            let of = |layout: &str| pts.iter().find(|p| p.setting("dtype") == dtype && p.setting("layout") == layout);
            let (Some(b), Some(s)) = (of("bundled"), of("split")) else { continue };
            let record = b.metric("record_bytes").map_or_else(String::new, |r| format!(", {r:.0} B per neuron"));
            let setting = if many { format!("{dtype}{record}, {}", names[key]) } else { format!("{dtype}{record}") };
            let ratio = |m: &str| Some(b.metric(m)? / s.metric(m)?);
            if let Some(v) = ratio("mean_read_bytes") {
                lines.push(Line::vs(&chunk, setting.clone(), v, "ratio"));
            }
            if let Some(v) = ratio("io_mb_s") {
                lines.push(Line::vs(&t_ratio, setting.clone(), v, "ratio"));
            }
            if let Some(v) = ratio("io_ms") {
                lines.push(Line::vs(&io_ratio, setting.clone(), 1.0 / v, "ratio"));
            }
            if let Some(v) = ratio("mb_read_per_token") {
                lines.push(Line::ours("bytes read per token, bundled over split", setting.clone(), v, "ratio"));
            }
            for (p, layout) in [(b, "bundled"), (s, "split")] {
                let payload =
                    (|| Some(p.metric("neurons_read")? * p.metric("record_bytes")? / p.metric("bytes_read")?))();
                if let Some(v) = payload {
                    lines.push(Line::ours(
                        format!("records' bytes over bytes read from the device, {layout}"),
                        setting.clone(),
                        v,
                        "share",
                    ));
                }
            }
        }
    }
    let (lo, hi) = data
        .points
        .iter()
        .filter_map(|p| p.metric("io_mb_s"))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    Ok(Some(Section {
        topic: "bundling",
        title: "Row-column bundling: read size and throughput, bundled vs split".into(),
        sweep: PathBuf::new(),
        planted: data.points.iter().any(|p| p.planted),
        lines,
        charts: vec!["bundling-read-size".into(), "bundling-throughput".into(), "bundling-bytes".into()],
        notes: vec![
            format!(
                "Absolute throughputs compare devices, not layouts: the paper's {} GB/s unbundled and {} GB/s bundled ({}) \
                 against {:.2} to {:.2} GB/s over these points (bytes read over the read wait, median over tokens); the \
                 bundled-over-split ratios are the comparable figures.",
                number(split_t.value, 3),
                number(bundled_t.value, 3),
                bundled_t.model,
                lo / 1e3,
                hi / 1e3
            ),
            "Reads are aligned to the device's blocks: a record smaller than a block costs a whole block, so the share \
             of the bytes read that are records' bytes tells what bundling saves before any change in throughput; and \
             where a token's neurons lie close together, neighbouring reads merge, which makes the split layout's reads \
             the longer ones."
                .into(),
        ],
    }))
}

/// The predictor: false negatives, false positives and over-prediction, means over layers, per trained
/// predictor.
fn predictor(data: &SweepData) -> Result<Option<Section>> {
    let trained: Vec<&PointRows> = data.points.iter().filter(|p| p.layers.contains_key("valid_recall")).collect();
    if trained.is_empty() {
        return Ok(None);
    }
    let (fnr, fp, over, rank) =
        (claim("predictor_fnr")?, claim("predictor_fp")?, claim("predictor_over")?, claim("predictor_rank")?);
    let groups = plot::groups(trained.iter().copied(), &[]);
    let names = plot::series_labels(&groups);
    let mut lines = Vec::new();
    let mut ordered: Vec<_> = groups.iter().collect();
    ordered.sort_by_key(|(_, pts)| pts[0].setting("rank").parse::<usize>().unwrap_or(0));
    for (key, pts) in ordered {
        let p = pts[0];
        let setting = names[key].clone();
        if let Some(v) = p.metric("valid_false_negative_rate") {
            lines.push(Line::vs(&fnr, setting.clone(), v, "share"));
        }
        if let Some(v) = plot::false_positive_share(p) {
            lines.push(Line::vs(&fp, setting.clone(), v, "share"));
        }
        if let Some(v) = p.metric("valid_predicted_true_ratio") {
            lines.push(Line::vs(&over, setting.clone(), v, "ratio"));
        }
        if let Some(v) = p.metric("active_share") {
            lines.push(Line::ours("neurons computed per token in the flash loop (the prompts)", setting, v, "share"));
        }
    }
    let fp_times = lines
        .iter()
        .filter(|l| l.paper.as_ref().is_some_and(|c| c.id == "predictor_fp"))
        .filter_map(Line::ratio)
        .fold(f64::INFINITY, f64::min);
    let recall = trained.iter().filter_map(|p| p.metric("valid_recall")).fold(f64::NAN, f64::max);
    let truly = trained.iter().filter_map(|p| p.metric("valid_true_active_fraction")).fold(f64::NAN, f64::max);
    let (pa, ta, fnr_v) = (fp.value, over.value, fnr.value);
    let active = claim("ffn_active")?.value;
    Ok(Some(Section {
        topic: "predictor",
        title: "The low-rank predictor's accuracy (validation split of the trace)".into(),
        sweep: PathBuf::new(),
        planted: trained.iter().any(|p| p.planted),
        lines,
        charts: vec!["predictor-layers".into(), "predictor-rank".into()],
        notes: vec![
            format!(
                "Each layer's decision threshold is set on the validation split to keep a fixed share of the truly active \
                 neurons (recall {recall:.3} here), so false negatives are fixed by construction and the over-prediction \
                 and false positives are what the predictor's quality decides. The paper's predictor has rank {} ({} layers).",
                rank.value, rank.model
            ),
            format!(
                "Over-prediction is bounded by the active share: with {:.1}% of the neurons truly active (mean over layers, \
                 validation split), predicting every neuron is {:.2}x. A ratio below the paper's is therefore no better \
                 predictor; the false positives, {:.0}x the paper's share or more here, say what it costs.",
                100.0 * truly,
                1.0 / truly,
                fp_times.floor()
            ),
            format!(
                "False positives are read as a share of all neurons (predicted active share minus recall x truly active \
                 share, per layer): with {:.1}% active and {ta}x over-prediction the paper's numbers give {:.1}%, its {:.0}%.",
                100.0 * active,
                100.0 * active * (ta - (1.0 - fnr_v)),
                100.0 * pa
            ),
        ],
    }))
}

/// Perplexity against the sparsity: each point's prompt perplexity and its ratio to the dense point's.
fn sparsity(data: &SweepData) -> Result<Option<Section>> {
    let Ok(sparse) = plot::sparsity_points(data) else { return Ok(None) };
    let dense = plot::dense_points(data, &sparse).into_iter().find_map(|p| p.metric("prompt_perplexity"));
    let mut lines = Vec::new();
    if let Some(d) = dense {
        lines.push(Line::ours("perplexity of the prompts, every neuron", "selection all", d, "perplexity"));
    }
    let mut pts = sparse.clone();
    pts.sort_by(|a, b| {
        (a.setting("selection"), a.setting("sparsity")).cmp(&(b.setting("selection"), b.setting("sparsity")))
    });
    for p in pts {
        let setting = format!("selection {}, target sparsity {}", p.setting("selection"), p.setting("sparsity"));
        if let Some(v) = p.metric("prompt_perplexity") {
            lines.push(Line::ours("perplexity of the prompts", setting.clone(), v, "perplexity"));
            if let Some(d) = dense {
                lines.push(Line::ours("perplexity over every neuron's", setting.clone(), v / d, "ratio"));
            }
        }
        if let Some(v) = p.metric("active_share") {
            lines.push(Line::ours("neurons computed per token", setting, v, "share"));
        }
    }
    let c = |id: &str| claim(id);
    let (ad, ap, hd, hp) = (
        c("zeroshot_arce_dense")?,
        c("zeroshot_arce_predictor")?,
        c("zeroshot_hellaswag_dense")?,
        c("zeroshot_hellaswag_predictor")?,
    );
    Ok(Some(Section {
        topic: "sparsity",
        title: "Perplexity vs sparsity, oracle and predictor".into(),
        sweep: PathBuf::new(),
        planted: sparse.iter().any(|p| p.planted),
        lines,
        charts: vec!["sparsity-perplexity".into(), "sparsity-computed".into()],
        notes: vec![format!(
            "The paper measures the predictor's cost in zero-shot accuracy, not perplexity ({}: ArcE {} -> {}, HellaSwag \
             {} -> {}; {}), so there is no ratio to take. The prompts' perplexity here is scored in the prompt pass, each \
             token predicted from the ones before it in its prompt.",
            ad.model, ad.value, ap.value, hd.value, hp.value, ad.source
        )],
    }))
}

/// The cost model: measured over predicted I/O per token, median and spread.
fn cost_model(data: &SweepData) -> Result<Option<Section>> {
    let by_id: BTreeMap<&str, &PointRows> = data.points.iter().map(|p| (p.id.as_str(), p)).collect();
    let tokens: Vec<(&PointRows, f64)> = data
        .tokens
        .iter()
        .filter(|t| t.reads > 0 && t.predicted_io_ms > 0.0 && t.io_ms > 0.0)
        .filter_map(|t| by_id.get(t.label.as_str()).map(|p| (*p, t.io_ms / t.predicted_io_ms)))
        .collect();
    if tokens.is_empty() {
        return Ok(None);
    }
    let within = |r: &[f64]| r.iter().filter(|&&x| (0.8..=1.25).contains(&x)).count() as f64 / r.len() as f64;
    let all: Vec<f64> = tokens.iter().map(|t| t.1).collect();
    let mut lines = vec![
        Line::ours(
            "measured over predicted I/O per token (median)",
            "every token that read",
            median(all.iter().copied()),
            "ratio",
        ),
        Line::ours(
            "tokens whose measured I/O is within 0.8-1.25x the prediction",
            "every token that read",
            within(&all),
            "share",
        ),
        Line::ours("tokens compared", "every token that read", all.len() as f64, "tokens"),
    ];
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (p, r) in &tokens {
        per.entry(format!("dtype {}, layout {}", p.setting("dtype"), p.setting("layout"))).or_default().push(*r);
    }
    if per.len() > 1 {
        for (k, r) in per {
            lines.push(Line::ours(
                "measured over predicted I/O per token (median)",
                k,
                median(r.iter().copied()),
                "ratio",
            ));
        }
    }
    Ok(Some(Section {
        topic: "cost model",
        title: "The cost model: predicted vs measured I/O per token".into(),
        sweep: PathBuf::new(),
        planted: tokens.iter().any(|(p, _)| p.planted),
        lines,
        charts: vec!["cost-model".into()],
        notes: vec![
            "The paper computes I/O time as bytes over the throughput at that chunk size (its Table 2) and reports no \
             error for it; here the same model, fed by this machine's device profile, is checked token by token."
                .into(),
        ],
    }))
}

/// `v` in `unit`, as the report shows it.
fn show(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "share" if (100.0 * v).abs() >= 10.0 => format!("{:.1}%", 100.0 * v),
        "share" => format!("{:.2}%", 100.0 * v),
        "ratio" => format!("{v:.2}x"),
        "GB/s" => format!("{v:.3} GB/s"),
        "tokens" | "rank" => format!("{v:.0}"),
        "points" => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

fn markdown(dir: &Path, r: &Report, header: &[String]) -> Result<String> {
    let mut md = String::new();
    let w = |md: &mut String, s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    w(&mut md, "# Spike against the paper".into());
    w(&mut md, String::new());
    w(
        &mut md,
        format!(
            "Generated by `spike report {}` from the CSV files of the sweep folders and flash bench tables below: every number of ours is \
             computed from them, the paper's come from `experiments/paper/claims.csv` (each with where the paper gives \
             it). Regenerate it rather than edit it. Ratios are ours over the paper's. Hosts and days differ: times are \
             comparable only within one sweep.",
            dir.display()
        ),
    );
    w(&mut md, String::new());
    w(&mut md, "## Sweeps read".into());
    w(&mut md, String::new());
    for h in header {
        w(&mut md, h.clone());
    }
    if header.is_empty() {
        w(&mut md, "None.".into());
    }
    if !r.latency.is_empty() {
        w(&mut md, String::new());
        w(&mut md, "Flash bench tables read (Tables 2 and 3):".into());
        w(&mut md, String::new());
        for t in &r.latency {
            let rel = t.path.strip_prefix(dir).unwrap_or(&t.path).display().to_string();
            let kind = match t.source {
                latency::Source::BenchSummary => "a `spike bench --layout` summary",
                latency::Source::PaperScale => "a paper-scale table",
            };
            w(&mut md, format!("- `{rel}`: {kind}, {} rows, {}.", t.rows.len(), t.what()));
        }
    }
    if let Some(d) = dense_markdown(dir) {
        md.push_str(&d);
    }
    for (planted, title) in
        [(false, "Measured on real models"), (true, "Planted checkpoints (statistics planted, not learned)")]
    {
        let secs: Vec<&Section> = r.sections.iter().filter(|s| s.planted == planted).collect();
        let tables: Vec<&LatencyTable> = r.latency.iter().filter(|t| t.planted == planted).collect();
        if secs.is_empty() && tables.is_empty() {
            continue;
        }
        w(&mut md, String::new());
        w(&mut md, format!("## {title}"));
        for t in tables {
            md.push_str(&latency_markdown(dir, t)?);
        }
        for s in secs {
            w(&mut md, String::new());
            let rel = s.sweep.strip_prefix(dir).unwrap_or(&s.sweep).display().to_string();
            w(&mut md, format!("### {} (`{rel}`)", s.title));
            w(&mut md, String::new());
            w(&mut md, "| quantity | points | paper | ours | ours / paper |".into());
            w(&mut md, "|---|---|---:|---:|---:|".into());
            for l in &s.lines {
                let paper = l
                    .paper
                    .as_ref()
                    .map_or_else(|| "—".to_string(), |c| format!("{} ({})", show(c.value, &c.unit), c.model));
                let ratio = l.ratio().map_or_else(|| "—".to_string(), |x| format!("{x:.2}"));
                w(
                    &mut md,
                    format!("| {} | {} | {paper} | {} | {ratio} |", l.quantity, l.setting, show(l.ours, l.unit)),
                );
            }
            let sources: BTreeSet<&str> =
                s.lines.iter().filter_map(|l| l.paper.as_ref().map(|c| c.source.as_str())).collect();
            if !sources.is_empty() {
                w(&mut md, String::new());
                w(&mut md, format!("Paper: {}.", sources.into_iter().collect::<Vec<_>>().join("; ")));
            }
            for n in &s.notes {
                w(&mut md, String::new());
                w(&mut md, n.clone());
            }
            w(&mut md, String::new());
            if s.charts.is_empty() {
                w(&mut md, format!("Charts: none drawn yet (`spike sweep plot {}`).", s.sweep.display()));
            } else {
                let links: Vec<String> =
                    s.charts.iter().map(|c| format!("[{}]({c})", c.rsplit('/').next().unwrap_or(c))).collect();
                w(&mut md, format!("Charts: {}.", links.join(", ")));
            }
            let info: SweepInfo = output::read_json(&output::Files::of(&s.sweep).info)?;
            w(&mut md, format!("Command: `{}`.", command(&s.sweep, &info)));
        }
    }
    if !r.missing.is_empty() {
        w(&mut md, String::new());
        w(&mut md, "## Not in these sweeps".into());
        w(&mut md, String::new());
        for m in &r.missing {
            w(&mut md, format!("- {m}"));
        }
    }
    Ok(md)
}

/// A latency table as the report shows it: Table 2 (bytes, I/O time and throughput per token) for the rows that
/// stand for the paper's, Table 3 (the split of each row's time) for every row, the paper's beside ours, the
/// speed-up of everything over naive, the chart and the command.
pub fn latency_markdown(dir: &Path, t: &LatencyTable) -> Result<String> {
    let mut md = String::new();
    let mut w = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    let rel = t.path.strip_prefix(dir).unwrap_or(&t.path).display().to_string();
    let ms = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "n/a".to_string() };
    let gb = |v: f64| if v.is_finite() { format!("{v:.4}") } else { "n/a".to_string() };
    w(String::new());
    let what = if t.planted { format!(", {}", t.what()) } else { String::new() };
    w(format!("### Tables 2 and 3 and Fig. 1: bytes, I/O and latency per token{what} (`{rel}`)"));
    w(String::new());
    let paper_rows: Vec<(PaperRow, &latency::LatencyRow)> =
        PaperRow::ALL.iter().filter_map(|&p| t.row_for(p).map(|r| (p, r))).collect();
    if paper_rows.is_empty() {
        w("No row stands for a row of the paper's Table 2 (naive, hybrid, the predictor and predictor + window \
           rows on the split layout, predictor + window on the bundled one)."
            .into());
    } else {
        let shares = paper_rows.iter().any(|(_, r)| r.share_of_model.is_finite());
        w("Table 2 (OPT 6.7B fp16, half the model in DRAM, in the paper): flash bytes and I/O time per token.".into());
        w(String::new());
        if shares {
            w("| our row | paper's row | GB read: ours | paper | share of the model: ours | paper | I/O ms: ours | paper | GB/s: ours | paper |".into());
            w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|".into());
        } else {
            w("| our row | paper's row | GB read: ours | paper | I/O ms: ours | paper | GB/s: ours | paper |".into());
            w("|---|---|---:|---:|---:|---:|---:|---:|".into());
        }
        for (p, r) in &paper_rows {
            let (pgb, pio, ptp) = latency::paper_table2(*p)?;
            let tp = if r.io_ms > 0.0 { r.gb_read_per_token / (r.io_ms / 1e3) } else { f64::NAN };
            let share = if shares {
                let paper_share = pgb / latency::PAPER_MODEL_GB;
                format!(" {} | {} |", show(r.share_of_model, "share"), show(paper_share, "share"))
            } else {
                String::new()
            };
            w(format!(
                "| {} | {} | {} | {} |{share} {} | {} | {} | {} |",
                r.row,
                p.name(),
                gb(r.gb_read_per_token),
                number(pgb, 2),
                ms(r.io_ms),
                number(pio, 0),
                if tp.is_finite() { format!("{tp:.3}") } else { "n/a".into() },
                number(ptp, 2)
            ));
        }
        w(String::new());
    }
    w("Table 3: ms per decoded token (median over tokens), split as the paper splits it; the paper's row beside \
       ours where it has one (OPT 6.7B on an M1 Max CPU)."
        .into());
    w(String::new());
    w("| row | I/O | memory management | compute | total | tokens/s | paper: I/O / mem / compute / total |".into());
    w("|---|---:|---:|---:|---:|---:|---|".into());
    for r in &t.rows {
        let paper = match r.paper_row.map(latency::paper_table3).transpose()?.flatten() {
            Some([io, mem, compute, total]) => {
                format!("{} / {} / {} / {} ({})", io, mem, compute, total, r.paper_row.map_or("", PaperRow::name))
            }
            None => "—".into(),
        };
        w(format!(
            "| {} | {} | {} | {} | {} | {:.2} | {paper} |",
            r.row,
            ms(r.io_ms),
            ms(r.mem_ms),
            ms(r.compute_ms),
            ms(r.total_ms),
            r.tokens_per_s
        ));
    }
    if let (Some(n), Some(a)) = (t.row_for(PaperRow::Naive), t.row_for(PaperRow::Bundling)) {
        let (pn, pa) = (
            latency::paper_table3(PaperRow::Naive)?.expect("Table 3 has naive"),
            latency::paper_table3(PaperRow::Bundling)?.expect("Table 3 has all"),
        );
        w(String::new());
        w(format!(
            "Everything over naive (`{}` against `{}`): {:.2}x faster end to end, I/O {:.1}x smaller; the paper's \
             {:.2}x and {:.1}x (CPU: {} / {} ms and {} / {} ms).",
            a.row,
            n.row,
            n.total_ms / a.total_ms,
            n.io_ms / a.io_ms.max(1e-9),
            pn[3] / pa[3],
            pn[0] / pa[0],
            pn[3],
            pa[3],
            pn[0],
            pa[0]
        ));
    }
    w(String::new());
    w(if t.planted {
        "Planted: the checkpoint's weights were constructed so that its ReLU activations have the paper's OPT \
         statistics; the reads and the compute are real, the model is not trained. The paper's model is OPT 6.7B \
         at fp16 on an M1 Max: compare the ratios between rows, not the milliseconds."
            .into()
    } else {
        "Measured on a real model. The paper's model is OPT 6.7B at fp16 (13.4 GB) on an M1 Max: compare the \
         ratios between rows, not the milliseconds."
            .into()
    });
    w(String::new());
    let chart = t.path.with_file_name(format!("{}.svg", t.chart_stem()));
    let png = chart.with_extension("png");
    let drawn = [chart, png].into_iter().find(|c| c.exists());
    match drawn {
        Some(c) => {
            let link = c.strip_prefix(dir).unwrap_or(&c).display().to_string().replace('\\', "/");
            let name = link.rsplit('/').next().unwrap_or(&link).to_string();
            w(format!("Chart: [{name}]({link})."));
        }
        None => w("Chart: none drawn yet (`spike report` draws it).".into()),
    }
    w(match t.source {
        latency::Source::BenchSummary => format!(
            "Made by `spike bench --layout LAYOUT --budget B --csv {}` (its summary); the chart by `spike report`.",
            t.path.display().to_string().replace(".summary.csv", ".csv")
        ),
        latency::Source::PaperScale => {
            "Made by `bash scripts/paper-scale.sh` (or `spike reproduce --paper-scale`); the chart by `spike report`."
                .into()
        }
    });
    Ok(md)
}

/// The dense checks of a `spike reproduce` run (`DIR/dense/generate.json`, `DIR/dense/perplexity.json`) beside
/// llama.cpp's reference numbers, when the run folder has them.
fn dense_markdown(dir: &Path) -> Option<String> {
    let read = |name: &str| -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("dense").join(name)).ok()?;
        serde_json::from_str(&text).ok()
    };
    let (generate, ppl) = (read("generate.json"), read("perplexity.json"));
    if generate.is_none() && ppl.is_none() {
        return None;
    }
    let mut md = String::from("\n## Dense checks (`dense/`)\n\n");
    if let Some(g) = generate {
        md.push_str(&format!(
            "- Greedy continuation of {:?}: {:?}; llama.cpp's: \" Paris.\" then a blank line (docs/reference-numbers.md).\n",
            g["prompt"].as_str().unwrap_or(""),
            g["text"].as_str().unwrap_or("")
        ));
    }
    if let Some(p) = ppl {
        let r = &p["result"];
        let whole = p["whole_text"].as_bool().unwrap_or(false);
        md.push_str(&format!(
            "- GPL-3 perplexity at context {}: {:.3} +/- {:.3} over {} chunks{}; llama.cpp's, over the whole text: 18.35 \
             (docs/reference-numbers.md).\n",
            r["n_ctx"].as_u64().unwrap_or(0),
            r["ppl"].as_f64().unwrap_or(f64::NAN),
            r["stderr"].as_f64().unwrap_or(f64::NAN),
            r["chunks"].as_u64().unwrap_or(0),
            if whole { " (the whole text)" } else { " (the first chunks only: --quick)" }
        ));
    }
    Some(md)
}
