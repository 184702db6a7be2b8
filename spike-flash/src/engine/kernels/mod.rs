//! Dot-product kernels of the dense engine: weight matrices in ggml's block formats (Q4_0, Q4_1, Q8_0) or
//! plain floats (F32, F16, BF16) times activations of one or many tokens.
//!
//! # Numerics
//!
//! For quantized weights the activations are quantized on the fly, per 32-element block, as llama.cpp's
//! `quantize_row_q8_0` / `quantize_row_q8_1` do: `d = amax / 127`, `q_i = round(x_i * 127 / amax)` (ties to
//! even), and the block sum `s = d * sum(q_i)`. Unlike llama.cpp, `d` and `s` are kept in f32 rather than
//! f16, so the only activation error is the rounding of `q_i`: `|x_i - d q_i| <= d / 2` (plus an ulp). The
//! dot product of a weight block with an activation block is then an exact integer dot product scaled in
//! f32, summed over blocks in f32:
//!
//! - Q4_0: `sum_b d_w d_x sum_i (q_i - 8) x_i`
//! - Q4_1: `sum_b d_w d_x sum_i q_i x_i + m_w s_x`
//! - Q8_0: `sum_b d_w d_x sum_i q_i x_i`
//!
//! The scalar kernels ([`Isa::Scalar`]) compute exactly these formulas and are the reference. The SIMD
//! kernels compute the same integer dot products and the same per-block scale products, but sum in another
//! order, and some split a block's integer dot product into an unsigned one plus an offset times the
//! activation block sum (Q4_0's `-8`; Q8_0's `+128` in the batched AVX-512 kernel, where the one-token and
//! AVX2 kernels use the abs/sign trick instead), which moves the offset into the f32 sum. Both differences
//! are f32 rounding only: tests bound them by `1e-5` of `sum |w_i x_i|` (measured: below `1e-6`). Against
//! [`dot_reference_f32`] (exact weights, exact activations) the quantized kernels stay within the provable
//! bound `sum_b (d_b / 2) sum_(i in b) |w_i|` that activation rounding allows; on random data the error is
//! about 5% of it. Float weights are converted to f32 exactly and multiplied by f32 activations with f32
//! accumulation; the SIMD kernels differ from the scalar ones only in the order of the sum.
//!
//! # Threading
//!
//! [`matmul`] splits the rows of a matrix into about `2 * rayon::current_num_threads()` contiguous chunks
//! of at least [`MIN_ROWS_PER_TASK`] rows and, for many tokens and few row chunks, the tokens too. The
//! result of one (row, token) pair does not depend on the split: threaded and unthreaded results are equal
//! bit for bit.
//!
//! # Batching
//!
//! With one token each weight block is used once, so the kernels read the weights straight from the
//! matrix, one row after another (sequential streams suit the hardware prefetcher best), and run near
//! memory bandwidth. With more tokens the SIMD kernels unpack a tile of rows (nibbles to bytes, scales to
//! f32; 4 rows for AVX-512, 2 for AVX2) into a small per-thread buffer that stays in L1 and run it against
//! all the tokens of the task, 4 at a time, from a register tile of rows x tokens accumulators: each weight
//! byte loaded from memory serves every token and each activation load serves several rows, which makes
//! prompt processing compute bound. Weights are never repacked in memory.
//!
//! Float rows need no unpacking beyond a conversion to f32 (F16 by F16C's `vcvtph2ps`, BF16 by a shift), so
//! the batched float kernels read a tile of rows in place and convert each vector of weights in registers,
//! where it serves a tile of tokens: 4 rows x 6 tokens for AVX-512 (24 accumulators of the 32 registers),
//! 3 x 4 for AVX2 (12 of 16), each a vector of partial sums reduced once at the end. A chunk of rows runs
//! against each token tile before the next (see `for_each_float_tile`), so the f32 activations, twice
//! the bytes of f16 weights, come from L2 rather than L3.
//!
//! # Instruction sets
//!
//! [`Isa::Avx2`] multiplies with `vpmaddubsw`, one 32-element block per register; [`Isa::Avx512`] with
//! VNNI's `vpdpbusd`, two blocks per register. Both convert the f16 scales with F16C. See the `avx2` and
//! `avx512` modules for the details of each kernel.

