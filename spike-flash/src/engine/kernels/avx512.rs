//! AVX-512 kernels (F, BW, VL, VNNI, VBMI, on top of AVX2, FMA and F16C).
//!
//! Two 32-element blocks per 512-bit register. The integer dot products use VNNI's `vpdpbusd` (u8 x i8,
//! groups of 4 summed into i32, no intermediate saturation): 4-bit weights are unsigned nibbles already.
//! With one token, blocks are unpacked straight from the matrix: a masked load of a block pair, `vpermb` to
//! spread its 32 packed bytes and gather its f16 scales, a masked shift for the high nibbles. Q8_0 weights
//! use the abs/sign trick (`|w|` times the activations carrying the weights' signs). Q4_0's `- 8` becomes an
//! f32 term per block, `-8 d_w (d_x sum_x)`.
//!
//! With many tokens a tile of [`R`] rows is unpacked once into per-thread scratch (nibbles to bytes, Q8_0
//! bytes offset by +128 into unsigned, scales to f32 vectors) and run against [`T`] tokens at a time from
//! a register tile of `R x T` accumulators. Every block's offset (Q4_1's `m`, Q4_0's `-8 d_w`, Q8_0's
//! `-128 d_w`) multiplies the activation block sum `d_x sum_x` and is added as one more f32 dot product.
//!
//! Float rows times many tokens: 16 weights per register, converted in registers (`vcvtph2ps` for F16, a
//! shift for BF16), a tile of [`FR`] = 4 rows x [`FT`] = 6 tokens: 24 accumulators and 4 weight vectors of
//! the 32 registers, 4 conversions and 10 loads per 24 FMAs. The last `cols % 16` elements take one masked
//! step.
//!
//! The AVX-512 intrinsics are stable since Rust 1.89, the workspace's MSRV.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{
    float_kind, for_each_float_tile, for_each_tile, give_scratch, padded_blocks, q4_finish, q4_scale_bits, reduce_tile,
    reset, take_scratch, two_lanes, Acts, Put, QMatrix, Scratch,
};
use crate::model::quant::{DType, QK};

/// Rows per register tile of the batched kernel.
const R: usize = 4;
/// Tokens per register tile of the batched kernel.
const T: usize = 4;

/// `vpermb` indices spreading the packed bytes of a 4-bit block pair starting at `off` in a
/// `stride`-byte block: each block's 16 bytes twice (low nibbles, then high nibbles).
const fn nibble_index(off: usize, stride: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 16 {
        idx[i] = (off + i) as u8;
        idx[16 + i] = (off + i) as u8;
        idx[32 + i] = (stride + off + i) as u8;
        idx[48 + i] = (stride + off + i) as u8;
        i += 1;
    }
    idx
}

/// `vpermb` indices gathering the f16 scales of a block pair, the bytes `src`, into the low 8 bytes.
const fn scale_index(src: [u8; 8]) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 8 {
        idx[i] = src[i];
        i += 1;
    }
    idx
}

static NIBBLES_Q4_1: [u8; 64] = nibble_index(4, 20);
static NIBBLES_Q4_0: [u8; 64] = nibble_index(2, 18);
/// Q4_1: `[d0, m0, d1, m1]` from blocks of 20 bytes.
static SCALES_Q4_1: [u8; 64] = scale_index([0, 1, 2, 3, 20, 21, 22, 23]);
/// Q4_0: `[d0, d0, d1, d1]` from blocks of 18 bytes.
static SCALES_Q4_0: [u8; 64] = scale_index([0, 1, 0, 1, 18, 19, 18, 19]);

/// Loads one of the index tables above.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn table(t: &'static [u8; 64]) -> __m512i {
    // SAFETY: the table is 64 bytes; unaligned load.
    unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
}

/// `permutexvar_ps` indices broadcasting lane 0 to lanes 0..8 and lane 2 to lanes 8..16: the scales of a
/// block pair from `[s0, _, s1, _]`. Also used by the fused kernels of `wide.rs`, hence only AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn pair_broadcast() -> __m512i {
    _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0)
}

