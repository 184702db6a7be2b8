//! Scaled sums of quantized columns: `out += sum_j h_j * col_j`, the down projection of a sparse FFN whose
//! neurons' down columns are stored one after another (each in its own record, `stride` bytes apart).
//!
//! The scalar kernel decodes each block and accumulates into `out` in neuron order; it is the reference. The
//! AVX-512 kernel keeps a group of output blocks in registers (two 16-lane accumulators per 32-element block)
//! while it walks every column, so `out` is loaded and stored once per group instead of once per column, and
//! the 8-bit (or 4-bit) weights are widened to f32 in registers; f16, bf16 and f32 columns likewise, 192
//! outputs (12 registers) at a time, converted in registers (F16C for f16, a shift for bf16). It computes the
//! same products, fused (`fma`) and in the same column order: results differ from the scalar kernel by f32
//! rounding only.

use std::ops::Range;

use super::Isa;
use crate::model::quant::{self, DType, QK};

/// Columns of one dtype stored one after another in records: column `j` starts at byte `j * stride + offset`
/// of `data`.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
    pub stride: usize,
    pub offset: usize,
}

/// `out[(b - blocks.start) * L + i] += sum_j h[j] * col_j[b * L + i]` for every block `b` of `blocks` (`L` the
/// dtype's block length), over the first `h.len()` columns of `cols`. Columns with `h[j] == 0` are skipped.
///
/// # Panics
/// When `out` is not `blocks.len() * L` long, or a column's blocks lie outside `cols.data`.
pub fn add_scaled_columns(isa: Isa, cols: Columns, h: &[f32], blocks: Range<usize>, out: &mut [f32]) {
    let Columns { dtype, data: rows, stride, offset: off } = cols;
    let bl = dtype.block_len();
    assert_eq!(
        out.len(),
        blocks.len() * bl,
        "add_scaled_columns: output of {} values for {} blocks",
        out.len(),
        blocks.len()
    );
    if let Some(last) = h.len().checked_sub(1) {
        let end = last * stride + off + blocks.end * dtype.block_bytes();
        assert!(end <= rows.len(), "add_scaled_columns: columns reach byte {end} of {}", rows.len());
    }
    #[cfg(target_arch = "x86_64")]
    if isa.min(super::detected_isa()) == Isa::Avx512 {
        if matches!(dtype, DType::Q8_0 | DType::Q4_1) {
            // SAFETY: the CPU has AVX-512 (checked just above); the bounds of every column were checked above.
            unsafe { avx512::add(dtype, rows, stride, off, h, blocks, out) };
            return;
        }
        if matches!(dtype, DType::F16 | DType::BF16 | DType::F32) {
            // SAFETY: as above (a float dtype's blocks are its elements).
            unsafe { avx512::add_float(dtype, rows, stride, off, h, blocks, out) };
            return;
        }
    }
    let _ = isa;
    scalar(dtype, rows, stride, off, h, blocks, out);
}

