//! [`MmapBackend`]: copies each request out of a memory map of the file, through the page cache. This is what
//! llama.cpp does with its default mmap, and the naive baseline: no O_DIRECT, no batching, no merging; the
//! kernel's page faults and readahead decide what is read from the device.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::plan::Plan;
use super::{map_file, AlignedBuf, IoConfig, IoStats, ReadBackend, ReadReq};
use crate::{Error, Result};

/// Page-cache backend. A "device read" in its stats is one copy of one request out of the map; the bytes it
/// reads are the bytes copied, and its wait time is the copying time, page faults included.
pub struct MmapBackend {
    path: PathBuf,
    map: super::Mapping,
    cfg: IoConfig,
    plan: Plan,
    stats: IoStats,
}

impl MmapBackend {
    /// Maps `path` read-only ([`map_file`]: a truncation of the file meanwhile ends the process with a message
    /// naming it, at the first read of a vanished page).
    pub fn open(path: &Path, cfg: &IoConfig) -> Result<Self> {
        let cfg = cfg.clone().validated()?;
        let map = map_file(path)?;
        Ok(MmapBackend { path: path.to_path_buf(), map, cfg, plan: Plan::default(), stats: IoStats::default() })
    }
}

impl ReadBackend for MmapBackend {
    fn config(&self) -> Option<&IoConfig> {
        Some(&self.cfg)
    }

    fn kind(&self) -> Option<super::BackendKind> {
        Some(super::BackendKind::Mmap)
    }

    fn name(&self) -> &'static str {
        "mmap"
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_batch(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<()> {
        // Planning only validates here (bounds, destinations); the copies follow the requests as given.
        let info = super::plan::BufInfo { len: buf.len(), addr: 0 };
        self.plan.build(reqs, &self.cfg, self.map.len() as u64, &self.path, Some(info))?;
        self.stats.batches += 1;
        self.stats.requests += reqs.len() as u64;
        self.stats.bytes_requested += Plan::bytes_requested(reqs);
        let t0 = Instant::now();
        let out = buf.as_mut_slice();
        for r in reqs.iter().filter(|r| r.len > 0) {
            let from = usize::try_from(r.offset).map_err(|_| {
                Error::Invalid(format!("{}: offset {} beyond the address space", self.path.display(), r.offset))
            })?;
            out[r.dst..r.dst + r.len].copy_from_slice(&self.map[from..from + r.len]);
            self.stats.count_read(r.len as u64);
        }
        let ns = t0.elapsed().as_nanos() as u64;
        self.stats.wait_ns += ns;
        self.stats.latency_ns += ns;
        Ok(())
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = IoStats::default();
    }
}
