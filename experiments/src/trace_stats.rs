//! Statistics of an activation trace as CSV and a summary (`spike trace-stats`): sparsity, concentration,
//! token-to-token reuse and co-activation per layer and setting, and per-layer neuron frequencies for a pinned
//! hot set.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use predictor::calibrate::Thresholds;
use predictor::metrics::Confusion;
use predictor::stats::{layer_stats, reuse, ActiveSets, HotSet, LayerStats, ReuseRow, StatsConfig};
use predictor::trace::Trace;
use spike_flash::model::config::Activation;

use crate::summary::write_csv;
use crate::{Error, Result};

/// One way to decide "active": a name and per-layer thresholds.
pub struct Setting {
    pub name: String,
    pub slug: String,
    pub thresholds: Vec<f32>,
}

#[derive(serde::Serialize)]
struct SparsityRow<'a> {
    setting: &'a str,
    layer: usize,
    threshold: f32,
    sparsity_train: f64,
    sparsity_valid: f64,
    sparsity_all: f64,
    concentration_mass: f64,
    concentration_count: f64,
}

#[derive(serde::Serialize)]
struct ReuseCsv<'a> {
    setting: &'a str,
    layer: String,
    k: usize,
    tokens: usize,
    active: f64,
    reuse: f64,
    held: f64,
    loaded: f64,
    reuse_independent: f64,
    held_independent: f64,
}

#[derive(serde::Serialize)]
struct CoactRow<'a> {
    setting: &'a str,
    layer: usize,
    neuron: u32,
    neuron_fires: u64,
    neuron_freq: f64,
    neuron_freq_rank: usize,
    friend_rank: usize,
    friend: u32,
    together: u64,
    p_friend_given_neuron: f64,
    friend_freq: f64,
    friend_freq_rank: usize,
    lift: f64,
}

#[derive(serde::Serialize)]
struct CoactSummaryRow<'a> {
    setting: &'a str,
    layer: usize,
    sampled: usize,
    mean_p_top1: f64,
    mean_top1_freq: f64,
    mean_top1_lift: f64,
    top1_in_hottest_1pct: f64,
    mean_top1_rank_frac: f64,
    distinct_top1: usize,
}

/// One layer's predicted sets, measured against the true ones (`predictor.csv`).
#[derive(serde::Serialize)]
struct PredictorRow<'a> {
    setting: &'a str,
    layer: usize,
    tokens: usize,
    true_active: f64,
    predicted_active: f64,
    false_negative_rate: f64,
    predicted_true_ratio: f64,
}

/// What `spike trace-stats` measures at: thresholds files, sparsities to calibrate on the training split,
/// magnitudes for every layer, predictors whose predicted sets are measured like active sets; and how the
/// trace is split and sampled.
#[derive(Debug, Clone, Default)]
pub struct TraceStatsConfig {
    pub thresholds: Vec<PathBuf>,
    /// Predictor files (`spike train-predictor`): per token, the predicted set (what the flash loop's
    /// window caches) gets the reuse statistics, and is compared with the true set (the predictor's own
    /// activation threshold) over every token of the trace.
    pub predictors: Vec<PathBuf>,
    pub sparsity: Vec<f64>,
    pub abs_threshold: Vec<f32>,
    /// Fraction of the tokens (whole documents) held out for validation.
    pub valid_fraction: f64,
    /// Seed of the document split and of the co-activation sample.
    pub seed: u64,
    /// Longest reuse window k.
    pub k_max: usize,
    /// Neurons sampled per layer for co-activation.
    pub coact_sample: usize,
}

/// The settings `args` asks for on `trace` (a ReLU model is always measured at threshold 0).
pub fn settings(args: &TraceStatsConfig, trace: &Trace) -> Result<Vec<Setting>> {
    let meta = trace.meta();
    let n = meta.n_layers;
    let mut out = Vec::new();
    let relu = meta.activation == Activation::Relu;
    if relu {
        out.push(Setting { name: "relu (threshold 0)".into(), slug: "relu".into(), thresholds: vec![0.0; n] });
        if !args.sparsity.is_empty() {
            eprintln!("note: ReLU model: the sparsities are ignored, threshold 0 is exact");
        }
    }
    for p in &args.thresholds {
        let t = Thresholds::load(p)?;
        t.check_model(p, &meta.identity())
            .map_err(|e| Error::Invalid(format!("using {} with {}: {e}", p.display(), trace.path().display())))?;
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match t.target_sparsity {
            Some(s) => format!("{} (sparsity {s})", p.display()),
            None => format!("{} (relu)", p.display()),
        };
        out.push(Setting { name, slug: stem, thresholds: t.thresholds });
    }
    let mut sparsities = args.sparsity.clone();
    if !relu && sparsities.is_empty() && args.thresholds.is_empty() && args.abs_threshold.is_empty() {
        sparsities = vec![0.5, 0.7];
    }
    if !relu {
        for &s in &sparsities {
            eprintln!("calibrating thresholds for sparsity {s} on the training split");
            let t = Thresholds::calibrate(trace, s, args.valid_fraction, args.seed, &mut |_| {})?;
            out.push(Setting {
                name: format!("sparsity {s} (calibrated on the training split)"),
                slug: format!("s{s:.2}"),
                thresholds: t.thresholds,
            });
        }
    }
    for &a in &args.abs_threshold {
        if !(a.is_finite() && a >= 0.0) {
            return Err(Error::Invalid(format!("the magnitude threshold {a} must be a finite non-negative number")));
        }
        out.push(Setting {
            name: format!("|activation| > {a} in every layer"),
            slug: format!("abs{a}"),
            thresholds: vec![a; n],
        });
    }
    Ok(out)
}

