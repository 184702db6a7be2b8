//! Kernel tests: every SIMD kernel against the scalar reference, the scalar reference against the exact
//! dequantizing reference, threading against no threading, on seeded random matrices.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Seed of every random matrix and activation in this file.
const SEED: u64 = 0x5EED_4B45_524E;

const QUANTIZED: [DType; 3] = [DType::Q4_0, DType::Q4_1, DType::Q8_0];
const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// (rows, cols): the model's widths, single blocks, and row counts that are not a multiple of any tile; the
/// block counts (1, 2, 3, 14, 18, 48) leave every group size of the lane layout and an odd last block.
const SHAPES: [(usize, usize); 8] = [(1, 32), (5, 64), (3, 96), (7, 448), (67, 576), (13, 1536), (130, 576), (9, 1536)];
const TOKENS: [usize; 4] = [1, 3, 7, 64];

/// Tolerance of a SIMD kernel against the scalar one, relative to `sum |w_i x_i|`: only the f32 summation
/// order (and, for some quantized paths, where an integer offset is added) differs.
const SIMD_TOL: f64 = 1e-5;

fn f16_le(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// One random row of `dtype`: random nibbles / bytes with scales of the sizes real models have.
fn random_row(rng: &mut StdRng, dtype: DType, cols: usize) -> Vec<u8> {
    let mut out = Vec::new();
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => {
            for _ in 0..cols / QK {
                let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
                match dtype {
                    DType::Q4_0 => out.extend_from_slice(&f16_le(sign * rng.gen_range(0.002..0.05))),
                    DType::Q4_1 => {
                        let d: f32 = rng.gen_range(0.002..0.05);
                        out.extend_from_slice(&f16_le(d));
                        out.extend_from_slice(&f16_le(-d * rng.gen_range(3.0..12.0)));
                    }
                    _ => out.extend_from_slice(&f16_le(sign * rng.gen_range(1e-4..5e-3))),
                }
                let nq = if dtype == DType::Q8_0 { QK } else { QK / 2 };
                out.extend((0..nq).map(|_| rng.gen::<u8>()));
            }
        }
        DType::F32 | DType::F16 | DType::BF16 => {
            for _ in 0..cols {
                let v: f32 = rng.gen_range(-0.2..0.2);
                match dtype {
                    DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                    DType::F16 => out.extend_from_slice(&f16_le(v)),
                    _ => out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
                }
            }
        }
    }
    out
}

fn random_matrix(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    (0..rows).flat_map(|_| random_row(rng, dtype, cols)).collect()
}

/// Activations with a random scale per block, some all-zero blocks and some outliers.
fn random_acts(rng: &mut StdRng, n: usize, cols: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n * cols);
    for _ in 0..n * cols / QK.min(cols) {
        let len = QK.min(cols);
        let scale = if rng.gen_bool(0.05) { 0.0 } else { 10f32.powf(rng.gen_range(-2.0..1.0)) };
        for _ in 0..len {
            let outlier = if rng.gen_bool(0.02) { 20.0 } else { 1.0 };
            x.push(scale * outlier * rng.gen_range(-1.0f32..1.0));
        }
    }
    x.resize(n * cols, 0.5);
    x
}

/// `sum_i |w_i x_i|`, the scale the tolerances are relative to.
fn magnitude(dtype: DType, row: &[u8], x: &[f32]) -> f64 {
    let mut w = vec![0.0f32; x.len()];
    dequantize_row(dtype, row, &mut w);
    w.iter().zip(x).map(|(&w, &x)| f64::from(w).abs() * f64::from(x).abs()).sum()
}

/// The provable bound on the error activation quantization adds to one dot product: each activation
/// moves by at most half its block's step `d = amax / 127` (plus an ulp of slack).
fn quantization_bound(dtype: DType, row: &[u8], x: &[f32]) -> f64 {
    let mut w = vec![0.0f32; x.len()];
    dequantize_row(dtype, row, &mut w);
    w.chunks(QK)
        .zip(x.chunks(QK))
        .map(|(wb, xb)| {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let half_step = f64::from(amax) / 127.0 / 2.0 * (1.0 + 1e-6);
            half_step * wb.iter().map(|w| f64::from(*w).abs()).sum::<f64>()
        })
        .sum()
}

