//! `spike bench`: prompt processing (a batch of `--prompt` tokens from an empty cache) and decode (`--gen`
//! tokens one at a time) speed, as llama-bench measures pp and tg; the median of `--reps` repeats.

use std::path::PathBuf;

use anyhow::Context;
use experiments::dense_bench::{self, DenseBench};
use experiments::table3::{self, FlashBench, RowSpec};
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::engine::input::ActPrecision;

/// Arguments of `spike bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a GGUF file or a Hugging Face checkpoint directory; default: the fetched default model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Prompt tokens processed as one batch (llama-bench's `-p`).
    #[arg(short, long, default_value_t = 128)]
    prompt: usize,
    /// Tokens decoded one at a time (llama-bench's `-n`).
    #[arg(short = 'n', long, default_value_t = 128)]
    gen: usize,
    /// Repeats; the median is reported (llama-bench's `-r`).
    #[arg(short, long, default_value_t = 5)]
    reps: usize,
    /// CSV file for the per-repeat rows (flash mode: the per-token rows, and the table beside it as
    /// NAME.summary.csv; required there). Without it a dense bench writes no file.
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(flatten)]
    flash: super::flash::FlashArgs,
    /// Flash mode: the rows of the table, comma-separated, from naive (every neuron read every token), naive-all
    /// (naive, and every tensor of resident.bin read again every token too: every weight, as the paper's naive
    /// row; computed from the copy loaded at start, which holds the same bytes), hybrid
    /// (the hottest neurons the budget holds stay resident, the rest is read every token), all (everything
    /// resident, outside --budget: the upper bound), window (window of --window tokens), predictor,
    /// predictor+window (the neurons --predictor picks), oracle, oracle+window, oracle+hybrid (the truly active
    /// neurons, from --oracle: what a perfect predictor would read; the oracle itself runs outside the budget);
    /// any row with `+overlap` appended reads the next layer while this one computes; with --split-layout,
    /// the rows of --split-rows again on the split layout. Rows take turns, one prompt per round.
    #[arg(long, default_value = "naive,hybrid,predictor,predictor+window", value_delimiter = ',', help_heading = super::flash::HEADING)]
    rows: Vec<String>,
    /// Flash mode: window length of the window rows.
    #[arg(long, default_value_t = 5, help_heading = super::flash::HEADING)]
    window: u32,
    /// Flash mode: a split layout of the same model, to isolate what bundling buys.
    #[arg(long, help_heading = super::flash::HEADING)]
    split_layout: Option<PathBuf>,
    /// Flash mode: the rows run again on --split-layout (default: every row of --rows).
    #[arg(long, value_delimiter = ',', requires = "split_layout", help_heading = super::flash::HEADING)]
    split_rows: Option<Vec<String>>,
    /// Flash mode: text whose tokens make the prompts.
    #[arg(long, default_value = "/usr/share/common-licenses/GPL-3", help_heading = super::flash::HEADING)]
    text: PathBuf,
    /// Dense mode: also measure the memory read bandwidth in every repeat (reading a 1 GiB buffer with the
    /// compute threads, after decode) and print the decode bound it sets: bandwidth over the weight bytes one
    /// decode step reads, beside the measured decode speed.
    #[arg(long)]
    memory_bound: bool,
    /// Flash mode: number of prompts (each --prompt tokens, then --gen decoded tokens).
    #[arg(long, default_value_t = 2, help_heading = super::flash::HEADING)]
    prompts: usize,
}