/// A predictor's measurement in one layer.
struct PredictedLayer {
    layer: usize,
    confusion: Confusion,
}

/// The mean over layers of each layer's reuse row for window `k + 1` (the token count of the first layer).
fn mean_reuse<'r>(layers: impl Iterator<Item = &'r [ReuseRow]> + Clone, k: usize) -> ReuseRow {
    let m = |g: fn(&ReuseRow) -> f64| range(layers.clone().map(|l| g(&l[k]))).0;
    ReuseRow {
        k: k + 1,
        tokens: layers.clone().next().map_or(0, |l| l[k].tokens),
        active: m(|r| r.active),
        reuse: m(|r| r.reuse),
        held: m(|r| r.held),
        loaded: m(|r| r.loaded),
        reuse_independent: m(|r| r.reuse_independent),
        held_independent: m(|r| r.held_independent),
    }
}

fn reuse_csv<'a>(setting: &'a str, layer: String, r: &ReuseRow) -> ReuseCsv<'a> {
    ReuseCsv {
        setting,
        layer,
        k: r.k,
        tokens: r.tokens,
        active: r.active,
        reuse: r.reuse,
        held: r.held,
        loaded: r.loaded,
        reuse_independent: r.reuse_independent,
        held_independent: r.held_independent,
    }
}

fn range(v: impl Iterator<Item = f64> + Clone) -> (f64, f64, f64) {
    let n = v.clone().count().max(1) as f64;
    let mean = v.clone().sum::<f64>() / n;
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(f64::NEG_INFINITY, f64::max);
    (mean, lo, hi)
}

fn summary(setting: &Setting, layers: &[LayerStats], k_print: usize) -> String {
    let mut s = String::new();
    let f = |v: (f64, f64, f64)| format!("{:.3} (layers {:.3}..{:.3})", v.0, v.1, v.2);
    let _ = writeln!(s, "== {}", setting.name);
    let _ = writeln!(
        s,
        "sparsity: train {}, validation {}",
        f(range(layers.iter().map(|l| l.sparsity_train))),
        f(range(layers.iter().map(|l| l.sparsity_valid)))
    );
    let _ = writeln!(
        s,
        "concentration: 80% of the activation mass is carried by {} of the neurons; 80% of the activations \
         (counted at this threshold) by {}",
        f(range(layers.iter().map(|l| l.concentration_mass))),
        f(range(layers.iter().map(|l| l.concentration_count)))
    );
    let tokens = layers.first().and_then(|l| l.reuse.first()).map_or(0, |r| r.tokens);
    let _ = writeln!(
        s,
        "reuse, mean over {} layers ({tokens} tokens with at least {} predecessors in their segment); shares of the FFN:",
        layers.len(),
        layers.first().map_or(0, |l| l.reuse.len())
    );
    let _ = writeln!(
        s,
        "   k  reuse  held   loaded  | if tokens were independent: reuse  held  (active {:.3})",
        range(layers.iter().filter_map(|l| l.reuse.first()).map(|r| r.active)).0
    );
    let kmax = layers.first().map_or(0, |l| l.reuse.len());
    for k in 0..kmax.min(k_print) {
        let m = |g: fn(&predictor::stats::ReuseRow) -> f64| range(layers.iter().map(|l| g(&l.reuse[k]))).0;
        let _ = writeln!(
            s,
            "  {:2}  {:.3}  {:.3}  {:.4}  |                              {:.3}  {:.3}",
            k + 1,
            m(|r| r.reuse),
            m(|r| r.held),
            m(|r| r.loaded),
            m(|r| r.reuse_independent),
            m(|r| r.held_independent)
        );
    }
    let c = |g: fn(&predictor::stats::CoactSummary) -> f64| range(layers.iter().map(|l| g(&l.coact))).0;
    let sampled: usize = layers.iter().map(|l| l.coact.sampled).sum();
    let distinct: usize = layers.iter().map(|l| l.coact.distinct_top1).sum();
    let _ = writeln!(
        s,
        "co-activation ({sampled} sampled neurons): the closest friend is active with P {:.3} when the neuron is, \
         but is active with P {:.3} anyway (lift {:.2}); it is among the layer's 1% most active neurons for {:.0}% \
         of the neurons, at mean frequency rank {:.1}% of the layer; {distinct} distinct closest friends for \
         {sampled} neurons",
        c(|x| x.mean_p_top1),
        c(|x| x.mean_top1_freq),
        c(|x| x.mean_top1_lift),
        100.0 * c(|x| x.top1_in_hottest_1pct),
        100.0 * c(|x| x.mean_top1_rank_frac),
    );
    s
}

