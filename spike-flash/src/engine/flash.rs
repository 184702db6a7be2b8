//! The flash-backed FFN: per layer and token batch, the active neurons' records are read from a layout's
//! `ffn.bin` through a read backend (O_DIRECT io_uring, a pread pool, or mmap) and the FFN is computed over
//! them with the quantized kernels, straight from the record bytes. Attention, embeddings and norms stay in
//! DRAM (the layout's resident model, [`Layout::load_model`]).
//!
//! A record holds one neuron in the bundled format of `docs/format.md`: gate row | up row | down column (OPT:
//! fc1 row | fc2 column | fc1 bias), each part `d_model` values of the record type. Rows of many records side
//! by side are a strided matrix ([`QMatrix::strided`]): the gate (or up) rows of `k` neurons are multiplied by
//! the prepared activations in one call, like a dense matrix of `k` rows. The down columns are scaled by the
//! neuron activations and summed: dequantized and accumulated for one token, or multiplied as an f32 matrix
//! for a batch of tokens.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::input::Input;
use super::kernels::QMatrix;
use super::model::{activate, FfnStep, Model};
use super::sparse::NeuronSelector;
use crate::io::{AlignedBuf, ReadBackend, ReadReq};
use crate::layout::Layout;
use crate::model::config::Activation;
use crate::model::quant::{self, DType};
use crate::{Error, Result};

/// Counters of a flash FFN, cumulative; the difference between two snapshots describes the tokens between.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FlashStats {
    /// Calls (layer x token batch).
    pub calls: u64,
    /// Token x layer pairs computed.
    pub token_layers: u64,
    /// Neurons selected, summed over tokens and layers.
    pub neurons_active: u64,
    /// Neurons whose records were read from flash.
    pub neurons_read: u64,
    /// Neuron rows the FFN was computed over (active rows plus any extra cached rows computed).
    pub neurons_computed: u64,
    /// Time choosing the active neurons (the predictor or oracle).
    pub select_ns: u64,
    /// Wall time of the batched reads (waiting for the device, and the backend's copy-out).
    pub io_ns: u64,
    /// Time placing rows: building read lists, cache bookkeeping and row copies.
    pub mm_ns: u64,
    /// Time computing the FFN over the rows.
    pub compute_ns: u64,
}

/// How a record's bytes are laid out, from the layout's manifest.
#[derive(Debug, Clone, Copy)]
struct RowFormat {
    dtype: DType,
    d: usize,
    f: usize,
    gated: bool,
    /// Bytes of one part (a row or column of `d` values).
    part: usize,
    /// Bytes of a whole payload (the stride of rows side by side).
    payload: usize,
    act: Activation,
}

/// The FFN of a layout, read from flash through `backend`, over the neurons `selector` picks.
pub struct FlashFfn {
    layout: Arc<Layout>,
    backend: Box<dyn ReadBackend>,
    selector: Box<dyn NeuronSelector + Send>,
    fmt: RowFormat,
    // Per call, reused.
    active: Vec<u32>,
    /// Neurons to fetch for the batch (the union of the tokens' active sets), ascending.
    fetch: Vec<u32>,
    /// `n x d_ffn`: whether neuron `i` is active for token `t`.
    mask: Vec<bool>,
    /// Whether every token of the batch selected every neuron (no masking needed).
    all_active: bool,
    reqs: Vec<ReadReq>,
    staging: AlignedBuf,
    input: Input,
    g: Vec<f32>,
    u: Vec<f32>,
    col: Vec<f32>,
    dense_down: Vec<f32>,
    pub stats: FlashStats,
}

