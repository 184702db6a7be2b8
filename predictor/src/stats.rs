//! The statistics researchers look at first in a trace, per layer at given thresholds: sparsity, how
//! concentrated activity is, token-to-token reuse of active neurons in a window of the last k tokens (what the
//! paper's windowed neuron cache exploits), co-activation ("closest friends"), and per-neuron activation
//! frequencies (a hot set the neuron cache can pin).

use std::path::Path;

use ndarray::Array2;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::trace::{ModelIdentity, Segment};
use crate::{Error, Result};

/// Per token, the set of active neurons as a bitset (`words` u64 per token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSets {
    n_tokens: usize,
    n_neurons: usize,
    words: usize,
    bits: Vec<u64>,
}

impl ActiveSets {
    /// Neuron `i` of token `t` is active when `active(t, i)`.
    pub fn from_fn(n_tokens: usize, n_neurons: usize, active: impl Fn(usize, usize) -> bool) -> ActiveSets {
        let words = n_neurons.div_ceil(64);
        let mut bits = vec![0u64; n_tokens * words];
        for t in 0..n_tokens {
            for i in 0..n_neurons {
                if active(t, i) {
                    bits[t * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        ActiveSets { n_tokens, n_neurons, words, bits }
    }

    /// Active where `|acts[t, i]| > thr` (`acts` is tokens x neurons).
    pub fn from_acts(acts: &Array2<f32>, thr: f32) -> ActiveSets {
        let (n_tokens, n_neurons) = acts.dim();
        let words = n_neurons.div_ceil(64);
        let mut bits = vec![0u64; n_tokens * words];
        for (t, row) in acts.rows().into_iter().enumerate() {
            for (i, v) in row.iter().enumerate() {
                if v.abs() > thr {
                    bits[t * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        ActiveSets { n_tokens, n_neurons, words, bits }
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    pub fn n_neurons(&self) -> usize {
        self.n_neurons
    }

    /// Token `t`'s bitset.
    pub fn row(&self, t: usize) -> &[u64] {
        &self.bits[t * self.words..(t + 1) * self.words]
    }

    /// Whether neuron `i` is active at token `t`.
    pub fn is_active(&self, t: usize, i: usize) -> bool {
        self.row(t)[i / 64] >> (i % 64) & 1 == 1
    }

    /// Number of active neurons at token `t`.
    pub fn count(&self, t: usize) -> usize {
        self.row(t).iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Fraction of (token, neuron) pairs over `tokens` that are inactive; 0 for no tokens.
    pub fn sparsity(&self, tokens: &[usize]) -> f64 {
        let total = tokens.len() as f64 * self.n_neurons as f64;
        if total == 0.0 {
            return 0.0;
        }
        let active: usize = tokens.iter().map(|&t| self.count(t)).sum();
        1.0 - active as f64 / total
    }

    /// Per neuron, the fraction of `tokens` at which it is active.
    pub fn frequencies(&self, tokens: &[usize]) -> Vec<f64> {
        let mut counts = vec![0u64; self.n_neurons];
        for &t in tokens {
            for (w, &word) in self.row(t).iter().enumerate() {
                let mut b = word;
                while b != 0 {
                    counts[w * 64 + b.trailing_zeros() as usize] += 1;
                    b &= b - 1;
                }
            }
        }
        let n = tokens.len().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / n).collect()
    }

    /// Per neuron, the bitset of the tokens where it is active (`n_tokens.div_ceil(64)` words each).
    fn columns(&self) -> Vec<Vec<u64>> {
        let tw = self.n_tokens.div_ceil(64);
        let mut cols = vec![vec![0u64; tw]; self.n_neurons];
        for t in 0..self.n_tokens {
            for (w, &word) in self.row(t).iter().enumerate() {
                let mut b = word;
                while b != 0 {
                    cols[w * 64 + b.trailing_zeros() as usize][t / 64] |= 1 << (t % 64);
                    b &= b - 1;
                }
            }
        }
        cols
    }
}

/// Fraction of the items that carries `share` of the total weight, heaviest first (PowerInfer's "a small
/// fraction of neurons carries most of the activations"). 0 when the total is 0.
pub fn concentration(weights: &[f64], share: f64) -> f64 {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || weights.is_empty() {
        return 0.0;
    }
    let mut w = weights.to_vec();
    w.sort_by(|a, b| b.total_cmp(a));
    let goal = share * total;
    let mut acc = 0.0;
    for (i, x) in w.iter().enumerate() {
        acc += x;
        if acc >= goal * (1.0 - 1e-12) {
            return (i + 1) as f64 / w.len() as f64;
        }
    }
    1.0
}

/// Per neuron, the summed activation magnitude over `tokens`.
pub fn activation_mass(acts: &Array2<f32>, tokens: &[usize]) -> Vec<f64> {
    let mut mass = vec![0f64; acts.ncols()];
    for &t in tokens {
        for (m, v) in mass.iter_mut().zip(acts.row(t)) {
            *m += v.abs() as f64;
        }
    }
    mass
}

/// Token-to-token reuse for one window length `k`, over the tokens with at least `k_max` predecessors in
/// their segment (the same tokens for every `k`, so the curve over `k` compares like with like).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReuseRow {
    pub k: usize,
    /// Tokens measured.
    pub tokens: usize,
    /// Mean fraction of the FFN active at a token.
    pub active: f64,
    /// Of a token's active neurons, the share already active in the previous `k` tokens (sum over tokens of
    /// the overlap / sum of the active counts).
    pub reuse: f64,
    /// Mean fraction of the FFN the window (union of the previous `k` tokens' active sets) holds.
    pub held: f64,
    /// Mean fraction of the FFN that must be loaded per token: active now and not in the window.
    pub loaded: f64,
    /// What `reuse` would be if tokens were independent draws with each neuron's measured frequency `p`:
    /// `sum p (1 - (1 - p)^k) / sum p`. Reuse above it is token-to-token correlation.
    pub reuse_independent: f64,
    /// What `held` would be for independent tokens: `mean (1 - (1 - p)^k)`.
    pub held_independent: f64,
}

/// Reuse for `k = 1..=k_max`. Windows never reach across a segment (and so a document) boundary.
pub fn reuse(sets: &ActiveSets, segments: &[Segment], k_max: usize) -> Vec<ReuseRow> {
    let f = sets.n_neurons as f64;
    let mut inter = vec![0u64; k_max + 1];
    let mut held = vec![0u64; k_max + 1];
    let mut active = 0u64;
    let mut tokens = 0usize;
    let mut window = vec![0u64; sets.words];
    let mut fires = vec![0u64; sets.n_neurons];
    for s in segments {
        for t in (s.start + k_max)..(s.start + s.len) {
            let a = sets.row(t);
            active += a.iter().map(|w| w.count_ones() as u64).sum::<u64>();
            for (w, &word) in a.iter().enumerate() {
                let mut b = word;
                while b != 0 {
                    fires[w * 64 + b.trailing_zeros() as usize] += 1;
                    b &= b - 1;
                }
            }
            tokens += 1;
            window.fill(0);
            for k in 1..=k_max {
                for (w, p) in window.iter_mut().zip(sets.row(t - k)) {
                    *w |= p;
                }
                inter[k] += a.iter().zip(&window).map(|(x, w)| (x & w).count_ones() as u64).sum::<u64>();
                held[k] += window.iter().map(|w| w.count_ones() as u64).sum::<u64>();
            }
        }
    }
    let p: Vec<f64> = fires.iter().map(|&c| c as f64 / tokens.max(1) as f64).collect();
    let sum_p: f64 = p.iter().sum();
    (1..=k_max)
        .map(|k| {
            let n = tokens.max(1) as f64;
            let in_window = |pi: f64| 1.0 - (1.0 - pi).powi(k as i32);
            ReuseRow {
                reuse_independent: if sum_p > 0.0 {
                    p.iter().map(|&pi| pi * in_window(pi)).sum::<f64>() / sum_p
                } else {
                    0.0
                },
                held_independent: p.iter().map(|&pi| in_window(pi)).sum::<f64>() / f,
                k,
                tokens,
                active: active as f64 / n / f,
                reuse: if active == 0 { 0.0 } else { inter[k] as f64 / active as f64 },
                held: held[k] as f64 / n / f,
                loaded: (active - inter[k]) as f64 / n / f,
            }
        })
        .collect()
}

/// A neuron's friend: another neuron and how often it is active when the first one is.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Friend {
    pub neuron: u32,
    /// Tokens where both are active.
    pub together: u64,
    /// P(friend active | neuron active).
    pub p_given: f64,
    /// The friend's own activation frequency, P(friend active).
    pub freq: f64,
    /// The friend's rank by frequency in its layer (0 = most often active).
    pub freq_rank: usize,
}

/// A sampled neuron and its closest friends, closest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NeuronFriends {
    pub neuron: u32,
    /// Tokens where it is active.
    pub fires: u64,
    pub freq: f64,
    pub freq_rank: usize,
    pub friends: Vec<Friend>,
}

/// Per neuron of `neurons`: the `top` other neurons with the highest P(friend active | neuron active) over
/// all tokens of `sets` (ties: the lower id first).
pub fn coactivation(sets: &ActiveSets, neurons: &[u32], top: usize) -> Vec<NeuronFriends> {
    let cols = sets.columns();
    let fires: Vec<u64> = cols.iter().map(|c| c.iter().map(|w| w.count_ones() as u64).sum()).collect();
    let n = sets.n_tokens.max(1) as f64;
    let rank = frequency_ranks(&fires);
    neurons
        .iter()
        .filter(|&&i| (i as usize) < sets.n_neurons)
        .map(|&i| {
            let ci = &cols[i as usize];
            let own = fires[i as usize];
            let mut cands: Vec<(u64, usize)> = cols
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i as usize)
                .map(|(j, cj)| (ci.iter().zip(cj).map(|(a, b)| (a & b).count_ones() as u64).sum(), j))
                .collect();
            cands.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let friends = cands
                .into_iter()
                .take(top)
                .map(|(together, j)| Friend {
                    neuron: j as u32,
                    together,
                    p_given: if own == 0 { 0.0 } else { together as f64 / own as f64 },
                    freq: fires[j] as f64 / n,
                    freq_rank: rank[j],
                })
                .collect();
            NeuronFriends { neuron: i, fires: own, freq: own as f64 / n, freq_rank: rank[i as usize], friends }
        })
        .collect()
}

/// Rank of each item by descending count (0 = largest; ties by lower index).
fn frequency_ranks(counts: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    let mut rank = vec![0; counts.len()];
    for (r, i) in order.into_iter().enumerate() {
        rank[i] = r;
    }
    rank
}

/// `n` neurons drawn with `seed` among those active at least `min_fires` times (`fires` per neuron), ascending.
pub fn sample_neurons(fires: &[u64], n: usize, min_fires: u64, seed: u64) -> Vec<u32> {
    let mut pool: Vec<u32> = (0..fires.len() as u32).filter(|&i| fires[i as usize] >= min_fires).collect();
    pool.shuffle(&mut StdRng::seed_from_u64(seed));
    pool.truncate(n);
    pool.sort_unstable();
    pool
}

/// What the co-activation sample says about "closest friends".
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CoactSummary {
    pub sampled: usize,
    /// Mean P(closest friend active | neuron active).
    pub mean_p_top1: f64,
    /// Mean of the closest friend's own frequency.
    pub mean_top1_freq: f64,
    /// Mean P(top1 | neuron) / P(top1): near 1 means the friend is active about as often anyway.
    pub mean_top1_lift: f64,
    /// Share of closest friends among the layer's most frequently active 1% of neurons (at least one neuron).
    pub top1_in_hottest_1pct: f64,
    /// Mean frequency rank of the closest friend, as a fraction of the layer (0 = the most active neuron).
    pub mean_top1_rank_frac: f64,
    /// How many different neurons are someone's closest friend.
    pub distinct_top1: usize,
}

/// Summarizes [`coactivation`]'s output for a layer of `n_neurons`.
pub fn summarize_coactivation(friends: &[NeuronFriends], n_neurons: usize) -> CoactSummary {
    let firsts: Vec<&Friend> = friends.iter().filter_map(|f| f.friends.first()).collect();
    let m = firsts.len().max(1) as f64;
    let hot = (n_neurons as f64 * 0.01).ceil().max(1.0) as usize;
    let mut distinct: Vec<u32> = firsts.iter().map(|f| f.neuron).collect();
    distinct.sort_unstable();
    distinct.dedup();
    CoactSummary {
        sampled: firsts.len(),
        mean_p_top1: firsts.iter().map(|f| f.p_given).sum::<f64>() / m,
        mean_top1_freq: firsts.iter().map(|f| f.freq).sum::<f64>() / m,
        mean_top1_lift: firsts.iter().map(|f| if f.freq > 0.0 { f.p_given / f.freq } else { 0.0 }).sum::<f64>() / m,
        top1_in_hottest_1pct: firsts.iter().filter(|f| f.freq_rank < hot).count() as f64 / m,
        mean_top1_rank_frac: firsts.iter().map(|f| f.freq_rank as f64 / n_neurons.max(1) as f64).sum::<f64>() / m,
        distinct_top1: distinct.len(),
    }
}

/// Settings of [`layer_stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsConfig {
    /// Longest window for reuse (k = 1..=k_max). Default 16.
    pub k_max: usize,
    /// Neurons sampled per layer for co-activation. Default 16.
    pub coact_sample: usize,
    /// Friends listed per sampled neuron. Default 5.
    pub coact_top: usize,
    /// Sampled neurons are active at least this many times. Default 10.
    pub coact_min_fires: u64,
    /// Share of the activation mass (or count) for concentration. Default 0.8.
    pub concentration_share: f64,
    /// Seed of the neuron sample.
    pub seed: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            k_max: 16,
            coact_sample: 16,
            coact_top: 5,
            coact_min_fires: 10,
            concentration_share: 0.8,
            seed: 0,
        }
    }
}

/// The statistics of one layer at one threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    pub layer: usize,
    pub threshold: f32,
    pub sparsity_train: f64,
    pub sparsity_valid: f64,
    pub sparsity_all: f64,
    /// Fraction of neurons carrying `concentration_share` of the summed activation magnitude (all tokens).
    pub concentration_mass: f64,
    /// Fraction of neurons carrying `concentration_share` of the activations counted at the threshold.
    pub concentration_count: f64,
    pub reuse: Vec<ReuseRow>,
    pub friends: Vec<NeuronFriends>,
    pub coact: CoactSummary,
    /// Per neuron, its activation frequency on the training split.
    pub freq_train: Vec<f64>,
}

/// All statistics of one layer's activation magnitudes `acts` (tokens x neurons) at threshold `thr`.
pub fn layer_stats(
    layer: usize,
    acts: &Array2<f32>,
    thr: f32,
    segments: &[Segment],
    train: &[usize],
    valid: &[usize],
    cfg: &StatsConfig,
) -> LayerStats {
    let sets = ActiveSets::from_acts(acts, thr);
    let all: Vec<usize> = (0..sets.n_tokens()).collect();
    let freq_all = sets.frequencies(&all);
    let fires: Vec<u64> = freq_all.iter().map(|f| (f * all.len() as f64).round() as u64).collect();
    let sample = sample_neurons(&fires, cfg.coact_sample, cfg.coact_min_fires, cfg.seed ^ layer as u64);
    let friends = coactivation(&sets, &sample, cfg.coact_top);
    let coact = summarize_coactivation(&friends, sets.n_neurons());
    LayerStats {
        layer,
        threshold: thr,
        sparsity_train: sets.sparsity(train),
        sparsity_valid: sets.sparsity(valid),
        sparsity_all: sets.sparsity(&all),
        concentration_mass: concentration(&activation_mass(acts, &all), cfg.concentration_share),
        concentration_count: concentration(&freq_all, cfg.concentration_share),
        reuse: reuse(&sets, segments, cfg.k_max),
        friends,
        coact,
        freq_train: sets.frequencies(train),
    }
}

/// The `format` field of a hot-set file.
pub const HOT_FORMAT: &str = "spike-hot-neurons";
/// The version this code writes and reads.
pub const HOT_VERSION: u32 = 1;

/// One layer of a [`HotSet`]: every neuron, most frequently active first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HotLayer {
    pub layer: usize,
    pub threshold: f32,
    /// Neuron ids by descending frequency (ties: lower id first).
    pub neurons: Vec<u32>,
    /// `freq[i]` is how often `neurons[i]` is active on the training split (fraction of tokens).
    pub freq: Vec<f32>,
}