/// The SIMD instruction sets this CPU has; each one it lacks is named on stderr, so that a test that skips its
/// kernels says why.
fn available_simd() -> Vec<Isa> {
    let has = |i: &Isa| {
        let ok = i.is_available();
        if !ok {
            eprintln!("skipped the {i} kernels: this CPU lacks their instructions");
        }
        ok
    };
    Isa::ALL.into_iter().filter(|i| *i != Isa::Scalar).filter(has).collect()
}

/// The scalar reference and [`available_simd`].
fn available_isas() -> Vec<Isa> {
    std::iter::once(Isa::Scalar).chain(available_simd()).collect()
}

#[test]
fn qmatrix_checks_its_shape() {
    let data = vec![0u8; 2 * 40];
    let m = QMatrix::new(DType::Q4_1, 2, 64, &data).expect("2 rows of 2 Q4_1 blocks are 80 bytes");
    assert_eq!(m.row_bytes(), 40);
    assert_eq!(m.row(1).len(), 40);
    assert!(matches!(QMatrix::new(DType::Q4_1, 2, 48, &data), Err(Error::Invalid(_))));
    assert!(matches!(QMatrix::new(DType::Q4_1, 3, 64, &data), Err(Error::Invalid(_))));
    assert!(matches!(QMatrix::new(DType::Q8_0, usize::MAX, 32, &data), Err(Error::Invalid(_))));
    assert!(QMatrix::new(DType::F16, 1, 40, &data).is_ok());
}

#[test]
fn dequantize_known_blocks() {
    // Q4_1: d = 0.5, m = -1, qs[0] = 0x21 (elements 0 and 16 are 1 and 2), qs[15] = 0xF0.
    let mut blk = Vec::new();
    blk.extend_from_slice(&f16_le(0.5));
    blk.extend_from_slice(&f16_le(-1.0));
    let mut qs = [0u8; 16];
    qs[0] = 0x21;
    qs[15] = 0xF0;
    blk.extend_from_slice(&qs);
    let mut out = [0.0f32; 32];
    dequantize_row(DType::Q4_1, &blk, &mut out);
    assert_eq!((out[0], out[16], out[1], out[15], out[31]), (-0.5, 0.0, -1.0, -1.0, 6.5));

    // Q4_0: d = 2, qs[0] = 0x0F: element 0 is (15 - 8) * 2, element 16 is (0 - 8) * 2.
    let mut blk = f16_le(2.0).to_vec();
    blk.push(0x0F);
    blk.extend_from_slice(&[0x88; 15]);
    dequantize_row(DType::Q4_0, &blk, &mut out);
    assert_eq!((out[0], out[16], out[1]), (14.0, -16.0, 0.0));

    // Q8_0: d = 0.25, q = -128, 127, 0, ...
    let mut blk = f16_le(0.25).to_vec();
    blk.extend_from_slice(&[0x80, 0x7F]);
    blk.extend_from_slice(&[0; 30]);
    dequantize_row(DType::Q8_0, &blk, &mut out);
    assert_eq!((out[0], out[1], out[2]), (-32.0, 31.75, 0.0));

    let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
    assert_eq!(dot_reference_f32(DType::Q8_0, &blk, &x), 31.75);
}

#[test]
fn activations_quantize_like_llama_cpp() {
    let mut x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) * 0.25).collect();
    x.extend([0.0f32; 32]);
    let mut acts = Acts::new();
    acts.prepare(DType::Q4_1, &x, 1, 64);
    let amax = 21.0 * 0.25;
    let d = amax / 127.0;
    let q = acts.q_tok(0);
    let sc = acts.sc_tok(0);
    assert_eq!(sc[0], d);
    for (i, &xi) in x[..32].iter().enumerate() {
        assert_eq!(q[i], (xi * (127.0 / amax)).round_ties_even() as i8, "element {i}");
    }
    assert_eq!(q[31], 127);
    let sum: i32 = q[..32].iter().map(|&v| i32::from(v)).sum();
    assert_eq!(sc[1], d * sum as f32);
    // The all-zero block quantizes to zero with a zero scale, and the padding is zero.
    assert!(q[32..].iter().all(|&v| v == 0));
    assert!(sc[2..].iter().all(|&v| v == 0.0));
}

