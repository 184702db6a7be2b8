//! Hugging Face checkpoints: synthetic checkpoints written and read back, sharding, the tokenizer, and the
//! Llama HF -> GGUF conversion checked against an independent half-split-RoPE forward pass.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use spike_flash::engine::model::Model;
use spike_flash::model::config::{Activation, Arch, ModelConfig, RopeStyle};
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::DType;
use spike_flash::model::safetensors::{expected_tensors, HfCheckpoint, INDEX_FILE, SINGLE_FILE};
use spike_flash::model::synth::{
    llama_gguf, llama_hf_to_gguf, permute_qk_rows, write_hf_checkpoint, write_hf_checkpoint_with_progress, SynthSpec,
};
use spike_flash::model::tokenizer::Tokenizer;

const SEED_OPT: u64 = 0x0B7;
const SEED_LLAMA: u64 = 0x11A3A;
const SEED_VALUES: u64 = 0x7A1;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// The tensors of a safetensors file read with nothing but the format's definition: name -> (dtype, shape, bytes).
fn raw_tensors(path: &Path) -> HashMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    assert_eq!((8 + n) % 8, 0, "data section is 8-byte aligned");
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    let data = &bytes[8 + n..];
    let mut out = HashMap::new();
    for (name, info) in header.as_object().expect("object") {
        if name == "__metadata__" {
            assert_eq!(info["format"], "pt", "transformers needs format = pt");
            continue;
        }
        let shape: Vec<usize> =
            info["shape"].as_array().expect("shape").iter().map(|v| v.as_u64().expect("dim") as usize).collect();
        let o = info["data_offsets"].as_array().expect("offsets");
        let (b, e) = (o[0].as_u64().expect("begin") as usize, o[1].as_u64().expect("end") as usize);
        out.insert(name.clone(), (info["dtype"].as_str().expect("dtype").to_string(), shape, data[b..e].to_vec()));
    }
    out
}

#[test]
fn synthetic_opt_round_trips() {
    let dir = tmp();
    let spec = SynthSpec::tiny_opt(SEED_OPT);
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let ck = HfCheckpoint::open(dir.path()).expect("open");
    let cfg = ck.config();
    assert_eq!(cfg, &spec.config().expect("config"));
    assert_eq!(cfg.arch, Arch::Opt);
    assert_eq!((cfg.n_layers, cfg.d_model, cfg.d_ffn, cfg.n_heads, cfg.vocab_size), (2, 64, 256, 4, 320));
    assert_eq!(cfg.activation, Activation::Relu);
    assert!(cfg.tied_embeddings && cfg.pre_norm && cfg.qkv_bias && cfg.ffn_bias);
    assert!(!ck.contains("lm_head.weight"));

    let raw = raw_tensors(&dir.path().join(SINGLE_FILE));
    let expected = expected_tensors(cfg);
    assert_eq!(raw.len(), expected.iter().filter(|t| t.required).count());
    assert_eq!(ck.names().count(), raw.len());
    for want in expected.iter().filter(|t| t.required) {
        let (dtype, shape, bytes) = &raw[&want.name];
        assert_eq!(dtype, "F32");
        assert_eq!(shape, &want.shape, "{}", want.name);
        let t = ck.tensor(&want.name).expect("tensor");
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.shape, want.shape.as_slice());
        assert_eq!(t.data, bytes.as_slice(), "{}", want.name);
        let v = ck.tensor_f32(&want.name).expect("f32");
        let from_raw: Vec<f32> =
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        assert_eq!(v, from_raw);
        assert!(v.iter().all(|x| x.is_finite()));
    }
    assert_eq!(ck.tensor("model.decoder.embed_positions.weight").expect("positions").shape, &[64 + 2, 64]);
    // fc1 biases are negative, so ReLU outputs are mostly zero.
    let b = ck.tensor_f32("model.decoder.layers.0.fc1.bias").expect("bias");
    assert!(b.iter().all(|&x| (-1.2..=-0.1).contains(&x)));
    let rows = ck.tensor_rows_f32("model.decoder.layers.1.fc1.weight", 10..12).expect("rows");
    let all = ck.tensor_f32("model.decoder.layers.1.fc1.weight").expect("all");
    assert_eq!(rows, all[10 * 64..12 * 64]);
    let err = ck.tensor_rows_f32("model.decoder.layers.1.fc1.weight", 250..257).expect_err("past the end");
    assert!(err.to_string().contains("256 rows"), "{err}");
    let err = ck.tensor("model.decoder.layers.9.fc1.weight").expect_err("no such tensor");
    assert!(err.to_string().contains("not in the checkpoint"), "{err}");
}

