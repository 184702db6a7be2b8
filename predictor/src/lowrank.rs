//! The low-rank predictor of one layer, `logits = (x A) B + bias` with `A: d x r`, `B: r x n`: the trained
//! f32 form ([`LowRank`]) and the compact form kept in files and in DRAM ([`CompactLowRank`]: f16 matrices,
//! f32 bias), which evaluates one token with two matrix-vector products and no allocation.

use half::f16;
use half::slice::HalfFloatSliceExt;
use ndarray::{Array1, Array2, ArrayView2, Axis};

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

    /// The compact form: matrices rounded to f16 (round to nearest even), bias kept in f32.
    pub fn to_compact(&self) -> CompactLowRank {
        let to_f16 = |m: &Array2<f32>| m.iter().map(|&v| f16::from_f32(v)).collect::<Vec<f16>>();
        CompactLowRank {
            d: self.d_model(),
            r: self.rank(),
            n: self.d_ffn(),
            a: to_f16(&self.a),
            b: to_f16(&self.b),
            bias: self.bias.to_vec(),
        }
    }
}

/// One layer's predictor as stored and kept in DRAM: `A` (`d x r`, row-major) and `B` (`r x n`, row-major) in
/// f16, the bias in f32. f16 halves the DRAM a predictor takes next to f32; its 11-bit significand moves a
/// logit by about 1e-3 of its size, far below the margins a decision threshold is chosen with (the
/// thresholds and reported metrics are computed on these rounded weights, not on the f32 ones).
#[derive(Debug, Clone, PartialEq)]
pub struct CompactLowRank {
    d: usize,
    r: usize,
    n: usize,
    a: Vec<f16>,
    b: Vec<f16>,
    bias: Vec<f32>,
}

/// Reusable buffers for [`CompactLowRank::logits_one`].
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    h: Vec<f32>,
    row: Vec<f32>,
}

impl CompactLowRank {
    /// A compact predictor from its parts; the lengths must be `d * r`, `r * n` and `n`.
    pub fn from_parts((d, r, n): (usize, usize, usize), a: Vec<f16>, b: Vec<f16>, bias: Vec<f32>) -> Result<Self> {
        if a.len() != d * r || b.len() != r * n || bias.len() != n {
            return Err(Error::Invalid(format!(
                "compact low-rank of {d} x {r} x {n} given {}, {} and {} values",
                a.len(),
                b.len(),
                bias.len()
            )));
        }
        Ok(CompactLowRank { d, r, n, a, b, bias })
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
    /// `A`, `d x r` row-major.
    pub fn a(&self) -> &[f16] {
        &self.a
    }
    /// `B`, `r x n` row-major.
    pub fn b(&self) -> &[f16] {
        &self.b
    }
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Bytes of weights this layer keeps in DRAM.
    pub fn bytes(&self) -> usize {
        (self.a.len() + self.b.len()) * 2 + self.bias.len() * 4
    }

    /// The same weights widened to f32 (exactly: every f16 is an f32).
    pub fn to_f32(&self) -> LowRank {
        let widen = |v: &[f16], rows: usize, cols: usize| {
            let mut out = vec![0.0f32; v.len()];
            v.convert_to_f32_slice(&mut out);
            Array2::from_shape_vec((rows, cols), out).expect("lengths checked at construction")
        };
        LowRank {
            a: widen(&self.a, self.d, self.r),
            b: widen(&self.b, self.r, self.n),
            bias: Array1::from(self.bias.clone()),
        }
    }

    /// Logits of one token `x` (`d_model`) into `z` (resized to `d_ffn`), with buffers from `s`; allocates only
    /// the first time a buffer grows.
    pub fn logits_one(&self, x: &[f32], z: &mut Vec<f32>, s: &mut Scratch) {
        debug_assert_eq!(x.len(), self.d);
        let (r, n) = (self.r, self.n);
        s.h.clear();
        s.h.resize(r, 0.0);
        s.row.resize(r.max(n), 0.0);
        // h = x A: one row of A per input dimension.
        let row = &mut s.row[..r];
        for (&xi, a_row) in x.iter().zip(self.a.chunks_exact(r)) {
            if xi != 0.0 {
                a_row.convert_to_f32_slice(row);
                axpy(xi, row, &mut s.h);
            }
        }
        // z = h B + bias: one row of B per rank dimension.
        z.clear();
        z.extend_from_slice(&self.bias);
        let row = &mut s.row[..n];
        for (&hk, b_row) in s.h.iter().zip(self.b.chunks_exact(n)) {
            b_row.convert_to_f32_slice(row);
            axpy(hk, row, z);
        }
    }
}

#[inline]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
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
