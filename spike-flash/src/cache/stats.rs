//! [`CacheStats`]: what a neuron cache did, per layer or summed over layers.

use std::iter::Sum;
use std::ops::AddAssign;

use serde::Serialize;

/// Counters of one [`LayerCache`](super::LayerCache) since it was built or its stats were reset, plus its
/// fixed size. Summing over layers (`+=`, [`add`](Self::add), `Sum`) adds every field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Tokens begun (`begin_token` calls).
    pub tokens: u64,
    /// Active neurons found cached at `begin_token`.
    pub hits: u64,
    /// Active neurons not cached at `begin_token`: each one is read from flash.
    pub misses: u64,
    /// Records stored by `insert`.
    pub inserts: u64,
    /// Records `insert` declined to keep (the policy keeps nothing more, or every row is in use this token).
    pub declined: u64,
    /// Neurons dropped from the cache, by replacement in `insert` or by the window in `end_token`.
    pub evictions: u64,
    /// Rows moved to fill the hole a deleted neuron left (the last row moves into it).
    pub rows_moved: u64,
    /// Bytes the cache copied: inserted records plus moved rows.
    pub bytes_copied: u64,
    /// Records written by `fill_all` (not counted as misses or inserts).
    pub prefilled: u64,
    /// Rows in use when the stats were taken.
    pub rows: u64,
    /// Row slots allocated.
    pub capacity: u64,
    /// DRAM the cache holds, fixed from construction: row matrix, maps and policy state.
    pub dram_bytes: u64,
}

impl CacheStats {
    /// The fixed DRAM footprint in bytes (rows, maps and policy state).
    pub fn bytes(&self) -> u64 {
        self.dram_bytes
    }

    /// Hits per active neuron, 0 when nothing was looked up.
    pub fn hit_rate(&self) -> f64 {
        let looked = self.hits + self.misses;
        if looked == 0 {
            0.0
        } else {
            self.hits as f64 / looked as f64
        }
    }

    /// Adds `other`'s fields to these.
    pub fn add(&mut self, other: &CacheStats) {
        self.tokens += other.tokens;
        self.hits += other.hits;
        self.misses += other.misses;
        self.inserts += other.inserts;
        self.declined += other.declined;
        self.evictions += other.evictions;
        self.rows_moved += other.rows_moved;
        self.bytes_copied += other.bytes_copied;
        self.prefilled += other.prefilled;
        self.rows += other.rows;
        self.capacity += other.capacity;
        self.dram_bytes += other.dram_bytes;
    }
}

impl AddAssign<&CacheStats> for CacheStats {
    fn add_assign(&mut self, other: &CacheStats) {
        self.add(other);
    }
}

impl<'a> Sum<&'a CacheStats> for CacheStats {
    fn sum<I: Iterator<Item = &'a CacheStats>>(iter: I) -> CacheStats {
        let mut total = CacheStats::default();
        for s in iter {
            total.add(s);
        }
        total
    }
}

impl Sum<CacheStats> for CacheStats {
    fn sum<I: Iterator<Item = CacheStats>>(iter: I) -> CacheStats {
        let mut total = CacheStats::default();
        for s in iter {
            total.add(&s);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_field() {
        let a = CacheStats {
            tokens: 1,
            hits: 2,
            misses: 3,
            inserts: 4,
            declined: 5,
            evictions: 6,
            rows_moved: 7,
            bytes_copied: 8,
            prefilled: 9,
            rows: 10,
            capacity: 11,
            dram_bytes: 12,
        };
        let total: CacheStats = [a.clone(), a.clone()].iter().sum();
        let doubled = CacheStats {
            tokens: 2,
            hits: 4,
            misses: 6,
            inserts: 8,
            declined: 10,
            evictions: 12,
            rows_moved: 14,
            bytes_copied: 16,
            prefilled: 18,
            rows: 20,
            capacity: 22,
            dram_bytes: 24,
        };
        assert_eq!(total, doubled);
        assert_eq!(total.bytes(), 24);
        assert!((a.hit_rate() - 0.4).abs() < 1e-12);
        assert_eq!(CacheStats::default().hit_rate(), 0.0);
    }
}
