//! The low-rank predictor of one layer, `logits = (x A) B + bias` with `A: d x r`, `B: r x n`: the trained
//! f32 form ([`LowRank`]) and the compact form kept in files and in DRAM ([`CompactLowRank`]: f16 matrices,
//! f32 bias), which evaluates one token with two of the engine's f16 matrix-vector products and no allocation.

use half::f16;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use spike_flash::engine::kernels::{self, Acts, QMatrix};
use spike_flash::model::quant::DType;

use crate::{Error, Result};

/// Rank of every layer's predictor: one rank for all layers, and optionally another for the last few (the
/// paper's pattern: 128 everywhere, 1024 for the last 4 layers of OPT 6.7B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankSpec {
    pub rank: usize,
    /// `(k, rank)`: the last `k` layers get this rank instead.
    pub last: Option<(usize, usize)>,
}

impl RankSpec {
    /// One rank for every layer.
    pub fn uniform(rank: usize) -> RankSpec {
        RankSpec { rank, last: None }
    }

    /// Parses the `K:RANK` of `--rank-last`.
    pub fn parse_last(s: &str) -> Result<(usize, usize)> {
        let bad = || Error::Invalid(format!("`{s}` is not K:RANK (the last K layers get rank RANK), e.g. 4:256"));
        let (k, r) = s.split_once(':').ok_or_else(bad)?;
        let k = k.trim().parse::<usize>().map_err(|_| bad())?;
        let r = r.trim().parse::<usize>().map_err(|_| bad())?;
        Ok((k, r))
    }

    /// The rank of `layer` in a model of `n_layers`.
    pub fn rank(&self, layer: usize, n_layers: usize) -> usize {
        match self.last {
            Some((k, r)) if layer + k >= n_layers => r,
            _ => self.rank,
        }
    }

    /// Checks every rank is at least 1 and at most `d_ffn` (a higher rank than the output width adds nothing).
    pub fn validate(&self, d_ffn: usize) -> Result<()> {
        for r in std::iter::once(self.rank).chain(self.last.map(|(_, r)| r)) {
            if r == 0 || r > d_ffn {
                return Err(Error::Invalid(format!("rank {r} is outside 1..={d_ffn} (the FFN width)")));
            }
        }
        Ok(())
    }
}

/// One layer's predictor in f32, as training produces it: `logits = (x A) B + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRank {
    /// `d_model x rank`.
    pub a: Array2<f32>,
    /// `rank x d_ffn`.
    pub b: Array2<f32>,
    /// `d_ffn`.
    pub bias: Array1<f32>,
}

impl LowRank {
    /// Checks the shapes agree.
    pub fn new(a: Array2<f32>, b: Array2<f32>, bias: Array1<f32>) -> Result<LowRank> {
        if a.ncols() != b.nrows() || b.ncols() != bias.len() {
            return Err(Error::Invalid(format!(
                "low-rank shapes do not chain: A {:?}, B {:?}, bias {}",
                a.dim(),
                b.dim(),
                bias.len()
            )));
        }
        Ok(LowRank { a, b, bias })
    }

    pub fn d_model(&self) -> usize {
        self.a.nrows()
    }
    pub fn rank(&self) -> usize {
        self.a.ncols()
    }
    pub fn d_ffn(&self) -> usize {
        self.b.ncols()
    }

    /// Logits of a batch `x` (`tokens x d_model`): `tokens x d_ffn`.
    pub fn logits(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut z = x.dot(&self.a).dot(&self.b);
        z += &self.bias.view().insert_axis(Axis(0));
        z
    }
}

/// One layer's predictor as stored and kept in DRAM: `Aᵀ` (`r x d`, row `k` = the weights of rank unit `k`) and
/// `Bᵀ` (`n x r`, row `j` = neuron `j`'s weights) as little-endian f16, the bias in f32. f16 halves the DRAM a
/// predictor takes next to f32; its 11-bit significand moves a logit by about 1e-3 of its size, far below the
/// margins a decision threshold is chosen with (thresholds and reported metrics are computed on these rounded
/// weights, not on the f32 ones). The matrices are in the engine's row layout, so one token's logits are two
/// calls of its f16 matrix-vector kernels (AVX-512 / AVX2 with F16C, or scalar).
#[derive(Debug, Clone, PartialEq)]
pub struct CompactLowRank {
    d: usize,
    r: usize,
    n: usize,
    at: Vec<u8>,
    bt: Vec<u8>,
    bias: Vec<f32>,
}

/// Reusable buffers for [`CompactLowRank::logits_one`].
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    x: Acts,
    h: Vec<f32>,
    hacts: Acts,
}

fn f16_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| f16::from_f32(x).to_bits().to_le_bytes()).collect()
}

fn widen(bytes: &[u8], rows: usize, cols: usize) -> Array2<f32> {
    let v: Vec<f32> =
        bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect();
    Array2::from_shape_vec((rows, cols), v).expect("lengths checked at construction")
}

impl LowRank {
    /// The compact form: matrices transposed and rounded to f16 (round to nearest even), bias kept in f32.
    pub fn to_compact(&self) -> CompactLowRank {
        CompactLowRank {
            d: self.d_model(),
            r: self.rank(),
            n: self.d_ffn(),
            at: f16_bytes(self.a.t().iter().copied()),
            bt: f16_bytes(self.b.t().iter().copied()),
            bias: self.bias.to_vec(),
        }
    }
}

