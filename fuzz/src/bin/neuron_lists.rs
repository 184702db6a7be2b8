//! AFL harness: `spike_flash::fuzz_targets::neuron_lists` (see docs/fuzzing.md).

#[global_allocator]
static ALLOC: spike_fuzz::Alloc = spike_fuzz::Alloc {};

fn main() {
    let path = spike_fuzz::scratch("neuron_lists").join("lists.json");
    afl::fuzz!(|data: &[u8]| {
        let _ = spike_flash::fuzz_targets::neuron_lists(&path, data);
    });
}
