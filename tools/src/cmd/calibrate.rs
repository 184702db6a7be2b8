//! `spike calibrate`: per-layer activation thresholds reaching a target sparsity on a trace's training split.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use predictor::calibrate::Thresholds;
use predictor::trace::Trace;

/// Arguments of `spike calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace to calibrate on (from `spike trace`).
    trace: PathBuf,
    /// Target sparsity: the fraction of neurons inactive per layer, in [0, 1). Ignored for ReLU models, whose
    /// threshold is 0.
    #[arg(long)]
    sparsity: f64,
    /// Output thresholds file (JSON).
    #[arg(short, long)]
    out: PathBuf,
    /// Fraction of the trace's tokens (whole documents) held out for validation.
    #[arg(long, default_value_t = 0.2)]
    valid_fraction: f64,
    /// Seed of the document split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::check_fraction(args.valid_fraction, "--valid-fraction")?;
    let t0 = Instant::now();
    let trace = Trace::open(&args.trace)?;
    super::note_split(&trace);
    let meta = trace.meta();
    let bar = ProgressBar::new(meta.n_layers as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} layers, {elapsed}").expect("the template is valid"),
    );
    let t = Thresholds::calibrate(&trace, args.sparsity, args.valid_fraction, args.seed, &mut |l| {
        bar.set_position(l as u64)
    })
    .with_context(|| format!("calibrating on {}", args.trace.display()))?;
    bar.finish_and_clear();
    super::ensure_parent(&args.out)?;
    t.save(&args.out)?;
    let mean = |v: &[f64]| Thresholds::mean(v).unwrap_or(f64::NAN);
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.4}..{hi:.4}")
    };
    match t.target_sparsity {
        Some(s) => {
            println!("calibrated {} layers to sparsity {s} on {} training tokens", meta.n_layers, t.train_tokens)
        }
        None => println!("ReLU model: threshold 0 in every layer (exact sparsity); --sparsity ignored"),
    }
    println!(
        "  sparsity reached: train {:.4} (layers {}), validation {:.4} (layers {}, {} tokens)",
        mean(&t.train_sparsity),
        range(&t.train_sparsity),
        mean(&t.valid_sparsity),
        range(&t.valid_sparsity),
        t.valid_tokens
    );
    let thr: Vec<f64> = t.thresholds.iter().map(|&x| x as f64).collect();
    println!("  thresholds: {}", range(&thr));
    println!("wrote {} in {:.1} s", args.out.display(), t0.elapsed().as_secs_f64());
    Ok(())
}
