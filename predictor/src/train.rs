//! Training low-rank predictors: per layer, `logits = (x A) B + bias` fitted to the true active sets with a
//! class-balanced binary cross-entropy and Adam in mini-batches; then a decision threshold chosen on the
//! validation split for a target recall, and the validation metrics. Layers train in parallel (rayon).

use std::time::Instant;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis, Slice};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::lowrank::{LowRank, RankSpec};
use crate::metrics::{threshold_for_recall, Confusion, LayerMetrics};
use crate::select::{LayerPredictor, Predictor};
use crate::trace::{ModelIdentity, Trace};
use crate::{Error, Result};

/// The bias learns this many times faster than the factors. Adam moves every parameter by about the learning
/// rate per step; the factors scale the logits multiplicatively (`A` and `B` both grow), the bias only
/// additively, and on separable data (a ReLU FFN's active sets) it must follow the logits' growing scale.
/// With the same rate it lags: on the planted-structure test, held-out precision at recall 0.99 is 0.86 with
/// the same rate and 0.96 with ten times it.
pub const BIAS_LR_SCALE: f32 = 10.0;

/// Optimisation settings of one layer's training.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training tokens. Default 10.
    pub epochs: usize,
    /// Tokens per mini-batch. Default 256.
    pub batch: usize,
    /// Adam's peak learning rate; it decays along a half cosine to a tenth of this by the last step.
    /// Default 5e-3.
    pub lr: f32,
    /// Seed of the initial weights and the batch order (layer `l` uses `seed + l`). Default 0.
    pub seed: u64,
    /// How much each active (token, neuron) pair weighs among the positives. Default: all alike.
    pub positives: Positives,
}

/// The weight of one active (token, neuron) pair in the loss, relative to the other active pairs (all the
/// positives together weigh as much as all the negatives either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Positives {
    /// Every active pair alike: the loss counts pairs, as recall does.
    #[default]
    Count,
    /// In proportion to the activation's magnitude: missing a large activation costs more than missing one
    /// just above the threshold, as it does to the FFN's output. Needs the magnitudes
    /// ([`LayerData::magnitude_train`]).
    Magnitude,
}

impl std::str::FromStr for Positives {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "count" => Ok(Positives::Count),
            "magnitude" => Ok(Positives::Magnitude),
            _ => Err(format!("`{s}` is not count or magnitude")),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { epochs: 10, batch: 256, lr: 5e-3, seed: 0, positives: Positives::Count }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch == 0 {
            return Err(Error::Invalid(format!("epochs {} and batch {} must be at least 1", self.epochs, self.batch)));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Invalid(format!("learning rate {} must be positive", self.lr)));
        }
        Ok(())
    }
}

/// What training one layer reports besides the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainReport {
    /// Weight of a positive pair in the loss: negatives over positives in the training labels.
    pub pos_weight: f32,
    /// Mean class-balanced loss per (token, neuron) pair over a sample of the last epoch's batches.
    pub final_loss: f64,
}

/// Fits one layer's predictor of rank `rank` to inputs `x` (`tokens x d_model`) and labels `y`
/// (`tokens x d_ffn`, true = active).
///
/// The loss is the binary cross-entropy with positives weighted by the ratio of negative to positive pairs
/// (one weight per layer, so that one decision threshold per layer suits every neuron). Inputs are standardized
/// per feature during training and the standardization is folded into `A` and the bias afterwards, so the
/// returned predictor takes raw inputs. Biases start at each neuron's weighted log-odds.
pub fn train_layer(
    x: ArrayView2<f32>,
    y: ArrayView2<bool>,
    rank: usize,
    cfg: &TrainConfig,
) -> Result<(LowRank, TrainReport)> {
    train_layer_weighted(x, y, None, rank, cfg)
}

