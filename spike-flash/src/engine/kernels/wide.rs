//! 16-bit activations for block-quantized weights, as two 8-bit halves.
//!
//! Per 32-value block with `d = amax / 127`, each value becomes `x_int = round(x * 255 / d)`, at most
//! `127 * 255` in magnitude, written as `x_int = 255 q_hi + q_lo` with both halves in `[-127, 127]`:
//! `x ~ d q_hi + (d / 255) q_lo`, a step 255 times finer than one 8-bit block. Either half is an ordinary
//! 8-bit activation block (scale `d`, or `d / 255`), so every 8-bit kernel can take them as two tokens and add
//! the results; with one token the fused AVX-512 kernels here unpack each weight block once and combine the
//! two integer dot products before the float scale: `dot = 255 dot_hi + dot_lo`.

use std::ops::Range;

use rayon::prelude::*;

use super::{padded_blocks, Acts, Isa, QMatrix};
use crate::model::quant::{DType, QK};

/// The ratio of the two halves' scales.
pub const WIDE_BASE: i32 = 255;

/// Activations of `n` tokens quantized to 16 bits, see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct WideActs {
    /// `2n` tokens: the high halves of tokens `0..n`, then their low halves.
    both: Acts,
    /// Per token and block `(d / 255, exact block sum)`: the scales of the fused kernels.
    fused_sc: Vec<f32>,
    n: usize,
}

impl WideActs {
    /// Empty activations; buffers grow on the first prepare.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Quantizes `n` tokens of `cols` values (token-major `x`) for block-quantized weights.
    ///
    /// # Panics
    /// When `x.len() != n * cols` or `cols` is not a multiple of 32.
    pub fn prepare(&mut self, x: &[f32], n: usize, cols: usize) {
        assert_eq!(x.len(), n * cols, "activations: {} values for {n} tokens of {cols}", x.len());
        assert!(cols.is_multiple_of(QK), "activations: {cols} columns is not a multiple of {QK}");
        let nbp = padded_blocks(cols);
        let a = &mut self.both;
        a.n = 2 * n;
        a.cols = cols;
        a.quantized = true;
        a.q.clear();
        a.q.resize(2 * n * nbp * QK, 0);
        a.sc.clear();
        a.sc.resize(2 * n * nbp * 2, 0.0);
        self.fused_sc.clear();
        self.fused_sc.resize(n * nbp * 2, 0.0);
        self.n = n;
        let base = WIDE_BASE as f32;
        for t in 0..n {
            for (b, xb) in x[t * cols..(t + 1) * cols].chunks_exact(QK).enumerate() {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let step = d / base;
                let inv = if amax > 0.0 { 1.0 / step } else { 0.0 };
                let (hi_at, lo_at) = ((t * nbp + b) * QK, ((n + t) * nbp + b) * QK);
                let (mut sum_hi, mut sum_lo) = (0i32, 0i32);
                for (i, &v) in xb.iter().enumerate() {
                    let lim = 127 * WIDE_BASE;
                    let xi = ((v * inv).round_ties_even() as i32).clamp(-lim, lim);
                    // Nearest multiple of 255 below in magnitude by at most 127: both halves in [-127, 127].
                    let hi = (xi + xi.signum() * (WIDE_BASE / 2)) / WIDE_BASE;
                    let lo = xi - hi * WIDE_BASE;
                    a.q[hi_at + i] = hi as i8;
                    a.q[lo_at + i] = lo as i8;
                    sum_hi += hi;
                    sum_lo += lo;
                }
                let (sh, sl) = ((t * nbp + b) * 2, ((n + t) * nbp + b) * 2);
                a.sc[sh] = d;
                a.sc[sh + 1] = d * sum_hi as f32;
                a.sc[sl] = step;
                a.sc[sl + 1] = step * sum_lo as f32;
                self.fused_sc[sh] = step;
                self.fused_sc[sh + 1] = step * (sum_hi * WIDE_BASE + sum_lo) as f32;
            }
        }
    }
}

