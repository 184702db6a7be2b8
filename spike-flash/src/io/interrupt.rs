//! Outputs in progress removed when the process is interrupted: a registry of the temporary names this
//! process is writing (a layout's `NAME.spike.partial-PID/`, a file's `.NAME.PID.N.tmp`, an output's
//! `NAME.lock`, a download's scratch folder), and a handler of `SIGINT`, `SIGTERM` and `SIGHUP` that removes
//! them, prints one line saying so, and ends the process with status `128 + signal` (130, 143, 129).
//!
//! Every writer of the toolkit that installs an output through a temporary name registers that name with
//! [`register`] before it creates it, and drops the returned [`Pending`] once the name is gone (renamed into
//! place, or removed). The rename that installs an output runs inside [`Pending::finish`], which holds the
//! registry: the handler either removes the temporary name before the rename (the output never appears) or
//! finds it already installed and deregistered (the output is complete), never a half of each.
//!
//! The handler is installed at the first registration (`signal-hook`: the signal only wakes a thread, which
//! does the work outside signal context, so it may lock, allocate and remove directories). A command that
//! writes nothing this way keeps the default actions. A signal that arrives while nothing is registered gets
//! the default action (the process is killed by it, as before the handler). A signal the process inherited as
//! ignored (`nohup`, a shell's background job) stays ignored.
//!
//! What no handler can catch (`SIGKILL`, a power cut, the `SIGBUS` exit of module `mapping`) leaves the
//! temporary names behind; each carries the writer's process id, and the next writer of the same output
//! removes those of processes no longer running ([`super::install::remove_stale`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What a registered name is, for the handler's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A temporary file or folder holding an output being written: removed and named in the message.
    Partial,
    /// An output's lock file ([`super::install::OutputLock`]): removed without a word.
    Lock,
}

struct Entry {
    id: u64,
    path: PathBuf,
    kind: Kind,
}

#[derive(Default)]
struct Registry {
    next: u64,
    entries: Vec<Entry>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { next: 0, entries: Vec::new() });
