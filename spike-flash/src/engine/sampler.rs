//! Token sampling: greedy, temperature, top-k and top-p (nucleus), seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// Sampling settings. Temperature 0 means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Divides the logits; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

impl SamplerConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!("temperature {} must be >= 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!("top-p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// A seeded sampler.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    cand: Vec<(f32, u32)>,
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler for validated settings.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler { cfg, rng: StdRng::seed_from_u64(cfg.seed), cand: Vec::new() })
    }

    /// Picks the next token from a row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature == 0.0 || logits.len() <= 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.cfg.temperature;
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l * inv_t, i as u32)));
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.cfg.top_k;
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit_desc);
        let max = self.cand[0].0;
        let mut sum = 0.0f64;
        for c in self.cand.iter_mut() {
            c.0 = (c.0 - max).exp();
            sum += c.0 as f64;
        }
        // Nucleus: the shortest prefix whose mass reaches top_p.
        let mut keep = self.cand.len();
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0f64;
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0 as f64 / sum;
                if acc >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f64 = self.cand[..keep].iter().map(|c| c.0 as f64).sum();
        let mut r = self.rng.gen::<f64>() * mass;
        for c in &self.cand[..keep] {
            r -= c.0 as f64;
            if r <= 0.0 {
                return c.1;
            }
        }
        self.cand[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() }).expect("valid");
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let cfg = SamplerConfig { temperature: 5.0, top_k: 1, top_p: 1.0, seed: 7 };
        let mut s = Sampler::new(cfg).expect("valid");
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9]), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Probabilities about 0.665, 0.245, 0.090: p = 0.8 keeps the first two only.
        let logits = [2.0f32, 1.0, 0.0];
        let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.8, seed: 1 };
        let mut s = Sampler::new(cfg).expect("valid");
        for _ in 0..2000 {
            assert_ne!(s.sample(&logits), 2);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_softmax() {
        let logits = [1.0f32, 0.0, 0.5, -0.5];
        let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 42 };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg).expect("valid");
            (0..20000).map(|_| s.sample(&logits)).collect()
        };
        let mut s = Sampler::new(cfg).expect("valid");
        let b: Vec<u32> = (0..20000).map(|_| s.sample(&logits)).collect();
        assert_eq!(a, b);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            let want = (l as f64).exp() / z;
            let got = a.iter().filter(|&&t| t == i as u32).count() as f64 / a.len() as f64;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Sampler::new(SamplerConfig { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplerConfig { top_p: 0.0, ..Default::default() }).is_err());
    }
}
