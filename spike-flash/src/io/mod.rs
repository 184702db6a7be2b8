//! I/O: file mapping, and the flash read backends behind one object-safe trait.
//!
//! A caller hands a backend a list of *logical* reads ([`ReadReq`]: any offset, any length, a destination in
//! its [`AlignedBuf`]). The backend plans *device* reads (module [`plan`]): requests sorted by offset,
//! neighbours merged when the gap between their aligned spans is at most [`IoConfig::max_gap`], spans rounded
//! out to [`IoConfig::align`]. Each device read lands straight in the caller's buffer when it is exactly one
//! aligned request with an aligned destination, else in the backend's scratch buffer, from which the logical
//! requests are copied. Every backend counts the same [`IoStats`].
//!
//! Backends: [`UringBackend`] (io_uring, O_DIRECT), [`PoolBackend`] (threads doing `pread`, O_DIRECT),
//! [`MmapBackend`] (copies out of the page cache, the naive baseline), and for tests [`MemBackend`] (in
//! memory, counting) and [`FaultyBackend`] (fails chosen requests). [`ScratchFile`] is an unnamed file of
//! pattern bytes for measurements and tests. This module knows nothing of layouts or of the cost model: it reads
//! byte ranges. `unsafe` in this crate lives here and in the kernels (`engine::kernels`), each block with its
//! `// SAFETY:` reason.

mod buf;
mod config;
pub mod install;
pub mod interrupt;
mod mapping;
mod mmap;
pub mod plan;
mod pool;
mod runs;
mod scratch;
mod stats;
mod testing;
mod uring;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

pub use buf::{AlignedBuf, DEFAULT_ALIGN};
pub use config::{IoConfig, MAX_READ};
pub use mapping::{Mapping, MAP_FAULT_EXIT_CODE};
pub use mmap::MmapBackend;
pub use pool::PoolBackend;
pub use runs::RunReader;
pub use scratch::{fill_pattern, pattern_byte, ScratchFile};
pub use stats::{IoStats, LatencyHist, HIST_BUCKETS, LATENCY_BUCKETS};
pub use testing::{CappedAlloc, Fault, FaultyBackend, MemBackend};
pub use uring::UringBackend;

use crate::{Error, Result};

/// A temporary name beside `path` (same folder, so a rename is atomic): `.NAME.PID.N.tmp`, with `N` counting
/// the calls of this process, so that threads writing beside each other never share one.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// The process id in `name` if it is one of [`temp_path`]'s names, for any file: `.FILE.PID.N.tmp`, or
/// `.FILE.PID.tmp` as earlier versions wrote.
pub fn temp_pid(name: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (head, last) = rest.rsplit_once('.')?;
    let (file, pid) = match head.rsplit_once('.') {
        Some((file, pid)) if !file.is_empty() && digits(pid) && digits(last) => (file, pid),
        _ => (head, last),
    };
    if file.is_empty() || !digits(pid) {
        return None;
    }
    // No process has id 0.
    pid.parse().ok().filter(|&p| p > 0)
}

/// Writes `path` atomically: `fill` writes a temporary file beside it, which is synced and renamed over
/// `path`, and the folder is synced; `path` then holds the old contents or the whole new ones, never a part.
/// The write holds `path`'s [`install::OutputLock`], so a second writer of the same path meanwhile (another
/// process or thread) is refused with [`Error::OutputBusy`] instead of one silently replacing the other.
/// On any error (a full disk included) the temporary file is removed, and so it is when the process is
/// interrupted by SIGINT, SIGTERM or SIGHUP (module [`interrupt`]).
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> Result<()> {
    let _lock = install::OutputLock::acquire(path)?;
    let tmp = temp_path(path);
    // Kept until the temporary file is gone: renamed (in `finish`), or removed below.
    let mut pending = Some(interrupt::register(&tmp, interrupt::Kind::Partial));
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w).map_err(|e| Error::io(&tmp, e))?;
        let file = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        let pending = pending.take().expect("the rename happens once");
        pending.finish(|| std::fs::rename(&tmp, path)).map_err(|e| Error::io(path, e))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage either way, and the first error is the one to report.
        let _ = std::fs::remove_file(&tmp);
    }
    drop(pending);
    result
}