/// The 64 unpacked values of a 4-bit block pair `raw` (from [`load_pair`]), spread by `idx`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn unpack_nibbles(raw: __m512i, idx: __m512i) -> __m512i {
    let q = _mm512_permutexvar_epi8(idx, raw);
    // Bytes 16..32 and 48..64 (16-bit lanes 8..16 and 24..32) take the high nibbles.
    let q = _mm512_mask_srli_epi16::<4>(q, 0xFF00_FF00, q);
    _mm512_and_si512(q, _mm512_set1_epi8(0x0F))
}

simd_entry_points!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c",
    "AVX-512 F, BW, VL, VNNI and VBMI, AVX2, FMA and F16C",
    float_tokens: [6, 5, 4, 3, 2]
);

/// Checks that `q` and `sc` hold `pairs` block pairs.
fn check_acts(pairs: usize, q: &[i8], sc: &[f32]) {
    assert!(q.len() >= pairs * 2 * QK && sc.len() >= pairs * 4, "activations shorter than {pairs} block pairs");
}

/// Loads the bytes of blocks `2 p` and `2 p + 1` of `row` (`bb` bytes each) into the low bytes of a
/// register, the rest zero; of block `2 p` only when it is the last.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn load_pair(row: &[u8], bb: usize, p: usize) -> __m512i {
    let start = 2 * bb * p;
    let len = (2 * bb).min(row.len() - start);
    assert!(len <= 64 && start + len <= row.len());
    let mask = (1u64 << len) - 1;
    // SAFETY: the mask selects bytes `start .. start + len`, inside `row` (asserted); masked-off bytes are
    // not accessed.
    unsafe { _mm512_maskz_loadu_epi8(mask, row.as_ptr().add(start).cast()) }
}

/// One Q4_1 (`Q4_1 = true`) or Q4_0 row times one token, see [`super::scalar::dot_q4_1`] and `dot_q4_0`.
///
/// A block pair's packed bytes come from two 16-byte loads rather than one 64-byte load, which at the
/// 40-byte pair stride would straddle two cache lines nearly every time: with the weights streaming from
/// DRAM that measured 30% slower (and 15% slower from L2).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn dot_q4<const Q4_1: bool>(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    let bb = if Q4_1 { 20 } else { 18 };
    let off = if Q4_1 { 4 } else { 2 };
    let nb = row.len() / bb;
    let pairs = nb.div_ceil(2);
    check_acts(pairs, q, sc);
    let (rp, qp, sp) = (row.as_ptr(), q.as_ptr(), sc.as_ptr());
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut macc = [_mm_setzero_ps(); 2];
    let step = |b0: usize, b1: usize, p: usize, acc: &mut __m512, macc: &mut __m128| {
        // SAFETY: callers pass blocks `b0, b1 < nb`, whose bytes `bb b .. bb b + bb` lie inside `row` (the
        // 16 packed bytes end at `bb b + off + 16 = bb (b + 1)`), and `p < pairs`, whose 64 values and 4
        // scales the token holds (checked above); unaligned loads.
        let (q0, q1, h0, h1, x, s) = unsafe {
            (
                _mm_loadu_si128(rp.add(bb * b0 + off).cast()),
                _mm_loadu_si128(rp.add(bb * b1 + off).cast()),
                q4_scale_bits::<Q4_1>(rp.add(bb * b0)),
                q4_scale_bits::<Q4_1>(rp.add(bb * b1)),
                _mm512_loadu_si512(qp.add(64 * p).cast()),
                _mm_loadu_ps(sp.add(4 * p)),
            )
        };
        let t = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q0), q1);
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(t), _mm256_srli_epi16::<4>(t));
        let z = _mm512_and_si512(_mm512_shuffle_i64x2::<0b11_01_10_00>(z, z), low);
        add_q4_pair(_mm512_dpbusd_epi32(_mm512_setzero_si512(), z, x), h0, h1, s, acc, macc);
    };
    two_lanes(nb / 2, |p, l| step(2 * p, 2 * p + 1, p, &mut acc[l], &mut macc[l]));
    if nb % 2 == 1 {
        // An odd last block stands in for its missing partner too: that half meets the activations' zero
        // padding (values and scales), so it adds nothing.
        step(nb - 1, nb - 1, nb / 2, &mut acc[0], &mut macc[0]);
    }
    q4_total::<Q4_1>(_mm512_add_ps(acc[0], acc[1]), _mm_add_ps(macc[0], macc[1]))
}

