//! `spike perplexity`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::engine::eval::perplexity;
use spike_flash::engine::model::{DenseFfn, FfnStep};

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
    #[command(flatten)]
    flash: super::flash::FlashArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let (loaded, mut ffn): (super::Loaded, Box<dyn FfnStep>) = match &args.flash.layout {
        None => (super::load_model(args.model.as_deref())?, Box::new(DenseFfn::default())),
        Some(dir) => {
            anyhow::ensure!(args.model.is_none(), "give either --model or --layout, not both");
            let fm = super::flash::FlashModel::open(dir)?;
            let (ffn, dram) = fm.ffn(&args.flash, None)?;
            eprintln!(
                "flash mode: {} ({} backend, cache {}); {dram}",
                dir.display(),
                args.flash.backend,
                args.flash.cache
            );
            (super::Loaded { path: dir.clone(), model: fm.model, tokenizer: fm.tokenizer }, Box::new(ffn))
        }
    };
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
    let t0 = Instant::now();
    let result = perplexity(&loaded.model, &tokens, args.ctx, &mut *ffn, &mut |_, _, ppl| {
        bar.inc(1);
        bar.set_message(format!("ppl {ppl:.4}"));
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
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
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "model": loaded.path.display().to_string(),
            "file": args.file.display().to_string(),
            "result": result,
            "seconds": secs,
        });
        let text = serde_json::to_string_pretty(&v)?;
        super::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
