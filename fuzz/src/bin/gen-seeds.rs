//! Writes the seed corpora (`fuzz/corpus/<harness>/`): small valid files made by the toolkit's own writers,
//! packed as each harness reads them. `gen-seeds [DIR]` (default `corpus`). Shapes are the smallest the
//! writers accept, so each seed is a few KB; the seeds are fixed (named constants) except the layouts' random
//! `layout_id`.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use predictor::calibrate::{Method, Thresholds};
use predictor::lowrank::LowRank;
use predictor::stats::HotSet;
use predictor::trace::TraceWriter;
use predictor::{LayerPredictor, ModelIdentity, Predictor};
use spike_flash::engine::model::{ActivationSink, Model};
use spike_flash::fuzz_targets::{pack, SplitMix};
use spike_flash::layout::{self, ConvertOptions, LayoutKind, RecordDType};
use spike_flash::model::bind::Source;
use spike_flash::model::config::{Activation, Arch};
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{self, SynthSpec};

const SEED_GGUF: u64 = 0x66_7566;
const SEED_HF: u64 = 0x68_66;
const SEED_ACTS: u64 = 0x7472;
const SEED_PRED: u64 = 0x7072;
const SEED_LISTS: u64 = 0x6c73;
/// The sha256 the trace, thresholds and predictor seeds claim (any 64 hex digits do).
const SHA: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn shape(dtype: DType) -> SynthSpec {
    SynthSpec::tiny_gguf(dtype, SEED_GGUF).with_model(|m| {
        (m.n_layers, m.d_model, m.d_ffn) = (1, 32, 32);
        (m.n_heads, m.n_kv_heads, m.vocab_size) = (2, 1, 16);
    })
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
    Ok(())
}

fn gguf(out: &Path, scratch: &Path) -> Res<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dtype in [DType::Q4_1, DType::Q8_0] {
        let bytes = synth::llama_gguf(&shape(dtype))?;
        put(&out.join("gguf"), &format!("llama-{dtype}.gguf"), &bytes)?;
        let p = scratch.join(format!("llama-{dtype}.gguf"));
        std::fs::write(&p, &bytes)?;
        files.push(p);
    }
    Ok(files)
}

fn safetensors(out: &Path, scratch: &Path) -> Res<()> {
    for arch in [Arch::Opt, Arch::Llama] {
        let family = match arch {
            Arch::Opt => SynthSpec::tiny_opt(SEED_HF),
            Arch::Llama => SynthSpec::tiny_llama(SEED_HF),
        };
        let spec = family.with_model(|m| {
            (m.n_layers, m.d_model, m.d_ffn) = (1, 16, 32);
            (m.n_heads, m.n_kv_heads) = (2, if arch == Arch::Opt { 2 } else { 1 });
            (m.vocab_size, m.max_positions) = (16, 8);
            // ReLU in both families: the Llama seed's gated FFN is a ReLU one.
            m.activation = Activation::Relu;
        });
        let spec = SynthSpec { dtype: DType::F16, ..spec };
        let dir = scratch.join(format!("{arch:?}"));
        synth::write_hf_checkpoint(&spec, &dir)?;
        let config = std::fs::read(dir.join("config.json"))?;
        let st = std::fs::read(dir.join("model.safetensors"))?;
        put(&out.join("safetensors"), &format!("{arch:?}.bin").to_lowercase(), &pack(&[&config, &st]))?;
    }
    Ok(())
}

fn layouts(out: &Path, scratch: &Path, ggufs: &[PathBuf]) -> Res<()> {
    for (src, kind, dtype) in [
        (&ggufs[0], LayoutKind::Bundled, RecordDType::Source),
        (&ggufs[0], LayoutKind::Split, RecordDType::Source),
        (&ggufs[1], LayoutKind::Bundled, RecordDType::F16),
    ] {
        let model = Model::from_source(&Source::open(src)?)?;
        let name = format!("{kind:?}-{}", src.file_stem().and_then(|s| s.to_str()).unwrap_or("model")).to_lowercase();
        let dir = scratch.join(format!("{name}.spike"));
        let opts = ConvertOptions { kind, dtype, align: 512, ..Default::default() };
        layout::write(&model, src, &dir, &opts)?;
        let files = [layout::MANIFEST_FILE, layout::RESIDENT_FILE, layout::FFN_FILE];
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f))).collect::<Result<_, _>>()?;
        put(&out.join("layout"), &format!("{name}.bin"), &pack(&[&bytes[0], &bytes[1], &bytes[2]]))?;
    }
    Ok(())
}

fn identity(activation: Activation) -> ModelIdentity {
    ModelIdentity { sha256: SHA.into(), n_layers: 2, d_model: 8, d_ffn: 16, activation }
}

