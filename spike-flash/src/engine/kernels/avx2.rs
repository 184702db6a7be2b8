//! AVX2 + FMA + F16C kernels.
//!
//! One 32-element block per 256-bit register. Unsigned 4-bit weights times signed 8-bit activations go
//! through `vpmaddubsw` (u8 x i8, pairs summed to i16: at most 2 * 15 * 127, no saturation) and
//! `vpmaddwd` with ones (to i32). Q8_0 weights are signed, so the kernel multiplies their magnitudes by the
//! activations carrying the weights' signs (`vpsignb`, the abs/sign trick: at most 2 * 128 * 127 < 2^15).
//! Q4_0's `- 8` is applied as `- 8 * d_w * (d_x * sum(x))`, an f32 term per block.
//!
//! Float rows times many tokens: 8 weights per register, converted in registers (F16C's `vcvtph2ps`, or a
//! shift for BF16), a tile of [`FR`] = 3 rows x [`FT`] = 4 tokens: 12 accumulators, 3 weight vectors and one
//! activation vector fill the 16 registers; 3 conversions and 7 loads serve 12 FMAs. The last `cols % 8`
//! elements are copied into zero-padded buffers for one more step.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{
    float_kind, for_each_float_tile, for_each_tile, give_scratch, padded_blocks, q4_finish, q4_scale_bits, reduce_tile,
    reset, take_scratch, two_lanes, Acts, Put, QMatrix, Scratch,
};
use crate::model::quant::{DType, QK};

/// Rows per register tile of the batched kernel.
const R: usize = 2;
/// Tokens per register tile of the batched kernel.
const T: usize = 4;

simd_entry_points!("avx2,fma,f16c", "AVX2, FMA and F16C", float_tokens: [4, 3, 2]);

/// Quantizes one token's values `x` (whole blocks) into `q` and `(d, d * sum)` pairs in `sc`, exactly as
/// the scalar [`super::quantize_block`] does: the same maximum, the same f32 division and multiplication,
/// rounding to nearest even, saturation that never triggers (`|x * 127 / amax| < 127.5`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row(x: &[f32], q: &mut [i8], sc: &mut [f32]) {
    let nb = x.len() / QK;
    assert!(x.len() == nb * QK && q.len() >= nb * QK && sc.len() >= nb * 2);
    let sign = _mm256_set1_ps(-0.0);
    // `packs` interleaves 128-bit halves; this puts the 8 groups of 4 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        // SAFETY: `b < nb`: values `32 b .. 32 b + 32` are in `x` (asserted); unaligned loads.
        let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(QK * b + 8 * k)) });
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let i: [__m256i; 4] = std::array::from_fn(|k| {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                v[k], id,
            )))
        });
        let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)));
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        // SAFETY: `b < nb`: `q` holds bytes `32 b .. 32 b + 32` (asserted); unaligned store.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(QK * b).cast(), bytes) };
        sc[2 * b] = d;
        sc[2 * b + 1] = d * sum as f32;
    }
}

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Lane 1 of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane1(v: __m128) -> f32 {
    _mm_cvtss_f32(_mm_movehdup_ps(v))
}

/// The f32 value of an f16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn h2f(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Elements 0..16 and 16..32 of a 4-bit block from its 16 packed bytes: low nibbles, then high nibbles.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles(qs: __m128i) -> __m256i {
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs), _mm256_set1_epi8(0x0F))
}

/// Sum of `u_i * x_i` over groups of 4 bytes, as f32: `u` unsigned, `x` signed, pairs within i16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_u8_i8(u: __m256i, x: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)))
}

/// Checks that `q` and `sc` hold `nb` blocks.
fn check_acts(nb: usize, q: &[i8], sc: &[f32]) {
    assert!(q.len() >= nb * QK && sc.len() >= nb * 2, "activations shorter than {nb} blocks");
}

