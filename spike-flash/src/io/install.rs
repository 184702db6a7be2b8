//! Installing outputs so that no writer replaces another's work: an exclusive lock beside the output held for
//! the whole write ([`OutputLock`]), renames that refuse to replace ([`rename_noreplace`]) or swap atomically
//! ([`rename_exchange`]), and the removal of what dead writers left behind ([`remove_stale`]).
//!
//! Names beside an output `NAME`: `NAME.lock` (the lock file, present while a writer holds it, or after a
//! writer was killed; the next writer takes it over and removes it), and the writer's temporary names, each
//! carrying the writer's process id so that a later writer can tell whether its owner is still running.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An exclusive lock on the output `NAME`, held through `NAME.lock` (`flock(LOCK_EX)` on the open file) until
/// dropped. Every writer in this crate takes it before looking at or touching `NAME` or its temporary names,
/// so of two writers of one output the second is refused ([`Error::OutputBusy`]) instead of racing.
///
/// The lock file is removed when the lock is released. A writer that opened the file just before it was
/// removed could lock the removed inode; [`OutputLock::acquire`] therefore checks, once locked, that the path
/// still names the inode it locked, and starts again if not. Since `flock` locks die with their process, a
/// killed writer leaves the file unlocked and the next writer takes it over.
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
    /// The lock file's registration, so that an interruption removes it ([`super::interrupt`]).
    pending: Option<super::interrupt::Pending>,
}

impl OutputLock {
    /// The lock file of `output`: `NAME.lock` beside it.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".lock");
        output.with_file_name(name)
    }

    /// Takes the lock of `output` without waiting: [`Error::OutputBusy`] naming `output` when another writer
    /// (another process, or another thread of this one) holds it.
    pub fn acquire(output: &Path) -> Result<OutputLock> {
        use std::os::unix::fs::MetadataExt;
        let path = Self::path_for(output);
        // Each round either locks the inode the path names, or finds the path renamed to a new inode by a
        // releasing writer in between; a few rounds suffice unless writers keep arriving and leaving.
        for _ in 0..64 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::OutputBusy { path: output.to_path_buf(), lock: path })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            let held = file.metadata().map_err(|e| Error::io(&path, e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    // Registered only once held: an interruption must never remove another writer's lock file.
                    let pending = Some(super::interrupt::register(&path, super::interrupt::Kind::Lock));
                    return Ok(OutputLock { file, path, pending });
                }
                // Removed or replaced by a writer that released it after we opened it: try again.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::OutputBusy { path: output.to_path_buf(), lock: path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Deregistered first: once the name is removed below, another writer's lock file may take it.
        drop(self.pending.take());
        // Removed while still locked, so no other writer can hold this inode when the name disappears (see
        // the type's documentation). Best effort: a lock file left behind is taken over by the next writer.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn path_cstring(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `renameat2(from, to, flags)`; `Err(EINVAL)` or `Err(ENOSYS)` where the file system or kernel lacks it.
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (f, t) = (path_cstring(from)?, path_cstring(to)?);
    // SAFETY: both pointers are NUL-terminated strings owned by `f` and `t`, alive for the whole call;
    // AT_FDCWD makes relative paths relative to the working directory, as `std::fs::rename` does.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS))
}

/// Renames `from` to `to` only if `to` does not exist: `Err` of kind `AlreadyExists` otherwise, and `to` is
/// untouched. `renameat2(RENAME_NOREPLACE)`; where the file system lacks it, a directory is renamed with
/// `rename(2)` (which refuses a non-empty target directory, so no directory with contents is replaced) and a
/// file is hard-linked (which refuses an existing target) and its old name removed.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => {}
        other => return other,
    }
    if std::fs::symlink_metadata(from)?.is_dir() {
        std::fs::rename(from, to).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            _ => e,
        })
    } else {
        std::fs::hard_link(from, to)?;
        std::fs::remove_file(from)
    }
}

/// Swaps `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`): both must exist. `Err(EINVAL)` where the file
/// system lacks it.
pub fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

/// Whether process `pid` exists (a zombie counts as existing until its parent reaps it).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks; no signal is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A leftover of a dead writer that [`remove_stale`] removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stale {
    pub path: PathBuf,
    /// The process id in its name, no longer running.
    pub pid: u32,
    /// Bytes it held (files in it, for a directory).
    pub bytes: u64,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} ({} bytes), left by process {} which is no longer running",
            self.path.display(),
            self.bytes,
            self.pid
        )
    }
}

fn tree_bytes(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

/// Removes the entries of `dir` that `pid_of` recognizes as a writer's temporary name (returning the writer's
/// process id) and whose writer is no longer running, or is this process (the caller holds the output's
/// [`OutputLock`], so no thread of this process is writing them). Returns what it removed.
///
/// Call it only while holding the lock of the output the names belong to: a live writer of that output would
/// hold the lock, so what is found is garbage unless its process id was reused by an unrelated process, in
/// which case it is left alone.
pub fn remove_stale(dir: &Path, pid_of: impl Fn(&str) -> Option<u32>) -> Result<Vec<Stale>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(&pid_of) else { continue };
        if pid != me && process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let bytes = tree_bytes(&path);
        let is_dir = entry.file_type().map_err(|e| Error::io(&path, e))?.is_dir();
        let gone = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match gone {
            Ok(()) => removed.push(Stale { path, pid, bytes }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(removed)
}

/// The process id in `name` when it is `prefix` followed by decimal digits and then `suffix` (not 0, which no
/// process has).
pub fn pid_between(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&p| p > 0)
}
