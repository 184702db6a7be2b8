//! Throughput of the dense engine's dot kernels on SmolLM2-135M's shapes.
//!
//! `cargo bench -p spike-flash --bench kernels [-- FILTER]`. Groups:
//! - `decode`: one token (n = 1), the same matrix every iteration, so it sits in cache after the first;
//!   throughput in bytes of weights.
//! - `decode_cold`: one token, each iteration on the next of many copies of the matrix (together far more
//!   than the L3), so the weights stream from DRAM as they do in a real decode; bytes of weights.
//! - `prompt`: 128 tokens; throughput in elements = multiply-accumulates (criterion's `Gelem/s` = GMAC/s).
//! - `model_decode` / `model_prompt`: all matmuls of one token (or 128 tokens) of the whole model, 30
//!   layers of attention and FFN projections in Q4_1 and the Q8_0 output matrix, each matrix its own
//!   memory (96 MB in all): the kernels' share of a token's time. Bytes / MACs as above.
//!
//! Every benchmark runs for each instruction set this CPU has, on rayon pools of 1 and 2 threads. The scalar
//! kernels are left out of the `model_*` groups, where one iteration would take seconds.
//!
//! On a machine shared with other jobs, wall time counts the time the benchmark waits for a CPU. With
//! `SPIKE_BENCH_CLOCK=cpu` the benchmarks measure the CPU time of all the process's threads instead
//! (from `/proc/self/task/*/schedstat`, Linux only): for one thread that is the kernels' own time; for two,
//! the sum over both threads, including any time rayon's workers spin waiting for work. The kernel updates
//! those counters every scheduler tick (4 ms here), so this mode takes fewer, longer samples of equal size
//! (flat sampling, 20 of at least 200 ms each): each sample is off by up to a tick, unbiased on average.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::engine::kernels::{matmul_isa, Acts, Isa, QMatrix};
use spike_flash::model::quant::DType;

const SEED: u64 = 0xBE7C_4B45;
const D_MODEL: usize = 576;
const D_FFN: usize = 1536;
const D_KV: usize = 192;
const VOCAB: usize = 49152;
const LAYERS: usize = 30;
const PROMPT: usize = 128;
/// Bytes of weight copies `decode_cold` cycles through: far more than the 32 MiB L3.
const COLD_BYTES: usize = 256 << 20;

/// Random blocks of `dtype` with scales of the sizes real models have (F16: every element such a value).
fn random_weights(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let bytes = (rows * cols / dtype.block_len()) * dtype.block_bytes();
    let mut data = vec![0u8; bytes];
    rng.fill(&mut data[..]);
    for blk in data.chunks_exact_mut(dtype.block_bytes()) {
        blk[..2].copy_from_slice(&half::f16::from_f32(rng.gen_range(0.002..0.05)).to_bits().to_le_bytes());
        if dtype == DType::Q4_1 {
            blk[2..4].copy_from_slice(&half::f16::from_f32(rng.gen_range(-0.4..-0.02)).to_bits().to_le_bytes());
        }
    }
    data
}

fn random_acts(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
}

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    [1, 2]
        .into_iter()
        .map(|t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a rayon pool")))
        .collect()
}

fn isas(with_scalar: bool) -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_available() && (with_scalar || *i != Isa::Scalar)).collect()
}

/// (name, dtype, rows, cols) of the single-matrix benchmarks; the F16 one is the float kernels' (the
/// default model has no float matrix).
const SHAPES: [(&str, DType, usize, usize); 3] = [
    ("ffn_1536x576_q4_1", DType::Q4_1, D_FFN, D_MODEL),
    ("output_49152x576_q8_0", DType::Q8_0, VOCAB, D_MODEL),
    ("ffn_1536x576_f16", DType::F16, D_FFN, D_MODEL),
];

/// CPU time of all threads of this process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Criterion measurement by process CPU time, see the file's documentation.
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        process_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

/// Whether the benchmarks measure CPU time, see the file's documentation.
fn cpu_clock() -> bool {
    std::env::var("SPIKE_BENCH_CLOCK").is_ok_and(|v| v == "cpu")
}

/// A benchmark group, with flat sampling when measuring CPU time.
fn group<'a, M: Measurement>(c: &'a mut Criterion<M>, name: &str) -> BenchmarkGroup<'a, M> {
    let mut g = c.benchmark_group(name);
    if cpu_clock() {
        g.sampling_mode(SamplingMode::Flat).sample_size(20).measurement_time(Duration::from_secs(4));
    }
    g
}

