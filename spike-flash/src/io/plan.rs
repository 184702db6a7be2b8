//! From logical requests to device reads: validation, sorting, merging, rounding to the alignment, and the
//! placement of each device read (straight into the caller's buffer, or into the backend's scratch buffer).
//! The read backends and the cost model share this code, so a prediction sees the reads a backend issues.

use std::path::Path;

use super::config::{IoConfig, MAX_READ};
use super::ReadReq;
use crate::{Error, Result};

/// Where a device read lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// At this byte offset of the caller's buffer: the span is exactly one aligned request whose destination
    /// is aligned, so no copy is needed.
    Direct(usize),
    /// At this byte offset of the backend's scratch buffer (a multiple of the alignment); the logical requests
    /// are copied out afterwards.
    Scratch(usize),
}

/// One device read: an aligned range of the file covering one or more logical requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// File offset, a multiple of the alignment.
    pub offset: u64,
    /// Length, a multiple of the alignment.
    pub len: usize,
    /// Bytes from `offset` that must arrive: up to the end of the last logical request it covers. The rest of
    /// `len` is alignment padding and may lie past the end of the file, where a read comes back short.
    pub need: usize,
    /// Where the bytes land.
    pub target: Target,
    /// The logical requests it covers: `Plan::order[first..end]`.
    pub first: usize,
    pub end: usize,
}

/// The device reads for one batch. Reused from batch to batch so that planning does not allocate once the
/// vectors have grown to the batch size.
#[derive(Debug, Default)]
pub struct Plan {
    /// Indices of the non-empty logical requests, sorted by offset.
    pub order: Vec<usize>,
    /// The device reads, in file order.
    pub spans: Vec<Span>,
    /// Scratch bytes the spans need.
    pub scratch_len: usize,
}

/// What the caller's buffer looks like, for validating destinations and choosing direct targets.
#[derive(Debug, Clone, Copy)]
pub struct BufInfo {
    pub len: usize,
    /// Address of the buffer's first byte.
    pub addr: usize,
}

