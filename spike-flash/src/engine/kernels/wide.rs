//! 16-bit activations for block-quantized weights, as two 8-bit halves.
//!
//! Per 32-value block with `d = amax / 127`, each value becomes `x_int = round(x * 255 / d)`, at most
//! `127 * 255` in magnitude, written as `x_int = 255 q_hi + q_lo` with both halves in `[-127, 127]`:
//! `x ~ d q_hi + (d / 255) q_lo`, a step 255 times finer than one 8-bit block. Either half is an ordinary
//! 8-bit activation block (scale `d`, or `d / 255`), so every 8-bit kernel can take them as two tokens and add
//! the results; with one token the fused AVX-512 kernels here unpack each weight block once and combine the
//! two integer dot products before the float scale: `dot = 255 dot_hi + dot_lo`.

use std::ops::Range;

use super::lanes::{self, Batch};
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
        self.prepare_for(super::isa(), x, n, cols);
    }

    /// [`WideActs::prepare`] for the kernels of `isa` (lowered to what the CPU has): the batched kernels
    /// (every SIMD instruction set, except one token on AVX-512, which has fused one-token kernels) also
    /// need the lane layout.
    fn prepare_for(&mut self, isa: Isa, x: &[f32], n: usize, cols: usize) {
        assert_eq!(x.len(), n * cols, "activations: {} values for {n} tokens of {cols}", x.len());
        assert!(cols.is_multiple_of(QK), "activations: {cols} columns is not a multiple of {QK}");
        let nbp = padded_blocks(cols);
        let a = &mut self.both;
        a.n = 2 * n;
        a.cols = cols;
        a.quantized = true;
        a.lanes_built = false;
        a.q.clear();
        a.q.resize(2 * n * nbp * QK, 0);
        a.sc.clear();
        a.sc.resize(2 * n * nbp * 2, 0.0);
        self.fused_sc.clear();
        self.fused_sc.resize(n * nbp * 2, 0.0);
        self.n = n;
        let isa = isa.min(super::detected_isa());
        let (q, sc) = (&mut a.q, &mut a.sc);
        let (q_hi, q_lo) = q.split_at_mut(n * nbp * QK);
        let (sc_hi, sc_lo) = sc.split_at_mut(n * nbp * 2);
        for t in 0..n {
            let (tq, ts) = (t * nbp * QK..(t + 1) * nbp * QK, t * nbp * 2..(t + 1) * nbp * 2);
            let halves = Halves {
                hi: &mut q_hi[tq.clone()],
                lo: &mut q_lo[tq],
                sc_hi: &mut sc_hi[ts.clone()],
                sc_lo: &mut sc_lo[ts.clone()],
                fused: &mut self.fused_sc[ts],
            };
            let xt = &x[t * cols..(t + 1) * cols];
            #[cfg(target_arch = "x86_64")]
            if isa != Isa::Scalar {
                // SAFETY: `isa` is at most `detected_isa()` and not scalar, so the CPU has AVX2, FMA and F16C.
                unsafe { super::avx2::quantize_row_wide(xt, halves) };
                continue;
            }
            quantize_row_wide(xt, halves);
        }
        if isa != Isa::Scalar && !(n == 1 && isa == Isa::Avx512) {
            a.build_lanes();
        }
    }

    /// The lane layout of the batched kernels: plane `hi` the high halves, plane `lo` the low halves, the
    /// lanes scaled by the low halves' step `d / 255` and the offset terms by the fused scales.
    fn batch(&self) -> Batch<'_> {
        let a = &self.both;
        let b = a.batch();
        let (n, tok, lane) = (self.n, b.nbe * QK, lanes::groups(b.nbe) * lanes::LANES);
        Batch {
            n,
            hi: &b.hi[..n * tok],
            lo: Some(&b.hi[n * tok..2 * n * tok]),
            lane_sc: &b.lane_sc[n * lane..2 * n * lane],
            sc: &self.fused_sc,
            ..b
        }
    }
}

/// Where one token's 16-bit activations go: its high and low halves (whole blocks of `QK` values each), the
/// halves' `(scale, scale * block sum)` pairs, and the fused kernels' `(d / 255, exact block sum times it)`.
pub(super) struct Halves<'a> {
    pub hi: &'a mut [i8],
    pub lo: &'a mut [i8],
    pub sc_hi: &'a mut [f32],
    pub sc_lo: &'a mut [f32],
    pub fused: &'a mut [f32],
}

