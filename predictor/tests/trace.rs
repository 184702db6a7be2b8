//! Trace files: a round trip through the dense engine of a tiny synthetic model, the document split, and
//! malformed or mismatched files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use predictor::calibrate::Thresholds;
use predictor::trace::{record, ModelIdentity, RecordConfig, Trace, TraceWriter};
use predictor::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::engine::model::{ActivationSink, DenseFfn, Model};
use spike_flash::model::config::Activation;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{llama_gguf, SynthSpec};

const SEED_MODEL: u64 = 0x7ACE;
const SEED_DOCS: u64 = 0xD0C5;
const SEED_SYNTH_TRACE: u64 = 0x5717;
const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn sha_a() -> String {
    SHA_A[..64].to_string()
}

/// Collects every record the dense FFN reports.
#[derive(Default)]
struct Collect {
    /// Per layer, per token: (x, neurons).
    layers: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
}

impl ActivationSink for Collect {
    fn record(&mut self, layer: usize, x: &[f32], neurons: &[f32]) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, Vec::new);
        }
        self.layers[layer].push((x.to_vec(), neurons.to_vec()));
    }
}

fn tiny_model() -> (PathBuf, tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    let shape = SynthSpec::tiny_gguf(DType::F32, SEED_MODEL).with_model(|m| m.n_layers = 3);
    std::fs::write(&path, llama_gguf(&shape).expect("synthetic model")).expect("write");
    let model = Model::from_gguf(Arc::new(GgufFile::open(&path).expect("opens"))).expect("binds");
    (path, dir, model)
}

fn random_docs(vocab: usize, lens: &[usize]) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(SEED_DOCS);
    lens.iter().map(|&n| (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()).collect()
}

/// Within f16 rounding of `r` (relative 2^-11, plus subnormal slack).
fn close_f16(got: f32, r: f32) -> bool {
    (got - r).abs() <= r.abs() * (1.0 / 2048.0) + 1e-7
}

#[test]
fn trace_round_trip_equals_the_dense_engine_within_f16_rounding() {
    let (path, dir, model) = tiny_model();
    let identity = ModelIdentity::of(&path, model.config()).expect("identity");
    assert_eq!(identity.sha256, spike_flash::model::fetch::sha256_file(&path).expect("sha"));
    let docs = random_docs(model.config().vocab_size, &[23, 7, 40]);
    let ctx = 16;
    let out = dir.path().join("t.trace");
    let mut w = TraceWriter::create(&out, identity.clone(), ctx, "tiny").expect("writer");
    let max_tokens = 60; // cuts the last document short
    let n = record(&model, docs.clone(), RecordConfig { ctx, max_tokens }, &mut w, &mut |_| {}).expect("record");
    assert_eq!(n, max_tokens);
    let summary = w.finish().expect("finish");
    assert_eq!((summary.n_tokens, summary.n_docs, summary.n_segments), (60, 3, 2 + 1 + 2));
    assert_eq!(summary.bytes, std::fs::metadata(&out).expect("meta").len());

    // The reference: the same segments through the dense engine with a collecting sink.
    let mut reference = Collect::default();
    let mut state = model.new_state(ctx);
    let mut seen = 0;
    let mut ref_tokens = Vec::new();
    for doc in &docs {
        for chunk in doc.chunks(ctx) {
            let take = chunk.len().min(max_tokens - seen);
            if take == 0 {
                break;
            }
            state.reset();
            let mut ffn = DenseFfn::with_sink(&mut reference);
            model.forward_with(&mut state, &chunk[..take], take - 1, &mut ffn).expect("forward");
            seen += take;
            ref_tokens.extend_from_slice(&chunk[..take]);
        }
    }

    let trace = Trace::open(&out).expect("opens");
    let m = trace.meta();
    assert_eq!((m.n_layers, m.d_model, m.d_ffn, m.n_tokens, m.ctx), (3, 64, 128, 60, ctx));
    assert_eq!(m.activation, Activation::Silu);
    assert_eq!(m.tokens, ref_tokens);
    assert_eq!(m.label, "tiny");
    let segs: Vec<(usize, usize, usize)> = m.segments.iter().map(|s| (s.start, s.len, s.doc)).collect();
    assert_eq!(segs, vec![(0, 16, 0), (16, 7, 0), (23, 7, 1), (30, 16, 2), (46, 14, 2)]);
    assert_eq!(trace.documents(), vec![0..23, 23..30, 30..60]);
    trace.check_model(&identity).expect("same model");
    for l in 0..3 {
        let (x, a) = trace.layer(l).expect("layer");
        assert_eq!(x.dim(), (60, 64));
        assert_eq!(a.dim(), (60, 128));
        for (t, (rx, rn)) in reference.layers[l].iter().enumerate() {
            for (j, &v) in rx.iter().enumerate() {
                assert!(close_f16(x[[t, j]], v), "layer {l} token {t} input {j}: {} vs {v}", x[[t, j]]);
                assert_eq!(x[[t, j]], f16::from_f32(v).to_f32());
            }
            for (i, &v) in rn.iter().enumerate() {
                assert!(close_f16(a[[t, i]], v.abs()), "layer {l} token {t} neuron {i}: {} vs {v}", a[[t, i]]);
            }
        }
    }
}