impl Plan {
    /// Plans `reqs` against a file of `file_len` bytes at `path` (named in errors). With `buf`, every
    /// destination is checked to fit and aligned requests may target the buffer directly; without it (the cost
    /// model) every span targets scratch.
    ///
    /// Errors: a request past the end of the file ([`Error::Read`], unexpected EOF, naming offset and length);
    /// a destination outside the buffer or a request above [`MAX_READ`] ([`Error::Invalid`]).
    pub fn build(
        &mut self,
        reqs: &[ReadReq],
        cfg: &IoConfig,
        file_len: u64,
        path: &Path,
        buf: Option<BufInfo>,
    ) -> Result<()> {
        self.order.clear();
        self.spans.clear();
        self.scratch_len = 0;
        for (i, r) in reqs.iter().enumerate() {
            if r.len > MAX_READ {
                return Err(Error::Invalid(format!(
                    "{}: read of {} bytes at offset {} exceeds the {MAX_READ}-byte limit",
                    path.display(),
                    r.len,
                    r.offset
                )));
            }
            if r.offset.checked_add(r.len as u64).is_none_or(|end| end > file_len) {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    offset: r.offset,
                    length: r.len as u64,
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("past the end of the file ({file_len} bytes)"),
                    ),
                });
            }
            if let Some(b) = buf {
                if r.dst.checked_add(r.len).is_none_or(|end| end > b.len) {
                    return Err(Error::Invalid(format!(
                        "{}: read of {} bytes at offset {} into buffer offset {} overflows the {}-byte buffer",
                        path.display(),
                        r.len,
                        r.offset,
                        r.dst,
                        b.len
                    )));
                }
            }
            if r.len > 0 {
                self.order.push(i);
            }
        }
        // Merging needs file order. Already sorted is the common case (a layer's neurons in file order), and
        // sort_by_key is stable and linear on sorted input. Without merging the caller's order is kept.
        if cfg.merge {
            self.order.sort_by_key(|&i| reqs[i].offset);
        }

        let align = cfg.align as u64;
        let down = |x: u64| x & !(align - 1);
        let up = |x: u64| x.div_ceil(align) * align;
        for (k, &i) in self.order.iter().enumerate() {
            let r = reqs[i];
            let (start, end) = (down(r.offset), up(r.offset + r.len as u64));
            let need_end = r.offset + r.len as u64;
            if let Some(last) = self.spans.last_mut() {
                let last_end = last.offset + last.len as u64;
                let merged_len = end.max(last_end) - last.offset;
                // A request inside the last span costs nothing to add; one that extends it is added only while
                // the span stays within `max_merge`. Past it a new span starts, which may re-read the block the
                // two share: packed records that straddle block boundaries would otherwise chain a whole layer
                // into one read, leaving the queue empty.
                let inside = end <= last_end;
                let near = start <= last_end + cfg.max_gap as u64 && merged_len <= cfg.max_merge as u64;
                if cfg.merge && (inside || near) && merged_len <= MAX_READ as u64 {
                    last.len = merged_len as usize;
                    last.need = last.need.max((need_end - last.offset) as usize);
                    last.end = k + 1;
                    continue;
                }
            }
            self.spans.push(Span {
                offset: start,
                len: (end - start) as usize,
                need: (need_end - start) as usize,
                target: Target::Scratch(0),
                first: k,
                end: k + 1,
            });
        }

        for s in &mut self.spans {
            let direct = buf.and_then(|b| {
                let r = reqs[self.order[s.first]];
                let one = s.end - s.first == 1;
                let exact = r.offset == s.offset && r.len == s.len;
                (one && exact && (b.addr + r.dst).is_multiple_of(cfg.align)).then_some(r.dst)
            });
            s.target = match direct {
                Some(dst) => Target::Direct(dst),
                None => {
                    let at = self.scratch_len;
                    self.scratch_len += s.len;
                    Target::Scratch(at)
                }
            };
        }
        Ok(())
    }

    /// Ends a batch whose device reads all completed: counts them in `stats`, then copies the scratch spans out
    /// to the caller's buffer (timed as copy time).
    pub fn finish(&self, reqs: &[ReadReq], scratch: &[u8], buf: &mut [u8], stats: &mut super::IoStats) {
        for s in &self.spans {
            stats.count_read(s.len as u64);
        }
        let t = std::time::Instant::now();
        self.copy_out(reqs, scratch, buf);
        stats.copy_ns += t.elapsed().as_nanos() as u64;
    }

    /// Copies every logical request of a scratch span from `scratch` to its destination in `buf`.
    pub fn copy_out(&self, reqs: &[ReadReq], scratch: &[u8], buf: &mut [u8]) {
        for s in &self.spans {
            if let Target::Scratch(at) = s.target {
                for &i in &self.order[s.first..s.end] {
                    let r = reqs[i];
                    let from = at + (r.offset - s.offset) as usize;
                    buf[r.dst..r.dst + r.len].copy_from_slice(&scratch[from..from + r.len]);
                }
            }
        }
    }

    /// The most scratch a batch of requests within a range of `bytes` (one layer's records) can need: spans
    /// that overlap are merged, so no page is held twice; the range rounded out to the alignment, plus a page at
    /// each place where a long run is split at `max_merge`.
    pub fn scratch_bound(bytes: usize, cfg: &IoConfig) -> usize {
        bytes.saturating_add(4 * cfg.align)
    }

    /// Bytes the non-empty logical requests ask for.
    pub fn bytes_requested(reqs: &[ReadReq]) -> u64 {
        reqs.iter().map(|r| r.len as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn req(offset: u64, len: usize, dst: usize) -> ReadReq {
        ReadReq { offset, len, dst }
    }

    fn plan(reqs: &[ReadReq], cfg: &IoConfig) -> Plan {
        let mut p = Plan::default();
        p.build(reqs, cfg, 1 << 30, &PathBuf::from("f"), Some(BufInfo { len: 1 << 24, addr: 0 })).unwrap();
        p
    }

    #[test]
    fn merges_rounds_and_places() {
        let cfg = IoConfig::default();
        // Two requests in the same 4 KiB block, one touching block, one far away, one aligned exact.
        let reqs = [req(100, 10, 0), req(8192, 4096, 8192), req(200, 10, 10), req(4096, 100, 20), req(1 << 20, 1, 30)];
        let p = plan(&reqs, &cfg);
        let spans: Vec<_> = p.spans.iter().map(|s| (s.offset, s.len, s.need)).collect();
        // 0..4096, 4096..8192 and 8192..12288 touch: one span.
        assert_eq!(spans, vec![(0, 12288, 12288), (1 << 20, 4096, 1)]);
        assert_eq!(p.scratch_len, 12288 + 4096);

        let no_merge = IoConfig { merge: false, ..cfg.clone() };
        let p = plan(&reqs, &no_merge);
        assert_eq!(p.spans.len(), 5);
        // Without merging the caller's order is kept.
        assert_eq!(p.spans[1].target, Target::Direct(8192), "aligned request, aligned destination");

        // A gap of one block merges only with max_gap >= 4096.
        let reqs = [req(0, 4096, 0), req(8192, 4096, 4096)];
        assert_eq!(plan(&reqs, &cfg).spans.len(), 2);
        let gap = IoConfig { max_gap: 4096, ..cfg.clone() };
        assert_eq!(plan(&reqs, &gap).spans.len(), 1);
        let small = IoConfig { max_gap: 4096, max_merge: 8192, ..cfg.clone() };
        assert_eq!(plan(&reqs, &small).spans.len(), 2, "a merge may not exceed max_merge");

        // Packed 1080-byte records share blocks with their neighbours: a run of them is cut into spans of at
        // most max_merge bytes (a shared block then belongs to two spans), each request whole in one span.
        let reqs: Vec<ReadReq> = (0..100).map(|i| req(i * 1080, 1080, i as usize * 1080)).collect();
        assert_eq!(plan(&reqs, &cfg).spans.len(), 1, "108000 bytes fit in one 1 MiB read");
        let cut = IoConfig { max_merge: 16384, ..cfg };
        let p = plan(&reqs, &cut);
        assert!(p.spans.len() >= 108_000 / 16384, "{} spans", p.spans.len());
        for s in &p.spans {
            assert!(s.len <= 16384 + 4096, "span of {} bytes", s.len);
            for &i in &p.order[s.first..s.end] {
                let r = reqs[i];
                assert!(r.offset >= s.offset && r.offset + r.len as u64 <= s.offset + s.need as u64);
            }
        }
    }

    #[test]
    fn rejects_out_of_bounds() {
        let mut p = Plan::default();
        let cfg = IoConfig::default();
        let path = PathBuf::from("f.bin");
        let e = p.build(&[req(990, 20, 0)], &cfg, 1000, &path, None).unwrap_err().to_string();
        assert!(e.contains("f.bin") && e.contains("offset 990") && e.contains("20 bytes"), "{e}");
        let e = p.build(&[req(0, 20, 90)], &cfg, 1000, &path, Some(BufInfo { len: 100, addr: 0 }));
        assert!(e.is_err());
        p.build(&[req(0, 0, 100)], &cfg, 1000, &path, Some(BufInfo { len: 100, addr: 0 })).unwrap();
        assert!(p.spans.is_empty());
    }
}