/// [`train_layer`] with the activation magnitudes `mag` (`tokens x d_ffn`) of the training tokens, which
/// weigh the positives when `cfg.positives` is [`Positives::Magnitude`]: each in proportion to its magnitude,
/// the mean positive weight unchanged.
pub fn train_layer_weighted(
    x: ArrayView2<f32>,
    y: ArrayView2<bool>,
    mag: Option<ArrayView2<f32>>,
    rank: usize,
    cfg: &TrainConfig,
) -> Result<(LowRank, TrainReport)> {
    cfg.validate()?;
    let (t, d) = x.dim();
    let n = y.ncols();
    if y.nrows() != t || t == 0 || d == 0 || n == 0 {
        return Err(Error::Invalid(format!(
            "training inputs {:?} and labels {:?} do not match or are empty",
            x.dim(),
            y.dim()
        )));
    }
    if rank == 0 {
        return Err(Error::Invalid("rank 0".into()));
    }
    let y = y.as_standard_layout();

    // Standardized inputs.
    let mean = x.mean_axis(Axis(0)).expect("at least one token");
    let mut inv_std = Array1::<f32>::zeros(d);
    for (j, col) in x.axis_iter(Axis(1)).enumerate() {
        let m = f64::from(mean[j]);
        let var = col.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / t as f64;
        inv_std[j] = if var > 1e-20 { (1.0 / var.sqrt()) as f32 } else { 0.0 };
    }
    let mut xs = x.to_owned();
    xs -= &mean.view().insert_axis(Axis(0));
    xs *= &inv_std.view().insert_axis(Axis(0));

    // Class balance.
    let mut pos_per = vec![0u64; n];
    for row in y.rows() {
        for (c, &v) in pos_per.iter_mut().zip(row) {
            *c += u64::from(v);
        }
    }
    let pos: u64 = pos_per.iter().sum();
    let neg = (t * n) as u64 - pos;
    let pos_weight = if pos == 0 || neg == 0 { 1.0 } else { (neg as f64 / pos as f64) as f32 };
    // Per positive pair, its share of the positive weight (1 on average), or none: all alike.
    let mag = match (cfg.positives, mag) {
        (Positives::Count, _) => None,
        (Positives::Magnitude, None) => {
            return Err(Error::Invalid("magnitude-weighted positives need the activation magnitudes".into()))
        }
        (Positives::Magnitude, Some(m)) => {
            if m.dim() != y.dim() {
                return Err(Error::Invalid(format!("magnitudes {:?} for labels {:?}", m.dim(), y.dim())));
            }
            let total: f64 =
                ndarray::Zip::from(&m).and(&y).fold(0.0, |acc, &v, &l| if l { acc + f64::from(v.abs()) } else { acc });
            let scale = if total > 0.0 { (pos as f64 / total) as f32 } else { 0.0 };
            Some(m.mapv(|v| v.abs() * scale))
        }
    };

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let ua = (3.0 / d as f32).sqrt();
    let ub = (3.0 / rank as f32).sqrt();
    let mut a = Array2::from_shape_fn((d, rank), |_| rng.gen_range(-ua..ua));
    let mut b = Array2::from_shape_fn((rank, n), |_| rng.gen_range(-ub..ub));
    let mut bias = Array1::from_shape_fn(n, |j| {
        let (p, q) = (pos_per[j] as f64 + 0.5, (t as u64 - pos_per[j]) as f64 + 0.5);
        (f64::from(pos_weight) * p / q).ln().clamp(-12.0, 12.0) as f32
    });

    let mut adam_a = Adam::new(a.len());
    let mut adam_b = Adam::new(b.len());
    let mut adam_bias = Adam::new(n);

    let m = cfg.batch.min(t);
    let mut xb = Array2::<f32>::zeros((m, d));
    let mut hb = Array2::<f32>::zeros((m, rank));
    let mut zb = Array2::<f32>::zeros((m, n));
    let mut dh = Array2::<f32>::zeros((m, rank));
    let mut ga = Array2::<f32>::zeros((d, rank));
    let mut gb = Array2::<f32>::zeros((rank, n));
    let mut gbias = Array1::<f32>::zeros(n);

    let mut order: Vec<usize> = (0..t).collect();
    let steps_per_epoch = t.div_ceil(m);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut step = 0usize;
    let (mut loss_sum, mut loss_count) = (0.0f64, 0u64);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let last_epoch = epoch + 1 == cfg.epochs;
        for (bi, idx) in order.chunks(m).enumerate() {
            let mb = idx.len();
            let mut xv = rows_mut(&mut xb, mb);
            for (i, &ti) in idx.iter().enumerate() {
                xv.row_mut(i).assign(&xs.row(ti));
            }
            let xv = rows(&xb, mb);
            let mut hv = rows_mut(&mut hb, mb);
            general_mat_mul(1.0, &xv, &a, 0.0, &mut hv);
            let hv = rows(&hb, mb);
            let mut zv = rows_mut(&mut zb, mb);
            general_mat_mul(1.0, &hv, &b, 0.0, &mut zv);

            // dL/dz, in place, scaled by 1/batch; the loss itself on a sample of the last epoch's batches.
            let with_loss = last_epoch && bi % 4 == 0;
            let scale = 1.0 / mb as f32;
            gbias.fill(0.0);
            let bias_s = bias.as_slice().expect("owned bias is contiguous");
            let gbias_s = gbias.as_slice_mut().expect("owned gradient is contiguous");
            for (i, &ti) in idx.iter().enumerate() {
                let mut zrow = zv.row_mut(i);
                let zrow = zrow.as_slice_mut().expect("rows of a standard-layout slice are contiguous");
                let yrow = y.row(ti);
                let yrow = yrow.as_slice().expect("standard layout");
                let mrow = mag.as_ref().map(|m| m.row(ti));
                for j in 0..n {
                    let z = zrow[j] + bias_s[j];
                    let sgm = 1.0 / (1.0 + (-z).exp());
                    let wp = match &mrow {
                        Some(m) => pos_weight * m[j],
                        None => pos_weight,
                    };
                    let g = if yrow[j] { wp * (sgm - 1.0) } else { sgm };
                    if with_loss {
                        let l = if yrow[j] {
                            -f64::from(wp) * f64::from(sgm.max(1e-30)).ln()
                        } else {
                            -f64::from((1.0 - sgm).max(1e-30)).ln()
                        };
                        loss_sum += l;
                    }
                    let g = g * scale;
                    zrow[j] = g;
                    gbias_s[j] += g;
                }
            }
            if with_loss {
                loss_count += (mb * n) as u64;
            }
            let zv = rows(&zb, mb);
            general_mat_mul(1.0, &hv.t(), &zv, 0.0, &mut gb);
            let mut dhv = rows_mut(&mut dh, mb);
            general_mat_mul(1.0, &zv, &b.t(), 0.0, &mut dhv);
            let dhv = rows(&dh, mb);
            general_mat_mul(1.0, &xv.t(), &dhv, 0.0, &mut ga);

            let progress = step as f32 / total_steps.max(1) as f32;
            let lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()));
            step += 1;
            adam_a.step(slice_mut(&mut a), slice(&ga), lr, step);
            adam_b.step(slice_mut(&mut b), slice(&gb), lr, step);
            adam_bias.step(
                bias.as_slice_mut().expect("owned"),
                gbias.as_slice().expect("owned"),
                lr * BIAS_LR_SCALE,
                step,
            );
        }
    }

    // Fold the standardization: ((x - mu) * inv) A B = x (inv * A) B - ((mu * inv) A) B.
    let mut a_raw = a.clone();
    for (j, mut row) in a_raw.rows_mut().into_iter().enumerate() {
        row *= inv_std[j];
    }
    let shift = (&mean * &inv_std).dot(&a);
    let bias_raw = &bias - &shift.dot(&b);
    let final_loss = if loss_count > 0 { loss_sum / loss_count as f64 } else { f64::NAN };
    Ok((LowRank::new(a_raw, b, bias_raw)?, TrainReport { pos_weight, final_loss }))
}