/// A trace of random magnitudes written without a model: documents of the given lengths, segments of `ctx`.
fn synthetic_trace(path: &Path, doc_lens: &[usize], ctx: usize, n_layers: usize, d_model: usize, d_ffn: usize) {
    let identity = ModelIdentity { sha256: sha_a(), n_layers, d_model, d_ffn, activation: Activation::Silu };
    let mut w = TraceWriter::create(path, identity, ctx, "synthetic").expect("writer");
    let mut rng = StdRng::seed_from_u64(SEED_SYNTH_TRACE);
    for &len in doc_lens {
        let mut first = true;
        let toks: Vec<u32> = (0..len as u32).collect();
        for seg in toks.chunks(ctx) {
            w.begin_segment(seg, first).expect("segment");
            first = false;
            for l in 0..n_layers {
                for _ in seg {
                    let x: Vec<f32> = (0..d_model).map(|_| rng.gen_range(-2.0..2.0)).collect();
                    // Heavy-tailed magnitudes, layer-dependent scale.
                    let a: Vec<f32> =
                        (0..d_ffn).map(|_| rng.gen_range(-1.0f32..1.0).powi(3) * (l + 1) as f32).collect();
                    w.record(l, &x, &a);
                }
            }
        }
    }
    w.finish().expect("finish");
}

fn err_text(e: &Error) -> String {
    e.to_string()
}

#[test]
fn the_document_split_never_shares_a_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("s.trace");
    let lens: Vec<usize> = (0..37).map(|i| 3 + (i * 7) % 29).collect();
    synthetic_trace(&p, &lens, 8, 1, 4, 8);
    let trace = Trace::open(&p).expect("opens");
    let n = trace.meta().n_tokens;
    assert_eq!(n, lens.iter().sum::<usize>());
    let docs = trace.documents();
    assert_eq!(docs.len(), lens.len());
    let doc_of = |t: usize| docs.iter().position(|r| r.contains(&t)).expect("every token has a document");
    for seed in 0..20u64 {
        for frac in [0.0, 0.1, 0.2, 0.5, 0.9] {
            let (train, valid) = trace.split(frac, seed);
            assert_eq!(train.len() + valid.len(), n);
            assert!(train.windows(2).all(|w| w[0] < w[1]) && valid.windows(2).all(|w| w[0] < w[1]));
            let train_docs: std::collections::BTreeSet<usize> = train.iter().map(|&t| doc_of(t)).collect();
            let valid_docs: std::collections::BTreeSet<usize> = valid.iter().map(|&t| doc_of(t)).collect();
            assert!(train_docs.is_disjoint(&valid_docs), "seed {seed} frac {frac}");
            assert_eq!(train_docs.len() + valid_docs.len(), docs.len());
            // Whole documents: every token of a validation document is in validation.
            for &d in &valid_docs {
                assert!(docs[d].clone().all(|t| valid.binary_search(&t).is_ok()));
            }
            // Validation reaches the fraction, overshooting by at most one document.
            let max_doc = lens.iter().max().copied().unwrap_or(0);
            assert!(valid.len() as f64 >= frac * n as f64 - 1e-9, "seed {seed} frac {frac}");
            assert!((valid.len() as f64) < frac * n as f64 + max_doc as f64 + 1e-9);
            assert!(!train.is_empty());
        }
        assert_eq!(trace.split(0.2, seed), trace.split(0.2, seed), "deterministic");
    }
    assert_ne!(trace.split(0.3, 1).1, trace.split(0.3, 2).1, "the seed matters");
}

