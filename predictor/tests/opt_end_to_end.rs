//! End to end on a generated OPT (ReLU) checkpoint whose fc1 matrices have a planted low rank: the dense
//! engine reports (FFN input, activations) pairs, the predictor trains on some sequences and recovers the
//! active sets of sequences it never saw; its one-token `select` agrees with the batched predictions (and its
//! parallel `select_batch` with `select`, exactly); and the
//! sparse FFN runs with it as its selector.

use std::path::Path;

use ndarray::{Array2, Axis};
use predictor::lowrank::RankSpec;
use predictor::metrics::Confusion;
use predictor::train::{labels, train_predictor, LayerData, PredictorConfig, TrainConfig};
use predictor::ModelIdentity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::engine::model::{ActivationSink, DenseFfn, Model};
use spike_flash::engine::sparse::{NeuronSelector, SparseFfn};
use spike_flash::model::bind::Source;
use spike_flash::model::synth::{write_hf_checkpoint, SynthSpec};

const SEED_MODEL: u64 = 0x0b7;
const SEED_PLANT: u64 = 0x9a7;
const SEED_TOKENS: u64 = 0x70c;
const PLANTED_RANK: usize = 4;
const PREDICTOR_RANK: usize = 8;
const SEQ: usize = 64;
const SEQS: (usize, usize, usize) = (60, 15, 25);

/// Overwrites every layer's fc1 weight with `U V` (rank [`PLANTED_RANK`], rows of unit norm, so the
/// pre-activation of a unit-variance input has unit variance) and its bias with values in [-1.28, -0.52]
/// (each neuron then fires on about 10-30% of tokens). The checkpoint is f32.
fn plant_low_rank_fc1(dir: &Path, n_layers: usize, d: usize, f: usize) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("checkpoint");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header JSON");
    let data_start = 8 + header_len;
    let range = |name_suffix: &str| -> (usize, usize) {
        let (_, t) = header
            .as_object()
            .expect("object")
            .iter()
            .find(|(k, _)| k.ends_with(name_suffix))
            .unwrap_or_else(|| panic!("no tensor named *{name_suffix}"));
        assert_eq!(t["dtype"], "F32");
        let o = &t["data_offsets"];
        (data_start + o[0].as_u64().expect("offset") as usize, data_start + o[1].as_u64().expect("offset") as usize)
    };
    let mut rng = StdRng::seed_from_u64(SEED_PLANT);
    for l in 0..n_layers {
        let u = Array2::from_shape_fn((f, PLANTED_RANK), |_| rng.gen_range(-1.0f32..1.0));
        let v = Array2::from_shape_fn((PLANTED_RANK, d), |_| rng.gen_range(-1.0f32..1.0));
        let mut w = u.dot(&v);
        for mut row in w.rows_mut() {
            let norm = row.dot(&row).sqrt();
            row /= norm;
        }
        let (a, b) = range(&format!("layers.{l}.fc1.weight"));
        assert_eq!(b - a, f * d * 4);
        for (dst, v) in bytes[a..b].chunks_exact_mut(4).zip(w.iter()) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        let (a, b) = range(&format!("layers.{l}.fc1.bias"));
        for dst in bytes[a..b].chunks_exact_mut(4) {
            dst.copy_from_slice(&(-rng.gen_range(0.52f32..1.28)).to_le_bytes());
        }
    }
    std::fs::write(&path, bytes).expect("rewrite checkpoint");
}

/// Per layer, the FFN inputs and activations of every token, in order.
struct Collect {
    d: usize,
    f: usize,
    x: Vec<Vec<f32>>,
    h: Vec<Vec<f32>>,
}

impl ActivationSink for Collect {
    fn record(&mut self, layer: usize, x: &[f32], neurons: &[f32]) {
        assert_eq!((x.len(), neurons.len()), (self.d, self.f));
        self.x[layer].extend_from_slice(x);
        self.h[layer].extend_from_slice(neurons);
    }
}

fn rows<T: Clone>(a: &Array2<T>, from: usize, to: usize) -> Array2<T> {
    a.slice_axis(Axis(0), ndarray::Slice::from(from..to)).to_owned()
}

