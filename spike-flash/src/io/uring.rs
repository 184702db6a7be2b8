//! [`UringBackend`]: batched reads through io_uring, O_DIRECT by default.
//!
//! One ring per backend. A batch's device reads are pushed into the submission queue up to
//! [`IoConfig::queue_depth`] at a time and handed to the kernel [`IoConfig::submit_batch`] at a time; each
//! completion frees a slot that is refilled at once (after [`IoConfig::complete_batch`] completions), so the
//! device sees a full queue until the batch runs out.
//! `user_data` is the index of the span in the batch's plan, which doubles as the slab of in-flight reads.
//! Memory a read targets (the caller's buffer or the backend's scratch) is borrowed for the whole call and
//! every submitted read is reaped before `read_batch` returns, on error too.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use super::plan::{BufInfo, Plan, Target};
use super::{open_read, read_error, AlignedBuf, IoConfig, IoStats, ReadBackend, ReadReq};
use crate::{Error, Result};

/// Why a ring could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The kernel refused io_uring itself; the caller may fall back to another backend.
    Refused(String),
    /// Anything else (the file, the configuration).
    Other(Error),
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::Other(e)
    }
}

/// Per-span bookkeeping while a batch is in flight.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Where the span's bytes land (address in the caller's buffer or the scratch buffer).
    addr: usize,
    /// Bytes arrived so far (a short read is resubmitted for the rest).
    done: usize,
    /// When the span was first submitted.
    submitted: Option<Instant>,
}

/// Requests handed over as they arrive ([`ReadBackend::read_batch_arriving`]): the batch's requests, the
/// address of the caller's buffer, and the callback.
struct Early<'a> {
    reqs: &'a [ReadReq],
    buf_addr: usize,
    arrived: &'a mut dyn FnMut(usize, &[u8]) -> Result<()>,
}

/// io_uring read backend.
pub struct UringBackend {
    path: PathBuf,
    file: File,
    file_len: u64,
    ring: IoUring,
    /// The file is registered with the ring at index 0.
    fixed: bool,
    cfg: IoConfig,
    plan: Plan,
    scratch: AlignedBuf,
    slots: Vec<Slot>,
    /// Spans whose short read must be resubmitted for the rest.
    resubmit: Vec<usize>,
    stats: IoStats,
}

impl UringBackend {
    /// Opens `path` (O_DIRECT when `cfg.direct`) and sets up a ring of `cfg.queue_depth` entries. Fails with
    /// [`Error::Unsupported`] when the kernel refuses io_uring; [`open_backend`](super::open_backend) falls
    /// back to the thread pool instead.
    pub fn new(path: &Path, cfg: &IoConfig) -> Result<Self> {
        match Self::open(path, cfg) {
            Ok(b) => Ok(b),
            Err(OpenError::Refused(what)) => {
                Err(Error::Unsupported { path: path.to_path_buf(), what: format!("io_uring: {what}") })
            }
            Err(OpenError::Other(e)) => Err(e),
        }
    }

    pub(crate) fn open(path: &Path, cfg: &IoConfig) -> std::result::Result<Self, OpenError> {
        let cfg = cfg.clone().validated()?;
        if cfg.force_fallback {
            return Err(OpenError::Refused("fallback forced by the configuration".into()));
        }
        let (file, file_len) = open_read(path, cfg.direct)?;
        let entries = cfg.queue_depth.next_power_of_two() as u32;
        // COOP_TASKRUN (Linux 5.19) spares an interrupt per completion; older kernels refuse it, then the ring
        // is set up without it.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries))
            .map_err(|e| OpenError::Refused(format!("ring setup: {e}")))?;
        let fixed = cfg.register_file && ring.submitter().register_files(&[file.as_raw_fd()]).is_ok();
        let scratch = AlignedBuf::with_align(0, cfg.align)?;
        Ok(UringBackend {
            path: path.to_path_buf(),
            file,
            file_len,
            ring,
            fixed,
            cfg,
            plan: Plan::default(),
            scratch,
            slots: Vec::new(),
            resubmit: Vec::new(),
            stats: IoStats::default(),
        })
    }

