//! The sparse FFN: per token, only the neurons of an active set are computed. A neuron is one row of the first
//! projection (gate and up rows for gated FFNs) and one column of the second; this module keeps them as f32
//! neuron-major rows in DRAM, which is what the flash layout stores per record. Which neurons are active is a
//! [`NeuronSelector`]'s decision: all of them, the truly active ones (an oracle), or a predictor's guess.

use std::sync::Arc;

use rayon::prelude::*;

use super::model::{activate, FfnStep, Model};
use super::ops;
use crate::model::weights::NeuronRows;
use crate::{Error, Result};

impl NeuronRows {
    /// Dequantizes layer `l`'s FFN of `model` into neuron-major rows.
    pub fn from_model(model: &Model, l: usize) -> Result<NeuronRows> {
        NeuronRows::from_parts(model.parts(), l)
    }

    /// Activation of neuron `i` for input `x`.
    #[inline]
    pub fn neuron(&self, act: crate::model::config::Activation, i: usize, x: &[f32]) -> f32 {
        let d = x.len();
        let mut g = ops::dot(&self.first[i * d..(i + 1) * d], x);
        if let Some(b) = &self.b1 {
            g += b[i];
        }
        let a = activate(act, g);
        match &self.up {
            Some(up) => a * ops::dot(&up[i * d..(i + 1) * d], x),
            None => a,
        }
    }
}

/// Dequantizes every layer's FFN of `model` into neuron rows, shared between a [`SparseFfn`] and an [`Oracle`].
pub fn all_rows(model: &Model) -> Result<Arc<Vec<NeuronRows>>> {
    let rows = (0..model.config().n_layers).map(|l| NeuronRows::from_model(model, l)).collect::<Result<_>>()?;
    Ok(Arc::new(rows))
}

/// Chooses the active neurons of one token at one layer, from the FFN's input alone (the hidden state after
/// the FFN norm): what a predictor sees before any FFN weight is loaded.
pub trait NeuronSelector {
    /// Fills `active` (cleared first) with neuron indices (original numbering), ascending, for the FFN input `x`
    /// at `layer`.
    fn select(&mut self, layer: usize, x: &[f32], active: &mut Vec<u32>) -> Result<()>;

    /// Selects for the `active.len()` tokens whose FFN inputs are the rows of `x` (`active.len() x d_model`),
    /// token `t` into `active[t]`. The default calls [`NeuronSelector::select`] token by token, in order (what
    /// a stateful selector needs); a stateless one may work on the tokens in parallel.
    fn select_batch(&mut self, layer: usize, x: &[f32], active: &mut [Vec<u32>]) -> Result<()> {
        let d = x.len() / active.len().max(1);
        for (t, a) in active.iter_mut().enumerate() {
            self.select(layer, &x[t * d..(t + 1) * d], a)?;
        }
        Ok(())
    }
}

impl<T: NeuronSelector + ?Sized> NeuronSelector for Box<T> {
    fn select(&mut self, layer: usize, x: &[f32], active: &mut Vec<u32>) -> Result<()> {
        (**self).select(layer, x, active)
    }
    fn select_batch(&mut self, layer: usize, x: &[f32], active: &mut [Vec<u32>]) -> Result<()> {
        (**self).select_batch(layer, x, active)
    }
}

/// Every neuron: the sparse path must then equal the dense one.
#[derive(Debug, Clone, Copy)]
pub struct AllNeurons {
    pub d_ffn: usize,
}

impl NeuronSelector for AllNeurons {
    fn select(&mut self, _layer: usize, _x: &[f32], active: &mut Vec<u32>) -> Result<()> {
        active.clear();
        active.extend(0..self.d_ffn as u32);
        Ok(())
    }
}

/// The truly active neurons: those whose activation magnitude exceeds the layer's threshold (0 for ReLU models,
/// where this is exact; calibrated per layer for others). Computes every neuron to decide, so it measures what
/// sparsity costs in quality, not what it saves in time.
#[derive(Debug, Clone)]
pub struct Oracle {
    act: crate::model::config::Activation,
    rows: Arc<Vec<NeuronRows>>,
    /// Per layer: a neuron is active when `|h| > threshold`.
    thresholds: Vec<f32>,
}

impl Oracle {
    /// An oracle over `rows` (from [`all_rows`]) with one threshold per layer.
    pub fn new(model: &Model, rows: Arc<Vec<NeuronRows>>, thresholds: Vec<f32>) -> Result<Oracle> {
        let n = model.config().n_layers;
        if rows.len() != n || thresholds.len() != n {
            return Err(Error::Invalid(format!(
                "an oracle needs {n} layers of rows and thresholds, got {} and {}",
                rows.len(),
                thresholds.len()
            )));
        }
        Ok(Oracle { act: model.config().activation, rows, thresholds })
    }

