//! Activations prepared for the kernels, at a chosen precision.
//!
//! The kernels multiply block-quantized weights by activations quantized on the fly. With one 8-bit block per
//! 32 values, as llama.cpp does ([`ActPrecision::Q8`]), the default model's logits move by up to about 3% of
//! their range against an exact forward pass. [`ActPrecision::Q8x2`] quantizes to 16 bits held as two 8-bit
//! halves (`kernels::WideActs`): the same integer instructions, a step 255 times finer, and on AVX-512 a fused
//! one-token kernel that unpacks each weight block once for both halves.

use super::kernels::{self, Acts, QMatrix, WideActs};
use crate::model::quant::DType;

/// How activations are quantized for block-quantized weights (float weights always see f32 activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActPrecision {
    /// One 8-bit block per 32 values (llama.cpp's numerics).
    Q8,
    /// 16 bits per value as two 8-bit halves: logits within about 0.01% of an exact forward pass.
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
    acts: Acts,
    wide: WideActs,
    scratch: Vec<f32>,
    n: usize,
    /// Prepared as 16-bit activations in `wide` (else in `acts`).
    is_wide: bool,
    /// Prepared for quantized weights (else float weights).
    quantized: bool,
}

impl Input {
    /// Prepares `n` tokens of `cols` values (token-major `x`) for weights of type `wdtype`.
    pub fn prepare(&mut self, wdtype: DType, x: &[f32], n: usize, cols: usize, precision: ActPrecision) {
        self.n = n;
        self.quantized = wdtype.is_quantized();
        self.is_wide = self.quantized && precision == ActPrecision::Q8x2;
        if self.is_wide {
            self.wide.prepare(x, n, cols);
        } else {
            self.acts.prepare(wdtype, x, n, cols);
        }
    }

    /// Whether this input was prepared for weights of type `dtype` (quantized and float weights need
    /// different preparations).
    pub fn fits(&self, dtype: DType) -> bool {
        self.quantized == dtype.is_quantized() && self.n > 0
    }

    /// `out = x W^T` (`n x w.rows`, token-major).
    pub fn matmul(&mut self, w: &QMatrix, out: &mut [f32]) {
        if self.is_wide {
            kernels::matmul_wide(w, &self.wide, out, &mut self.scratch);
        } else {
            kernels::matmul(w, &self.acts, out);
        }
    }
}
