//! [`IoConfig`]: the settings every read backend shares, with documented defaults and validation.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Largest single device read: io_uring's read length is a `u32`, and Linux transfers at most
/// `0x7fff_f000` bytes per read call anyway.
pub const MAX_READ: usize = 1 << 30;

/// Settings of a read backend. Build with `IoConfig { field: value, ..IoConfig::default() }` and check with
/// [`IoConfig::validated`] (which [`open_backend`](super::open_backend) also calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IoConfig {
    /// Alignment of device reads (offset, length and memory), a power of two >= 512. Default 4096, the
    /// physical block of the devices this toolkit targets (512 is enough for O_DIRECT on a 512 B logical block
    /// but makes the device read-modify 4 KiB pages).
    pub align: usize,
    /// Whether neighbouring requests are merged into one device read. Default true.
    pub merge: bool,
    /// Largest gap, in bytes, between two neighbouring aligned spans that are still merged into one read
    /// (the gap is read and thrown away). 0 merges only spans that touch or overlap. Default 0.
    pub max_gap: usize,
    /// Largest device read a merge may produce, in bytes; a single request larger than this is still read
    /// whole. Default 1 MiB (the profile's largest chunk, where throughput has flattened out).
    pub max_merge: usize,
    /// Open the file with O_DIRECT (bypass the page cache). Default true. Without it, a run reads through the
    /// page cache and must say so.
    pub direct: bool,
    /// io_uring: reads in flight at once. Default 32 (the paper's thread count; throughput has flattened by
    /// then on the reference device).
    pub queue_depth: usize,
    /// io_uring: reads handed to the kernel per `io_uring_enter`. Default 1. On the virtio disk of the
    /// reference machine, 32 reads submitted in one call reach the device as one batch and complete as a
    /// convoy, so the queue empties and refills in waves: one call per read kept 4 KiB random reads at depth
    /// 32 about 15% faster (and level with fio), at the price of one system call per read.
    pub submit_batch: usize,
    /// io_uring: completions to wait for before the queue is topped up again; 1 keeps it fullest. Default 1.
    pub complete_batch: usize,
    /// io_uring: register the file with the ring (saves a file-table lookup per read). Default true.
    pub register_file: bool,
    /// io_uring: fail over to the thread pool as if the kernel had refused io_uring (for tests). Default false.
    pub force_fallback: bool,
    /// Thread pool: worker threads doing `pread`. Default 32, as in the paper.
    pub threads: usize,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            align: 4096,
            merge: true,
            max_gap: 0,
            max_merge: 1 << 20,
            direct: true,
            queue_depth: 32,
            complete_batch: 1,
            submit_batch: 1,
            register_file: true,
            force_fallback: false,
            threads: 32,
        }
    }
}

impl IoConfig {
    /// Returns the configuration if every value is in range, else an error naming the first that is not.
    pub fn validated(self) -> Result<Self> {
        let bad = |what: String| Err(Error::Invalid(what));
        if !self.align.is_power_of_two() || self.align < 512 || self.align > (1 << 20) {
            return bad(format!("io align {} is not a power of two in 512..=1 MiB", self.align));
        }
        if self.max_merge == 0 || self.max_merge > MAX_READ {
            return bad(format!("io max_merge {} is not in 1..={MAX_READ}", self.max_merge));
        }
        if self.max_gap > self.max_merge {
            return bad(format!("io max_gap {} exceeds max_merge {}", self.max_gap, self.max_merge));
        }
        if !(1..=4096).contains(&self.queue_depth) {
            return bad(format!("io queue_depth {} is not in 1..=4096", self.queue_depth));
        }
        if self.submit_batch == 0 || self.submit_batch > self.queue_depth {
            return bad(format!("io submit_batch {} is not in 1..=queue_depth", self.submit_batch));
        }
        if self.complete_batch == 0 || self.complete_batch > self.queue_depth {
            return bad(format!("io complete_batch {} is not in 1..=queue_depth", self.complete_batch));
        }
        if !(1..=1024).contains(&self.threads) {
            return bad(format!("io threads {} is not in 1..=1024", self.threads));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_valid_and_bad_values_named() {
        IoConfig::default().validated().unwrap();
        let e = IoConfig { align: 1000, ..IoConfig::default() }.validated().unwrap_err().to_string();
        assert!(e.contains("align 1000"), "{e}");
        let e = IoConfig { queue_depth: 0, ..IoConfig::default() }.validated().unwrap_err().to_string();
        assert!(e.contains("queue_depth"), "{e}");
        assert!(IoConfig { complete_batch: 64, ..IoConfig::default() }.validated().is_err());
        assert!(IoConfig { submit_batch: 0, ..IoConfig::default() }.validated().is_err());
        assert!(IoConfig { threads: 0, ..IoConfig::default() }.validated().is_err());
        assert!(IoConfig { max_gap: 1 << 21, ..IoConfig::default() }.validated().is_err());
    }
}
