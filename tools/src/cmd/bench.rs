//! `spike bench`: prompt processing (a batch of `--prompt` tokens from an empty cache) and decode (`--gen`
//! tokens one at a time) speed, as llama-bench measures pp and tg; the median of `--reps` repeats.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::engine::kernels;
use spike_flash::engine::sampler::argmax;

/// Arguments of `spike bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a GGUF file or a Hugging Face checkpoint directory; default: the fetched default model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Prompt tokens processed as one batch.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens decoded one at a time.
    #[arg(long, default_value_t = 128)]
    gen: usize,
    /// Repeats; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// CSV file for the per-repeat rows.
    #[arg(long, default_value = "results/bench/dense.csv")]
    csv: PathBuf,
}

#[derive(serde::Serialize)]
struct Row {
    test: &'static str,
    rep: usize,
    tokens: usize,
    ms: f64,
    tokens_per_s: f64,
    threads: usize,
    isa: String,
    act_precision: String,
    model: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0 && args.prompt > 0 && args.gen > 0, "--reps, --prompt and --gen must be positive");
    let loaded = super::load_model(args.model.as_deref())?;
    let model = &loaded.model;
    let vocab = model.config().vocab_size as u64;
    // Fixed pseudo-random prompt tokens (llama-bench also benchmarks on arbitrary tokens).
    let prompt: Vec<u32> = (0..args.prompt as u64).map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32).collect();
    let threads = spike_flash::engine::threads();
    let isa = format!("{:?}", kernels::isa());
    let precision = format!("{:?}", model.precision()).to_lowercase();
    let mut state = model.new_state(args.prompt.max(args.gen + 1));
    // Warm-up: touches every weight once so the first repeat does not pay for page faults.
    model.forward(&mut state, &prompt[..prompt.len().min(8)], false)?;

    let bar = ProgressBar::new((2 * args.reps) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} runs {msg}").expect("the template is valid"));
    let mut rows = Vec::new();
    for rep in 0..args.reps {
        state.reset();
        let t = Instant::now();
        model.forward(&mut state, &prompt, false)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(row("pp", rep, args.prompt, ms, threads, (&isa, &precision), &loaded.path));
        bar.inc(1);

        state.reset();
        let mut tok = prompt[0];
        let t = Instant::now();
        for _ in 0..args.gen {
            let logits = model.forward(&mut state, &[tok], false)?;
            tok = argmax(&logits);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(row("tg", rep, args.gen, ms, threads, (&isa, &precision), &loaded.path));
        bar.inc(1);
    }
    bar.finish_and_clear();

    super::write_csv(&args.csv, &rows)?;

    println!(
        "model: {}  threads: {threads}  isa: {isa}  activations: {precision}  repeats: {}",
        loaded.path.display(),
        args.reps
    );
    println!("{:<6} {:>8} {:>12} {:>12} {:>12}", "test", "tokens", "median t/s", "min t/s", "max t/s");
    for (test, tokens) in [("pp", args.prompt), ("tg", args.gen)] {
        let tps: Vec<f64> = rows.iter().filter(|r| r.test == test).map(|r| r.tokens_per_s).collect();
        let (lo, hi) = tps.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!("{:<6} {:>8} {:>12.1} {:>12.1} {:>12.1}", format!("{test}{tokens}"), tokens, median(tps), lo, hi);
    }
    println!("rows written to {}", args.csv.display());
    Ok(())
}

fn row(
    test: &'static str,
    rep: usize,
    tokens: usize,
    ms: f64,
    threads: usize,
    (isa, precision): (&str, &str),
    model: &std::path::Path,
) -> Row {
    Row {
        test,
        rep,
        tokens,
        ms,
        tokens_per_s: tokens as f64 / (ms / 1e3),
        threads,
        isa: isa.to_string(),
        act_precision: precision.to_string(),
        model: model.display().to_string(),
    }
}
