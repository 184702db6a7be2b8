//! Shared by the harnesses: the allocation cap and each harness's scratch folder. What a harness does with an
//! input is in `spike_flash::fuzz_targets` and `predictor::fuzz_targets`, shared with the replay tests that CI
//! runs.

use std::path::PathBuf;

/// Largest single allocation a harness allows (256 MiB): inputs are at most 1 MiB (afl-fuzz's default), so a
/// reader asking for more sized a buffer from a count in the file instead of from the file's length.
pub type Alloc = spike_flash::io::CappedAlloc<{ 256 << 20 }>;

/// A folder of this process for the files a harness writes (`$TMPDIR/spike-fuzz-NAME-PID`), created empty.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spike-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the harness's scratch folder");
    dir
}
