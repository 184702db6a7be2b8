//! The fuzz harnesses' short run for CI (`docs/fuzzing.md`): each reader of this crate over the committed seed
//! corpus (`fuzz/corpus/<harness>/`, which every reader must accept), the minimized inputs of crashes the
//! campaigns found (`fuzz/regressions/<harness>/`), and a fixed-seed set of mutants of the seeds (bit flips,
//! boundary values, truncations, insertions, deletions, duplicated chunks). No input may panic, abort or
//! allocate more than the cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use spike_flash::fuzz_targets;

#[global_allocator]
static ALLOC: spike_flash::io::CappedAlloc<{ 256 << 20 }> = spike_flash::io::CappedAlloc;

fn replay(harness: &str, target: impl Fn(&[u8]) -> bool) {
    let r = spike_flash::fuzz_targets::replay_verdict(env!("CARGO_MANIFEST_DIR"), harness, target).unwrap();
    eprintln!("{harness}: {r:?}");
}

#[test]
fn gguf() {
    replay("gguf", fuzz_targets::gguf);
}

#[test]
fn safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    replay("safetensors", |d| fuzz_targets::safetensors(&dir, d));
}

#[test]
fn layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("f.spike");
    replay("layout", |d| fuzz_targets::layout(&dir, d));
}

#[test]
fn neuron_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lists.json");
    replay("neuron_lists", |d| fuzz_targets::neuron_lists(&path, d));
}