#[test]
fn activations_reuse_their_buffers() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let x = random_acts(&mut rng, 7, 576);
    let mut acts = Acts::new();
    acts.prepare(DType::Q4_1, &x, 7, 576);
    let (q, sc) = (acts.q.as_ptr(), acts.sc.as_ptr());
    acts.prepare(DType::Q8_0, &x[..576], 1, 576);
    acts.prepare(DType::Q4_1, &x, 7, 576);
    assert_eq!((q, sc), (acts.q.as_ptr(), acts.sc.as_ptr()));
    assert_eq!(acts.n(), 7);
}

#[test]
fn isa_names_parse() {
    for isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    assert_eq!(Isa::parse(" AVX512 "), Some(Isa::Avx512));
    assert_eq!(Isa::parse("neon"), None);
    assert!(Isa::Scalar.is_available());
    assert!(isa().is_available());
}

#[test]
fn plan_splits_rows_then_tokens() {
    assert_eq!(plan(576, 1, 1), (1, 1));
    assert_eq!(plan(576, 1, 2), (4, 1));
    assert_eq!(plan(192, 1, 2), (2, 1));
    assert_eq!(plan(100, 1, 2), (1, 1));
    assert_eq!(plan(49152, 1, 2), (4, 1));
    assert_eq!(plan(576, 128, 2), (4, 1));
    assert_eq!(plan(64, 128, 2), (1, 4));
    assert_eq!(plan(64, 20, 2), (1, 1));
    assert_eq!(plan(192, 128, 3), (3, 2));
}

/// Runs `f(dtype, rows, cols, n, weights, activations)` over every dtype in `dtypes`, shape and token count.
fn for_all_cases(dtypes: &[DType], mut f: impl FnMut(DType, usize, usize, usize, &[u8], &[f32])) {
    let mut rng = StdRng::seed_from_u64(SEED);
    for &dtype in dtypes {
        for (rows, cols) in SHAPES {
            for n in TOKENS {
                let w = random_matrix(&mut rng, dtype, rows, cols);
                let x = random_acts(&mut rng, n, cols);
                f(dtype, rows, cols, n, &w, &x);
            }
        }
    }
}

/// The matrix of `wdata` and its product with the `n` tokens of `x` (prepared into `acts`) by the scalar
/// kernels, token-major.
fn scalar_matmul<'a>(
    acts: &mut Acts,
    dtype: DType,
    rows: usize,
    cols: usize,
    n: usize,
    wdata: &'a [u8],
    x: &[f32],
) -> (QMatrix<'a>, Vec<f32>) {
    let w = QMatrix::new(dtype, rows, cols, wdata).expect("test matrix is well formed");
    acts.prepare(dtype, x, n, cols);
    let mut out = vec![0.0f32; n * rows];
    matmul_with(Isa::Scalar, &w, acts, &mut out);
    (w, out)
}

#[test]
fn simd_kernels_match_scalar() {
    let isas = available_simd();
    if isas.is_empty() {
        eprintln!("simd_kernels_match_scalar: no SIMD instruction set on this CPU, nothing to compare");
        return;
    }
    let all: Vec<DType> = QUANTIZED.into_iter().chain(FLOATS).collect();
    let mut acts = Acts::new();
    let mut worst = Worst::new();
    for_all_cases(&all, |dtype, rows, cols, n, wdata, x| {
        let (w, want) = scalar_matmul(&mut acts, dtype, rows, cols, n, wdata, x);
        assert_matches_scalar(&isas, &w, &acts, x, &want, &mut worst);
    });
    for ((isa, dtype), worst) in worst {
        eprintln!("{isa} {dtype}: worst error relative to sum |w x|: {worst:.2e}");
    }
}

