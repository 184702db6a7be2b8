//! `spike perplexity`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use predictor::calibrate::Thresholds;
use predictor::selectors::{PredictedFfn, PredictedReport};
use predictor::trace::{ModelIdentity, Trace};
use spike_flash::engine::eval::perplexity;
use spike_flash::engine::input::ActPrecision;
use spike_flash::engine::model::{DenseFfn, FfnStep};
use spike_flash::engine::sparse::{all_rows, Oracle, SparseFfn, SparseStats};
use spike_flash::model::config::Activation;

/// Arguments of `spike perplexity`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a GGUF file or a Hugging Face checkpoint directory; default: the fetched default model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The text file to score.
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many chunks (default: all).
    #[arg(long)]
    chunks: Option<usize>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// dense (default), oracle:S (only the truly active neurons, at thresholds calibrated for sparsity S, from
    /// --thresholds or --trace) or oracle:relu (threshold 0, for ReLU models).
    #[arg(long, default_value = "dense", value_parser = parse_mode)]
    sparsity: Mode,
    /// Thresholds file from `spike calibrate` for --sparsity oracle:S.
    #[arg(long)]
    thresholds: Option<PathBuf>,
    /// Trace to calibrate thresholds on for --sparsity oracle:S (when no --thresholds file is given).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// With --trace: fraction of its tokens (whole documents) held out from calibration.
    #[arg(long, default_value_t = 0.2)]
    valid_fraction: f64,
    /// With --trace: seed of the document split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Flash mode (--layout) and its options. Without --layout, --predictor (a file from `spike
    /// train-predictor`) computes each FFN of the model over the neurons it predicts active, exactly.
    #[command(flatten)]
    flash: super::flash::FlashArgs,
    /// With --predictor: also find the truly active neurons (at the predictor's activation thresholds) and
    /// report its recall and precision on this text. Costs a dense FFN per token.
    #[arg(long, requires = "predictor")]
    predictor_recall: bool,
}

/// How the FFN is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Dense,
    /// Only the neurons whose magnitude passes the layer's threshold: calibrated for sparsity `Some(S)`, or 0
    /// on a ReLU model (`None`).
    Oracle(Option<f64>),
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "dense" => Ok(Mode::Dense),
        "oracle:relu" => Ok(Mode::Oracle(None)),
        _ => match s.strip_prefix("oracle:").map(str::parse::<f64>) {
            Some(Ok(x)) if (0.0..1.0).contains(&x) => Ok(Mode::Oracle(Some(x))),
            _ => Err(format!("`{s}` is not dense, oracle:relu or oracle:S with S in [0, 1)")),
        },
    }
}

/// The thresholds an oracle run uses, and where they came from.
fn oracle_thresholds(args: &Args, loaded: &super::Loaded, target: Option<f64>) -> anyhow::Result<(Thresholds, String)> {
    let cfg = loaded.model.config();
    let identity =
        ModelIdentity::of(&loaded.path, cfg).with_context(|| format!("hashing {}", loaded.path.display()))?;
    let relu = cfg.activation == Activation::Relu;
    let Some(s) = target else {
        anyhow::ensure!(
            relu,
            "--sparsity oracle:relu needs a ReLU model; {} uses {}: give oracle:S with --thresholds or --trace",
            loaded.path.display(),
            cfg.activation.hf_name()
        );
        return Ok((Thresholds::relu(identity)?, "threshold 0 (ReLU)".into()));
    };
    anyhow::ensure!(
        !relu,
        "{} is a ReLU model: its sparsity is exact at threshold 0, use --sparsity oracle:relu",
        loaded.path.display()
    );
    if let Some(p) = &args.thresholds {
        let t = Thresholds::load(p)?;
        t.check_model(p, &identity)?;
        anyhow::ensure!(
            t.target_sparsity.is_some_and(|x| (x - s).abs() < 1e-9),
            "{} was calibrated for sparsity {:?}, not {s}",
            p.display(),
            t.target_sparsity
        );
        return Ok((t, format!("thresholds {}", p.display())));
    }
    let Some(tp) = &args.trace else {
        anyhow::bail!("--sparsity oracle:{s} needs --thresholds FILE (from spike calibrate) or --trace TRACE");
    };
    let trace = Trace::open(tp)?;
    super::note_split(&trace);
    trace.check_model(&identity)?;
    eprintln!("calibrating thresholds for sparsity {s} on {}", tp.display());
    let t = Thresholds::calibrate(&trace, s, args.valid_fraction, args.seed, &mut |_| {})?;
    Ok((t, format!("calibrated on {}", tp.display())))
}