/// The first `m` rows (the `s!` macro would need `unsafe`, which this crate forbids).
fn rows(a: &Array2<f32>, m: usize) -> ArrayView2<'_, f32> {
    a.slice_axis(Axis(0), Slice::from(..m))
}
fn rows_mut(a: &mut Array2<f32>, m: usize) -> ArrayViewMut2<'_, f32> {
    a.slice_axis_mut(Axis(0), Slice::from(..m))
}

fn slice(a: &Array2<f32>) -> &[f32] {
    a.as_slice().expect("owned arrays are contiguous")
}
fn slice_mut(a: &mut Array2<f32>) -> &mut [f32] {
    a.as_slice_mut().expect("owned arrays are contiguous")
}

/// Adam's moment estimates for one parameter tensor (beta1 0.9, beta2 0.999, eps 1e-8).
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(n: usize) -> Adam {
        Adam { m: vec![0.0; n], v: vec![0.0; n] }
    }

    /// One update of `p` by gradient `g` at step `t` (1-based).
    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32, t: usize) {
        let t = t as i32;
        let c1 = 1.0 - Self::B1.powi(t);
        let c2 = 1.0 - Self::B2.powi(t);
        let lr_t = lr * c2.sqrt() / c1;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            *m = Self::B1 * *m + (1.0 - Self::B1) * g;
            *v = Self::B2 * *v + (1.0 - Self::B2) * g * g;
            *p -= lr_t * *m / (v.sqrt() + Self::EPS);
        }
    }
}

