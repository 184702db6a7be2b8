//! AFL harness: `spike_flash::fuzz_targets::gguf` (see docs/fuzzing.md).

#[global_allocator]
static ALLOC: spike_fuzz::Alloc = spike_fuzz::Alloc {};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = spike_flash::fuzz_targets::gguf(data);
    });
}
