//! I/O: file mapping now; the flash read backends later.

use crate::{Error, Result};
use std::fs::File;
use std::path::Path;

/// Memory-maps the whole file at `path` read-only.
///
/// The map stays valid after the `File` is dropped. Contract: the file is not truncated or rewritten in
/// place by another process while the map is alive; if it is, reads of the vanished pages fault (`SIGBUS`),
/// which is outside what this crate guards against. Files this toolkit writes are replaced by rename, never
/// rewritten in place, so they keep the contract.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: `Mmap::map` is unsafe only because another process could modify or truncate the file while it
    // is mapped, which would change or invalidate memory that Rust treats as immutable. The file is opened
    // read-only here, and concurrent modification is excluded by this function's documented contract.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(map)
}