/// Memory-maps the whole file at `path` read-only.
///
/// The toolkit's own writers replace files by rename, never in place, so a file they wrote keeps its bytes
/// while mapped. If someone else truncates the file meanwhile, reads of the vanished pages fault (`SIGBUS`):
/// while the returned [`Mapping`] lives, such a fault ends the process with a message naming the file and the
/// offset, and exit status [`MAP_FAULT_EXIT_CODE`], instead of a silent death by signal (module `mapping`).
pub fn map_file(path: &Path) -> Result<Mapping> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Mapping::new(path, file)
}

/// Returns freed heap memory to the operating system (glibc's `malloc_trim`), so that what a loader built and
/// dropped no longer counts against a memory limit. A no-op elsewhere.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One logical read: `len` bytes at file `offset`, to be placed at byte `dst` of the caller's buffer.
/// Offsets and lengths need not be aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadReq {
    pub offset: u64,
    pub len: usize,
    pub dst: usize,
}

/// A batched reader of one file. Object safe: engines hold a `Box<dyn ReadBackend>`.
pub trait ReadBackend: Send {
    /// Short name: `uring`, `pool`, `mmap`, `mem`, `faulty`.
    fn name(&self) -> &'static str;

    /// The file read (named in errors).
    fn path(&self) -> &Path;

    /// Reads every request into `buf` at its `dst`, returning when all have arrived. A request past the end of
    /// the file, a short read or an OS error is an [`Error::Read`] naming the file, offset and length; on
    /// error the content of `buf` is unspecified (but no read into it is still in flight).
    fn read_batch(&mut self, reqs: &[ReadReq], buf: &mut AlignedBuf) -> Result<()>;

    /// [`read_batch`](Self::read_batch), handing each request's bytes to `arrived(index, bytes)` as they
    /// arrive, on the calling thread, so that the caller can work on them (check them, say) while the batch's
    /// other reads are still in flight. Each request of `reqs` is handed over exactly once before `Ok` is
    /// returned, in any order. An error from `arrived` ends the batch: no further read is issued, the reads in
    /// flight are waited for, and the error is returned as it is. By default every request is handed over once
    /// the whole batch has arrived; io_uring hands a batch of direct reads over as each completes.
    fn read_batch_arriving(
        &mut self,
        reqs: &[ReadReq],
        buf: &mut AlignedBuf,
        arrived: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.read_batch(reqs, buf)?;
        hand_over(reqs, buf.as_slice(), arrived)
    }

    /// Counters since opening or the last reset.
    fn stats(&self) -> &IoStats;

    /// Zeroes the counters.
    fn reset_stats(&mut self);

    /// Grows the backend's own buffer (where unaligned requests land before they are copied out) to hold a
    /// batch of `bytes` now, so that its memory is in place, and counted, before decoding starts.
    fn reserve_scratch(&mut self, bytes: usize) -> Result<()> {
        let _ = bytes;
        Ok(())
    }

    /// Bytes of the backend's own buffer.
    fn scratch_bytes(&self) -> usize {
        0
    }

    /// The kind [`open_backend`] opens again with the same settings (the test backends have none).
    fn kind(&self) -> Option<BackendKind> {
        None
    }

    /// The settings it was opened with, if it has any (the test backends have none).
    fn config(&self) -> Option<&IoConfig> {
        None
    }
}

/// Hands every request of a finished batch to `arrived`, in order.
fn hand_over(reqs: &[ReadReq], buf: &[u8], arrived: &mut dyn FnMut(usize, &[u8]) -> Result<()>) -> Result<()> {
    for (i, r) in reqs.iter().enumerate() {
        arrived(i, &buf[r.dst..r.dst + r.len])?;
    }
    Ok(())
}