/// The entry points every SIMD module has, written once: `part` (the batched kernels for many tokens, the
/// one-token kernels row by row otherwise), `dot_row` (one row of any dtype times one token) and
/// `batched_float` (float rows times many tokens). Each module supplies its kernels under the same names
/// (`dot_q4::<Q4_1>`, `dot_q8_0`, `dot_float`, `batched_quantized`, and `float_micro::<NT, KIND>(rows,
/// tokens)` with its register tile `FR x FT`, instantiated for `NT` in `float_tokens` and 1), and the
/// expansion compiles them with the module's target features, so the calls inside inline as direct calls
/// between functions of one feature set.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_entry_points {
    ($features:literal, $cpu:literal, float_tokens: [$($nt:literal),*] $(,)?) => {
        /// The kernels of this module over `rows x toks`, see [`super::part`].
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $cpu, ".")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn part(
            w: &QMatrix,
            acts: &Acts,
            rows: Range<usize>,
            toks: Range<usize>,
            put: &mut impl Put,
        ) {
            let dtype = w.dtype;
            if acts.n() > 1 && dtype.is_quantized() {
                batched_quantized(w, acts, rows, toks, put);
                return;
            }
            if acts.n() > 1 {
                batched_float(w, acts, rows, toks, put);
                return;
            }
            for r in rows {
                let row = w.row(r);
                for t in toks.clone() {
                    put(t, r, dot_row(dtype, row, acts, t));
                }
            }
        }

        /// One row of `dtype` times token `t`, by the one-token kernels.
        ///
        /// # Safety
        /// A `#[target_feature]` function: calling it from code compiled without these features is `unsafe`,
        #[doc = concat!("and sound only when the CPU has them. The CPU must support ", $cpu, ".")]
        #[target_feature(enable = $features)]
        pub(super) fn dot_row(dtype: DType, row: &[u8], acts: &Acts, t: usize) -> f32 {
            match dtype {
                DType::Q4_0 => dot_q4::<false>(row, acts.q_tok(t), acts.sc_tok(t)),
                DType::Q4_1 => dot_q4::<true>(row, acts.q_tok(t), acts.sc_tok(t)),
                DType::Q8_0 => dot_q8_0(row, acts.q_tok(t), acts.sc_tok(t)),
                DType::F32 | DType::F16 | DType::BF16 => dot_float(dtype, row, acts.x_tok(t)),
            }
        }

        /// Float rows times many tokens: tiles of `FR` rows, read in place and converted to f32 in registers,
        /// against `FT` tokens at a time from a register tile of `FR x FT` accumulators, in the order of
        /// [`super::for_each_float_tile`].
        #[target_feature(enable = $features)]
        fn batched_float(
            w: &QMatrix,
            acts: &Acts,
            rows: Range<usize>,
            toks: Range<usize>,
            put: &mut impl Put,
        ) {
            let kind = float_kind::of(w.dtype);
            let tile = |slots: &[usize; FR], t0: usize, nt: usize| match kind {
                float_kind::F16 => float_tile::<{ float_kind::F16 }>(w, slots, acts, t0, nt),
                float_kind::BF16 => float_tile::<{ float_kind::BF16 }>(w, slots, acts, t0, nt),
                _ => float_tile::<{ float_kind::F32 }>(w, slots, acts, t0, nt),
            };
            for_each_float_tile::<FR, FT>(w, rows, toks, tile, put);
        }

        /// `float_micro` for `nt` tokens.
        #[target_feature(enable = $features)]
        fn float_tile<const KIND: u8>(
            w: &QMatrix,
            rows: &[usize; FR],
            acts: &Acts,
            t0: usize,
            nt: usize,
        ) -> [[f32; FT]; FR] {
            let wr: [&[u8]; FR] = std::array::from_fn(|i| w.row(rows[i]));
            match nt {
                $($nt => float_micro::<$nt, KIND>(wr, std::array::from_fn(|j| acts.x_tok(t0 + j))),)*
                _ => float_micro::<1, KIND>(wr, [acts.x_tok(t0)]),
            }
        }
    };
}

