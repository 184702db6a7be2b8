//! [`IoStats`]: what a read backend did, counted the same way by every backend.

use serde::Serialize;

/// Number of buckets of the chunk-size histogram: bucket `k` counts device reads of `2^(k-1) + 1 ..= 2^k`
/// bytes (bucket 0: reads of 0 or 1 byte); reads above 2 GiB land in the last bucket.
pub const HIST_BUCKETS: usize = 32;

/// Counters of a read backend since it was opened or last reset.
///
/// *Logical* requests are what the caller asked for ([`ReadReq`](super::ReadReq)s); *device* reads are what
/// the backend issued after merging neighbours and rounding to the alignment. For the mmap backend a device
/// read is one copy out of the page cache, and the bytes it read are the bytes copied.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IoStats {
    /// Calls to `read_batch`.
    pub batches: u64,
    /// Logical requests.
    pub requests: u64,
    /// Device reads issued.
    pub reads: u64,
    /// Bytes the logical requests asked for.
    pub bytes_requested: u64,
    /// Bytes the device reads transferred (alignment padding and merge gaps included).
    pub bytes_read: u64,
    /// Device reads by size, in powers of two (see [`HIST_BUCKETS`]).
    pub chunk_hist: [u64; HIST_BUCKETS],
    /// Wall time spent waiting for device reads: from the first submission of a batch to its last
    /// completion, summed over batches.
    pub wait_ns: u64,
    /// Sum over device reads of the time from submission to completion (mean latency = this / `reads`).
    pub latency_ns: u64,
    /// Wall time spent copying logical requests out of the scratch buffer into the caller's buffer.
    pub copy_ns: u64,
}

impl IoStats {
    /// Bytes read from the device per byte asked for; 1.0 when nothing was asked for.
    pub fn read_amplification(&self) -> f64 {
        if self.bytes_requested == 0 {
            1.0
        } else {
            self.bytes_read as f64 / self.bytes_requested as f64
        }
    }

    /// Mean time from submission to completion of one device read, in microseconds (0 without reads).
    pub fn mean_latency_us(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.latency_ns as f64 / self.reads as f64 / 1e3
        }
    }

    /// Device bytes per second of waiting, in MiB/s (0 when no time was spent).
    pub fn throughput_mib_s(&self) -> f64 {
        if self.wait_ns == 0 {
            0.0
        } else {
            self.bytes_read as f64 / (1024.0 * 1024.0) / (self.wait_ns as f64 / 1e9)
        }
    }

    /// The histogram bucket of a read of `len` bytes.
    pub fn bucket(len: u64) -> usize {
        let k = len.max(1).next_power_of_two().trailing_zeros() as usize;
        k.min(HIST_BUCKETS - 1)
    }

    /// Counts one device read of `len` bytes.
    pub fn count_read(&mut self, len: u64) {
        self.reads += 1;
        self.bytes_read += len;
        self.chunk_hist[Self::bucket(len)] += 1;
    }

    /// Non-empty histogram buckets as (upper bound in bytes, count).
    pub fn histogram(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.chunk_hist.iter().enumerate().filter(|(_, &c)| c > 0).map(|(k, &c)| (1u64 << k, c))
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &IoStats) {
        self.batches += other.batches;
        self.requests += other.requests;
        self.reads += other.reads;
        self.bytes_requested += other.bytes_requested;
        self.bytes_read += other.bytes_read;
        for (a, b) in self.chunk_hist.iter_mut().zip(other.chunk_hist.iter()) {
            *a += b;
        }
        self.wait_ns += other.wait_ns;
        self.latency_ns += other.latency_ns;
        self.copy_ns += other.copy_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_amplification() {
        assert_eq!(IoStats::bucket(0), 0);
        assert_eq!(IoStats::bucket(1), 0);
        assert_eq!(IoStats::bucket(4096), 12);
        assert_eq!(IoStats::bucket(4097), 13);
        assert_eq!(IoStats::bucket(u64::MAX / 2), HIST_BUCKETS - 1);
        let mut s = IoStats::default();
        assert_eq!(s.read_amplification(), 1.0);
        s.bytes_requested = 100;
        s.count_read(4096);
        s.count_read(8192);
        assert_eq!(s.reads, 2);
        assert!((s.read_amplification() - 122.88).abs() < 1e-9);
        assert_eq!(s.histogram().collect::<Vec<_>>(), vec![(4096, 1), (8192, 1)]);
        let mut t = s.clone();
        t.add(&s);
        assert_eq!(t.bytes_read, 2 * s.bytes_read);
        assert_eq!(serde_json::to_value(&t).unwrap()["reads"], 4);
    }
}
