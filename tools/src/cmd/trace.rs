//! `spike trace`: a dense run over a corpus, recorded per layer and token (`docs/trace-format.md`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use predictor::corpus::{documents, DocSplit};
use predictor::trace::{record, ModelIdentity, RecordConfig, TraceWriter};

/// Arguments of `spike trace`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a GGUF file or a Hugging Face checkpoint directory; default: the fetched default model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Corpus text file(s), read in order (scripts/corpus.sh builds the default training corpus).
    #[arg(short, long, required = true)]
    file: Vec<PathBuf>,
    /// Tokens to record (the last document is cut short to fit).
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
    /// Output trace file.
    #[arg(short, long)]
    out: PathBuf,
    /// Longest sequence evaluated at once; longer documents are cut into segments, each from an empty cache.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Where documents end: sections (two or more blank lines), paragraphs (any blank line) or file.
    #[arg(long, default_value = "sections")]
    split: DocSplit,
}

pub fn run(args: Args, precision: spike_flash::engine::input::ActPrecision) -> anyhow::Result<()> {
    anyhow::ensure!(args.tokens > 0, "--tokens must be at least 1");
    anyhow::ensure!(args.ctx > 0, "--ctx must be at least 1");
    let t0 = Instant::now();
    let loaded = super::load_model(args.model.as_deref(), precision)?;
    let identity = ModelIdentity::of(&loaded.path, loaded.model.config())
        .with_context(|| format!("hashing model {}", loaded.path.display()))?;
    let mut docs = Vec::new();
    for f in &args.file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for d in documents(&text, args.split) {
            docs.push(loaded.tokenizer.encode(&d).with_context(|| format!("tokenizing {}", f.display()))?);
        }
    }
    let available: usize = docs.iter().map(Vec::len).sum();
    anyhow::ensure!(
        available >= args.tokens,
        "the corpus has {available} tokens in {} documents, fewer than the {} asked for",
        docs.len(),
        args.tokens
    );
    let cfg = loaded.model.config();
    eprintln!(
        "tracing {} tokens of {} ({} documents, {available} tokens available) through {} ({} layers, d_model {}, \
         d_ffn {}, {}), segments of at most {} tokens, {} threads",
        args.tokens,
        args.file.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
        docs.len(),
        loaded.path.display(),
        cfg.n_layers,
        cfg.d_model,
        cfg.d_ffn,
        cfg.activation.hf_name(),
        args.ctx,
        spike_flash::engine::threads()
    );
    super::ensure_parent(&args.out)?;
    let label = format!(
        "model {}; corpus {}",
        loaded.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        args.file.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" ")
    );
    let mut writer = TraceWriter::create(&args.out, identity, args.ctx, &label)
        .with_context(|| format!("starting trace {}", args.out.display()))?;
    let bar = ProgressBar::new(args.tokens as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {elapsed} elapsed, eta {eta}")
            .expect("the template is valid"),
    );
    let cfg_rec = RecordConfig { ctx: args.ctx, max_tokens: args.tokens };
    record(&loaded.model, docs, cfg_rec, &mut writer, &mut |n| bar.set_position(n as u64))
        .with_context(|| format!("tracing into {}", args.out.display()))?;
    bar.finish_and_clear();
    let run_secs = t0.elapsed().as_secs_f64();
    let s = writer.finish().with_context(|| format!("writing {}", args.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "wrote trace {}: {} tokens in {} segments of {} documents, {} layers, {:.1} MB, in {secs:.1} s ({:.1} s \
         loading and running the model, {:.1} s assembling and syncing the file)",
        s.path.display(),
        s.n_tokens,
        s.n_segments,
        s.n_docs,
        cfg.n_layers,
        s.bytes as f64 / 1e6,
        run_secs,
        secs - run_secs
    );
    if s.saturated > 0 {
        println!("  {} values beyond the f16 range were stored saturated", s.saturated);
    }
    Ok(())
}
