//! [`Mapping`]: a read-only memory map of a whole file, registered while it lives so that a `SIGBUS` on its
//! pages ends the process with a message naming the file instead of killing it without a word.
//!
//! A page of a file mapping whose file has since shrunk below it (truncated, or rewritten in place by a writer
//! that truncates first) cannot be read: the kernel answers the access with `SIGBUS`, as it does when the page
//! cannot be read from the device. Nothing can be returned from such an access, and Rust code cannot unwind
//! out of a signal handler, so the process cannot go on; what it can do is say why. [`map_file`](super::map_file)
//! registers each mapping (its address range, file name and descriptor) in a fixed table, and the first
//! registration installs a `SIGBUS` handler (`sigaction`, `SA_SIGINFO`). The handler looks the faulting address
//! up in the table and, when a mapping holds it, writes
//!
//! ```text
//! error: FILE changed size while mapped (SIGBUS at offset N): it is now M bytes; ...
//! ```
//!
//! (or, when the file still covers the offset, that the page could not be read) to standard error with
//! `write(2)` and ends the process with `_exit(MAP_FAULT_EXIT_CODE)`. Any other `SIGBUS` goes to the action
//! that was in place before, called as the kernel would have called it: Rust's own stack-overflow handler,
//! which leaves a fault outside a guard page to the default action, or the default itself (the process is
//! killed by the signal).
//!
//! Everything the handler does is async-signal-safe: atomic loads from a static table (no lock, no
//! allocation), `fstat`, `write`, `sigaction`, `raise`, `_exit`, or the previous handler. Destructors do not run, and
//! the partial outputs registered with [`super::interrupt`] (which `SIGINT` and `SIGTERM` remove, from a
//! thread that may lock and allocate) are not removed: a conversion ended this way leaves its
//! `NAME.spike.partial-PID/` directory, which the next conversion of the same output removes
//! (`docs/format.md`), and temporary files named with the process id (`io::temp_pid`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{fence, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::{Error, Result};

/// The exit status of a process ended by a fault on a registered mapping: the status of any error of the
/// `spike` binary.
pub const MAP_FAULT_EXIT_CODE: i32 = 1;

/// Mappings registered at once; more are mapped all the same, without the message (the default action).
const SLOTS: usize = 128;
/// Bytes of a file name kept per mapping; a longer name is shown cut, ending in `...`.
const NAME_BYTES: usize = 512;

/// One entry of the table. `seq` is a sequence lock: odd while the entry is being written, even when it is
/// stable; a reader takes the fields only if `seq` was even and unchanged around its reads. `taken` makes
/// writers claim entries one at a time.
struct Slot {
    taken: AtomicU8,
    seq: AtomicU64,
    live: AtomicU8,
    start: AtomicUsize,
    len: AtomicUsize,
    fd: AtomicI32,
    name_len: AtomicUsize,
    name: [AtomicU8; NAME_BYTES],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            taken: AtomicU8::new(0),
            seq: AtomicU64::new(0),
            live: AtomicU8::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            fd: AtomicI32::new(-1),
            name_len: AtomicUsize::new(0),
            name: [const { AtomicU8::new(0) }; NAME_BYTES],
        }
    }

    /// Runs `write` between the two increments of the sequence lock.
    fn write(&self, write: impl FnOnce(&Slot)) {
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        write(self);
        self.seq.fetch_add(1, Ordering::Release);
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];

/// The `SIGBUS` action in place before this module's handler, which takes every fault the table does not hold.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A read-only map of a whole file, as [`map_file`](super::map_file) makes it: dereferences to the file's
/// bytes. While it lives, a `SIGBUS` on its pages ends the process with a message naming the file (see the
/// module's documentation).
pub struct Mapping {
    map: memmap2::Mmap,
    /// Kept open for the handler's `fstat` (the size the file has now), whatever its path names meanwhile.
    _file: File,
    slot: Option<usize>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.map.len()).field("registered", &self.slot.is_some()).finish()
    }
}

impl std::ops::Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Before the fields drop: the range leaves the table before it is unmapped (and maybe reused).
        if let Some(i) = self.slot {
            unregister(i);
        }
    }
}