pub fn run(args: Args, precision: ActPrecision) -> anyhow::Result<()> {
    anyhow::ensure!(args.ctx >= 4, "-c/--ctx {} is too short: perplexity needs at least 4 tokens per chunk", args.ctx);
    super::check_fraction(args.valid_fraction, "--valid-fraction")?;
    if args.flash.layout.is_none() {
        args.flash.check_unused(&["predictor"])?;
    }
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let (loaded, mut flash) = match &args.flash.layout {
        None => (super::load_model(args.model.as_deref(), precision)?, None),
        Some(dir) => {
            anyhow::ensure!(args.model.is_none(), "give either --model or --layout, not both");
            anyhow::ensure!(
                args.sparsity == Mode::Dense,
                "flash mode selects with --predictor or --oracle, not --sparsity"
            );
            let (mut session, ffn, dram) = args.flash.open(dir, precision, true)?;
            let tokenizer = session.tokenizer.take().expect("a session opened with its tokenizer has it");
            eprintln!("flash mode: {} backend, cache {}; {dram}", args.flash.backend, args.flash.cache);
            (super::Loaded { path: dir.clone(), model: session.model, tokenizer }, Some((ffn, dram)))
        }
    };
    if let Some(c) = loaded.model.max_context() {
        anyhow::ensure!(args.ctx <= c, "-c/--ctx {} is longer than the model's context of {c} tokens", args.ctx);
    }
    let mut tokens = loaded.tokenizer.encode(&text).with_context(|| format!("tokenizing {}", args.file.display()))?;
    if let Some(c) = args.chunks {
        tokens.truncate(c.saturating_mul(args.ctx));
    }
    let chunks = tokens.len() / args.ctx;
    eprintln!(
        "{}: {} tokens, {} chunks of {} ({} threads)",
        args.file.display(),
        tokens.len(),
        chunks,
        args.ctx,
        spike_flash::engine::threads()
    );
    let bar = ProgressBar::new(chunks as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} chunks, {elapsed} elapsed, eta {eta} {msg}")
            .expect("the template is valid"),
    );
    let mut dense = DenseFfn::default();
    let mut oracle = None;
    let mut origin = String::new();
    let mut thresholds = None;
    if let Mode::Oracle(target) = args.sparsity {
        let (t, from) = oracle_thresholds(&args, &loaded, target)?;
        let rows =
            all_rows(&loaded.model).with_context(|| format!("dequantizing the FFNs of {}", loaded.path.display()))?;
        let selector = Oracle::new(&loaded.model, rows.clone(), t.thresholds.clone())?;
        oracle = Some(SparseFfn::with_rows(rows, selector));
        origin = from;
        thresholds = Some(t);
    }
    let mut predicted = match &args.flash.predictor {
        Some(p) if flash.is_none() => Some(
            PredictedFfn::new(p, &loaded.model, &loaded.path, args.predictor_recall)
                .with_context(|| format!("the predictor {} on {}", p.display(), loaded.path.display()))?,
        ),
        Some(_) => None,
        None => None,
    };
    let ffn: &mut dyn FfnStep = match (oracle.as_mut(), predicted.as_mut(), flash.as_mut()) {
        (Some(o), _, _) => o,
        (None, Some(p), _) => &mut p.ffn,
        (None, None, Some((f, _))) => f,
        (None, None, None) => &mut dense,
    };
    let t0 = Instant::now();
    let result = perplexity(&loaded.model, &tokens, args.ctx, ffn, &mut |_, _, ppl| {
        bar.inc(1);
        bar.set_message(format!("ppl {ppl:.4}"));
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let stats: Option<SparseStats> = oracle.as_ref().map(|o| o.stats);
    let realised = stats.map(|s| 1.0 - s.active as f64 / s.total.max(1) as f64);
    println!(
        "perplexity {:.4} +/- {:.4} over {} chunks of {} ({} scored tokens) in {:.1} s ({:.0} tok/s)",
        result.ppl,
        result.stderr,
        result.chunks,
        result.n_ctx,
        result.scored_tokens,
        secs,
        (result.chunks * result.n_ctx) as f64 / secs
    );
    if let (Some(st), Some(r)) = (stats, realised) {
        println!(
            "  oracle sparsity ({origin}): realised {r:.4} ({} of {} neuron evaluations active)",
            st.active, st.total
        );
    }
    let predicted = predicted.map(|p| p.report());
    if let Some(p) = &predicted {
        print_predicted(p);
    }
    if let Some(path) = &args.json {
        let sparsity = match args.sparsity {
            Mode::Dense => serde_json::json!({ "mode": "dense" }),
            Mode::Oracle(target) => serde_json::json!({
                "mode": "oracle",
                "target": target,
                "thresholds_from": origin,
                "thresholds": thresholds.as_ref().map(|t| &t.thresholds),
                "stats": stats,
                "realised_sparsity": realised,
            }),
        };
        let v = serde_json::json!({
            "model": loaded.path.display().to_string(),
            "file": args.file.display().to_string(),
            "result": result,
            "seconds": secs,
            "sparsity": sparsity,
            "predictor": predicted,
            "flash": flash.as_ref().map(|(f, dram)| {
                let a = &args.flash;
                let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
                let active = f.stats.neurons_active as f64
                    / (f.stats.token_layers.max(1) as f64 * loaded.model.config().d_ffn as f64);
                serde_json::json!({
                    "layout": path(&a.layout),
                    "backend": a.backend.to_string(),
                    "cache": a.cache.to_string(),
                    "budget": a.budget.map(|b| b.to_string()),
                    "predictor": path(&a.predictor),
                    "oracle": path(&a.oracle),
                    "hot": path(&a.hot),
                    "overlap": a.overlap,
                    "compute_all_cached": a.compute_all_cached,
                    "io": f.backend().config(),
                    "dram": dram,
                    "active_fraction": active,
                    "stats": f.stats,
                })
            }),
        });
        let text = serde_json::to_string_pretty(&v)?;
        super::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints what a `--predictor` run computed and how well it predicted.
fn print_predicted(p: &PredictedReport) {
    println!(
        "  predictor {}: realised active fraction {:.4} (sparsity {:.4}, {} of {} neuron evaluations); {} bytes in DRAM",
        p.path,
        p.realised_active_fraction,
        1.0 - p.realised_active_fraction,
        p.stats.active,
        p.stats.total,
        p.dram_bytes
    );
    if let Some(a) = &p.audit {
        println!(
            "  against the truly active neurons of this text (mean over layers): recall {:.4} (min {:.4}), \
             precision {:.4}, predicted/true {:.3}, truly active {:.4}",
            a.recall, a.min_recall, a.precision, a.predicted_true_ratio, a.true_active_fraction
        );
    }
}
