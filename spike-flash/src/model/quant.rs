//! Tensor element types and ggml's block-quantized formats, as GGUF defines them.
//!
//! Block layouts (little-endian, `QK = 32` elements per block):
//! - `Q4_0`: `d: f16`, `qs: [u8; 16]`; element `j` (j < 16) is `(qs[j] & 0x0F) - 8`, element `j + 16` is
//!   `(qs[j] >> 4) - 8`; value = `d * q`. 18 bytes.
//! - `Q4_1`: `d: f16`, `m: f16`, `qs: [u8; 16]`; same nibble order, unsigned; value = `d * q + m`. 20 bytes.
//! - `Q8_0`: `d: f16`, `qs: [i8; 32]`; value = `d * q`. 34 bytes.

use crate::{Error, Result};
use half::{bf16, f16};

/// Elements per quantization block.
pub const QK: usize = 32;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl DType {
    /// The `ggml_type` id GGUF stores for this type.
    pub const fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q8_0 => 8,
            DType::BF16 => 30,
        }
    }

    /// The type for a `ggml_type` id, if this toolkit supports it.
    pub const fn from_ggml_id(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            8 => DType::Q8_0,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// Elements per block (1 for plain floating-point types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q8_0 => 34,
        }
    }

    /// Whether this is a block-quantized type.
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n.is_multiple_of(bl) {
            return None;
        }
        (n / bl).checked_mul(self.block_bytes() as u64)
    }

    /// Lower-case name as ggml spells it (`q4_1`, `f16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Scalar reference conversions.
//
// These follow ggml's reference code bit for bit (`ggml-quants.c`: `quantize_row_q4_0_ref`,
// `quantize_row_q4_1_ref`, `quantize_row_q8_0_ref`, `dequantize_row_q4_0`, ...; `ggml-impl.h` for f16 and
// bf16), so a tensor quantized here is byte-identical to one quantized by llama.cpp or by the python `gguf`
// package. They are the reference every faster kernel is tested against. NaN payloads are not specified.
// ---------------------------------------------------------------------------------------------------------

/// Half of a quantization block: nibble `j` of byte `j` holds element `j`, the high nibble element `j + 16`.
const HALF: usize = QK / 2;

/// Converts little-endian `f16` bits to `f32` (exact).
#[inline]
pub fn f16_bits_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Converts `f32` to `f16` bits, rounding to nearest even as ggml's `GGML_FP32_TO_FP16` does.
#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Converts `bf16` bits to `f32` (exact). Like ggml's `ggml_compute_bf16_to_fp32` this is a plain shift, so
/// a signalling NaN stays signalling (`half` would quiet it).
#[inline]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Converts `f32` to `bf16` bits, rounding to nearest even and quieting NaNs, as ggml's
/// `ggml_compute_fp32_to_bf16` does (`half` implements the same rule).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Dequantizes `dst.len()` elements of type `dtype` from `src`.
///
/// `dst.len()` must be a whole number of blocks and `src.len()` exactly the bytes those blocks take;
/// otherwise [`Error::Invalid`] and `dst` is untouched.
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let expected = dtype.bytes_for(dst.len() as u64).ok_or_else(|| {
        Error::Invalid(format!(
            "dequantize {dtype}: {} elements is not a whole number of {}-element blocks",
            dst.len(),
            dtype.block_len()
        ))
    })?;
    if src.len() as u64 != expected {
        return Err(Error::Invalid(format!(
            "dequantize {dtype}: {} elements need {expected} bytes, got {}",
            dst.len(),
            src.len()
        )));
    }
    let bb = dtype.block_bytes();
    let bl = dtype.block_len();
    let blocks = src.chunks_exact(bb).zip(dst.chunks_exact_mut(bl));
    match dtype {
        DType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_bits_to_f32(le_u16(b, 0));
            }
        }
        DType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16_bits_to_f32(le_u16(b, 0));
            }
        }
        DType::Q4_0 => {
            for (b, y) in blocks {
                let d = f16_bits_to_f32(le_u16(b, 0));
                let qs = &b[2..2 + HALF];
                for (j, &q) in qs.iter().enumerate() {
                    let x0 = i32::from(q & 0x0F) - 8;
                    let x1 = i32::from(q >> 4) - 8;
                    y[j] = x0 as f32 * d;
                    y[j + HALF] = x1 as f32 * d;
                }
            }
        }
        DType::Q4_1 => {
            for (b, y) in blocks {
                let d = f16_bits_to_f32(le_u16(b, 0));
                let m = f16_bits_to_f32(le_u16(b, 2));
                let qs = &b[4..4 + HALF];
                for (j, &q) in qs.iter().enumerate() {
                    let x0 = q & 0x0F;
                    let x1 = q >> 4;
                    y[j] = f32::from(x0) * d + m;
                    y[j + HALF] = f32::from(x1) * d + m;
                }
            }
        }
        DType::Q8_0 => {
            for (b, y) in blocks {
                let d = f16_bits_to_f32(le_u16(b, 0));
                for (yj, &q) in y.iter_mut().zip(&b[2..2 + QK]) {
                    *yj = f32::from(q as i8) * d;
                }
            }
        }
    }
    Ok(())
}

