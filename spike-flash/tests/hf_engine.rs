//! The engine on Hugging Face checkpoints: OPT against the NumPy reference (`tests/reference/opt_ref.py`,
//! numpy only), Hugging Face Llama against the same weights converted to GGUF (the two rotary conventions),
//! and exact ReLU sparsity (computing only the non-zero neurons equals the dense FFN).
//!
//! The NumPy comparisons skip (print `SKIP: ...`) when numpy is missing, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use spike_flash::engine::model::{ActivationSink, DenseFfn, Model};
use spike_flash::engine::sparse::{all_rows, Oracle, SparseFfn};
use spike_flash::model::bind::Source;
use spike_flash::model::config::Activation;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{llama_hf_to_gguf, write_hf_checkpoint, SynthSpec};

const SEED_OPT: u64 = 0xE761;
const SEED_LLAMA: u64 = 0x11A4A;

fn python() -> String {
    std::env::var("SPIKE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn numpy_available() -> bool {
    let ok = Command::new(python()).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI: `{} -c \"import numpy\"` failed", python());
        eprintln!("SKIP: `{} -c \"import numpy\"` failed; the OPT reference needs numpy", python());
    }
    ok
}

fn opt_reference(dir: &Path, tokens: &[u32]) -> Vec<f32> {
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/opt_ref.py");
    let out = dir.join("ref.bin");
    let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let status = Command::new(python())
        .arg(script)
        .args(["--model", &dir.display().to_string(), "--tokens", &ids.join(","), "--out", &out.display().to_string()])
        .status()
        .expect("run opt_ref.py");
    assert!(status.success(), "opt_ref.py failed: {status}");
    std::fs::read(&out).expect("logits").chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn load(dir: &Path) -> Model {
    Model::from_source(&Source::open(dir).expect("open")).expect("bind")
}

/// Worst |a - b| relative to each row's logit range, and whether every row's argmax agrees.
fn compare(ours: &[f32], want: &[f32], vocab: usize) -> (f64, bool) {
    let mut worst = 0.0f64;
    let mut same = true;
    for (a, b) in ours.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
        let (lo, hi) = b.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        for (x, y) in a.iter().zip(b) {
            worst = worst.max(f64::from((x - y).abs()) / f64::from(hi - lo));
        }
        same &= spike_flash::engine::sampler::argmax(a) == spike_flash::engine::sampler::argmax(b);
    }
    (worst, same)
}

#[test]
fn opt_matches_numpy_reference() {
    if !numpy_available() {
        return;
    }
    let post_norm_350m = SynthSpec::tiny_opt(SEED_OPT + 1).with_model(|m| {
        m.word_embed_proj_dim = Some(32);
        m.pre_norm = false;
        m.tied_embeddings = false;
    });
    let post_norm_350m = SynthSpec { shards: 2, ..post_norm_350m };
    for (spec, gelu) in
        [(SynthSpec::tiny_opt(SEED_OPT), false), (post_norm_350m, false), (SynthSpec::tiny_opt(SEED_OPT + 2), true)]
    {
        let dir = tempfile::tempdir().expect("tempdir");
        write_hf_checkpoint(&spec, dir.path()).expect("write");
        if gelu {
            // The same weights with OPT's other supported activation (exact, erf-based GELU).
            let path = dir.path().join("config.json");
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            cfg["activation_function"] = "gelu".into();
            std::fs::write(&path, cfg.to_string()).expect("write config");
        }
        let tokens: Vec<u32> = vec![2, 87, 104, 101, 4, 250, 300, 17, 42, 9, 63, 63];
        let model = load(dir.path());
        let mut st = model.new_state(tokens.len());
        let ours = model.forward(&mut st, &tokens, true).expect("forward");
        let want = opt_reference(dir.path(), &tokens);
        let (worst, same) = compare(&ours, &want, model.config().vocab_size);
        eprintln!(
            "post_norm={} proj={:?} gelu={gelu}: worst {worst:.2e} of range",
            !spec.model.pre_norm, spec.model.word_embed_proj_dim
        );
        assert!(same, "argmax differs");
        assert!(worst < 1e-4, "worst relative logit error {worst}");
    }
}

