//! `spike convert`: a model file into a flash layout directory (`docs/format.md`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use spike_flash::engine::model::Model;
use spike_flash::layout::{self, ConvertOptions, LayoutKind, RecordDType};
use spike_flash::model::bind::Source;
use spike_flash::model::fetch::resolve_model;

/// Arguments of `spike convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (GGUF) or checkpoint directory; default: the cached default model.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Output layout directory, conventionally NAME.spike.
    #[arg(short, long)]
    out: PathBuf,
    /// bundled (one record per neuron) or split (one section per matrix).
    #[arg(long, default_value = "bundled", value_parser = parse_kind)]
    layout: LayoutKind,
    /// Element type of the rows (gate, up, fc1): source (copied byte for byte), f32, f16, q8_0 or q4_1.
    #[arg(long, default_value = "source", value_parser = parse_dtype)]
    dtype: RecordDType,
    /// Element type of the columns (down, fc2): source (the source's type, re-quantized along the other axis),
    /// f32, f16, q8_0 or q4_1. Default: q8_0 when --dtype is source and the source is 4-bit (Q4_0, Q4_1),
    /// otherwise the rows' type.
    #[arg(long, value_parser = parse_dtype)]
    column_dtype: Option<RecordDType>,
    /// Alignment of sections (a power of two >= 512).
    #[arg(long, default_value_t = 4096)]
    align: u64,
    /// Give each record its own aligned span instead of packing records tight.
    #[arg(long)]
    pad_records: bool,
    /// Replace an existing output directory (only once the new one is complete).
    #[arg(long)]
    force: bool,
    /// Store neurons in this order: a JSON file holding, per layer, a permutation of the neuron ids (position k
    /// holds the k-th id), as an array of arrays or under the key "order" (e.g. hot neurons first, from
    /// `spike trace-stats`). Stored in the manifest; readers map neuron ids to positions.
    #[arg(long)]
    order: Option<PathBuf>,
    /// Another layout of the same model (e.g. the bundled one when this is the split one): its resident.bin is
    /// hard-linked instead of written again when it holds exactly the same bytes (compared in full).
    #[arg(long)]
    share_resident: Option<PathBuf>,
}

fn parse_kind(s: &str) -> Result<LayoutKind, String> {
    match s {
        "bundled" => Ok(LayoutKind::Bundled),
        "split" => Ok(LayoutKind::Split),
        _ => Err(format!("`{s}` is not bundled or split")),
    }
}

fn parse_dtype(s: &str) -> Result<RecordDType, String> {
    Ok(match s {
        "source" => RecordDType::Source,
        "f32" => RecordDType::F32,
        "f16" => RecordDType::F16,
        "q8_0" => RecordDType::Q8_0,
        "q4_1" => RecordDType::Q4_1,
        _ => return Err(format!("`{s}` is not source, f32, f16, q8_0 or q4_1")),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    // No tokenizer needed: the layout copies the source's metadata as it is.
    let path = resolve_model(args.model.as_deref())?;
    let source = Source::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    let model = Model::from_source(&source).with_context(|| format!("loading model {}", path.display()))?;
    let order = args.order.as_deref().map(spike_flash::layout::read_neuron_lists).transpose()?;
    let opts = ConvertOptions {
        order,
        kind: args.layout,
        dtype: args.dtype,
        column_dtype: args.column_dtype,
        align: args.align,
        pack: if args.pad_records { args.align } else { 1 },
        force: args.force,
        share_resident: args.share_resident.clone(),
        ..Default::default()
    };
    if let Some(other) = &args.share_resident {
        let r = other.join(spike_flash::layout::RESIDENT_FILE);
        anyhow::ensure!(r.is_file(), "--share-resident {}: no {} there", other.display(), r.display());
    }
    let s = match layout::write(&model, &path, &args.out, &opts) {
        Err(spike_flash::Error::OutputExists { path: out }) => {
            anyhow::bail!("{}: already exists; pass --force to replace it", out.display())
        }
        r => r.with_context(|| format!("converting {} into {}", path.display(), args.out.display()))?,
    };
    let secs = start.elapsed().as_secs_f64();
    for r in &s.removed_stale {
        println!("{r}");
    }
    println!("converted {} into {} in {secs:.2} s", path.display(), s.out_dir.display());
    println!("  layout {:?}, rows {}, columns {}, align {}, pack {}", s.kind, s.dtype, s.column_dtype, s.align, s.pack);
    let records: Vec<String> =
        s.sections.iter().map(|r| format!("{} {} B (stride {} B)", r.name, r.record_bytes, r.record_stride)).collect();
    println!(
        "  neuron {} B; records: {}; read amplification of one isolated neuron {:.2}x",
        s.neuron_bytes,
        records.join(", "),
        s.read_amplification
    );
    println!("  ffn.bin {} B, resident.bin {} B, manifest.json {} B", s.ffn_bytes, s.resident_bytes, s.manifest_bytes);
    if let Some(other) = &args.share_resident {
        if s.resident_shared {
            println!("  resident.bin is a hard link to {}'s (the same bytes)", other.display());
        } else {
            println!("  resident.bin written: {}'s holds other bytes", other.display());
        }
    }
    println!(
        "  max abs error of re-encoded FFN values: rows {:e}, columns {:e}",
        s.max_abs_error_rows, s.max_abs_error_columns
    );
    Ok(())
}
