//! AFL harness: `predictor::fuzz_targets::thresholds` (see docs/fuzzing.md).

#[global_allocator]
static ALLOC: spike_fuzz::Alloc = spike_fuzz::Alloc {};

fn main() {
    let path = spike_fuzz::scratch("thresholds").join("input");
    afl::fuzz!(|data: &[u8]| {
        let _ = predictor::fuzz_targets::thresholds(&path, data);
    });
}
