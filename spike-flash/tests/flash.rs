//! The flash-backed FFN against the dense engine on tiny synthetic models: a layout's resident model plus its
//! records read through a backend computes what the source model computes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use spike_flash::engine::flash::FlashFfn;
use spike_flash::engine::model::Model;
use spike_flash::engine::sparse::{all_rows, AllNeurons, NeuronSelector, Oracle};
use spike_flash::io::{open_backend, BackendKind, Fault, FaultyBackend, IoConfig};
use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind, RecordDType};
use spike_flash::model::bind::Source;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{self, SynthSpec};

fn convert(src: &Path, model: &Model, out: &Path, kind: LayoutKind, dtype: RecordDType) -> Arc<Layout> {
    layout::write(model, src, out, &ConvertOptions { kind, dtype, ..Default::default() }).unwrap();
    Arc::new(Layout::open(out).unwrap())
}

fn flash(lay: &Arc<Layout>, backend: BackendKind, selector: Box<dyn NeuronSelector + Send>) -> (Model, FlashFfn) {
    let model = Model::from_layout(lay).unwrap();
    let io = open_backend(backend, &lay.ffn_path(), &IoConfig::default()).unwrap();
    let ffn = FlashFfn::new(&model, lay.clone(), io, selector).unwrap();
    (model, ffn)
}

/// Largest logit difference relative to the logit range.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let (lo, hi) = b.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / (hi - lo)
}

const TOKENS: [u32; 12] = [1, 5, 9, 2, 33, 7, 7, 18, 3, 40, 11, 6];

/// Prompt (many tokens at once) and decode (one at a time) logits of `ffn` and of the dense engine.
fn compare(dense: &Model, model: &Model, ffn: &mut FlashFfn) -> (f32, f32) {
    let mut s1 = dense.new_state(32);
    let want = dense.forward(&mut s1, &TOKENS, true).unwrap();
    let mut s2 = model.new_state(32);
    let got = model.forward_with(&mut s2, &TOKENS, 0, ffn).unwrap();
    let prompt = rel_diff(&got, &want);
    let mut s3 = model.new_state(32);
    let mut decode = 0.0f32;
    let v = dense.config().vocab_size;
    for (i, &t) in TOKENS.iter().enumerate() {
        let g = model.forward_with(&mut s3, &[t], 0, ffn).unwrap();
        decode = decode.max(rel_diff(&g, &want[i * v..(i + 1) * v]));
    }
    (prompt, decode)
}

/// A Llama model with f32 weights: records hold the exact values, so flash equals dense up to summation order,
/// for bundled and split layouts and every backend.
#[test]
fn llama_f32_layout_all_neurons_equals_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 11)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let f = dense.config().d_ffn;
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        let lay = convert(&src, &dense, &tmp.path().join(format!("{kind:?}.spike")), kind, RecordDType::Source);
        for backend in BackendKind::ALL {
            let (model, mut ffn) = flash(&lay, backend, Box::new(AllNeurons { d_ffn: f }));
            let (p, d) = compare(&dense, &model, &mut ffn);
            assert!(p < 1e-5 && d < 1e-5, "{kind:?} {backend}: prompt {p}, decode {d}");
            assert_eq!(ffn.stats.neurons_read, ffn.stats.calls * f as u64, "all records read once per call");
            assert!(ffn.backend().stats().bytes_read > 0);
        }
    }
}

/// Q4_1 records: gate and up rows are the source's bytes; down columns are re-quantized to Q4_1 along the other
/// axis, so flash differs from dense by that error only: small against the logit range.
#[test]
fn llama_q4_1_layout_stays_close_to_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::Q4_1, 12)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let f = dense.config().d_ffn;
    let out = tmp.path().join("q.spike");
    let opts = ConvertOptions { column_dtype: Some(RecordDType::Q4_1), ..Default::default() };
    layout::write(&dense, &src, &out, &opts).unwrap();
    let lay = Arc::new(Layout::open(&out).unwrap());
    assert_eq!(lay.column_dtype(), DType::Q4_1);
    let (model, mut ffn) = flash(&lay, BackendKind::Pool, Box::new(AllNeurons { d_ffn: f }));
    let (p, d) = compare(&dense, &model, &mut ffn);
    assert!(p < 0.05 && d < 0.05, "prompt {p}, decode {d}");
}

