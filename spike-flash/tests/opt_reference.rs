//! The NumPy OPT reference (`tests/reference/opt_ref.py`) against a naive f64 OPT forward pass written here
//! from the checkpoint's tensors, on synthetic checkpoints: pre-norm OPT (most sizes) and OPT-350m's
//! structure (post-norm, projected 32-wide embeddings, untied, bf16, sharded). Two implementations that share
//! no code must agree to 1e-6 of the logit range; the Rust one is the template for engine tests.
//!
//! Skips (prints `SKIP: ...` and passes) when python3 or numpy is missing, unless the environment variable
//! `CI` is set. `SPIKE_PYTHON` overrides the interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;

use spike_flash::model::config::OPT_POSITION_OFFSET;
use spike_flash::model::quant::DType;
use spike_flash::model::safetensors::HfCheckpoint;
use spike_flash::model::synth::{write_hf_checkpoint, SynthSpec};

const SEED: u64 = 0x0B7_2EF;

fn python() -> String {
    std::env::var("SPIKE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("tests").join("reference").join("opt_ref.py")
}

/// `true` when numpy imports; otherwise prints SKIP (or panics under CI).
fn numpy_available() -> bool {
    let ok = Command::new(python()).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI: `{} -c \"import numpy\"` failed", python());
        eprintln!("SKIP: `{} -c \"import numpy\"` failed; the OPT reference needs numpy", python());
    }
    ok
}

/// Naive f64 OPT forward pass (transformers' OPTForCausalLM, one unpadded sequence): logits of every position
/// and the fraction of zero fc1 activations per layer.
pub fn opt_naive(ck: &HfCheckpoint, tokens: &[u32]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let c = ck.config();
    let t = |n: &str| -> Vec<f64> { ck.tensor_f32(n).expect(n).into_iter().map(f64::from).collect() };
    let (d, f, nh, hd, e) = (c.d_model, c.d_ffn, c.n_heads, c.head_dim, c.embed_dim());
    let mv = |w: &[f64], b: Option<&[f64]>, rows: usize, cols: usize, x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| (0..cols).map(|i| w[r * cols + i] * x[i]).sum::<f64>() + b.map_or(0.0, |b| b[r])).collect()
    };
    let ln = |x: &[f64], w: &Option<(Vec<f64>, Vec<f64>)>| -> Vec<f64> {
        let m = x.iter().sum::<f64>() / x.len() as f64;
        let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / x.len() as f64;
        let k = 1.0 / (v + f64::from(c.norm_eps)).sqrt();
        match w {
            Some((w, b)) => x.iter().enumerate().map(|(i, a)| (a - m) * k * w[i] + b[i]).collect(),
            None => x.iter().map(|a| (a - m) * k).collect(),
        }
    };
    let p = "model.decoder";
    let norm = |name: &str| c.norm_affine.then(|| (t(&format!("{name}.weight")), t(&format!("{name}.bias"))));
    let emb = t(&format!("{p}.embed_tokens.weight"));
    let pos = t(&format!("{p}.embed_positions.weight"));
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let mut x = emb[k as usize * e..(k as usize + 1) * e].to_vec();
            if c.word_embed_proj_dim.is_some() {
                x = mv(&t(&format!("{p}.project_in.weight")), None, d, e, &x);
            }
            let row = (i + OPT_POSITION_OFFSET) * d;
            x.iter().zip(&pos[row..row + d]).map(|(a, b)| a + b).collect()
        })
        .collect();
    let mut zero = Vec::new();
    for l in 0..c.n_layers {
        let n = |x: &str| format!("{p}.layers.{l}.{x}");
        let lin = |x: &str| (t(&n(&format!("{x}.weight"))), t(&n(&format!("{x}.bias"))));
        let (wq, bq) = lin("self_attn.q_proj");
        let (wk, bk) = lin("self_attn.k_proj");
        let (wv, bv) = lin("self_attn.v_proj");
        let (wo, bo) = lin("self_attn.out_proj");
        let (w1, b1) = lin("fc1");
        let (w2, b2) = lin("fc2");
        let (attn_ln, ffn_ln) = (norm(&n("self_attn_layer_norm")), norm(&n("final_layer_norm")));
        let inputs: Vec<Vec<f64>> = xs.iter().map(|x| if c.pre_norm { ln(x, &attn_ln) } else { x.clone() }).collect();
        let scale = 1.0 / (hd as f64).sqrt();
        let qs: Vec<Vec<f64>> =
            inputs.iter().map(|h| mv(&wq, Some(&bq), d, d, h).iter().map(|q| q * scale).collect()).collect();
        let ks: Vec<Vec<f64>> = inputs.iter().map(|h| mv(&wk, Some(&bk), d, d, h)).collect();
        let vs: Vec<Vec<f64>> = inputs.iter().map(|h| mv(&wv, Some(&bv), d, d, h)).collect();
        let mut zeros = 0usize;
        for i in 0..xs.len() {
            let mut att = vec![0.0; d];
            for h in 0..nh {
                let sc: Vec<f64> =
                    (0..=i).map(|j| (0..hd).map(|a| qs[i][h * hd + a] * ks[j][h * hd + a]).sum()).collect();
                let m = sc.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in sc.iter().enumerate() {
                    for a in 0..hd {
                        att[h * hd + a] += (s - m).exp() / z * vs[j][h * hd + a];
                    }
                }
            }
            let o = mv(&wo, Some(&bo), d, d, &att);
            let mut x: Vec<f64> = xs[i].iter().zip(&o).map(|(a, b)| a + b).collect();
            if !c.pre_norm {
                x = ln(&x, &attn_ln);
            }
            let h = if c.pre_norm { ln(&x, &ffn_ln) } else { x.clone() };
            let act: Vec<f64> = mv(&w1, Some(&b1), f, d, &h).into_iter().map(|a| a.max(0.0)).collect();
            zeros += act.iter().filter(|&&a| a == 0.0).count();
            let y = mv(&w2, Some(&b2), d, f, &act);
            x = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            if !c.pre_norm {
                x = ln(&x, &ffn_ln);
            }
            xs[i] = x;
        }
        zero.push(zeros as f64 / (xs.len() * f) as f64);
    }
    let final_ln = (c.final_norm && c.norm_affine)
        .then(|| (t(&format!("{p}.final_layer_norm.weight")), t(&format!("{p}.final_layer_norm.bias"))));
    let out_w = if c.tied_embeddings { emb.clone() } else { t("lm_head.weight") };
    let logits = xs
        .iter()
        .map(|x| {
            let mut h = if c.final_norm { ln(x, &final_ln) } else { x.clone() };
            if c.word_embed_proj_dim.is_some() {
                h = mv(&t(&format!("{p}.project_out.weight")), None, e, d, &h);
            }
            mv(&out_w, None, c.vocab_size, e, &h)
        })
        .collect();
    (logits, zero)
}

