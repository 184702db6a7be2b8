//! Activations prepared for the kernels, at a chosen precision.
//!
//! The kernels multiply block-quantized weights by activations quantized on the fly to 8 bits per 32-value
//! block, as llama.cpp does ([`ActPrecision::Q8`]). That rounding moves the default model's logits by up to
//! about 3% of their range against an exact forward pass. [`ActPrecision::Q8x2`] removes most of it with the
//! same integer kernels: each activation block is split into `x_hi = d * round(x / d)` (which the kernels
//! re-quantize exactly, since its largest value is `127 d`) and the residual `x - x_hi` (at most `d / 2`, which
//! the kernels quantize with its own, 254 times finer, scale). Both halves run as one batch of `2n` tokens, so
//! each weight block is loaded once, and the two results are added: the activation error drops by a factor of
//! about 254, at twice the integer work.

use rayon::prelude::*;

use super::kernels::{self, Acts, QMatrix};
use crate::model::quant::{DType, QK};

/// How activations are quantized for block-quantized weights (float weights always see f32 activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActPrecision {
    /// One 8-bit block per 32 values (llama.cpp's numerics).
    Q8,
    /// A high and a residual 8-bit block: about 16 bits of precision, twice the integer work.
    #[default]
    Q8x2,
}

impl ActPrecision {
    /// Parses `q8` or `q8x2`.
    pub fn parse(s: &str) -> Option<ActPrecision> {
        match s {
            "q8" => Some(ActPrecision::Q8),
            "q8x2" => Some(ActPrecision::Q8x2),
            _ => None,
        }
    }
}

/// Reusable activation buffers: one prepared input, applied to any number of matrices of one kind.
#[derive(Default)]
pub struct Input {
    /// The prepared activations; when split with one token, the high half only.
    acts: Acts,
    /// When split with one token: the residual half.
    acts_lo: Acts,
    stacked: Vec<f32>,
    wide: Vec<f32>,
    /// Tokens of the input (the kernels see twice as many when split).
    n: usize,
    split: bool,
    /// Prepared for quantized weights (else float weights).
    quantized: bool,
}

impl Input {
    /// Prepares `n` tokens of `cols` values (token-major `x`) for weights of type `wdtype`.
    pub fn prepare(&mut self, wdtype: DType, x: &[f32], n: usize, cols: usize, precision: ActPrecision) {
        self.n = n;
        self.quantized = wdtype.is_quantized();
        self.split = self.quantized && precision == ActPrecision::Q8x2;
        if !self.split {
            self.acts.prepare(wdtype, x, n, cols);
            return;
        }
        self.stacked.resize(2 * n * cols, 0.0);
        let (hi, lo) = self.stacked.split_at_mut(n * cols);
        split_blocks(x, hi, lo);
        if n == 1 {
            self.acts.prepare(wdtype, hi, 1, cols);
            self.acts_lo.prepare(wdtype, lo, 1, cols);
        } else {
            self.acts.prepare(wdtype, &self.stacked, 2 * n, cols);
        }
    }

    /// Whether this input was prepared for weights of type `dtype` (quantized and float weights need
    /// different preparations).
    pub fn fits(&self, dtype: DType) -> bool {
        self.quantized == dtype.is_quantized() && self.n > 0
    }

    /// `out = x W^T` (`n x w.rows`, token-major).
    pub fn matmul(&mut self, w: &QMatrix, out: &mut [f32]) {
        if !self.split {
            kernels::matmul(w, &self.acts, out);
            return;
        }
        if self.n == 1 {
            // One token: both halves over each chunk of rows in turn, so the second pass reads the rows from
            // cache rather than memory.
            let isa = kernels::isa();
            let chunk = w.rows.div_ceil(2 * rayon::current_num_threads()).max(64);
            let rb = w.row_bytes();
            let (hi, lo) = (&self.acts, &self.acts_lo);
            out.par_chunks_mut(chunk).enumerate().for_each_init(Vec::new, |tmp: &mut Vec<f32>, (i, o)| {
                let r0 = i * chunk;
                let sub = QMatrix {
                    dtype: w.dtype,
                    rows: o.len(),
                    cols: w.cols,
                    data: &w.data[r0 * rb..(r0 + o.len()) * rb],
                };
                kernels::matmul_with(isa, &sub, hi, o);
                tmp.resize(o.len(), 0.0);
                kernels::matmul_with(isa, &sub, lo, tmp);
                for (a, b) in o.iter_mut().zip(tmp.iter()) {
                    *a += b;
                }
            });
            return;
        }
        self.wide.resize(2 * self.n * w.rows, 0.0);
        kernels::matmul(w, &self.acts, &mut self.wide);
        let (hi, lo) = self.wide.split_at(self.n * w.rows);
        for ((o, a), b) in out.iter_mut().zip(hi).zip(lo) {
            *o = a + b;
        }
    }
}

/// Splits each 32-value block of `x` into `hi = d * round(x / d)` with `d = amax / 127` and `lo = x - hi`.
fn split_blocks(x: &[f32], hi: &mut [f32], lo: &mut [f32]) {
    for ((xb, hb), lb) in x.chunks_exact(QK).zip(hi.chunks_exact_mut(QK)).zip(lo.chunks_exact_mut(QK)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for ((&v, h), l) in xb.iter().zip(hb.iter_mut()).zip(lb.iter_mut()) {
            *h = (v * inv).round() * d;
            *l = v - *h;
        }
    }
}