/// Adds a Q4 block pair to the accumulators of a Q4 dot product: `dot` holds the pair's integer dot
/// products (block `2p` in lanes 0..8, `2p + 1` in lanes 8..16), `h0` and `h1` the blocks' scale words
/// ([`q4_scale_bits`]), `s` the activation pair's `[d_x0, d_x0 sum_x0, d_x1, d_x1 sum_x1]`. The products of
/// the two go to `macc` (lanes 1 and 3 are the offset terms, see [`q4_total`]); lanes 0 and 2 scale `dot`
/// into `acc`. Shared with the fused kernels of `wide.rs`, hence only AVX-512 F and F16C.
#[target_feature(enable = "avx512f,f16c")]
#[inline]
pub(super) fn add_q4_pair(dot: __m512i, h0: u32, h1: u32, s: __m128, acc: &mut __m512, macc: &mut __m128) {
    let f = _mm_cvtph_ps(_mm_cvtsi64_si128((u64::from(h0) | (u64::from(h1) << 32)) as i64));
    let prod = _mm_mul_ps(f, s);
    *macc = _mm_add_ps(*macc, prod);
    let scale = _mm512_permutexvar_ps(pair_broadcast(), _mm512_castps128_ps512(prod));
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
}

/// The value of a Q4 dot product from its accumulators ([`add_q4_pair`]): the sum of `acc`, plus the offset
/// terms (lanes 1 and 3 of `macc`) for Q4_1, or minus 8 times them for Q4_0.
#[target_feature(enable = "avx512f,f16c")]
#[inline]
pub(super) fn q4_total<const Q4_1: bool>(acc: __m512, macc: __m128) -> f32 {
    let m = _mm_blend_ps::<0b1010>(_mm_setzero_ps(), macc);
    let m = _mm_hadd_ps(m, m);
    q4_finish::<Q4_1>(_mm512_reduce_add_ps(acc), _mm_cvtss_f32(_mm_hadd_ps(m, m)))
}

