//! Trace statistics against brute-force computations on small random activation matrices.

use std::collections::BTreeSet;

use ndarray::Array2;
use predictor::stats::{
    activation_mass, coactivation, concentration, layer_stats, reuse, ActiveSets, HotSet, StatsConfig,
};
use predictor::trace::{ModelIdentity, Segment};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::model::config::Activation;

const SEED_ACTS: u64 = 0xAC75;

/// Random magnitudes with neuron-dependent rates and some persistence from token to token, so reuse is
/// neither 0 nor 1.
fn random_acts(tokens: usize, neurons: usize) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(SEED_ACTS);
    let rate: Vec<f64> = (0..neurons).map(|i| 0.05 + 0.9 * ((i * 37) % neurons) as f64 / neurons as f64).collect();
    let mut a = Array2::<f32>::zeros((tokens, neurons));
    for t in 0..tokens {
        for i in 0..neurons {
            let keep = t > 0 && a[[t - 1, i]] > 0.5 && rng.gen_bool(0.6);
            a[[t, i]] = if keep || rng.gen_bool(rate[i]) { rng.gen_range(0.5..2.0) } else { rng.gen_range(0.0..0.5) };
        }
    }
    a
}

fn segments(lens: &[usize]) -> Vec<Segment> {
    let mut start = 0;
    lens.iter()
        .enumerate()
        .map(|(doc, &len)| {
            let s = Segment { start, len, doc };
            start += len;
            s
        })
        .collect()
}

fn set_of(a: &Array2<f32>, t: usize, thr: f32) -> BTreeSet<usize> {
    (0..a.ncols()).filter(|&i| a[[t, i]].abs() > thr).collect()
}

#[test]
fn reuse_matches_a_brute_force_computation() {
    let lens = [30, 17, 5, 48, 16];
    let n: usize = lens.iter().sum();
    let f = 70; // not a multiple of 64: the last word is partial
    let a = random_acts(n, f);
    let thr = 0.5;
    let segs = segments(&lens);
    let k_max = 16;
    let rows = reuse(&ActiveSets::from_acts(&a, thr), &segs, k_max);
    assert_eq!(rows.len(), k_max);
    for r in &rows {
        let k = r.k;
        let (mut inter, mut active, mut held, mut loaded, mut tokens) = (0usize, 0usize, 0f64, 0f64, 0usize);
        for s in &segs {
            // Tokens with at least k_max predecessors in their segment; the window is the previous k tokens.
            for t in s.start + k_max..s.start + s.len {
                let now = set_of(&a, t, thr);
                let mut window = BTreeSet::new();
                for j in t - k..t {
                    assert!(j >= s.start, "windows stay inside the segment");
                    window.extend(set_of(&a, j, thr));
                }
                inter += now.intersection(&window).count();
                active += now.len();
                held += window.len() as f64 / f as f64;
                loaded += now.difference(&window).count() as f64 / f as f64;
                tokens += 1;
            }
        }
        // Segments of 5 and 16 tokens contribute nothing; those of 30, 17 and 48 tokens 14, 1 and 32.
        assert_eq!(tokens, 14 + 1 + 32);
        assert_eq!(r.tokens, tokens);
        assert!((r.reuse - inter as f64 / active as f64).abs() < 1e-12, "k {k}");
        assert!((r.held - held / tokens as f64).abs() < 1e-12, "k {k}");
        assert!((r.loaded - loaded / tokens as f64).abs() < 1e-12, "k {k}");
        assert!((r.active - active as f64 / tokens as f64 / f as f64).abs() < 1e-12);
        assert!(r.reuse_independent > 0.0 && r.reuse_independent < 1.0);
    }
    // A longer window holds more and needs fewer loads.
    assert!(rows.windows(2).all(|w| w[1].held >= w[0].held && w[1].loaded <= w[0].loaded));
}