/// Labels from activation magnitudes: active when `|act| > threshold`.
pub fn labels(acts: ArrayView2<f32>, threshold: f32) -> Array2<bool> {
    acts.mapv(|v| v.abs() > threshold)
}

/// One layer's training and validation data.
#[derive(Debug, Clone)]
pub struct LayerData {
    /// `train_tokens x d_model`: the FFN's inputs.
    pub x_train: Array2<f32>,
    /// `train_tokens x d_ffn`: true when the neuron is active.
    pub y_train: Array2<bool>,
    pub x_valid: Array2<f32>,
    pub y_valid: Array2<bool>,
    /// The activation-magnitude threshold the labels were made with.
    pub act_threshold: f32,
    /// `train_tokens x d_ffn`: the activation magnitudes behind `y_train`, for [`Positives::Magnitude`].
    pub magnitude_train: Option<Array2<f32>>,
}

/// Where training data comes from, one layer at a time (a trace file, or arrays in memory). `load` may be
/// called from several threads at once.
pub trait LayerSource: Sync {
    fn n_layers(&self) -> usize;
    fn load(&self, layer: usize) -> Result<LayerData>;
}

/// Layers held in memory.
impl LayerSource for Vec<LayerData> {
    fn n_layers(&self) -> usize {
        self.len()
    }
    fn load(&self, layer: usize) -> Result<LayerData> {
        self.get(layer).cloned().ok_or_else(|| Error::Invalid(format!("no layer {layer}")))
    }
}

/// Training data read from a trace: layer `l`'s inputs and activations at the given token indices, labelled
/// active where the activation magnitude exceeds `thresholds[l]`. Layers are read when asked for.
pub struct TraceLayers<'a> {
    trace: &'a Trace,
    train: Vec<usize>,
    valid: Vec<usize>,
    thresholds: Vec<f32>,
    magnitudes: bool,
}

impl<'a> TraceLayers<'a> {
    /// Checks there is a threshold per layer and every index is a token of the trace.
    pub fn new(trace: &'a Trace, train: Vec<usize>, valid: Vec<usize>, thresholds: Vec<f32>) -> Result<Self> {
        let m = trace.meta();
        if thresholds.len() != m.n_layers {
            return Err(Error::mismatch(
                trace.path(),
                format!("{} activation thresholds for a trace of {} layers", thresholds.len(), m.n_layers),
            ));
        }
        if let Some(&t) = train.iter().chain(&valid).find(|&&t| t >= m.n_tokens) {
            return Err(Error::Invalid(format!("token {t} of a trace of {} tokens", m.n_tokens)));
        }
        Ok(TraceLayers { trace, train, valid, thresholds, magnitudes: false })
    }

    /// Also loads the training tokens' activation magnitudes (for [`Positives::Magnitude`]).
    pub fn with_magnitudes(mut self, yes: bool) -> Self {
        self.magnitudes = yes;
        self
    }
}

impl LayerSource for TraceLayers<'_> {
    fn n_layers(&self) -> usize {
        self.thresholds.len()
    }

    fn load(&self, layer: usize) -> Result<LayerData> {
        let (x, acts) = self.trace.layer(layer)?;
        let thr = self.thresholds[layer];
        let acts_train = acts.select(Axis(0), &self.train);
        Ok(LayerData {
            x_train: x.select(Axis(0), &self.train),
            y_train: labels(acts_train.view(), thr),
            x_valid: x.select(Axis(0), &self.valid),
            y_valid: labels(acts.select(Axis(0), &self.valid).view(), thr),
            act_threshold: thr,
            magnitude_train: self.magnitudes.then(|| acts_train.mapv(f32::abs)),
        })
    }
}