/// Per-layer neuron activation frequencies on a trace's training split: what a pinned hot set is chosen from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HotSet {
    pub format: String,
    pub version: u32,
    pub model: ModelIdentity,
    /// Which thresholds defined "active" (for example `sparsity 0.50` or `relu`).
    pub setting: String,
    pub train_tokens: usize,
    pub layers: Vec<HotLayer>,
}

impl HotSet {
    /// A hot set from per-layer frequencies and thresholds.
    pub fn new(
        model: ModelIdentity,
        setting: &str,
        train_tokens: usize,
        per_layer: impl IntoIterator<Item = (f32, Vec<f64>)>,
    ) -> HotSet {
        let layers = per_layer
            .into_iter()
            .enumerate()
            .map(|(layer, (threshold, freq))| {
                let mut order: Vec<u32> = (0..freq.len() as u32).collect();
                order.sort_by(|&a, &b| freq[b as usize].total_cmp(&freq[a as usize]).then(a.cmp(&b)));
                let f = order.iter().map(|&i| freq[i as usize] as f32).collect();
                HotLayer { layer, threshold, neurons: order, freq: f }
            })
            .collect();
        HotSet { format: HOT_FORMAT.into(), version: HOT_VERSION, model, setting: setting.into(), train_tokens, layers }
    }

    /// Saves as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| Error::format(path, e.to_string()))?;
        spike_flash::io::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
        Ok(())
    }

    /// Loads and validates a hot-set file: every layer lists each neuron exactly once.
    pub fn load(path: &Path) -> Result<HotSet> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let h: HotSet =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a hot-set file: {e}")))?;
        if h.format != HOT_FORMAT || h.version != HOT_VERSION {
            return Err(Error::format(
                path,
                format!("format {:?} version {}; expected {HOT_FORMAT:?} version {HOT_VERSION}", h.format, h.version),
            ));
        }
        if h.layers.len() != h.model.n_layers {
            return Err(Error::format(
                path,
                format!("{} layers for a {}-layer model", h.layers.len(), h.model.n_layers),
            ));
        }
        for (l, layer) in h.layers.iter().enumerate() {
            let f = h.model.d_ffn;
            let mut seen = vec![false; f];
            let ok = layer.layer == l
                && layer.neurons.len() == f
                && layer.freq.len() == f
                && layer.neurons.iter().all(|&i| (i as usize) < f && !std::mem::replace(&mut seen[i as usize], true));
            if !ok {
                return Err(Error::format(path, format!("layer {l} does not list each of the {f} neurons once")));
            }
        }
        Ok(h)
    }
}
