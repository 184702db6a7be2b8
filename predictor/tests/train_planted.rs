//! The training demonstrably learns: on data whose active sets are a low-rank linear function of the input
//! (exactly what a ReLU FFN with a low-rank first matrix produces), the predictor recovers them on held-out
//! tokens; on labels with the same rates and no structure it cannot, so the test can fail.

use ndarray::{Array1, Array2};
use predictor::lowrank::RankSpec;
use predictor::metrics::Confusion;
use predictor::train::{train_layer, train_predictor, LayerData, PredictorConfig, TrainConfig};
use predictor::ModelIdentity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::model::config::Activation;

const SEED_INPUTS: u64 = 0x1b7;
const SEED_PLANT: u64 = 0x9e3;
const SEED_RANDOM_LABELS: u64 = 0x5a5;

const D: usize = 48;
const N: usize = 192;
const PLANTED_RANK: usize = 4;
const PREDICTOR_RANK: usize = 8;

/// `t x d` inputs, uniform with unit variance.
fn inputs(t: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = 3f32.sqrt();
    Array2::from_shape_fn((t, D), |_| rng.gen_range(-a..a))
}

/// A ReLU FFN's first layer with a planted rank: `W = U V` (`n x d`, rank `PLANTED_RANK`), scaled so every
/// neuron's pre-activation has unit variance, and biases putting each neuron's firing rate between about 10%
/// and 30%.
fn plant() -> (Array2<f32>, Array1<f32>) {
    let mut rng = StdRng::seed_from_u64(SEED_PLANT);
    let u = Array2::from_shape_fn((N, PLANTED_RANK), |_| rng.gen_range(-1.0f32..1.0));
    let v = Array2::from_shape_fn((PLANTED_RANK, D), |_| rng.gen_range(-1.0f32..1.0));
    let mut w = u.dot(&v);
    for mut row in w.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row /= norm;
    }
    // P(N(0,1) > z) is 30% at z = 0.52 and 10% at z = 1.28.
    let b = Array1::from_shape_fn(N, |_| -rng.gen_range(0.52f32..1.28));
    (w, b)
}

/// Active sets of the planted FFN: `relu(W x + b) > 0`.
fn planted_labels(x: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>) -> Array2<bool> {
    let mut pre = x.dot(&w.t());
    pre += &b.view().insert_axis(ndarray::Axis(0));
    pre.mapv(|v| v > 0.0)
}

/// Labels with the same per-neuron rates as `like`, drawn independently of the inputs.
fn random_labels(like: &Array2<bool>, seed: u64) -> Array2<bool> {
    let t = like.nrows() as f64;
    let rates: Vec<f64> = like.columns().into_iter().map(|c| c.iter().filter(|&&v| v).count() as f64 / t).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_fn(like.dim(), |(_, j)| rng.gen_bool(rates[j]))
}

struct Split {
    train: (Array2<f32>, Array2<bool>),
    valid: (Array2<f32>, Array2<bool>),
    test: (Array2<f32>, Array2<bool>),
}

fn split(x: Array2<f32>, y: Array2<bool>, n_train: usize, n_valid: usize) -> Split {
    let rows = |a: usize, b: usize| {
        (
            x.slice_axis(ndarray::Axis(0), ndarray::Slice::from(a..b)).to_owned(),
            y.slice_axis(ndarray::Axis(0), ndarray::Slice::from(a..b)).to_owned(),
        )
    };
    Split { train: rows(0, n_train), valid: rows(n_train, n_train + n_valid), test: rows(n_train + n_valid, x.nrows()) }
}

fn identity(n_layers: usize) -> ModelIdentity {
    ModelIdentity { sha256: String::new(), n_layers, d_model: D, d_ffn: N, activation: Activation::Relu }
}

/// Trains on the split's training part, chooses the threshold on its validation part, and measures on its
/// test part (tokens neither saw).
fn held_out(s: &Split) -> Confusion {
    let data = vec![LayerData {
        x_train: s.train.0.clone(),
        y_train: s.train.1.clone(),
        x_valid: s.valid.0.clone(),
        y_valid: s.valid.1.clone(),
        act_threshold: 0.0,
        magnitude_train: None,
    }];
    let cfg = PredictorConfig {
        ranks: RankSpec::uniform(PREDICTOR_RANK),
        train: TrainConfig { epochs: 30, ..TrainConfig::default() },
        recall: 0.995,
    };
    let (p, metrics) = train_predictor(&data, identity(1), &cfg, &|_| {}).expect("training");
    assert!(metrics[0].recall >= 0.995, "validation recall {} below the target", metrics[0].recall);
    let predicted = p.predict_batch(0, s.test.0.view()).expect("predicting");
    let logits = predicted.mapv(|v| if v { 1.0f32 } else { -1.0 });
    Confusion::of(logits.view(), s.test.1.view(), 0.0).expect("same shapes")
}