/// The tail of the batched micro-kernels (`micro` in each SIMD module), written once for both register
/// widths: adds the offset terms `sum_b m_b * (d_x sum_x)_b` to the `[row][token]` accumulators `$acc` when
/// `$offsets` holds (the scratch rows of `mw = (0, m)` at `$mp` against the tokens' `(d, d sum)` at `$sp[j]`,
/// `2 $nbp` floats each), then evaluates to the `[[f32; T]; R]` tile of their sums. `$load`, `$fmadd` and
/// `$sum` are the module's unaligned load, fused multiply-add and horizontal sum of `$lanes` f32 lanes; `R`,
/// `T` and `NT` are the kernel's. Expanded in the kernel's body, so it compiles with the kernel's target
/// features, as the code written out in place would.
#[cfg(target_arch = "x86_64")]
macro_rules! micro_tail {
    (
        $acc:ident, $sp:ident, $mp:ident, $nbp:ident,
        offsets: $offsets:expr, lanes: $lanes:literal, load: $load:ident, fmadd: $fmadd:ident, sum: $sum:ident $(,)?
    ) => {{
        if $offsets {
            for k in (0..$nbp * 2).step_by($lanes) {
                for j in 0..NT {
                    // SAFETY: `k + lanes <= 2 nbp` (the kernel asserts `2 nbp` is a multiple of the lane count),
                    // the length of each token's scales and of each scratch row of `mw`.
                    let x = unsafe { $load($sp[j].add(k)) };
                    for (i, acc) in $acc.iter_mut().enumerate() {
                        // SAFETY: as above.
                        let m = unsafe { $load($mp.add(i * $nbp * 2 + k)) };
                        acc[j] = $fmadd(m, x, acc[j]);
                    }
                }
            }
        }
        let mut out = [[0.0f32; T]; R];
        for i in 0..R {
            for j in 0..NT {
                out[i][j] = $sum($acc[i][j]);
            }
        }
        out
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod cols;
mod scalar;
#[cfg(test)]
mod tests;
mod wide;

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::model::quant::{DType, QK};
use crate::{Error, Result};

pub use cols::{add_scaled_columns, Columns};
pub use scalar::{dequantize_row, dot_reference_f32};
pub use wide::{dot_wide_reference, matmul_wide, WideActs, WIDE_BASE};

/// The smallest number of rows one task takes when [`matmul`] splits a matrix over threads.
pub const MIN_ROWS_PER_TASK: usize = 64;

/// The smallest number of tokens one task takes when [`matmul`] splits tokens over threads.
const MIN_TOKENS_PER_TASK: usize = 16;

/// A read-only weight matrix in ggml layout: `rows` rows of `cols` elements, each row
/// `dtype.bytes_for(cols)` bytes, row `r` starting at byte `r * stride` of `data` (`stride` is the row size for a
/// plain matrix, larger for rows interleaved with other data, such as the gate rows of neuron records).
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    stride: usize,
}

impl<'a> QMatrix<'a> {
    /// Wraps `data` as a `rows x cols` matrix of `dtype`; `cols` must be a whole number of blocks and
    /// `data` exactly `rows` rows long.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        let row_bytes = row_bytes_of(dtype, cols)?;
        let expected = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| Error::Invalid(format!("matrix of {dtype}: {rows} x {cols} overflows")))?;
        if data.len() != expected {
            return Err(Error::Invalid(format!(
                "matrix of {dtype}: {rows} x {cols} needs {expected} bytes, found {}",
                data.len()
            )));
        }
        Ok(QMatrix { dtype, rows, cols, data, stride: row_bytes })
    }

    /// Rows of `dtype` interleaved with other bytes: row `r` is the `dtype.bytes_for(cols)` bytes at
    /// `r * stride` of `data`. `data` must reach the end of the last row.
    pub fn strided(dtype: DType, rows: usize, cols: usize, data: &'a [u8], stride: usize) -> Result<Self> {
        let row_bytes = row_bytes_of(dtype, cols)?;
        if stride < row_bytes {
            return Err(Error::Invalid(format!("matrix of {dtype}: stride {stride} below the row size {row_bytes}")));
        }
        let need = match rows {
            0 => Some(0),
            r => (r - 1).checked_mul(stride).and_then(|x| x.checked_add(row_bytes)),
        }
        .ok_or_else(|| Error::Invalid(format!("matrix of {dtype}: {rows} rows of stride {stride} overflow")))?;
        if data.len() < need {
            return Err(Error::Invalid(format!(
                "matrix of {dtype}: {rows} rows of stride {stride} need {need} bytes, found {}",
                data.len()
            )));
        }
        Ok(QMatrix { dtype, rows, cols, data, stride })
    }

    /// A plain matrix over bytes already checked to hold `rows` rows (the engine's bound weights).
    pub(crate) fn trusted(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Self {
        QMatrix { dtype, rows, cols, data, stride: cols / dtype.block_len() * dtype.block_bytes() }
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_len() * self.dtype.block_bytes()
    }

    /// The bytes of row `r`.
    ///
    /// # Panics
    /// When `r >= rows`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        assert!(r < self.rows, "row {r} of a matrix with {} rows", self.rows);
        let start = r * self.stride;
        &self.data[start..start + self.row_bytes()]
    }
}

