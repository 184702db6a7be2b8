//! `spike io-bench`: random-read throughput of a backend at one block size and queue depth (fio's randread,
//! for scripts/io-vs-fio.sh), or, with `--profile`, the cost model's error on random read sets of mixed sizes:
//! sets of 4 KiB..1 MiB reads over `--file`, or, with `--layout`, one layer's batch of neuron records as the
//! flash loop reads them.

use std::path::PathBuf;

use anyhow::Context;
use experiments::cost_validation::{device_spread, validate, ErrorSummary, ReadSets};
use experiments::device::measure_random;
use spike_flash::cost::CostModel;
use spike_flash::io::ScratchFile;
use spike_flash::io::{open_backend, BackendKind, IoConfig};
use spike_flash::layout::{Layout, FFN_FILE};

use super::profile_device::parse_size;

/// Arguments of `spike io-bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// File to read (at least a few times the block size; >= 2 GiB for honest numbers).
    #[arg(long, conflicts_with_all = ["dir", "layout"], required_unless_present_any = ["dir", "layout"])]
    file: Option<PathBuf>,
    /// Instead of --file: a converted layout (NAME.spike); its ffn.bin is read, and with --profile the read
    /// sets are random subsets of one layer's neurons (1 to all), as the flash loop reads them.
    #[arg(long, conflicts_with = "dir")]
    layout: Option<PathBuf>,
    /// Instead of --file: create an unnamed scratch file of --file-size in this folder (gone at exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the scratch file made with --dir.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    file_size: u64,
    /// Backend: uring, pool or mmap.
    #[arg(long, default_value = "uring")]
    backend: BackendKind,
    /// Block size of the random reads (offsets are multiples of it, as in fio).
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    bs: u64,
    /// Reads in flight (io_uring queue depth; the pool uses this many threads unless --pool-threads is given).
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Pool threads (default: --depth).
    #[arg(long)]
    pool_threads: Option<usize>,
    /// Destination memory the reads cycle through (default: 2 x depth blocks, about what fio uses).
    #[arg(long, value_parser = parse_size)]
    buffer: Option<u64>,
    /// Measuring time, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seed of the random offsets (and of the validation's read sets). Give each run its own seed so that no
    /// run re-reads the offsets of the one before (a host-side cache of a virtual disk would serve them).
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// io_uring: completions reaped before the queue is refilled.
    #[arg(long, default_value_t = 1)]
    complete_batch: usize,
    /// io_uring: reads handed to the kernel per system call.
    #[arg(long, default_value_t = 1)]
    submit_batch: usize,
    /// io_uring: do not register the file with the ring.
    #[arg(long)]
    no_register_file: bool,
    /// Read through the page cache (no O_DIRECT); the output says so.
    #[arg(long)]
    buffered: bool,
    /// Device profile (device-profile.json): validate the cost model instead of measuring throughput.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Cost-model validation: queue depths to test, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,32")]
    depths: Vec<usize>,
    /// Cost-model validation: random read sets per depth.
    #[arg(long, default_value_t = 30)]
    sets: usize,
    /// Cost-model validation: passes over all sets (in a fresh random order each); a set's time is the median.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Cost-model validation: CSV of the per-set rows.
    #[arg(long, default_value = "results/device/cost-model-validation.csv")]
    csv: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let scratch = match &args.dir {
        Some(dir) => {
            eprintln!("io-bench: writing a {} B scratch file in {}", args.file_size, dir.display());
            Some(
                ScratchFile::create(dir, args.file_size)
                    .with_context(|| format!("scratch file in {}", dir.display()))?,
            )
        }
        None => None,
    };
    let layout = match &args.layout {
        Some(dir) => Some(Layout::open(dir).with_context(|| format!("opening layout {}", dir.display()))?),
        None => None,
    };
    let path = match (&scratch, &args.file, &layout) {
        (Some(s), _, _) => s.path().to_path_buf(),
        (None, Some(f), _) => f.clone(),
        (None, None, Some(l)) => l.dir().join(FFN_FILE),
        (None, None, None) => anyhow::bail!("give --file, --dir or --layout"),
    };
    let file_len = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
    let cfg = IoConfig {
        merge: args.profile.is_some(),
        queue_depth: args.depth,
        threads: args.pool_threads.unwrap_or(args.depth),
        complete_batch: args.complete_batch,
        submit_batch: args.submit_batch,
        register_file: !args.no_register_file,
        direct: !args.buffered,
        ..IoConfig::default()
    };
    let cache =
        if args.buffered || args.backend == BackendKind::Mmap { "page cache USED" } else { "O_DIRECT, no page cache" };
    match &args.profile {
        None => {
            let bs = usize::try_from(args.bs)?;
            anyhow::ensure!(bs > 0 && file_len >= 2 * args.bs, "--bs must be positive and at most half the file");
            let mut b = open_backend(args.backend, &path, &cfg)?;
            let buffer = args.buffer.map_or(2 * args.depth * bs, |b| b as usize);
            anyhow::ensure!(buffer >= bs, "--buffer {buffer} is smaller than one read of --bs {bs}");
            let s = measure_random(b.as_mut(), file_len, bs, bs, args.depth, buffer, args.seconds, args.seed)
                .with_context(|| format!("reading {}", path.display()))?;
            println!(
                "io-bench: backend={} bs={} depth={} file={} file_bytes={} ({cache}) seconds={:.2} reads={} \
                 MiB/s={:.1} IOPS={:.0} mean_latency_us={:.1}",
                b.name(),
                bs,
                args.depth,
                path.display(),
                file_len,
                s.wait_ns as f64 / 1e9,
                s.reads,
                s.throughput_mib_s(),
                s.reads as f64 / (s.wait_ns as f64 / 1e9),
                s.mean_latency_us()
            );
        }
        Some(profile) => {
            if file_len < (2 << 30) && layout.is_none() {
                eprintln!(
                    "io-bench: warning: {} is under 2 GiB; device caches may flatter the numbers",
                    path.display()
                );
            }
            let model = CostModel::load(profile, &cfg)?;
            let mut backends = Vec::new();
            for &depth in &args.depths {
                let cfg = IoConfig { queue_depth: depth, threads: args.pool_threads.unwrap_or(depth), ..cfg.clone() };
                backends.push((depth, open_backend(args.backend, &path, &cfg)?));
            }
            let name = backends.first().map_or("none", |b| b.1.name());
            let rows = match &layout {
                Some(l) => validate(&mut backends, &model, ReadSets::Layout(l), args.sets, args.passes, args.seed),
                None => {
                    validate(&mut backends, &model, ReadSets::Mixed { file_len }, args.sets, args.passes, args.seed)
                }
            }
            .with_context(|| format!("reading {}", path.display()))?;
            let kind = if layout.is_some() { "layout sets (one layer's neurons, 1 to all)" } else { "mixed sets" };
            println!("io-bench cost model: {} {kind} of {} ({} bytes)", rows.len(), path.display(), file_len);
            for &depth in &args.depths {
                let e = ErrorSummary::of(&rows, Some(depth));
                println!(
                    "io-bench cost model: backend={name} depth={depth} sets={} ({cache}) median |error|={:.1}% \
                     worst={:.1}% median signed={:+.1}% (first passes only: median |error|={:.1}%)",
                    e.sets,
                    100.0 * e.median_abs,
                    100.0 * e.worst_abs,
                    100.0 * e.median_signed,
                    100.0 * e.median_abs_first
                );
            }
            println!(
                "io-bench cost model: the device's own spread (slowest / fastest of {} passes of the same set, \
                 median over sets): {:.1}%",
                args.passes,
                100.0 * device_spread(&rows)
            );
            let e = ErrorSummary::of(&rows, None);
            println!(
                "io-bench cost model: all {} sets: median |error|={:.1}% worst={:.1}% median signed error={:+.1}%",
                e.sets,
                100.0 * e.median_abs,
                100.0 * e.worst_abs,
                100.0 * e.median_signed
            );
            super::write_csv(&args.csv, &rows)?;
            println!("wrote {}", args.csv.display());
        }
    }
    Ok(())
}
