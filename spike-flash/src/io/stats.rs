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
    /// Device reads by latency (submission to completion), for percentiles: filled by the io_uring backend
    /// (the device profiler's); empty for the others, which measure only the sum `latency_ns`.
    #[serde(skip)]
    pub latency_hist: LatencyHist,
}

/// Buckets of [`LatencyHist`]: 8 per octave from 1024 ns (bucket 0 holds everything faster) to 2^36 ns (about
/// 69 s; the last bucket holds everything slower).
pub const LATENCY_BUCKETS: usize = 26 * 8;
/// The octave of [`LatencyHist`]'s bucket 0: 2^10 ns.
const LATENCY_FIRST_OCTAVE: u32 = 10;

/// A histogram of read latencies with buckets an eighth of an octave wide (each bucket's upper bound is at
/// most 12.5% above its lower), so a percentile read from it is within 12.5% of the exact one.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHist {
    counts: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist { counts: [0; LATENCY_BUCKETS] }
    }
}

impl LatencyHist {
    /// The bucket of a latency of `ns` nanoseconds: octave `o` (2^o <= ns < 2^(o+1)) and the top three bits
    /// below the leading one.
    pub fn bucket(ns: u64) -> usize {
        if ns < 1 << LATENCY_FIRST_OCTAVE {
            return 0;
        }
        let octave = 63 - ns.leading_zeros();
        let sub = (ns >> (octave - 3)) & 7;
        (((octave - LATENCY_FIRST_OCTAVE) * 8) as usize + sub as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The latencies bucket `b` holds, in nanoseconds: `[low, high)`.
    pub fn bounds(b: usize) -> (f64, f64) {
        if b == 0 {
            return (0.0, f64::from(1u32 << LATENCY_FIRST_OCTAVE) * 1.125);
        }
        let octave = LATENCY_FIRST_OCTAVE as i32 + (b / 8) as i32;
        let step = 2f64.powi(octave - 3);
        let low = 2f64.powi(octave) + (b % 8) as f64 * step;
        (low, low + step)
    }

    /// Counts one read of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
    }

    /// Reads counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &LatencyHist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    /// The latency below which a share `q` (in `[0, 1]`) of the reads lie, in microseconds, interpolated
    /// linearly within its bucket; `None` without reads.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (below + c) as f64 >= rank {
                let (lo, hi) = Self::bounds(b);
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some((lo + within * (hi - lo)) / 1e3);
            }
            below += c;
        }
        let last = self.counts.iter().rposition(|&c| c > 0).expect("total > 0");
        Some(Self::bounds(last).1 / 1e3)
    }
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
        self.latency_hist.add(&other.latency_hist);
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

    #[test]
    fn latency_buckets_cover_each_octave_in_eighths() {
        assert_eq!(LatencyHist::bucket(0), 0);
        assert_eq!(LatencyHist::bucket(1023), 0);
        assert_eq!(LatencyHist::bucket(1024), 0);
        assert_eq!(LatencyHist::bucket(1024 + 128), 1);
        assert_eq!(LatencyHist::bucket(2048), 8);
        assert_eq!(LatencyHist::bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // Every latency lies in its bucket's bounds, and consecutive buckets meet.
        for ns in [1500u64, 4095, 4096, 100_000, 123_456_789, 60_000_000_000] {
            let (lo, hi) = LatencyHist::bounds(LatencyHist::bucket(ns));
            assert!(lo <= ns as f64 && (ns as f64) < hi && hi <= lo * 1.125 + 1e-9, "{ns}: [{lo}, {hi})");
        }
        for b in 1..LATENCY_BUCKETS - 1 {
            assert_eq!(LatencyHist::bounds(b).1, LatencyHist::bounds(b + 1).0, "{b}");
        }
    }

    #[test]
    fn latency_percentiles_are_within_an_eighth_octave_of_the_exact_ones() {
        use rand::{Rng, SeedableRng};
        // Log-uniform latencies from 20 us to 20 ms (seed named for this test).
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x1a7);
        let mut samples: Vec<u64> = (0..100_000).map(|_| 10f64.powf(rng.gen_range(4.3..7.3)) as u64).collect();
        let mut h = LatencyHist::default();
        for &ns in &samples {
            h.record(ns);
        }
        samples.sort_unstable();
        assert_eq!(h.count(), samples.len() as u64);
        for q in [0.01, 0.5, 0.9, 0.99, 0.999] {
            let exact = samples[((q * samples.len() as f64) as usize).min(samples.len() - 1)] as f64 / 1e3;
            let got = h.quantile_us(q).unwrap();
            assert!((got / exact - 1.0).abs() <= 0.125, "q {q}: {got} us against {exact} us");
        }
        assert_eq!(LatencyHist::default().quantile_us(0.5), None);
        let mut two = h.clone();
        two.add(&h);
        assert_eq!(two.count(), 2 * h.count());
        assert_eq!(two.quantile_us(0.5), h.quantile_us(0.5));
    }
}
