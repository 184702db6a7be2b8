//! The fuzz harnesses' short run for CI (`docs/fuzzing.md`): each reader of this crate over the committed seed
//! corpus (`fuzz/corpus/<harness>/`, which every reader must accept), the minimized inputs of crashes the
//! campaigns found (`fuzz/regressions/<harness>/`), and a fixed-seed set of mutants of the seeds (bit flips,
//! boundary values, truncations, insertions, deletions, duplicated chunks). No input may panic, abort or
//! allocate more than the cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use predictor::fuzz_targets;

#[global_allocator]
static ALLOC: spike_flash::io::CappedAlloc<{ 256 << 20 }> = spike_flash::io::CappedAlloc;

fn replay(harness: &str, target: impl Fn(&[u8]) -> bool) {
    let r = spike_flash::fuzz_targets::replay_verdict(env!("CARGO_MANIFEST_DIR"), harness, target).unwrap();
    eprintln!("{harness}: {r:?}");
}

#[test]
fn trace() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input");
    replay("trace", |d| fuzz_targets::trace(&path, d));
}

#[test]
fn thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input");
    replay("thresholds", |d| fuzz_targets::thresholds(&path, d));
}

#[test]
fn predictor() {
    replay("predictor", fuzz_targets::predictor);
}

/// The checksum fix-ups put each checksum where the readers look: a valid file is left as it is, and one
/// with a changed byte under every checksum is accepted again once fixed.
#[test]
fn checksum_fixups_match_the_readers() {
    let fuzz_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz").join("corpus");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input");
    let seed = |h: &str, f: &str| std::fs::read(fuzz_dir.join(h).join(f)).unwrap();
    type Fix = fn(&[u8]) -> Option<Vec<u8>>;
    let cases: [(&str, Vec<u8>, Fix); 2] = [
        ("trace", seed("trace", "small.trace"), fuzz_targets::fix_trace_checksums),
        ("predictor", seed("predictor", "small.pred"), fuzz_targets::fix_predictor_checksums),
    ];
    for (name, bytes, fix) in cases {
        assert_eq!(fix(&bytes).as_deref(), Some(&bytes[..]), "{name}: a valid file is unchanged");
        // The last byte before the final checksums (a weight or an activation), and a label or sha byte.
        let mut damaged = bytes.clone();
        let at = bytes.len() - 9;
        damaged[at] ^= 0x10;
        damaged[20] ^= 0x01;
        let accepted = |b: &[u8]| match name {
            "trace" => predictor::trace::Trace::open(&{
                std::fs::write(&path, b).unwrap();
                path.clone()
            })
            .and_then(|t| (0..t.meta().n_layers).try_for_each(|l| t.layer(l).map(drop)))
            .is_ok(),
            _ => predictor::file::from_bytes(&path, b).is_ok(),
        };
        assert!(!accepted(&damaged), "{name}: the damage is caught by a checksum");
        assert!(accepted(&fix(&damaged).unwrap()), "{name}: fixed, the damaged file is accepted");
    }
}