/// Bytes of one row of `cols` elements of `dtype`; `cols` must be a whole number of blocks.
fn row_bytes_of(dtype: DType, cols: usize) -> Result<usize> {
    if !cols.is_multiple_of(dtype.block_len()) {
        return Err(Error::Invalid(format!(
            "matrix of {dtype}: {cols} columns is not a multiple of the block length {}",
            dtype.block_len()
        )));
    }
    Ok(cols / dtype.block_len() * dtype.block_bytes())
}

/// Blocks per token in the quantized activation buffers: the real blocks rounded up to a multiple of 8,
/// so SIMD kernels may load whole block pairs and 16 scale floats at a time without a bounds tail. The
/// padding is zero and contributes nothing.
fn padded_blocks(cols: usize) -> usize {
    (cols / QK).div_ceil(8) * 8
}

/// Activations of `n` tokens (each `cols` long) prepared for dot products with weights of one dtype:
/// quantized on the fly to 8-bit blocks for quantized weights (like llama.cpp's q8_0 / q8_1, with the
/// scale and the block sum kept in f32, see the module documentation), kept as f32 for float weights.
///
/// Activations prepared for any quantized dtype serve all quantized dtypes, and those prepared for any
/// float dtype serve all float dtypes. The buffers are reused: once sizes repeat, [`Acts::prepare`] does
/// not allocate.
#[derive(Clone, Debug, Default)]
pub struct Acts {
    n: usize,
    cols: usize,
    quantized: bool,
    /// Float activations: `n * cols`.
    x: Vec<f32>,
    /// Quantized activations: `n` tokens of `padded_blocks(cols) * QK` values.
    q: Vec<i8>,
    /// Per token and block, `(d, d * sum(q))`: `n` tokens of `padded_blocks(cols) * 2` floats.
    sc: Vec<f32>,
}

impl Acts {
    /// Empty activations; the buffers grow on the first [`Acts::prepare`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepares `n` tokens of `cols` values each (`x` is token-major) for weights of `wdtype`.
    ///
    /// # Panics
    /// When `x.len() != n * cols`, or `wdtype` is quantized and `cols` is not a multiple of its block.
    pub fn prepare(&mut self, wdtype: DType, x: &[f32], n: usize, cols: usize) {
        self.prepare_with(isa(), wdtype, x, n, cols);
    }

    /// [`Acts::prepare`] with the quantizer of `isa` (lowered to what the CPU has). Every quantizer gives
    /// the same bits: the SIMD ones do the same IEEE operations on each value.
    fn prepare_with(&mut self, isa: Isa, wdtype: DType, x: &[f32], n: usize, cols: usize) {
        assert_eq!(x.len(), n * cols, "activations: {} values for {n} tokens of {cols}", x.len());
        self.n = n;
        self.cols = cols;
        self.quantized = wdtype.is_quantized();
        if !self.quantized {
            self.x.clear();
            self.x.extend_from_slice(x);
            return;
        }
        assert!(cols.is_multiple_of(QK), "activations: {cols} columns is not a multiple of {QK}");
        let nbp = padded_blocks(cols);
        self.q.clear();
        self.q.resize(n * nbp * QK, 0);
        self.sc.clear();
        self.sc.resize(n * nbp * 2, 0.0);
        let isa = isa.min(detected_isa());
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let qt = &mut self.q[t * nbp * QK..(t + 1) * nbp * QK];
            let st = &mut self.sc[t * nbp * 2..(t + 1) * nbp * 2];
            #[cfg(target_arch = "x86_64")]
            if isa >= Isa::Avx2 {
                // SAFETY: `isa` is at most `detected_isa()`, so the CPU has AVX2, FMA and F16C.
                unsafe { avx2::quantize_row(xt, qt, st) };
                continue;
            }
            for ((xb, qb), sb) in xt.chunks_exact(QK).zip(qt.chunks_exact_mut(QK)).zip(st.chunks_exact_mut(2)) {
                let (d, sum) = quantize_block(xb, qb);
                sb[0] = d;
                sb[1] = d * sum as f32;
            }
        }
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Values per token.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether these are 8-bit quantized activations (for quantized weights).
    pub fn is_quantized(&self) -> bool {
        self.quantized
    }

    /// Quantized values of token `t`, padded to [`padded_blocks`] blocks.
    fn q_tok(&self, t: usize) -> &[i8] {
        let len = padded_blocks(self.cols) * QK;
        &self.q[t * len..(t + 1) * len]
    }