#[test]
fn coactivation_frequencies_and_concentration_match_brute_force() {
    let n = 90;
    let f = 40;
    let a = random_acts(n, f);
    let thr = 0.5;
    let sets = ActiveSets::from_acts(&a, thr);
    let all: Vec<usize> = (0..n).collect();
    let fires: Vec<usize> = (0..f).map(|i| (0..n).filter(|&t| a[[t, i]] > thr).count()).collect();
    let freq = sets.frequencies(&all);
    for i in 0..f {
        assert!((freq[i] - fires[i] as f64 / n as f64).abs() < 1e-12);
    }
    let some: Vec<usize> = (0..n).step_by(3).collect();
    let sp = 1.0 - some.iter().map(|&t| set_of(&a, t, thr).len()).sum::<usize>() as f64 / (some.len() * f) as f64;
    assert!((sets.sparsity(&some) - sp).abs() < 1e-12);

    let sample = [0u32, 7, 39];
    let out = coactivation(&sets, &sample, 3);
    assert_eq!(out.len(), 3);
    for nf in &out {
        let i = nf.neuron as usize;
        assert_eq!(nf.fires as usize, fires[i]);
        // Brute force: P(j | i) for every j != i, best first, ties by lower id.
        let mut cands: Vec<(usize, usize)> = (0..f)
            .filter(|&j| j != i)
            .map(|j| ((0..n).filter(|&t| a[[t, i]] > thr && a[[t, j]] > thr).count(), j))
            .collect();
        cands.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        for (fr, &(together, j)) in nf.friends.iter().zip(&cands) {
            assert_eq!((fr.neuron as usize, fr.together as usize), (j, together));
            assert!((fr.p_given - together as f64 / fires[i] as f64).abs() < 1e-12);
            assert!((fr.freq - fires[j] as f64 / n as f64).abs() < 1e-12);
            let rank = (0..f).filter(|&m| fires[m] > fires[j] || (fires[m] == fires[j] && m < j)).count();
            assert_eq!(fr.freq_rank, rank);
        }
    }

    // Concentration: weights 8, 1, 1 -> the heaviest item (1/3 of the items) carries 80%.
    assert!((concentration(&[1.0, 8.0, 1.0], 0.8) - 1.0 / 3.0).abs() < 1e-12);
    assert!((concentration(&[1.0; 10], 0.8) - 0.8).abs() < 1e-12);
    assert_eq!(concentration(&[0.0; 4], 0.8), 0.0);
    let mass = activation_mass(&a, &all);
    for i in 0..f {
        let m: f64 = (0..n).map(|t| a[[t, i]] as f64).sum();
        assert!((mass[i] - m).abs() < 1e-6 * m.max(1.0));
    }
}

#[test]
fn layer_stats_and_hot_sets_are_consistent() {
    let lens = [40, 40, 40];
    let n = 120;
    let f = 64;
    let a = random_acts(n, f);
    let segs = segments(&lens);
    let train: Vec<usize> = (0..80).collect();
    let valid: Vec<usize> = (80..120).collect();
    let s = layer_stats(3, &a, 0.5, &segs, &train, &valid, &StatsConfig { k_max: 8, ..Default::default() });
    assert_eq!(s.layer, 3);
    assert_eq!(s.reuse.len(), 8);
    assert_eq!(s.freq_train.len(), f);
    let total = (s.sparsity_train * 80.0 + s.sparsity_valid * 40.0) / 120.0;
    assert!((total - s.sparsity_all).abs() < 1e-12);
    assert!(s.friends.len() <= 16 && !s.friends.is_empty());
    assert_eq!(ActiveSets::from_acts(&a, 0.5).frequencies(&train), s.freq_train);

    let model =
        ModelIdentity { sha256: "c".repeat(64), n_layers: 2, d_model: 8, d_ffn: f, activation: Activation::Silu };
    let hot = HotSet::new(model, "test", 80, [(0.5f32, s.freq_train.clone()), (0.5f32, s.freq_train.clone())]);
    for layer in &hot.layers {
        assert!(layer.freq.windows(2).all(|w| w[0] >= w[1]), "descending frequency");
        let ids: BTreeSet<u32> = layer.neurons.iter().copied().collect();
        assert_eq!(ids.len(), f);
        for (&id, &fr) in layer.neurons.iter().zip(&layer.freq) {
            assert_eq!(fr, s.freq_train[id as usize] as f32);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("hot.json");
    hot.save(&p).expect("save");
    assert_eq!(HotSet::load(&p).expect("load"), hot);
    let mut broken = hot.clone();
    broken.layers[1].neurons[0] = broken.layers[1].neurons[1];
    broken.save(&p).expect("save");
    let msg = HotSet::load(&p).expect_err("duplicate neuron").to_string();
    assert!(msg.contains("hot.json") && msg.contains("layer 1"), "{msg}");
}
