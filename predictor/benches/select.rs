//! One token's selection at SmolLM2-135M's shapes (d_model 576, d_ffn 1536) for the ranks the CLI offers:
//! the predictor's cost per token and layer, next to the FFN it decides for.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2};
use predictor::lowrank::LowRank;
use predictor::ModelIdentity;
use predictor::{LayerPredictor, Predictor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::engine::sparse::NeuronSelector;
use spike_flash::model::config::Activation;

const D: usize = 576;
const N: usize = 1536;

fn predictor(rank: usize) -> Predictor {
    let mut rng = StdRng::seed_from_u64(7);
    let a = Array2::from_shape_fn((D, rank), |_| rng.gen_range(-0.1f32..0.1));
    let b = Array2::from_shape_fn((rank, N), |_| rng.gen_range(-0.1f32..0.1));
    let bias = Array1::zeros(N);
    let weights = LowRank::new(a, b, bias).expect("shapes").to_compact();
    let id = ModelIdentity { sha256: String::new(), n_layers: 1, d_model: D, d_ffn: N, activation: Activation::Silu };
    Predictor::new(id, 0.95, vec![LayerPredictor { weights, decision_threshold: 0.0, act_threshold: 0.0 }])
        .expect("consistent")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("select_one_token");
    let mut rng = StdRng::seed_from_u64(8);
    let x: Vec<f32> = (0..D).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    for rank in [64usize, 128, 256] {
        let mut p = predictor(rank);
        let mut active = Vec::new();
        g.throughput(Throughput::Elements(((D + N) * rank) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(rank), &rank, |bch, _| {
            bch.iter(|| p.select(0, &x, &mut active).expect("select"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