/// Quantizes `src` to `dtype`, appending the blocks to `dst`.
///
/// `src.len()` must be a whole number of blocks; otherwise [`Error::Invalid`] and `dst` is untouched.
pub fn quantize(dtype: DType, src: &[f32], dst: &mut Vec<u8>) -> Result<()> {
    let bl = dtype.block_len();
    if !src.len().is_multiple_of(bl) {
        return Err(Error::Invalid(format!(
            "quantize {dtype}: {} elements is not a whole number of {bl}-element blocks",
            src.len()
        )));
    }
    dst.reserve(src.len() / bl * dtype.block_bytes());
    match dtype {
        DType::F32 => {
            for &x in src {
                dst.extend_from_slice(&x.to_le_bytes());
            }
        }
        DType::F16 => {
            for &x in src {
                dst.extend_from_slice(&f32_to_f16_bits(x).to_le_bytes());
            }
        }
        DType::BF16 => {
            for &x in src {
                dst.extend_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
            }
        }
        DType::Q4_0 => src.chunks_exact(QK).for_each(|x| quantize_block_q4_0(x, dst)),
        DType::Q4_1 => src.chunks_exact(QK).for_each(|x| quantize_block_q4_1(x, dst)),
        DType::Q8_0 => src.chunks_exact(QK).for_each(|x| quantize_block_q8_0(x, dst)),
    }
    Ok(())
}

/// One `Q4_0` block: the scale maps the element of largest magnitude (the first one, on ties) to -8.
fn quantize_block_q4_0(x: &[f32], dst: &mut Vec<u8>) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    dst.extend_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    for j in 0..HALF {
        // The sums lie in [0.5, 16.5] for finite input; the cast truncates toward zero like C's `(int8_t)`.
        let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = ((x[j + HALF] * id + 8.5) as i8).min(15) as u8;
        dst.push(xi0 | (xi1 << 4));
    }
}

/// One `Q4_1` block: 16 levels spread evenly from the block's minimum to its maximum.
fn quantize_block_q4_1(x: &[f32], dst: &mut Vec<u8>) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    dst.extend_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    dst.extend_from_slice(&f32_to_f16_bits(min).to_le_bytes());
    for j in 0..HALF {
        let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (((x[j + HALF] - min) * id + 0.5) as i8).min(15) as u8;
        dst.push(xi0 | (xi1 << 4));
    }
}

/// One `Q8_0` block: the scale maps the largest magnitude to 127; quants round half away from zero.
fn quantize_block_q8_0(x: &[f32], dst: &mut Vec<u8>) {
    // C's `MAX(amax, fabsf(v))`, including what it does with a NaN.
    let amax = x.iter().fold(0.0f32, |a, &v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    dst.extend_from_slice(&f32_to_f16_bits(d).to_le_bytes());
    for &v in x {
        dst.push((v * id).round() as i8 as u8);
    }
}

/// Marsaglia's xorshift64 (shifts 13, 7, 17): deterministic test data, the same sequence on every platform
/// and toolchain, with no dependency on `rand`'s stream. Not for anything that needs statistical quality.
/// A zero state stays zero, so seeds must be nonzero.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator whose first output is the state after one step from `seed`.
    pub fn new(seed: u64) -> XorShift64 {
        XorShift64(seed)
    }

    /// The next state.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }
}