fn single_matrices<M: Measurement + Sync>(c: &mut Criterion<M>)
where
    M::Value: Send,
{
    let mut rng = StdRng::seed_from_u64(SEED);
    let pools = pools();
    for (name, dtype, rows, cols) in SHAPES {
        let wdata = random_weights(&mut rng, dtype, rows, cols);
        let w = QMatrix::new(dtype, rows, cols, &wdata).expect("benchmark matrix is well formed");
        let bytes = wdata.len() as u64;

        let copies = (COLD_BYTES / wdata.len()).max(2);
        let cold: Vec<u8> = wdata.iter().copied().cycle().take(copies * wdata.len()).collect();
        let cold: Vec<QMatrix> = cold
            .chunks_exact(wdata.len())
            .map(|d| QMatrix::new(dtype, rows, cols, d).expect("benchmark matrix is well formed"))
            .collect();

        let mut acts1 = Acts::new();
        acts1.prepare(dtype, &random_acts(&mut rng, cols), 1, cols);
        let mut actsn = Acts::new();
        actsn.prepare(dtype, &random_acts(&mut rng, PROMPT * cols), PROMPT, cols);
        let mut out = vec![0.0f32; PROMPT * rows];

        let mut g = group(c, "decode");
        g.throughput(Throughput::Bytes(bytes));
        for (threads, pool) in &pools {
            for isa in isas(true) {
                g.bench_function(BenchmarkId::new(name, format!("{isa}/t{threads}")), |b| {
                    pool.install(|| b.iter(|| matmul_isa(isa, &w, &acts1, &mut out[..rows])))
                });
            }
        }
        g.finish();

        let mut g = group(c, "decode_cold");
        g.throughput(Throughput::Bytes(bytes));
        for (threads, pool) in &pools {
            for isa in isas(true) {
                let mut k = 0;
                g.bench_function(BenchmarkId::new(name, format!("{isa}/t{threads}")), |b| {
                    pool.install(|| {
                        b.iter(|| {
                            k = (k + 1) % cold.len();
                            matmul_isa(isa, &cold[k], &acts1, &mut out[..rows])
                        })
                    })
                });
            }
        }
        g.finish();

        let mut g = group(c, "prompt");
        g.throughput(Throughput::Elements((rows * cols * PROMPT) as u64));
        if !cpu_clock() {
            g.sample_size(10);
        }
        for (threads, pool) in &pools {
            for isa in isas(true) {
                g.bench_function(BenchmarkId::new(name, format!("{isa}/t{threads}")), |b| {
                    pool.install(|| b.iter(|| matmul_isa(isa, &w, &actsn, &mut out)))
                });
            }
        }
        g.finish();
    }
}

/// One layer's matrices: (rows, cols) of q, k, v, o, gate, up, down.
const LAYER: [(usize, usize); 7] = [
    (D_MODEL, D_MODEL),
    (D_KV, D_MODEL),
    (D_KV, D_MODEL),
    (D_MODEL, D_MODEL),
    (D_FFN, D_MODEL),
    (D_FFN, D_MODEL),
    (D_MODEL, D_FFN),
];

fn whole_model<M: Measurement + Sync>(c: &mut Criterion<M>)
where
    M::Value: Send,
{
    let mut rng = StdRng::seed_from_u64(SEED ^ 1);
    let layers: Vec<Vec<(usize, usize, Vec<u8>)>> = (0..LAYERS)
        .map(|_| LAYER.iter().map(|&(r, k)| (r, k, random_weights(&mut rng, DType::Q4_1, r, k))).collect())
        .collect();
    let output = random_weights(&mut rng, DType::Q8_0, VOCAB, D_MODEL);
    let mut mats: Vec<QMatrix> = layers
        .iter()
        .flatten()
        .map(|(r, k, d)| QMatrix::new(DType::Q4_1, *r, *k, d).expect("benchmark matrix is well formed"))
        .collect();
    mats.push(QMatrix::new(DType::Q8_0, VOCAB, D_MODEL, &output).expect("benchmark matrix is well formed"));
    let bytes: u64 = mats.iter().map(|m| m.data.len() as u64).sum();
    let macs: u64 = mats.iter().map(|m| (m.rows * m.cols) as u64).sum();
    let pools = pools();

    for (name, n) in [("model_decode", 1), ("model_prompt", PROMPT)] {
        // Activations prepared once per width; the engine prepares once per distinct input vector.
        let mut a_model = Acts::new();
        a_model.prepare(DType::Q4_1, &random_acts(&mut rng, n * D_MODEL), n, D_MODEL);
        let mut a_ffn = Acts::new();
        a_ffn.prepare(DType::Q4_1, &random_acts(&mut rng, n * D_FFN), n, D_FFN);
        let mut out = vec![0.0f32; n * VOCAB];
        let mut g = group(c, name);
        if n == 1 {
            g.throughput(Throughput::Bytes(bytes));
        } else {
            g.throughput(Throughput::Elements(macs * n as u64));
            g.sample_size(10).measurement_time(Duration::from_secs(20));
        }
        for (threads, pool) in &pools {
            for isa in isas(false) {
                g.bench_function(BenchmarkId::new("smollm2_135m", format!("{isa}/t{threads}")), |b| {
                    pool.install(|| {
                        b.iter(|| {
                            for m in &mats {
                                let acts = if m.cols == D_FFN { &a_ffn } else { &a_model };
                                matmul_isa(isa, m, acts, &mut out[..n * m.rows]);
                            }
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).configure_from_args()
}

fn main() {
    if cpu_clock() {
        let mut c = config(Criterion::default().with_measurement(CpuTime));
        single_matrices(&mut c);
        whole_model(&mut c);
        c.final_summary();
    } else {
        let mut c = config(Criterion::default());
        single_matrices(&mut c);
        whole_model(&mut c);
        c.final_summary();
    }
}
