//! [`PoolBackend`]: batched reads by a pool of threads doing `pread`, O_DIRECT by default (the paper's
//! approach: 32 threads).
//!
//! The workers live as long as the backend. A batch is published as a job (the planned spans with their
//! target addresses); the workers and the calling thread take spans from a shared counter until none is left,
//! and the caller returns only once every span has been read, so the memory the spans target (borrowed by
//! `read_batch`) outlives every write into it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::plan::{BufInfo, Plan, Target};
use super::{open_read, pread_span, AlignedBuf, IoConfig, IoStats, ReadBackend, ReadReq};
use crate::{Error, Result};

/// One span to read: `len` bytes at `offset` into the memory at `addr`.
#[derive(Debug, Clone, Copy)]
struct Item {
    offset: u64,
    len: usize,
    need: usize,
    addr: usize,
}

/// One batch, shared by the workers.
struct Job {
    items: Vec<Item>,
    /// Next item to take.
    next: AtomicUsize,
    /// Items not yet finished; the batch is over at 0.
    remaining: AtomicUsize,
    latency_ns: AtomicU64,
    error: Mutex<Option<Error>>,
}

struct State {
    generation: u64,
    job: Option<Arc<Job>>,
    shutdown: bool,
}

struct Shared {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock, and the state stays consistent if one did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes items of `job` until none is left.
    fn work_on(&self, job: &Job) {
        loop {
            let i = job.next.fetch_add(1, Ordering::Relaxed);
            let Some(&it) = job.items.get(i) else { return };
            let t = Instant::now();
            // SAFETY: `addr..addr + len` lies in the caller's buffer or the backend's scratch, both borrowed by
            // `read_batch`, which does not return before `remaining` reaches 0, i.e. before this item is
            // finished. Items target disjoint ranges and each is taken by exactly one thread (`fetch_add`).
            let dst = unsafe { std::slice::from_raw_parts_mut(it.addr as *mut u8, it.len) };
            if let Err(e) = pread_span(&self.file, &self.path, it.offset, dst, it.need) {
                job.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
            job.latency_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Taking the lock orders this notification after the caller's check of `remaining`.
                let _guard = self.lock();
                self.done.notify_all();
            }
        }
    }
}

fn worker(shared: Arc<Shared>) {
    let mut seen = 0;
    loop {
        let job = {
            let mut st = shared.lock();
            while st.generation == seen && !st.shutdown {
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job.clone()
        };
        if let Some(job) = job {
            shared.work_on(&job);
        }
    }
}

/// Thread-pool `pread` backend.
pub struct PoolBackend {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    file_len: u64,
    cfg: IoConfig,
    plan: Plan,
    scratch: AlignedBuf,
    stats: IoStats,
}

impl PoolBackend {
    /// Opens `path` (O_DIRECT when `cfg.direct`) and starts `cfg.threads - 1` workers (the calling thread
    /// is the last reader).
    pub fn open(path: &Path, cfg: &IoConfig) -> Result<Self> {
        let cfg = cfg.clone().validated()?;
        let (file, file_len) = open_read(path, cfg.direct)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            file,
            state: Mutex::new(State { generation: 0, job: None, shutdown: false }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(cfg.threads - 1);
        for i in 1..cfg.threads {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("spike-pread-{i}"))
                .spawn(move || worker(s))
                .map_err(|e| Error::io(path, std::io::Error::new(e.kind(), format!("starting I/O thread: {e}"))))?;
            workers.push(handle);
        }
        let scratch = AlignedBuf::with_align(0, cfg.align)?;
        Ok(PoolBackend { shared, workers, file_len, cfg, plan: Plan::default(), scratch, stats: IoStats::default() })
    }
}

impl ReadBackend for PoolBackend {
    fn config(&self) -> Option<&IoConfig> {
        Some(&self.cfg)
    }

    fn kind(&self) -> Option<super::BackendKind> {
        Some(super::BackendKind::Pool)
    }

    fn name(&self) -> &'static str {
        "pool"
    }

    fn path(&self) -> &Path {
        &self.shared.path
    }

    fn reserve_scratch(&mut self, bytes: usize) -> Result<()> {
        self.scratch.reserve(Plan::scratch_bound(bytes, &self.cfg))
    }

    fn scratch_bytes(&self) -> usize {
        self.scratch.capacity()
    }

    fn read_batch(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<()> {
        let path = &self.shared.path;
        let info = BufInfo { len: buf.len(), addr: buf.as_mut_ptr() as usize };
        self.plan.build(reqs, &self.cfg, self.file_len, path, Some(info))?;
        self.scratch.resize(self.plan.scratch_len)?;
        let (buf_addr, scratch_addr) = (buf.as_mut_ptr() as usize, self.scratch.as_mut_ptr() as usize);
        let items: Vec<Item> = self
            .plan
            .spans
            .iter()
            .map(|s| Item {
                offset: s.offset,
                len: s.len,
                need: s.need,
                addr: match s.target {
                    Target::Direct(dst) => buf_addr + dst,
                    Target::Scratch(at) => scratch_addr + at,
                },
            })
            .collect();
        let n = items.len();
        let job = Arc::new(Job {
            items,
            next: AtomicUsize::new(0),
            remaining: AtomicUsize::new(n),
            latency_ns: AtomicU64::new(0),
            error: Mutex::new(None),
        });

        self.stats.batches += 1;
        self.stats.requests += reqs.len() as u64;
        self.stats.bytes_requested += Plan::bytes_requested(reqs);
        let t0 = Instant::now();
        if n > 1 && !self.workers.is_empty() {
            let mut st = self.shared.lock();
            st.generation += 1;
            st.job = Some(Arc::clone(&job));
            drop(st);
            self.shared.work.notify_all();
        }
        self.shared.work_on(&job);
        {
            let mut st = self.shared.lock();
            while job.remaining.load(Ordering::Acquire) > 0 {
                st = self.shared.done.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.job = None;
        }
        self.stats.wait_ns += t0.elapsed().as_nanos() as u64;
        self.stats.latency_ns += job.latency_ns.load(Ordering::Relaxed);
        if let Some(e) = job.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        self.plan.finish(reqs, self.scratch.as_slice(), buf.as_mut_slice(), &mut self.stats);
        Ok(())
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = IoStats::default();
    }
}

impl Drop for PoolBackend {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = w.join();
        }
    }
}