impl Mapping {
    /// Maps the whole of `file` (opened from `path`) read-only and registers the mapping.
    pub(super) fn new(path: &Path, file: File) -> Result<Mapping> {
        // SAFETY: `Mmap::map` is unsafe because another process could change or truncate the file while it is
        // mapped, changing or invalidating memory that Rust treats as immutable. The file is opened read-only;
        // the toolkit's own writers replace files by rename, never in place (see `map_file`). A truncation by
        // someone else makes a later access fault with SIGBUS, which the registration below turns into an
        // error message and an exit, before any code sees the vanished bytes.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let slot = if map.is_empty() { None } else { register(path, map.as_ptr() as usize, map.len(), &file) };
        Ok(Mapping { map, _file: file, slot })
    }

    /// Whether a `SIGBUS` on this mapping is reported by name (false when the table was full, or the file is
    /// empty and nothing is mapped).
    pub fn is_registered(&self) -> bool {
        self.slot.is_some()
    }
}

/// Enters a mapping into the table (installing the handler first, once); `None` if the table is full or the
/// handler could not be installed.
fn register(path: &Path, start: usize, len: usize, file: &File) -> Option<usize> {
    if !install_handler() {
        return None;
    }
    let i = TABLE.iter().position(|s| s.taken.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok())?;
    let name = path.as_os_str().as_encoded_bytes();
    let fd = file.as_raw_fd();
    TABLE[i].write(|s| {
        let cut = name.len() > NAME_BYTES;
        let keep = if cut { NAME_BYTES - 3 } else { name.len() };
        let tail: &[u8] = if cut { b"..." } else { b"" };
        for (dst, &b) in s.name.iter().zip(name[..keep].iter().chain(tail)) {
            dst.store(b, Ordering::Relaxed);
        }
        s.name_len.store(keep + tail.len(), Ordering::Relaxed);
        s.start.store(start, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.fd.store(fd, Ordering::Relaxed);
        s.live.store(1, Ordering::Relaxed);
    });
    Some(i)
}

fn unregister(i: usize) {
    TABLE[i].write(|s| s.live.store(0, Ordering::Relaxed));
    TABLE[i].taken.store(0, Ordering::Release);
}

/// What the handler found: the registered mapping holding the faulting address.
struct Hit {
    offset: usize,
    fd: i32,
    name: [u8; NAME_BYTES],
    name_len: usize,
}

/// The mapping holding `addr`, read from the table without locks or allocation (async-signal-safe).
fn lookup(addr: usize) -> Option<Hit> {
    for s in &TABLE {
        // An entry being rewritten is not the one that faulted: the faulting thread holds a borrow of that
        // mapping, so it stays registered and unchanged while the handler runs. A few tries get past a writer.
        for _ in 0..4 {
            let before = s.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                continue;
            }
            let live = s.live.load(Ordering::Relaxed) == 1;
            let (start, len) = (s.start.load(Ordering::Relaxed), s.len.load(Ordering::Relaxed));
            if !live || addr < start || addr - start >= len {
                break;
            }
            let fd = s.fd.load(Ordering::Relaxed);
            let name_len = s.name_len.load(Ordering::Relaxed).min(NAME_BYTES);
            let mut name = [0u8; NAME_BYTES];
            for (d, b) in name.iter_mut().zip(&s.name[..name_len]) {
                *d = b.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            return Some(Hit { offset: addr - start, fd, name, name_len });
        }
    }
    None
}

/// Installs the handler once; whether it is in place.
fn install_handler() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: `sigaction` with a null new action only reads the current one into `old`, a zeroed struct of
        // the right type.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            return false;
        }
        // The previous action is stored before the handler that reads it is installed.
        let _ = PREVIOUS.set(old);
        // SAFETY: a zeroed `sigaction` is a valid empty action; the handler is an `extern "C"` function with the
        // three-argument signature `SA_SIGINFO` calls, and it does only async-signal-safe work.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) == 0
        }
    })
}

/// A fixed buffer to compose the message in, without allocating.
struct Msg {
    buf: [u8; 1024],
    len: usize,
}