#[test]
fn hf_llama_and_gguf_conversion_give_the_same_logits() {
    let spec = SynthSpec::tiny_llama(SEED_LLAMA);
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let gguf = dir.path().join("same.gguf");
    llama_hf_to_gguf(dir.path(), &gguf, DType::F32).expect("convert");
    let hf = load(dir.path());
    let gg = Model::from_gguf(Arc::new(GgufFile::open(&gguf).expect("gguf"))).expect("bind gguf");
    let tokens: Vec<u32> = vec![1, 5, 9, 200, 201, 300, 7, 7, 7, 64];
    let a = hf.forward(&mut hf.new_state(tokens.len()), &tokens, true).expect("hf");
    let b = gg.forward(&mut gg.new_state(tokens.len()), &tokens, true).expect("gguf");
    let (worst, same) = compare(&a, &b, hf.config().vocab_size);
    eprintln!("HF (half rotary) vs GGUF (interleaved rotary): worst {worst:.2e} of range");
    assert!(same && worst < 1e-5, "worst {worst}, argmax same: {same}");
}

/// Counts zero and non-zero neuron activations.
#[derive(Default)]
struct Count {
    zero: u64,
    all: u64,
}

impl ActivationSink for Count {
    fn record(&mut self, _layer: usize, _x: &[f32], neurons: &[f32]) {
        self.zero += neurons.iter().filter(|&&h| h == 0.0).count() as u64;
        self.all += neurons.len() as u64;
    }
}

#[test]
fn relu_ffn_over_nonzero_neurons_only_equals_dense() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_checkpoint(&SynthSpec::tiny_opt(SEED_OPT), dir.path()).expect("write");
    let model = load(dir.path());
    assert_eq!(model.config().activation, Activation::Relu);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 320).collect();
    let mut count = Count::default();
    let dense = {
        let mut ffn = DenseFfn::with_sink(&mut count);
        model.forward_with(&mut model.new_state(tokens.len()), &tokens, 0, &mut ffn).expect("dense")
    };
    let rows = all_rows(&model).expect("rows");
    let oracle = Oracle::new(&model, rows.clone(), vec![0.0; model.config().n_layers]).expect("oracle");
    let mut sparse_ffn = SparseFfn::with_rows(rows, oracle);
    let sparse = model.forward_with(&mut model.new_state(tokens.len()), &tokens, 0, &mut sparse_ffn).expect("sparse");
    let frac = 1.0 - sparse_ffn.stats.active as f64 / sparse_ffn.stats.total as f64;
    let dense_zero = count.zero as f64 / count.all as f64;
    eprintln!("sparse path skipped {:.1}% of neurons; dense saw {:.1}% zeros", 100.0 * frac, 100.0 * dense_zero);
    assert!(frac > 0.3, "the synthetic ReLU model should be sparse, skipped only {frac}");
    // The sparse path skips exactly the neurons the dense one found zero.
    assert!((frac - dense_zero).abs() < 1e-9, "{frac} vs {dense_zero}");
    // Logits after two layers: only f32 summation order differs.
    for (x, y) in dense.iter().zip(&sparse) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "dense {x} vs sparse {y}");
    }
    // Each layer's FFN on the same inputs: equal within 1e-6 of the output's scale.
    let d = model.config().d_model;
    let n = 16;
    let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.3).collect();
    for l in 0..model.config().n_layers {
        let (mut a, mut b) = (vec![0.0f32; n * d], vec![0.0f32; n * d]);
        use spike_flash::engine::model::FfnStep;
        DenseFfn::default().forward(&model, l, &x, n, &mut a).expect("dense");
        sparse_ffn.forward(&model, l, &x, n, &mut b).expect("sparse");
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        eprintln!("layer {l}: FFN max |dense - sparse| = {worst:.2e} (output scale {scale:.3})");
        assert!(worst <= 1e-6 * scale, "layer {l}: {worst} vs scale {scale}");
    }
}
