//! `spike trace-stats`: sparsity, concentration, token-to-token reuse and co-activation of a trace, as CSV
//! plus a printed summary, and per-layer neuron frequencies for a pinned hot set.

use std::path::PathBuf;
use std::time::Instant;

use experiments::trace_stats::{self, TraceStatsConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `spike trace-stats`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace (from `spike trace`).
    trace: PathBuf,
    /// Thresholds file(s) from `spike calibrate` (repeatable).
    #[arg(long)]
    thresholds: Vec<PathBuf>,
    /// Predictor file(s) from `spike train-predictor` (repeatable): their predicted sets get the reuse
    /// statistics (what the window caches) and are compared with the true sets, in predictor.csv.
    #[arg(long)]
    predictor: Vec<PathBuf>,
    /// Calibrate thresholds for this sparsity on the training split and use them (repeatable). Default, when
    /// no thresholds are given: 0.5 and 0.7 for models that are not ReLU; ReLU models always use threshold 0.
    #[arg(long)]
    sparsity: Vec<f64>,
    /// The same magnitude threshold in every layer (repeatable).
    #[arg(long)]
    abs_threshold: Vec<f32>,
    /// Output folder: CSV files, hot-set JSON files, summary.txt.
    #[arg(short, long)]
    out: PathBuf,
    /// Fraction of the tokens (whole documents) held out for validation.
    #[arg(long, default_value_t = 0.2)]
    valid_fraction: f64,
    /// Seed of the document split and of the co-activation sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest reuse window k.
    #[arg(long, default_value_t = 16)]
    k_max: usize,
    /// Neurons sampled per layer for co-activation.
    #[arg(long, default_value_t = 16)]
    coact_sample: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::check_fraction(args.valid_fraction, "--valid-fraction")?;
    let t0 = Instant::now();
    let cfg = TraceStatsConfig {
        thresholds: args.thresholds,
        predictors: args.predictor,
        sparsity: args.sparsity,
        abs_threshold: args.abs_threshold,
        valid_fraction: args.valid_fraction,
        seed: args.seed,
        k_max: args.k_max,
        coact_sample: args.coact_sample,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} layers, {elapsed}").expect("the template is valid"),
    );
    let text = trace_stats::run(&args.trace, &cfg, &args.out, &mut |done, layers| {
        bar.set_length(layers as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    print!("{text}");
    println!(
        "wrote sparsity.csv, reuse.csv, coactivation.csv, coactivation-summary.csv, hot-*.json, summary.txt (and \
         predictor.csv with --predictor) to {} in {:.1} s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