/// The default for a Q4_1 source: Q4_1 rows (the source's bytes) and q8_0 down columns, bundled and split
/// (sections with 40- and 68-byte records). Flash reads each part in its own type and stays close to dense,
/// several times closer than with Q4_1 columns, for prompts (batched columns) and decoding (one token).
#[test]
fn llama_q4_1_rows_q8_0_columns_stay_close_to_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::Q4_1, 12)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let f = dense.config().d_ffn;
    let q4 = tmp.path().join("q4.spike");
    layout::write(&dense, &src, &q4, &ConvertOptions { column_dtype: Some(RecordDType::Q4_1), ..Default::default() })
        .unwrap();
    let (model, mut ffn) =
        flash(&Arc::new(Layout::open(&q4).unwrap()), BackendKind::Pool, Box::new(AllNeurons { d_ffn: f }));
    let (p4, d4) = compare(&dense, &model, &mut ffn);
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        let lay = convert(&src, &dense, &tmp.path().join(format!("{kind:?}.spike")), kind, RecordDType::Source);
        assert_eq!((lay.dtype(), lay.column_dtype()), (DType::Q4_1, DType::Q8_0));
        assert_eq!((lay.row_bytes(), lay.column_bytes(), lay.payload_bytes()), (40, 68, 148));
        let (model, mut ffn) = flash(&lay, BackendKind::Pool, Box::new(AllNeurons { d_ffn: f }));
        let (p, d) = compare(&dense, &model, &mut ffn);
        assert!(p < 0.05 && d < 0.05, "{kind:?}: prompt {p}, decode {d}");
        // A q8_0 step is amax / 127, a Q4_1 step (max - min) / 15 >= amax / 15: the column error shrinks.
        assert!(4.0 * p < p4 && 4.0 * d < d4, "{kind:?}: q8_0 columns {p}/{d} vs q4_1 columns {p4}/{d4}");
        // Every neuron once per call, 148 bytes each: split, in three requests per neuron; bundled, where a
        // layer's records are one run, in one read of the aligned range around them, straight into the staging
        // buffer.
        let (io, calls) = (ffn.backend().stats(), ffn.stats.calls);
        let records = calls * f as u64 * 148;
        if kind == LayoutKind::Split {
            assert_eq!((io.bytes_requested, io.requests), (records, calls * f as u64 * 3));
        } else {
            assert!(io.bytes_requested >= records && io.bytes_requested < records + calls * 2 * 4096, "{io:?}");
            assert_eq!(io.requests, calls, "{io:?}");
        }
    }
}

/// OPT (ReLU) with the oracle's active sets (threshold 0): the skipped neurons are exactly zero, so flash mode
/// equals the dense engine within 1e-5, while reading only the active neurons' records.
#[test]
fn opt_relu_oracle_flash_equals_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("opt");
    synth::write_hf_checkpoint(&SynthSpec::tiny_opt(5), &ck).unwrap();
    let dense = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let n_layers = dense.config().n_layers;
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        let lay = convert(&ck, &dense, &tmp.path().join(format!("{kind:?}.spike")), kind, RecordDType::F32);
        let oracle = Oracle::new(&dense, all_rows(&dense).unwrap(), vec![0.0; n_layers]).unwrap();
        let (model, mut ffn) = flash(&lay, BackendKind::Uring, Box::new(oracle));
        let (p, d) = compare(&dense, &model, &mut ffn);
        assert!(p < 1e-5 && d < 1e-5, "{kind:?}: prompt {p}, decode {d}");
        let s = ffn.stats;
        assert!(s.neurons_active < s.token_layers * dense.config().d_ffn as u64, "ReLU leaves neurons inactive");
    }
}

/// A failing read surfaces as an error naming the layer and the file offset, not as zeros.
#[test]
fn a_failing_read_names_layer_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 13)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let f = dense.config().d_ffn;
    let lay = convert(&src, &dense, &tmp.path().join("b.spike"), LayoutKind::Bundled, RecordDType::Source);
    let model = Model::from_layout(&lay).unwrap();
    // Neuron 3 of layer 1.
    let mut reqs = Vec::new();
    lay.neuron_reads(1, 3, 0, &mut reqs).unwrap();
    let at = reqs[0].offset;
    let inner = open_backend(BackendKind::Pool, &lay.ffn_path(), &IoConfig::default()).unwrap();
    let io = Box::new(FaultyBackend::new(inner, Fault::Covering(at)));
    let mut ffn = FlashFfn::new(&model, lay.clone(), io, Box::new(AllNeurons { d_ffn: f })).unwrap();
    let mut state = model.new_state(8);
    let e = model.forward_with(&mut state, &[1, 2], 0, &mut ffn).unwrap_err().to_string();
    // Every neuron is read: the layer's records are one run, read as the aligned range around them, and the
    // error names that read, which covers the record.
    let number = |after: &str| -> u64 {
        let rest = &e[e.find(after).unwrap_or_else(|| panic!("no `{after}` in: {e}")) + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let (offset, len) = (number("at offset "), number("read of "));
    assert!(e.contains("layer 1") && e.contains("ffn.bin") && offset <= at && at < offset + len, "{e}");
}

/// The resident model refuses to run its FFN in DRAM: it is not there.
#[test]
fn the_resident_model_has_no_dense_ffn() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 14)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let lay = convert(&src, &dense, &tmp.path().join("b.spike"), LayoutKind::Bundled, RecordDType::Source);
    let model = Model::from_layout(&lay).unwrap();
    let mut state = model.new_state(8);
    let e = model.forward(&mut state, &[1], false).unwrap_err().to_string();
    assert!(e.contains("on flash"), "{e}");
}