/// Q8_0 row times one token, see [`super::scalar::dot_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    const BB: usize = 34;
    let nb = row.len() / BB;
    let pairs = nb.div_ceil(2);
    check_acts(pairs, q, sc);
    let (rp, qp, sp) = (row.as_ptr(), q.as_ptr(), sc.as_ptr());
    let bidx = pair_broadcast();
    let mut acc = [_mm512_setzero_ps(); 2];
    let step = |p: usize, acc: &mut __m512| {
        let o = 2 * BB * p;
        let second = 2 * p + 1 < nb;
        // SAFETY: block `2 p < nb` spans bytes `o .. o + 34` of `row` and, when `second`, block `2 p + 1`
        // the next 34; the token holds values `64 p .. 64 p + 64` and scales `4 p .. 4 p + 4` (checked
        // above); unaligned loads.
        let (w, d0, d1, x, s) = unsafe {
            let w0 = _mm256_loadu_si256(rp.add(o + 2).cast());
            let (w, d1) = if second {
                let w1 = _mm256_loadu_si256(rp.add(o + BB + 2).cast());
                (_mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1), rp.add(o + BB).cast::<u16>().read_unaligned())
            } else {
                (_mm512_zextsi256_si512(w0), 0)
            };
            let d0 = rp.add(o).cast::<u16>().read_unaligned();
            (w, d0, d1, _mm512_loadu_si512(qp.add(64 * p).cast()), _mm_loadu_ps(sp.add(4 * p)))
        };
        // [d0, 0, d1, 0] * [dx0, _, dx1, _].
        let f = _mm_cvtph_ps(_mm_cvtsi64_si128((u64::from(d0) | (u64::from(d1) << 32)) as i64));
        let scale = _mm512_permutexvar_ps(bidx, _mm512_castps128_ps512(_mm_mul_ps(f, s)));
        let neg = _mm512_movepi8_mask(w);
        let xs = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), xs);
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
    };
    two_lanes(pairs, |p, l| step(p, &mut acc[l]));
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Float row times one token, accumulated in f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn dot_float(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    assert_eq!(row.len(), n * dtype.block_bytes(), "float row of {} bytes for {n} values", row.len());
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    // Weights `i .. i + 16` times values `i .. i + 16`, of which those in `mask`.
    let prod = |i: usize, mask: u16, acc: __m512| -> __m512 {
        // SAFETY: callers pass `mask` selecting only elements below `n`, so the selected bytes lie in
        // `row` and `x`; masked-off elements are not accessed.
        unsafe {
            let wv = match dtype {
                DType::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, rp.add(2 * i).cast())),
                DType::BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                    _mm256_maskz_loadu_epi16(mask, rp.add(2 * i).cast()),
                ))),
                _ => _mm512_maskz_loadu_ps(mask, rp.add(4 * i).cast()),
            };
            _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, xp.add(i)), acc)
        }
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = prod(i + 16 * k, u16::MAX, *a);
        }
        i += 64;
    }
    while i < n {
        let left = n - i;
        let mask = if left >= 16 { u16::MAX } else { (1u16 << left) - 1 };
        acc[0] = prod(i, mask, acc[0]);
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// Rows per register tile of the batched float kernel.
const FR: usize = 4;
/// Tokens per register tile of the batched float kernel.
const FT: usize = 6;

/// Elements `k .. k + 16` of the float row at `p` (of `kind`, see [`float_kind`]) as f32; those outside
/// `mask` are zero. An all-ones mask loads without masking.
///
/// # Safety
/// The elements `mask` selects lie inside the row; masked-off elements are not accessed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
unsafe fn load_float16(kind: u8, p: *const u8, k: usize, mask: u16) -> __m512 {
    let eb = float_kind::bytes(kind);
    // SAFETY: the caller guarantees that the selected elements, bytes `eb k ..` of the row, are readable;
    // unaligned loads.
    let half = unsafe {
        match (kind == float_kind::F32, mask) {
            (true, u16::MAX) => return _mm512_loadu_ps(p.add(eb * k).cast()),
            (true, _) => return _mm512_maskz_loadu_ps(mask, p.add(eb * k).cast()),
            (false, u16::MAX) => _mm256_loadu_si256(p.add(eb * k).cast()),
            (false, _) => _mm256_maskz_loadu_epi16(mask, p.add(eb * k).cast()),
        }
    };
    if kind == float_kind::F16 {
        _mm512_cvtph_ps(half)
    } else {
        // A bf16 is the high half of the f32 of the same value.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
    }
}

/// One register tile of the float kernel: the rows `wr` (of [`float_kind`] `KIND`) times the `NT` tokens
/// `x`, 16 elements per step: each row's 16 weights are converted once and serve `NT` tokens, each token's
/// 16 values serve [`FR`] rows. Each accumulator sums its own lanes, so a pair's result does not depend on
/// the tile it is computed in.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn float_micro<const NT: usize, const KIND: u8>(wr: [&[u8]; FR], x: [&[f32]; NT]) -> [[f32; FT]; FR] {
    let n = x[0].len();
    assert!(wr.iter().all(|r| r.len() == n * float_kind::bytes(KIND)) && x.iter().all(|x| x.len() == n));
    let wp: [*const u8; FR] = std::array::from_fn(|i| wr[i].as_ptr());
    let xp: [*const f32; NT] = std::array::from_fn(|j| x[j].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); NT]; FR];
    let mut step = |k: usize, mask: u16| {
        // SAFETY: callers pass a `mask` that selects only elements below `n` from `k`, and every row holds
        // `n` elements and every token `n` values (asserted above); masked-off elements are not accessed.
        let wv: [__m512; FR] = std::array::from_fn(|i| unsafe { load_float16(KIND, wp[i], k, mask) });
        for j in 0..NT {
            // SAFETY: as above.
            let xv = unsafe {
                if mask == u16::MAX {
                    _mm512_loadu_ps(xp[j].add(k))
                } else {
                    _mm512_maskz_loadu_ps(mask, xp[j].add(k))
                }
            };
            for i in 0..FR {
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    };
    let mut k = 0;
    while k + 16 <= n {
        step(k, u16::MAX);
        k += 16;
    }
    if k < n {
        step(k, (1u16 << (n - k)) - 1);
    }
    reduce_tile(&acc, |v| _mm512_reduce_add_ps(v))
}

/// Unpacks one quantized row into the scratch layout of [`micro`], per block pair `p`: `u[64 p ..]` the 64
/// unsigned values, `dw[16 p ..]` the two scales each broadcast to 8 lanes, `mw[4 p ..]` `(0, m0, 0, m1)`
/// with `m` the coefficient of the activation block sum.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn unpack_row(dtype: DType, row: &[u8], pairs: usize, u: &mut [u8], dw: &mut [f32], mw: &mut [f32]) {
    assert!(u.len() >= pairs * 64 && dw.len() >= pairs * 16 && mw.len() >= pairs * 4);
    let bidx = pair_broadcast();
    let bb = dtype.block_bytes();
    let nb = row.len() / bb;
    for p in 0..pairs {
        let (values, f, offsets) = match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let q4_1 = dtype == DType::Q4_1;
                let raw = load_pair(row, bb, p);
                let values = unpack_nibbles(raw, table(if q4_1 { &NIBBLES_Q4_1 } else { &NIBBLES_Q4_0 }));
                let sca = table(if q4_1 { &SCALES_Q4_1 } else { &SCALES_Q4_0 });
                let f = _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi8(sca, raw)));
                // Q4_1: [d0, m0, d1, m1] -> (0, m0, 0, m1); Q4_0: [d0, d0, d1, d1] -> (0, -8 d0, 0, -8 d1).
                let m = if q4_1 { f } else { _mm_mul_ps(f, _mm_set1_ps(-8.0)) };
                (values, f, _mm_blend_ps::<0b1010>(_mm_setzero_ps(), m))
            }
            _ => {
                let o = 2 * bb * p;
                let b0 = &row[o..o + bb];
                let b1 = if 2 * p + 1 < nb { &row[o + bb..o + 2 * bb] } else { &[0u8; 34][..] };
                // SAFETY: `b0` and `b1` are 34 bytes each; unaligned loads of bytes 2..34.
                let w = unsafe {
                    _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_loadu_si256(b0[2..].as_ptr().cast())),
                        _mm256_loadu_si256(b1[2..].as_ptr().cast()),
                    )
                };
                // The +128 offset makes the weights unsigned; `-128 d_w` times the block sum takes it back.
                let values = _mm512_xor_si512(w, _mm512_set1_epi8(-128));
                let d =
                    u64::from(u16::from_le_bytes([b0[0], b0[1]])) | u64::from(u16::from_le_bytes([b1[0], b1[1]])) << 32;
                let f = _mm_cvtph_ps(_mm_cvtsi64_si128(d as i64));
                let m = _mm_castsi128_ps(_mm_slli_si128::<4>(_mm_castps_si128(_mm_mul_ps(f, _mm_set1_ps(-128.0)))));
                (values, f, m)
            }
        };
        // SAFETY: `p < pairs`: `u` holds bytes `64 p .. 64 p + 64`, `dw` floats `16 p .. 16 p + 16` and `mw`
        // floats `4 p .. 4 p + 4` (asserted above); unaligned stores.
        unsafe {
            _mm512_storeu_si512(u.as_mut_ptr().add(64 * p).cast(), values);
            _mm512_storeu_ps(dw.as_mut_ptr().add(16 * p), _mm512_permutexvar_ps(bidx, _mm512_castps128_ps512(f)));
            _mm_storeu_ps(mw.as_mut_ptr().add(4 * p), offsets);
        }
    }
}