fn trace(out: &Path, scratch: &Path) -> Res<()> {
    let id = identity(Activation::Silu);
    let path = scratch.join("t.trace");
    let mut w = TraceWriter::create(&path, id.clone(), 4, "fuzz seed")?;
    let mut rng = SplitMix::new(SEED_ACTS);
    let mut value = || (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0;
    for (tokens, new_doc) in [(&[1u32, 5, 9][..], true), (&[2u32, 3][..], false), (&[7u32, 7, 1, 4][..], true)] {
        w.begin_segment(tokens, new_doc)?;
        for _ in tokens {
            for l in 0..id.n_layers {
                let x: Vec<f32> = (0..id.d_model).map(|_| value()).collect();
                let n: Vec<f32> = (0..id.d_ffn).map(|_| value()).collect();
                w.record(l, &x, &n);
            }
        }
    }
    w.finish()?;
    put(&out.join("trace"), "small.trace", &std::fs::read(&path)?)
}

fn thresholds(out: &Path, scratch: &Path) -> Res<()> {
    let relu = Thresholds::relu(identity(Activation::Relu))?;
    let quantile = Thresholds {
        model: identity(Activation::Silu),
        method: Method::Quantile,
        target_sparsity: Some(0.5),
        thresholds: vec![0.125, 0.25],
        train_sparsity: vec![0.5, 0.48],
        valid_sparsity: vec![0.52, 0.5],
        trace: Some("small.trace".into()),
        valid_fraction: 0.25,
        seed: 1,
        train_tokens: 6,
        valid_tokens: 3,
        ..relu.clone()
    };
    for (name, t) in [("relu.json", &relu), ("quantile.json", &quantile)] {
        let p = scratch.join(name);
        t.save(&p)?;
        put(&out.join("thresholds"), name, &std::fs::read(&p)?)?;
    }
    Ok(())
}

fn predictor_file(out: &Path) -> Res<()> {
    let id = identity(Activation::Silu);
    let mut rng = SplitMix::new(SEED_PRED);
    let mut value = || (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0;
    let mut layers = Vec::new();
    for (l, r) in [2usize, 3].into_iter().enumerate() {
        let a = Array2::from_shape_fn((id.d_model, r), |_| value());
        let b = Array2::from_shape_fn((r, id.d_ffn), |_| value());
        let bias = Array1::from_shape_fn(id.d_ffn, |_| value());
        let weights = LowRank::new(a, b, bias)?.to_compact();
        layers.push(LayerPredictor { weights, decision_threshold: -0.25 * l as f32, act_threshold: 0.0 });
    }
    let p = Predictor::new(id, 0.95, layers)?;
    put(&out.join("predictor"), "small.pred", &predictor::file::to_bytes(&p)?)
}

/// Neuron lists in the three shapes `read_neuron_lists` reads: a bare array and `{"order": ...}` (a seeded
/// permutation per layer), and a hot-neuron file written by `HotSet::save`, as `spike trace-stats` writes it.
fn neuron_lists(out: &Path, scratch: &Path) -> Res<()> {
    let id = identity(Activation::Relu);
    let (layers, d_ffn) = (id.n_layers, id.d_ffn);
    let mut rng = SplitMix::new(SEED_LISTS);
    let mut order = Vec::new();
    for _ in 0..layers {
        let mut p: Vec<u32> = (0..d_ffn as u32).collect();
        for i in (1..p.len()).rev() {
            p.swap(i, rng.below(i + 1));
        }
        order.push(p);
    }
    put(&out.join("neuron_lists"), "plain.json", &serde_json::to_vec(&order)?)?;
    put(&out.join("neuron_lists"), "order.json", &serde_json::to_vec(&serde_json::json!({ "order": order }))?)?;
    let freq = |l: usize| (0..d_ffn).map(|i| ((i * 7 + l * 3) % d_ffn) as f64 / d_ffn as f64).collect::<Vec<_>>();
    let hot = HotSet::new(id, "relu", 6, (0..layers).map(|l| (0.0, freq(l))));
    let p = scratch.join("hot.json");
    hot.save(&p)?;
    put(&out.join("neuron_lists"), "hot.json", &std::fs::read(&p)?)
}

fn main() -> Res<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let scratch = spike_fuzz::scratch("gen-seeds");
    let ggufs = gguf(&out, &scratch)?;
    safetensors(&out, &scratch)?;
    layouts(&out, &scratch, &ggufs)?;
    trace(&out, &scratch)?;
    thresholds(&out, &scratch)?;
    predictor_file(&out)?;
    neuron_lists(&out, &scratch)?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