#[test]
fn synthetic_values_depend_only_on_seed_and_name() {
    let (a, b, c) = (tmp(), tmp(), tmp());
    let spec = SynthSpec { dtype: DType::F16, ..SynthSpec::tiny_llama(SEED_LLAMA) };
    write_hf_checkpoint(&spec, a.path()).expect("write a");
    write_hf_checkpoint(&spec, b.path()).expect("write b");
    write_hf_checkpoint(&SynthSpec { seed: SEED_LLAMA + 1, ..spec.clone() }, c.path()).expect("write c");
    let read = |d: &Path| std::fs::read(d.join(SINGLE_FILE)).expect("read");
    assert_eq!(read(a.path()), read(b.path()));
    assert_ne!(read(a.path()), read(c.path()));
    let ck = HfCheckpoint::open(a.path()).expect("open");
    let t = ck.tensor("model.layers.1.mlp.up_proj.weight").expect("up");
    assert_eq!(t.dtype, DType::F16);
    assert_eq!(t.data.len(), 128 * 64 * 2);
    let v = t.to_f32().expect("f32");
    let bound = (3.0f32 / 64.0).sqrt() * 1.001;
    assert!(v.iter().all(|x| x.abs() <= bound), "uniform in +-sqrt(3/d_model)");
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
    assert!((var * 64.0 - 1.0).abs() < 0.1, "variance {var} should be about 1/d_model");
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let (one, two) = (tmp(), tmp());
    let spec = SynthSpec::tiny_llama(SEED_LLAMA).with_model(|m| m.tied_embeddings = false);
    write_hf_checkpoint(&spec, one.path()).expect("single");
    write_hf_checkpoint(&SynthSpec { shards: 2, ..spec.clone() }, two.path()).expect("sharded");
    assert!(!two.path().join(SINGLE_FILE).exists());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.path().join(INDEX_FILE)).expect("index")).expect("json");
    let files: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().expect("map").values().map(|v| v.as_str().expect("file")).collect();
    assert_eq!(
        files.into_iter().collect::<Vec<_>>(),
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    );

    let a = HfCheckpoint::open(one.path()).expect("open single");
    let b = HfCheckpoint::open(two.path()).expect("open sharded");
    assert_eq!(a.config(), b.config());
    assert_eq!(b.files().count(), 2);
    assert!(b.contains("lm_head.weight"));
    let mut names_a: Vec<&str> = a.names().collect();
    let mut names_b: Vec<&str> = b.names().collect();
    names_a.sort_unstable();
    names_b.sort_unstable();
    assert_eq!(names_a, names_b);
    for n in names_a {
        assert_eq!(a.tensor(n).expect("a").data, b.tensor(n).expect("b").data, "{n}");
    }
    // Each form removes the other's file when written over it, so a directory never holds both (a
    // stale model.safetensors would shadow the index).
    write_hf_checkpoint(&spec, two.path()).expect("rewrite single");
    assert!(!two.path().join(INDEX_FILE).exists());
    assert_eq!(HfCheckpoint::open(two.path()).expect("reopen").files().count(), 1);
    write_hf_checkpoint(&SynthSpec { shards: 3, ..spec.clone() }, one.path()).expect("rewrite sharded");
    assert!(!one.path().join(SINGLE_FILE).exists());
    assert_eq!(HfCheckpoint::open(one.path()).expect("reopen").files().count(), 3);
}