/// Quantized rows times many tokens: tiles of [`R`] rows are unpacked once and run against all tokens of
/// `toks`, [`T`] at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn batched_quantized(w: &QMatrix, acts: &Acts, rows: Range<usize>, toks: Range<usize>, put: &mut impl Put) {
    let pairs = (w.cols / QK).div_ceil(2);
    let nbp = padded_blocks(w.cols);
    let mut s = take_scratch();
    reset(&mut s.u, R * pairs * 64, 0);
    reset(&mut s.dw, R * pairs * 16, 0.0);
    reset(&mut s.mw, R * nbp * 2, 0.0);
    let unpack = |s: &mut Scratch, i: usize, row: Option<usize>| {
        let u = &mut s.u[i * pairs * 64..(i + 1) * pairs * 64];
        let dw = &mut s.dw[i * pairs * 16..(i + 1) * pairs * 16];
        let mw = &mut s.mw[i * nbp * 2..(i + 1) * nbp * 2];
        match row {
            Some(r) => unpack_row(w.dtype, w.row(r), pairs, u, dw, mw),
            None => {
                u.fill(0);
                dw.fill(0.0);
                mw.fill(0.0);
            }
        }
    };
    let tile = |s: &Scratch, t0: usize, nt: usize| match nt {
        4 => micro::<4>(s, pairs, acts, t0),
        3 => micro::<3>(s, pairs, acts, t0),
        2 => micro::<2>(s, pairs, acts, t0),
        _ => micro::<1>(s, pairs, acts, t0),
    };
    for_each_tile::<_, R, T>(&mut s, rows, toks, unpack, tile, put);
    give_scratch(s);
}

