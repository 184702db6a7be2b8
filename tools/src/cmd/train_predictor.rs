//! `spike train-predictor`: low-rank sparsity predictors trained on a trace, one per layer.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use predictor::calibrate::Thresholds;
use predictor::lowrank::RankSpec;
use predictor::metrics::Summary;
use predictor::trace::Trace;
use predictor::train::{train_predictor, Positives, PredictorConfig, TraceLayers, TrainConfig};

/// Arguments of `spike train-predictor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trace to train on (from `spike trace`).
    trace: PathBuf,
    /// Where to write the predictor file.
    #[arg(short, long)]
    out: PathBuf,
    /// Rank of every layer's predictor.
    #[arg(long, default_value_t = 64)]
    rank: usize,
    /// K:RANK: the last K layers get rank RANK instead (the paper used 4:1024 on OPT 6.7B).
    #[arg(long, value_parser = parse_rank_last)]
    rank_last: Option<(usize, usize)>,
    /// Passes over the training tokens.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Tokens per mini-batch.
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    batch: usize,
    /// Adam's peak learning rate (decays along a half cosine to a tenth of it).
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    lr: f32,
    /// How the active neurons weigh in the loss among themselves: count (all alike, as recall counts them)
    /// or magnitude (in proportion to the activation's magnitude, as they weigh in the FFN's output).
    #[arg(long, default_value = "count")]
    positives: Positives,
    /// Seed of the initial weights and batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per layer, the decision threshold keeps this share of the truly active neurons of the validation split.
    #[arg(long, default_value_t = 0.95)]
    recall: f64,
    /// Activation thresholds (from `spike calibrate`) defining which neurons count as active; their document
    /// split is used. For ReLU models neither this nor --sparsity is needed (threshold 0).
    #[arg(long, conflicts_with = "sparsity")]
    thresholds: Option<PathBuf>,
    /// Calibrate the activation thresholds on the trace's training split for this sparsity (fraction of
    /// neurons inactive per layer), as `spike calibrate` does.
    #[arg(long)]
    sparsity: Option<f64>,
    /// Fraction of the trace's tokens (whole documents) held out for validation (without --thresholds).
    #[arg(long, default_value_t = 0.2)]
    valid_fraction: f64,
    /// Seed of the document split (without --thresholds).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Train on at most this many tokens of the training split (the first ones; default: all).
    #[arg(long)]
    max_train_tokens: Option<usize>,
    /// Per-layer validation metrics as CSV (default: OUT with the extension `.csv`).
    #[arg(long)]
    csv: Option<PathBuf>,
}

fn parse_rank_last(s: &str) -> Result<(usize, usize), String> {
    RankSpec::parse_last(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::check_fraction(args.valid_fraction, "--valid-fraction")?;
    let t0 = Instant::now();
    let trace = Trace::open(&args.trace)?;
    super::note_split(&trace);
    let meta = trace.meta();
    let identity = meta.identity();
    let relu = meta.activation == spike_flash::model::config::Activation::Relu;
    let (thresholds, valid_fraction, split_seed) = match (&args.thresholds, args.sparsity) {
        (Some(p), _) => {
            let t = Thresholds::load(p)?;
            t.check_model(p, &identity)?;
            eprintln!(
                "activation thresholds from {} (its split: {} held out, seed {})",
                p.display(),
                t.valid_fraction,
                t.seed
            );
            (t.thresholds.clone(), t.valid_fraction, t.seed)
        }
        (None, Some(s)) => {
            eprintln!("calibrating activation thresholds for sparsity {s} on {}", args.trace.display());
            let t = Thresholds::calibrate(&trace, s, args.valid_fraction, args.split_seed, &mut |_| {})?;
            (t.thresholds, args.valid_fraction, args.split_seed)
        }
        (None, None) => {
            anyhow::ensure!(
                relu,
                "{} was traced from a {} model: say which neurons count as active with --sparsity S or --thresholds \
                 FILE",
                args.trace.display(),
                meta.activation.hf_name()
            );
            (vec![0.0; meta.n_layers], args.valid_fraction, args.split_seed)
        }
    };
    let (mut train, valid) = trace.split(valid_fraction, split_seed);
    if let Some(m) = args.max_train_tokens {
        train.truncate(m);
    }
    anyhow::ensure!(
        !train.is_empty() && !valid.is_empty(),
        "{}: the train/validation split leaves one side empty ({} / {} tokens)",
        args.trace.display(),
        train.len(),
        valid.len()
    );
    let cfg = PredictorConfig {
        ranks: RankSpec { rank: args.rank, last: args.rank_last },
        train: TrainConfig {
            epochs: args.epochs,
            batch: args.batch,
            lr: args.lr,
            seed: args.seed,
            positives: args.positives,
        },
        recall: args.recall,
    };
    eprintln!(
        "{}: {} layers, d_model {}, d_ffn {}; {} training and {} validation tokens; ranks {}{}; {} threads",
        args.trace.display(),
        meta.n_layers,
        meta.d_model,
        meta.d_ffn,
        train.len(),
        valid.len(),
        args.rank,
        args.rank_last.map(|(k, r)| format!(", {r} for the last {k} layers")).unwrap_or_default(),
        spike_flash::engine::threads()
    );
    let source =
        TraceLayers::new(&trace, train, valid, thresholds)?.with_magnitudes(args.positives == Positives::Magnitude);
    let bar = ProgressBar::new(meta.n_layers as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} layers, {elapsed} elapsed, eta {eta} {msg}")
            .expect("the template is valid"),
    );
    bar.tick();
    let t_train = Instant::now();
    let (pred, rows) = train_predictor(&source, identity, &cfg, &|m| {
        bar.inc(1);
        bar.set_message(format!("layer {}: recall {:.3} precision {:.3}", m.layer, m.recall, m.precision));
    })
    .with_context(|| format!("training on {}", args.trace.display()))?;
    bar.finish_and_clear();
    let train_secs = t_train.elapsed().as_secs_f64();

    super::ensure_parent(&args.out)?;
    predictor::file::write(&args.out, &pred)?;
    let csv = args.csv.clone().unwrap_or_else(|| args.out.with_extension("csv"));
    super::write_csv(&csv, &rows)?;

    let s = Summary::of(&rows);
    println!("{s}");
    println!(
        "  predicted/true per layer {:.3}..{:.3}; predictor DRAM {} bytes ({:.2} MB); training {:.1} s",
        rows.iter().map(|r| r.predicted_true_ratio).fold(f64::INFINITY, f64::min),
        rows.iter().map(|r| r.predicted_true_ratio).fold(f64::NEG_INFINITY, f64::max),
        pred.dram_bytes(),
        pred.dram_bytes() as f64 / 1e6,
        train_secs
    );
    println!("wrote {} and {} in {:.1} s", args.out.display(), csv.display(), t0.elapsed().as_secs_f64());
    Ok(())
}