#[test]
fn known_values_round_trip_in_every_dtype() {
    // A checkpoint written by the safetensors crate itself from known values.
    use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
    let spec = SynthSpec::tiny_opt(SEED_VALUES);
    for (dt, st, tol) in
        [(DType::F32, Dtype::F32, 0.0), (DType::F16, Dtype::F16, 1e-3), (DType::BF16, Dtype::BF16, 8e-3)]
    {
        let dir = tmp();
        write_hf_checkpoint(&spec, dir.path()).expect("config and tokenizer");
        let cfg = spec.config().expect("config");
        let mut values = HashMap::new();
        let mut bytes = Vec::new();
        for (k, t) in expected_tensors(&cfg).into_iter().filter(|t| t.required).enumerate() {
            let n: usize = t.shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| ((i * 7 + k * 13) % 101) as f32 / 50.0 - 1.0).collect();
            let b: Vec<u8> = match dt {
                DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            };
            values.insert(t.name.clone(), v);
            bytes.push((t.name, t.shape, b));
        }
        let views: Vec<(String, TensorView)> =
            bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(st, s.clone(), b).expect("view"))).collect();
        serialize_to_file(views, &None, &dir.path().join(SINGLE_FILE)).expect("serialize");
        let ck = HfCheckpoint::open(dir.path()).expect("open");
        for (name, want) in &values {
            let t = ck.tensor(name).expect("tensor");
            assert_eq!(t.dtype, dt);
            let got = t.to_f32().expect("f32");
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= tol, "{dt} {name}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn opt_variants_open() {
    // OPT-350m's structure (post-norm, 512-wide embeddings projected to d_model), untied, in bf16, sharded.
    let dir = tmp();
    let opt_350m = SynthSpec::tiny_opt(SEED_OPT).with_model(|m| {
        m.word_embed_proj_dim = Some(32);
        m.pre_norm = false;
        m.tied_embeddings = false;
    });
    let spec = SynthSpec { dtype: DType::BF16, shards: 3, ..opt_350m };
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let ck = HfCheckpoint::open(dir.path()).expect("open");
    let c = ck.config();
    assert_eq!(c.word_embed_proj_dim, Some(32));
    assert!(!c.pre_norm && !c.final_norm && !c.tied_embeddings);
    assert_eq!(ck.files().count(), 3);
    assert_eq!(ck.tensor("model.decoder.embed_tokens.weight").expect("embed").shape, &[320, 32]);
    assert_eq!(ck.tensor("model.decoder.project_in.weight").expect("in").shape, &[64, 32]);
    assert_eq!(ck.tensor("model.decoder.project_out.weight").expect("out").shape, &[32, 64]);
    assert_eq!(ck.tensor("lm_head.weight").expect("lm_head").shape, &[320, 32]);
    assert!(!ck.contains("model.decoder.final_layer_norm.weight"));
}

#[test]
fn base_model_names_are_accepted_with_the_model_prefix() {
    // OPTModel (no LM head) stores `decoder.*`; the reader answers to the OPTForCausalLM names too.
    use safetensors::tensor::{serialize_to_file, TensorView};
    let src = tmp();
    let spec = SynthSpec::tiny_opt(SEED_OPT);
    write_hf_checkpoint(&spec, src.path()).expect("write");
    let ck = HfCheckpoint::open(src.path()).expect("open");
    let dst = tmp();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.path().join(f), dst.path().join(f)).expect("copy");
    }
    let views: Vec<(String, TensorView)> = ck
        .names()
        .map(|n| {
            let t = ck.tensor(n).expect("tensor");
            let view = TensorView::new(safetensors::Dtype::F32, t.shape.to_vec(), t.data).expect("view");
            (n.strip_prefix("model.").expect("prefixed").to_string(), view)
        })
        .collect();
    serialize_to_file(views, &None, &dst.path().join(SINGLE_FILE)).expect("serialize");
    let base = HfCheckpoint::open(dst.path()).expect("open base model");
    let n = "model.decoder.layers.1.fc2.weight";
    assert_eq!(base.tensor(n).expect("alias").data, ck.tensor(n).expect("original").data);
    assert_eq!(base.tensor(n).expect("alias").name, "decoder.layers.1.fc2.weight");
}