#[test]
fn a_one_document_trace_splits_by_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("one.trace");
    // One document of 100 tokens in segments of 8: a split by document would leave one side empty.
    synthetic_trace(&p, &[100], 8, 1, 4, 8);
    let trace = Trace::open(&p).expect("opens");
    assert_eq!(trace.documents().len(), 1);
    assert!(trace.meta().splits_by_segment());
    let segments: Vec<std::ops::Range<usize>> = trace.meta().segments.iter().map(|s| s.range()).collect();
    for seed in 0..10u64 {
        let (train, valid) = trace.split(0.2, seed);
        assert_eq!(train.len() + valid.len(), 100);
        assert!(!train.is_empty() && !valid.is_empty(), "seed {seed}");
        assert!(valid.len() >= 20, "seed {seed}: {} validation tokens", valid.len());
        // Whole segments on each side.
        for r in &segments {
            let in_valid = r.clone().filter(|t| valid.binary_search(t).is_ok()).count();
            assert!(in_valid == 0 || in_valid == r.len(), "seed {seed}: segment {r:?} split");
        }
    }
}

#[test]
fn truncated_flipped_and_versioned_traces_are_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.trace");
    synthetic_trace(&good, &[9, 5], 4, 2, 6, 10);
    let bytes = std::fs::read(&good).expect("read");
    let bad = dir.path().join("bad.trace");
    let name = bad.display().to_string();

    // Every truncation: shorter files never open.
    for len in 0..bytes.len() {
        std::fs::write(&bad, &bytes[..len]).expect("write");
        let e = Trace::open(&bad).expect_err("a truncated trace must not open");
        let msg = err_text(&e);
        assert!(msg.contains(&name), "{len}: {msg}");
        assert!(matches!(e, Error::Format { .. }), "{len}: {msg}");
    }
    // A trailing byte.
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).expect("write");
    assert!(err_text(&Trace::open(&bad).expect_err("trailing")).contains("trailing bytes"));

    // Every flipped bit: the header fails at open, a layer fails when read, naming the layer.
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
    let mut layer_errors = 0;
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        std::fs::write(&bad, &b).expect("write");
        match Trace::open(&bad) {
            Err(e) => {
                assert!(pos < header_len, "byte {pos} is in a layer section but failed at open: {e}");
                assert!(err_text(&e).contains(&name), "{e}");
            }
            Ok(t) => {
                assert!(pos >= header_len, "a flip at header byte {pos} went unnoticed");
                let errs: Vec<Error> =
                    (0..2).flat_map(|l| [t.layer_inputs(l).err(), t.layer_acts(l).err()]).flatten().collect();
                assert_eq!(errs.len(), 1, "byte {pos}: exactly one block must fail its checksum");
                let msg = err_text(&errs[0]);
                assert!(matches!(errs[0], Error::Checksum { .. }) && msg.contains(&name) && msg.contains("layer"));
                layer_errors += 1;
            }
        }
    }
    assert_eq!(layer_errors, bytes.len() - header_len);

    // Another version.
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&bad, &b).expect("write");
    let msg = err_text(&Trace::open(&bad).expect_err("version 2"));
    assert!(msg.contains(&name) && msg.contains("version 2"), "{msg}");

    // Not a trace at all.
    std::fs::write(&bad, vec![b'x'; 500]).expect("write");
    assert!(err_text(&Trace::open(&bad).expect_err("magic")).contains("magic"));
}