impl Halves<'_> {
    /// Records block `b`'s scale `d`, its step and the sums of its halves.
    #[inline]
    pub fn put_scales(&mut self, b: usize, d: f32, step: f32, sum_hi: i32, sum_lo: i32) {
        self.sc_hi[2 * b] = d;
        self.sc_hi[2 * b + 1] = d * sum_hi as f32;
        self.sc_lo[2 * b] = step;
        self.sc_lo[2 * b + 1] = step * sum_lo as f32;
        self.fused[2 * b] = step;
        self.fused[2 * b + 1] = step * (sum_hi * WIDE_BASE + sum_lo) as f32;
    }
}

/// The scale of a block whose largest magnitude is `amax`, its step, and the factor that takes a value to
/// steps: what every quantizer of 16-bit activations computes, in this order, in f32.
#[inline]
pub(super) fn wide_scales(amax: f32) -> (f32, f32, f32) {
    let d = amax / 127.0;
    let step = d / WIDE_BASE as f32;
    let inv = if amax > 0.0 { 1.0 / step } else { 0.0 };
    (d, step, inv)
}

/// Quantizes one token (whole blocks of `x`) into `h`, the reference of the SIMD quantizer.
fn quantize_row_wide(x: &[f32], mut h: Halves) {
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (d, step, inv) = wide_scales(amax);
        let (mut sum_hi, mut sum_lo) = (0i32, 0i32);
        for (i, &v) in xb.iter().enumerate() {
            let lim = 127 * WIDE_BASE;
            let xi = ((v * inv).round_ties_even() as i32).clamp(-lim, lim);
            // Nearest multiple of 255 below in magnitude by at most 127: both halves in [-127, 127].
            let hi = (xi + xi.signum() * (WIDE_BASE / 2)) / WIDE_BASE;
            let lo = xi - hi * WIDE_BASE;
            h.hi[b * QK + i] = hi as i8;
            h.lo[b * QK + i] = lo as i8;
            sum_hi += hi;
            sum_lo += lo;
        }
        h.put_scales(b, d, step, sum_hi, sum_lo);
    }
}

/// `out[t * w.rows + r] = dot(w.row(r), x_t)` for 16-bit activations, with [`super::isa()`]: see
/// [`matmul_wide_isa`].
pub fn matmul_wide(w: &QMatrix, a: &WideActs, out: &mut [f32], scratch: &mut Vec<f32>) {
    matmul_wide_isa(super::isa(), w, a, out, scratch);
}