    /// `(d, d * sum)` per block of token `t`, padded to [`padded_blocks`] blocks.
    fn sc_tok(&self, t: usize) -> &[f32] {
        let len = padded_blocks(self.cols) * 2;
        &self.sc[t * len..(t + 1) * len]
    }

    /// Float values of token `t`.
    fn x_tok(&self, t: usize) -> &[f32] {
        &self.x[t * self.cols..(t + 1) * self.cols]
    }
}

/// Quantizes one block of `QK` values to `q` and returns `(d, sum(q))`.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &xi) in q.iter_mut().zip(x) {
        // |xi * id| <= 127 up to an ulp, and the cast saturates, so the value fits.
        let v = (xi * id).round_ties_even() as i8;
        *qi = v;
        sum += i32::from(v);
    }
    (d, sum)
}

/// Instruction set of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, the reference.
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI and VBMI, on top of [`Isa::Avx2`].
    Avx512,
}

impl Isa {
    /// All instruction sets, weakest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// Lower-case name, as `SPIKE_ISA` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a name as `SPIKE_ISA` spells it.
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU runs this instruction set.
    pub fn is_available(self) -> bool {
        self <= detected_isa()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The best instruction set this CPU supports.
fn detected_isa() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi");
    if avx512 {
        Isa::Avx512
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}

/// The instruction set [`matmul`] uses: the best the CPU has, or the one the environment variable
/// `SPIKE_ISA` (`scalar`, `avx2` or `avx512`) names, lowered to what the CPU has. An unrecognised value is
/// ignored. Read once per process.
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = detected_isa();
        match std::env::var("SPIKE_ISA").ok().as_deref().and_then(Isa::parse) {
            Some(wanted) => wanted.min(best),
            None => best,
        }
    })
}

/// `out[t * w.rows + r] = dot(w.row(r), x_t)` for `t in 0..acts.n()`, with the rows (and for many tokens,
/// the tokens) split over the current rayon pool, using [`isa()`].
///
/// # Panics
/// When `acts` has another width than `w.cols`, was prepared for the other kind of dtype (quantized or
/// float), or `out.len() != acts.n() * w.rows`.
pub fn matmul(w: &QMatrix, acts: &Acts, out: &mut [f32]) {
    matmul_isa(isa(), w, acts, out);
}

/// Convenience: prepares `x` (`n = x.len() / w.cols` tokens) and calls [`matmul`]. Allocates the
/// activation buffers on every call; the engine keeps an [`Acts`] instead.
pub fn matvec(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    assert!(w.cols > 0 && x.len().is_multiple_of(w.cols), "matvec: {} values for {} columns", x.len(), w.cols);
    let mut acts = Acts::new();
    acts.prepare(w.dtype, x, x.len() / w.cols, w.cols);
    matmul(w, &acts, out);
}

/// Same as [`matmul`] with an explicit instruction set and no threading. An instruction set the CPU
/// lacks is lowered to the best it has (see [`Isa::is_available`]).
pub fn matmul_with(isa: Isa, w: &QMatrix, acts: &Acts, out: &mut [f32]) {
    check(w, acts, out);
    let isa = isa.min(detected_isa());
    let rows = w.rows;
    part(isa, w, acts, 0..rows, 0..acts.n(), &mut |t, r, v| out[t * rows + r] = v);
}

/// Same as [`matmul`] with an explicit instruction set (lowered to what the CPU has), threaded over the
/// current rayon pool.
pub fn matmul_isa(isa: Isa, w: &QMatrix, acts: &Acts, out: &mut [f32]) {
    check(w, acts, out);
    let isa = isa.min(detected_isa());
    let (rows, n) = (w.rows, acts.n());
    if rows == 0 || n == 0 {
        return;
    }
    let (row_tasks, tok_tasks) = plan(rows, n, rayon::current_num_threads());
    if row_tasks * tok_tasks <= 1 {
        part(isa, w, acts, 0..rows, 0..n, &mut |t, r, v| out[t * rows + r] = v);
        return;
    }
    let row_chunk = rows.div_ceil(row_tasks);
    if n == 1 {
        out.par_chunks_mut(row_chunk).enumerate().for_each(|(i, o)| {
            let r0 = i * row_chunk;
            part(isa, w, acts, r0..r0 + o.len(), 0..1, &mut |_, r, v| o[r - r0] = v);
        });
        return;
    }
    let tok_chunk = n.div_ceil(tok_tasks);
    let sink = Sink { ptr: out.as_mut_ptr(), len: out.len() };
    (0..row_tasks * tok_tasks).into_par_iter().for_each(|i| {
        let r0 = (i % row_tasks) * row_chunk;
        let t0 = (i / row_tasks) * tok_chunk;
        let rs = r0..(r0 + row_chunk).min(rows);
        let ts = t0..(t0 + tok_chunk).min(n);
        // SAFETY: task `i` covers rows `rs` and tokens `ts`, and kernels only report pairs of their own
        // ranges; the ranges of distinct tasks are disjoint, so no element is written twice or concurrently.
        part(isa, w, acts, rs, ts, &mut |t, r, v| unsafe { sink.write(t * rows + r, v) });
    });
}

