//! A trained predictor at inference time: per layer, the neurons whose predicted logit passes the layer's
//! decision threshold, as a [`NeuronSelector`] for the sparse FFN.

use std::path::Path;

use ndarray::{Array2, ArrayView2};
use spike_flash::engine::sparse::NeuronSelector;

use crate::file::ModelIdentity;
use crate::lowrank::{CompactLowRank, Scratch};
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

impl NeuronSelector for Predictor {
    fn select(&mut self, layer: usize, x: &[f32], active: &mut Vec<u32>) -> spike_flash::Result<()> {
        let d = self.identity.d_model;
        if x.len() != d {
            return Err(spike_flash::Error::Invalid(format!("predictor input of {} values for d_model {d}", x.len())));
        }
        let Some(p) = self.layers.get(layer) else {
            return Err(spike_flash::Error::Invalid(format!(
                "the predictor has {} layers, asked for layer {layer}",
                self.layers.len()
            )));
        };
        p.weights.logits_one(x, &mut self.z, &mut self.scratch);
        let thr = p.decision_threshold;
        active.clear();
        active.extend(self.z.iter().enumerate().filter(|(_, &z)| z > thr).map(|(i, _)| i as u32));
        Ok(())
    }
}