/// One Q4_1 (`Q4_1 = true`) or Q4_0 row times one token, see [`super::scalar::dot_q4_1`] and `dot_q4_0`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4<const Q4_1: bool>(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    let bb = if Q4_1 { 20 } else { 18 };
    let off = if Q4_1 { 4 } else { 2 };
    let nb = row.len() / bb;
    check_acts(nb, q, sc);
    let (rp, qp, sp) = (row.as_ptr(), q.as_ptr(), sc.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut macc = [_mm_setzero_ps(); 2];
    let step = |b: usize, acc: &mut __m256, macc: &mut __m128| {
        // SAFETY: `b < nb`: the block's bytes `bb b .. bb b + bb` are in `row` (the 16 packed bytes end at
        // `bb b + off + 16 = bb (b + 1)`), its 32 values in `q` and its two floats in `sc` (checked above);
        // all loads are unaligned loads.
        let (h, qs, x, s) = unsafe {
            (
                q4_scale_bits::<Q4_1>(rp.add(bb * b)),
                _mm_loadu_si128(rp.add(bb * b + off).cast()),
                _mm256_loadu_si256(qp.add(QK * b).cast()),
                sp.add(2 * b).cast::<u64>().read_unaligned(),
            )
        };
        // [d_w, m_w] (Q4_1) or [d_w, d_w] (Q4_0) * [d_x, d_x sum_x]: the block's scale, and its offset term
        // or the factor of its `- 8` term.
        let f = _mm_cvtph_ps(_mm_cvtsi32_si128(h as i32));
        let prod = _mm_mul_ps(f, _mm_castsi128_ps(_mm_cvtsi64_si128(s as i64)));
        *macc = _mm_add_ps(*macc, prod);
        *acc = _mm256_fmadd_ps(dot_u8_i8(nibbles(qs), x), _mm256_broadcastss_ps(prod), *acc);
    };
    two_lanes(nb, |b, l| step(b, &mut acc[l], &mut macc[l]));
    q4_finish::<Q4_1>(hsum(_mm256_add_ps(acc[0], acc[1])), lane1(_mm_add_ps(macc[0], macc[1])))
}

