//! A flash run built in-process from one configuration ([`FlashConfig`] -> [`FlashSession`]), as a sweep builds
//! it: every cache choice computes what the dense engine computes on an f32 model, and the DRAM the session
//! reports stays within the budget it was given.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use spike_flash::cache::{Budget, PolicySpec};
use spike_flash::engine::flash::{CacheChoice, FlashConfig, FlashSession};
use spike_flash::engine::model::Model;
use spike_flash::layout::{self, ConvertOptions};
use spike_flash::model::bind::Source;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{self, SynthSpec};
use spike_flash::Error;

const TOKENS: [u32; 10] = [3, 14, 15, 9, 2, 6, 5, 35, 8, 9];

#[test]
fn sessions_of_every_cache_choice_equal_the_dense_engine_within_their_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 21)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let out = tmp.path().join("tiny.spike");
    layout::write(&dense, &src, &out, &ConvertOptions::default()).unwrap();
    let mut want_state = dense.new_state(16);
    let want = dense.forward(&mut want_state, &TOKENS, true).unwrap();
    let (v, f) = (dense.config().vocab_size, dense.config().d_ffn);
    // Cache choices whose budget bound their rows below the whole layer, and which ran.
    let mut bound = 0;

    let choices = [
        CacheChoice::Policy(PolicySpec::None),
        CacheChoice::Policy(PolicySpec::Window(2)),
        CacheChoice::Policy(PolicySpec::Lru),
        CacheChoice::Policy(PolicySpec::All),
        CacheChoice::Hybrid,
    ];
    for cache in choices {
        // A tiny model's read buffers (a layer each) outweigh its FFN: budgets above the file size still bind.
        for budget in [None, Some(Budget::Percent(180.0)), Some(Budget::Percent(140.0))] {
            let config = FlashConfig { cache, budget, ..FlashConfig::new(&out) };
            let session = FlashSession::open(config, false).unwrap();
            let (mut ffn, dram) = match session.ffn(None) {
                Ok(x) => x,
                // `all` holds every neuron: a budget below the whole model cannot, and says by how much.
                Err(Error::Budget { budget: b, needed, .. }) if cache == CacheChoice::Policy(PolicySpec::All) => {
                    assert!(b < needed, "{cache} {budget:?}: {b} >= {needed}");
                    continue;
                }
                Err(e) => panic!("{cache} {budget:?}: {e}"),
            };
            if let Some(b) = dram.budget {
                assert!(dram.total <= b, "{cache}: {} bytes in DRAM over a budget of {b}", dram.total);
                bound += usize::from(dram.slots_per_layer > 0 && dram.slots_per_layer < f);
            }
            let model = &session.model;
            let mut state = model.try_new_state(16).unwrap();
            for (i, &t) in TOKENS.iter().enumerate() {
                let got = model.forward_with(&mut state, &[t], 0, &mut ffn).unwrap();
                let row = &want[i * v..(i + 1) * v];
                let (lo, hi) = row.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                let diff = got.iter().zip(row).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / (hi - lo);
                assert!(diff < 1e-5, "{cache} {budget:?} token {i}: {diff}");
            }
        }
    }
    assert!(bound >= 3, "only {bound} runs had caches the budget cut below a whole layer");
}

#[test]
fn a_budget_below_the_resident_part_is_a_typed_shortfall() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 22)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let out = tmp.path().join("tiny.spike");
    layout::write(&dense, &src, &out, &ConvertOptions::default()).unwrap();
    let config = FlashConfig {
        cache: CacheChoice::Policy(PolicySpec::Lru),
        budget: Some(Budget::Bytes(1000)),
        ..FlashConfig::new(&out)
    };
    let session = FlashSession::open(config, false).unwrap();
    match session.ffn(None) {
        Err(Error::Budget { budget, needed, .. }) => assert!(budget == 1000 && needed > 1000, "{budget} {needed}"),
        Err(e) => panic!("expected a budget shortfall, got {e}"),
        Ok(_) => panic!("a 1000-byte budget holds no model"),
    }
}

/// The `naive-all` row's resident reads: every tensor of `resident.bin` read again each token (so the bytes
/// per token grow by at least the tensors' bytes, and by less than a 4 KiB page at each end of each tensor),
/// the logits untouched (bit for bit), and a byte damaged in `resident.bin` after opening caught by the next
/// token's read, naming the tensor.
#[test]
fn resident_reads_read_every_resident_tensor_every_token_and_keep_the_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tiny.gguf");
    fs::write(&src, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, 23)).unwrap()).unwrap();
    let dense = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let out = tmp.path().join("tiny.spike");
    layout::write(&dense, &src, &out, &ConvertOptions::default()).unwrap();
    let resident = out.join(layout::RESIDENT_FILE);
    // What to expect, from the file itself.
    let g = spike_flash::model::gguf::GgufFile::open(&resident).unwrap();
    let (n_tensors, tensor_bytes) = (g.tensors().len() as u64, g.tensors().iter().map(|t| t.n_bytes).sum::<u64>());
    let victim = g.tensors().iter().find(|t| t.name.starts_with("blk.1.attn_q")).unwrap().clone();
    let victim_at = g.data_offset() + victim.offset + victim.n_bytes / 2;
    drop(g);

    let mut runs = Vec::new();
    for read_resident in [false, true] {
        let config = FlashConfig { read_resident, ..FlashConfig::new(&out) };
        let session = FlashSession::open(config, false).unwrap();
        let (mut ffn, _) = session.ffn(None).unwrap();
        let model = &session.model;
        let mut state = model.try_new_state(16).unwrap();
        let (mut logits, mut bytes) = (Vec::new(), Vec::new());
        for &t in &TOKENS {
            let before = ffn.snapshot().io.bytes_read;
            logits.extend(model.forward_with(&mut state, &[t], 0, &mut ffn).unwrap());
            bytes.push(ffn.snapshot().io.bytes_read - before);
        }
        runs.push((logits, bytes));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&runs[0].0), bits(&runs[1].0), "the resident reads changed the logits");
    for (i, (&ffn_only, &all)) in runs[0].1.iter().zip(&runs[1].1).enumerate() {
        let extra = all - ffn_only;
        assert!(
            extra >= tensor_bytes && extra < tensor_bytes + 2 * 4096 * n_tensors,
            "token {i}: {extra} more bytes read, for {tensor_bytes} bytes in {n_tensors} tensors"
        );
    }

    // Damage one byte of a layer-1 tensor under an open session: the next token's read says which tensor.
    let session = FlashSession::open(FlashConfig { read_resident: true, ..FlashConfig::new(&out) }, false).unwrap();
    let (mut ffn, _) = session.ffn(None).unwrap();
    let mut bytes = fs::read(&resident).unwrap();
    bytes[victim_at as usize] ^= 0x40;
    fs::write(&resident, &bytes).unwrap();
    let mut state = session.model.try_new_state(16).unwrap();
    let err = session.model.forward_with(&mut state, &[TOKENS[0]], 0, &mut ffn).unwrap_err();
    let inner = match &err {
        Error::InLayer { source, .. } => &**source,
        e => e,
    };
    assert!(
        matches!(inner, Error::Checksum { place, .. } if place.contains(&victim.name)),
        "expected a checksum error naming {}, got {err}",
        victim.name
    );
}