/// `n` deterministic test values in `[-scale, scale)` from [`XorShift64`] of `seed`: the top 24 bits of each
/// state as a fraction, so every value is exact in f32 before the scaling.
pub fn xorshift_noise(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = XorShift64::new(seed);
    (0..n).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn deq(dtype: DType, src: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        dequantize(dtype, src, &mut out).unwrap();
        out
    }

    fn quant(dtype: DType, src: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        quantize(dtype, src, &mut out).unwrap();
        out
    }

    /// The fixed input of the python agreement test: four blocks (mixed values exact in f32, values that
    /// are products rounded in f32, all zeros, a constant block with a magnitude tie +3.25 / -3.25).
    fn fixed_input() -> Vec<f32> {
        let mut x = vec![0.0f32; 128];
        for i in 0..32 {
            x[i] = (((i * 37 + 11) % 101) as f32 - 50.0) / 16.0;
            x[32 + i] = (((i * 53) % 97) as f32 - 40.0) * 0.013;
            x[96 + i] = 1.5;
        }
        x[96 + 5] = 3.25;
        x[96 + 20] = -3.25;
        x
    }

    // Expected values below were generated once with the python `gguf` package (llama.cpp's gguf-py
    // 0.19.0, numpy 2.4.6) on `fixed_input()`:
    //   q = gguf.quants.quantize(x, T.Q4_0); bytes(q).hex(); gguf.quants.dequantize(q, T.Q4_0)[32:64]
    // and likewise for Q4_1, Q8_0, and for F16/BF16 on `SPECIAL`.
    const PY_Q4_0: &str = "\
        4036f258be1379df359bf147ac0268ce248a4ead3ea62d850b73ea62d940b73ea61d840b\
        00808888888888888888888888888888888880b644444444f44044444444444444444444";
    const PY_Q4_1: &str = "\
        893640c2f257bd1379cf358ae146ac0268bd24790c2d29b8c059d16af38c049d26bf37c0\
        59e26af30000000000000000000000000000000000000000ef3680c2bbbbbbbb0bbfbbbb\
        bbbbbbbbbbbbbbbb";
    const PY_Q8_0: &str = "\
        4d269dfb59b61472d02e8be947a50361be1c7ad73593f14fac0a68c62481df3d9af8591d\
        9c20b337c94de064f67a0c9f23b539cc50e266f97d0fa125b83cce52e569fb7f00000000\
        0000000000000000000000000000000000000000000000000000000000008d263b3b3b3b\
        3b7f3b3b3b3b3b3b3b3b3b3b3b3b3b3b813b3b3b3b3b3b3b3b3b3b3b";
    const PY_Q4_0_DEQ_BLOCK1: [f32; 32] = [
        -0.49731445,
        0.16577148,
        -0.4144287,
        0.24865723,
        -0.24865723,
        0.4144287,
        -0.16577148,
        0.49731445,
        -0.08288574,
        0.66308594,
        0.08288574,
        -0.49731445,
        0.16577148,
        -0.4144287,
        0.33154297,
        -0.24865723,
        0.4144287,
        -0.16577148,
        0.49731445,
        -0.0,
        0.66308594,
        0.08288574,
        -0.49731445,
        0.16577148,
        -0.4144287,
        0.33154297,
        -0.24865723,
        0.4144287,
        -0.16577148,
        0.5802002,
        -0.0,
        0.66308594,
    ];
    const PY_Q4_1_DEQ_BLOCK1: [f32; 32] = [
        -0.52001953,
        0.18969727,
        -0.4411621,
        0.2685547,
        -0.28344727,
        0.42626953,
        -0.20458984,
        0.50512695,
        -0.046875,
        0.6628418,
        0.031982422,
        -0.52001953,
        0.18969727,
        -0.3623047,
        0.2685547,
        -0.28344727,
        0.42626953,
        -0.12573242,
        0.50512695,
        -0.046875,
        0.6628418,
        0.110839844,
        -0.52001953,
        0.18969727,
        -0.3623047,
        0.3474121,
        -0.28344727,
        0.42626953,
        -0.12573242,
        0.5839844,
        -0.046875,
        0.6628418,
    ];
    const PY_Q8_0_DEQ_BLOCK1: [f32; 32] = [
        -0.52223206,
        0.16711426,
        -0.40211868,
        0.28722763,
        -0.28722763,
        0.40211868,
        -0.16711426,
        0.52223206,
        -0.052223206,
        0.6371231,
        0.06266785,
        -0.5065651,
        0.18278122,
        -0.39167404,
        0.29767227,
        -0.27156067,
        0.41778564,
        -0.15666962,
        0.5326767,
        -0.036556244,
        0.65279007,
        0.07833481,
        -0.49612045,
        0.19322586,
        -0.37600708,
        0.31333923,
        -0.26111603,
        0.4282303,
        -0.14100266,
        0.54834366,
        -0.026111603,
        0.6632347,
    ];
    /// Sums (in f64, in element order) of python's dequantization of all four blocks.
    const PY_DEQ_SUMS: [(DType, f64); 3] =
        [(DType::Q4_0, 47.57080078125), (DType::Q4_1, 43.77587890625), (DType::Q8_0, 43.47483444213867)];

    /// Rounding ties, overflow to infinity, subnormals, signed zero.
    const SPECIAL: [f32; 14] = [
        1.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        65504.0,
        65520.0,
        1e-8,
        -0.0,
        -2.5,
        6.1e-5,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        3.0e38,
        -1.1754944e-38,
        0.1,
    ];
    const PY_F16: &str = "003c003c023cff7b007c0000008000c1ff03043c0c3c007c0080662e";
    const PY_BF16: &str = "803f803f803f804780472c32008020c08038803f823f627f8080cd3d";

    #[test]
    fn quantize_matches_python_gguf() {
        let x = fixed_input();
        assert_eq!(quant(DType::Q4_0, &x), hex(PY_Q4_0));
        assert_eq!(quant(DType::Q4_1, &x), hex(PY_Q4_1));
        assert_eq!(quant(DType::Q8_0, &x), hex(PY_Q8_0));
        assert_eq!(quant(DType::F16, &SPECIAL), hex(PY_F16));
        assert_eq!(quant(DType::BF16, &SPECIAL), hex(PY_BF16));
    }

    #[test]
    fn dequantize_matches_python_gguf() {
        for (dtype, bytes, block1) in [
            (DType::Q4_0, PY_Q4_0, PY_Q4_0_DEQ_BLOCK1),
            (DType::Q4_1, PY_Q4_1, PY_Q4_1_DEQ_BLOCK1),
            (DType::Q8_0, PY_Q8_0, PY_Q8_0_DEQ_BLOCK1),
        ] {
            let y = deq(dtype, &hex(bytes), 128);
            for (j, (a, b)) in y[32..64].iter().zip(block1).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{dtype} element {}", 32 + j);
            }
            let sum: f64 = y.iter().map(|&v| f64::from(v)).sum();
            let want = PY_DEQ_SUMS.iter().find(|(t, _)| *t == dtype).unwrap().1;
            assert_eq!(sum, want, "{dtype} sum");
        }
        // f16 and bf16 widen exactly: python's bytes read back to what numpy's conversion gives.
        let f16s = deq(DType::F16, &hex(PY_F16), SPECIAL.len());
        for (a, &x) in f16s.iter().zip(&SPECIAL) {
            assert_eq!(a.to_bits(), f16::from_f32(x).to_f32().to_bits());
        }
        let bf16s = deq(DType::BF16, &hex(PY_BF16), SPECIAL.len());
        assert_eq!(bf16s[9], 1.0, "a tie rounds to the even neighbour, down");
        assert_eq!(bf16s[10], 1.0 + 4.0 / 256.0, "a tie rounds to the even neighbour, up");
        assert_eq!(bf16s[6].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn hand_built_q4_0_block() {
        // d = 0.5 (f16 0x3800); byte j holds j in the low nibble and 15 - j in the high one.
        let mut b = vec![0x00, 0x38];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = deq(DType::Q4_0, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn hand_built_q4_1_block() {
        // d = 2.0 (0x4000), m = -1.0 (0xbc00).
        let mut b = vec![0x00, 0x40, 0x00, 0xbc];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = deq(DType::Q4_1, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 2.0 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 2.0 - 1.0);
        }
    }

    #[test]
    fn hand_built_q8_0_block() {
        // d = 0.25 (0x3400); quants -128, -127, ..., -97 as two's complement bytes.
        let mut b = vec![0x00, 0x34];
        b.extend((0..32i32).map(|j| (j - 128) as i8 as u8));
        let y = deq(DType::Q8_0, &b, 32);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 128.0) * 0.25);
        }
    }

    #[test]
    fn hand_built_float_elements() {
        assert_eq!(deq(DType::F32, &1.5f32.to_le_bytes(), 1), [1.5]);
        assert_eq!(deq(DType::F16, &[0x00, 0xc1], 1), [-2.5]);
        assert_eq!(deq(DType::BF16, &[0x80, 0x3f], 1), [1.0]);
    }

    #[test]
    fn q4_0_tie_takes_the_first_largest_magnitude() {
        // ggml keeps the first element of largest magnitude: -4 here, so d = 0.5 and 4.0 clips to 15.
        let mut x = vec![0.0f32; 32];
        x[3] = -4.0;
        x[9] = 4.0;
        let q = quant(DType::Q4_0, &x);
        assert_eq!(&q[..2], &[0x00, 0x38]);
        assert_eq!(q[2 + 3] & 0x0F, 0);
        assert_eq!(q[2 + 9] & 0x0F, 15);
    }

    #[test]
    fn round_trips_stay_within_half_a_step() {
        let x = xorshift_noise(0x5eed_0001, 32 * 64, 3.0);
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let q = quant(dtype, &x);
            assert_eq!(q.len() as u64, dtype.bytes_for(x.len() as u64).unwrap());
            let y = deq(dtype, &q, x.len());
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let (lo, hi) = bx.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                for (&a, &b) in bx.iter().zip(by) {
                    let err = (a - b).abs();
                    // One quantization step, halved where rounding is to nearest, plus f16 rounding of
                    // the scale (and of the minimum, for Q4_1).
                    let bound = match dtype {
                        DType::F32 => 0.0,
                        DType::F16 => a.abs() / 2048.0,
                        DType::BF16 => a.abs() / 256.0,
                        DType::Q4_0 => amax / 8.0 + amax * 2e-3,
                        DType::Q4_1 => (hi - lo) / 30.0 + amax * 2e-3,
                        DType::Q8_0 => amax / 254.0 + amax * 2e-3,
                    };
                    assert!(err <= bound, "{dtype}: {a} -> {b}, error {err} > {bound}");
                }
            }
            // Quantizing what was dequantized is a fixed point for the float types.
            if !dtype.is_quantized() {
                assert_eq!(quant(dtype, &y), q, "{dtype}");
            }
        }
    }

    #[test]
    fn zero_and_constant_blocks() {
        let zeros = [0.0f32; 32];
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            assert_eq!(deq(dtype, &quant(dtype, &zeros), 32), zeros, "{dtype}");
        }
        // A constant block is exact in Q4_1 (d = 0, m = the value) when the value is exact in f16.
        assert_eq!(deq(DType::Q4_1, &quant(DType::Q4_1, &[0.75; 32]), 32), [0.75; 32]);
    }

    #[test]
    fn length_mismatches_are_errors() {
        let mut out = vec![0.0f32; 32];
        assert!(dequantize(DType::Q4_0, &[0u8; 17], &mut out).is_err());
        assert!(dequantize(DType::Q4_0, &[0u8; 19], &mut out).is_err());
        assert!(dequantize(DType::F32, &[0u8; 127], &mut out).is_err());
        let mut odd = vec![0.0f32; 31];
        let msg = dequantize(DType::Q8_0, &[0u8; 34], &mut odd).unwrap_err().to_string();
        assert!(msg.contains("31 elements") && msg.contains("q8_0"), "{msg}");
        let mut buf = vec![7u8];
        let msg = quantize(DType::Q4_1, &[0.0; 33], &mut buf).unwrap_err().to_string();
        assert!(msg.contains("33 elements"), "{msg}");
        assert_eq!(buf, [7], "nothing appended on error");
        // F16 works for any length.
        quantize(DType::F16, &[1.0; 3], &mut buf).unwrap();
        assert_eq!(buf.len(), 7);
    }
}