/// One register tile: the [`R`] unpacked rows of `s` times tokens `t0 .. t0 + NT`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn micro<const NT: usize>(s: &Scratch, pairs: usize, acts: &Acts, t0: usize) -> [[f32; T]; R] {
    let q: [&[i8]; NT] = std::array::from_fn(|j| acts.q_tok(t0 + j));
    let sc: [&[f32]; NT] = std::array::from_fn(|j| acts.sc_tok(t0 + j));
    let nbp = sc[0].len() / 2;
    assert!(q.iter().all(|q| q.len() >= pairs * 64) && sc.iter().all(|s| s.len() == nbp * 2));
    assert!(s.u.len() >= R * pairs * 64 && s.dw.len() >= R * pairs * 16 && s.mw.len() >= R * nbp * 2);
    assert!(nbp.is_multiple_of(8) && 2 * pairs <= nbp);
    let qp: [*const i8; NT] = std::array::from_fn(|j| q[j].as_ptr());
    let sp: [*const f32; NT] = std::array::from_fn(|j| sc[j].as_ptr());
    let (up, dp, mp) = (s.u.as_ptr(), s.dw.as_ptr(), s.mw.as_ptr());
    let bidx = pair_broadcast();
    let mut acc = [[_mm512_setzero_ps(); NT]; R];
    for p in 0..pairs {
        // SAFETY (all loads of this loop): `p < pairs`; scratch row `i < R` holds `pairs` pairs of 64 bytes
        // and of 16 scales, each token `pairs` pairs of 64 values and `nbp >= 2 pairs` scale pairs
        // (asserted above); unaligned loads.
        let wv: [__m512i; R] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_si512(up.add((i * pairs + p) * 64).cast()) });
        let dv: [__m512; R] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(dp.add((i * pairs + p) * 16)) });
        for j in 0..NT {
            // SAFETY: as above.
            let (x, s) = unsafe { (_mm512_loadu_si512(qp[j].add(64 * p).cast()), _mm_loadu_ps(sp[j].add(4 * p))) };
            let dx = _mm512_permutexvar_ps(bidx, _mm512_castps128_ps512(s));
            for i in 0..R {
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[i], x);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dv[i], dx), acc[i][j]);
            }
        }
    }
    micro_tail!(
        acc, sp, mp, nbp,
        offsets: true, lanes: 16, load: _mm512_loadu_ps, fmadd: _mm512_fmadd_ps, sum: _mm512_reduce_add_ps,
    )
}
