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
//! Policies: `window:5` (the paper's), `window:1`, and `lru` / `lfu` with 1000 slots (65% of the neurons).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use spike_flash::cache::{LayerCache, PolicySpec, SyntheticActivity};

const SEED_BENCH_ACTIVITY: u64 = 0xBE_CAC4E;
const N_NEURONS: usize = 1536;
const RECORD_BYTES: usize = 1080;
const ACTIVE: usize = 614;
const CHURN: f64 = 0.3;
const TOKENS: usize = 4096;

struct Run {
    cache: LayerCache,
    tokens: Vec<Vec<u32>>,
    staging: Vec<u8>,
    missing: Vec<u32>,
    next: usize,
}

impl Run {
    fn new(spec: PolicySpec, slots: usize, tokens: &[Vec<u32>]) -> Run {
        let cache = LayerCache::new(spec, N_NEURONS, RECORD_BYTES, slots, None).expect("bench cache");
        // What the loop's reads would have left in its staging buffer: any bytes, one record per active neuron.
        let staging = (0..ACTIVE * RECORD_BYTES).map(|i| (i % 251) as u8).collect();
        Run { cache, tokens: tokens.to_vec(), staging, missing: Vec::with_capacity(N_NEURONS), next: 0 }
    }

    /// One token of one layer.
    #[inline]
    fn step(&mut self) {
        let active = &self.tokens[self.next];
        self.next = (self.next + 1) % self.tokens.len();
        self.cache.begin_token(active, &mut self.missing);
        for (i, &m) in self.missing.iter().enumerate() {
            black_box(self.cache.insert(m, &self.staging[i * RECORD_BYTES..(i + 1) * RECORD_BYTES]));
        }
        self.cache.end_token();
    }
}

fn bench(c: &mut Criterion) {
    let mut stream = SyntheticActivity::new(N_NEURONS, ACTIVE, CHURN, SEED_BENCH_ACTIVITY);
    let tokens: Vec<Vec<u32>> = (0..TOKENS).map(|_| stream.next_token().to_vec()).collect();
    let mut group = c.benchmark_group("cache_token_layer");
    group.measurement_time(Duration::from_secs(5)).sample_size(50);
    for (policy, slots) in [("window:5", N_NEURONS), ("window:1", N_NEURONS), ("lru", 1000), ("lfu", 1000)] {
        let spec: PolicySpec = policy.parse().expect("bench policy");
        let mut run = Run::new(spec, slots, &tokens);
        for _ in 0..TOKENS {
            run.step();
        }
        run.cache.reset_stats();
        for _ in 0..TOKENS {
            run.step();
        }
        let s = run.cache.stats();
        let per = |x: u64| x as f64 / s.tokens as f64;
        eprintln!(
            "{policy} ({slots} slots, {} rows in use, {:.1} MiB): per token-layer {:.1} hits, {:.1} misses, {:.1} \
             inserts, {:.1} declined, {:.1} evictions, {:.1} rows moved, {:.0} bytes copied",
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
        group.throughput(Throughput::Bytes(s.bytes_copied / s.tokens));
        group.bench_function(BenchmarkId::from_parameter(policy), |b| b.iter(|| run.step()));
    }
    group.finish();
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
