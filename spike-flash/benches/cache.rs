//! The neuron cache's memory-management time ("LLM in a flash", Sec. 3.3): one iteration is one token of one
//! layer, `begin_token` + an `insert` per missing neuron (copied from a staging buffer, as the inference loop
//! does after its reads) + `end_token`, at SmolLM2-135M's sizes: 1536 neurons, 1080-byte Q4_1 bundles.
//!
//! `cargo bench -p spike-flash --bench cache [-- FILTER]`. Active sets come from `SyntheticActivity`: 614
//! neurons (40%) per token, 30% of them new each token, drawn with a skewed popularity; 4096 tokens are
//! generated before timing and replayed in a loop, after one warm-up pass so the cache is in its steady state.
//! Throughput is in bytes the cache copies per token (inserted records and rows moved by deletions); the
//! per-token counts of one steady-state pass are printed to stderr before each benchmark.
//!
//! On a busy machine wall time counts the time the benchmark waits for a CPU, so before each benchmark the
//! thread's own CPU time per iteration is also printed: from `/proc/thread-self/schedstat` (Linux only), over
//! at least one second of CPU time (the kernel updates the counter at scheduler ticks, so a shorter span would
//! be off by up to a tick).
//!
//! Groups:
//! - `cache_token_layer`: one layer's cache, whose 1.6 MiB of rows stay in the CPU caches between tokens.
//!   Policies: `window:5` (the paper's), `window:1`, and `lru` / `lfu` with 1000 slots (65% of the neurons).
//! - `cache_token_30_layers`: one token through 30 layers' caches (50 MiB of rows, more than the L3, as in a
//!   real decode), `window:5`; divide by 30 for a token-layer.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use spike_flash::cache::{CacheStats, LayerCache, PolicySpec, SyntheticActivity};

const SEED_BENCH_ACTIVITY: u64 = 0xBE_CAC4E;
const N_NEURONS: usize = 1536;
const RECORD_BYTES: usize = 1080;
const ACTIVE: usize = 614;
const CHURN: f64 = 0.3;
const TOKENS: usize = 4096;

/// `layers` caches fed from one list of active sets, layer `l` at an offset of `l * 137` tokens.
struct Run<'a> {
    caches: Vec<LayerCache>,
    tokens: &'a [Vec<u32>],
    staging: Vec<u8>,
    missing: Vec<u32>,
    next: usize,
}

impl<'a> Run<'a> {
    fn new(spec: PolicySpec, slots: usize, layers: usize, tokens: &'a [Vec<u32>]) -> Run<'a> {
        let caches = (0..layers)
            .map(|_| LayerCache::new(spec, N_NEURONS, RECORD_BYTES, slots, None).expect("bench cache"))
            .collect();
        // What the loop's reads would have left in its staging buffer: any bytes, one record per active neuron.
        let staging = (0..ACTIVE * RECORD_BYTES).map(|i| (i % 251) as u8).collect();
        Run { caches, tokens, staging, missing: Vec::with_capacity(N_NEURONS), next: 0 }
    }

    /// One token through every layer.
    #[inline]
    fn step(&mut self) {
        let t = self.next;
        self.next = (self.next + 1) % self.tokens.len();
        for (l, cache) in self.caches.iter_mut().enumerate() {
            let active = &self.tokens[(t + 137 * l) % self.tokens.len()];
            cache.begin_token(active, &mut self.missing);
            for (i, &m) in self.missing.iter().enumerate() {
                black_box(cache.insert(m, &self.staging[i * RECORD_BYTES..(i + 1) * RECORD_BYTES]));
            }
            cache.end_token();
        }
    }

    /// Runs the token list once to reach the steady state, then once more counting; returns the counts.
    fn warm_up(&mut self) -> CacheStats {
        for _ in 0..self.tokens.len() {
            self.step();
        }
        self.caches.iter_mut().for_each(|c| c.reset_stats());
        for _ in 0..self.tokens.len() {
            self.step();
        }
        self.caches.iter().map(|c| c.stats()).sum()
    }
}

/// CPU time of the calling thread, in nanoseconds (0 where `/proc/thread-self/schedstat` is absent).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Mean CPU time of `run.step()` in nanoseconds, over at least one second of CPU time.
fn cpu_ns_per_step(run: &mut Run) -> Option<f64> {
    let start = thread_cpu_ns();
    let mut steps = 0u64;
    loop {
        for _ in 0..256 {
            run.step();
        }
        steps += 256;
        let spent = thread_cpu_ns().saturating_sub(start);
        if start == 0 {
            return None;
        }
        if spent >= 1_000_000_000 {
            return Some(spent as f64 / steps as f64);
        }
    }
}

fn describe(what: &str, s: &CacheStats) {
    let per = |x: u64| x as f64 / s.tokens as f64;
    eprintln!(
        "{what} ({} slots, {} rows in use, {:.1} MiB): per token-layer {:.1} hits, {:.1} misses, {:.1} inserts, \
         {:.1} declined, {:.1} evictions, {:.1} rows moved, {:.0} bytes copied",
        s.capacity,
        s.rows,
        s.bytes() as f64 / (1 << 20) as f64,
        per(s.hits),
        per(s.misses),
        per(s.inserts),
        per(s.declined),
        per(s.evictions),
        per(s.rows_moved),
        per(s.bytes_copied),
    );
}

fn bench(c: &mut Criterion) {
    let mut stream = SyntheticActivity::new(N_NEURONS, ACTIVE, CHURN, SEED_BENCH_ACTIVITY);
    let tokens: Vec<Vec<u32>> = (0..TOKENS).map(|_| stream.next_token().to_vec()).collect();
    let mut group = c.benchmark_group("cache_token_layer");
    group.measurement_time(Duration::from_secs(5)).sample_size(50);
    for (policy, slots) in [("window:5", N_NEURONS), ("window:1", N_NEURONS), ("lru", 1000), ("lfu", 1000)] {
        let spec: PolicySpec = policy.parse().expect("bench policy");
        let mut run = Run::new(spec, slots, 1, &tokens);
        let s = run.warm_up();
        describe(policy, &s);
        if let Some(ns) = cpu_ns_per_step(&mut run) {
            eprintln!("{policy}: {ns:.0} ns of CPU time per token-layer");
        }
        group.throughput(Throughput::Bytes(s.bytes_copied / s.tokens));
        group.bench_function(BenchmarkId::from_parameter(policy), |b| b.iter(|| run.step()));
    }
    group.finish();

    let mut group = c.benchmark_group("cache_token_30_layers");
    group.measurement_time(Duration::from_secs(5)).sample_size(30);
    let mut run = Run::new("window:5".parse().expect("bench policy"), N_NEURONS, 30, &tokens);
    let s = run.warm_up();
    describe("window:5, 30 layers", &s);
    if let Some(ns) = cpu_ns_per_step(&mut run) {
        eprintln!("window:5, 30 layers: {:.0} us of CPU time per token, {:.0} ns per token-layer", ns / 1e3, ns / 30.0);
    }
    group.throughput(Throughput::Bytes(s.bytes_copied / s.tokens * 30));
    group.bench_function(BenchmarkId::from_parameter("window:5"), |b| b.iter(|| run.step()));
    group.finish();
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
