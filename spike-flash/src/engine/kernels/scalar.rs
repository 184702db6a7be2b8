//! Portable kernels: the reference every SIMD kernel is tested against, and the exact f32/f64
//! dequantizing reference that bounds the activation quantization error.

use std::ops::Range;

use super::{Acts, Put, QMatrix};
use crate::model::quant::{DType, QK};

/// The f32 value of an IEEE half-precision number.
#[inline]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// The f32 value of a bfloat16 number.
#[inline]
pub(super) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[inline]
fn le_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// Scalar kernels over `rows x toks`, see [`super::part`].
pub(super) fn part(w: &QMatrix, acts: &Acts, rows: Range<usize>, toks: Range<usize>, put: &mut impl Put) {
    for r in rows {
        let row = w.row(r);
        for t in toks.clone() {
            put(t, r, dot_row(w.dtype, row, acts, t));
        }
    }
}

/// One row of `dtype` times token `t`.
pub(super) fn dot_row(dtype: DType, row: &[u8], acts: &Acts, t: usize) -> f32 {
    match dtype {
        DType::Q4_0 => dot_q4_0(row, acts.q_tok(t), acts.sc_tok(t)),
        DType::Q4_1 => dot_q4_1(row, acts.q_tok(t), acts.sc_tok(t)),
        DType::Q8_0 => dot_q8_0(row, acts.q_tok(t), acts.sc_tok(t)),
        DType::F32 | DType::F16 | DType::BF16 => dot_float(dtype, row, acts.x_tok(t)),
    }
}

/// Q4_0 row times quantized activations: `sum_b d_w d_x sum_i (q_i - 8) x_i`.
pub(super) fn dot_q4_0(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, blk) in row.chunks_exact(DType::Q4_0.block_bytes()).enumerate() {
        let d = f16_to_f32(le_u16(blk, 0));
        let qs = &blk[2..18];
        let x = &q[b * QK..(b + 1) * QK];
        let mut s = 0i32;
        for j in 0..QK / 2 {
            s += (i32::from(qs[j] & 0x0F) - 8) * i32::from(x[j]);
            s += (i32::from(qs[j] >> 4) - 8) * i32::from(x[j + QK / 2]);
        }
        sum += d * sc[2 * b] * s as f32;
    }
    sum
}

/// Q4_1 row times quantized activations: `sum_b d_w d_x sum_i q_i x_i + m_w s_x`.
pub(super) fn dot_q4_1(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, blk) in row.chunks_exact(DType::Q4_1.block_bytes()).enumerate() {
        let d = f16_to_f32(le_u16(blk, 0));
        let m = f16_to_f32(le_u16(blk, 2));
        let qs = &blk[4..20];
        let x = &q[b * QK..(b + 1) * QK];
        let mut s = 0i32;
        for j in 0..QK / 2 {
            s += i32::from(qs[j] & 0x0F) * i32::from(x[j]);
            s += i32::from(qs[j] >> 4) * i32::from(x[j + QK / 2]);
        }
        sum += d * sc[2 * b] * s as f32 + m * sc[2 * b + 1];
    }
    sum
}

/// Q8_0 row times quantized activations: `sum_b d_w d_x sum_i q_i x_i`.
pub(super) fn dot_q8_0(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, blk) in row.chunks_exact(DType::Q8_0.block_bytes()).enumerate() {
        let d = f16_to_f32(le_u16(blk, 0));
        let x = &q[b * QK..(b + 1) * QK];
        let s: i32 = blk[2..34].iter().zip(x).map(|(&w, &x)| i32::from(w as i8) * i32::from(x)).sum();
        sum += d * sc[2 * b] * s as f32;
    }
    sum
}

/// Float row (F32, F16 or BF16) times f32 activations, accumulated in f32.
pub(super) fn dot_float(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    match dtype {
        DType::F32 => row.chunks_exact(4).zip(x).map(|(b, &x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x).sum(),
        DType::F16 => row.chunks_exact(2).zip(x).map(|(b, &x)| f16_to_f32(le_u16(b, 0)) * x).sum(),
        DType::BF16 => row.chunks_exact(2).zip(x).map(|(b, &x)| bf16_to_f32(le_u16(b, 0)) * x).sum(),
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => unreachable!("dot_float called with {dtype}"),
    }
}

/// Calls `f(i, value)` for each of the `n` elements of a row of `dtype`, each value computed in f64 from the
/// f16 scales: exact, as `d * q` has at most 15 significant bits and adding `m` stays within f64's 53 unless
/// `d` and `m` are more than 2^38 apart.
fn for_each_value(dtype: DType, row: &[u8], n: usize, mut f: impl FnMut(usize, f64)) {
    assert_eq!(dtype.bytes_for(n as u64), Some(row.len() as u64), "{} bytes for {n} elements of {dtype}", row.len());
    let h = |b: &[u8], o: usize| f64::from(f16_to_f32(le_u16(b, o)));
    match dtype {
        DType::F32 => {
            for (i, b) in row.chunks_exact(4).enumerate() {
                f(i, f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            }
        }
        DType::F16 => {
            for (i, b) in row.chunks_exact(2).enumerate() {
                f(i, h(b, 0));
            }
        }
        DType::BF16 => {
            for (i, b) in row.chunks_exact(2).enumerate() {
                f(i, f64::from(bf16_to_f32(le_u16(b, 0))));
            }
        }
        DType::Q4_0 | DType::Q4_1 => {
            let q4_1 = dtype == DType::Q4_1;
            for (b, blk) in row.chunks_exact(dtype.block_bytes()).enumerate() {
                let d = h(blk, 0);
                let (m, bias, off) = if q4_1 { (h(blk, 2), 0.0, 4) } else { (0.0, 8.0, 2) };
                for j in 0..QK / 2 {
                    let qs = blk[off + j];
                    f(b * QK + j, d * (f64::from(qs & 0x0F) - bias) + m);
                    f(b * QK + j + QK / 2, d * (f64::from(qs >> 4) - bias) + m);
                }
            }
        }
        DType::Q8_0 => {
            for (b, blk) in row.chunks_exact(DType::Q8_0.block_bytes()).enumerate() {
                let d = h(blk, 0);
                for (j, &q) in blk[2..34].iter().enumerate() {
                    f(b * QK + j, d * f64::from(q as i8));
                }
            }
        }
    }
}

/// Dequantizes one row of `dtype` into `out` (`out.len()` elements, `row` exactly their bytes). Each value
/// is the exact `d * q (+ m)` rounded once to f32, which is what ggml's own dequantization gives.
///
/// # Panics
/// When `row.len()` is not the size of `out.len()` elements of `dtype`.
pub fn dequantize_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    let n = out.len();
    for_each_value(dtype, row, n, |i, v| out[i] = v as f32);
}

/// The exact dot product of one weight row with f32 activations: the row dequantized exactly in f64 (from
/// the f16 scales), products summed in f64, rounded to f32 once. Tests use it to bound the error of
/// activation quantization.
///
/// # Panics
/// When `row.len()` is not the size of `x.len()` elements of `dtype`.
pub fn dot_reference_f32(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0.0f64;
    for_each_value(dtype, row, x.len(), |i, v| sum += v * f64::from(x[i]));
    sum as f32
}
