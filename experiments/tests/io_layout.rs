//! Reading a layout's neuron records through the I/O backends: the flash loop's read sets bring back exactly
//! what `Layout::neuron_record` reads, the layout benchmark counts bytes consistently for every backend, and
//! the cost model's validation on layout sets runs end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use experiments::cost_validation::{neuron_read_set, random_neurons, validate, ReadSets};
use experiments::device::{run_profile_file, ProfileConfig};
use experiments::layout_bench::{run_layout_bench, LayoutBenchConfig};
use rand::SeedableRng;
use spike_flash::cost::CostModel;
use spike_flash::engine::model::Model;
use spike_flash::io::{open_backend, AlignedBuf, BackendKind, IoConfig};
use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind, FFN_FILE};
use spike_flash::model::bind::Source;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{self, SynthSpec};

/// A tiny Llama model (seed 11) converted with `kind`: 2 layers of 128 neurons.
fn tiny_layout(dir: &Path, kind: LayoutKind) -> PathBuf {
    shaped_layout(dir, kind, &SynthSpec::tiny_gguf(DType::Q4_1, 11))
}

/// A Llama model of `shape` (seed 11) converted with `kind`.
fn shaped_layout(dir: &Path, kind: LayoutKind, shape: &SynthSpec) -> PathBuf {
    let bytes = synth::llama_gguf(shape).unwrap();
    let path = dir.join("tiny.gguf");
    fs::write(&path, bytes).unwrap();
    let model = Model::from_source(&Source::open(&path).unwrap()).unwrap();
    let out = dir.join(format!("tiny-{kind:?}.spike"));
    layout::write(&model, &path, &out, &ConvertOptions { kind, ..Default::default() }).unwrap();
    out
}

#[test]
fn read_sets_bring_back_the_records() {
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::open(&tiny_layout(tmp.path(), kind)).unwrap();
        let f = layout.manifest().model.d_ffn;
        let payload = layout.payload_bytes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for backend in BackendKind::ALL {
            let mut b = open_backend(backend, &layout.dir().join(FFN_FILE), &IoConfig::default()).unwrap();
            for (layer, count) in [(0, 1), (1, 17), (0, f)] {
                let neurons = random_neurons(&mut rng, f, count);
                assert_eq!(neurons.len(), count);
                assert!(neurons.windows(2).all(|w| w[0] < w[1]), "ascending and distinct");
                let reqs = neuron_read_set(&layout, layer, &neurons).unwrap();
                let mut buf = AlignedBuf::new(count * payload).unwrap();
                b.read_batch(&reqs, &mut buf).unwrap();
                for (k, &n) in neurons.iter().enumerate() {
                    let want = layout.neuron_record(layer, n as usize).unwrap();
                    assert_eq!(want.len(), payload);
                    let got = &buf.as_slice()[k * payload..(k + 1) * payload];
                    assert!(got == want.as_slice(), "{kind:?} {backend}: layer {layer} neuron {n}");
                }
            }
        }
    }
}

#[test]
fn layout_bench_counts_bytes_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::open(&tiny_layout(tmp.path(), LayoutKind::Bundled)).unwrap();
    let m = layout.manifest();
    let (layers, f, payload) = (m.layers.len(), m.model.d_ffn, layout.payload_bytes());
    let cfg = LayoutBenchConfig { fractions: vec![0.1, 1.0], tokens: 3, depth: 4, ..Default::default() };
    let mut calls = 0;
    let rows = run_layout_bench(&layout, &cfg, None, &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, 3);
    assert_eq!(rows.len(), 3 * 2);
    for r in &rows {
        let count = ((r.fraction * f as f64).round() as usize).max(1);
        assert_eq!(r.neurons_per_batch, count);
        assert_eq!(r.batches, (3 * layers) as u64);
        assert_eq!(r.requests, (3 * layers * count) as u64, "{r:?}");
        assert_eq!(r.bytes_useful, (3 * layers * count * payload) as u64, "{r:?}");
        assert!(r.seconds > 0.0 && r.useful_mib_s > 0.0);
        if r.backend != "mmap" {
            assert!(!r.page_cache);
            assert!(r.read_amplification >= 1.0, "{r:?}");
            assert_eq!(r.bytes_read % 4096, 0, "aligned device reads");
            // Reading every record reads the layer's whole section (rounded to the alignment), once.
            if r.fraction == 1.0 {
                let section: u64 = m.layers.iter().map(|l| l.sections[0].len).sum();
                assert!(r.bytes_read >= (3 * layers * f * payload) as u64 && r.bytes_read <= 3 * section, "{r:?}");
            }
        } else {
            assert!(r.page_cache && r.predicted_seconds.is_none());
        }
    }
    let uring = rows.iter().filter(|r| r.backend == "uring").map(|r| r.bytes_read).collect::<Vec<_>>();
    let pool = rows.iter().filter(|r| r.backend == "pool").map(|r| r.bytes_read).collect::<Vec<_>>();
    assert_eq!(uring, pool, "both O_DIRECT backends plan the same reads");
    assert!(LayoutBenchConfig { fractions: vec![1.5], ..Default::default() }.validated().is_err());
}

#[test]
fn validation_on_layout_sets_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    // 2 layers of 1024 neurons of 480 bytes: an ffn.bin of about 1 MiB, 16 times the profile's largest chunk.
    let shape = SynthSpec::tiny_gguf(DType::Q4_1, 11).with_model(|m| (m.d_model, m.d_ffn) = (256, 1024));
    let layout = Layout::open(&shaped_layout(tmp.path(), LayoutKind::Bundled, &shape)).unwrap();
    let ffn = layout.dir().join(FFN_FILE);
    let cfg = ProfileConfig {
        chunks: vec![4096, 16384],
        depths: vec![1, 8],
        seconds_per_point: 0.01,
        rounds: 1,
        ..Default::default()
    };
    let profile = run_profile_file(&ffn, &cfg, &mut |_, _| {}).unwrap();
    let model = CostModel::new(&profile, &IoConfig::default()).unwrap();
    let mut backends: Vec<(usize, Box<dyn spike_flash::io::ReadBackend>)> = [1usize, 8]
        .iter()
        .map(|&d| {
            (d, open_backend(BackendKind::Uring, &ffn, &IoConfig { queue_depth: d, ..IoConfig::default() }).unwrap())
        })
        .collect();
    let rows = validate(&mut backends, &model, ReadSets::Layout(&layout), 3, 2, 9).unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert!(r.measured_min_ms <= r.measured_ms && r.measured_ms <= r.measured_max_ms, "{r:?}");
        assert!(r.first_ms >= r.measured_min_ms && r.first_ms <= r.measured_max_ms, "{r:?}");
        assert!(r.predicted_ms > 0.0 && r.rel_err.is_finite() && r.reads >= 1, "{r:?}");
    }
}
