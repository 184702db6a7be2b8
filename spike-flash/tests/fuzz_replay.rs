//! The fuzz harnesses' short run for CI (`docs/fuzzing.md`): each reader of this crate over the committed seed
//! corpus (`fuzz/corpus/<harness>/`, which every reader must accept), the minimized inputs of crashes the
//! campaigns found (`fuzz/regressions/<harness>/`), and a fixed-seed set of mutants of the seeds (bit flips,
//! boundary values, truncations, insertions, deletions, duplicated chunks). No input may panic, abort or
//! allocate more than the cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use spike_flash::fuzz_targets;

#[global_allocator]
static ALLOC: spike_flash::io::CappedAlloc<{ 256 << 20 }> = spike_flash::io::CappedAlloc;

/// Seed of the mutants.
const SEED_MUTANTS: u64 = 0xF022;
/// Mutants per harness.
const MUTANTS: usize = 3000;

fn replay(harness: &str, target: impl Fn(&[u8]) -> bool) {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz");
    let r = spike_flash::fuzz_targets::replay(&fuzz_dir, harness, MUTANTS, SEED_MUTANTS, target).unwrap();
    eprintln!("{harness}: {r:?}");
    assert!(r.seeds > 0, "no seed corpus in {}: run gen-seeds (docs/fuzzing.md)", fuzz_dir.display());
    assert!(r.refused_seeds.is_empty(), "{harness}: seeds refused: {:?}", r.refused_seeds);
    assert!(r.panics.is_empty(), "{harness}: {} inputs panicked: {:?}", r.panics.len(), r.panics);
    // The mutants reach past the first checks: some are still accepted, some refused.
    assert!(r.accepted > 0 && r.accepted < r.mutants, "{harness}: {} of {} mutants accepted", r.accepted, r.mutants);
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