#[test]
fn predictor_recovers_a_planted_relu_model_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SynthSpec::tiny_opt(SEED_MODEL);
    write_hf_checkpoint(&spec, dir.path()).expect("synth");
    let (l_n, d, f) = (spec.model.n_layers, spec.model.d_model, spec.model.d_ffn);
    plant_low_rank_fc1(dir.path(), l_n, d, f);
    let source = Source::open(dir.path()).expect("open");
    let model = Model::from_source(&source).expect("model");
    let vocab = model.config().vocab_size as u32;

    let (n_train, n_valid, n_test) = SEQS;
    let mut rng = StdRng::seed_from_u64(SEED_TOKENS);
    let seqs: Vec<Vec<u32>> =
        (0..n_train + n_valid + n_test).map(|_| (0..SEQ).map(|_| rng.gen_range(4..vocab)).collect()).collect();
    let mut sink = Collect { d, f, x: vec![Vec::new(); l_n], h: vec![Vec::new(); l_n] };
    let mut state = model.new_state(SEQ);
    for s in &seqs {
        state.reset();
        let mut ffn = DenseFfn::with_sink(&mut sink);
        model.forward_with(&mut state, s, SEQ - 1, &mut ffn).expect("dense forward");
    }
    let t = seqs.len() * SEQ;
    let (train_end, valid_end) = (n_train * SEQ, (n_train + n_valid) * SEQ);
    let mut data = Vec::new();
    let mut test = Vec::new();
    for l in 0..l_n {
        let x = Array2::from_shape_vec((t, d), std::mem::take(&mut sink.x[l])).expect("t x d");
        let h = Array2::from_shape_vec((t, f), std::mem::take(&mut sink.h[l])).expect("t x f");
        let y = labels(h.view(), 0.0);
        let rate = y.iter().filter(|&&v| v).count() as f64 / y.len() as f64;
        assert!((0.05..0.4).contains(&rate), "layer {l}: {rate} of neurons fire");
        data.push(LayerData {
            x_train: rows(&x, 0, train_end),
            y_train: rows(&y, 0, train_end),
            x_valid: rows(&x, train_end, valid_end),
            y_valid: rows(&y, train_end, valid_end),
            act_threshold: 0.0,
            magnitude_train: None,
        });
        test.push((rows(&x, valid_end, t), rows(&y, valid_end, t)));
    }

    let identity = ModelIdentity::with_sha(String::new(), model.config());
    let cfg = PredictorConfig {
        ranks: RankSpec::uniform(PREDICTOR_RANK),
        train: TrainConfig { epochs: 30, ..TrainConfig::default() },
        recall: 0.995,
    };
    let (mut p, metrics) = train_predictor(&data, identity, &cfg, &|_| {}).expect("training");
    assert_eq!(metrics.len(), l_n);

    let mut predicted_fraction = 0.0;
    for (l, (x, y)) in test.iter().enumerate() {
        let pred = p.predict_batch(l, x.view()).expect("predict");
        let as_logits = pred.mapv(|v| if v { 1.0f32 } else { -1.0 });
        let c = Confusion::of(as_logits.view(), y.view(), 0.0).expect("shapes");
        eprintln!("layer {l}: held-out recall {:.4}, precision {:.4}", c.recall(), c.precision());
        assert!(c.recall() >= 0.99, "layer {l}: held-out recall {}", c.recall());
        assert!(c.precision() >= 0.9, "layer {l}: held-out precision {}", c.precision());
        predicted_fraction += c.predicted_active() as f64 / c.total() as f64 / l_n as f64;

        // One token at a time, as the sparse FFN asks, equals the batched predictions, except for logits so
        // close to the threshold that summation order decides.
        let logits = p.logits(l, x.view()).expect("logits");
        let thr = p.layers()[l].decision_threshold;
        let mut active = Vec::new();
        let mut near = 0;
        for (i, row) in x.rows().into_iter().enumerate() {
            p.select(l, row.as_slice().expect("standard layout"), &mut active).expect("select");
            assert!(active.windows(2).all(|w| w[0] < w[1]), "ascending ids");
            let mut k = 0;
            for j in 0..f {
                let chosen = active.get(k) == Some(&(j as u32));
                if chosen {
                    k += 1;
                }
                if chosen != pred[[i, j]] {
                    assert!((logits[[i, j]] - thr).abs() < 1e-4 * (1.0 + thr.abs()), "token {i} neuron {j}");
                    near += 1;
                }
            }
            assert_eq!(k, active.len());
        }
        assert!(near <= 2, "layer {l}: {near} disagreements at the threshold");

        // A batch, decided in parallel, equals the tokens decided one by one, exactly.
        let flat: Vec<f32> = x.iter().copied().collect();
        let mut batch = vec![Vec::new(); x.nrows()];
        p.select_batch(l, &flat, &mut batch).expect("select_batch");
        for (i, row) in x.rows().into_iter().enumerate() {
            p.select(l, row.as_slice().expect("standard layout"), &mut active).expect("select");
            assert_eq!(batch[i], active, "layer {l} token {i}");
        }
    }

    // The sparse FFN with the predictor as its selector computes about the predicted share of neurons.
    let mut sparse = SparseFfn::new(&model, p).expect("sparse FFN");
    let test_seqs = &seqs[n_train + n_valid..];
    for s in test_seqs {
        state.reset();
        model.forward_with(&mut state, s, SEQ - 1, &mut sparse).expect("sparse forward");
    }
    let realised = sparse.stats.active as f64 / sparse.stats.total as f64;
    assert!((realised - predicted_fraction).abs() < 0.03, "realised {realised} vs predicted {predicted_fraction}");
}