/// `out[t * w.rows + r] = dot(w.row(r), x_t)` for 16-bit activations. With one token on AVX-512 the fused
/// kernels run; otherwise both halves go through [`super::matmul`] as `2n` tokens (into `scratch`) and add.
pub fn matmul_wide(w: &QMatrix, a: &WideActs, out: &mut [f32], scratch: &mut Vec<f32>) {
    assert!(w.dtype.is_quantized(), "16-bit activations are for block-quantized weights, not {}", w.dtype);
    assert_eq!(out.len(), a.n * w.rows, "output of {} for {} tokens x {} rows", out.len(), a.n, w.rows);
    if a.n == 1 && super::isa() == Isa::Avx512 {
        let chunk = w.rows.div_ceil(2 * rayon::current_num_threads()).max(super::MIN_ROWS_PER_TASK);
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
            let r0 = i * chunk;
            // SAFETY: `isa()` is Avx512 only when the CPU has the features `fused_rows` needs.
            unsafe { avx512::fused_rows(w, a, r0..r0 + o.len(), o) };
        });
        return;
    }
    let n = a.n;
    scratch.resize(2 * n * w.rows, 0.0);
    super::matmul(w, &a.both, scratch);
    let (hi, lo) = scratch.split_at(n * w.rows);
    for ((o, h), l) in out.iter_mut().zip(hi).zip(lo) {
        *o = h + l;
    }
}