#[test]
fn recovers_planted_active_sets_and_not_random_ones() {
    let x = inputs(6000, SEED_INPUTS);
    let (w, b) = plant();
    let y = planted_labels(&x, &w, &b);
    let rate = y.iter().filter(|&&v| v).count() as f64 / y.len() as f64;
    assert!((0.1..0.3).contains(&rate), "planted firing rate {rate}");

    let planted = held_out(&split(x.clone(), y.clone(), 4000, 1000));
    eprintln!("planted: recall {:.4} precision {:.4}", planted.recall(), planted.precision());
    assert!(planted.recall() >= 0.99, "planted structure: held-out recall {}", planted.recall());
    assert!(planted.precision() >= 0.9, "planted structure: held-out precision {}", planted.precision());

    // Same inputs, same rates, no structure: reaching the recall costs predicting nearly everything.
    let control = held_out(&split(x, random_labels(&y, SEED_RANDOM_LABELS), 4000, 1000));
    eprintln!("random labels: recall {:.4} precision {:.4}", control.recall(), control.precision());
    assert!(
        !(control.recall() >= 0.99 && control.precision() >= 0.9),
        "random labels were 'predicted': recall {}, precision {}",
        control.recall(),
        control.precision()
    );
    assert!(control.precision() < rate + 0.1, "random labels: precision {} above chance {rate}", control.precision());
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let x = inputs(600, SEED_INPUTS);
    let (w, b) = plant();
    let y = planted_labels(&x, &w, &b);
    let cfg = TrainConfig { epochs: 2, ..TrainConfig::default() };
    let (a, _) = train_layer(x.view(), y.view(), 4, &cfg).expect("training");
    let (b2, _) = train_layer(x.view(), y.view(), 4, &cfg).expect("training");
    assert_eq!(a, b2);
    let (c, _) = train_layer(x.view(), y.view(), 4, &TrainConfig { seed: 1, ..cfg }).expect("training");
    assert_ne!(a, c);
}

#[test]
fn bad_training_inputs_are_errors() {
    let x = inputs(10, SEED_INPUTS);
    let y = Array2::from_elem((9, N), false);
    assert!(train_layer(x.view(), y.view(), 4, &TrainConfig::default()).is_err());
    let y = Array2::from_elem((10, N), false);
    assert!(train_layer(x.view(), y.view(), 0, &TrainConfig::default()).is_err());
    assert!(train_layer(x.view(), y.view(), 4, &TrainConfig { epochs: 0, ..TrainConfig::default() }).is_err());
    // No active neuron at all is not an error: the predictor then predicts none.
    let (lr, _) = train_layer(x.view(), y.view(), 4, &TrainConfig::default()).expect("all-negative labels");
    assert!(lr.logits(x.view()).iter().all(|&z| z < 0.0));
}

#[test]
fn magnitude_weighting_with_equal_magnitudes_is_count_weighting() {
    use predictor::train::{train_layer_weighted, Positives};
    let x = inputs(600, SEED_INPUTS);
    let (w, b) = plant();
    let y = planted_labels(&x, &w, &b);
    let cfg = TrainConfig { epochs: 2, ..TrainConfig::default() };
    let (count, _) = train_layer(x.view(), y.view(), 4, &cfg).expect("training");
    let mag = Array2::from_elem(y.dim(), 2.0f32);
    let by_mag = TrainConfig { positives: Positives::Magnitude, ..cfg.clone() };
    let (weighted, _) = train_layer_weighted(x.view(), y.view(), Some(mag.view()), 4, &by_mag).expect("training");
    assert_eq!(count, weighted);
    assert!(train_layer_weighted(x.view(), y.view(), None, 4, &by_mag).is_err(), "magnitudes are required");
    let wrong = Array2::from_elem((5, N), 1.0f32);
    assert!(train_layer_weighted(x.view(), y.view(), Some(wrong.view()), 4, &by_mag).is_err());
}