#[test]
fn progress_reports_every_tensor() {
    let dir = tmp();
    let spec = SynthSpec { shards: 2, ..SynthSpec::tiny_opt(SEED_OPT) };
    let mut seen = Vec::new();
    write_hf_checkpoint_with_progress(&spec, dir.path(), &mut |p| {
        seen.push((p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total))
    })
    .expect("write");
    let total = spec.tensor_bytes().expect("bytes");
    assert_eq!(seen.len(), seen[0].1);
    assert!(seen.windows(2).all(|w| w[0].0 + 1 == w[1].0 && w[0].2 < w[1].2));
    assert_eq!(seen.last().map(|s| (s.2, s.3)), Some((total, total)));
}

#[test]
fn synthetic_tokenizer_round_trips_ascii() {
    let dir = tmp();
    let spec = SynthSpec::tiny_opt(SEED_OPT).with_model(|m| m.vocab_size = 600);
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let ck = HfCheckpoint::open(dir.path()).expect("open");
    let tok = ck.tokenizer().expect("tokenizer");
    assert_eq!(tok.vocab_size(), 600);
    // OPT's convention: `</s>` (id 2) is both BOS and EOS, and BOS is prepended.
    assert_eq!((tok.bos(), tok.eos(), tok.adds_bos()), (Some(2), Some(2), true));
    let text = "The capital of France is Paris.\n\tTabs, digits 0123 and ~symbols~ {[()]} too!";
    let ids = tok.encode(text).expect("encode");
    assert_eq!(ids[0], 2);
    assert!(ids.len() < text.len(), "merges shorten English: {} ids for {} bytes", ids.len(), text.len());
    assert!(ids.iter().all(|&i| (i as usize) < 600 && i != 3), "no <unk>: {ids:?}");
    assert_eq!(tok.decode(&ids[1..]).expect("decode"), text);

    // Llama: `<s>` (id 0) is BOS. A vocabulary too small for all bytes keeps printable ASCII.
    let dir = tmp();
    let spec = SynthSpec::tiny_llama(SEED_LLAMA).with_model(|m| m.vocab_size = 120);
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).expect("tokenizer");
    assert_eq!((tok.bos(), tok.eos(), tok.adds_bos()), (Some(0), Some(2), true));
    let ids = tok.encode("Hello, world!").expect("encode");
    assert_eq!(tok.decode(&ids[1..]).expect("decode"), "Hello, world!");

    // Paper-scale vocabulary: filled with merges, loads in the tokenizers crate.
    let big = spike_flash::model::synth::synth_tokenizer_json(50272, 2);
    assert_eq!(big["model"]["vocab"].as_object().expect("vocab").len(), 50272);
    let t: tokenizers::Tokenizer = big.to_string().parse().expect("loads");
    assert_eq!(t.get_vocab_size(true), 50272);
}