/// Which backend [`open_backend`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Uring,
    Pool,
    Mmap,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Uring, BackendKind::Pool, BackendKind::Mmap];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Pool => "pool",
            BackendKind::Mmap => "mmap",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::Invalid(format!("unknown I/O backend `{s}` (expected uring, pool or mmap)")))
    }
}

static FALLBACK_SAID: AtomicBool = AtomicBool::new(false);

/// Opens a backend of `kind` over the file at `path` with a validated copy of `cfg`.
///
/// If the kernel refuses io_uring (ring setup fails: old kernel, seccomp, `kernel.io_uring_disabled`), or
/// `cfg.force_fallback` is set, `Uring` falls back to the thread pool and says why on stderr, once per process.
pub fn open_backend(kind: BackendKind, path: &Path, cfg: &IoConfig) -> Result<Box<dyn ReadBackend>> {
    let cfg = cfg.clone().validated()?;
    Ok(match kind {
        BackendKind::Uring => match UringBackend::open(path, &cfg) {
            Ok(b) => Box::new(b),
            Err(uring::OpenError::Refused(reason)) => {
                if !FALLBACK_SAID.swap(true, Ordering::Relaxed) {
                    eprintln!("spike: io_uring unavailable ({reason}); using the pread thread pool instead");
                }
                Box::new(PoolBackend::open(path, &cfg)?)
            }
            Err(uring::OpenError::Other(e)) => return Err(e),
        },
        BackendKind::Pool => Box::new(PoolBackend::open(path, &cfg)?),
        BackendKind::Mmap => Box::new(MmapBackend::open(path, &cfg)?),
    })
}

/// Evicts `path`'s clean pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)` over the whole
/// file), so that the next buffered or mapped read of it reaches the device. Pages still mapped by a process
/// (an open [`MmapBackend`]) are not evicted: drop the map first.
pub fn drop_page_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is open for the whole call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        let e = std::io::Error::from_raw_os_error(rc);
        return Err(Error::io(path, std::io::Error::new(e.kind(), format!("dropping cached pages: {e}"))));
    }
    Ok(())
}

/// Bytes this process has caused to be fetched from storage so far (`read_bytes` of `/proc/self/io`: page-cache
/// misses, readahead and direct reads of every thread), or `None` where the kernel does not report it.
pub fn process_read_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    text.lines().find_map(|l| l.strip_prefix("read_bytes:")).and_then(|v| v.trim().parse().ok())
}

/// Opens `path` read-only, with O_DIRECT when `direct`, and returns it with its length.
fn open_read(path: &Path, direct: bool) -> Result<(File, u64)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts.open(path).map_err(|e| {
        let hint = if direct && e.raw_os_error() == Some(libc::EINVAL) {
            " (the file system refuses O_DIRECT; run without direct I/O, which uses the page cache)"
        } else {
            ""
        };
        Error::io(path, std::io::Error::new(e.kind(), format!("opening for reading: {e}{hint}")))
    })?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    Ok((file, len))
}

/// The error for a device read that failed or came back short.
fn read_error(path: &Path, offset: u64, length: usize, source: std::io::Error) -> Error {
    Error::Read { path: path.to_path_buf(), offset, length: length as u64, source }
}

/// `pread`s into `dst` from `offset` until at least `need` bytes have arrived. `dst.len()` is the aligned
/// length asked of the device; a read may end early only at the end of the file, and only past `need`.
fn pread_span(file: &File, path: &Path, offset: u64, dst: &mut [u8], need: usize) -> Result<()> {
    let mut got = 0;
    while got < need {
        match file.read_at(&mut dst[got..], offset + got as u64) {
            Ok(0) => {
                let msg = format!("short read: {got} of {need} bytes, then end of file");
                return Err(read_error(
                    path,
                    offset,
                    dst.len(),
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, msg),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(path, offset, dst.len(), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