impl Msg {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The message for a fault at `hit`, given the file's size now (`None` if `fstat` failed).
fn message(hit: &Hit, size_now: Option<u64>, msg: &mut Msg) {
    msg.push(b"error: ");
    msg.push(&hit.name[..hit.name_len]);
    match size_now {
        Some(size) if size > hit.offset as u64 => {
            msg.push(b": SIGBUS at offset ");
            msg.push_num(hit.offset as u64);
            msg.push(b" of the mapped file, which is ");
            msg.push_num(size);
            msg.push(b" bytes: the page could not be read (an I/O error on the device?)\n");
        }
        _ => {
            msg.push(b" changed size while mapped (SIGBUS at offset ");
            msg.push_num(hit.offset as u64);
            msg.push(b"): ");
            if let Some(size) = size_now {
                msg.push(b"it is now ");
                msg.push_num(size);
                msg.push(b" bytes; ");
            }
            msg.push(
                b"it was truncated or rewritten in place while this process read it (replace a model or layout \
                  file in use by renaming a new one over it, not by writing into it)\n",
            );
        }
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to a handler installed with SA_SIGINFO; `si_addr` is the
    // faulting address for a SIGBUS raised by a memory access (si_code > 0), and meaningless otherwise.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code > 0 {
        if let Some(hit) = lookup(addr) {
            // SAFETY: `fstat` on a descriptor the mapping keeps open, into a zeroed `stat`.
            let size = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                (libc::fstat(hit.fd, &mut st) == 0).then_some(st.st_size as u64)
            };
            let mut msg = Msg { buf: [0; 1024], len: 0 };
            message(&hit, size, &mut msg);
            let mut rest = &msg.buf[..msg.len];
            while !rest.is_empty() {
                // SAFETY: `write` from a live buffer of `rest.len()` bytes.
                let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
                if n <= 0 {
                    break;
                }
                rest = &rest[n as usize..];
            }
            // SAFETY: `_exit` ends the process without running anything else, as a signal handler must.
            unsafe { libc::_exit(MAP_FAULT_EXIT_CODE) };
        }
    }
    // SAFETY: the arguments are the ones this handler was called with.
    unsafe { chain(sig, info, ctx) };
}

/// Hands a signal that is not ours to the action that was in place before ours, as if it had been called.
///
/// # Safety
/// Only from the signal handler, with the arguments it was called with.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(prev) = PREVIOUS.get() else {
        // Unreachable: the previous action is stored before the handler is installed. Default, to be safe.
        // SAFETY: `signal` is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        return;
    };
    // SAFETY (all three arms): `sigaction`, `raise` and the previous handler (written to run as a signal handler,
    // with these arguments) are async-signal-safe to call here.
    match prev.sa_sigaction {
        libc::SIG_DFL => unsafe {
            // The default action ends the process: a fault happens again when this handler returns (the access
            // is retried), a signal sent by a process is raised again, pending until this handler returns.
            libc::sigaction(sig, prev, std::ptr::null_mut());
            if (*info).si_code <= 0 {
                libc::raise(sig);
            }
        },
        libc::SIG_IGN => {}
        handler if prev.sa_flags & libc::SA_SIGINFO != 0 => unsafe {
            type Action = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
            let f = std::mem::transmute::<libc::sighandler_t, Action>(handler);
            f(sig, info, ctx);
        },
        handler => unsafe {
            let f = std::mem::transmute::<libc::sighandler_t, extern "C" fn(libc::c_int)>(handler);
            f(sig);
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_the_offset_and_the_size() {
        let mut name = [0u8; NAME_BYTES];
        name[..9].copy_from_slice(b"/m/x.gguf");
        let hit = Hit { offset: 40960, fd: -1, name, name_len: 9 };
        let text = |size| {
            let mut m = Msg { buf: [0; 1024], len: 0 };
            message(&hit, size, &mut m);
            String::from_utf8(m.buf[..m.len].to_vec()).expect("utf-8")
        };
        let t = text(Some(0));
        assert!(
            t.starts_with("error: /m/x.gguf changed size while mapped (SIGBUS at offset 40960): it is now 0 bytes;")
        );
        assert!(t.ends_with('\n'));
        assert!(text(None).starts_with("error: /m/x.gguf changed size while mapped (SIGBUS at offset 40960): it was"));
        assert!(text(Some(1 << 20)).contains("SIGBUS at offset 40960 of the mapped file, which is 1048576 bytes"));
    }

    #[test]
    fn a_mapping_is_in_the_table_while_it_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("registered.bin");
        std::fs::write(&p, [7u8; 100]).expect("write");
        let m = super::super::map_file(&p).expect("map");
        assert!(m.is_registered());
        assert_eq!(&m[..3], &[7, 7, 7]);
        let hit = lookup(m.as_ptr() as usize + 99).expect("registered");
        assert_eq!((hit.offset, &hit.name[..hit.name_len]), (99, p.as_os_str().as_encoded_bytes()));
        assert!(lookup(m.as_ptr() as usize + 100).is_none(), "one past the end");
        let start = m.as_ptr() as usize;
        drop(m);
        // Another test's mapping may take the range meanwhile, never under this name.
        assert!(lookup(start).is_none_or(|h| &h.name[..h.name_len] != p.as_os_str().as_encoded_bytes()));
    }
}