#[test]
fn tokenizer_from_file_without_side_files_uses_added_tokens() {
    let dir = tmp();
    let spec = SynthSpec::tiny_llama(SEED_LLAMA);
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    for f in ["config.json", "tokenizer_config.json"] {
        std::fs::remove_file(dir.path().join(f)).expect("remove");
    }
    let tok = Tokenizer::from_file(&dir.path().join("tokenizer.json")).expect("tokenizer");
    // `<s>` and `</s>` are special added tokens; the post-processor prepends `<s>`.
    assert_eq!((tok.bos(), tok.eos(), tok.adds_bos()), (Some(0), Some(2), true));
    let err = Tokenizer::from_file(&dir.path().join("missing.json")).expect_err("no file");
    assert!(err.to_string().contains("missing.json"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// Llama: Hugging Face (half-split rotary) vs GGUF (interleaved rotary, permuted Q/K)
// ---------------------------------------------------------------------------------------------------------

/// Rotates each head of `v` at position `p`, pairing dimensions as `style` says.
fn rope(v: &mut [f64], p: usize, hd: usize, base: f64, style: RopeStyle) {
    for h in v.chunks_mut(hd) {
        for i in 0..hd / 2 {
            let th = p as f64 * base.powf(-2.0 * i as f64 / hd as f64);
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Half => (i, i + hd / 2),
            };
            let (x, y) = (h[a], h[b]);
            h[a] = x * th.cos() - y * th.sin();
            h[b] = x * th.sin() + y * th.cos();
        }
    }
}

#[test]
fn qk_permutation_turns_half_rope_into_interleaved_rope() {
    let (rows, cols, heads) = (32usize, 8usize, 4usize);
    let hd = rows / heads;
    let wq: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
    let wk: Vec<f32> = (0..rows * cols).map(|i| ((i * 19 % 29) as f32 - 14.0) / 9.0).collect();
    let x: Vec<f64> = (0..cols).map(|i| (i as f64 * 0.7).sin()).collect();
    let y: Vec<f64> = (0..cols).map(|i| (i as f64 * 1.3).cos()).collect();
    let mv = |w: &[f32], x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| (0..cols).map(|c| f64::from(w[r * cols + c]) * x[c]).sum()).collect()
    };
    let (pq, pk) = (permute_qk_rows(&wq, rows, cols, heads), permute_qk_rows(&wk, rows, cols, heads));
    for (pos_q, pos_k) in [(0, 0), (5, 2), (17, 16)] {
        let (mut qh, mut kh) = (mv(&wq, &x), mv(&wk, &y));
        rope(&mut qh, pos_q, hd, 10_000.0, RopeStyle::Half);
        rope(&mut kh, pos_k, hd, 10_000.0, RopeStyle::Half);
        let (mut qi, mut ki) = (mv(&pq, &x), mv(&pk, &y));
        rope(&mut qi, pos_q, hd, 10_000.0, RopeStyle::Interleaved);
        rope(&mut ki, pos_k, hd, 10_000.0, RopeStyle::Interleaved);
        for h in 0..heads {
            let s = |a: &[f64], b: &[f64]| (0..hd).map(|i| a[h * hd + i] * b[h * hd + i]).sum::<f64>();
            let (sh, si) = (s(&qh, &kh), s(&qi, &ki));
            assert!((sh - si).abs() < 1e-9 * (1.0 + sh.abs()), "head {h}: {sh} vs {si}");
        }
    }
    // A permutation of whole rows: each row appears once.
    let mut a: Vec<&[f32]> = wq.chunks(cols).collect();
    let mut b: Vec<&[f32]> = pq.chunks(cols).collect();
    a.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    b.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    assert_eq!(a, b);
}

/// Naive f64 forward pass of a Hugging Face Llama checkpoint (half-split rotary, as transformers computes
/// it): logits of every position.
fn hf_llama_reference(ck: &HfCheckpoint, tokens: &[u32]) -> Vec<Vec<f64>> {
    let c: &ModelConfig = ck.config();
    let t = |n: &str| -> Vec<f64> { ck.tensor_f32(n).expect(n).into_iter().map(f64::from).collect() };
    let (d, f, nh, nkv, hd) = (c.d_model, c.d_ffn, c.n_heads, c.n_kv_heads, c.head_dim);
    let kvd = nkv * hd;
    let mv = |w: &[f64], rows: usize, cols: usize, x: &[f64]| -> Vec<f64> {
        (0..rows).map(|r| (0..cols).map(|i| w[r * cols + i] * x[i]).sum()).collect()
    };
    let rms = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let k = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + f64::from(c.norm_eps)).sqrt();
        x.iter().zip(w).map(|(a, b)| a * k * b).collect()
    };
    let emb = t("model.embed_tokens.weight");
    let out_w = if c.tied_embeddings { emb.clone() } else { t("lm_head.weight") };
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&k| emb[k as usize * d..(k as usize + 1) * d].to_vec()).collect();
    for l in 0..c.n_layers {
        let n = |x: &str| format!("model.layers.{l}.{x}.weight");
        let (wq, wk, wv, wo) = (
            t(&n("self_attn.q_proj")),
            t(&n("self_attn.k_proj")),
            t(&n("self_attn.v_proj")),
            t(&n("self_attn.o_proj")),
        );
        let (wg, wu, wd) = (t(&n("mlp.gate_proj")), t(&n("mlp.up_proj")), t(&n("mlp.down_proj")));
        let (an, fnw) = (t(&n("input_layernorm")), t(&n("post_attention_layernorm")));
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (p, x) in xs.iter().enumerate() {
            let xn = rms(x, &an);
            let (mut q, mut k) = (mv(&wq, d, d, &xn), mv(&wk, kvd, d, &xn));
            rope(&mut q, p, hd, f64::from(c.rope_base), RopeStyle::Half);
            rope(&mut k, p, hd, f64::from(c.rope_base), RopeStyle::Half);
            qs.push(q);
            ks.push(k);
            vs.push(mv(&wv, kvd, d, &xn));
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
                    for i in 0..hd {
                        att[h * hd + i] += (v - m).exp() / z * vs[j][g * hd + i];
                    }
                }
            }
            let o = mv(&wo, d, d, &att);
            xs[p].iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let xn = rms(&xs[p], &fnw);
            let (g, u) = (mv(&wg, f, d, &xn), mv(&wu, f, d, &xn));
            let hmid: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = mv(&wd, d, f, &hmid);
            xs[p].iter_mut().zip(&dn).for_each(|(x, o)| *x += o);
        }
    }
    let on = t("model.norm.weight");
    xs.iter().map(|x| mv(&out_w, c.vocab_size, d, &rms(x, &on))).collect()
}