/// A neuron order (here a seeded shuffle per layer) is stored in the manifest; every neuron reads back the same
/// bytes as without it, and flash mode over the reordered layout still equals dense.
#[test]
fn reordered_layouts_read_the_same_neurons() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 15)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let (n_layers, f) = (dense.config().n_layers, dense.config().d_ffn);
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let order: Vec<Vec<u32>> = (0..n_layers)
        .map(|_| {
            let mut o: Vec<u32> = (0..f as u32).collect();
            o.shuffle(&mut rng);
            o
        })
        .collect();
    let plain = convert(&src, &dense, &tmp.path().join("plain.spike"), LayoutKind::Bundled, RecordDType::Source);
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        let out = tmp.path().join(format!("ordered-{kind:?}.spike"));
        let opts = ConvertOptions { kind, order: Some(order.clone()), ..Default::default() };
        layout::write(&dense, &src, &out, &opts).unwrap();
        let lay = Arc::new(Layout::open(&out).unwrap());
        lay.verify().unwrap();
        assert_eq!(lay.manifest().layers[1].order.as_ref(), Some(&order[1]));
        for l in 0..n_layers {
            for n in 0..f {
                let a = plain.decode_neuron(&plain.neuron_record(l, n).unwrap()).unwrap();
                let b = lay.decode_neuron(&lay.neuron_record(l, n).unwrap()).unwrap();
                assert_eq!(a, b, "{kind:?} layer {l} neuron {n}");
            }
        }
        // Position 0 of layer 0 holds neuron order[0][0].
        let mut reqs = Vec::new();
        lay.neuron_reads(0, order[0][0] as usize, 0, &mut reqs).unwrap();
        assert_eq!(reqs[0].offset, lay.manifest().layers[0].sections[0].offset);
        let (model, mut ffn) = flash(&lay, BackendKind::Pool, Box::new(AllNeurons { d_ffn: f }));
        let (p, d) = compare(&dense, &model, &mut ffn);
        assert!(p < 1e-5 && d < 1e-5, "{kind:?}: prompt {p}, decode {d}");
    }
    // Not a permutation, or the wrong number of layers: refused before anything is written.
    let mut bad = order.clone();
    bad[1][0] = bad[1][1];
    for (o, want) in [(bad, "not a permutation"), (order[..1].to_vec(), "lists 1 layers")] {
        let out = tmp.path().join("bad.spike");
        let opts = ConvertOptions { order: Some(o), ..Default::default() };
        let e = layout::write(&dense, &src, &out, &opts).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(!out.exists());
    }
}

/// Caches of `spec` for every layer, whose hot list is the neurons from the last to the first.
fn caches(spec: &str, lay: &Layout, slots: usize) -> Vec<spike_flash::cache::LayerCache> {
    caches_with(spec, lay, slots, (0..lay.manifest().model.d_ffn as u32).rev().collect())
}

fn caches_with(spec: &str, lay: &Layout, slots: usize, hot: Vec<u32>) -> Vec<spike_flash::cache::LayerCache> {
    let spec: spike_flash::cache::PolicySpec = spec.parse().unwrap();
    let m = lay.manifest();
    (0..m.layers.len())
        .map(|_| {
            spike_flash::cache::LayerCache::new(spec, m.model.d_ffn, lay.payload_bytes(), slots, Some(&hot)).unwrap()
        })
        .collect()
}

