//! AFL harness: `predictor::fuzz_targets::predictor` (see docs/fuzzing.md).

#[global_allocator]
static ALLOC: spike_fuzz::Alloc = spike_fuzz::Alloc {};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = predictor::fuzz_targets::predictor(data);
    });
}