fn write_hot(path: &Path, trace: &Trace, setting: &Setting, layers: &[LayerStats], train: usize) -> Result<()> {
    let hot = HotSet::new(
        trace.meta().identity(),
        &setting.name,
        train,
        layers.iter().map(|l| (l.threshold, l.freq_train.clone())),
    );
    hot.save(path)?;
    Ok(())
}

/// Measures `trace` (at `trace_path`) at every setting of `args`, writes `sparsity.csv`, `reuse.csv`,
/// `coactivation.csv`, `coactivation-summary.csv`, `hot-<setting>.json` and `summary.txt` into `out`, and
/// returns the summary's text. Calls `progress(done, layers)` after each layer.
pub fn run(
    trace_path: &Path,
    args: &TraceStatsConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<String> {
    if args.k_max < 1 {
        return Err(Error::Invalid("the longest reuse window must be at least 1".into()));
    }
    let trace = Trace::open(trace_path)?;
    let meta = trace.meta().clone();
    let settings = settings(args, &trace)?;
    if settings.is_empty() {
        return Err(Error::Invalid("no thresholds to measure at".into()));
    }
    let (train, valid) = trace.split(args.valid_fraction, args.seed);
    let cfg = StatsConfig { k_max: args.k_max, coact_sample: args.coact_sample, seed: args.seed, ..Default::default() };
    let mut predictors = Vec::new();
    for p in &args.predictors {
        let pred = predictor::file::read(p)?;
        pred.check_model(p, &meta.identity())
            .map_err(|e| Error::Invalid(format!("using {} with {}: {e}", p.display(), trace_path.display())))?;
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        predictors.push((format!("predicted-{stem}"), pred));
    }
    let mut per: Vec<Vec<LayerStats>> = settings.iter().map(|_| Vec::new()).collect();
    let mut per_pred: Vec<Vec<(PredictedLayer, Vec<ReuseRow>)>> = predictors.iter().map(|_| Vec::new()).collect();
    for l in 0..meta.n_layers {
        let acts = trace.layer_acts(l)?;
        for (i, s) in settings.iter().enumerate() {
            per[i].push(layer_stats(l, &acts, s.thresholds[l], &meta.segments, &train, &valid, &cfg));
        }
        if !predictors.is_empty() {
            let x = trace.layer_inputs(l)?;
            for (i, (_, pred)) in predictors.iter().enumerate() {
                let layer = &pred.layers()[l];
                let logits = pred.logits(l, x.view())?;
                let truth = acts.mapv(|v| v.abs() > layer.act_threshold);
                let c = Confusion::of(logits.view(), truth.view(), layer.decision_threshold)?;
                let thr = layer.decision_threshold;
                let sets = ActiveSets::from_fn(logits.nrows(), logits.ncols(), |t, n| logits[[t, n]] > thr);
                let rows = reuse(&sets, &meta.segments, args.k_max);
                per_pred[i].push((PredictedLayer { layer: l, confusion: c }, rows));
            }
        }
        progress(l + 1, meta.n_layers);
    }

    std::fs::create_dir_all(out).map_err(|e| spike_flash::Error::io(out, e))?;
    let mut sp = Vec::new();
    let mut re = Vec::new();
    let mut co = Vec::new();
    let mut cs = Vec::new();
    let mut text = format!(
        "trace {}: {} tokens in {} documents ({} train / {} validation tokens), {} layers, d_ffn {}, {}\n",
        trace_path.display(),
        meta.n_tokens,
        trace.documents().len(),
        train.len(),
        valid.len(),
        meta.n_layers,
        meta.d_ffn,
        meta.activation.hf_name()
    );
    for (s, layers) in settings.iter().zip(&per) {
        for ls in layers {
            sp.push(SparsityRow {
                setting: &s.slug,
                layer: ls.layer,
                threshold: ls.threshold,
                sparsity_train: ls.sparsity_train,
                sparsity_valid: ls.sparsity_valid,
                sparsity_all: ls.sparsity_all,
                concentration_mass: ls.concentration_mass,
                concentration_count: ls.concentration_count,
            });
            for r in &ls.reuse {
                re.push(reuse_csv(&s.slug, ls.layer.to_string(), r));
            }
            for nf in &ls.friends {
                for (rank, fr) in nf.friends.iter().enumerate() {
                    co.push(CoactRow {
                        setting: &s.slug,
                        layer: ls.layer,
                        neuron: nf.neuron,
                        neuron_fires: nf.fires,
                        neuron_freq: nf.freq,
                        neuron_freq_rank: nf.freq_rank,
                        friend_rank: rank + 1,
                        friend: fr.neuron,
                        together: fr.together,
                        p_friend_given_neuron: fr.p_given,
                        friend_freq: fr.freq,
                        friend_freq_rank: fr.freq_rank,
                        lift: if fr.freq > 0.0 { fr.p_given / fr.freq } else { 0.0 },
                    });
                }
            }
            let c = &ls.coact;
            cs.push(CoactSummaryRow {
                setting: &s.slug,
                layer: ls.layer,
                sampled: c.sampled,
                mean_p_top1: c.mean_p_top1,
                mean_top1_freq: c.mean_top1_freq,
                mean_top1_lift: c.mean_top1_lift,
                top1_in_hottest_1pct: c.top1_in_hottest_1pct,
                mean_top1_rank_frac: c.mean_top1_rank_frac,
                distinct_top1: c.distinct_top1,
            });
        }
        for k in 0..args.k_max {
            let mean = mean_reuse(layers.iter().map(|l| &l.reuse[..]), k);
            re.push(reuse_csv(&s.slug, "mean".into(), &mean));
        }
        let hot = out.join(format!("hot-{}.json", s.slug));
        write_hot(&hot, &trace, s, layers, train.len())?;
        text.push_str(&summary(s, layers, args.k_max));
        let _ = writeln!(text, "hot set (neurons by training-split frequency): {}", hot.display());
    }
    let mut pr = Vec::new();
    for ((slug, pred), layers) in predictors.iter().zip(&per_pred) {
        let mut all = Confusion::default();
        for (pl, rows) in layers {
            let c = &pl.confusion;
            all.tp += c.tp;
            all.fp += c.fp;
            all.fn_ += c.fn_;
            all.tn += c.tn;
            pr.push(PredictorRow {
                setting: slug,
                layer: pl.layer,
                tokens: (c.total() / meta.d_ffn.max(1) as u64) as usize,
                true_active: c.truly_active() as f64 / c.total().max(1) as f64,
                predicted_active: c.predicted_active() as f64 / c.total().max(1) as f64,
                false_negative_rate: c.false_negative_rate(),
                predicted_true_ratio: c.predicted_true_ratio(),
            });
            for r in rows {
                re.push(reuse_csv(slug, pl.layer.to_string(), r));
            }
        }
        let reuse_rows: Vec<&Vec<ReuseRow>> = layers.iter().map(|(_, r)| r).collect();
        let _ = writeln!(
            text,
            "== {slug}: the predictor's predicted sets (target recall {:.2}) over every token of this trace\n\
             true active {:.4}, predicted {:.4}: false negatives {:.4}, predicted/true {:.3} (all layers pooled)",
            pred.target_recall(),
            all.truly_active() as f64 / all.total().max(1) as f64,
            all.predicted_active() as f64 / all.total().max(1) as f64,
            all.false_negative_rate(),
            all.predicted_true_ratio()
        );
        let _ = writeln!(text, "   k  reuse  held   loaded  (shares of the FFN, mean over layers)");
        for k in 0..args.k_max {
            let mean = mean_reuse(reuse_rows.iter().map(|l| &l[..]), k);
            let _ = writeln!(text, "  {:2}  {:.3}  {:.3}  {:.4}", k + 1, mean.reuse, mean.held, mean.loaded);
            re.push(reuse_csv(slug, "mean".into(), &mean));
        }
    }
    if !pr.is_empty() {
        write_csv(&out.join("predictor.csv"), pr)?;
    }
    write_csv(&out.join("sparsity.csv"), sp)?;
    write_csv(&out.join("reuse.csv"), re)?;
    write_csv(&out.join("coactivation.csv"), co)?;
    write_csv(&out.join("coactivation-summary.csv"), cs)?;
    spike_flash::io::write_atomic(&out.join("summary.txt"), |w| w.write_all(text.as_bytes()))?;
    Ok(text)
}
