//! `spike generate`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use experiments::record::TokenRecord;
use spike_flash::engine::input::ActPrecision;
use spike_flash::engine::sampler::{Sampler, SamplerConfig};

/// Arguments of `spike generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a GGUF file or a Hugging Face checkpoint directory; default: the fetched default model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The prompt.
    #[arg(short, long, required_unless_present = "file", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file (llama.cpp's `-f`).
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Number of tokens to generate.
    #[arg(short, long, default_value_t = 32)]
    n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Keep the k most likely tokens when sampling (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Output: the text as it is generated, or one JSON object at the end.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    flash: super::flash::FlashArgs,
    /// Write one CSV row per step (the prompt, then each generated token) with its I/O, memory
    /// management and compute times, bytes, cache hit rate and the cost model's prediction.
    #[arg(long, help_heading = super::flash::HEADING)]
    trace_out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    model: String,
    prompt: &'a str,
    prompt_tokens: &'a [u32],
    generated_tokens: &'a [u32],
    text: &'a str,
    prompt_ms: f64,
    decode_ms: f64,
    prompt_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    threads: usize,
}

pub fn run(args: Args, precision: ActPrecision) -> anyhow::Result<()> {
    let sampler_cfg = SamplerConfig { temperature: args.temp, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    let mut sampler = Sampler::new(sampler_cfg)?;
    let mut dram_total = 0;
    let (loaded, mut flash) = match &args.flash.layout {
        None => {
            anyhow::ensure!(args.trace_out.is_none(), "--trace-out needs flash mode (--layout)");
            args.flash.check_unused(&[])?;
            (super::load_model(args.model.as_deref(), precision)?, None)
        }
        Some(dir) => {
            anyhow::ensure!(args.model.is_none(), "give either --model or --layout, not both");
            let (mut session, ffn, dram) = args.flash.open(dir, precision, true)?;
            eprintln!(
                "flash mode: {} ({} backend, cache {}); {dram}",
                dir.display(),
                args.flash.backend,
                args.flash.cache
            );
            dram_total = dram.total;
            (
                super::Loaded {
                    path: dir.clone(),
                    tokenizer: session.tokenizer.take().expect("a session opened with its tokenizer has it"),
                    model: session.model,
                },
                Some(ffn),
            )
        }
    };
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let prompt_text = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading -f {}", f.display()))?,
        (None, None) => anyhow::bail!("give the prompt with -p TEXT or -f FILE"),
    };
    let prompt = tok.encode(&prompt_text)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    let mut state = model
        .try_new_state(prompt.len().saturating_add(args.n))
        .with_context(|| format!("the prompt's {} tokens and -n {}", prompt.len(), args.n))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut records = Vec::new();
    let mut step = |state: &mut spike_flash::engine::model::State, tokens: &[u32]| -> anyhow::Result<Vec<f32>> {
        let Some(ffn) = flash.as_mut() else { return Ok(model.forward(state, tokens, false)?) };
        let (a, t) = (ffn.snapshot(), Instant::now());
        let logits = model.forward_with(state, tokens, tokens.len() - 1, ffn)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let mut rec = TokenRecord::between(records.len(), tokens.len(), ms, &a, &ffn.snapshot(), dram_total);
        rec.label = if records.is_empty() { "prompt" } else { "decode" }.to_string();
        records.push(rec);
        Ok(logits)
    };

    let t0 = Instant::now();
    let mut logits = step(&mut state, &prompt)?;
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut generated: Vec<u32> = Vec::with_capacity(args.n);
    let mut printed = 0usize;
    for i in 0..args.n {
        let next = sampler.sample(&logits);
        if !args.ignore_eos && Some(next) == tok.eos() {
            break;
        }
        generated.push(next);
        if args.format == Format::Text {
            // Decode the whole continuation and print what is new, so multi-token characters come out whole.
            let text = tok.decode(&generated)?;
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{FFFD}') {
                out.write_all(&text.as_bytes()[printed..])?;
                out.flush()?;
                printed = text.len();
            }
        }
        if i + 1 < args.n {
            logits = step(&mut state, &[next])?;
        }
    }
    let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = &args.trace_out {
        super::write_csv(path, &records)?;
        eprintln!("wrote {} step records to {}", records.len(), path.display());
    }
    let text = tok.decode(&generated)?;
    // Decode speed counts the forward passes made after the prompt: one per generated token but the last.
    let decode_steps = generated.len().saturating_sub(1).max(1);
    let report = Report {
        model: loaded.path.display().to_string(),
        prompt: &prompt_text,
        prompt_tokens: &prompt,
        generated_tokens: &generated,
        text: &text,
        prompt_ms,
        decode_ms,
        prompt_tokens_per_s: prompt.len() as f64 / (prompt_ms / 1e3),
        decode_tokens_per_s: decode_steps as f64 / (decode_ms / 1e3),
        threads: spike_flash::engine::threads(),
    };
    match args.format {
        Format::Text => {
            if printed < text.len() {
                out.write_all(text.as_bytes().get(printed..).unwrap_or_default())?;
            }
            writeln!(out)?;
            out.flush()?;
            eprintln!(
                "prompt: {} tokens in {:.1} ms ({:.1} tok/s); decode: {} tokens in {:.1} ms ({:.1} tok/s); {} threads",
                prompt.len(),
                prompt_ms,
                report.prompt_tokens_per_s,
                generated.len(),
                decode_ms,
                report.decode_tokens_per_s,
                report.threads
            );
        }
        Format::Json => {
            serde_json::to_writer(&mut out, &report)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