/// The reference: each column decoded block by block and added in column order.
fn scalar(dtype: DType, rows: &[u8], stride: usize, off: usize, h: &[f32], blocks: Range<usize>, out: &mut [f32]) {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut tmp = Vec::new();
    for (j, &a) in h.iter().enumerate() {
        if a == 0.0 {
            continue;
        }
        let start = j * stride + off + blocks.start * bb;
        let col = &rows[start..start + blocks.len() * bb];
        match dtype {
            DType::Q8_0 => {
                for (b, y) in col.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
                    let s = a * f16(&b[0..2]);
                    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
                        *yj += s * f32::from(q as i8);
                    }
                }
            }
            DType::Q4_1 => {
                for (b, y) in col.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
                    let (s, c) = (a * f16(&b[0..2]), a * f16(&b[2..4]));
                    let (lo, hi) = y.split_at_mut(16);
                    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
                        *l += s * f32::from(q & 0x0F) + c;
                        *h += s * f32::from(q >> 4) + c;
                    }
                }
            }
            DType::F32 => {
                for (b, y) in col.chunks_exact(4).zip(out.iter_mut()) {
                    *y += a * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            _ => {
                tmp.resize(blocks.len() * bl, 0.0);
                quant::dequantize(dtype, col, &mut tmp).expect("a column of whole blocks of a known type decodes");
                for (y, &v) in out.iter_mut().zip(&tmp) {
                    *y += a * v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::model::quant::{DType, QK};

    /// Output blocks per register group: two accumulators each, 12 of the 32 registers.
    const G: usize = 6;

    /// See [`super::add_scaled_columns`]; `dtype` is Q8_0 or Q4_1.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and F16C; every column's `blocks` must lie inside `rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn add(
        dtype: DType,
        rows: &[u8],
        stride: usize,
        off: usize,
        h: &[f32],
        blocks: Range<usize>,
        out: &mut [f32],
    ) {
        let mut b = blocks.start;
        while b < blocks.end {
            let n = G.min(blocks.end - b);
            let o = &mut out[(b - blocks.start) * QK..(b - blocks.start + n) * QK];
            // SAFETY: forwarded; `b..b + n` is inside `blocks`.
            unsafe {
                match (dtype, n) {
                    (DType::Q8_0, 6) => group::<6, false>(rows, stride, off, h, b, o),
                    (DType::Q8_0, 5) => group::<5, false>(rows, stride, off, h, b, o),
                    (DType::Q8_0, 4) => group::<4, false>(rows, stride, off, h, b, o),
                    (DType::Q8_0, 3) => group::<3, false>(rows, stride, off, h, b, o),
                    (DType::Q8_0, 2) => group::<2, false>(rows, stride, off, h, b, o),
                    (DType::Q8_0, _) => group::<1, false>(rows, stride, off, h, b, o),
                    (_, 6) => group::<6, true>(rows, stride, off, h, b, o),
                    (_, 5) => group::<5, true>(rows, stride, off, h, b, o),
                    (_, 4) => group::<4, true>(rows, stride, off, h, b, o),
                    (_, 3) => group::<3, true>(rows, stride, off, h, b, o),
                    (_, 2) => group::<2, true>(rows, stride, off, h, b, o),
                    (_, _) => group::<1, true>(rows, stride, off, h, b, o),
                }
            }
            b += n;
        }
    }

    /// The f32 value of the little-endian f16 at `p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees two readable bytes at `p`.
        let bits = unsafe { p.cast::<u16>().read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// `N` blocks starting at block `b0` of every column, accumulated in registers and added to `out`
    /// (`N * QK` values). `Q4_1` selects the 4-bit format, else Q8_0.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn group<const N: usize, const Q4_1: bool>(
        rows: &[u8],
        stride: usize,
        off: usize,
        h: &[f32],
        b0: usize,
        out: &mut [f32],
    ) {
        let bb = if Q4_1 { 20 } else { 34 };
        let mut lo = [_mm512_setzero_ps(); N];
        let mut hi = [_mm512_setzero_ps(); N];
        let base = rows.as_ptr();
        for (j, &a) in h.iter().enumerate() {
            if a == 0.0 {
                continue;
            }
            // SAFETY: the caller checked that the column's blocks `b0..b0 + N` are inside `rows`.
            let col = unsafe { base.add(j * stride + off + b0 * bb) };
            for k in 0..N {
                // SAFETY: block `k` of the group is `bb` readable bytes at `col + k * bb`.
                unsafe {
                    let p = col.add(k * bb);
                    let s = _mm512_set1_ps(a * f16_at(p));
                    if Q4_1 {
                        let c = _mm512_set1_ps(a * f16_at(p.add(2)));
                        let q = _mm_loadu_si128(p.add(4).cast());
                        let ql = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, _mm_set1_epi8(0x0F))));
                        let qh = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                            _mm_srli_epi16::<4>(q),
                            _mm_set1_epi8(0x0F),
                        )));
                        lo[k] = _mm512_add_ps(_mm512_fmadd_ps(s, ql, lo[k]), c);
                        hi[k] = _mm512_add_ps(_mm512_fmadd_ps(s, qh, hi[k]), c);
                    } else {
                        let q = _mm256_loadu_si256(p.add(2).cast());
                        let ql = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
                        let qh = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
                        lo[k] = _mm512_fmadd_ps(s, ql, lo[k]);
                        hi[k] = _mm512_fmadd_ps(s, qh, hi[k]);
                    }
                }
            }
        }
        for k in 0..N {
            let o = &mut out[k * QK..(k + 1) * QK];
            // SAFETY: `o` is 32 floats; unaligned loads and stores of 16 each.
            unsafe {
                let p = o.as_mut_ptr();
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), lo[k]));
                _mm512_storeu_ps(p.add(16), _mm512_add_ps(_mm512_loadu_ps(p.add(16)), hi[k]));
            }
        }
    }

    /// Output registers of one float group: 12 of the 32 registers, 192 values.
    const FG: usize = 12;

    /// The float kinds of [`float_group`].
    const F16: u8 = 0;
    const BF16: u8 = 1;
    const F32: u8 = 2;

    /// [`super::add_scaled_columns`] for f16, bf16 and f32 columns, whose blocks are single elements: the
    /// outputs in groups of [`FG`] registers, each group accumulated over every column in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and F16C; every column's `elems` must lie inside `rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn add_float(
        dtype: DType,
        rows: &[u8],
        stride: usize,
        off: usize,
        h: &[f32],
        elems: Range<usize>,
        out: &mut [f32],
    ) {
        let mut e = elems.start;
        while e < elems.end {
            let n = (16 * FG).min(elems.end - e);
            let o = &mut out[e - elems.start..e - elems.start + n];
            // SAFETY: forwarded; `e..e + n` is inside `elems`.
            unsafe {
                match (dtype, n == 16 * FG) {
                    (DType::F16, true) => float_group::<F16, true>(rows, stride, off, h, e, o),
                    (DType::F16, false) => float_group::<F16, false>(rows, stride, off, h, e, o),
                    (DType::BF16, true) => float_group::<BF16, true>(rows, stride, off, h, e, o),
                    (DType::BF16, false) => float_group::<BF16, false>(rows, stride, off, h, e, o),
                    (_, true) => float_group::<F32, true>(rows, stride, off, h, e, o),
                    (_, false) => float_group::<F32, false>(rows, stride, off, h, e, o),
                }
            }
            e += n;
        }
    }

    /// `out += sum_j h[j] * col_j[e0 .. e0 + out.len()]` in [`FG`] registers of 16 lanes, `out.len() <=
    /// 16 FG`; `FULL` when it is exactly that (no masks). Elements past `out.len()` are neither read nor
    /// written: their lanes are masked off.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn float_group<const KIND: u8, const FULL: bool>(
        rows: &[u8],
        stride: usize,
        off: usize,
        h: &[f32],
        e0: usize,
        out: &mut [f32],
    ) {
        let n = out.len();
        let eb = if KIND == F32 { 4 } else { 2 };
        let mask = |r: usize| -> u16 {
            if FULL {
                u16::MAX
            } else {
                let left = n.saturating_sub(16 * r).min(16);
                ((1u32 << left) - 1) as u16
            }
        };
        let masks: [u16; FG] = std::array::from_fn(mask);
        let mut acc = [_mm512_setzero_ps(); FG];
        let base = rows.as_ptr();
        for (j, &a) in h.iter().enumerate() {
            if a == 0.0 {
                continue;
            }
            let av = _mm512_set1_ps(a);
            // SAFETY: the caller checked that elements `e0 .. e0 + n` of the column are inside `rows`.
            let col = unsafe { base.add(j * stride + off + e0 * eb) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let m = masks[r];
                // SAFETY: lanes of `m` select elements below `n` (16 r + lane < n), inside the column; masked
                // lanes are not read.
                let v = unsafe {
                    let p = col.add(16 * r * eb);
                    match KIND {
                        F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast())),
                        BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                            _mm256_maskz_loadu_epi16(m, p.cast()),
                        ))),
                        _ => _mm512_maskz_loadu_ps(m, p.cast()),
                    }
                };
                *acc = _mm512_fmadd_ps(av, v, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let m = masks[r];
            // SAFETY: the lanes of `m` are elements of `out`; masked loads and stores.
            unsafe {
                let p = out.as_mut_ptr().add(16 * r);
                _mm512_mask_storeu_ps(p, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), *acc));
            }
        }
    }
}
