//! Small f32 operations of the forward pass: norms, rotary embeddings, softmax, activations. Written as plain
//! loops with several accumulators so the compiler vectorises them; the heavy products live in `kernels`.

use crate::model::config::RopeStyle;

/// `out = x / rms(x) * w`, with `rms(x) = sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), w.len());
    let ss: f32 = dot(x, x);
    let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// `out = (x - mean(x)) / sqrt(var(x) + eps) * w + b`, statistics in f64.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (((o, &xi), &wi), &bi) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = ((xi as f64 - mean) * inv) as f32 * wi + bi;
    }
}

/// GELU, exact: `x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))` (Hugging Face's `gelu`, PyTorch's default).
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Dot product with eight independent accumulators.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// In-place softmax; returns nothing for an empty slice.
pub fn softmax(x: &mut [f32]) {
    let Some(max) = x.iter().copied().reduce(f32::max) else { return };
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU, `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotary tables for a run of positions: `cos[t * half + i]`, `sin[t * half + i]` with `half = rope_dim / 2`.
#[derive(Debug, Default, Clone)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    /// Fills the tables for positions `start..start + n`; angle `p * base^(-2i / rope_dim)`, computed in f64.
    pub fn fill(&mut self, start: usize, n: usize, rope_dim: usize, base: f32) {
        let half = rope_dim / 2;
        self.half = half;
        self.cos.clear();
        self.sin.clear();
        let freqs: Vec<f64> = (0..half).map(|i| (base as f64).powf(-2.0 * i as f64 / rope_dim as f64)).collect();
        for t in 0..n {
            let p = (start + t) as f64;
            for &freq in &freqs {
                let (s, c) = (p * freq).sin_cos();
                self.cos.push(c as f32);
                self.sin.push(s as f32);
            }
        }
    }

    /// Rotates every head of token `t`'s vector `v` (`n_heads * head_dim` long).
    pub fn apply(&self, style: RopeStyle, t: usize, v: &mut [f32], head_dim: usize) {
        let half = self.half;
        let cos = &self.cos[t * half..(t + 1) * half];
        let sin = &self.sin[t * half..(t + 1) * half];
        for head in v.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * cos[i] - x1 * sin[i];
                        head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
                RopeStyle::Half => {
                    for i in 0..half {
                        let (x0, x1) = (head[i], head[i + half]);
                        head[i] = x0 * cos[i] - x1 * sin[i];
                        head[i + half] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, 2.0, -50.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[0] > x[3]);
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-3);
    }

    #[test]
    fn rope_styles_agree_after_permuting_dimensions() {
        // The interleaved layout of a head is the half layout with dimensions (i, i + h) moved to (2i, 2i + 1):
        // rotating either way and undoing the permutation must give the same vector.
        let head_dim = 8;
        let mut table = RopeTable::default();
        table.fill(5, 1, head_dim, 10_000.0);
        let half_layout: Vec<f32> = (0..head_dim).map(|i| (i as f32 + 1.0) * 0.3).collect();
        let mut inter: Vec<f32> = vec![0.0; head_dim];
        for i in 0..head_dim / 2 {
            inter[2 * i] = half_layout[i];
            inter[2 * i + 1] = half_layout[i + head_dim / 2];
        }
        let mut h = half_layout.clone();
        table.apply(RopeStyle::Half, 0, &mut h, head_dim);
        table.apply(RopeStyle::Interleaved, 0, &mut inter, head_dim);
        for i in 0..head_dim / 2 {
            assert!((inter[2 * i] - h[i]).abs() < 1e-6);
            assert!((inter[2 * i + 1] - h[i + head_dim / 2]).abs() < 1e-6);
        }
        // Rotation keeps the norm.
        assert!((dot(&h, &h) - dot(&half_layout, &half_layout)).abs() < 1e-4);
    }

    #[test]
    fn gelu_matches_known_values() {
        // x * Phi(x) from the normal distribution's table.
        for (x, want) in [(0.0f32, 0.0f32), (1.0, 0.841_344_7), (-1.0, -0.158_655_3), (2.0, 1.954_5), (-3.0, -0.004_05)]
        {
            assert!((gelu(x) - want).abs() < 2e-4, "gelu({x}) = {} vs {want}", gelu(x));
        }
    }

    #[test]
    fn rms_norm_of_constant_vector_is_weight() {
        let x = vec![2.0f32; 16];
        let w: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut out = vec![0.0; 16];
        rms_norm(&x, &w, 0.0, &mut out);
        for (o, wi) in out.iter().zip(&w) {
            assert!((o - wi).abs() < 1e-6);
        }
    }
}
