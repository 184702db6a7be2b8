//! AFL harness: `spike_flash::fuzz_targets::layout` (see docs/fuzzing.md).

#[global_allocator]
static ALLOC: spike_fuzz::Alloc = spike_fuzz::Alloc {};

fn main() {
    let dir = spike_fuzz::scratch("layout").join("f.spike");
    afl::fuzz!(|data: &[u8]| {
        let _ = spike_flash::fuzz_targets::layout(&dir, data);
    });
}