/// Dot product of one weight row (`dtype` blocks, `acts.cols()` elements) with token `t` of `acts`, by the
/// one-token kernel of `isa` (lowered to what the CPU has): for rows that are not one matrix, such as the
/// active rows of a sparse FFN. Equal bit for bit to [`matmul_with`] on activations of one token.
///
/// # Panics
/// When `row` is not `acts.cols()` elements of `dtype`, `acts` was prepared for the other kind of dtype,
/// or `t >= acts.n()`.
pub fn dot_row(isa: Isa, dtype: DType, row: &[u8], acts: &Acts, t: usize) -> f32 {
    assert_eq!(
        dtype.bytes_for(acts.cols as u64),
        Some(row.len() as u64),
        "dot_row: {} bytes for {} elements of {dtype}",
        row.len(),
        acts.cols
    );
    assert_eq!(acts.quantized, dtype.is_quantized(), "dot_row: activations prepared for the other kind of dtype");
    assert!(t < acts.n, "dot_row: token {t} of {}", acts.n);
    match isa.min(detected_isa()) {
        Isa::Scalar => scalar::dot_row(dtype, row, acts, t),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the instruction set is at most `detected_isa()`, so the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { avx2::dot_row(dtype, row, acts, t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the instruction set is at most `detected_isa()`, so the CPU has what `avx512` needs.
        Isa::Avx512 => unsafe { avx512::dot_row(dtype, row, acts, t) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::dot_row(dtype, row, acts, t),
    }
}

/// How many row chunks and token chunks one call splits into.
fn plan(rows: usize, n: usize, threads: usize) -> (usize, usize) {
    if threads <= 1 {
        return (1, 1);
    }
    let target = 2 * threads;
    let mut row_tasks = (rows / MIN_ROWS_PER_TASK).clamp(1, target);
    if row_tasks >= threads {
        // A multiple of the thread count keeps the threads evenly loaded.
        row_tasks -= row_tasks % threads;
    }
    let tok_tasks =
        if n > 1 && row_tasks < target { (target / row_tasks).min(n / MIN_TOKENS_PER_TASK).max(1) } else { 1 };
    (row_tasks, tok_tasks)
}

fn check(w: &QMatrix, acts: &Acts, out: &[f32]) {
    assert_eq!(acts.cols, w.cols, "activations of width {} for a matrix of {} columns", acts.cols, w.cols);
    assert_eq!(
        acts.quantized,
        w.dtype.is_quantized(),
        "activations prepared for {} weights used with {} weights",
        if acts.quantized { "quantized" } else { "float" },
        w.dtype
    );
    assert_eq!(out.len(), acts.n * w.rows, "output of {} for {} tokens x {} rows", out.len(), acts.n, w.rows);
}

/// Computes the (row, token) pairs of `rows x toks` with `isa` (available on this CPU) and hands each to
/// `put(token, row, value)`. Whether the one-token or the batched kernels run depends on `acts.n()` only,
/// not on the size of `toks`, so a split never changes a result.
fn part(isa: Isa, w: &QMatrix, acts: &Acts, rows: Range<usize>, toks: Range<usize>, put: &mut impl Put) {
    match isa {
        Isa::Scalar => scalar::part(w, acts, rows, toks, put),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is at most `detected_isa()`, so the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { avx2::part(w, acts, rows, toks, put) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is at most `detected_isa()`, so the CPU has the AVX-512 subsets `avx512::part` needs.
        Isa::Avx512 => unsafe { avx512::part(w, acts, rows, toks, put) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::part(w, acts, rows, toks, put),
    }
}

/// The tile loop of the batched kernels: rows `rows` in tiles of `R`, each tile unpacked into `s` once
/// (`unpack(s, i, Some(r))` puts row `r` in slot `i`; `unpack(s, i, None)` fills a slot the last tile has no
/// row for with anything harmless, whose results are computed and dropped), then run against the tokens of
/// `toks`, `T` at a time, by `micro(s, t0, nt)`, whose `[row][token]` results go to `put`. The quantized
/// kernels unpack rows into a [`Scratch`]; the float kernels read rows in place and keep only their indices.
///
/// Inlined into each kernel, so the closures compile with the caller's target features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn for_each_tile<S, const R: usize, const T: usize>(
    s: &mut S,
    rows: Range<usize>,
    toks: Range<usize>,
    mut unpack: impl FnMut(&mut S, usize, Option<usize>),
    mut micro: impl FnMut(&S, usize, usize) -> [[f32; T]; R],
    put: &mut impl Put,
) {
    let mut r0 = rows.start;
    while r0 < rows.end {
        let nr = R.min(rows.end - r0);
        for i in 0..R {
            unpack(s, i, (i < nr).then_some(r0 + i));
        }
        let mut t0 = toks.start;
        while t0 < toks.end {
            let nt = T.min(toks.end - t0);
            let res = micro(s, t0, nt);
            for (i, res) in res.iter().enumerate().take(nr) {
                for (j, &v) in res.iter().enumerate().take(nt) {
                    put(t0 + j, r0 + i, v);
                }
            }
            t0 += nt;
        }
        r0 += nr;
    }
}

/// Bytes of weight rows the batched float kernels run against one token tile before the next: with that
/// tile's activations (at most 6 tokens of f32: 192 KiB at a width of 8192) they fit in an L2 of 1 MiB
/// (AMD Zen 4; Intel Sapphire Rapids has 2). Measured at width 8192 and 512 tokens on Zen 4, one thread:
/// chunks of 512 KiB ran 1.2x faster than 256 KiB, and 1.5x (AVX-512) to 2.4x (AVX2) faster than none.
#[cfg(target_arch = "x86_64")]
const FLOAT_CHUNK_BYTES: usize = 512 << 10;

/// The tile loop of the batched float kernels, which read rows in place: rows `rows` in chunks of about
/// [`FLOAT_CHUNK_BYTES`] (whole tiles of `R`); in each chunk, for every `T` tokens of `toks`, every tile of `R`
/// rows by `micro(rows, t0, nt)` (the last tile repeats its first row where it has none, results dropped),
/// whose `[row][token]` results go to `put`. The chunk stays in L2 while the tokens pass, and each token
/// tile stays there while the chunk's tiles use it, so the activations stream from L3 or memory once per
/// chunk rather than once per tile, and the weights once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn for_each_float_tile<const R: usize, const T: usize>(
    w: &QMatrix,
    rows: Range<usize>,
    toks: Range<usize>,
    mut micro: impl FnMut(&[usize; R], usize, usize) -> [[f32; T]; R],
    put: &mut impl Put,
) {
    let chunk = (FLOAT_CHUNK_BYTES / w.row_bytes().max(1)).max(1).next_multiple_of(R);
    let mut unpack = |slots: &mut [usize; R], i: usize, row: Option<usize>| slots[i] = row.unwrap_or(slots[0]);
    let mut slots = [rows.start; R];
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + chunk).min(rows.end);
        let mut t0 = toks.start;
        while t0 < toks.end {
            let t1 = (t0 + T).min(toks.end);
            for_each_tile::<_, R, T>(&mut slots, r0..r1, t0..t1, &mut unpack, &mut micro, put);
            t0 = t1;
        }
        r0 = r1;
    }
}

/// Float weight dtypes as const generic arguments of the batched float kernels (a `DType` cannot be one), so
/// each dtype compiles its own loop with its conversion to f32 chosen at compile time.
#[cfg(target_arch = "x86_64")]
mod float_kind {
    use crate::model::quant::DType;

    pub(super) const F32: u8 = 0;
    pub(super) const F16: u8 = 1;
    pub(super) const BF16: u8 = 2;

    /// The kind of a float dtype.
    ///
    /// # Panics
    /// When `dtype` is quantized.
    pub(super) fn of(dtype: DType) -> u8 {
        match dtype {
            DType::F32 => F32,
            DType::F16 => F16,
            DType::BF16 => BF16,
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => panic!("{dtype} is not a float dtype"),
        }
    }

    /// Bytes per element of kind `kind`.
    pub(super) const fn bytes(kind: u8) -> usize {
        if kind == F32 {
            4
        } else {
            2
        }
    }
}

/// The f16 scale words of the Q4 block at `p` as one `u32`, low half first: `[d, m]` for Q4_1 (`Q4_1 =
/// true`), `[d, d]` for Q4_0 (the scale, and the factor of its `- 8` term), ready for one F16C conversion.
///
/// # Safety
/// `p` points at the start of a block: 4 bytes (Q4_1) or 2 bytes (Q4_0) readable, any alignment.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q4_scale_bits<const Q4_1: bool>(p: *const u8) -> u32 {
    if Q4_1 {
        // SAFETY: the caller guarantees 4 readable bytes at `p`; unaligned read.
        unsafe { p.cast::<u32>().read_unaligned() }
    } else {
        // SAFETY: the caller guarantees 2 readable bytes at `p`; unaligned read.
        let d = u32::from(unsafe { p.cast::<u16>().read_unaligned() });
        d | (d << 16)
    }
}