fn run_reference(dir: &Path, tokens: &[u32]) -> (Vec<f32>, serde_json::Value) {
    let out = dir.join("ref.bin");
    let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let status = Command::new(python())
        .arg(script())
        .args(["--model", &dir.display().to_string(), "--tokens", &ids.join(","), "--out", &out.display().to_string()])
        .status()
        .expect("run opt_ref.py");
    assert!(status.success(), "opt_ref.py failed: {status}");
    let bytes = std::fs::read(&out).expect("logits");
    let logits = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let side = std::fs::read_to_string(dir.join("ref.bin.json")).expect("sidecar");
    (logits, serde_json::from_str(&side).expect("sidecar JSON"))
}

fn compare(spec: &SynthSpec, tokens: &[u32]) {
    let dir = tempfile::tempdir().expect("temporary directory");
    write_hf_checkpoint(spec, dir.path()).expect("write");
    let ck = HfCheckpoint::open(dir.path()).expect("open");
    let (want, zero) = opt_naive(&ck, tokens);
    let (got, side) = run_reference(dir.path(), tokens);
    let vocab = ck.config().vocab_size;
    assert_eq!(side["n_tokens"], tokens.len());
    assert_eq!(side["vocab"], vocab);
    assert_eq!(got.len(), tokens.len() * vocab);
    for (p, row) in want.iter().enumerate() {
        let (lo, hi) = row.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(hi - lo > 1.0, "logits should not be flat");
        for (i, &w) in row.iter().enumerate() {
            let g = f64::from(got[p * vocab + i]);
            assert!((g - w).abs() <= 1e-6 * (hi - lo) + 1e-6 * w.abs(), "pos {p} token {i}: python {g}, rust {w}");
        }
    }
    let py_zero: Vec<f64> = side["ffn_zero_fraction"]
        .as_array()
        .expect("zero fractions")
        .iter()
        .map(|v| v.as_f64().expect("f64"))
        .collect();
    assert_eq!(py_zero.len(), zero.len());
    for (a, b) in py_zero.iter().zip(&zero) {
        assert!((a - b).abs() < 0.02, "zero fraction python {a} vs rust {b}");
    }
    eprintln!("{spec:?}: agree; FFN zero fraction per layer {zero:.3?}");
}

#[test]
fn pre_norm_opt_agrees_and_is_sparse() {
    if !numpy_available() {
        return;
    }
    let spec = SynthSpec::tiny_opt(SEED);
    let tokens: Vec<u32> = vec![2, 87, 104, 101, 4, 250, 300, 17, 42, 9, 63, 63];
    compare(&spec, &tokens);
    let dir = tempfile::tempdir().expect("temporary directory");
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let ck = HfCheckpoint::open(dir.path()).expect("open");
    let (_, zero) = opt_naive(&ck, &tokens);
    for z in zero {
        assert!((0.5..0.9).contains(&z), "ReLU sparsity {z} should be between 50% and 90%");
    }
}

#[test]
fn opt_350m_structure_agrees() {
    if !numpy_available() {
        return;
    }
    let opt_350m = SynthSpec::tiny_opt(SEED + 1).with_model(|m| {
        m.word_embed_proj_dim = Some(32);
        m.pre_norm = false;
        m.tied_embeddings = false;
    });
    let spec = SynthSpec { dtype: DType::BF16, shards: 2, ..opt_350m };
    compare(&spec, &[2, 5, 300, 299, 31, 100, 7]);
}
