//! The paper's naive row reads every weight from flash per token (Table 2: 13.4 GB for OPT 6.7B), not only the
//! FFN. With [`super::FlashConfig::read_resident`] the flash loop also reads, per token and layer, that layer's
//! tensors of `resident.bin` (attention, norms), and with the last layer the model's other tensors
//! (embeddings, the output head, the final norm), through a backend of the FFN's kind and settings, and
//! checks each against the crc32c the manifest gives it. The time counts as I/O, the bytes and reads in the
//! I/O counters.
//!
//! The compute still uses the copy of `resident.bin` loaded at start: its bytes are the same (the check says
//! so), so the arithmetic and its cost are those of computing from the bytes just read, and the model need
//! not be rebuilt around a buffer every token.

use std::path::Path;
use std::time::Instant;

use super::{nanos, FlashFfn, FlashStats};
use crate::io::{open_backend, AlignedBuf, BackendKind, IoConfig, IoStats, ReadBackend, ReadReq};
use crate::layout::TensorSpan;
use crate::{Error, Result};

/// Bytes read per batch (the buffer's size).
const BATCH: u64 = 16 << 20;
/// Bytes per request of a batch.
const REQUEST: u64 = 1 << 20;
/// Requests start on this boundary, which O_DIRECT needs.
const ALIGN: u64 = 4096;

/// `resident.bin`'s tensors read again every token, layer by layer.
pub(super) struct ResidentReads {
    backend: Box<dyn ReadBackend>,
    /// Per layer, the runs its tensors lie in; the last layer's also hold the tensors of no layer.
    per_layer: Vec<Vec<Run>>,
    buf: AlignedBuf,
    reqs: Vec<ReadReq>,
    /// Per tensor of the run being read, its crc32c so far (reused).
    crcs: Vec<u32>,
}

/// Adjacent tensors read as one range of the file: from the aligned start of the first to the aligned end of
/// the last (or the file's end), so that a page two tensors share is read once.
struct Run {
    start: u64,
    end: u64,
    /// In file order.
    tensors: Vec<TensorSpan>,
}

/// `tensors` in file order grouped into [`Run`]s of pages that touch or overlap, in a file of `file_len` bytes.
fn runs(mut tensors: Vec<TensorSpan>, file_len: u64) -> Vec<Run> {
    tensors.sort_by_key(|t| t.offset);
    let mut runs: Vec<Run> = Vec::new();
    for t in tensors {
        let (start, end) = (t.offset - t.offset % ALIGN, (t.offset + t.len).next_multiple_of(ALIGN).min(file_len));
        match runs.last_mut() {
            Some(r) if start <= r.end => {
                r.end = r.end.max(end);
                r.tensors.push(t);
            }
            _ => runs.push(Run { start, end, tensors: vec![t] }),
        }
    }
    runs
}

impl ResidentReads {
    /// Reads of `path` (`resident.bin`, whose tensors are `spans`) for a model of `n_layers` layers, through a
    /// backend of `kind` opened with `io`.
    pub(super) fn open(
        kind: BackendKind,
        path: &Path,
        io: &IoConfig,
        spans: &[TensorSpan],
        n_layers: usize,
    ) -> Result<ResidentReads> {
        let file_len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        let mut per_layer = vec![Vec::new(); n_layers];
        let mut rest = Vec::new();
        for s in spans {
            if s.offset.checked_add(s.len).is_none_or(|end| end > file_len) {
                return Err(Error::Layout {
                    path: path.to_path_buf(),
                    what: format!("tensor `{}` reaches past the file's {file_len} bytes", s.name),
                });
            }
            match s.layer() {
                Some(l) if l < n_layers => per_layer[l].push(s.clone()),
                _ => rest.push(s.clone()),
            }
        }
        match per_layer.last_mut() {
            Some(last) => last.extend(rest),
            None => return Err(Error::Invalid("a model of no layers has no resident reads".into())),
        }
        let per_layer = per_layer.into_iter().map(|t| runs(t, file_len)).collect();
        let mut backend = open_backend(kind, path, io)?;
        backend.reserve_scratch(REQUEST as usize)?;
        let buf = AlignedBuf::new(BATCH as usize)?;
        Ok(ResidentReads { backend, per_layer, buf, reqs: Vec::new(), crcs: Vec::new() })
    }

    /// Reads `layer`'s runs (with the last layer, the other tensors' too) and checks every tensor; the time goes
    /// to `stats.io_ns`, the check's part also to `stats.verify_ns`.
    pub(super) fn read_layer(&mut self, layer: usize, stats: &mut FlashStats) -> Result<()> {
        let t0 = Instant::now();
        let mut verify_ns = 0;
        let Some(runs) = self.per_layer.get(layer) else { return Ok(()) };
        for run in runs {
            self.crcs.clear();
            self.crcs.resize(run.tensors.len(), 0);
            // Batches of at most BATCH bytes from the run's aligned start, requests of REQUEST bytes.
            let mut at = run.start;
            while at < run.end {
                let stop = (at + BATCH).min(run.end);
                self.reqs.clear();
                let mut from = at;
                while from < stop {
                    let len = REQUEST.min(stop - from);
                    self.reqs.push(ReadReq { offset: from, len: len as usize, dst: (from - at) as usize });
                    from += len;
                }
                self.backend.read_batch(&self.reqs, &mut self.buf)?;
                let t = Instant::now();
                let bytes = self.buf.as_slice();
                for (crc, s) in self.crcs.iter_mut().zip(&run.tensors) {
                    let (a, b) = (s.offset.max(at), (s.offset + s.len).min(stop));
                    if a < b {
                        *crc = crc32c::crc32c_append(*crc, &bytes[(a - at) as usize..(b - at) as usize]);
                    }
                }
                verify_ns += nanos(t);
                at = stop;
            }
            if let Some((s, &crc)) = run.tensors.iter().zip(&self.crcs).find(|(s, &crc)| crc != s.crc32c) {
                return Err(Error::Checksum {
                    path: self.backend.path().to_path_buf(),
                    place: format!("tensor `{}`, read again for the naive row", s.name),
                    stored: s.crc32c,
                    computed: crc,
                });
            }
        }
        stats.io_ns += nanos(t0);
        stats.verify_ns += verify_ns;
        Ok(())
    }

    /// The reads' counters.
    pub(super) fn io(&self) -> &IoStats {
        self.backend.stats()
    }

    /// Zeroes the counters.
    pub(super) fn reset_stats(&mut self) {
        self.backend.reset_stats();
    }

    /// DRAM the reads hold: the batch buffer and the backend's own.
    pub(super) fn dram_bytes(&self) -> usize {
        self.buf.capacity() + self.backend.scratch_bytes()
    }
}

impl FlashFfn {
    /// Also reads `resident.bin`'s tensors every token, layer by layer (the paper's naive row); `None` stops.
    pub(super) fn set_resident_reads(&mut self, reads: Option<ResidentReads>) {
        self.resident_reads = reads;
    }

    /// The resident reads of `layer`, when they are on.
    pub(super) fn read_resident(&mut self, layer: usize) -> Result<()> {
        match self.resident_reads.as_mut() {
            Some(r) => r.read_layer(layer, &mut self.stats),
            None => Ok(()),
        }
    }
}