/// OPT (ReLU) with the oracle's active sets through every cache policy, small and large: the logits equal the
/// dense engine's within 1e-5, token by token; the caches save reads.
#[test]
fn opt_relu_oracle_with_every_cache_policy_equals_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("opt");
    synth::write_hf_checkpoint(&SynthSpec::tiny_opt(6), &ck).unwrap();
    let dense = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let (n_layers, f) = (dense.config().n_layers, dense.config().d_ffn);
    let lay = convert(&ck, &dense, &tmp.path().join("opt.spike"), LayoutKind::Bundled, RecordDType::F32);
    let rows = all_rows(&dense).unwrap();
    let specs = ["none", "window:0", "window:1", "window:8", "lru", "lfu", "all", "hot:0.25", "hot:0.25+window:2"];
    for spec in specs {
        for slots in [f / 4, f] {
            let oracle = Oracle::new(&dense, rows.clone(), vec![0.0; n_layers]).unwrap();
            let (model, mut ffn) = flash(&lay, BackendKind::Pool, Box::new(oracle));
            ffn.set_caches(caches(spec, &lay, if spec == "all" { f } else { slots })).unwrap();
            for (all_cached, overlap) in [(false, false), (true, false), (false, true)] {
                let opts = spike_flash::engine::flash::FlashOptions {
                    compute_all_cached: all_cached,
                    overlap,
                    ..Default::default()
                };
                ffn.set_options(opts).unwrap();
                let (p, d) = compare(&dense, &model, &mut ffn);
                assert!(p < 1e-5 && d < 1e-5, "{spec} slots {slots} {opts:?}: prompt {p}, decode {d}");
            }
            let s = ffn.cache_stats();
            match spec {
                "none" => assert_eq!(s.hits, 0, "{spec}"),
                "all" => assert_eq!(s.misses, 0, "{spec}: everything was loaded up front"),
                "window:0" => {}
                _ => assert!(s.hits > 0, "{spec} slots {slots}: {s:?}"),
            }
        }
    }
}

/// Greedy decoding of a SwiGLU model with a calibrated-threshold oracle: the window length changes what is
/// read, never the tokens.
#[test]
fn window_sizes_change_reads_not_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::Q8_0, 16)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let (n_layers, f) = (dense.config().n_layers, dense.config().d_ffn);
    let lay = convert(&src, &dense, &tmp.path().join("b.spike"), LayoutKind::Bundled, RecordDType::Source);
    let rows = all_rows(&dense).unwrap();
    let mut runs = Vec::new();
    for spec in ["window:0", "window:1", "window:8"] {
        // Threshold 0.01 leaves a fraction of each layer's neurons inactive.
        let oracle = Oracle::new(&dense, rows.clone(), vec![0.01; n_layers]).unwrap();
        let (model, mut ffn) = flash(&lay, BackendKind::Uring, Box::new(oracle));
        ffn.set_caches(caches(spec, &lay, f)).unwrap();
        let mut state = model.new_state(64);
        let mut logits = model.forward_with(&mut state, &TOKENS[..4], 3, &mut ffn).unwrap();
        let mut toks = Vec::new();
        for _ in 0..40 {
            let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            toks.push(next);
            logits = model.forward_with(&mut state, &[next], 0, &mut ffn).unwrap();
        }
        let s = ffn.stats;
        assert!(s.neurons_active < s.token_layers * f as u64, "the oracle leaves neurons out");
        runs.push((spec, toks, s.neurons_read));
    }
    assert_eq!(runs[0].1, runs[1].1, "window:0 vs window:1");
    assert_eq!(runs[0].1, runs[2].1, "window:0 vs window:8");
    assert!(
        runs[2].2 < runs[1].2 && runs[1].2 < runs[0].2,
        "longer windows read less: {:?}",
        runs.iter().map(|r| r.2).collect::<Vec<_>>()
    );
}

/// Overlapped reads (the next layer's neurons predicted from this layer's input, read on a second thread)
/// change what is read when, never the result: same tokens as without; a failing prefetch still names its
/// layer.
#[test]
fn overlapped_reads_keep_the_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::Q8_0, 17)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let (n_layers, f) = (dense.config().n_layers, dense.config().d_ffn);
    let lay = convert(&src, &dense, &tmp.path().join("b.spike"), LayoutKind::Bundled, RecordDType::Source);
    let rows = all_rows(&dense).unwrap();
    let mut runs = Vec::new();
    for (spec, overlap) in [("none", false), ("none", true), ("window:2", true)] {
        let oracle = Oracle::new(&dense, rows.clone(), vec![0.01; n_layers]).unwrap();
        let (model, mut ffn) = flash(&lay, BackendKind::Uring, Box::new(oracle));
        ffn.set_caches(caches(spec, &lay, f)).unwrap();
        ffn.set_options(spike_flash::engine::flash::FlashOptions { overlap, ..Default::default() }).unwrap();
        let mut state = model.new_state(64);
        let mut logits = model.forward_with(&mut state, &TOKENS[..4], 3, &mut ffn).unwrap();
        let mut toks = Vec::new();
        for _ in 0..30 {
            let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            toks.push(next);
            logits = model.forward_with(&mut state, &[next], 0, &mut ffn).unwrap();
        }
        runs.push((spec, overlap, toks, ffn.snapshot().io.requests));
    }
    assert_eq!(runs[0].2, runs[1].2, "overlap changed the tokens");
    assert_eq!(runs[0].2, runs[2].2, "overlap with a window changed the tokens");
    assert!(runs[1].3 > 0);
}

