//! How well a predictor's active sets match the true ones: confusion counts over (token, neuron) pairs, the
//! decision threshold that reaches a target recall, and the per-layer rows of the CSV report.

use ndarray::{ArrayView2, Zip};

use crate::{Error, Result};

/// Counts over (token, neuron) pairs: predicted active or not, truly active or not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    /// Compares `logits > threshold` with `labels` (same shape).
    pub fn of(logits: ArrayView2<f32>, labels: ArrayView2<bool>, threshold: f32) -> Result<Confusion> {
        check_shapes(logits, labels)?;
        let mut c = Confusion::default();
        Zip::from(&logits).and(&labels).for_each(|&z, &y| match (z > threshold, y) {
            (true, true) => c.tp += 1,
            (true, false) => c.fp += 1,
            (false, true) => c.fn_ += 1,
            (false, false) => c.tn += 1,
        });
        Ok(c)
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }
    pub fn truly_active(&self) -> u64 {
        self.tp + self.fn_
    }
    pub fn predicted_active(&self) -> u64 {
        self.tp + self.fp
    }

    /// Share of the truly active pairs predicted active (1 when none is active: nothing was missed).
    pub fn recall(&self) -> f64 {
        ratio_or(self.tp, self.truly_active(), 1.0)
    }

    /// Share of the predicted pairs truly active (1 when none is predicted: nothing was wasted).
    pub fn precision(&self) -> f64 {
        ratio_or(self.tp, self.predicted_active(), 1.0)
    }

    /// Share of the truly active pairs missed: `1 - recall`.
    pub fn false_negative_rate(&self) -> f64 {
        1.0 - self.recall()
    }

    /// Predicted active count over truly active count (the paper's over-prediction factor).
    pub fn predicted_true_ratio(&self) -> f64 {
        ratio_or(
            self.predicted_active(),
            self.truly_active(),
            if self.predicted_active() == 0 { 1.0 } else { f64::INFINITY },
        )
    }
}

fn ratio_or(num: u64, den: u64, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

fn check_shapes(logits: ArrayView2<f32>, labels: ArrayView2<bool>) -> Result<()> {
    if logits.dim() != labels.dim() {
        return Err(Error::Invalid(format!("logits {:?} and labels {:?} differ in shape", logits.dim(), labels.dim())));
    }
    Ok(())
}

/// The largest threshold `t` for which `logits > t` keeps at least `recall` of the truly active pairs: just
/// below the `ceil(recall * P)`-th largest logit among the `P` positives. With no positive it is `+inf`
/// (nothing needs predicting).
pub fn threshold_for_recall(logits: ArrayView2<f32>, labels: ArrayView2<bool>, recall: f64) -> Result<f32> {
    check_shapes(logits, labels)?;
    if !(0.0..=1.0).contains(&recall) {
        return Err(Error::Invalid(format!("target recall {recall} is outside [0, 1]")));
    }
    let mut pos: Vec<f32> = Vec::new();
    Zip::from(&logits).and(&labels).for_each(|&z, &y| {
        if y {
            pos.push(z);
        }
    });
    if pos.is_empty() {
        return Ok(f32::INFINITY);
    }
    let k = ((recall * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    // The k-th largest: index k-1 in descending order.
    let (_, &mut kth, _) = pos.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    Ok(kth.next_down())
}

/// One layer's row of the predictor report (validation split).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerMetrics {
    pub layer: usize,
    pub rank: usize,
    pub train_tokens: usize,
    pub valid_tokens: usize,
    /// A neuron is truly active when its activation magnitude exceeds this.
    pub act_threshold: f32,
    /// A neuron is predicted active when its logit exceeds this.
    pub decision_threshold: f32,
    pub true_active_fraction: f64,
    pub predicted_active_fraction: f64,
    pub recall: f64,
    pub precision: f64,
    pub false_negative_rate: f64,
    pub predicted_true_ratio: f64,
    /// Bytes of this layer's predictor weights in DRAM.
    pub bytes: usize,
    pub train_seconds: f64,
    /// Training loss of the last epoch (class-balanced binary cross-entropy, sampled batches).
    pub final_loss: f64,
}

impl LayerMetrics {
    /// The fraction and quality columns from a confusion count.
    pub fn fill_from(&mut self, c: &Confusion) {
        let total = c.total().max(1) as f64;
        self.true_active_fraction = c.truly_active() as f64 / total;
        self.predicted_active_fraction = c.predicted_active() as f64 / total;
        self.recall = c.recall();
        self.precision = c.precision();
        self.false_negative_rate = c.false_negative_rate();
        self.predicted_true_ratio = c.predicted_true_ratio();
    }
}

/// Means over layers of the report's columns, and the totals of bytes and training time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub quality: Quality,
    pub bytes: usize,
    pub train_seconds: f64,
}

impl Summary {
    /// Means of `rows` (unweighted: every layer counts once, as every layer is run once per token).
    pub fn of(rows: &[LayerMetrics]) -> Summary {
        Summary {
            quality: Quality::of_layers(rows),
            bytes: rows.iter().map(|r| r.bytes).sum(),
            train_seconds: rows.iter().map(|r| r.train_seconds).sum(),
        }
    }
}

/// Means over layers of what per-layer confusion counts say (a predictor audited on some text).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quality {
    pub layers: usize,
    pub recall: f64,
    pub min_recall: f64,
    pub precision: f64,
    pub false_negative_rate: f64,
    pub predicted_true_ratio: f64,
    pub true_active_fraction: f64,
    pub predicted_active_fraction: f64,
}

