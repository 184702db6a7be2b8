//! A trained predictor at inference time: per layer, the neurons whose predicted logit passes the layer's
//! decision threshold, as a [`NeuronSelector`] for the sparse FFN.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use spike_flash::engine::sparse::NeuronSelector;

use crate::lowrank::{CompactLowRank, Scratch};
use crate::metrics::Confusion;
use crate::trace::ModelIdentity;
use crate::{Error, Result};

/// One layer of a predictor.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPredictor {
    pub weights: CompactLowRank,
    /// A neuron is predicted active when its logit exceeds this.
    pub decision_threshold: f32,
    /// The activation-magnitude threshold its training labels were made with (a neuron counted as active
    /// when `|activation| > act_threshold`; 0 for ReLU models).
    pub act_threshold: f32,
}

/// A low-rank predictor for every layer of one model.
#[derive(Debug, Clone)]
pub struct Predictor {
    identity: ModelIdentity,
    target_recall: f32,
    layers: Vec<LayerPredictor>,
    z: Vec<f32>,
    scratch: Scratch,
}

impl PartialEq for Predictor {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
            && self.target_recall.to_bits() == other.target_recall.to_bits()
            && self.layers == other.layers
    }
}

impl Predictor {
    /// A predictor from its layers; every layer must have the identity's dimensions.
    pub fn new(identity: ModelIdentity, target_recall: f32, layers: Vec<LayerPredictor>) -> Result<Predictor> {
        if layers.len() != identity.n_layers {
            return Err(Error::Invalid(format!(
                "{} predictor layers for a model of {}",
                layers.len(),
                identity.n_layers
            )));
        }
        for (l, p) in layers.iter().enumerate() {
            if p.weights.d_model() != identity.d_model || p.weights.d_ffn() != identity.d_ffn {
                return Err(Error::Invalid(format!(
                    "layer {l}: predictor maps {} -> {} for a model of d_model {} and d_ffn {}",
                    p.weights.d_model(),
                    p.weights.d_ffn(),
                    identity.d_model,
                    identity.d_ffn
                )));
            }
        }
        Ok(Predictor { identity, target_recall, layers, z: Vec::new(), scratch: Scratch::default() })
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }
    /// The validation recall the decision thresholds were chosen for.
    pub fn target_recall(&self) -> f32 {
        self.target_recall
    }
    pub fn layers(&self) -> &[LayerPredictor] {
        &self.layers
    }

    /// Bytes of weights (f16 matrices, f32 biases and thresholds) the predictor keeps in DRAM.
    pub fn weight_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.weights.bytes() + 8).sum()
    }

    /// Bytes the predictor holds in DRAM: its weights and its per-token buffers (logits of one layer, the
    /// rank vector and one widened weight row).
    pub fn dram_bytes(&self) -> usize {
        let max_rank = self.layers.iter().map(|l| l.weights.rank()).max().unwrap_or(0);
        let buffers = (self.identity.d_ffn + max_rank + max_rank.max(self.identity.d_ffn)) * 4;
        self.weight_bytes()
            + buffers
            + std::mem::size_of::<Self>()
            + self.layers.len() * std::mem::size_of::<LayerPredictor>()
    }

    /// Checks that this predictor (read from `path`) belongs to `model`.
    pub fn check_model(&self, path: &Path, model: &ModelIdentity) -> Result<()> {
        self.identity.check(path, model)
    }

    fn layer(&self, layer: usize) -> spike_flash::Result<&LayerPredictor> {
        self.layers.get(layer).ok_or_else(|| {
            spike_flash::Error::Invalid(format!(
                "the predictor has {} layers, asked for layer {layer}",
                self.layers.len()
            ))
        })
    }

    /// Logits of layer `layer` for a batch `x` (`tokens x d_model`), computed with the weights widened to f32.
    pub fn logits(&self, layer: usize, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let p = self.layer(layer)?;
        if x.ncols() != self.identity.d_model {
            return Err(Error::Invalid(format!(
                "inputs of {} values for d_model {}",
                x.ncols(),
                self.identity.d_model
            )));
        }
        Ok(p.weights.to_f32().logits(x))
    }

    /// Predicted active sets of a batch: `logits > decision_threshold`.
    pub fn predict_batch(&self, layer: usize, x: ArrayView2<f32>) -> Result<Array2<bool>> {
        let thr = self.layer(layer)?.decision_threshold;
        Ok(self.logits(layer, x)?.mapv(|z| z > thr))
    }
}

impl LayerPredictor {
    /// Fills `active` with the neurons whose logit for `x` passes the decision threshold, ascending.
    fn choose(&self, x: &[f32], z: &mut Vec<f32>, s: &mut Scratch, active: &mut Vec<u32>) {
        self.weights.logits_one(x, z, s);
        let thr = self.decision_threshold;
        active.clear();
        active.extend(z.iter().enumerate().filter(|(_, &v)| v > thr).map(|(i, _)| i as u32));
    }
}

impl Predictor {
    /// Layer `layer`, and a check that `x` holds `tokens` inputs of `d_model`.
    fn layer_for(&self, layer: usize, x: &[f32], tokens: usize) -> spike_flash::Result<&LayerPredictor> {
        let d = self.identity.d_model;
        if x.len() != tokens * d {
            return Err(spike_flash::Error::Invalid(format!(
                "predictor input of {} values for {tokens} tokens of d_model {d}",
                x.len()
            )));
        }
        self.layer(layer)
    }
}