#[test]
fn llama_hf_to_gguf_matches_the_half_split_reference() {
    for untied in [false, true] {
        let dir = tmp();
        let spec = SynthSpec::tiny_llama(SEED_LLAMA).with_model(|m| m.tied_embeddings = !untied);
        write_hf_checkpoint(&spec, dir.path()).expect("write");
        let ck = HfCheckpoint::open(dir.path()).expect("open");
        let gguf_path = dir.path().join("model.gguf");
        llama_hf_to_gguf(dir.path(), &gguf_path, DType::F32).expect("convert");
        let g = Arc::new(GgufFile::open(&gguf_path).expect("gguf"));

        let from_gguf = ModelConfig::from_gguf(&g).expect("gguf config");
        let hf = ck.config();
        assert_eq!(from_gguf.rope_style, RopeStyle::Interleaved);
        assert_eq!(hf.rope_style, RopeStyle::Half);
        assert_eq!(ModelConfig { rope_style: RopeStyle::Half, max_positions: 2048, ..from_gguf }, *hf);
        assert_eq!(
            g.tensor_f32("blk.1.attn_v.weight").expect("v"),
            ck.tensor_f32("model.layers.1.self_attn.v_proj.weight").expect("v")
        );
        assert_ne!(
            g.tensor_f32("blk.1.attn_k.weight").expect("k"),
            ck.tensor_f32("model.layers.1.self_attn.k_proj.weight").expect("k")
        );

        // The tokenizer travels along: both readers encode alike.
        let (tg, th) = (Tokenizer::from_gguf(&g).expect("gguf tokenizer"), ck.tokenizer().expect("hf tokenizer"));
        let text = "The capital of France is Paris.";
        assert_eq!(tg.encode(text).expect("gguf"), th.encode(text).expect("hf"));
        assert_eq!((tg.bos(), tg.eos()), (th.bos(), th.eos()));

        let model = Model::from_gguf(g).expect("engine binds the converted file");
        let tokens: Vec<u32> = vec![0, 87, 104, 101, 4, 250, 300, 17, 42];
        let mut st = model.new_state(tokens.len());
        let ours = model.forward(&mut st, &tokens, true).expect("forward");
        let want = hf_llama_reference(&ck, &tokens);
        let vocab = hf.vocab_size;
        for (p, row) in want.iter().enumerate() {
            let (lo, hi) = row.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(hi - lo > 1.0, "logits should not be flat: range {}", hi - lo);
            for (i, &w) in row.iter().enumerate() {
                let rel = (f64::from(ours[p * vocab + i]) - w).abs() / (hi - lo);
                assert!(rel < 1e-5, "untied={untied} pos {p} token {i}: {} vs {w}", ours[p * vocab + i]);
            }
        }
    }
}