/// The worst error relative to `sum |w x|` per instruction set and dtype.
type Worst = std::collections::BTreeMap<(Isa, &'static str), f64>;

/// Asserts that every kernel of `isas` gives `want` (the scalar kernels' product of `w` with the tokens of
/// `x`, prepared into `acts`) within [`SIMD_TOL`] of `sum |w x|` for every pair, and records the worst errors.
fn assert_matches_scalar(isas: &[Isa], w: &QMatrix, acts: &Acts, x: &[f32], want: &[f32], worst: &mut Worst) {
    let (dtype, rows, cols, n) = (w.dtype, w.rows, w.cols, acts.n());
    for &isa in isas {
        let mut got = vec![f32::NAN; n * rows];
        matmul_with(isa, w, acts, &mut got);
        for t in 0..n {
            for r in 0..rows {
                let mag = magnitude(dtype, w.row(r), &x[t * cols..(t + 1) * cols]);
                let (g, e) = (got[t * rows + r], want[t * rows + r]);
                let err = (f64::from(g) - f64::from(e)).abs();
                assert!(
                    err <= SIMD_TOL * mag,
                    "{isa} {dtype} {rows}x{cols} n={n} row {r} token {t}: {g} vs scalar {e} (|w x| = {mag})"
                );
                if mag > 0.0 {
                    let e = worst.entry((isa, dtype.name())).or_insert(0.0f64);
                    *e = e.max(err / mag);
                }
            }
        }
    }
}

/// Float matrices whose widths are not a multiple of any vector (8 or 16 lanes) and whose row and token
/// counts leave partial register tiles (AVX2: 3 rows x 4 tokens; AVX-512: 4 x 6), down to one element; the
/// last is several row chunks of `FLOAT_CHUNK_BYTES` in every dtype, the last chunk partial.
const FLOAT_SHAPES: [(usize, usize); 8] =
    [(1, 1), (7, 13), (5, 23), (11, 100), (13, 517), (4, 2048), (2, 8), (300, 2050)];
const FLOAT_TOKENS: [usize; 6] = [2, 5, 6, 7, 13, 25];

#[test]
fn batched_float_kernels_match_scalar_on_ragged_shapes() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 5);
    let mut acts = Acts::new();
    let mut isas = Vec::new();
    for isa in Isa::ALL.into_iter().filter(|i| *i != Isa::Scalar) {
        if isa.is_available() {
            isas.push(isa);
        } else {
            eprintln!("batched_float_kernels_match_scalar_on_ragged_shapes: skipped {isa}, which this CPU lacks");
        }
    }
    let mut worst = Worst::new();
    for dtype in FLOATS {
        for (rows, cols) in FLOAT_SHAPES {
            for n in FLOAT_TOKENS {
                let wdata = random_matrix(&mut rng, dtype, rows, cols);
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
                let (w, want) = scalar_matmul(&mut acts, dtype, rows, cols, n, &wdata, &x);
                assert_matches_scalar(&isas, &w, &acts, &x, &want, &mut worst);
            }
        }
    }
    for ((isa, dtype), worst) in worst {
        eprintln!("batched {isa} {dtype}: worst error relative to sum |w x|: {worst:.2e}");
    }
}

#[test]
fn quantized_kernels_stay_within_the_activation_quantization_bound() {
    let mut acts = Acts::new();
    let (mut sum_err, mut sum_bound) = (0.0f64, 0.0f64);
    for_all_cases(&QUANTIZED, |dtype, rows, cols, n, wdata, x| {
        let (w, got) = scalar_matmul(&mut acts, dtype, rows, cols, n, wdata, x);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let exact = dot_reference_f32(dtype, w.row(r), xt);
                let bound = quantization_bound(dtype, w.row(r), xt) + SIMD_TOL * magnitude(dtype, w.row(r), xt);
                let err = (f64::from(got[t * rows + r]) - f64::from(exact)).abs();
                assert!(err <= bound, "{dtype} {rows}x{cols} row {r} token {t}: error {err} over bound {bound}");
                sum_err += err;
                sum_bound += bound;
            }
        }
    });
    eprintln!("activation quantization: mean error is {:.3} of the bound", sum_err / sum_bound);
}

#[test]
fn float_kernels_match_the_exact_reference() {
    let mut acts = Acts::new();
    for_all_cases(&FLOATS, |dtype, rows, cols, n, wdata, x| {
        let (w, got) = scalar_matmul(&mut acts, dtype, rows, cols, n, wdata, x);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let exact = dot_reference_f32(dtype, w.row(r), xt);
                let err = (f64::from(got[t * rows + r]) - f64::from(exact)).abs();
                assert!(err <= SIMD_TOL * magnitude(dtype, w.row(r), xt), "{dtype} row {r} token {t}");
            }
        }
    });
}