impl NeuronSelector for Predictor {
    fn select(&mut self, layer: usize, x: &[f32], active: &mut Vec<u32>) -> spike_flash::Result<()> {
        self.layer_for(layer, x, 1)?;
        self.layers[layer].choose(x, &mut self.z, &mut self.scratch, active);
        Ok(())
    }

    /// Stateless: the tokens are decided in parallel, each exactly as [`NeuronSelector::select`] would.
    fn select_batch(&mut self, layer: usize, x: &[f32], active: &mut [Vec<u32>]) -> spike_flash::Result<()> {
        let p = self.layer_for(layer, x, active.len())?;
        let d = self.identity.d_model;
        active.par_iter_mut().enumerate().for_each_init(
            || (Vec::new(), Scratch::default()),
            |(z, s), (t, a)| p.choose(&x[t * d..(t + 1) * d], z, s, a),
        );
        Ok(())
    }
}

/// A selector checked against the truth while it runs: every token's choice of `selector` is compared with
/// that of `truth` (an oracle at the activation thresholds the predictor was trained for) and counted per
/// layer. The FFN then computes what `selector` chose. The oracle computes every neuron, so this costs a
/// dense FFN per token on top: a measurement, not a way to run. The counts are shared ([`Audited::counts`]),
/// so they stay readable while the selector is owned by the FFN that uses it.
pub struct Audited<S, T> {
    pub selector: S,
    truth: T,
    true_sets: Vec<Vec<u32>>,
    d_ffn: usize,
    counts: Arc<Mutex<Vec<Confusion>>>,
}

impl<S: NeuronSelector, T: NeuronSelector> Audited<S, T> {
    /// Audits `selector` against `truth` on a model of `n_layers` layers of `d_ffn` neurons.
    pub fn new(selector: S, truth: T, n_layers: usize, d_ffn: usize) -> Self {
        let counts = Arc::new(Mutex::new(vec![Confusion::default(); n_layers]));
        Audited { selector, truth, true_sets: Vec::new(), d_ffn, counts }
    }

    /// Per layer, the (token, neuron) pairs compared so far.
    pub fn counts(&self) -> Arc<Mutex<Vec<Confusion>>> {
        Arc::clone(&self.counts)
    }
}

/// The counts, also after a panic elsewhere (they are plain numbers, never left half-updated).
fn lock(c: &Mutex<Vec<Confusion>>) -> std::sync::MutexGuard<'_, Vec<Confusion>> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds the comparison of ascending id lists `chosen` and `truth` out of `n` neurons to `c`.
fn count_sets(chosen: &[u32], truth: &[u32], n: usize, c: &mut Confusion) {
    let (mut i, mut j, mut tp) = (0, 0, 0u64);
    while i < chosen.len() && j < truth.len() {
        match chosen[i].cmp(&truth[j]) {
            std::cmp::Ordering::Equal => {
                tp += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    let (p, t) = (chosen.len() as u64, truth.len() as u64);
    c.tp += tp;
    c.fp += p - tp;
    c.fn_ += t - tp;
    c.tn += n as u64 - (p + t - tp);
}

impl<S: NeuronSelector, T: NeuronSelector> NeuronSelector for Audited<S, T> {
    fn select(&mut self, layer: usize, x: &[f32], active: &mut Vec<u32>) -> spike_flash::Result<()> {
        self.select_batch(layer, x, std::slice::from_mut(active))
    }

    fn select_batch(&mut self, layer: usize, x: &[f32], active: &mut [Vec<u32>]) -> spike_flash::Result<()> {
        let n_layers = lock(&self.counts).len();
        if layer >= n_layers {
            return Err(spike_flash::Error::Invalid(format!("audit of {n_layers} layers asked for layer {layer}")));
        }
        let n = active.len();
        if self.true_sets.len() < n {
            self.true_sets.resize_with(n, Vec::new);
        }
        self.selector.select_batch(layer, x, active)?;
        self.truth.select_batch(layer, x, &mut self.true_sets[..n])?;
        let (d_ffn, mut c) = (self.d_ffn, Confusion::default());
        for (chosen, truth) in active.iter().zip(&self.true_sets) {
            count_sets(chosen, truth, d_ffn, &mut c);
        }
        let mut counts = lock(&self.counts);
        let total = &mut counts[layer];
        total.tp += c.tp;
        total.fp += c.fp;
        total.fn_ += c.fn_;
        total.tn += c.tn;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Selects a fixed list whatever the input.
    struct Fixed(Vec<u32>);
    impl NeuronSelector for Fixed {
        fn select(&mut self, _: usize, _: &[f32], active: &mut Vec<u32>) -> spike_flash::Result<()> {
            active.clone_from(&self.0);
            Ok(())
        }
    }

    #[test]
    fn audit_counts_agreement_of_the_two_sets() {
        let mut a = Audited::new(Fixed(vec![0, 2, 3, 7]), Fixed(vec![2, 4, 7]), 2, 10);
        let counts = a.counts();
        let mut active = Vec::new();
        a.select(1, &[0.0], &mut active).unwrap();
        assert_eq!(active, vec![0, 2, 3, 7]);
        assert_eq!(counts.lock().unwrap()[1], Confusion { tp: 2, fp: 2, fn_: 1, tn: 5 });
        assert_eq!(counts.lock().unwrap()[0], Confusion::default());
        let mut batch = vec![Vec::new(); 3];
        a.select_batch(1, &[0.0; 3], &mut batch).unwrap();
        assert_eq!(counts.lock().unwrap()[1], Confusion { tp: 8, fp: 8, fn_: 4, tn: 20 });
        assert!(a.select(2, &[0.0], &mut active).is_err());
    }
}