/// Rewrites the header's checksum after a patch, so the size checks themselves are what must catch it.
fn fix_header_crc(b: &mut [u8]) {
    let hlen = u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize;
    if hlen >= 4 && hlen <= b.len() {
        let crc = crc32c::crc32c(&b[..hlen - 4]);
        b[hlen - 4..hlen].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn hostile_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.trace");
    synthetic_trace(&good, &[9, 5], 4, 2, 6, 10);
    let bytes = std::fs::read(&good).expect("read");
    let bad = dir.path().join("hostile.trace");
    let patches: Vec<(usize, Vec<u8>)> = vec![
        (80, u64::MAX.to_le_bytes().to_vec()),        // n_tokens
        (80, (1u64 << 40).to_le_bytes().to_vec()),    // n_tokens, plausible but huge
        (88, (u64::MAX / 24).to_le_bytes().to_vec()), // n_segments
        (48, u32::MAX.to_le_bytes().to_vec()),        // n_layers
        (52, u32::MAX.to_le_bytes().to_vec()),        // d_model
        (56, 0u32.to_le_bytes().to_vec()),            // d_ffn = 0
        (96, u32::MAX.to_le_bytes().to_vec()),        // label_len
        (12, u32::MAX.to_le_bytes().to_vec()),        // header_len
        (64, b"swish\0\0\0".to_vec()),                // activation
    ];
    for (off, v) in patches {
        let mut b = bytes.clone();
        b[off..off + v.len()].copy_from_slice(&v);
        fix_header_crc(&mut b);
        std::fs::write(&bad, &b).expect("write");
        let e = Trace::open(&bad).expect_err("hostile header");
        assert!(err_text(&e).contains(&bad.display().to_string()), "{e}");
    }
    // A segment table with a gap (the first segment shortened by one), with a valid checksum.
    let mut b = bytes.clone();
    let hlen = u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize;
    let n_seg = u64::from_le_bytes(b[88..96].try_into().expect("8")) as usize;
    let first = hlen - 4 - 24 * n_seg;
    b[first + 8..first + 16].copy_from_slice(&3u64.to_le_bytes());
    fix_header_crc(&mut b);
    std::fs::write(&bad, &b).expect("write");
    let msg = err_text(&Trace::open(&bad).expect_err("gap"));
    assert!(msg.contains("segment 1"), "{msg}");
}

#[test]
fn a_trace_of_another_model_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("other.trace");
    synthetic_trace(&p, &[6], 4, 2, 6, 10);
    let trace = Trace::open(&p).expect("opens");
    let same = ModelIdentity { sha256: sha_a(), n_layers: 2, d_model: 6, d_ffn: 10, activation: Activation::Silu };
    trace.check_model(&same).expect("same model");
    let other_sha = ModelIdentity { sha256: "b".repeat(64), ..same.clone() };
    let msg = err_text(&trace.check_model(&other_sha).expect_err("sha"));
    assert!(msg.contains(&p.display().to_string()) && msg.contains("sha256"), "{msg}");
    let other_dims = ModelIdentity { d_ffn: 12, n_layers: 3, ..same.clone() };
    let e = trace.check_model(&other_dims).expect_err("dims");
    let msg = err_text(&e);
    assert!(matches!(e, Error::Mismatch { .. }));
    assert!(msg.contains("d_ffn is 10 in the file but 12") && msg.contains("n_layers is 2 in the file but 3"), "{msg}");
    let relu = ModelIdentity { activation: Activation::Relu, ..same };
    assert!(err_text(&trace.check_model(&relu).expect_err("act")).contains("activation"));
}

#[test]
fn calibration_hits_the_requested_sparsity_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("cal.trace");
    let lens: Vec<usize> = (0..20).map(|i| 20 + i * 3).collect();
    synthetic_trace(&p, &lens, 16, 3, 4, 64);
    let trace = Trace::open(&p).expect("opens");
    for s in [0.3, 0.5, 0.7, 0.9] {
        let t = Thresholds::calibrate(&trace, s, 0.25, 7, &mut |_| {}).expect("calibrate");
        assert_eq!(t.thresholds.len(), 3);
        for l in 0..3 {
            assert!((t.train_sparsity[l] - s).abs() < 0.005, "S {s} layer {l}: train {}", t.train_sparsity[l]);
            assert!((t.valid_sparsity[l] - s).abs() < 0.03, "S {s} layer {l}: valid {}", t.valid_sparsity[l]);
        }
        // Larger layers have larger magnitudes (the synthetic scale grows with the layer).
        assert!(t.thresholds[0] < t.thresholds[1] && t.thresholds[1] < t.thresholds[2]);
        let f = dir.path().join(format!("thr-{s}.json"));
        t.save(&f).expect("save");
        let back = Thresholds::load(&f).expect("load");
        // JSON keeps f32 thresholds exactly; f64 sparsities to the last bit or so.
        assert_eq!((&back.model, &back.thresholds, back.target_sparsity), (&t.model, &t.thresholds, t.target_sparsity));
        for (a, b) in
            back.valid_sparsity.iter().chain(&back.train_sparsity).zip(t.valid_sparsity.iter().chain(&t.train_sparsity))
        {
            assert!((a - b).abs() < 1e-12);
        }
        let other = ModelIdentity { d_ffn: 65, ..t.model.clone() };
        assert!(t.check_model(&f, &other).expect_err("mismatch").to_string().contains("d_ffn"));
    }
    assert!(Thresholds::calibrate(&trace, 1.0, 0.25, 7, &mut |_| {}).is_err());
    let f = dir.path().join("broken.json");
    std::fs::write(&f, r#"{"format": "spike-thresholds", "version": 9}"#).expect("write");
    let msg = Thresholds::load(&f).expect_err("version").to_string();
    assert!(msg.contains("broken.json") && msg.contains("version"), "{msg}");
}
