//! The flash FFN's counters: cumulative, so that two snapshots bracket the work between them. The
//! `experiments` crate turns a pair of snapshots into a per-token record.

use super::FlashFfn;
use crate::cache::CacheStats;
use crate::io::IoStats;

/// Counters of a flash FFN, cumulative; the difference between two snapshots describes the tokens between.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FlashStats {
    /// Calls (layer x token batch).
    pub calls: u64,
    /// Token x layer pairs computed.
    pub token_layers: u64,
    /// Neurons selected, summed over tokens and layers.
    pub neurons_active: u64,
    /// Neurons whose records were read from flash.
    pub neurons_read: u64,
    /// Neuron rows the FFN was computed over (active rows plus any extra cached rows computed).
    pub neurons_computed: u64,
    /// Time choosing the active neurons (the predictor or oracle).
    pub select_ns: u64,
    /// Wall time of the batched reads (waiting for the device, the backend's copy-out, and checking the records
    /// that arrived against the layout's checksum table).
    pub io_ns: u64,
    /// Of `io_ns`, checking the records that arrived against the checksum table (with io_uring, the checks of
    /// a run's chunks overlap the reads still in flight).
    pub verify_ns: u64,
    /// Time placing rows: building read lists, cache bookkeeping and row copies.
    pub mm_ns: u64,
    /// Time computing the FFN over the rows.
    pub compute_ns: u64,
    /// The cost model's predicted time for the same reads (0 without a cost model).
    pub predicted_io_ns: u64,
}

/// A snapshot of a flash FFN's counters; two snapshots bracket the work between them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub flash: FlashStats,
    pub io: IoStats,
}

impl FlashFfn {
    /// The caches' counters, summed over layers.
    pub fn cache_stats(&self) -> CacheStats {
        let mut s = CacheStats::default();
        for c in self.caches.iter().flatten() {
            s.add(&c.stats());
        }
        s
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let mut io = self.backend.stats().clone();
        if let Some(p) = &self.prefetch {
            io.add(&p.io);
        }
        if let Some(r) = &self.resident_reads {
            io.add(r.io());
        }
        Snapshot { flash: self.stats, io }
    }

    /// Zeroes the flash and I/O counters.
    pub fn reset_stats(&mut self) {
        self.stats = FlashStats::default();
        self.backend.reset_stats();
        if let Some(r) = &mut self.resident_reads {
            r.reset_stats();
        }
        if let Some(p) = self.prefetch.as_mut() {
            p.io = IoStats::default();
        }
    }
}
