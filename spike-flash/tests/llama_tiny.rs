//! The Llama engine on tiny random models, against an independent naive forward pass written here in f64
//! from the dequantized weights: plain loops, no KV cache, full recomputation for every position.

use std::path::Path;
use std::sync::Arc;

use spike_flash::engine::model::Model;
use spike_flash::model::gguf::{GgufFile, MetaValue};
use spike_flash::model::gguf_write::GgufWriter;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{llama_gguf, SynthSpec};

const SEED_F32: u64 = 0x11A;
const SEED_QUANT: u64 = 0x22B;

/// The model of `shape` with matrices in `dtype` from `seed` (in place of the shape's own).
fn load(shape: &SynthSpec, dtype: DType, seed: u64) -> (Arc<GgufFile>, Model) {
    let bytes = llama_gguf(&SynthSpec { dtype, seed, ..shape.clone() }).expect("synthetic model");
    let file = Arc::new(GgufFile::from_bytes(Path::new("tiny.gguf"), bytes).expect("parses"));
    let model = Model::from_gguf(file.clone()).expect("binds");
    (file, model)
}

/// Naive reference: logits (f64) for every position of `tokens`.
fn reference(file: &GgufFile, spec: &SynthSpec, tokens: &[u32]) -> Vec<Vec<f64>> {
    let s = &spec.model;
    let t = |name: &str| -> Vec<f64> { file.tensor_f32(name).expect(name).into_iter().map(f64::from).collect() };
    let (d, f, nh, nkv) = (s.d_model, s.d_ffn, s.n_heads, s.n_kv_heads);
    let hd = d / nh;
    let kvd = nkv * hd;
    let matvec = |w: &[f64], rows: usize, cols: usize, x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum()).collect()
    };
    let rms = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let k = 1.0 / (ms + s.norm_eps as f64).sqrt();
        x.iter().zip(w).map(|(a, b)| a * k * b).collect()
    };
    let rope = |v: &mut [f64], p: usize| {
        for h in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let th = p as f64 * (s.rope_base as f64).powf(-2.0 * i as f64 / hd as f64);
                let (a, b) = (h[2 * i], h[2 * i + 1]);
                h[2 * i] = a * th.cos() - b * th.sin();
                h[2 * i + 1] = a * th.sin() + b * th.cos();
            }
        }
    };
    let emb = t("token_embd.weight");
    let out_w = if !s.tied_embeddings { t("output.weight") } else { emb.clone() };
    let mut xs: Vec<Vec<f64>> =
        tokens.iter().map(|&tok| emb[tok as usize * d..(tok as usize + 1) * d].to_vec()).collect();
    for l in 0..s.n_layers {
        let n = |x: &str| format!("blk.{l}.{x}.weight");
        let (wq, wk, wv, wo) = (t(&n("attn_q")), t(&n("attn_k")), t(&n("attn_v")), t(&n("attn_output")));
        let (an, fnw) = (t(&n("attn_norm")), t(&n("ffn_norm")));
        let (wg, wu, wd) = (t(&n("ffn_gate")), t(&n("ffn_up")), t(&n("ffn_down")));
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let xn = rms(x, &an);
            let mut q = matvec(&wq, d, d, &xn);
            let mut k = matvec(&wk, kvd, d, &xn);
            rope(&mut q, p);
            rope(&mut k, p);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&wv, kvd, d, &xn));
        }
        for p in 0..xs.len() {
            let mut att = vec![0.0; d];
            for h in 0..nh {
                let g = h / (nh / nkv);
                let sc: Vec<f64> = (0..=p)
                    .map(|j| (0..hd).map(|i| qs[p][h * hd + i] * ks[j][g * hd + i]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = sc.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                for (j, v) in sc.iter().enumerate() {
                    let a = (v - m).exp() / z;
                    for i in 0..hd {
                        att[h * hd + i] += a * vs[j][g * hd + i];
                    }
                }
            }
            let o = matvec(&wo, d, d, &att);
            for i in 0..d {
                xs[p][i] += o[i];
            }
            let xn = rms(&xs[p], &fnw);
            let g = matvec(&wg, f, d, &xn);
            let u = matvec(&wu, f, d, &xn);
            let hmid: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = matvec(&wd, d, f, &hmid);
            for i in 0..d {
                xs[p][i] += dn[i];
            }
        }
    }
    let on = t("output_norm.weight");
    xs.iter().map(|x| matvec(&out_w, s.vocab_size, d, &rms(x, &on))).collect()
}

/// Largest |a - b| over the rows, relative to each row's logit range.
fn worst_rel(ours: &[f32], want: &[Vec<f64>], vocab: usize) -> f64 {
    let mut worst = 0.0f64;
    for (p, row) in want.iter().enumerate() {
        let (lo, hi) = row.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        for (i, &w) in row.iter().enumerate() {
            worst = worst.max((ours[p * vocab + i] as f64 - w).abs() / (hi - lo));
        }
    }
    worst
}