fn nanos(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

impl FlashFfn {
    /// A flash FFN over `layout`'s records, read with `backend` (opened on the layout's `ffn.bin`), computing
    /// the neurons `selector` picks. `model` must be the layout's resident model.
    pub fn new(
        model: &Model,
        layout: Arc<Layout>,
        backend: Box<dyn ReadBackend>,
        selector: Box<dyn NeuronSelector + Send>,
    ) -> Result<FlashFfn> {
        layout.check_model(model.config(), None)?;
        let cfg = model.config();
        let fmt = RowFormat {
            dtype: layout.dtype(),
            d: cfg.d_model,
            f: cfg.d_ffn,
            gated: layout.gated(),
            part: layout.part_bytes(),
            payload: layout.payload_bytes(),
            act: cfg.activation,
        };
        Ok(FlashFfn {
            layout,
            backend,
            selector,
            fmt,
            active: Vec::new(),
            fetch: Vec::new(),
            mask: Vec::new(),
            all_active: false,
            reqs: Vec::new(),
            staging: AlignedBuf::new(0)?,
            input: Input::default(),
            g: Vec::new(),
            u: Vec::new(),
            col: Vec::new(),
            dense_down: Vec::new(),
            stats: FlashStats::default(),
        })
    }

    /// The read backend (for its I/O counters).
    pub fn backend(&self) -> &dyn ReadBackend {
        &*self.backend
    }

    /// Zeroes the flash and I/O counters.
    pub fn reset_stats(&mut self) {
        self.stats = FlashStats::default();
        self.backend.reset_stats();
    }

    /// Picks each token's active neurons and their union.
    fn select(&mut self, layer: usize, x: &[f32], n: usize) -> Result<()> {
        let (d, f) = (self.fmt.d, self.fmt.f);
        self.mask.clear();
        self.mask.resize(n * f, false);
        self.all_active = true;
        for t in 0..n {
            self.selector.select(layer, &x[t * d..(t + 1) * d], &mut self.active)?;
            let m = &mut self.mask[t * f..(t + 1) * f];
            for &i in &self.active {
                let slot = m
                    .get_mut(i as usize)
                    .ok_or_else(|| Error::Invalid(format!("layer {layer}: the selector picked neuron {i} of {f}")))?;
                *slot = true;
            }
            self.all_active &= self.active.len() == f;
            self.stats.neurons_active += self.active.len() as u64;
        }
        self.fetch.clear();
        if self.all_active {
            self.fetch.extend(0..f as u32);
        } else {
            self.fetch.extend((0..f).filter(|&i| (0..n).any(|t| self.mask[t * f + i])).map(|i| i as u32));
        }
        Ok(())
    }

    /// Reads the records of `self.fetch` into `self.staging`, one payload after another.
    fn read(&mut self, layer: usize) -> Result<()> {
        let t0 = Instant::now();
        self.reqs.clear();
        let payload = self.fmt.payload;
        for (k, &i) in self.fetch.iter().enumerate() {
            self.layout.neuron_reads(layer, i as usize, k * payload, &mut self.reqs)?;
        }
        self.staging.resize(self.fetch.len() * payload)?;
        self.stats.mm_ns += nanos(t0);
        let t1 = Instant::now();
        self.backend
            .read_batch(&self.reqs, &mut self.staging)
            .map_err(|e| Error::InLayer { layer, source: Box::new(e) })?;
        self.stats.io_ns += nanos(t1);
        self.stats.neurons_read += self.fetch.len() as u64;
        Ok(())
    }
}

/// `out (n x d) += h (n x k) * rows' down parts (k x d)`: the second projection over `k` rows side by side.
#[allow(clippy::too_many_arguments)]
fn accumulate_down(
    fmt: &RowFormat,
    rows: &[u8],
    k: usize,
    h: &[f32],
    n: usize,
    col: &mut Vec<f32>,
    dense: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    let (d, part, payload) = (fmt.d, fmt.part, fmt.payload);
    let off = if fmt.gated { 2 * part } else { part };
    if n >= 8 {
        // A batch: dequantize the columns once and multiply as f32 matrices.
        dense.resize(k * d, 0.0);
        for j in 0..k {
            let src = &rows[j * payload + off..j * payload + off + part];
            quant::dequantize(fmt.dtype, src, &mut dense[j * d..(j + 1) * d])?;
        }
        let hv = ArrayView2::from_shape((n, k), h).map_err(|e| Error::Invalid(e.to_string()))?;
        let dv = ArrayView2::from_shape((k, d), &dense[..]).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut ov = ArrayViewMut2::from_shape((n, d), out).map_err(|e| Error::Invalid(e.to_string()))?;
        ndarray::linalg::general_mat_mul(1.0, &hv, &dv, 1.0, &mut ov);
        return Ok(());
    }
    col.resize(d, 0.0);
    for j in 0..k {
        if (0..n).all(|t| h[t * k + j] == 0.0) {
            continue;
        }
        let src = &rows[j * payload + off..j * payload + off + part];
        quant::dequantize(fmt.dtype, src, col)?;
        for t in 0..n {
            let a = h[t * k + j];
            if a != 0.0 {
                super::ops::axpy(a, col, &mut out[t * d..(t + 1) * d]);
            }
        }
    }
    Ok(())
}

impl FfnStep for FlashFfn {
    fn forward(&mut self, model: &Model, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let fmt = self.fmt;
        let (d, f) = (fmt.d, fmt.f);
        self.stats.calls += 1;
        self.stats.token_layers += n as u64;
        let t0 = Instant::now();
        self.select(layer, x, n)?;
        self.stats.select_ns += nanos(t0);
        self.read(layer)?;

        let t1 = Instant::now();
        let k = self.fetch.len();
        let (b1, b2) = model.layer(layer).ffn.biases();
        for t in 0..n {
            let o = &mut out[t * d..(t + 1) * d];
            match b2 {
                Some(b) => o.copy_from_slice(b),
                None => o.fill(0.0),
            }
        }
        if k > 0 {
            let rows = &self.staging.as_slice()[..k * fmt.payload];
            self.input.prepare(fmt.dtype, x, n, d, model.precision());
            self.g.resize(n * k, 0.0);
            let first = QMatrix::strided(fmt.dtype, k, d, rows, fmt.payload)?;
            self.input.matmul(&first, &mut self.g);
            if fmt.gated {
                self.u.resize(n * k, 0.0);
                let up = QMatrix::strided(fmt.dtype, k, d, &rows[fmt.part..], fmt.payload)?;
                self.input.matmul(&up, &mut self.u);
            }
            for t in 0..n {
                let m = &self.mask[t * f..(t + 1) * f];
                for (j, &i) in self.fetch.iter().enumerate() {
                    let g = &mut self.g[t * k + j];
                    if !self.all_active && !m[i as usize] {
                        *g = 0.0;
                        continue;
                    }
                    let pre = *g + b1.map_or(0.0, |b| b[i as usize]);
                    let a = activate(fmt.act, pre);
                    *g = if fmt.gated { a * self.u[t * k + j] } else { a };
                }
            }
            accumulate_down(&fmt, rows, k, &self.g, n, &mut self.col, &mut self.dense_down, out)?;
        }
        self.stats.neurons_computed += (n * k) as u64;
        self.stats.compute_ns += nanos(t1);
        Ok(())
    }
}
