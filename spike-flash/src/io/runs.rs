//! Reading one run of records straight into the caller's buffer. When a batch's records are one run in the
//! file (contiguous, each record in its own place), the aligned range around the run is read in large chunks
//! directly into the destination, whose records then start a few bytes in, instead of through a backend's
//! scratch buffer and a copy.

use super::{IoConfig, ReadReq};

/// How runs are read: the alignment and the largest read of a backend's settings, and the file's length.
#[derive(Debug, Clone, Copy)]
pub struct RunReader {
    /// The backend's read alignment.
    align: u64,
    /// Bytes per read: the backend's largest merged read, rounded down to the alignment (at least one unit).
    chunk: u64,
    /// Length of the file: the aligned range must end inside it.
    file_len: u64,
}

impl RunReader {
    /// Runs read with `cfg`'s alignment and largest merge from a file of `file_len` bytes.
    pub fn new(cfg: &IoConfig, file_len: u64) -> RunReader {
        let align = cfg.align as u64;
        RunReader { align, chunk: (cfg.max_merge as u64 / align).max(1) * align, file_len }
    }

    /// The aligned file range around `bytes` bytes from `first`, if it ends inside the file.
    fn range(&self, first: u64, bytes: usize) -> Option<(u64, u64)> {
        let start = first / self.align * self.align;
        let end = (first + bytes as u64).div_ceil(self.align) * self.align;
        (end <= self.file_len).then_some((start, end))
    }

    /// `reqs` holds one read of `record` bytes per entry of `ids`. If those records are one run in the file (the
    /// span of their offsets is exactly `ids.len()` records and each place in it is taken once), puts `ids` in
    /// file order into `in_file`, replaces `reqs` with the chunked reads of the aligned range around the run
    /// (destinations from 0), and returns where the run's first record lands in the destination and the
    /// destination's length. Otherwise returns `None` and leaves `reqs` as it was.
    pub fn plan(
        &self,
        reqs: &mut Vec<ReadReq>,
        ids: &[u32],
        record: usize,
        in_file: &mut Vec<u32>,
    ) -> Option<(usize, usize)> {
        let count = ids.len();
        if count == 0 || reqs.len() != count {
            return None;
        }
        // A run spans exactly `count` records (scattered selections stop here), and each record's place in it,
        // from its offset, is filled once.
        let (first, last) = reqs.iter().fold((u64::MAX, 0), |(a, b), r| (a.min(r.offset), b.max(r.offset)));
        if last - first != ((count - 1) * record) as u64 {
            return None;
        }
        in_file.clear();
        in_file.resize(count, u32::MAX);
        for (r, &m) in reqs.iter().zip(ids) {
            let at = (r.offset - first) as usize;
            match in_file.get_mut(at / record) {
                Some(slot) if at.is_multiple_of(record) && *slot == u32::MAX => *slot = m,
                _ => return None,
            }
        }
        let (start, end) = self.range(first, count * record)?;
        reqs.clear();
        let mut at = start;
        while at < end {
            let n = self.chunk.min(end - at);
            reqs.push(ReadReq { offset: at, len: n as usize, dst: (at - start) as usize });
            at += n;
        }
        Some(((first - start) as usize, (end - start) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reversed_run_is_read_as_one_aligned_range() {
        let cfg = IoConfig { align: 4096, max_merge: 8192, ..IoConfig::default() };
        let r = RunReader::new(&cfg, 1 << 20);
        // Three records of 3000 bytes from offset 5000, listed in reverse order.
        let mut reqs: Vec<ReadReq> = (0..3)
            .rev()
            .map(|k| ReadReq { offset: 5000 + k * 3000, len: 3000, dst: (2 - k as usize) * 3000 })
            .collect();
        let mut in_file = Vec::new();
        let (at, len) = r.plan(&mut reqs, &[7, 8, 9], 3000, &mut in_file).unwrap();
        assert_eq!(in_file, vec![9, 8, 7]);
        // The range [4096, 16384) around [5000, 14000), in reads of at most 8192 bytes.
        assert_eq!((at, len), (904, 12288));
        assert_eq!(
            reqs,
            vec![ReadReq { offset: 4096, len: 8192, dst: 0 }, ReadReq { offset: 12288, len: 4096, dst: 8192 }]
        );
    }

    #[test]
    fn scattered_or_doubled_records_are_no_run() {
        let r = RunReader::new(&IoConfig::default(), 1 << 20);
        let mut in_file = Vec::new();
        let gap = vec![ReadReq { offset: 0, len: 100, dst: 0 }, ReadReq { offset: 300, len: 100, dst: 100 }];
        assert!(r.plan(&mut gap.clone(), &[1, 2], 100, &mut in_file).is_none());
        let twice = vec![
            ReadReq { offset: 0, len: 100, dst: 0 },
            ReadReq { offset: 0, len: 100, dst: 100 },
            ReadReq { offset: 200, len: 100, dst: 200 },
        ];
        let mut reqs = twice.clone();
        assert!(r.plan(&mut reqs, &[1, 2, 3], 100, &mut in_file).is_none());
        assert_eq!(reqs, twice);
        // A run whose aligned range would end past the file.
        let short = RunReader::new(&IoConfig::default(), 4000);
        let mut reqs = vec![ReadReq { offset: 3900, len: 100, dst: 0 }];
        assert!(short.plan(&mut reqs, &[1], 100, &mut in_file).is_none());
    }
}
