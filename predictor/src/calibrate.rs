//! Per-layer activation thresholds: a neuron is active when its activation magnitude exceeds its layer's
//! threshold. For ReLU models the threshold is 0 (exact sparsity). For other activations (SwiGLU) the
//! threshold is calibrated, training-free in the manner of CATS and TEAL: the magnitude at the S-quantile of
//! the training split's activations, so each layer reaches sparsity S. Saved as JSON, tied to a model.

use std::path::Path;

use ndarray::Array2;
use spike_flash::model::config::Activation;

use crate::trace::{ModelIdentity, Trace};
use crate::{Error, Result};

/// The `format` field of a thresholds file.
pub const FORMAT: &str = "spike-thresholds";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;

/// How the thresholds were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Threshold 0 on a ReLU model: the active neurons are exactly the nonzero ones.
    Relu,
    /// The magnitude at the target-sparsity quantile of the training split, per layer.
    Quantile,
}

/// Per-layer thresholds with what they were calibrated on and what they achieve.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Thresholds {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The model these thresholds belong to.
    pub model: ModelIdentity,
    pub method: Method,
    /// The requested sparsity (fraction of inactive neurons); `None` for ReLU.
    pub target_sparsity: Option<f64>,
    /// Per layer: a neuron is active when `|activation| > threshold`.
    pub thresholds: Vec<f32>,
    /// Per layer: the sparsity these thresholds give on the training split of the trace (empty if none).
    pub train_sparsity: Vec<f64>,
    /// Per layer: the same on the validation split (empty if none).
    pub valid_sparsity: Vec<f64>,
    /// The trace calibrated on (file name), if any.
    pub trace: Option<String>,
    pub valid_fraction: f64,
    pub seed: u64,
    pub train_tokens: usize,
    pub valid_tokens: usize,
}

/// Fraction of entries of `acts` (rows `rows`) with magnitude at most `thr`.
pub fn sparsity(acts: &Array2<f32>, rows: &[usize], thr: f32) -> f64 {
    let mut inactive = 0u64;
    for &r in rows {
        inactive += acts.row(r).iter().filter(|v| v.abs() <= thr).count() as u64;
    }
    let total = rows.len() as u64 * acts.ncols() as u64;
    if total == 0 {
        0.0
    } else {
        inactive as f64 / total as f64
    }
}

/// The threshold at which `sparsity` of the magnitudes in `acts` rows `rows` are at most it: the
/// `round(S n)`-th smallest magnitude (0 when that count is 0). Ties at the threshold count as inactive, so
/// with many equal magnitudes the reached sparsity may exceed `sparsity`.
pub fn quantile_threshold(acts: &Array2<f32>, rows: &[usize], sparsity: f64) -> f32 {
    let mut v: Vec<f32> = Vec::with_capacity(rows.len() * acts.ncols());
    for &r in rows {
        v.extend(acts.row(r).iter().map(|x| x.abs()));
    }
    let k = (sparsity.clamp(0.0, 1.0) * v.len() as f64).round() as usize;
    if k == 0 || v.is_empty() {
        return 0.0;
    }
    let (_, kth, _) = v.select_nth_unstable_by(k - 1, f32::total_cmp);
    *kth
}

impl Thresholds {
    /// Thresholds of 0 for a ReLU model, measured on nothing.
    pub fn relu(model: ModelIdentity) -> Result<Thresholds> {
        if model.activation != Activation::Relu {
            return Err(Error::Invalid(format!(
                "threshold 0 is exact sparsity only for ReLU models; this model's activation is {}",
                model.activation.hf_name()
            )));
        }
        Ok(Thresholds {
            format: FORMAT.into(),
            version: VERSION,
            thresholds: vec![0.0; model.n_layers],
            model,
            method: Method::Relu,
            target_sparsity: None,
            train_sparsity: Vec::new(),
            valid_sparsity: Vec::new(),
            trace: None,
            valid_fraction: 0.0,
            seed: 0,
            train_tokens: 0,
            valid_tokens: 0,
        })
    }

