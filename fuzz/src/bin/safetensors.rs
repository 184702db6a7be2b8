//! AFL harness: `spike_flash::fuzz_targets::safetensors` (see docs/fuzzing.md).

#[global_allocator]
static ALLOC: spike_fuzz::Alloc = spike_fuzz::Alloc {};

fn main() {
    let dir = spike_fuzz::scratch("safetensors").join("ck");
    afl::fuzz!(|data: &[u8]| {
        let _ = spike_flash::fuzz_targets::safetensors(&dir, data);
    });
}
