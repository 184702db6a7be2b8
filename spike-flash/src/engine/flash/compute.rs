//! The FFN arithmetic over records side by side: the gate (or up) rows of `k` neurons are multiplied by the
//! prepared activations as one strided matrix, and the down columns are scaled by the neuron activations and
//! summed (dequantized and accumulated for one token, multiplied as an f32 matrix for a batch of tokens). The
//! [`FfnStep`] of [`FlashFfn`]: select, look up the cache, read what is missing, compute.

use std::time::Instant;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::{nanos, FlashFfn};
use crate::engine::input::Input;
use crate::engine::kernels::{self, QMatrix};
use crate::engine::model::{activate, FfnStep, Model};
use crate::model::config::Activation;
use crate::model::quant::{self, DType};
use crate::{Error, Result};

/// How a record's bytes are laid out, from the layout's manifest.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowFormat {
    /// Element type of the rows (gate, up, fc1).
    pub(super) dtype: DType,
    /// Element type of the down (fc2) column.
    pub(super) column_dtype: DType,
    pub(super) d: usize,
    pub(super) f: usize,
    pub(super) gated: bool,
    /// Bytes of one row (gate, up, fc1) of `d` values.
    pub(super) part: usize,
    /// Bytes of the down (fc2) column of `d` values, which follows the rows.
    pub(super) column: usize,
    /// Bytes of a whole payload (the stride of rows side by side).
    pub(super) payload: usize,
    pub(super) act: Activation,
}

/// Buffers of the FFN computation, reused from call to call.
#[derive(Default)]
pub(super) struct Scratch {
    input: Input,
    g: Vec<f32>,
    u: Vec<f32>,
    dense_down: Vec<f32>,
}

/// `out (n x d) += h (n x k) * rows' down parts (k x d)`: the second projection over `k` rows side by side.
#[allow(clippy::too_many_arguments)]
fn accumulate_down(
    fmt: &RowFormat,
    rows: &[u8],
    k: usize,
    h: &[f32],
    n: usize,
    dense: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    let (d, column, payload, dtype) = (fmt.d, fmt.column, fmt.payload, fmt.column_dtype);
    let off = if fmt.gated { 2 * fmt.part } else { fmt.part };
    if n >= 8 {
        // A batch: dequantize the columns, a bounded block of rows at a time, and multiply as f32 matrices.
        const BLOCK: usize = 256;
        let hv = ArrayView2::from_shape((n, k), h).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut ov = ArrayViewMut2::from_shape((n, d), out).map_err(|e| Error::Invalid(e.to_string()))?;
        for j0 in (0..k).step_by(BLOCK) {
            let kb = BLOCK.min(k - j0);
            dense.resize(kb * d, 0.0);
            for j in 0..kb {
                let at = (j0 + j) * payload + off;
                quant::dequantize(dtype, &rows[at..at + column], &mut dense[j * d..(j + 1) * d])?;
            }
            let dv = ArrayView2::from_shape((kb, d), &dense[..]).map_err(|e| Error::Invalid(e.to_string()))?;
            let hb = hv.slice(ndarray::s![.., j0..j0 + kb]);
            ndarray::linalg::general_mat_mul(1.0, &hb, &dv, 1.0, &mut ov);
        }
        return Ok(());
    }
    let bl = dtype.block_len();
    let blocks = d / bl;
    let isa = kernels::isa();
    let cols = kernels::Columns { dtype, data: rows, stride: payload, offset: off };
    // One token: split the output dimensions (whole blocks) over the pool; every task walks all k columns.
    let tasks = if n == 1 && k >= 64 { rayon::current_num_threads().min(blocks).max(1) } else { 1 };
    let per = blocks.div_ceil(tasks);
    if tasks > 1 {
        use rayon::prelude::*;
        out[..d].par_chunks_mut(per * bl).enumerate().for_each(|(i, o)| {
            let b0 = i * per;
            kernels::add_scaled_columns(isa, cols, &h[..k], b0..b0 + o.len() / bl, o);
        });
    } else {
        for t in 0..n {
            let o = &mut out[t * d..(t + 1) * d];
            kernels::add_scaled_columns(isa, cols, &h[t * k..(t + 1) * k], 0..blocks, o);
        }
    }
    Ok(())
}

