//! [`SyntheticActivity`]: a random active-set stream with popularity and token-to-token reuse, for tests and
//! benchmarks of the cache. Not calibrated to any model.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A stream of active sets over `n` neurons. Each token has exactly `active` neurons; `churn` of them (rounded)
/// are new, the others are a random subset of the previous token's. New neurons are drawn, among those not
/// active in the previous token, with probability proportional to `1 / (rank + 10)`, where a neuron's rank is
/// its place in a fixed random order ([`popularity_order`](Self::popularity_order)): a few neurons are active
/// far more often than most, and a neuron that left the set often comes back a few tokens later.
#[derive(Debug)]
pub struct SyntheticActivity {
    n: usize,
    active: usize,
    churn: f64,
    rng: StdRng,
    /// Neurons by descending popularity.
    order: Vec<u32>,
    /// Cumulative popularity weights, along `order`.
    cdf: Vec<f64>,
    current: Vec<u32>,
    was_active: Vec<bool>,
    next: Vec<u32>,
}

impl SyntheticActivity {
    /// A stream over `n_neurons` with `active` neurons per token and a fraction `churn` (0..=1) of them new
    /// each token, from `seed`.
    ///
    /// # Panics
    /// If `active > n_neurons` or `churn` is outside 0..=1.
    pub fn new(n_neurons: usize, active: usize, churn: f64, seed: u64) -> SyntheticActivity {
        assert!(active <= n_neurons, "more active neurons than neurons");
        assert!((0.0..=1.0).contains(&churn), "churn is a fraction");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<u32> = (0..n_neurons as u32).collect();
        order.shuffle(&mut rng);
        let mut acc = 0.0;
        let cdf = (0..n_neurons)
            .map(|r| {
                acc += 1.0 / (r as f64 + 10.0);
                acc
            })
            .collect();
        SyntheticActivity {
            n: n_neurons,
            active,
            churn,
            rng,
            order,
            cdf,
            current: Vec::new(),
            was_active: vec![false; n_neurons],
            next: Vec::new(),
        }
    }

    /// The neurons by descending popularity: a hot list for `hot:F`.
    pub fn popularity_order(&self) -> &[u32] {
        &self.order
    }

    /// The next token's active set, ascending.
    pub fn next_token(&mut self) -> &[u32] {
        let keep = if self.current.is_empty() {
            0
        } else {
            ((self.active as f64 * (1.0 - self.churn)).round() as usize).min(self.current.len())
        };
        let (kept, _) = self.current.partial_shuffle(&mut self.rng, keep);
        self.next.clear();
        self.next.extend_from_slice(kept);
        // Draw the new neurons among those not active in the previous token (so the churn is exact).
        let fresh = self.active.min(self.n - self.current.len() + keep) - keep;
        let total = self.cdf.last().copied().unwrap_or(0.0);
        let mut drawn = 0;
        while drawn < fresh {
            let u = self.rng.gen::<f64>() * total;
            let r = self.cdf.partition_point(|&c| c <= u).min(self.n - 1);
            let neuron = self.order[r];
            if !self.was_active[neuron as usize] {
                self.was_active[neuron as usize] = true;
                self.next.push(neuron);
                drawn += 1;
            }
        }
        for &n in &self.current {
            self.was_active[n as usize] = false;
        }
        self.next.sort_unstable();
        std::mem::swap(&mut self.current, &mut self.next);
        for &n in &self.current {
            self.was_active[n as usize] = true;
        }
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_churn_and_popularity() {
        const SEED_ACTIVITY: u64 = 0xAC71;
        let mut s = SyntheticActivity::new(1000, 400, 0.3, SEED_ACTIVITY);
        let mut prev: Vec<u32> = Vec::new();
        let mut count = vec![0u32; 1000];
        for t in 0..300 {
            let a = s.next_token().to_vec();
            assert_eq!(a.len(), 400);
            assert!(a.windows(2).all(|w| w[0] < w[1]));
            if t > 0 {
                let new = a.iter().filter(|n| prev.binary_search(n).is_err()).count();
                assert_eq!(new, 120, "token {t}");
            }
            for &n in &a {
                count[n as usize] += 1;
            }
            prev = a;
        }
        let order = s.popularity_order();
        let top: u32 = order[..100].iter().map(|&n| count[n as usize]).sum();
        let bottom: u32 = order[900..].iter().map(|&n| count[n as usize]).sum();
        assert!(top > 2 * bottom, "popular neurons are not more active: {top} vs {bottom}");
    }
}
