//! A spin-then-park team for the kernels' parallel sections.
//!
//! One decode step makes a few hundred parallel calls of a few tens of microseconds each. Rayon's idle
//! workers yield to the scheduler (`sched_yield`) a few dozen times and then sleep on a futex, so between
//! the matrices of one token the helper thread is often asleep and each call pays a wake-up. The team keeps
//! `threads - 1` helpers spinning (with the CPU's pause hint) for [`SPIN`] after each call, so a call that
//! follows within that time starts on them at once; only after that do they park on a condition variable.
//!
//! [`for_each_task`] runs `f(0) .. f(tasks - 1)` on the team of the current rayon pool's size, the caller
//! taking part, when `SPIKE_POOL=team` ([`team_enabled`]); where the team is busy (a nested or concurrent
//! call), the pool has one thread or the team is off (the default), it runs them on rayon as before. Which thread runs a task never changes a result: the kernels compute each (row,
//! token) pair the same way in any task.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long an idle helper spins before it parks.
pub(super) const SPIN: Duration = Duration::from_micros(500);

/// Spins between two yields to the scheduler, while a helper waits for work or the caller for helpers.
const YIELD_EVERY: u32 = 1024;

/// A panic's payload.
type Payload = Box<dyn std::any::Any + Send>;

/// One call: the tasks, the next unclaimed one, how many are finished, and the first panic of a task.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Payload>>,
}

impl Job<'_> {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.tasks {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

/// What the caller and the helpers share.
struct Shared {
    /// The current job, type-erased (a `*const Job`), or null between calls.
    job: AtomicPtr<()>,
    /// Helpers that may be reading `job`: the caller returns only when it is zero after `job` is null.
    inside: AtomicUsize,
    /// Counts calls; a helper that sees it change looks for the job.
    generation: AtomicU64,
    /// Helpers parked on `wake`.
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Helpers for a pool of `threads` threads, and the lock that makes one call at a time.
struct Team {
    shared: Arc<Shared>,
    busy: Mutex<()>,
}

impl Team {
    fn new(helpers: usize) -> Team {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            inside: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 0..helpers {
            let s = Arc::clone(&shared);
            // A helper that cannot start leaves the caller to do its tasks: calls still finish.
            let _ = std::thread::Builder::new().name(format!("spike-team-{i}")).spawn(move || helper(&s));
        }
        Team { shared, busy: Mutex::new(()) }
    }

    /// Runs the tasks with the helpers; `false` (nothing run) when another call holds the team.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        let Ok(_held) = self.busy.try_lock() else { return false };
        let s = &*self.shared;
        let job = Job { f, tasks, next: AtomicUsize::new(0), done: AtomicUsize::new(0), panic: Mutex::new(None) };
        s.job.store((&raw const job).cast_mut().cast(), SeqCst);
        s.generation.fetch_add(1, SeqCst);
        if s.parked.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        job.work();
        // A helper descheduled in the middle of a task (another process took its core) is waited for
        // without holding on to this core.
        let mut spins = 0u32;
        while job.done.load(SeqCst) < tasks {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        s.job.store(std::ptr::null_mut(), SeqCst);
        // A helper that read the job's address before it was withdrawn is counted in `inside` (it counts
        // itself before reading): wait for it to leave before `job` goes out of scope.
        while s.inside.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            resume_unwind(p);
        }
        true
    }
}

/// A helper's loop: wait for a new generation (spinning, then parked), then work on the job if it is still
/// there.
fn helper(s: &Shared) {
    let mut seen = s.generation.load(SeqCst);
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(SeqCst) == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(YIELD_EVERY) {
                // Lets another runnable thread of the machine have this core for a while; on an idle
                // machine the call returns at once.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                s.parked.fetch_add(1, SeqCst);
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.generation.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                drop(g);
                s.parked.fetch_sub(1, SeqCst);
            }
        }
        seen = s.generation.load(SeqCst);
        s.inside.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst).cast_const().cast::<Job>();
        if !p.is_null() {
            // SAFETY: the caller withdraws the job (stores null) before it waits for `inside` to reach zero,
            // and keeps the job alive until then. This helper counted itself in `inside` before it loaded the
            // address (sequentially consistent), so the caller's wait sees the count and the job outlives
            // this use.
            unsafe { (*p).work() };
        }
        s.inside.fetch_sub(1, SeqCst);
    }
}

/// The team of each pool size, created on first use and kept for the process.
fn team_for(threads: usize) -> &'static Team {
    thread_local! {
        static CACHED: Cell<Option<(usize, &'static Team)>> = const { Cell::new(None) };
    }
    if let Some((n, t)) = CACHED.get() {
        if n == threads {
            return t;
        }
    }
    static TEAMS: OnceLock<Mutex<HashMap<usize, &'static Team>>> = OnceLock::new();
    let mut teams = TEAMS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let t = *teams.entry(threads).or_insert_with(|| Box::leak(Box::new(Team::new(threads - 1))));
    CACHED.set(Some((threads, t)));
    t
}

/// Whether the kernels' parallel sections run on the team: when the environment variable `SPIKE_POOL` is
/// `team` (read once per process); otherwise on rayon. Off by default: on a busy 2-core machine (load 5-9)
/// the team was no faster than rayon in decode (tg128 57.0 against 54.9 tok/s, medians of 3 alternated
/// rounds) and, before its waits yielded to the scheduler, much slower (44 against 73), as spinning threads
/// lose cores to other processes; a quiet machine, where spinning costs nothing, is still to measure.
pub(super) fn team_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPIKE_POOL").is_ok_and(|v| v.trim().eq_ignore_ascii_case("team")))
}

/// Runs `f(i)` for `i in 0..tasks` in parallel: on the team of the current rayon pool's size when
/// [`team_enabled`] (see the module documentation), else, or where the team is busy, on rayon.
pub(super) fn for_each_task(tasks: usize, f: impl Fn(usize) + Sync) {
    for_each_task_on(team_enabled(), tasks, f);
}

/// [`for_each_task`], on the team when `team`.
fn for_each_task_on(team: bool, tasks: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads();
    if tasks <= 1 || threads <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    if !team || !team_for(threads).run(tasks, &f) {
        (0..tasks).into_par_iter().for_each(&f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_even_when_calls_nest_or_race() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a small rayon pool");
        pool.install(|| {
            for tasks in [0usize, 1, 2, 5, 64] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for_each_task_on(true, tasks, |i| {
                    // A nested call finds the team busy and runs on rayon.
                    for_each_task_on(true, 3, |_| {});
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{tasks} tasks");
            }
            // Calls from several threads at once: one holds the team, the others run on rayon.
            let total = AtomicUsize::new(0);
            (0..8).into_par_iter().for_each(|_| for_each_task_on(true, 10, |_| _ = total.fetch_add(1, SeqCst)));
            assert_eq!(total.load(SeqCst), 80);
        });
    }

    #[test]
    fn parked_helpers_wake_for_the_next_call() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a small rayon pool");
        pool.install(|| {
            for _ in 0..3 {
                let n = AtomicUsize::new(0);
                for_each_task_on(true, 4, |_| _ = n.fetch_add(1, SeqCst));
                assert_eq!(n.load(SeqCst), 4);
                std::thread::sleep(SPIN * 4);
            }
        });
    }

    #[test]
    #[should_panic(expected = "task 2 fails")]
    fn a_panicking_task_panics_the_caller_after_the_others_finish() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a small rayon pool");
        pool.install(|| {
            for_each_task_on(true, 4, |i| assert!(i != 2, "task 2 fails"));
        });
    }
}
