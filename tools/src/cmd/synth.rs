//! `spike synth`: writes a random-weight Hugging Face checkpoint (OPT or Llama) of any shape, paper scale
//! included, tensor by tensor with a progress bar. The weights are random: anything measured on them is a
//! simulation of the real model's shapes, not of its behaviour.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::model::config::Arch;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{write_hf_checkpoint_with_progress, SynthSpec};

/// Model family of the synthetic checkpoint.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ArchArg {
    /// OPT: LayerNorm, learned positions, ReLU FFN with biases (the paper's model family).
    Opt,
    /// Llama: RMSNorm, rotary positions, gated FFN.
    Llama,
}

/// Element type of every tensor.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

/// Arguments of `spike synth`. Paper scale (OPT 6.7B, 13 GB in f16):
/// `--arch opt --layers 32 --d-model 4096 --ffn 16384 --heads 32 --vocab 50272 --dtype f16`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model family.
    #[arg(long, value_enum)]
    arch: ArchArg,
    /// Number of decoder layers.
    #[arg(long)]
    layers: usize,
    /// Hidden size (d_model).
    #[arg(long)]
    d_model: usize,
    /// FFN width: OPT's ffn_dim, Llama's intermediate_size.
    #[arg(long)]
    ffn: usize,
    /// Attention heads.
    #[arg(long)]
    heads: usize,
    /// Key/value heads (Llama only; default: as many as --heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Vocabulary size.
    #[arg(long)]
    vocab: usize,
    /// max_position_embeddings.
    #[arg(long, default_value_t = 2048)]
    max_positions: usize,
    /// Element type of the tensors.
    #[arg(long, value_enum, default_value = "f16")]
    dtype: DTypeArg,
    /// Seed of the random weights; the same seed and shapes give the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Llama only: ReLU instead of SiLU in the FFN gate (OPT always uses ReLU).
    #[arg(long)]
    relu: bool,
    /// Write a separate lm_head.weight instead of tying it to the token embedding.
    #[arg(long)]
    untied: bool,
    /// Split the weights over this many safetensors files, with model.safetensors.index.json.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Output directory (created if needed).
    #[arg(short, long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let arch = match args.arch {
        ArchArg::Opt => Arch::Opt,
        ArchArg::Llama => Arch::Llama,
    };
    anyhow::ensure!(!(args.relu && matches!(arch, Arch::Opt)), "--relu is for Llama; OPT always uses ReLU");
    let spec = SynthSpec {
        arch,
        n_layers: args.layers,
        d_model: args.d_model,
        d_ffn: args.ffn,
        n_heads: args.heads,
        n_kv_heads: args.kv_heads.unwrap_or(args.heads),
        vocab: args.vocab,
        max_positions: args.max_positions,
        word_embed_proj_dim: None,
        post_norm: false,
        rope_base: 10_000.0,
        norm_eps: 1e-5,
        dtype: match args.dtype {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        },
        seed: args.seed,
        relu: matches!(arch, Arch::Opt) || args.relu,
        untied: args.untied,
        shards: args.shards,
    };
    let total = spec.tensor_bytes().context("checking the shapes")?;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
            .context("progress bar template")?,
    );
    let start = Instant::now();
    let removed = write_hf_checkpoint_with_progress(&spec, &args.out, &mut |p| {
        bar.set_position(p.bytes_done);
        bar.set_message(p.tensor.to_string());
    })
    .with_context(|| format!("writing the synthetic checkpoint to {}", args.out.display()))?;
    bar.finish_and_clear();
    for r in &removed {
        println!("{r}");
    }
    let secs = start.elapsed().as_secs_f64();
    let family = match arch {
        Arch::Opt => "OPT",
        Arch::Llama => "Llama",
    };
    println!(
        "wrote a synthetic {family} checkpoint (random weights, seed {}) to {}: {:.2} GB of {} tensors in {secs:.1} s ({:.0} MB/s)",
        spec.seed,
        args.out.display(),
        total as f64 / 1e9,
        spec.dtype,
        total as f64 / 1e6 / secs.max(1e-9),
    );
    Ok(())
}