/// The FFN over `k` rows side by side (`rows`, stride `fmt.payload`) whose neurons are `ids`, for the `n`
/// tokens prepared in `sc.input`, added to `out`. `keep(t, j)` says whether row `j` counts for token `t`.
#[allow(clippy::too_many_arguments)]
fn compute_rows(
    fmt: &RowFormat,
    sc: &mut Scratch,
    rows: &[u8],
    ids: &[u32],
    n: usize,
    b1: Option<&[f32]>,
    keep: &dyn Fn(usize, usize) -> bool,
    out: &mut [f32],
) -> Result<u64> {
    let (d, k) = (fmt.d, ids.len());
    if k == 0 {
        return Ok(0);
    }
    let rows = &rows[..(k - 1) * fmt.payload + fmt.payload];
    sc.g.resize(n * k, 0.0);
    let first = QMatrix::strided(fmt.dtype, k, d, rows, fmt.payload)?;
    sc.input.matmul(&first, &mut sc.g);
    if fmt.gated {
        sc.u.resize(n * k, 0.0);
        let up = QMatrix::strided(fmt.dtype, k, d, &rows[fmt.part..], fmt.payload)?;
        sc.input.matmul(&up, &mut sc.u);
    }
    for t in 0..n {
        for (j, &i) in ids.iter().enumerate() {
            let g = &mut sc.g[t * k + j];
            if !keep(t, j) {
                *g = 0.0;
                continue;
            }
            let a = activate(fmt.act, *g + b1.map_or(0.0, |b| b[i as usize]));
            *g = if fmt.gated { a * sc.u[t * k + j] } else { a };
        }
    }
    accumulate_down(fmt, rows, k, &sc.g, n, &mut sc.dense_down, out)?;
    Ok((n * k) as u64)
}

impl FfnStep for FlashFfn {
    fn forward(&mut self, model: &Model, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let fmt = self.fmt;
        let (d, f, payload) = (fmt.d, fmt.f, fmt.payload);
        self.stats.calls += 1;
        self.stats.token_layers += n as u64;
        self.read_resident(layer)?;
        let t0 = Instant::now();
        self.select(layer, x, n)?;
        self.stats.select_ns += nanos(t0);

        let t1 = Instant::now();
        match self.caches.as_mut() {
            Some(c) => c[layer].begin_token(&self.fetch, &mut self.missing),
            None => self.missing.clone_from(&self.fetch),
        }
        self.stats.mm_ns += nanos(t1);
        let to_read = self.use_prefetch(layer)?;
        self.read(layer, to_read)?;
        if n == 1 && layer + 1 < self.layout.manifest().layers.len() {
            self.start_prefetch(layer + 1, x)?;
        }
        let t2 = Instant::now();
        self.declined.clear();
        match self.caches.as_mut() {
            Some(c) => {
                let c = &mut c[layer];
                let staged = &self.staging.as_slice()[self.staging_at..];
                for (k, &i) in self.missing.iter().enumerate() {
                    self.declined.push(c.insert(i, &staged[k * payload..(k + 1) * payload]).is_none());
                }
            }
            None => self.declined.resize(self.missing.len(), true),
        }
        self.stats.mm_ns += nanos(t2);

        let t3 = Instant::now();
        let (b1, b2) = model.layer(layer).ffn.biases();
        for t in 0..n {
            let o = &mut out[t * d..(t + 1) * d];
            match b2 {
                Some(b) => o.copy_from_slice(b),
                None => o.fill(0.0),
            }
        }
        self.scratch.input.prepare(fmt.dtype, x, n, d, model.precision());
        let (mask, all_active) = (&self.mask, self.all_active);
        let active = |t: usize, i: u32| all_active || mask[t * f + i as usize];
        let mut computed = 0;
        if let Some(c) = self.caches.as_ref() {
            let c = &c[layer];
            let ids = c.neurons();
            let all_cached = self.opts.compute_all_cached;
            let keep = |t: usize, j: usize| all_cached || active(t, ids[j]);
            computed += compute_rows(&fmt, &mut self.scratch, c.rows(), ids, n, b1, &keep, out)?;
        }
        let (ids, declined) = (&self.missing, &self.declined);
        let keep = |t: usize, j: usize| declined[j] && active(t, ids[j]);
        if declined.iter().any(|&x| x) {
            let rows = &self.staging.as_slice()[self.staging_at..];
            computed += compute_rows(&fmt, &mut self.scratch, rows, ids, n, b1, &keep, out)?;
        }
        self.stats.neurons_computed += computed;
        self.stats.compute_ns += nanos(t3);
        if let Some(c) = self.caches.as_mut() {
            let t4 = Instant::now();
            c[layer].end_token();
            self.stats.mm_ns += nanos(t4);
        }
        Ok(())
    }
}