/// The scalar reference of the fused kernels: one row times token `t`, the combined integer dot product per
/// block scaled once.
pub fn dot_wide_reference(dtype: DType, row: &[u8], a: &WideActs, t: usize) -> f32 {
    let nbp = padded_blocks(a.both.cols);
    let qh = &a.both.q[t * nbp * QK..(t + 1) * nbp * QK];
    let ql = &a.both.q[(a.n + t) * nbp * QK..(a.n + t + 1) * nbp * QK];
    let sc = &a.fused_sc[t * nbp * 2..(t + 1) * nbp * 2];
    let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let mut sum = 0.0f32;
    for (b, blk) in row.chunks_exact(dtype.block_bytes()).enumerate() {
        let x = |i: usize| i32::from(qh[b * QK + i]) * WIDE_BASE + i32::from(ql[b * QK + i]);
        let (s, d, m) = match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let off = if dtype == DType::Q4_1 { 4 } else { 2 };
                let qs = &blk[off..off + 16];
                let s: i32 =
                    (0..QK / 2).map(|j| i32::from(qs[j] & 0x0F) * x(j) + i32::from(qs[j] >> 4) * x(j + 16)).sum();
                let m = match dtype {
                    DType::Q4_1 => f16(blk, 2),
                    _ => -8.0 * f16(blk, 0),
                };
                (s, f16(blk, 0), m)
            }
            DType::Q8_0 => ((0..QK).map(|i| i32::from(blk[2 + i] as i8) * x(i)).sum(), f16(blk, 0), 0.0),
            _ => unreachable!("dot_wide_reference called with {dtype}"),
        };
        sum += d * sc[2 * b] * s as f32 + m * sc[2 * b + 1];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512::{add_q4_pair, pair_broadcast, q4_total};
    use super::super::q4_scale_bits;
    use super::*;

    /// Rows `rows` of `w` times token 0 of `a` into `out`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI, and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn fused_rows(w: &QMatrix, a: &WideActs, rows: Range<usize>, out: &mut [f32]) {
        let nbp = padded_blocks(a.both.cols);
        let qh = &a.both.q[..nbp * QK];
        let ql = &a.both.q[a.n * nbp * QK..(a.n + 1) * nbp * QK];
        let sc = &a.fused_sc[..nbp * 2];
        let nb = w.cols / QK;
        // Rows interleaved with other data (the gate or up rows of neuron records) defeat the hardware's
        // sequential prefetcher: fetch the row after next while this one is computed.
        let ahead = if w.stride != w.row_bytes() { 4 } else { 0 };
        let end = rows.end;
        for (o, r) in out.iter_mut().zip(rows) {
            let row = w.row(r);
            if ahead > 0 && r + ahead < end {
                let next = w.row(r + ahead);
                for at in (0..next.len()).step_by(64) {
                    // SAFETY: `at` is inside `next`; a prefetch never faults.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(next.as_ptr().add(at).cast()) };
                }
            }
            *o = match w.dtype {
                DType::Q4_1 => dot_q4::<true>(row, nb, qh, ql, sc),
                DType::Q4_0 => dot_q4::<false>(row, nb, qh, ql, sc),
                DType::Q8_0 => dot_q8_0(row, nb, qh, ql, sc),
                other => unreachable!("fused kernel for {other}"),
            };
        }
    }

    /// `255 dot(z, xh) + dot(z, xl)` per 32-bit lane.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn combine(z: __m512i, xh: __m512i, xl: __m512i) -> __m512i {
        let h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), z, xh);
        let h255 = _mm512_sub_epi32(_mm512_slli_epi32::<8>(h), h);
        _mm512_dpbusd_epi32(h255, z, xl)
    }

    /// One Q4_1 (`Q4_1 = true`) or Q4_0 row, two blocks per step. A block pair's four f16 weight scales
    /// (`d0, m0, d1, m1`, or `d0, d0, d1, d1` for Q4_0) are converted at once and multiplied by the activation
    /// pair's `(step, block sum)` values: lanes 0 and 2 scale the integer dot products, lanes 1 and 3 are the
    /// offset terms, summed at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    fn dot_q4<const Q4_1: bool>(row: &[u8], nb: usize, qh: &[i8], ql: &[i8], sc: &[f32]) -> f32 {
        let bb = if Q4_1 { 20 } else { 18 };
        let off = if Q4_1 { 4 } else { 2 };
        let pairs = nb.div_ceil(2);
        assert!(
            row.len() == nb * bb && qh.len() >= pairs * 2 * QK && ql.len() >= pairs * 2 * QK && sc.len() >= pairs * 4
        );
        let (rp, hp, lp, sp) = (row.as_ptr(), qh.as_ptr(), ql.as_ptr(), sc.as_ptr());
        let nib = _mm_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        let mut macc = _mm_setzero_ps();
        let mut b = 0;
        while b < nb {
            let two = b + 1 < nb;
            // A lone last block pairs with itself; its partner half then meets the activations' zero padding
            // (values and scales), so it adds nothing.
            let b1 = if two { b + 1 } else { b };
            // SAFETY: blocks `b` and `b1` are < nb, so their bytes lie inside `row` (asserted); activation values
            // `b * 32 .. b * 32 + 64` and scales `2b .. 2b + 4` lie inside whole block pairs of the buffers
            // (asserted; padded to a multiple of 8 blocks with zeros); unaligned loads.
            let (p0, p1, h0, h1, xh, xl, s) = unsafe {
                (
                    _mm_loadu_si128(rp.add(bb * b + off).cast()),
                    _mm_loadu_si128(rp.add(bb * b1 + off).cast()),
                    q4_scale_bits::<Q4_1>(rp.add(bb * b)),
                    q4_scale_bits::<Q4_1>(rp.add(bb * b1)),
                    _mm512_loadu_si512(hp.add(b * QK).cast()),
                    _mm512_loadu_si512(lp.add(b * QK).cast()),
                    _mm_loadu_ps(sp.add(2 * b)),
                )
            };
            // Low nibbles are values 0..16 of a block, high nibbles 16..32.
            let lo0 = _mm_and_si128(p0, nib);
            let hi0 = _mm_and_si128(_mm_srli_epi16::<4>(p0), nib);
            let lo1 = _mm_and_si128(p1, nib);
            let hi1 = _mm_and_si128(_mm_srli_epi16::<4>(p1), nib);
            let z0 = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo0), hi0);
            let z1 = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo1), hi1);
            let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(z0), z1);
            add_q4_pair(combine(z, xh, xl), h0, h1, s, &mut acc, &mut macc);
            b += 2;
        }
        q4_total::<Q4_1>(acc, macc)
    }

    /// One Q8_0 row: `|w|` times the activations with `w`'s sign, two blocks per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    fn dot_q8_0(row: &[u8], nb: usize, qh: &[i8], ql: &[i8], sc: &[f32]) -> f32 {
        const BB: usize = 34;
        let pairs = nb.div_ceil(2);
        assert!(
            row.len() == nb * BB && qh.len() >= pairs * 2 * QK && ql.len() >= pairs * 2 * QK && sc.len() >= pairs * 4
        );
        let (rp, hp, lp, sp) = (row.as_ptr(), qh.as_ptr(), ql.as_ptr(), sc.as_ptr());
        let bidx = pair_broadcast();
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_ps();
        let mut b = 0;
        while b < nb {
            let two = b + 1 < nb;
            // SAFETY: as in `dot_q4`; a lone last block's partner is zeroed below, so only block `b` is read.
            let (w, d0, d1, xh, xl, s) = unsafe {
                let w0 = _mm256_loadu_si256(rp.add(BB * b + 2).cast());
                let (w, d1) = if two {
                    let w1 = _mm256_loadu_si256(rp.add(BB * (b + 1) + 2).cast());
                    (
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1),
                        rp.add(BB * (b + 1)).cast::<u16>().read_unaligned(),
                    )
                } else {
                    (_mm512_zextsi256_si512(w0), 0)
                };
                (
                    w,
                    rp.add(BB * b).cast::<u16>().read_unaligned(),
                    d1,
                    _mm512_loadu_si512(hp.add(b * QK).cast()),
                    _mm512_loadu_si512(lp.add(b * QK).cast()),
                    _mm_loadu_ps(sp.add(2 * b)),
                )
            };
            let f = _mm_cvtph_ps(_mm_cvtsi64_si128((u64::from(d0) | (u64::from(d1) << 32)) as i64));
            let scale = _mm512_permutexvar_ps(bidx, _mm512_castps128_ps512(_mm_mul_ps(f, s)));
            let neg = _mm512_movepi8_mask(w);
            let xh = _mm512_mask_sub_epi8(xh, neg, zero, xh);
            let xl = _mm512_mask_sub_epi8(xl, neg, zero, xl);
            let dot = _mm512_cvtepi32_ps(combine(_mm512_abs_epi8(w), xh, xl));
            acc = _mm512_fmadd_ps(dot, scale, acc);
            b += 2;
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::*;
    pub(super) unsafe fn fused_rows(_: &QMatrix, _: &WideActs, _: Range<usize>, _: &mut [f32]) {
        unreachable!("AVX-512 is never selected off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::kernels::{dot_reference_f32, matmul_with};
    use crate::model::quant::quantize;

    const SEED: u64 = 0x_16B1;

    fn random_matrix(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut out = Vec::new();
        quantize(dtype, &v, &mut out).expect("quantize");
        out
    }

    /// Activations with the heavy tails real hidden states have: mostly small, a few large.
    fn random_acts(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| if rng.gen_bool(0.03) { rng.gen_range(-20.0..20.0) } else { rng.gen_range(-1.0..1.0) }).collect()
    }

    #[test]
    fn halves_reassemble_the_16_bit_value_and_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(SEED);
        let (n, cols) = (3, 96);
        let x = random_acts(&mut rng, n * cols);
        let mut a = WideActs::new();
        a.prepare(&x, n, cols);
        let nbp = padded_blocks(cols);
        for t in 0..n {
            for b in 0..cols / QK {
                let (d, step) = (a.both.sc[(t * nbp + b) * 2], a.both.sc[((n + t) * nbp + b) * 2]);
                assert!((d / step - WIDE_BASE as f32).abs() < 1e-3);
                for i in 0..QK {
                    let hi = a.both.q[(t * nbp + b) * QK + i];
                    let lo = a.both.q[((n + t) * nbp + b) * QK + i];
                    assert!(hi != i8::MIN && lo != i8::MIN, "halves must avoid -128");
                    let v = d * f32::from(hi) + step * f32::from(lo);
                    let xi = x[t * cols + b * QK + i];
                    assert!((v - xi).abs() <= step * 0.5001 + 1e-6 * xi.abs(), "{v} vs {xi} (step {step})");
                }
            }
        }
    }

    #[test]
    fn every_path_matches_the_fused_reference_and_the_exact_dot() {
        let mut rng = StdRng::seed_from_u64(SEED + 1);
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            for (rows, cols, n) in
                [(37, 32, 1), (70, 96, 1), (12, 256, 1), (130, 576, 1), (65, 1536, 1), (33, 576, 3), (9, 64, 7)]
            {
                let data = random_matrix(&mut rng, dtype, rows, cols);
                let w = QMatrix::new(dtype, rows, cols, &data).expect("matrix");
                let x = random_acts(&mut rng, n * cols);
                let mut a = WideActs::new();
                a.prepare(&x, n, cols);
                let mut out = vec![0.0f32; n * rows];
                matmul_wide(&w, &a, &mut out, &mut Vec::new());
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in 0..rows {
                        let row = w.row(r);
                        let want = dot_wide_reference(dtype, row, &a, t);
                        let exact = dot_reference_f32(dtype, row, xt);
                        let mut wx = vec![0.0f32; cols];
                        crate::model::quant::dequantize(dtype, row, &mut wx).expect("dequantize");
                        let mag: f32 = wx.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                        let got = out[t * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-5 * mag + 1e-6,
                            "{dtype} {rows}x{cols} n={n}: {got} vs {want}"
                        );
                        // Activation rounding: at most half a step (amax / 127 / 255) per value.
                        let bound: f32 = xt
                            .chunks_exact(QK)
                            .zip(wx.chunks_exact(QK))
                            .map(|(xb, wb)| {
                                let step = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0 / WIDE_BASE as f32;
                                0.5 * step * wb.iter().map(|v| v.abs()).sum::<f32>()
                            })
                            .sum();
                        assert!((got - exact).abs() <= bound * 1.01 + 1e-5 * mag, "{dtype}: {got} vs exact {exact}");
                    }
                }
            }
        }
    }

    #[test]
    fn sixteen_bit_error_is_far_below_eight_bit_error() {
        let mut rng = StdRng::seed_from_u64(SEED + 2);
        let (rows, cols) = (256, 576);
        let data = random_matrix(&mut rng, DType::Q4_1, rows, cols);
        let w = QMatrix::new(DType::Q4_1, rows, cols, &data).expect("matrix");
        let x = random_acts(&mut rng, cols);
        let mut wide = WideActs::new();
        wide.prepare(&x, 1, cols);
        let mut narrow = Acts::new();
        narrow.prepare(DType::Q4_1, &x, 1, cols);
        let (mut a, mut b) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        matmul_wide(&w, &wide, &mut a, &mut Vec::new());
        matmul_with(Isa::Scalar, &w, &narrow, &mut b);
        let (mut e16, mut e8) = (0.0f64, 0.0f64);
        for r in 0..rows {
            let exact = f64::from(dot_reference_f32(DType::Q4_1, w.row(r), &x));
            e16 += (f64::from(a[r]) - exact).abs();
            e8 += (f64::from(b[r]) - exact).abs();
        }
        assert!(e16 * 50.0 < e8, "mean error 16-bit {} vs 8-bit {}", e16 / rows as f64, e8 / rows as f64);
    }
}