impl CompactLowRank {
    /// A compact predictor from its parts: `at` is `r x d` and `bt` is `n x r` little-endian f16 values,
    /// `bias` has `n` values.
    pub fn from_parts((d, r, n): (usize, usize, usize), at: Vec<u8>, bt: Vec<u8>, bias: Vec<f32>) -> Result<Self> {
        if at.len() != 2 * d * r || bt.len() != 2 * r * n || bias.len() != n {
            return Err(Error::Invalid(format!(
                "compact low-rank of {d} x {r} x {n} given {} and {} bytes of f16 and {} biases",
                at.len(),
                bt.len(),
                bias.len()
            )));
        }
        Ok(CompactLowRank { d, r, n, at, bt, bias })
    }

    pub fn d_model(&self) -> usize {
        self.d
    }
    pub fn rank(&self) -> usize {
        self.r
    }
    pub fn d_ffn(&self) -> usize {
        self.n
    }
    /// `Aᵀ`, `r x d`, little-endian f16.
    pub fn at_bytes(&self) -> &[u8] {
        &self.at
    }
    /// `Bᵀ`, `n x r`, little-endian f16.
    pub fn bt_bytes(&self) -> &[u8] {
        &self.bt
    }
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Bytes of weights this layer keeps in DRAM.
    pub fn bytes(&self) -> usize {
        self.at.len() + self.bt.len() + self.bias.len() * 4
    }

    /// The same weights widened to f32 (exactly: every f16 is an f32).
    pub fn to_f32(&self) -> LowRank {
        LowRank {
            a: widen(&self.at, self.r, self.d).reversed_axes().as_standard_layout().into_owned(),
            b: widen(&self.bt, self.n, self.r).reversed_axes().as_standard_layout().into_owned(),
            bias: Array1::from(self.bias.clone()),
        }
    }

    /// Logits of one token `x` (`d_model`) into `z` (resized to `d_ffn`), with buffers from `s`; allocates only
    /// the first time a buffer grows. Single-threaded: callers parallelize over tokens.
    pub fn logits_one(&self, x: &[f32], z: &mut Vec<f32>, s: &mut Scratch) {
        debug_assert_eq!(x.len(), self.d);
        let (d, r, n) = (self.d, self.r, self.n);
        let isa = kernels::isa();
        let at = QMatrix::new(DType::F16, r, d, &self.at).expect("from_parts checked the sizes of A^T");
        let bt = QMatrix::new(DType::F16, n, r, &self.bt).expect("from_parts checked the sizes of B^T");
        s.x.prepare(DType::F16, x, 1, d);
        s.h.resize(r, 0.0);
        kernels::matmul_with(isa, &at, &s.x, &mut s.h);
        s.hacts.prepare(DType::F16, &s.h, 1, r);
        z.resize(n, 0.0);
        kernels::matmul_with(isa, &bt, &s.hacts, z);
        for (zj, b) in z.iter_mut().zip(&self.bias) {
            *zj += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_spec_gives_the_last_layers_their_rank() {
        let s = RankSpec { rank: 64, last: Some(RankSpec::parse_last("4:256").unwrap()) };
        let ranks: Vec<usize> = (0..30).map(|l| s.rank(l, 30)).collect();
        assert!(ranks[..26].iter().all(|&r| r == 64));
        assert!(ranks[26..].iter().all(|&r| r == 256));
        assert!(RankSpec::parse_last("4").is_err());
        assert!(RankSpec::parse_last("x:2").is_err());
        assert!(RankSpec::uniform(0).validate(10).is_err());
        assert!(RankSpec::uniform(11).validate(10).is_err());
        assert!(RankSpec::uniform(10).validate(10).is_ok());
    }

    #[test]
    fn one_token_logits_equal_the_batched_ones() {
        let (d, r, n) = (7, 3, 11);
        let a = Array2::from_shape_fn((d, r), |(i, j)| ((i * 5 + j * 3) % 7) as f32 * 0.25 - 0.7);
        let b = Array2::from_shape_fn((r, n), |(i, j)| ((i * 2 + j * 7) % 5) as f32 * 0.5 - 1.0);
        let bias = Array1::from_shape_fn(n, |j| j as f32 * 0.1 - 0.5);
        let p = LowRank::new(a, b, bias).unwrap().to_compact();
        let x = Array2::from_shape_fn((4, d), |(t, i)| ((t * 3 + i) % 4) as f32 - 1.5);
        let batched = p.to_f32().logits(x.view());
        let (mut z, mut s) = (Vec::new(), Scratch::default());
        for t in 0..4 {
            p.logits_one(x.row(t).as_slice().unwrap(), &mut z, &mut s);
            for j in 0..n {
                assert!((z[j] - batched[[t, j]]).abs() < 1e-4, "token {t} neuron {j}: {} vs {}", z[j], batched[[t, j]]);
            }
        }
        assert_eq!(p.bytes(), (d * r + r * n) * 2 + n * 4);
    }
}