/// Q8_0 row times one token, see [`super::scalar::dot_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], q: &[i8], sc: &[f32]) -> f32 {
    const BB: usize = 34;
    let nb = row.len() / BB;
    check_acts(nb, q, sc);
    let (rp, qp, sp) = (row.as_ptr(), q.as_ptr(), sc.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let step = |b: usize, acc: &mut __m256| {
        // SAFETY: `b < nb`: the block's bytes `34 b .. 34 b + 34` are in `row`, its 32 values in `q` and
        // its scale in `sc` (checked above); all loads are unaligned loads.
        let (d, wq, x, dx) = unsafe {
            (
                rp.add(BB * b).cast::<u16>().read_unaligned(),
                _mm256_loadu_si256(rp.add(BB * b + 2).cast()),
                _mm256_loadu_si256(qp.add(QK * b).cast()),
                sp.add(2 * b).read(),
            )
        };
        let p = dot_u8_i8(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(x, wq));
        *acc = _mm256_fmadd_ps(p, _mm256_set1_ps(h2f(d) * dx), *acc);
    };
    two_lanes(nb, |b, l| step(b, &mut acc[l]));
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Float row times one token, accumulated in f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let eb = dtype.block_bytes();
    assert_eq!(row.len(), n * eb, "float row of {} bytes for {n} values", row.len());
    let (rp, xp) = (row.as_ptr(), x.as_ptr());
    // Loads 8 weights at element `i` as f32.
    let load = |i: usize| -> __m256 {
        // SAFETY: callers pass `i + 8 <= n`, so `row` holds elements `i .. i + 8` (`eb` bytes each).
        unsafe {
            match dtype {
                DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(rp.add(2 * i).cast())),
                DType::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                    rp.add(2 * i).cast(),
                )))),
                _ => _mm256_loadu_ps(rp.add(4 * i).cast()),
            }
        }
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `i + 8 k + 8 <= n = x.len()`.
            let xv = unsafe { _mm256_loadu_ps(xp.add(i + 8 * k)) };
            *a = _mm256_fmadd_ps(load(i + 8 * k), xv, *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n = x.len()`.
        let xv = unsafe { _mm256_loadu_ps(xp.add(i)) };
        acc[0] = _mm256_fmadd_ps(load(i), xv, acc[0]);
        i += 8;
    }
    let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    if i < n {
        sum += super::scalar::dot_float(dtype, &row[i * eb..], &x[i..]);
    }
    sum
}

/// Rows per register tile of the batched float kernel.
const FR: usize = 3;
/// Tokens per register tile of the batched float kernel.
const FT: usize = 4;

/// Elements `k .. k + 8` of the float row at `p` (of `kind`, see [`float_kind`]) as f32.
///
/// # Safety
/// The row holds elements `k .. k + 8`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_float8(kind: u8, p: *const u8, k: usize) -> __m256 {
    let p = p.wrapping_add(float_kind::bytes(kind) * k);
    // SAFETY: the caller guarantees that the 8 elements at `p` are readable; unaligned loads.
    unsafe {
        match kind {
            float_kind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            // A bf16 is the high half of the f32 of the same value.
            float_kind::BF16 => {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
            }
            _ => _mm256_loadu_ps(p.cast()),
        }
    }
}

/// One register tile of the float kernel: the rows `wr` (of [`float_kind`] `KIND`) times the `NT` tokens
/// `x`, 8 elements per step: each row's 8 weights are converted once and serve `NT` tokens, each token's 8
/// values serve [`FR`] rows. The last `n % 8` elements are copied into zero-padded buffers and take one more
/// step. Each accumulator sums its own lanes, so a pair's result does not depend on the tile it is computed in.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn float_micro<const NT: usize, const KIND: u8>(wr: [&[u8]; FR], x: [&[f32]; NT]) -> [[f32; FT]; FR] {
    let n = x[0].len();
    let eb = float_kind::bytes(KIND);
    assert!(wr.iter().all(|r| r.len() == n * eb) && x.iter().all(|x| x.len() == n));
    let mut acc = [[_mm256_setzero_ps(); NT]; FR];
    // Elements `k .. k + 8` of rows `wp` and tokens `xp`, which hold them.
    let mut step = |wp: [*const u8; FR], xp: [*const f32; NT], k: usize| {
        // SAFETY: callers pass pointers to rows and tokens that hold elements `k .. k + 8`.
        let wv: [__m256; FR] = std::array::from_fn(|i| unsafe { load_float8(KIND, wp[i], k) });
        for j in 0..NT {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(xp[j].add(k)) };
            for i in 0..FR {
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    };
    let wp: [*const u8; FR] = std::array::from_fn(|i| wr[i].as_ptr());
    let xp: [*const f32; NT] = std::array::from_fn(|j| x[j].as_ptr());
    let mut k = 0;
    while k + 8 <= n {
        // `k + 8 <= n`, and every row holds `n` elements and every token `n` values (asserted above).
        step(wp, xp, k);
        k += 8;
    }
    if k < n {
        let mut wt = [[0u8; 32]; FR];
        let mut xt = [[0.0f32; 8]; NT];
        for i in 0..FR {
            wt[i][..(n - k) * eb].copy_from_slice(&wr[i][k * eb..]);
        }
        for j in 0..NT {
            xt[j][..n - k].copy_from_slice(&x[j][k..]);
        }
        // The buffers hold 8 elements each.
        step(std::array::from_fn(|i| wt[i].as_ptr()), std::array::from_fn(|j| xt[j].as_ptr()), 0);
    }
    reduce_tile(&acc, |v| hsum(v))
}

/// Unpacks one quantized row into the scratch layout of [`micro`]: `u` gets `QK` unsigned bytes per block
/// (nibbles, or Q8_0 magnitudes), `sg` the signed Q8_0 bytes, `dw` one scale per block, `mw` `(0, m)` per
/// block with `m` the coefficient of the activation block sum (`m_w`, `-8 d_w`, or 0 for Q8_0).
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_row(dtype: DType, row: &[u8], u: &mut [u8], sg: &mut [u8], dw: &mut [f32], mw: &mut [f32]) {
    let bb = dtype.block_bytes();
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let d = h2f(u16::from_le_bytes([blk[0], blk[1]]));
        dw[b] = d;
        let ub = &mut u[b * QK..(b + 1) * QK];
        match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let off = if dtype == DType::Q4_1 { 4 } else { 2 };
                let qs = &blk[off..off + 16];
                // SAFETY: `qs` is 16 bytes and `ub` 32 bytes; unaligned load and store.
                unsafe { _mm256_storeu_si256(ub.as_mut_ptr().cast(), nibbles(_mm_loadu_si128(qs.as_ptr().cast()))) };
                mw[2 * b + 1] = if dtype == DType::Q4_1 { h2f(u16::from_le_bytes([blk[2], blk[3]])) } else { -8.0 * d };
            }
            _ => {
                let qs = &blk[2..34];
                // SAFETY: `qs` is 32 bytes, `ub` and the `sg` block 32 bytes; unaligned loads and stores.
                unsafe {
                    let v = _mm256_loadu_si256(qs.as_ptr().cast());
                    _mm256_storeu_si256(ub.as_mut_ptr().cast(), _mm256_sign_epi8(v, v));
                    _mm256_storeu_si256(sg[b * QK..(b + 1) * QK].as_mut_ptr().cast(), v);
                }
                mw[2 * b + 1] = 0.0;
            }
        }
    }
}

/// Quantized rows times many tokens: tiles of [`R`] rows are unpacked once and run against all tokens of
/// `toks`, [`T`] at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn batched_quantized(w: &QMatrix, acts: &Acts, rows: Range<usize>, toks: Range<usize>, put: &mut impl Put) {
    let nb = w.cols / QK;
    let nbp = padded_blocks(w.cols);
    let mut s = take_scratch();
    reset(&mut s.u, R * nb * QK, 0);
    reset(&mut s.sg, R * nb * QK, 0);
    reset(&mut s.dw, R * nb, 0.0);
    reset(&mut s.mw, R * nbp * 2, 0.0);
    let signed = w.dtype == DType::Q8_0;
    let unpack = |s: &mut Scratch, i: usize, row: Option<usize>| {
        let (u, sg) = (&mut s.u[i * nb * QK..(i + 1) * nb * QK], &mut s.sg[i * nb * QK..(i + 1) * nb * QK]);
        let (dw, mw) = (&mut s.dw[i * nb..(i + 1) * nb], &mut s.mw[i * nbp * 2..(i + 1) * nbp * 2]);
        match row {
            Some(r) => unpack_row(w.dtype, w.row(r), u, sg, dw, mw),
            None => {
                u.fill(0);
                sg.fill(0);
                dw.fill(0.0);
                mw.fill(0.0);
            }
        }
    };
    let tile = |s: &Scratch, t0: usize, nt: usize| match (signed, nt) {
        (false, 4) => micro::<4, false>(s, nb, acts, t0),
        (false, 3) => micro::<3, false>(s, nb, acts, t0),
        (false, 2) => micro::<2, false>(s, nb, acts, t0),
        (false, _) => micro::<1, false>(s, nb, acts, t0),
        (true, 4) => micro::<4, true>(s, nb, acts, t0),
        (true, 3) => micro::<3, true>(s, nb, acts, t0),
        (true, 2) => micro::<2, true>(s, nb, acts, t0),
        (true, _) => micro::<1, true>(s, nb, acts, t0),
    };
    for_each_tile::<_, R, T>(&mut s, rows, toks, unpack, tile, put);
    give_scratch(s);
}

/// One register tile: the [`R`] unpacked rows of `s` times tokens `t0 .. t0 + NT`. `SIGNED` (Q8_0) applies
/// the weights' signs to the activations; otherwise the `mw` offset terms are added.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn micro<const NT: usize, const SIGNED: bool>(s: &Scratch, nb: usize, acts: &Acts, t0: usize) -> [[f32; T]; R] {
    let q: [&[i8]; NT] = std::array::from_fn(|j| acts.q_tok(t0 + j));
    let sc: [&[f32]; NT] = std::array::from_fn(|j| acts.sc_tok(t0 + j));
    let nbp = sc[0].len() / 2;
    assert!(q.iter().all(|q| q.len() >= nb * QK) && sc.iter().all(|s| s.len() == nbp * 2));
    assert!(s.u.len() >= R * nb * QK && s.sg.len() >= R * nb * QK && s.dw.len() >= R * nb);
    assert!(s.mw.len() >= R * nbp * 2 && nbp.is_multiple_of(4));
    let qp: [*const i8; NT] = std::array::from_fn(|j| q[j].as_ptr());
    let sp: [*const f32; NT] = std::array::from_fn(|j| sc[j].as_ptr());
    let (up, gp, dp, mp) = (s.u.as_ptr(), s.sg.as_ptr(), s.dw.as_ptr(), s.mw.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); NT]; R];
    for b in 0..nb {
        // SAFETY (all loads of this loop): `b < nb`, row `i < R` of the scratch holds `nb` blocks of `QK`
        // bytes and `nb` scales, each token `nb` blocks of `QK` values and `nbp >= nb` scale pairs
        // (asserted above); unaligned loads.
        let wv: [__m256i; R] = std::array::from_fn(|i| unsafe { _mm256_loadu_si256(up.add((i * nb + b) * QK).cast()) });
        let dwv: [__m256; R] = std::array::from_fn(|i| unsafe { _mm256_set1_ps(dp.add(i * nb + b).read()) });
        for j in 0..NT {
            // SAFETY: as above.
            let (x, dx) =
                unsafe { (_mm256_loadu_si256(qp[j].add(b * QK).cast()), _mm256_set1_ps(sp[j].add(2 * b).read())) };
            for i in 0..R {
                let xs = if SIGNED {
                    // SAFETY: as above.
                    _mm256_sign_epi8(x, unsafe { _mm256_loadu_si256(gp.add((i * nb + b) * QK).cast()) })
                } else {
                    x
                };
                acc[i][j] = _mm256_fmadd_ps(dot_u8_i8(wv[i], xs), _mm256_mul_ps(dwv[i], dx), acc[i][j]);
            }
        }
    }
    micro_tail!(
        acc, sp, mp, nbp,
        offsets: !SIGNED, lanes: 8, load: _mm256_loadu_ps, fmadd: _mm256_fmadd_ps, sum: hsum,
    )
}