#[test]
fn threaded_equals_unthreaded_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 1);
    let mut acts = Acts::new();
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a small rayon pool");
        for dtype in QUANTIZED.into_iter().chain(FLOATS) {
            for (rows, cols, n) in [(576, 64, 1), (200, 576, 3), (67, 64, 64), (300, 96, 40), (1536, 32, 1)] {
                let wdata = random_matrix(&mut rng, dtype, rows, cols);
                let x = random_acts(&mut rng, n, cols);
                let w = QMatrix::new(dtype, rows, cols, &wdata).expect("test matrix is well formed");
                acts.prepare(dtype, &x, n, cols);
                for isa in available_isas() {
                    let mut alone = vec![0.0f32; n * rows];
                    matmul_with(isa, &w, &acts, &mut alone);
                    let mut pooled = vec![f32::NAN; n * rows];
                    pool.install(|| matmul_isa(isa, &w, &acts, &mut pooled));
                    let same = alone.iter().zip(&pooled).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa} {dtype} {rows}x{cols} n={n} on {threads} threads");
                }
            }
        }
    }
}

#[test]
fn matvec_prepares_and_multiplies() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 2);
    let wdata = random_matrix(&mut rng, DType::Q4_1, 70, 64);
    let w = QMatrix::new(DType::Q4_1, 70, 64, &wdata).expect("test matrix is well formed");
    let x = random_acts(&mut rng, 2, 64);
    let mut a = vec![0.0f32; 140];
    matvec(&w, &x, &mut a);
    let mut acts = Acts::new();
    acts.prepare(DType::Q4_1, &x, 2, 64);
    let mut b = vec![0.0f32; 140];
    matmul(&w, &acts, &mut b);
    assert_eq!(a, b);
}

#[test]
#[should_panic(expected = "activations prepared for float weights")]
fn mismatched_activations_panic() {
    let data = vec![0u8; 20];
    let w = QMatrix::new(DType::Q4_1, 1, 32, &data).expect("one Q4_1 block");
    let mut acts = Acts::new();
    acts.prepare(DType::F32, &[0.0; 32], 1, 32);
    let mut out = [0.0f32; 1];
    matmul(&w, &acts, &mut out);
}

#[test]
fn dot_row_equals_one_token_matmul() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 3);
    let mut acts = Acts::new();
    let mut many = Acts::new();
    for dtype in QUANTIZED.into_iter().chain(FLOATS) {
        let (rows, cols) = (9, 96);
        let wdata = random_matrix(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &wdata).expect("test matrix is well formed");
        let x = random_acts(&mut rng, 3, cols);
        many.prepare(dtype, &x, 3, cols);
        for t in 0..3 {
            acts.prepare(dtype, &x[t * cols..(t + 1) * cols], 1, cols);
            for isa in available_isas() {
                let mut out = vec![0.0f32; rows];
                matmul_with(isa, &w, &acts, &mut out);
                for (r, &o) in out.iter().enumerate() {
                    // Token `t` of a prepared batch quantizes exactly as the token alone.
                    assert_eq!(dot_row(isa, dtype, w.row(r), &many, t).to_bits(), o.to_bits(), "{isa} {dtype} row {r}");
                }
            }
        }
    }
}

#[test]
fn every_quantizer_gives_the_same_bits() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 4);
    let mut x = random_acts(&mut rng, 5, 1536);
    // Ties of `x * id` at .5 must round to even in every quantizer: 2.5 / 127 * 127 is not exact, so
    // build them from the scale: in a block with amax 127, x * id = x exactly.
    x[..32].copy_from_slice(&std::array::from_fn::<f32, 32, _>(|i| if i == 0 { 127.0 } else { i as f32 - 15.5 }));
    let mut want = Acts::new();
    want.prepare_with(Isa::Scalar, DType::Q4_1, &x, 5, 1536);
    assert_eq!(&want.q_tok(0)[..4], &[127, -14, -14, -12]);
    for isa in available_simd() {
        let mut got = Acts::new();
        got.prepare_with(isa, DType::Q4_1, &x, 5, 1536);
        assert_eq!(got.q, want.q, "{isa}");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.sc), bits(&want.sc), "{isa}");
    }
}