/// Per-thread buffers of the batched kernels: a tile of weight rows unpacked for reuse across tokens.
#[derive(Default)]
struct Scratch {
    /// Unsigned 8-bit weights (nibbles, or Q8_0 magnitudes / offset values), `QK` per block.
    u: Vec<u8>,
    /// Signed Q8_0 weights, whose signs the AVX2 kernel applies to the activations.
    sg: Vec<u8>,
    /// Per-block weight scales, as the kernel wants them laid out.
    dw: Vec<f32>,
    /// Per-block offset coefficients interleaved `(0, m)` like the activations' `(d, d * sum)`.
    mw: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Takes this thread's scratch buffers (leaving empty ones); hand them back with [`give_scratch`].
fn take_scratch() -> Scratch {
    SCRATCH.with(|s| s.take())
}

/// Returns the scratch buffers to this thread for the next call.
fn give_scratch(scratch: Scratch) {
    SCRATCH.with(|s| s.replace(scratch));
}

/// Where a kernel puts its results: `put(t, r, value)` for token `t` and row `r`.
pub(crate) trait Put: FnMut(usize, usize, f32) {}
impl<F: FnMut(usize, usize, f32)> Put for F {}

/// Runs `step(i, lane)` for every `i` in `0..n`, handing consecutive steps alternate accumulators (`lane` 0
/// and 1) so that one step's additions need not wait for the previous one's. The row kernels sum their two
/// lanes at the end. Inlined into its (`target_feature`) caller, where `lane` is a constant after unrolling.
#[inline(always)]
fn two_lanes(n: usize, mut step: impl FnMut(usize, usize)) {
    let mut i = 0;
    while i + 2 <= n {
        step(i, 0);
        step(i + 1, 1);
        i += 2;
    }
    if i < n {
        step(i, 0);
    }
}

/// Sums each accumulator register of an `R x NT` float tile (with `sum`, the ISA's horizontal add) into an
/// `R x T` block of outputs, `NT <= T`; the columns past `NT` are 0.
#[inline(always)]
fn reduce_tile<V: Copy, const R: usize, const NT: usize, const T: usize>(
    acc: &[[V; NT]; R],
    sum: impl Fn(V) -> f32,
) -> [[f32; T]; R] {
    std::array::from_fn(|i| std::array::from_fn(|j| if j < NT { sum(acc[i][j]) } else { 0.0 }))
}

/// A Q4 dot product from its scaled integer sum and its summed offset terms (`m_w d_x sum_x` per block for
/// Q4_1, `d_w d_x sum_x` for Q4_0, whose nibbles stand for `q - 8`).
#[inline(always)]
fn q4_finish<const Q4_1: bool>(sum: f32, offsets: f32) -> f32 {
    if Q4_1 {
        sum + offsets
    } else {
        sum - 8.0 * offsets
    }
}

/// Resizes `v` to `len` elements, all `fill`, without giving back capacity.
fn reset<T: Copy>(v: &mut Vec<T>, len: usize, fill: T) {
    v.clear();
    v.resize(len, fill);
}

/// The output buffer shared by the tasks of one [`matmul_isa`] call, which write disjoint elements.
#[derive(Clone, Copy)]
struct Sink {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: a `Sink` is only used inside `matmul_isa`, while the `&mut [f32]` it comes from is borrowed, and
// its tasks write disjoint elements.
unsafe impl Send for Sink {}
// SAFETY: as for `Send`.
unsafe impl Sync for Sink {}

impl Sink {
    /// Writes element `i`.
    ///
    /// # Safety
    /// No other thread reads or writes element `i` during the call.
    unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len, "output index {i} of {}", self.len);
        // SAFETY: `i` is in bounds of the borrowed output, and the caller excludes concurrent access to it.
        unsafe { self.ptr.add(i).write(v) }
    }
}
