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