/// `out[t * w.rows + r] = dot(w.row(r), x_t)` for 16-bit activations, with the kernels of `isa` (lowered to
/// what the CPU has), threaded over the current rayon pool. With one token on AVX-512 the fused one-token
/// kernels run; otherwise on AVX2 and AVX-512 the batched kernels, which combine the halves' integer dot
/// products before scaling them as the fused kernels do; the scalar kernels take both halves as `2n` tokens
/// (into `scratch`) and add.
///
/// # Panics
/// When `a` was prepared for one token on AVX-512 and `isa` is AVX2 (that preparation skips the lane layout).
pub fn matmul_wide_isa(isa: Isa, w: &QMatrix, a: &WideActs, out: &mut [f32], scratch: &mut Vec<f32>) {
    assert!(w.dtype.is_quantized(), "16-bit activations are for block-quantized weights, not {}", w.dtype);
    assert_eq!(out.len(), a.n * w.rows, "output of {} for {} tokens x {} rows", out.len(), a.n, w.rows);
    assert_eq!(a.both.cols, w.cols, "activations of width {} for a matrix of {} columns", a.both.cols, w.cols);
    let isa = isa.min(super::detected_isa());
    if a.n == 1 && isa == Isa::Avx512 {
        let chunk = w.rows.div_ceil(2 * rayon::current_num_threads()).max(super::MIN_ROWS_PER_TASK);
        let sink = super::Sink { ptr: out.as_mut_ptr(), len: out.len() };
        super::pool::for_each_task(w.rows.div_ceil(chunk), |i| {
            // SAFETY: task `i` alone takes rows `i * chunk ..` up to the next task's.
            let o = unsafe { sink.slice(i * chunk..(i + 1) * chunk) };
            let r0 = i * chunk;
            // SAFETY: the CPU has AVX-512 (`isa` is at most `detected_isa()`), with the features `fused_rows`
            // needs.
            unsafe { avx512::fused_rows(w, a, r0..r0 + o.len(), o) };
        });
        return;
    }
    if isa != Isa::Scalar {
        super::matmul_batch(isa, w, &a.batch(), out);
        return;
    }
    let n = a.n;
    scratch.resize(2 * n * w.rows, 0.0);
    super::matmul_isa(isa, w, &a.both, scratch);
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
        let mut isas = Vec::new();
        for isa in Isa::ALL {
            if isa.is_available() {
                isas.push(isa);
            } else {
                eprintln!(
                    "every_path_matches_the_fused_reference_and_the_exact_dot: skipped {isa}, which this CPU lacks"
                );
            }
        }
        // Block counts that leave every group size of the lane layout (and an odd last block), and token
        // counts that leave partial register tiles.
        let shapes = [
            (37, 32, 1),
            (70, 96, 1),
            (12, 256, 1),
            (130, 576, 1),
            (65, 1536, 1),
            (33, 576, 3),
            (9, 64, 7),
            (5, 32, 2),
            (7, 224, 5),
            (70, 1536, 13),
            (12, 800, 4),
            (6, 960, 2),
        ];
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            for (rows, cols, n) in shapes {
                let data = random_matrix(&mut rng, dtype, rows, cols);
                let w = QMatrix::new(dtype, rows, cols, &data).expect("matrix");
                let x = random_acts(&mut rng, n * cols);
                for &isa in &isas {
                    let mut a = WideActs::new();
                    a.prepare_for(isa, &x, n, cols);
                    let mut out = vec![0.0f32; n * rows];
                    matmul_wide_isa(isa, &w, &a, &mut out, &mut Vec::new());
                    check_against_references(isa, dtype, &w, &a, &x, &out);
                }
            }
        }
    }

    /// Asserts that `out` (the product of `w` with the tokens `x`, prepared into `a`, by `isa`) is within
    /// f32 rounding of the fused reference and within the activation rounding bound of the exact dot product.
    fn check_against_references(isa: Isa, dtype: DType, w: &QMatrix, a: &WideActs, x: &[f32], out: &[f32]) {
        let (rows, cols, n) = (w.rows, w.cols, a.n());
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let row = w.row(r);
                let want = dot_wide_reference(dtype, row, a, t);
                let exact = dot_reference_f32(dtype, row, xt);
                let mut wx = vec![0.0f32; cols];
                crate::model::quant::dequantize(dtype, row, &mut wx).expect("dequantize");
                let mag: f32 = wx.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                let got = out[t * rows + r];
                assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{isa} {dtype} {rows}x{cols} n={n}: {got} vs {want}");
                // Activation rounding: at most half a step (amax / 127 / 255) per value.
                let bound: f32 = xt
                    .chunks_exact(QK)
                    .zip(wx.chunks_exact(QK))
                    .map(|(xb, wb)| {
                        let step = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0 / WIDE_BASE as f32;
                        0.5 * step * wb.iter().map(|v| v.abs()).sum::<f32>()
                    })
                    .sum();
                assert!((got - exact).abs() <= bound * 1.01 + 1e-5 * mag, "{isa} {dtype}: {got} vs exact {exact}");
            }
        }
    }

    #[test]
    fn every_quantizer_gives_the_same_bits() {
        let mut rng = StdRng::seed_from_u64(SEED + 3);
        let (n, cols) = (5, 1536);
        let mut x = random_acts(&mut rng, n * cols);
        // A block whose amax is 127 * 255 has step 1 and `x * inv = x` exactly: ties at .5 must round to even,
        // and the halves split values on both sides of multiples of 255.
        x[..32].copy_from_slice(&std::array::from_fn::<f32, 32, _>(|i| match i {
            0 => 32385.0,
            _ => (i as f32 - 16.0) * 127.5,
        }));
        let mut want = WideActs::new();
        want.prepare_for(Isa::Scalar, &x, n, cols);
        assert_eq!((want.both.q[1], want.both.q[n * padded_blocks(cols) * QK + 1]), (-7, -127), "-1912.5 -> -1912");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !isa.is_available() {
                eprintln!("every_quantizer_gives_the_same_bits: skipped {isa}, which this CPU lacks");
                continue;
            }
            let mut got = WideActs::new();
            got.prepare_for(isa, &x, n, cols);
            assert_eq!(got.both.q, want.both.q, "{isa}");
            assert_eq!(bits(&got.both.sc), bits(&want.both.sc), "{isa}");
            assert_eq!(bits(&got.fused_sc), bits(&want.fused_sc), "{isa}");
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