impl Quality {
    /// Unweighted means over the layers' counts.
    pub fn of(counts: &[Confusion]) -> Quality {
        let rows: Vec<LayerMetrics> = counts
            .iter()
            .map(|c| {
                let mut m = LayerMetrics::default();
                m.fill_from(c);
                m
            })
            .collect();
        Quality::of_layers(&rows)
    }

    /// Unweighted means of the layers' metrics (every layer counts once, as every layer is run once per token).
    pub fn of_layers(rows: &[LayerMetrics]) -> Quality {
        let n = rows.len().max(1) as f64;
        let mean = |f: fn(&LayerMetrics) -> f64| rows.iter().map(f).sum::<f64>() / n;
        Quality {
            layers: rows.len(),
            recall: mean(|r| r.recall),
            min_recall: rows.iter().map(|r| r.recall).fold(f64::INFINITY, f64::min),
            precision: mean(|r| r.precision),
            false_negative_rate: mean(|r| r.false_negative_rate),
            predicted_true_ratio: mean(|r| r.predicted_true_ratio),
            true_active_fraction: mean(|r| r.true_active_fraction),
            predicted_active_fraction: mean(|r| r.predicted_active_fraction),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers: mean recall {:.4} (min {:.4}), precision {:.4}, false negatives {:.4}, predicted/true \
             {:.3}; truly active {:.3}, predicted active {:.3} of neurons; {} bytes of weights",
            self.quality.layers,
            self.quality.recall,
            self.quality.min_recall,
            self.quality.precision,
            self.quality.false_negative_rate,
            self.quality.predicted_true_ratio,
            self.quality.true_active_fraction,
            self.quality.predicted_active_fraction,
            self.bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn confusion_counts_and_ratios() {
        let z = array![[2.0f32, -1.0, 0.5], [0.1, 3.0, -2.0]];
        let y = array![[true, true, false], [false, true, false]];
        let c = Confusion::of(z.view(), y.view(), 0.2).unwrap();
        assert_eq!(c, Confusion { tp: 2, fp: 1, fn_: 1, tn: 2 });
        assert!((c.recall() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.predicted_true_ratio() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn threshold_reaches_the_target_recall_and_no_more_than_needed() {
        // Positives' logits 0..100; recall 0.95 needs 95 of them: threshold just below 5.
        let z = ndarray::Array2::from_shape_fn((10, 10), |(i, j)| (i * 10 + j) as f32);
        let y = ndarray::Array2::from_elem((10, 10), true);
        let t = threshold_for_recall(z.view(), y.view(), 0.95).unwrap();
        assert!(t < 5.0 && t > 4.9);
        let c = Confusion::of(z.view(), y.view(), t).unwrap();
        assert_eq!(c.tp, 95);
        let none = ndarray::Array2::from_elem((10, 10), false);
        assert_eq!(threshold_for_recall(z.view(), none.view(), 0.95).unwrap(), f32::INFINITY);
        assert!(threshold_for_recall(z.view(), y.view(), 1.5).is_err());
    }
}