/// Settings of a whole predictor's training.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictorConfig {
    pub ranks: RankSpec,
    pub train: TrainConfig,
    /// Per layer, the decision threshold is the largest that keeps this share of the truly active
    /// (token, neuron) pairs of the validation split. Default 0.95.
    pub recall: f64,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig { ranks: RankSpec::uniform(64), train: TrainConfig::default(), recall: 0.95 }
    }
}

/// Trains one layer end to end: fit, round to the compact form, choose the decision threshold on the
/// validation split with the rounded weights, and measure it there.
pub fn fit_layer(
    layer: usize,
    data: &LayerData,
    rank: usize,
    cfg: &PredictorConfig,
) -> Result<(LayerPredictor, LayerMetrics)> {
    let t0 = Instant::now();
    let (d, n) = (data.x_train.ncols(), data.y_train.ncols());
    if data.x_valid.ncols() != d || data.y_valid.ncols() != n || data.x_valid.nrows() != data.y_valid.nrows() {
        return Err(Error::Invalid(format!(
            "layer {layer}: validation inputs {:?} and labels {:?} do not match training's {d} and {n} columns",
            data.x_valid.dim(),
            data.y_valid.dim()
        )));
    }
    let train = TrainConfig { seed: cfg.train.seed.wrapping_add(layer as u64), ..cfg.train.clone() };
    let mag = data.magnitude_train.as_ref().map(|m| m.view());
    let (fitted, report) = train_layer_weighted(data.x_train.view(), data.y_train.view(), mag, rank, &train)?;
    let compact = fitted.to_compact();
    let logits = compact.to_f32().logits(data.x_valid.view());
    let thr = threshold_for_recall(logits.view(), data.y_valid.view(), cfg.recall)?;
    let conf = Confusion::of(logits.view(), data.y_valid.view(), thr)?;
    let mut m = LayerMetrics {
        layer,
        rank,
        train_tokens: data.x_train.nrows(),
        valid_tokens: data.x_valid.nrows(),
        act_threshold: data.act_threshold,
        decision_threshold: thr,
        bytes: compact.bytes(),
        final_loss: report.final_loss,
        ..LayerMetrics::default()
    };
    m.fill_from(&conf);
    m.train_seconds = t0.elapsed().as_secs_f64();
    Ok((LayerPredictor { weights: compact, decision_threshold: thr, act_threshold: data.act_threshold }, m))
}

/// Trains every layer of `source` (in parallel, the costliest first) into a predictor for the model
/// `identity`; `on_layer` is called as each layer finishes (from any thread). Returns the predictor and the
/// per-layer validation metrics in layer order.
pub fn train_predictor(
    source: &dyn LayerSource,
    identity: ModelIdentity,
    cfg: &PredictorConfig,
    on_layer: &(dyn Fn(&LayerMetrics) + Sync),
) -> Result<(Predictor, Vec<LayerMetrics>)> {
    let n_layers = identity.n_layers;
    if source.n_layers() != n_layers {
        return Err(Error::Invalid(format!("{} layers of data for a model of {n_layers}", source.n_layers())));
    }
    cfg.ranks.validate(identity.d_ffn)?;
    cfg.train.validate()?;
    let mut order: Vec<usize> = (0..n_layers).collect();
    order.sort_by_key(|&l| std::cmp::Reverse(cfg.ranks.rank(l, n_layers)));
    let mut done: Vec<(usize, LayerPredictor, LayerMetrics)> = order
        .into_par_iter()
        .with_max_len(1)
        .map(|l| {
            let data = source.load(l)?;
            if data.x_train.ncols() != identity.d_model || data.y_train.ncols() != identity.d_ffn {
                return Err(Error::Invalid(format!(
                    "layer {l}: data of {} inputs and {} neurons for a model of d_model {} and d_ffn {}",
                    data.x_train.ncols(),
                    data.y_train.ncols(),
                    identity.d_model,
                    identity.d_ffn
                )));
            }
            let (p, m) = fit_layer(l, &data, cfg.ranks.rank(l, n_layers), cfg)?;
            on_layer(&m);
            Ok((l, p, m))
        })
        .collect::<Result<_>>()?;
    done.sort_by_key(|(l, _, _)| *l);
    let (layers, metrics): (Vec<_>, Vec<_>) = done.into_iter().map(|(_, p, m)| (p, m)).unzip();
    Ok((Predictor::new(identity, cfg.recall as f32, layers)?, metrics))
}