/// Every neuron selected (the naive and hybrid rows), with overlapped reads (the prefetch reads exactly the
/// records the next layer misses, and its buffer is handed over without a copy) and without (the missing run
/// of records is read straight into the staging buffer): the logits equal the dense engine's, with no cache, a
/// pinned hot set, and every neuron cached.
#[test]
fn overlap_with_every_neuron_selected_equals_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("opt");
    synth::write_hf_checkpoint(&SynthSpec::tiny_opt(7), &ck).unwrap();
    let dense = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let f = dense.config().d_ffn;
    let lay = convert(&ck, &dense, &tmp.path().join("opt.spike"), LayoutKind::Bundled, RecordDType::F32);
    // `hot:0.25 first` pins the first neurons of each layer, so the missing run starts past an alignment
    // boundary (the hot-first layouts' hybrid row).
    let specs = ["none", "hot:0.25", "hot:0.25 first", "all"];
    for (name, overlap) in specs.into_iter().flat_map(|s| [(s, true), (s, false)]) {
        let selector = Box::new(spike_flash::engine::sparse::AllNeurons { d_ffn: f });
        let (model, mut ffn) = flash(&lay, BackendKind::Uring, selector);
        let spec = name.trim_end_matches(" first");
        let hot = match name.ends_with(" first") {
            true => (0..f as u32).collect(),
            false => (0..f as u32).rev().collect(),
        };
        ffn.set_caches(caches_with(spec, &lay, f, hot)).unwrap();
        ffn.set_options(spike_flash::engine::flash::FlashOptions { overlap, ..Default::default() }).unwrap();
        let (p, d) = compare(&dense, &model, &mut ffn);
        assert!(p < 1e-5 && d < 1e-5, "{name}, overlap {overlap}: prompt {p}, decode {d}");
        let s = ffn.stats;
        let expect_reads = spec != "all";
        assert_eq!(s.neurons_read > 0, expect_reads, "{spec}: {s:?}");
        if expect_reads && !overlap {
            // What is missing is one run of records (all of a layer, or all after the pinned ones): one read of
            // the aligned range per call, straight into the staging buffer, whose rows then start past the
            // alignment padding.
            assert_eq!(ffn.backend().stats().requests, s.calls, "{spec}");
        }
    }
}

/// A reordered layout (each layer's neurons stored from the last to the first) with every neuron selected: the
/// records missing from the cache are one run in the file, but not in neuron order, so they are read as one
/// aligned range and taken in file order. OPT's per-neuron fc1 bias would expose a row computed as another
/// neuron.
#[test]
fn runs_read_straight_into_staging_keep_their_neurons() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("opt");
    synth::write_hf_checkpoint(&SynthSpec::tiny_opt(8), &ck).unwrap();
    let dense = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let (n_layers, f) = (dense.config().n_layers, dense.config().d_ffn);
    let order: Vec<Vec<u32>> = vec![(0..f as u32).rev().collect(); n_layers];
    let out = tmp.path().join("reversed.spike");
    let opts = ConvertOptions { order: Some(order), dtype: RecordDType::F32, ..Default::default() };
    layout::write(&dense, &ck, &out, &opts).unwrap();
    let lay = Arc::new(Layout::open(&out).unwrap());
    // hot:0.25 pins the last neurons, which this layout stores first: the run read starts past them.
    for spec in ["none", "hot:0.25"] {
        let (model, mut ffn) = flash(&lay, BackendKind::Uring, Box::new(AllNeurons { d_ffn: f }));
        ffn.set_caches(caches(spec, &lay, f)).unwrap();
        let (p, d) = compare(&dense, &model, &mut ffn);
        assert!(p < 1e-5 && d < 1e-5, "{spec}: prompt {p}, decode {d}");
        assert_eq!(ffn.backend().stats().requests, ffn.stats.calls, "{spec}: one read per call");
    }
}
