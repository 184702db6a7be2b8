//! Backends for tests: [`MemBackend`] (an in-memory file that counts like a device backend) and
//! [`FaultyBackend`] (wraps another backend and fails chosen requests); and [`CappedAlloc`], the allocator of
//! the fuzz harnesses and their replays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::plan::{BufInfo, Plan};
use super::{AlignedBuf, IoConfig, IoStats, ReadBackend, ReadReq};
use crate::{Error, Result};

/// An in-memory "file". It plans every batch exactly as the device backends do (merging, alignment) and
/// counts the same stats, and it logs the device reads it would have issued, so tests of caches and engines
/// can assert what would have been read.
pub struct MemBackend {
    path: PathBuf,
    data: Arc<[u8]>,
    cfg: IoConfig,
    plan: Plan,
    log: Vec<(u64, usize)>,
    stats: IoStats,
}

impl MemBackend {
    /// A backend over `data`, named `path` in errors.
    pub fn new(path: impl Into<PathBuf>, data: impl Into<Arc<[u8]>>, cfg: &IoConfig) -> Result<Self> {
        let cfg = cfg.clone().validated()?;
        Ok(MemBackend {
            path: path.into(),
            data: data.into(),
            cfg,
            plan: Plan::default(),
            log: Vec::new(),
            stats: IoStats::default(),
        })
    }

    /// The device reads (offset, length) planned since the last reset, in issue order.
    pub fn device_reads(&self) -> &[(u64, usize)] {
        &self.log
    }
}

impl ReadBackend for MemBackend {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_batch(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<()> {
        let info = BufInfo { len: buf.len(), addr: buf.as_mut_ptr() as usize };
        self.plan.build(reqs, &self.cfg, self.data.len() as u64, &self.path, Some(info))?;
        self.stats.batches += 1;
        self.stats.requests += reqs.len() as u64;
        self.stats.bytes_requested += Plan::bytes_requested(reqs);
        for s in &self.plan.spans {
            self.stats.count_read(s.len as u64);
            self.log.push((s.offset, s.len));
        }
        let out = buf.as_mut_slice();
        for r in reqs.iter().filter(|r| r.len > 0) {
            let from = r.offset as usize;
            out[r.dst..r.dst + r.len].copy_from_slice(&self.data[from..from + r.len]);
        }
        Ok(())
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = IoStats::default();
        self.log.clear();
    }
}

/// Which requests a [`FaultyBackend`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The `n`-th logical request (0-based) counted over all batches since the wrapper was made.
    NthRequest(u64),
    /// Every request whose byte range contains this file offset.
    Covering(u64),
}

/// Wraps a backend and fails the batch holding a request chosen by a [`Fault`], with the [`Error::Read`] a
/// device error would give (naming the file, the request's offset and length), before the inner backend
/// reads anything. Other batches pass through.
pub struct FaultyBackend {
    inner: Box<dyn ReadBackend>,
    fault: Fault,
    seen: u64,
    /// Faults injected so far.
    pub injected: u64,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn ReadBackend>, fault: Fault) -> Self {
        FaultyBackend { inner, fault, seen: 0, injected: 0 }
    }

    /// The wrapped backend.
    pub fn into_inner(self) -> Box<dyn ReadBackend> {
        self.inner
    }
}

impl ReadBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn read_batch(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<()> {
        let first = self.seen;
        self.seen += reqs.len() as u64;
        let hit = reqs.iter().enumerate().find(|(i, r)| match self.fault {
            Fault::NthRequest(n) => first + *i as u64 == n,
            Fault::Covering(at) => r.offset <= at && at < r.offset + r.len as u64,
        });
        if let Some((_, r)) = hit {
            self.injected += 1;
            return Err(Error::Read {
                path: self.inner.path().to_path_buf(),
                offset: r.offset,
                length: r.len as u64,
                source: std::io::Error::other("injected fault"),
            });
        }
        self.inner.read_batch(reqs, buf)
    }

    fn stats(&self) -> &IoStats {
        self.inner.stats()
    }

    fn reset_stats(&mut self) {
        self.inner.reset_stats();
    }
}

/// A global allocator for fuzz harnesses and their replays in tests: the system allocator, refusing any single
/// allocation of more than `LIMIT` bytes. A refused allocation makes Rust abort with "memory allocation of N
/// bytes failed", so a reader that sizes a buffer from a count in its input fails loudly under test even on a
/// machine that could have served it.
pub struct CappedAlloc<const LIMIT: usize>;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, or returns null, which the
// `GlobalAlloc` contract allows for any allocation that cannot be served; `System` upholds the rest.
unsafe impl<const LIMIT: usize> std::alloc::GlobalAlloc for CappedAlloc<LIMIT> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller meets `alloc`'s contract (non-zero size), which is the same for `System`.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with this `layout`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller meets `realloc`'s other conditions.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