#[test]
fn converter_refuses_what_gguf_llama_cannot_express() {
    let dir = tmp();
    write_hf_checkpoint(&SynthSpec::tiny_llama(SEED_LLAMA).with_model(|m| m.activation = Activation::Relu), dir.path())
        .expect("write");
    let err = llama_hf_to_gguf(dir.path(), &dir.path().join("x.gguf"), DType::F16).expect_err("relu llama");
    assert!(err.to_string().contains("non-SiLU"), "{err}");
    let dir = tmp();
    write_hf_checkpoint(&SynthSpec::tiny_opt(SEED_OPT), dir.path()).expect("write");
    let err = llama_hf_to_gguf(dir.path(), &dir.path().join("x.gguf"), DType::F16).expect_err("opt");
    assert!(err.to_string().contains("Opt"), "{err}");
}

#[test]
fn bad_specs_are_refused() {
    let dir = tmp();
    let bad = [
        SynthSpec { dtype: DType::Q4_0, ..SynthSpec::tiny_opt(1) },
        SynthSpec { shards: 0, ..SynthSpec::tiny_opt(1) },
        SynthSpec::tiny_opt(1).with_model(|m| m.n_kv_heads = 2),
        SynthSpec::tiny_opt(1).with_model(|m| (m.n_heads, m.n_kv_heads) = (5, 5)),
        SynthSpec::tiny_llama(1).with_model(|m| m.word_embed_proj_dim = Some(16)),
        SynthSpec::tiny_opt(1).with_model(|m| m.vocab_size = 3),
        SynthSpec { shards: 1000, ..SynthSpec::tiny_opt(1) },
    ];
    for spec in bad {
        assert!(write_hf_checkpoint(&spec, dir.path()).is_err(), "{spec:?}");
    }
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing written for a bad spec");
}

#[test]
fn specs_the_file_cannot_record_are_refused() {
    // An OPT config.json records no norm epsilon; a changed d_model without with_model leaves head_dim stale.
    let mut eps = SynthSpec::tiny_opt(1);
    eps.model.norm_eps = 1e-6;
    let mut stale = SynthSpec::tiny_llama(1);
    stale.model.d_model = 128;
    for spec in [eps, stale] {
        let err = spec.config().expect_err("not what config.json reads back as").to_string();
        assert!(err.contains("norm_eps") || err.contains("head_dim"), "{err}");
    }
    // A GGUF llama pairs rotary dimensions interleaved; tiny_llama's are half-split, as in a config.json.
    let err = llama_gguf(&SynthSpec::tiny_llama(1)).expect_err("half-split rotary in a GGUF").to_string();
    assert!(err.contains("rope_style"), "{err}");
    llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 1)).expect("tiny_gguf is what its file reads back as");
}

#[test]
fn paper_scale_spec_is_consistent() {
    let spec = SynthSpec::opt_6_7b(1, DType::F16);
    let cfg = spec.config().expect("config");
    assert_eq!((cfg.n_layers, cfg.d_model, cfg.d_ffn, cfg.n_heads, cfg.vocab_size), (32, 4096, 16384, 32, 50272));
    // 6.66e9 parameters, 2 bytes each.
    let bytes = spec.tensor_bytes().expect("bytes");
    assert!((13_300_000_000..13_400_000_000).contains(&bytes), "{bytes}");
}

/// The weight bytes of one decode step, against the checkpoint's own tensor sizes: everything once, except the
/// learned position table, of which one row is read (tied embeddings: the table is the output head, read whole).
#[test]
fn decode_bytes_match_the_checkpoint_tensors() {
    let dir = tmp();
    let spec = SynthSpec::tiny_opt(SEED_OPT);
    write_hf_checkpoint(&spec, dir.path()).expect("write");
    let tensors = raw_tensors(&dir.path().join(SINGLE_FILE));
    let all: usize = tensors.values().map(|(_, _, b)| b.len()).sum();
    let (dtype, shape, positions) =
        tensors.iter().find(|(n, _)| n.ends_with("embed_positions.weight")).map(|(_, t)| t).expect("positions");
    assert_eq!(dtype, "F32", "the tiny checkpoint is f32, as the engine holds norms, biases and positions");
    let expected = all - positions.len() + positions.len() / shape[0];
    let model = Model::from_source(&spike_flash::model::bind::Source::open(dir.path()).expect("open")).expect("bind");
    assert_eq!(model.parts().decode_bytes(), expected as u64);
}