#[test]
fn f32_model_matches_naive_reference() {
    for untied in [false, true] {
        let shape = SynthSpec::tiny_gguf(DType::F32, SEED_F32).with_model(|m| m.tied_embeddings = !untied);
        let (file, model) = load(&shape, DType::F32, SEED_F32);
        let tokens: Vec<u32> = vec![3, 17, 42, 5, 90, 11, 64, 2, 33];
        let mut st = model.new_state(tokens.len());
        let ours = model.forward(&mut st, &tokens, true).expect("forward");
        let want = reference(&file, &shape, &tokens);
        let rel = worst_rel(&ours, &want, shape.model.vocab_size);
        assert!(rel < 1e-5, "untied={untied}: worst relative logit error {rel}");
    }
}

#[test]
fn quantized_models_match_reference_within_activation_quantization_error() {
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::F16, DType::BF16] {
        let shape = SynthSpec::tiny_gguf(DType::F32, SEED_F32);
        let (file, model) = load(&shape, dtype, SEED_QUANT);
        let tokens: Vec<u32> = vec![1, 2, 3, 50, 60, 70, 95, 0];
        let mut st = model.new_state(tokens.len());
        let ours = model.forward(&mut st, &tokens, true).expect("forward");
        // The reference uses the same (dequantized) weights; what differs is that the engine quantizes the
        // activations to 8 bits for block-quantized weights.
        let want = reference(&file, &shape, &tokens);
        let rel = worst_rel(&ours, &want, shape.model.vocab_size);
        let bound = if dtype.is_quantized() { 2e-2 } else { 1e-5 };
        assert!(rel < bound, "{dtype}: worst relative logit error {rel} (bound {bound})");
    }
}

#[test]
fn batched_prompt_equals_token_by_token_decode() {
    let shape = SynthSpec::tiny_gguf(DType::F32, SEED_F32);
    for dtype in [DType::F32, DType::Q4_1] {
        let (_, model) = load(&shape, dtype, SEED_QUANT);
        let tokens: Vec<u32> = vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 44];
        let vocab = shape.model.vocab_size;
        let mut a = model.new_state(tokens.len());
        let batched = model.forward(&mut a, &tokens, true).expect("batched");
        let mut b = model.new_state(tokens.len());
        let mut stepped = model.forward(&mut b, &tokens[..4], true).expect("prompt");
        for &t in &tokens[4..] {
            stepped.extend(model.forward(&mut b, &[t], false).expect("step"));
        }
        assert_eq!(b.pos(), tokens.len());
        // The two paths run different kernels (batched tiles vs one-token), so only float summation order
        // differs; bound it relative to each position's logit range.
        for (p, (x, y)) in batched.chunks_exact(vocab).zip(stepped.chunks_exact(vocab)).enumerate() {
            let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let worst = x.iter().zip(y).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-4 * (hi - lo), "{dtype} pos {p}: worst {worst} of range {}", hi - lo);
        }
    }
}

#[test]
fn bad_forward_calls_are_errors() {
    let shape = SynthSpec::tiny_gguf(DType::F32, SEED_F32);
    let (_, model) = load(&shape, DType::F32, 1);
    let mut st = model.new_state(4);
    let e = model.forward(&mut st, &[shape.model.vocab_size as u32], false).expect_err("out of vocabulary");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = model.forward(&mut st, &[1, 2, 3, 4, 5], false).expect_err("too long");
    assert!(e.to_string().contains("capacity"), "{e}");
    let e = model.forward(&mut st, &[], false).expect_err("empty");
    assert!(e.to_string().contains("no tokens"), "{e}");
}

#[test]
fn missing_layer_tensor_is_named() {
    // A one-layer model whose metadata claims two layers.
    let shape = SynthSpec::tiny_gguf(DType::F32, 3).with_model(|m| m.n_layers = 1);
    let src = GgufFile::from_bytes(Path::new("src.gguf"), llama_gguf(&shape).expect("synthetic")).expect("parses");
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        let v = if k == "llama.block_count" { MetaValue::U32(2) } else { v.clone() };
        w.add_meta(k, v);
    }
    for t in src.tensors() {
        let data = src.tensor_data(&t.name).expect("data").to_vec();
        w.add_tensor(&t.name, &t.dims, t.dtype, data).expect("add");
    }
    let g = GgufFile::from_bytes(Path::new("short.gguf"), w.to_bytes().expect("bytes")).expect("parses");
    let msg = Model::from_gguf(Arc::new(g)).err().expect("a missing layer is an error").to_string();
    assert!(msg.contains("short.gguf") && msg.contains("blk.1."), "{msg}");
}

#[test]
fn sparse_ffn_with_every_neuron_equals_dense() {
    use spike_flash::engine::sparse::{AllNeurons, SparseFfn};
    let shape = SynthSpec::tiny_gguf(DType::F32, SEED_F32);
    let (_, model) = load(&shape, DType::F32, SEED_F32);
    let tokens: Vec<u32> = vec![4, 8, 15, 16, 23, 42];
    let mut a = model.new_state(tokens.len());
    let dense = model.forward(&mut a, &tokens, true).expect("dense");
    let mut sparse_ffn = SparseFfn::new(&model, AllNeurons { d_ffn: model.config().d_ffn }).expect("rows");
    let mut b = model.new_state(tokens.len());
    let sparse = model.forward_with(&mut b, &tokens, 0, &mut sparse_ffn).expect("sparse");
    assert_eq!(sparse_ffn.stats.active, sparse_ffn.stats.total);
    for (x, y) in dense.iter().zip(&sparse) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
    }
}