    /// The per-layer thresholds.
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }
}

impl Oracle {
    fn layer(&self, layer: usize) -> Result<(f32, &NeuronRows)> {
        match (self.thresholds.get(layer), self.rows.get(layer)) {
            (Some(&thr), Some(rows)) => Ok((thr, rows)),
            _ => Err(Error::Invalid(format!("no oracle threshold for layer {layer}"))),
        }
    }

    fn select_one(&self, thr: f32, rows: &NeuronRows, x: &[f32], active: &mut Vec<u32>) {
        active.clear();
        let f = rows.first.len() / x.len();
        for i in 0..f {
            if rows.neuron(self.act, i, x).abs() > thr {
                active.push(i as u32);
            }
        }
    }
}

impl NeuronSelector for Oracle {
    fn select(&mut self, layer: usize, x: &[f32], active: &mut Vec<u32>) -> Result<()> {
        let (thr, rows) = self.layer(layer)?;
        self.select_one(thr, rows, x, active);
        Ok(())
    }

    /// Stateless: the tokens are decided in parallel, each exactly as [`NeuronSelector::select`] would.
    fn select_batch(&mut self, layer: usize, x: &[f32], active: &mut [Vec<u32>]) -> Result<()> {
        let (thr, rows) = self.layer(layer)?;
        let d = x.len() / active.len().max(1);
        active.par_iter_mut().enumerate().for_each(|(t, a)| self.select_one(thr, rows, &x[t * d..(t + 1) * d], a));
        Ok(())
    }
}

/// Counts of a sparse run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SparseStats {
    /// Neuron evaluations (token x layer x active neuron).
    pub active: u64,
    /// Neurons that existed (token x layer x d_ffn).
    pub total: u64,
}

/// An FFN step computing only the selected neurons from DRAM-resident neuron rows.
pub struct SparseFfn<S> {
    layers: Arc<Vec<NeuronRows>>,
    selector: S,
    /// Per token of the current call, its active neurons.
    actives: Vec<Vec<u32>>,
    pub stats: SparseStats,
}

impl<S: NeuronSelector> SparseFfn<S> {
    /// Dequantizes every layer's FFN of `model` into neuron rows.
    pub fn new(model: &Model, selector: S) -> Result<Self> {
        Ok(Self::with_rows(all_rows(model)?, selector))
    }

    /// A sparse FFN over rows from [`all_rows`] (which an [`Oracle`] may share).
    pub fn with_rows(layers: Arc<Vec<NeuronRows>>, selector: S) -> Self {
        SparseFfn { layers, selector, actives: Vec::new(), stats: SparseStats::default() }
    }

    /// The neuron rows of layer `l`.
    pub fn rows(&self, l: usize) -> &NeuronRows {
        &self.layers[l]
    }
}

impl<S: NeuronSelector> FfnStep for SparseFfn<S> {
    /// Selects the active neurons of all `n` tokens (the selector sees them in order), then computes each
    /// token's output from its active neurons, tokens in parallel: each token's arithmetic is the same
    /// whatever the thread count.
    fn forward(&mut self, model: &Model, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (d, f) = (model.config().d_model, model.config().d_ffn);
        let act = model.config().activation;
        let rows = &self.layers[layer];
        if self.actives.len() < n {
            self.actives.resize_with(n, Vec::new);
        }
        let actives = &mut self.actives[..n];
        self.selector.select_batch(layer, &x[..n * d], actives)?;
        let token = |(t, o): (usize, &mut [f32])| {
            let xt = &x[t * d..(t + 1) * d];
            match &rows.b2 {
                Some(b) => o.copy_from_slice(b),
                None => o.fill(0.0),
            }
            for &i in &actives[t] {
                let i = i as usize;
                let h = rows.neuron(act, i, xt);
                if h != 0.0 {
                    ops::axpy(h, &rows.second_t[i * d..(i + 1) * d], o);
                }
            }
        };
        if n > 1 {
            out[..n * d].par_chunks_exact_mut(d).enumerate().for_each(token);
        } else {
            out[..n * d].chunks_exact_mut(d).enumerate().for_each(token);
        }
        for a in actives.iter() {
            self.stats.active += a.len() as u64;
            self.stats.total += f as u64;
        }
        Ok(())
    }
}