    /// Plans a batch and sets up its slots and counters; returns the address of the caller's buffer.
    fn start(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<usize> {
        let info = BufInfo { len: buf.len(), addr: buf.as_mut_ptr() as usize };
        self.plan.build(reqs, &self.cfg, self.file_len, &self.path, Some(info))?;
        self.scratch.resize(self.plan.scratch_len)?;
        let (buf_addr, scratch_addr) = (buf.as_mut_ptr() as usize, self.scratch.as_mut_ptr() as usize);
        self.slots.clear();
        self.slots.extend(self.plan.spans.iter().map(|s| Slot {
            addr: match s.target {
                Target::Direct(dst) => buf_addr + dst,
                Target::Scratch(at) => scratch_addr + at,
            },
            done: 0,
            submitted: None,
        }));
        self.stats.batches += 1;
        self.stats.requests += reqs.len() as u64;
        self.stats.bytes_requested += Plan::bytes_requested(reqs);
        Ok(buf_addr)
    }

    /// Whether the file is registered with the ring.
    pub fn file_registered(&self) -> bool {
        self.fixed
    }

    /// Pushes the read of the rest of span `key` into the submission queue.
    fn push(&mut self, key: usize) {
        let span = self.plan.spans[key];
        let slot = &mut self.slots[key];
        let (addr, len, off) = (slot.addr + slot.done, span.len - slot.done, span.offset + slot.done as u64);
        let entry = if self.fixed {
            opcode::Read::new(types::Fixed(0), addr as *mut u8, len as u32)
        } else {
            opcode::Read::new(types::Fd(self.file.as_raw_fd()), addr as *mut u8, len as u32)
        }
        .offset(off)
        .build()
        .user_data(key as u64);
        // SAFETY: the entry's buffer `addr..addr + len` lies inside the caller's `buf` or `self.scratch`, both
        // borrowed (mutably) by `read_batch` until every submitted entry has been reaped, and distinct spans
        // target disjoint ranges. The ring has at least `queue_depth` submission entries and no more than
        // `queue_depth` reads are outstanding, each submitted before the next push round, so the queue has room.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        pushed.expect("in-flight reads never exceed the submission queue's capacity");
    }

    /// Submits pushed entries and waits for `want` completions, retrying when interrupted.
    fn submit_and_wait(&mut self, want: usize) -> std::io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {}
                // EBUSY: the completion queue is full; reaping it (the caller's next step) makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the planned spans to completion. With `early` (the batch's requests, the caller's buffer's address
    /// and a callback; only when every span is a direct read into its own range of the buffer), each request
    /// is handed to the callback as its read completes. Returns the first error (a read's, or the callback's),
    /// but only after every submitted read has completed.
    fn run(&mut self, mut early: Option<Early<'_>>) -> Result<()> {
        let n = self.plan.spans.len();
        let qd = self.cfg.queue_depth;
        let (mut next, mut inflight) = (0usize, 0usize);
        let mut first_err: Option<Error> = None;
        while next < n || inflight > 0 {
            while let Some(key) = self.resubmit.pop() {
                self.push(key);
                inflight += 1;
            }
            if first_err.is_none() {
                let now = Instant::now();
                let mut pushed = 0;
                while inflight < qd && next < n {
                    self.slots[next].submitted = Some(now);
                    self.push(next);
                    next += 1;
                    inflight += 1;
                    pushed += 1;
                    if pushed % self.cfg.submit_batch == 0 && inflight < qd && next < n {
                        // An error here leaves the entries queued; the `submit_and_wait` below submits them
                        // again and handles its error.
                        let _ = self.ring.submit();
                    }
                }
            }
            if inflight == 0 {
                break;
            }
            if let Err(e) = self.submit_and_wait(self.cfg.complete_batch.min(inflight)) {
                // Entries pushed but not submitted are still in the submission queue, so the kernel may
                // hold buffers we cannot wait for: returning would let them be freed under it.
                eprintln!("spike: io_uring_enter failed with reads in flight ({e}); aborting to keep memory safe");
                std::process::abort();
            }
            let now = Instant::now();
            for cqe in self.ring.completion() {
                inflight -= 1;
                let key = cqe.user_data() as usize;
                let span = self.plan.spans[key];
                let slot = &mut self.slots[key];
                let res = cqe.result();
                if res < 0 {
                    let e = std::io::Error::from_raw_os_error(-res);
                    first_err.get_or_insert(read_error(&self.path, span.offset, span.len, e));
                    continue;
                }
                slot.done += res as usize;
                if slot.done >= span.need {
                    let ns = slot.submitted.map_or(0, |t| (now - t).as_nanos() as u64);
                    self.stats.latency_ns += ns;
                    self.stats.latency_hist.record(ns);
                    if let (Some(e), None, Target::Direct(dst)) = (early.as_mut(), &first_err, span.target) {
                        let i = self.plan.order[span.first];
                        // SAFETY: span `key` is a direct read of exactly request `i` (`Early`'s condition) into
                        // `dst..dst + len` of the caller's buffer, which `Plan::build` checked lies inside it; the
                        // read has completed (`done >= need`, and `need` is the whole request), so the kernel no
                        // longer writes there, and the spans still in flight target other, disjoint ranges
                        // (checked before the batch started). `read_batch_arriving` holds the buffer's only
                        // (mutable) borrow and uses it for nothing else while the batch runs, so this shared
                        // view is the only reference to these bytes while the callback runs.
                        let bytes =
                            unsafe { std::slice::from_raw_parts((e.buf_addr + dst) as *const u8, e.reqs[i].len) };
                        if let Err(err) = (e.arrived)(i, bytes) {
                            first_err = Some(err);
                        }
                    }
                } else if res == 0 || !slot.done.is_multiple_of(512) {
                    let msg = format!("short read: {} of {} bytes, then end of file", slot.done, span.need);
                    let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, msg);
                    first_err.get_or_insert(read_error(&self.path, span.offset, span.len, e));
                } else if first_err.is_none() {
                    self.resubmit.push(key);
                }
            }
        }
        self.resubmit.clear();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl ReadBackend for UringBackend {
    fn config(&self) -> Option<&IoConfig> {
        Some(&self.cfg)
    }

    fn kind(&self) -> Option<super::BackendKind> {
        Some(super::BackendKind::Uring)
    }

    fn name(&self) -> &'static str {
        "uring"
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn reserve_scratch(&mut self, bytes: usize) -> Result<()> {
        self.scratch.reserve(Plan::scratch_bound(bytes, &self.cfg))
    }

    fn scratch_bytes(&self) -> usize {
        self.scratch.capacity()
    }

    fn read_batch(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<()> {
        self.start(reqs, buf)?;
        let t0 = Instant::now();
        let res = self.run(None);
        self.stats.wait_ns += t0.elapsed().as_nanos() as u64;
        res?;
        self.plan.finish(reqs, self.scratch.as_slice(), buf.as_mut_slice(), &mut self.stats);
        Ok(())
    }

    fn read_batch_arriving(
        &mut self,
        reqs: &[ReadReq],
        buf: &mut AlignedBuf,
        arrived: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let buf_addr = self.start(reqs, buf)?;
        // Early hand-over needs every span to be a direct read into its own range of the buffer (as the chunks
        // of a run of records are): a scratch span's requests are copied out only once every read is done, and
        // a range two reads share could still be written while it is handed over.
        let direct = self.plan.spans.iter().try_fold(0usize, |end, s| match s.target {
            Target::Direct(dst) if dst >= end => Some(dst + s.len),
            _ => None,
        });
        let t0 = Instant::now();
        let res = match direct {
            Some(_) => self.run(Some(Early { reqs, buf_addr, arrived: &mut *arrived })),
            None => self.run(None),
        };
        self.stats.wait_ns += t0.elapsed().as_nanos() as u64;
        res?;
        self.plan.finish(reqs, self.scratch.as_slice(), buf.as_mut_slice(), &mut self.stats);
        match direct {
            // Requests of no bytes have no span.
            Some(_) => reqs.iter().enumerate().filter(|(_, r)| r.len == 0).try_for_each(|(i, _)| arrived(i, &[])),
            None => super::hand_over(reqs, buf.as_slice(), arrived),
        }
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = IoStats::default();
    }
}