/// `sum_j h_j col_j` for the columns of `records` (record `j` at `j * stride`, its column at `off`),
/// dequantized exactly and summed in f64, over the blocks `blocks`; and `sum_j |h_j col_j|`, per element.
fn column_sums_f64(
    dtype: DType,
    records: &[u8],
    stride: usize,
    off: usize,
    cols: usize,
    h: &[f32],
    blocks: Range<usize>,
) -> (Vec<f64>, Vec<f64>) {
    let bb = dtype.block_bytes();
    let mut sum = vec![0.0f64; cols];
    let mut mag = vec![0.0f64; cols];
    let mut w = vec![0.0f32; cols];
    for (j, &a) in h.iter().enumerate() {
        let col = &records[j * stride + off..j * stride + off + cols / dtype.block_len() * bb];
        dequantize_row(dtype, col, &mut w);
        for i in 0..cols {
            sum[i] += f64::from(a) * f64::from(w[i]);
            mag[i] += (f64::from(a) * f64::from(w[i])).abs();
        }
    }
    let bl = dtype.block_len();
    let r = blocks.start * bl..blocks.end * bl;
    (sum[r.clone()].to_vec(), mag[r].to_vec())
}

#[test]
fn column_sums_match_the_exact_reference_on_every_isa() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 0xC015);
    for dtype in [DType::Q8_0, DType::Q4_1, DType::Q4_0, DType::F32, DType::F16, DType::BF16] {
        for &(k, cols) in &[(1usize, 32usize), (7, 64), (67, 576), (300, 576), (5, 1536), (3, 200)] {
            if cols % dtype.block_len() != 0 {
                continue; // 200 values: a float row only
            }
            let col_bytes = cols / dtype.block_len() * dtype.block_bytes();
            // Records: 40 bytes of other data, the column, 12 more bytes.
            let (off, stride) = (40, 40 + col_bytes + 12);
            let mut records = vec![0u8; k * stride];
            for j in 0..k {
                let c = random_row(&mut rng, dtype, cols);
                records[j * stride + off..j * stride + off + col_bytes].copy_from_slice(&c);
                for b in &mut records[j * stride..j * stride + off] {
                    *b = rng.gen();
                }
            }
            let h: Vec<f32> =
                (0..k).map(|_| if rng.gen_bool(0.2) { 0.0 } else { rng.gen_range(-3.0f32..3.0) }).collect();
            let nb = cols / dtype.block_len();
            for blocks in [0..nb, nb / 2..nb, 0..nb.div_ceil(3)] {
                if blocks.is_empty() {
                    continue;
                }
                let (want, mag) = column_sums_f64(dtype, &records, stride, off, cols, &h, blocks.clone());
                for isa in available_isas() {
                    // Start from a non-zero output: the kernel adds to it.
                    let mut out: Vec<f32> =
                        (0..blocks.len() * dtype.block_len()).map(|i| (i % 7) as f32 * 0.25).collect();
                    add_scaled_columns(
                        isa,
                        Columns { dtype, data: &records, stride, offset: off },
                        &h,
                        blocks.clone(),
                        &mut out,
                    );
                    for (i, (&o, (&w, &m))) in out.iter().zip(want.iter().zip(&mag)).enumerate() {
                        let base = f64::from((i % 7) as f32 * 0.25);
                        let err = (f64::from(o) - base - w).abs();
                        assert!(
                            err <= 1e-5 * (m + base + 1e-3),
                            "{isa} {dtype} k {k} cols {cols} blocks {blocks:?} element {i}: {o} vs {}",
                            base + w
                        );
                    }
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "columns reach byte")]
fn column_sums_check_their_bounds() {
    let records = vec![0u8; 100];
    let mut out = vec![0.0f32; 32];
    let cols = Columns { dtype: DType::Q8_0, data: &records, stride: 80, offset: 40 };
    add_scaled_columns(Isa::Scalar, cols, &[1.0, 1.0], 0..1, &mut out);
}
