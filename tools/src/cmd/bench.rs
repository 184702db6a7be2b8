//! `spike bench`: prompt processing (a batch of `--prompt` tokens from an empty cache) and decode (`--gen`
//! tokens one at a time) speed, as llama-bench measures pp and tg; the median of `--reps` repeats.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::cache::PolicySpec;
use spike_flash::engine::kernels;
use spike_flash::engine::sampler::argmax;

use super::flash::CacheArg;
use super::flash_bench::{FlashBench, RowSpec, Selector};

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
    /// CSV file for the per-repeat rows (flash mode: per-token rows; default results/bench/flash.csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(flatten)]
    flash: super::flash::FlashArgs,
    /// Flash mode: the rows of the table, comma-separated, from naive (every neuron read every token), hybrid
    /// (the hottest neurons the budget holds stay resident, the rest is read every token), all (everything
    /// resident, outside --budget: the upper bound), window (window of --window tokens), predictor,
    /// predictor+window (the neurons --predictor picks), oracle, oracle+window, oracle+hybrid (the truly active
    /// neurons, from --oracle: what a perfect predictor would read; the oracle itself runs outside the budget);
    /// any row with `+overlap` appended reads the next layer while this one computes; with --split-layout,
    /// every row again on the split layout. Rows take turns, one prompt per round.
    #[arg(long, default_value = "naive,hybrid,predictor,predictor+window", value_delimiter = ',')]
    rows: Vec<String>,
    /// Flash mode: window length of the window rows.
    #[arg(long, default_value_t = 5)]
    window: u32,
    /// Flash mode: a split layout of the same model, to isolate what bundling buys.
    #[arg(long)]
    split_layout: Option<PathBuf>,
    /// Flash mode: text whose tokens make the prompts.
    #[arg(long, default_value = "/usr/share/common-licenses/GPL-3")]
    text: PathBuf,
    /// Flash mode: number of prompts (each --prompt tokens, then --gen decoded tokens).
    #[arg(long, default_value_t = 2)]
    prompts: usize,
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

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0 && args.prompt > 0 && args.gen > 0, "--reps, --prompt and --gen must be positive");
    if args.flash.layout.is_some() {
        return run_flash(&args);
    }
    let csv = args.csv.clone().unwrap_or_else(|| PathBuf::from("results/bench/dense.csv"));
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

    super::write_csv(&csv, &rows)?;

    println!(
        "model: {}  threads: {threads}  isa: {isa}  activations: {precision}  repeats: {}",
        loaded.path.display(),
        args.reps
    );
    println!("{:<6} {:>8} {:>12} {:>12} {:>12}", "test", "tokens", "median t/s", "min t/s", "max t/s");
    for (test, tokens) in [("pp", args.prompt), ("tg", args.gen)] {
        let tps: Vec<f64> = rows.iter().filter(|r| r.test == test).map(|r| r.tokens_per_s).collect();
        let (lo, hi) = tps.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "{:<6} {:>8} {:>12.1} {:>12.1} {:>12.1}",
            format!("{test}{tokens}"),
            tokens,
            super::median(tps),
            lo,
            hi
        );
    }
    println!("rows written to {}", csv.display());
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

/// The rows of `--rows` for one layout.
fn flash_rows(args: &Args, layout: &std::path::Path, suffix: &str) -> anyhow::Result<Vec<RowSpec>> {
    args.rows
        .iter()
        .map(|r| {
            let (base, overlap) = match r.strip_suffix("+overlap") {
                Some(b) => (b, true),
                None => (r.as_str(), false),
            };
            let (cache, selector) = match base {
                "naive" => (CacheArg::Policy(PolicySpec::None), Selector::All),
                "hybrid" => (CacheArg::Hybrid, Selector::All),
                "all" => (CacheArg::Policy(PolicySpec::All), Selector::All),
                "window" => (CacheArg::Policy(PolicySpec::Window(args.window)), Selector::All),
                "predictor" => (CacheArg::Policy(PolicySpec::None), Selector::Predictor),
                "predictor+window" => (CacheArg::Policy(PolicySpec::Window(args.window)), Selector::Predictor),
                "oracle" => (CacheArg::Policy(PolicySpec::None), Selector::Oracle),
                "oracle+window" => (CacheArg::Policy(PolicySpec::Window(args.window)), Selector::Oracle),
                "oracle+hybrid" => (CacheArg::Hybrid, Selector::Oracle),
                other => anyhow::bail!(
                    "unknown bench row `{other}` (naive, hybrid, all, window, predictor, predictor+window, oracle, \
                     oracle+window, oracle+hybrid)"
                ),
            };
            let unbudgeted = base == "all";
            Ok(RowSpec {
                name: format!("{r}{suffix}"),
                layout: layout.to_path_buf(),
                cache,
                selector,
                overlap,
                unbudgeted,
            })
        })
        .collect()
}

fn run_flash(args: &Args) -> anyhow::Result<()> {
    let layout = args.flash.layout.clone().expect("flash mode has a layout");
    let mut rows = flash_rows(args, &layout, "")?;
    if let Some(split) = &args.split_layout {
        rows.extend(flash_rows(args, split, " (split)")?);
    }
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let tokens = spike_flash::layout::Layout::open(&layout)?.tokenizer()?.encode(&text)?;
    // The tokenizer is gone; give its heap back before the rows load their models.
    spike_flash::io::trim_heap();
    let prompts = super::flash_bench::prompts_from(&tokens, args.prompts, args.prompt, &args.text)?;
    let bench = FlashBench {
        flash: &args.flash,
        rows,
        prompts,
        gen: args.gen,
        csv: args.csv.clone().unwrap_or_else(|| PathBuf::from("results/bench/flash.csv")),
    };
    eprintln!(
        "flash bench: {} rows x {} prompts of {} tokens, {} decoded each; backend {}, budget {}",
        bench.rows.len(),
        args.prompts,
        args.prompt,
        args.gen,
        args.flash.backend,
        args.flash.budget.map_or("none".to_string(), |b| b.to_string())
    );
    super::flash_bench::run(&bench)?;
    Ok(())
}