pub fn run(args: Args, precision: ActPrecision) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0 && args.prompt > 0 && args.gen > 0, "--reps, --prompt and --gen must be positive");
    if let Some(layout) = &args.flash.layout {
        return run_flash(&args, layout, precision);
    }
    args.flash.check_unused(&[])?;
    let loaded = super::load_model(args.model.as_deref(), precision)?;
    let b = DenseBench { prompt: args.prompt, gen: args.gen, reps: args.reps, memory: args.memory_bound };
    let bar = ProgressBar::new(((2 + usize::from(b.memory)) * args.reps) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} runs {msg}").expect("the template is valid"));
    let rows = dense_bench::run(&loaded.model, &loaded.path, &b, &mut || bar.inc(1))
        .with_context(|| format!("--prompt {} and --gen {}", args.prompt, args.gen))?;
    bar.finish_and_clear();
    let first = rows.first().expect("a bench with repeats has rows");
    println!(
        "model: {}  threads: {}  isa: {}  activations: {}  repeats: {}",
        loaded.path.display(),
        first.threads,
        first.isa,
        first.act_precision,
        args.reps
    );
    println!("{:<6} {:>8} {:>12} {:>12} {:>12}", "test", "tokens", "median t/s", "min t/s", "max t/s");
    for (test, tokens) in [("pp", args.prompt), ("tg", args.gen)] {
        let (median, lo, hi) = dense_bench::spread(&rows, test);
        println!("{:<6} {:>8} {:>12.1} {:>12.1} {:>12.1}", format!("{test}{tokens}"), tokens, median, lo, hi);
    }
    if b.memory {
        let (bw, lo, hi) = dense_bench::spread_of(rows.iter().filter_map(|r| r.gb_per_s).collect());
        let bytes = loaded.model.parts().decode_bytes() as f64;
        let bound = bw * 1e9 / bytes;
        let (tg, _, _) = dense_bench::spread(&rows, "tg");
        println!(
            "memory read: {bw:.2} GB/s median (min {lo:.2}, max {hi:.2}; {} GiB buffer, {} threads, after each decode)",
            dense_bench::MEMORY_TEST_BYTES >> 30,
            first.threads
        );
        println!(
            "decode bound: {:.3} GB of weights per token / {bw:.2} GB/s = {bound:.2} tok/s; tg{} median {tg:.2} tok/s \
             = {:.0}% of the bound",
            bytes / 1e9,
            args.gen,
            100.0 * tg / bound
        );
    }
    match &args.csv {
        Some(csv) => {
            super::write_csv(csv, &rows)?;
            println!("rows written to {}", csv.display());
        }
        None => println!("rows not written (give --csv FILE to keep them)"),
    }
    Ok(())
}

/// The rows `names` for one layout.
fn flash_rows(args: &Args, names: &[String], layout: &std::path::Path, suffix: &str) -> anyhow::Result<Vec<RowSpec>> {
    Ok(names.iter().map(|r| RowSpec::parse(r, layout, args.window, suffix)).collect::<Result<_, _>>()?)
}

fn run_flash(args: &Args, layout: &std::path::Path, precision: ActPrecision) -> anyhow::Result<()> {
    anyhow::ensure!(!args.memory_bound, "--memory-bound measures the dense engine: it does not apply with --layout");
    let mut rows = flash_rows(args, &args.rows, layout, "")?;
    if let Some(split) = &args.split_layout {
        let names = args.split_rows.as_deref().unwrap_or(&args.rows);
        anyhow::ensure!(!names.is_empty(), "--split-rows names no row");
        rows.extend(flash_rows(args, names, split, " (split)")?);
    }
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let tokens = spike_flash::layout::Layout::open(layout)?.tokenizer()?.encode(&text)?;
    // The tokenizer is gone; give its heap back before the rows load their models.
    spike_flash::io::trim_heap();
    let prompts = table3::prompts_from(&tokens, args.prompts, args.prompt, &args.text)?;
    let bench = FlashBench {
        flash: args.flash.config(layout, precision)?,
        predictor: args.flash.predictor.clone(),
        oracle: args.flash.oracle.clone(),
        rows,
        prompts,
        gen: args.gen,
        csv: args.csv.clone().context("flash mode writes its per-token rows: give --csv FILE")?,
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
    table3::run(&bench)?;
    let summary = bench.csv.with_extension("summary.csv");
    match experiments::latency::plot(&summary) {
        Ok(png) => eprintln!("chart: {} (and .svg)", png.display()),
        Err(e) => eprintln!("note: no latency chart drawn from {}: {e}", summary.display()),
    }
    Ok(())
}