    /// Calibrates on `trace`'s training split (`valid_fraction`, `seed` as [`Trace::split`]): per layer the
    /// `sparsity`-quantile of the magnitudes (threshold 0 for ReLU models, whatever `sparsity` says), and
    /// measures the sparsity reached on both splits. `progress(layer_done)` after each layer.
    pub fn calibrate(
        trace: &Trace,
        sparsity: f64,
        valid_fraction: f64,
        seed: u64,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Thresholds> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(Error::Invalid(format!("sparsity {sparsity} must be in [0, 1)")));
        }
        let meta = trace.meta();
        let relu = meta.activation == Activation::Relu;
        let (train, valid) = trace.split(valid_fraction, seed);
        if train.is_empty() {
            return Err(Error::Invalid(format!("{}: the training split is empty", trace.path().display())));
        }
        let mut t = Thresholds {
            format: FORMAT.into(),
            version: VERSION,
            model: meta.identity(),
            method: if relu { Method::Relu } else { Method::Quantile },
            target_sparsity: if relu { None } else { Some(sparsity) },
            thresholds: Vec::with_capacity(meta.n_layers),
            train_sparsity: Vec::with_capacity(meta.n_layers),
            valid_sparsity: Vec::with_capacity(meta.n_layers),
            trace: trace.path().file_name().map(|n| n.to_string_lossy().into_owned()),
            valid_fraction,
            seed,
            train_tokens: train.len(),
            valid_tokens: valid.len(),
        };
        for l in 0..meta.n_layers {
            let acts = trace.layer_acts(l)?;
            let thr = if relu { 0.0 } else { quantile_threshold(&acts, &train, sparsity) };
            t.thresholds.push(thr);
            t.train_sparsity.push(self::sparsity(&acts, &train, thr));
            t.valid_sparsity.push(self::sparsity(&acts, &valid, thr));
            progress(l + 1);
        }
        Ok(t)
    }

    /// Saves as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::format(path, e.to_string()))?;
        spike_flash::io::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
        Ok(())
    }

    /// Loads and validates a thresholds file.
    pub fn load(path: &Path) -> Result<Thresholds> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(Error::format(path, format!("not a thresholds file (no \"format\": \"{FORMAT}\")")));
        }
        match v.get("version").and_then(|f| f.as_u64()) {
            Some(x) if x == VERSION as u64 => {}
            other => {
                return Err(Error::format(
                    path,
                    format!("thresholds file version {other:?}; this build reads version {VERSION}"),
                ))
            }
        }
        let t: Thresholds = serde_json::from_value(v).map_err(|e| Error::format(path, e.to_string()))?;
        let n = t.model.n_layers;
        if t.thresholds.len() != n {
            return Err(Error::format(path, format!("{} thresholds for {n} layers", t.thresholds.len())));
        }
        if let Some((l, x)) = t.thresholds.iter().enumerate().find(|(_, x)| !x.is_finite() || **x < 0.0) {
            return Err(Error::format(path, format!("layer {l}: threshold {x} is not a finite non-negative number")));
        }
        if t.method == Method::Relu
            && (t.model.activation != Activation::Relu || t.thresholds.iter().any(|&x| x != 0.0))
        {
            return Err(Error::format(path, "method relu needs a ReLU model and thresholds of 0"));
        }
        Ok(t)
    }

    /// An error naming `path` (where these thresholds came from) unless they belong to `model`.
    pub fn check_model(&self, path: &Path, model: &ModelIdentity) -> Result<()> {
        self.model.check(path, model)
    }

    /// Mean over layers of a per-layer list, `None` when empty.
    pub fn mean(v: &[f64]) -> Option<f64> {
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_threshold_splits_distinct_values_exactly() {
        let acts = Array2::from_shape_fn((10, 10), |(i, j)| (i * 10 + j) as f32 * if j % 2 == 0 { 1.0 } else { -1.0 });
        let rows: Vec<usize> = (0..10).collect();
        for s in [0.1, 0.25, 0.5, 0.7, 0.99] {
            let thr = quantile_threshold(&acts, &rows, s);
            assert!((sparsity(&acts, &rows, thr) - s).abs() < 1e-12, "s {s} thr {thr}");
        }
    }
}
