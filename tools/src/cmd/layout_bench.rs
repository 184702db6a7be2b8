//! `spike layout-bench`: a converted layout's neuron records read in random per-layer subsets, as the flash
//! loop reads them, with each I/O backend; bytes/s (useful and read), read amplification, and the device
//! profile's figure for the same chunk size beside them.

use std::path::PathBuf;

use anyhow::Context;
use experiments::layout_bench::{run_layout_bench, LayoutBenchConfig};
use spike_flash::cost::CostModel;
use spike_flash::io::{BackendKind, IoConfig};
use spike_flash::layout::Layout;

/// Arguments of `spike layout-bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The converted layout (NAME.spike) whose ffn.bin is read.
    #[arg(long)]
    layout: PathBuf,
    /// Percentages of each layer's neurons read per batch, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "5,25,100")]
    percent: Vec<f64>,
    /// Backends, comma separated (uring, pool, mmap). mmap reads through the page cache, which is emptied of
    /// ffn.bin before every token.
    #[arg(long, value_delimiter = ',', default_value = "uring,pool,mmap")]
    backends: Vec<BackendKind>,
    /// Passes over all layers per percentage, each with fresh random subsets.
    #[arg(long, default_value_t = 8)]
    tokens: usize,
    /// io_uring queue depth and pool threads.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// Largest gap between two records' aligned spans that are still merged into one read, bytes.
    #[arg(long, default_value_t = 0)]
    max_gap: usize,
    /// Largest device read a merge may produce (K, M suffixes); a whole layer is read in spans of this size.
    #[arg(long, default_value = "1M", value_parser = super::profile_device::parse_size)]
    max_merge: u64,
    /// Device profile (device-profile.json): adds its throughput at the same chunk size and the cost model's
    /// prediction beside each row.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Seed of the random subsets.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// CSV of the rows.
    #[arg(long, default_value = "results/io/layout-bench.csv")]
    csv: PathBuf,
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = Layout::open(&args.layout).with_context(|| format!("opening layout {}", args.layout.display()))?;
    let io = IoConfig { max_gap: args.max_gap, max_merge: usize::try_from(args.max_merge)?, ..IoConfig::default() };
    let cfg = LayoutBenchConfig {
        fractions: args.percent.iter().map(|p| p / 100.0).collect(),
        backends: args.backends.clone(),
        tokens: args.tokens,
        depth: args.depth,
        io: io.clone(),
        seed: args.seed,
    }
    .validated()?;
    let model = match &args.profile {
        Some(p) => Some(CostModel::load(p, &io).with_context(|| format!("loading {}", p.display()))?),
        None => None,
    };
    let m = layout.manifest();
    let load = load_avg();
    eprintln!(
        "layout-bench: {} ({} layers x {} neurons, {} B records, stride {}, align {}), {} tokens, depth {}; \
         uring and pool read with O_DIRECT; mmap reads through the page cache, emptied of ffn.bin before every \
         token; load average {load}",
        args.layout.display(),
        m.layers.len(),
        m.model.d_ffn,
        m.record_bytes,
        m.record_stride,
        m.align,
        cfg.tokens,
        cfg.depth
    );
    let bar = indicatif::ProgressBar::new(cfg.tokens as u64);
    let rows = run_layout_bench(&layout, &cfg, model.as_ref(), &mut |t, _| bar.set_position(t as u64))
        .with_context(|| format!("reading {}", args.layout.display()))?;
    bar.finish_and_clear();

    println!(
        "{:<6} {:>5} {:>7} {:>9} {:>8} {:>10} {:>10} {:>7} {:>10} {:>10} {:>11}",
        "backend",
        "pct",
        "neurons",
        "chunk_B",
        "reads",
        "useful/s",
        "read/s",
        "ampl",
        "token_ms",
        "profile/s",
        "model_err"
    );
    for r in &rows {
        let profile = r.profile_mib_s.map_or("-".into(), |v| format!("{v:.0} MiB"));
        let err = r.predicted_seconds.map_or("-".into(), |p| format!("{:+.1}%", 100.0 * (p - r.seconds) / r.seconds));
        println!(
            "{:<6} {:>5} {:>7} {:>9.0} {:>8} {:>6.0} MiB {:>6.0} MiB {:>6.2}x {:>10.2} {:>10} {:>11}",
            r.backend,
            100.0 * r.fraction,
            r.neurons_per_batch,
            r.mean_chunk_bytes,
            r.reads,
            r.useful_mib_s,
            r.read_mib_s,
            r.read_amplification,
            r.token_ms_median,
            profile,
            err
        );
    }
    println!(
        "(useful/s: record bytes asked for per second of waiting; read/s: bytes the device transferred; mmap's \
         read bytes are the process's read_bytes, readahead included, and its time is the copying time, faults \
         included; profile/s: the device profile at the mean chunk size and the backend's depth; mmap's chunk_B is what \
         O_DIRECT would read, its real reads are the kernel's readahead)"
    );
    super::write_csv(&args.csv, &rows)?;
    println!("wrote {}", args.csv.display());
    Ok(())
}
