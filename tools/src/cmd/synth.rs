//! `spike synth`: writes a random-weight Hugging Face checkpoint (OPT or Llama) of any shape, paper scale
//! included, tensor by tensor with a progress bar. The weights are random: anything measured on them is a
//! simulation of the real model's shapes, not of its behaviour. With `--planted PLAN` (OPT only) the weights
//! are constructed by a planting plan (`spike_flash::model::planted`) so that the ReLU activations have the
//! paper's statistics: still a simulation, labelled `planted`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::model::config::{Activation, Arch};
use spike_flash::model::planted::PlanFile;
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

/// Named shapes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Preset {
    /// 4 layers, d_model 128, FFN 1024, 4 heads, vocab 512, 1024 positions, f32 (tests and CI).
    Tiny,
    /// OPT 1.3B: 24 layers, d_model 2048, FFN 8192, 32 heads, vocab 50272, f16, tied embeddings (2.6 GB).
    #[value(name = "opt-1.3b")]
    Opt1_3b,
    /// OPT 6.7B: 32 layers, d_model 4096, FFN 16384, 32 heads, vocab 50272, f16, tied embeddings (13.4 GB).
    #[value(name = "opt-6.7b")]
    Opt6_7b,
}

/// Element type of every tensor.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

/// Arguments of `spike synth`. Paper scale (OPT 6.7B, 13 GB in f16): `--arch opt --preset opt-6.7b`, or
/// `--arch opt --layers 32 --d-model 4096 --ffn 16384 --heads 32 --vocab 50272 --dtype f16`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model family.
    #[arg(long, value_enum)]
    arch: ArchArg,
    /// Named shapes (OPT only); the shape flags, --dtype and --max-positions are then not taken.
    #[arg(long, value_enum, conflicts_with_all = ["layers", "d_model", "ffn", "heads", "kv_heads", "vocab", "max_positions", "dtype"])]
    preset: Option<Preset>,
    /// OPT only: construct the weights by this planting plan (experiments/plans/opt-planted-v*.toml) so the
    /// ReLU activations on text have the paper's statistics; the checkpoint records the plan.
    #[arg(long)]
    planted: Option<PathBuf>,
    /// Number of decoder layers.
    #[arg(long, required_unless_present = "preset")]
    layers: Option<usize>,
    /// Hidden size (d_model).
    #[arg(long, required_unless_present = "preset")]
    d_model: Option<usize>,
    /// FFN width: OPT's ffn_dim, Llama's intermediate_size.
    #[arg(long, required_unless_present = "preset")]
    ffn: Option<usize>,
    /// Attention heads.
    #[arg(long, required_unless_present = "preset")]
    heads: Option<usize>,
    /// Key/value heads (Llama only; default: as many as --heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Vocabulary size.
    #[arg(long, required_unless_present = "preset")]
    vocab: Option<usize>,
    /// max_position_embeddings (default 2048).
    #[arg(long)]
    max_positions: Option<usize>,
    /// Element type of the tensors (default f16).
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
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
    anyhow::ensure!(
        matches!(arch, Arch::Opt) || (args.preset.is_none() && args.planted.is_none()),
        "--preset and --planted are for --arch opt"
    );
    let plan = match &args.planted {
        Some(p) => Some(PlanFile::load(p).with_context(|| format!("reading the planting plan {}", p.display()))?),
        None => None,
    };
    let spec = match args.preset {
        Some(preset) => {
            let base = match preset {
                Preset::Tiny => SynthSpec::opt_tiny_preset(args.seed),
                Preset::Opt1_3b => SynthSpec::opt_1_3b(args.seed, DType::F16),
                Preset::Opt6_7b => SynthSpec::opt_6_7b(args.seed, DType::F16),
            };
            let base = base.with_model(|m| m.tied_embeddings = !args.untied);
            SynthSpec { planted: plan.clone(), shards: args.shards, ..base }
        }
        None => {
            let need = |v: Option<usize>, flag: &str| v.with_context(|| format!("{flag} is needed without --preset"));
            let heads = need(args.heads, "--heads")?;
            let layers = need(args.layers, "--layers")?;
            let d_model = need(args.d_model, "--d-model")?;
            let ffn = need(args.ffn, "--ffn")?;
            let vocab = need(args.vocab, "--vocab")?;
            // The family's tiny spec gives the rest: norm epsilon 1e-5, rope base 10000, pre-norm, no
            // embedding projection.
            let family = match arch {
                Arch::Opt => SynthSpec::tiny_opt(args.seed),
                Arch::Llama => SynthSpec::tiny_llama(args.seed),
            };
            let base = family.with_model(|m| {
                m.n_layers = layers;
                m.d_model = d_model;
                m.d_ffn = ffn;
                m.n_heads = heads;
                m.n_kv_heads = args.kv_heads.unwrap_or(heads);
                m.vocab_size = vocab;
                m.max_positions = args.max_positions.unwrap_or(2048);
                if args.relu {
                    m.activation = Activation::Relu;
                }
                m.tied_embeddings = !args.untied;
            });
            let dtype = match args.dtype.unwrap_or(DTypeArg::F16) {
                DTypeArg::F32 => DType::F32,
                DTypeArg::F16 => DType::F16,
                DTypeArg::Bf16 => DType::BF16,
            };
            SynthSpec { dtype, shards: args.shards, planted: plan.clone(), ..base }
        }
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
    let kind = match &plan {
        Some(p) => format!("planted {family} checkpoint (plan {}, seed {})", p.plan.name, spec.seed),
        None => format!("synthetic {family} checkpoint (random weights, seed {})", spec.seed),
    };
    println!(
        "wrote a {kind} to {}: {:.2} GB of {} tensors in {secs:.1} s ({:.0} MB/s)",
        args.out.display(),
        total as f64 / 1e9,
        spec.dtype,
        total as f64 / 1e6 / secs.max(1e-9),
    );
    Ok(())
}