/// The signal being handled, 0 before any.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while the registry was held leaves its entries as they were: still the right list.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The signals handled.
pub const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A registered name, deregistered when dropped (the name is then the caller's again: installed or removed).
#[derive(Debug)]
#[must_use = "the name is deregistered when this is dropped"]
pub struct Pending {
    id: u64,
}

/// Registers `path` (which may not exist yet) to be removed if the process is interrupted before the returned
/// [`Pending`] is dropped. Installs the handler at the first call; if it cannot be installed the name is
/// still registered, to no effect.
pub fn register(path: &Path, kind: Kind) -> Pending {
    install_handler();
    let mut r = registry();
    let id = r.next;
    r.next += 1;
    r.entries.push(Entry { id, path: path.to_path_buf(), kind });
    Pending { id }
}

impl Pending {
    /// Runs `install` (the rename that puts the output in place, and the removal of what it replaced) while no
    /// interruption can remove the registered name, then deregisters it. `install` must not register names.
    pub fn finish<T>(self, install: impl FnOnce() -> T) -> T {
        let mut r = registry();
        let out = install();
        r.entries.retain(|e| e.id != self.id);
        drop(r);
        std::mem::forget(self);
        out
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // While the handler runs it holds the registry until the process ends, so a writer failing because
        // its temporary name was just removed waits here instead of printing an error of its own.
        registry().entries.retain(|e| e.id != self.id);
    }
}

/// The signal being handled (SIGINT, SIGTERM or SIGHUP), or `None`. A command that fails because its output
/// was removed under it should call [`wait_if_interrupted`] before reporting the failure.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

/// Blocks for good if an interruption is being handled (the handler ends the process); returns at once
/// otherwise.
pub fn wait_if_interrupted() {
    if interrupted().is_some() {
        drop(registry());
        // The handler exits while holding the registry; should it return instead (it does not), wait anyway.
        loop {
            std::thread::park();
        }
    }
}

/// The exit status after `signal`: `128 + signal`, as a shell reports a process the signal killed.
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// `SIGINT`, `SIGTERM`, `SIGHUP` or `signal N`.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// What one removal took away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The handler's line: `interrupted by SIGTERM: removed the partial output A (N bytes), B (M bytes)`.
pub fn message(signal: i32, removed: &[Removed]) -> String {
    let what = if removed.is_empty() {
        "no partial output to remove".to_string()
    } else {
        let list: Vec<String> = removed.iter().map(|r| format!("{} ({} bytes)", r.path.display(), r.bytes)).collect();
        format!("removed the partial output {}", list.join(", "))
    };
    format!("interrupted by {}: {what}", signal_name(signal))
}

fn tree_bytes(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

/// Removes `path`, a file or a folder, retrying a folder that writer threads were still filling; whether
/// something was removed.
fn remove(path: &Path) -> bool {
    for _ in 0..20 {
        let Ok(m) = std::fs::symlink_metadata(path) else { return false };
        let gone = if m.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        match gone {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    false
}

/// Removes every registered name (while holding the registry, which the caller keeps until the process
/// ends) and returns the partial outputs removed, in registration order.
fn remove_all(r: &Registry) -> Vec<Removed> {
    let mut removed = Vec::new();
    for e in &r.entries {
        let bytes = if e.kind == Kind::Partial { tree_bytes(&e.path) } else { 0 };
        if remove(&e.path) && e.kind == Kind::Partial {
            removed.push(Removed { path: e.path.clone(), bytes });
        }
    }
    removed
}

fn on_signal(signal: i32) {
    let r = registry();
    if r.entries.is_empty() {
        drop(r);
        // Nothing of ours to remove: the default action, which ends the process as if no handler were here.
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        return;
    }
    INTERRUPTED.store(signal, Ordering::Release);
    let removed = remove_all(&r);
    eprintln!("{}", message(signal, &removed));
    // Ends the process with the registry held: no writer can install or register anything meanwhile.
    std::process::exit(exit_code(signal));
}

/// Whether `signal` was inherited as ignored.
fn ignored(signal: i32) -> bool {
    // SAFETY: `sigaction` with a null new action only reads the current one into `old`, a zeroed struct of
    // the right type.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Installs the handler once; whether it is in place.
fn install_handler() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let signals: Vec<i32> = SIGNALS.into_iter().filter(|&s| !ignored(s)).collect();
        let Ok(mut signals) = signal_hook::iterator::Signals::new(signals) else { return false };
        std::thread::Builder::new()
            .name("spike-interrupt".into())
            .spawn(move || {
                for signal in signals.forever() {
                    on_signal(signal);
                }
            })
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_signal_and_each_partial_output() {
        let removed = [
            Removed { path: PathBuf::from("/d/m.spike.partial-7"), bytes: 4096 },
            Removed { path: PathBuf::from("/d/.x.json.7.0.tmp"), bytes: 3 },
        ];
        assert_eq!(
            message(libc::SIGTERM, &removed),
            "interrupted by SIGTERM: removed the partial output /d/m.spike.partial-7 (4096 bytes), \
             /d/.x.json.7.0.tmp (3 bytes)"
        );
        assert_eq!(message(libc::SIGINT, &[]), "interrupted by SIGINT: no partial output to remove");
        assert_eq!((exit_code(libc::SIGINT), exit_code(libc::SIGTERM)), (130, 143));
    }

    #[test]
    fn names_are_deregistered_when_dropped_or_finished_and_removal_takes_files_and_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.partial-1"), dir.path().join(".b.1.0.tmp"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::write(a.join("ffn.bin"), [0u8; 100]).expect("write");
        std::fs::write(&b, [0u8; 7]).expect("write");
        let count = |p: &Path| registry().entries.iter().filter(|e| e.path == p).count();
        let pa = register(&a, Kind::Partial);
        let pb = register(&b, Kind::Partial);
        assert_eq!((count(&a), count(&b)), (1, 1));
        let installed = pb.finish(|| 42);
        assert_eq!((installed, count(&b)), (42, 0));
        drop(pa);
        assert_eq!(count(&a), 0);
        // Removal, as the handler does it, on a registry of our own (the process-wide one is left alone).
        let mut own = Registry::default();
        own.entries.push(Entry { id: 0, path: a.clone(), kind: Kind::Partial });
        own.entries.push(Entry { id: 1, path: b.clone(), kind: Kind::Lock });
        own.entries.push(Entry { id: 2, path: dir.path().join("never-made"), kind: Kind::Partial });
        assert_eq!(remove_all(&own), vec![Removed { path: a.clone(), bytes: 100 }]);
        assert!(!a.exists() && !b.exists());
    }
}
