//! Converting a model into a flash layout directory (`docs/format.md`), atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{
    checksum_table_len, layout_id_bytes, record_bytes, round_up, seal_manifest, section_record_bytes, ChecksumsInfo,
    FfnHeader, FfnInfo, LayerInfo, LayoutKind, Manifest, ResidentInfo, Section, SourceInfo, FFN_FILE, FORMAT,
    MANIFEST_FILE, MIN_ALIGN, PARTIAL_MARK, RESIDENT_FILE, VERSION,
};
use crate::io::install::{self, OutputLock, Stale};
use crate::io::interrupt;
use crate::model::config::ModelConfig;
use crate::model::fetch::model_sha256;
use crate::model::gguf::{GgufFile, MetaValue};
use crate::model::gguf_write::GgufWriter;
use crate::model::quant::{self, DType};
use crate::model::safetensors::HfCheckpoint;
use crate::model::weights::{FfnWeights, ModelParts, NeuronRows, WeightRef};
use crate::{Error, Result};

/// An element type of the records' rows or columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordDType {
    /// The source's type of the matrix: rows (gate, up, fc1) are copied byte for byte; columns (down, fc2)
    /// are re-quantized along the other axis.
    #[default]
    Source,
    F32,
    F16,
    Q8_0,
    Q4_1,
}

/// What [`write`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    pub kind: LayoutKind,
    /// Element type of the rows (gate, up, fc1).
    pub dtype: RecordDType,
    /// Element type of the columns (down, fc2). `None` picks the default: `Q8_0` when `dtype` is `Source` and
    /// the source's rows are 4-bit (`Q4_0`, `Q4_1`), since 4-bit columns re-quantized along the other axis
    /// cost perplexity; otherwise the rows' type.
    pub column_dtype: Option<RecordDType>,
    /// A power of two, at least 512.
    pub align: u64,
    /// `1` (records packed tight) or `align` (each record its own aligned span).
    pub pack: u64,
    /// Replace an existing output directory (removed only once the new one is complete).
    pub force: bool,
    /// Per layer, the neuron stored at each position (`order[l][k]` is stored at position `k`): a permutation
    /// of `0..d_ffn`, e.g. hot neurons first. `None` keeps the model's order.
    pub order: Option<Vec<Vec<u32>>>,
    /// Another layout of the same model (e.g. the bundled one, when this is the split one): when its
    /// `resident.bin` holds exactly the bytes this one would (compared in full), it is hard-linked instead of
    /// written again, which saves the resident part's bytes on disk (gigabytes at paper scale). Both layouts
    /// then share one file: a tool that edits one in place edits both.
    pub share_resident: Option<PathBuf>,
    /// Testing hook: fail after `ffn.bin` is written and before the manifest, as an interrupted conversion.
    #[doc(hidden)]
    pub fail_before_manifest: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            kind: LayoutKind::Bundled,
            dtype: RecordDType::Source,
            column_dtype: None,
            align: super::DEFAULT_ALIGN,
            pack: 1,
            force: false,
            order: None,
            share_resident: None,
            fail_before_manifest: false,
        }
    }
}

/// The records of one section of a layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SectionRecords {
    pub name: String,
    /// Payload bytes of one record.
    pub record_bytes: u64,
    /// Distance between consecutive records.
    pub record_stride: u64,
}

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub out_dir: PathBuf,
    pub kind: LayoutKind,
    /// Element type of the rows (gate, up, fc1).
    pub dtype: String,
    /// Element type of the columns (down, fc2).
    pub column_dtype: String,
    pub align: u64,
    pub pack: u64,
    /// Payload bytes of one neuron, all parts together (the bundled record).
    pub neuron_bytes: u64,
    /// Payload bytes of one record of a layer's first section (a neuron when bundled, a row when split).
    pub record_bytes: u64,
    pub record_stride: u64,
    /// The records of each section of a layer, in section order (one section when bundled).
    pub sections: Vec<SectionRecords>,
    /// Bytes O_DIRECT reads of one isolated neuron (its record in every section) transfer per payload byte:
    /// each stride rounded up to `align`, over the payload (a packed record straddling an `align` boundary
    /// costs one unit more).
    pub read_amplification: f64,
    pub ffn_bytes: u64,
    pub resident_bytes: u64,
    /// `resident.bin` is a hard link to `ConvertOptions::share_resident`'s (it held the same bytes).
    pub resident_shared: bool,
    pub manifest_bytes: u64,
    /// Largest `|stored - source|` over every row value (gate, up, fc1) not copied byte for byte (0 when all
    /// are exact).
    pub max_abs_error_rows: f32,
    /// Largest `|stored - source|` over every column value (down, fc2).
    pub max_abs_error_columns: f32,
    /// Partial directories of this output left by writers no longer running, removed before writing.
    pub removed_stale: Vec<Stale>,
}

fn layout_err(path: &Path, what: impl Into<String>) -> Error {
    Error::Layout { path: path.to_path_buf(), what: what.into() }
}

/// Whether a tensor name (GGUF or Hugging Face spelling) is one of the streamed FFN matrices.
fn is_streamed(name: &str) -> bool {
    const GGUF: [&str; 3] = [".ffn_gate.weight", ".ffn_up.weight", ".ffn_down.weight"];
    const HF: [&str; 5] =
        [".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.down_proj.weight", ".fc1.weight", ".fc2.weight"];
    (name.starts_with("blk.") && GGUF.iter().any(|s| name.ends_with(s))) || HF.iter().any(|s| name.ends_with(s))
}

/// The opened source file.
enum Src {
    Gguf(GgufFile),
    Hf(HfCheckpoint),
}

/// Metadata key holding a checkpoint's `config.json` in `resident.bin`.
pub const HF_CONFIG_KEY: &str = "spike.hf.config_json";
/// Metadata key holding a checkpoint's `tokenizer.json` in `resident.bin`.
pub const HF_TOKENIZER_KEY: &str = "spike.hf.tokenizer_json";

/// `resident.bin`'s contents: the source's metadata and every tensor but the streamed FFN matrices, with
/// each tensor's crc32c.
fn resident_writer(
    src: &Src,
    cfg: &ModelConfig,
    gated: bool,
    source_path: &Path,
) -> Result<(GgufWriter, BTreeMap<String, u32>)> {
    let mut w = GgufWriter::new();
    let mut tensors = BTreeMap::new();
    let mut streamed = 0usize;
    match src {
        Src::Gguf(gguf) => {
            for (k, v) in gguf.metadata() {
                w.add_meta(k, v.clone());
            }
            for t in gguf.tensors() {
                if is_streamed(&t.name) {
                    streamed += 1;
                    continue;
                }
                let bytes = gguf.tensor_data(&t.name)?;
                tensors.insert(t.name.clone(), crc32c::crc32c(bytes));
                w.add_tensor(t.name.clone(), &t.dims, t.dtype, bytes.to_vec())?;
            }
        }
        Src::Hf(ck) => {
            let arch = if gated { "llama" } else { "opt" };
            w.add_meta("general.architecture", MetaValue::String(arch.into()));
            w.add_meta(HF_CONFIG_KEY, MetaValue::String(ck.raw_config().to_string()));
            if let Some(p) = ck.tokenizer_json() {
                let text = fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                w.add_meta(HF_TOKENIZER_KEY, MetaValue::String(text));
            }
            for name in ck.names() {
                if is_streamed(name) {
                    streamed += 1;
                    continue;
                }
                let t = ck.tensor(name)?;
                let mut dims: Vec<u64> = t.shape.iter().rev().map(|&x| x as u64).collect();
                if dims.is_empty() {
                    dims.push(1);
                }
                tensors.insert(name.to_string(), crc32c::crc32c(t.data));
                w.add_tensor(name, &dims, t.dtype, t.data.to_vec())?;
            }
        }
    }
    let want = cfg.n_layers * if gated { 3 } else { 2 };
    if streamed != want {
        return Err(Error::Invalid(format!(
            "{}: found {streamed} FFN matrices, expected {want}",
            source_path.display()
        )));
    }
    Ok((w, tensors))
}

/// Converts `model`, read from `source_path`, into the layout directory `out_dir` (`NAME.spike`). The
/// directory appears complete or not at all: it is written as `NAME.spike.partial-<pid>` and renamed last.
/// The whole conversion holds `out_dir`'s [`OutputLock`]: a second writer of the same output meanwhile is
/// refused ([`Error::OutputBusy`]), and an existing `out_dir` is refused ([`Error::OutputExists`]) unless
/// `opts.force`. Partial directories of `out_dir` whose writers are no longer running are removed first and
/// listed in [`Summary::removed_stale`].
/// For a Hugging Face checkpoint (a directory), `resident.bin` keeps the tensors under their checkpoint names
/// with `config.json` and `tokenizer.json` as metadata strings.
pub fn write(
    model: &impl AsRef<ModelParts>,
    source_path: &Path,
    out_dir: &Path,
    opts: &ConvertOptions,
) -> Result<Summary> {
    let model = model.as_ref();
    if !opts.align.is_power_of_two() || opts.align < MIN_ALIGN {
        return Err(Error::Invalid(format!("layout alignment {} is not a power of two >= {MIN_ALIGN}", opts.align)));
    }
    if opts.pack != 1 && opts.pack != opts.align {
        return Err(Error::Invalid(format!("record packing {} must be 1 or the alignment {}", opts.pack, opts.align)));
    }
    let src = if source_path.is_dir() {
        Src::Hf(HfCheckpoint::open(source_path)?)
    } else {
        Src::Gguf(GgufFile::open(source_path)?)
    };
    let cfg = &model.cfg;
    let src_cfg = match &src {
        Src::Gguf(g) => ModelConfig::from_gguf(g)?,
        Src::Hf(h) => h.config().clone(),
    };
    if src_cfg != *cfg {
        return Err(Error::Invalid(format!(
            "{}: the model given is not the one in this file (configurations differ)",
            source_path.display()
        )));
    }
    let plan = Plan::new(model, opts)?;

    let name = out_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("output {}: no usable directory name", out_dir.display())))?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    // Held until this function returns: no other writer of `out_dir` can check, write or install meanwhile,
    // so the existence check below stays true until the install, and a partial directory of this output whose
    // process has ended, or is this one, is garbage.
    let _lock = OutputLock::acquire(out_dir)?;
    let removed_stale =
        install::remove_stale(&parent, |n| install::pid_between(n, &format!("{name}{PARTIAL_MARK}"), ""))?;
    if out_dir.exists() && !opts.force {
        return Err(Error::OutputExists { path: out_dir.to_path_buf() });
    }
    let partial = parent.join(format!("{name}{PARTIAL_MARK}{}", std::process::id()));
    // Registered before it exists: an interruption from here on removes it (`io::interrupt`).
    let pending = interrupt::register(&partial, interrupt::Kind::Partial);
    fs::create_dir(&partial).map_err(|e| Error::io(&partial, e))?;
    let written = write_into(&partial, model, &src, source_path, opts, &plan);
    let written = match written {
        Ok(w) => pending.finish(|| install_dir(&partial, out_dir, &parent, opts.force).map(|()| w)),
        Err(e) => Err(e),
    };
    let (manifest_bytes, (resident_bytes, resident_shared), ffn_bytes, errors) = match written {
        Ok(w) => w,
        Err(e) => {
            // Best effort: the partial directory is garbage; the first error is the one to report.
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };

    let isolated: u64 = plan.sections.iter().map(|s| round_up(s.stride, opts.align)).sum();
    let payload: u64 = plan.sections.iter().map(|s| s.record_bytes).sum();
    let names = opts.kind.section_names(plan.gated);
    Ok(Summary {
        out_dir: out_dir.to_path_buf(),
        kind: opts.kind,
        dtype: plan.row.name().to_string(),
        column_dtype: plan.column.name().to_string(),
        align: opts.align,
        pack: opts.pack,
        neuron_bytes: plan.neuron_bytes,
        record_bytes: plan.sections[0].record_bytes,
        record_stride: plan.sections[0].stride,
        sections: names
            .iter()
            .zip(&plan.sections)
            .map(|(n, s)| SectionRecords { name: n.to_string(), record_bytes: s.record_bytes, record_stride: s.stride })
            .collect(),
        read_amplification: isolated as f64 / payload as f64,
        ffn_bytes,
        resident_bytes,
        resident_shared,
        manifest_bytes,
        max_abs_error_rows: errors.rows,
        max_abs_error_columns: errors.columns,
        removed_stale,
    })
}

/// Installs the finished `partial` directory as `out_dir`. Without `force`, a rename that refuses to replace
/// anything: an `out_dir` that appeared meanwhile (a writer that does not take the lock) is kept and this
/// conversion refused. With `force`, an existing `out_dir` is swapped with `partial` in one step, so `out_dir`
/// is always a complete layout, old or new; the old one, now under the partial name, is then removed (or, if
/// this process dies first, by the next writer as a stale partial).
fn install_dir(partial: &Path, out_dir: &Path, parent: &Path, force: bool) -> Result<()> {
    let exists = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists;
    if force && out_dir.exists() {
        match install::rename_exchange(partial, out_dir) {
            Ok(()) => {
                sync_dir(parent)?;
                // Best effort: the new layout is in place; an old one left here is removed as a stale partial
                // by the next writer of this output, once this process has ended.
                let _ = fs::remove_dir_all(partial);
                return Ok(());
            }
            // The file system cannot swap: move the old layout aside first (a crash between the two renames
            // leaves it under `.replaced-PID`, never deleted).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let mut aside = out_dir.as_os_str().to_os_string();
                aside.push(format!(".replaced-{}", std::process::id()));
                let aside = PathBuf::from(aside);
                fs::rename(out_dir, &aside).map_err(|e| Error::io(out_dir, e))?;
                install::rename_noreplace(partial, out_dir).map_err(|e| Error::io(out_dir, e))?;
                sync_dir(parent)?;
                let _ = fs::remove_dir_all(&aside);
                return Ok(());
            }
            // Gone since the check: install as new.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(out_dir, e)),
        }
    }
    match install::rename_noreplace(partial, out_dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if exists(&e) => Err(Error::OutputExists { path: out_dir.to_path_buf() }),
        Err(e) => Err(Error::io(out_dir, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Sizes and types fixed before writing.
struct Plan {
    /// Element type of the rows (gate, up, fc1).
    row: DType,
    /// Element type of the columns (down, fc2).
    column: DType,
    gated: bool,
    /// Payload bytes of a bundled record.
    neuron_bytes: u64,
    /// Per section of a layer, in the order of [`LayoutKind::section_names`].
    sections: Vec<SectionPlan>,
}

/// The records of one section.
struct SectionPlan {
    record_bytes: u64,
    stride: u64,
    /// The section's length: `d_ffn` strides rounded up to `align`.
    len: u64,
}

/// The fixed element type `r` names; `None` for `Source`.
fn fixed_dtype(r: RecordDType) -> Option<DType> {
    match r {
        RecordDType::Source => None,
        RecordDType::F32 => Some(DType::F32),
        RecordDType::F16 => Some(DType::F16),
        RecordDType::Q8_0 => Some(DType::Q8_0),
        RecordDType::Q4_1 => Some(DType::Q4_1),
    }
}

impl Plan {
    fn new(model: &ModelParts, opts: &ConvertOptions) -> Result<Plan> {
        let cfg = &model.cfg;
        let label = model.source.label().to_path_buf();
        if let Some(order) = &opts.order {
            check_order(order, cfg.n_layers, cfg.d_ffn)?;
        }
        let gated = matches!(model.layers[0].ffn, FfnWeights::Gated { .. });
        if model.layers[0].ffn.first().is_none() {
            return Err(Error::Unsupported {
                path: label,
                what: "converting a model whose FFN is already on flash".into(),
            });
        }
        // The source's type of the first (rows) or second (columns) matrices, the same in every layer.
        let source_type = |columns: bool| -> Result<DType> {
            let of = |l: usize| {
                let ffn = &model.layers[l].ffn;
                if columns { ffn.second() } else { ffn.first() }.map(|lin| lin.w.dtype)
            };
            let t = of(0);
            match t {
                Some(t) if (1..cfg.n_layers).all(|l| of(l) == Some(t)) => Ok(t),
                _ => Err(Error::Unsupported {
                    path: label.clone(),
                    what: format!(
                        "`source` {} for FFN matrices of mixed types; pick one type",
                        if columns { "columns" } else { "rows" }
                    ),
                }),
            }
        };
        let row = match fixed_dtype(opts.dtype) {
            Some(t) => t,
            None => source_type(false)?,
        };
        let column = match opts.column_dtype {
            Some(RecordDType::Source) => source_type(true)?,
            Some(r) => fixed_dtype(r).expect("every type but `Source` is fixed"),
            None if opts.dtype == RecordDType::Source && matches!(row, DType::Q4_0 | DType::Q4_1) => DType::Q8_0,
            None => row,
        };
        for (t, what) in [(row, "rows"), (column, "columns")] {
            if super::dtype_by_name(t.name()).is_none() {
                return Err(Error::Unsupported { path: label, what: format!("{t} layout {what}") });
            }
        }
        let d = cfg.d_model;
        let recs = section_record_bytes(opts.kind, row, column, d, gated);
        let neuron = record_bytes(LayoutKind::Bundled, row, column, d, gated);
        let (Some(recs), Some(neuron_bytes)) = (recs, neuron) else {
            return Err(Error::Invalid(format!(
                "d_model {d} is not a whole number of {}-element {row} blocks and {}-element {column} blocks",
                row.block_len(),
                column.block_len()
            )));
        };
        let sections = recs
            .into_iter()
            .map(|record_bytes| {
                let stride = round_up(record_bytes, opts.pack);
                SectionPlan { record_bytes, stride, len: round_up(cfg.d_ffn as u64 * stride, opts.align) }
            })
            .collect();
        Ok(Plan { row, column, gated, neuron_bytes, sections })
    }
}

/// Checks that `order` holds one permutation of `0..d_ffn` per layer.
pub fn check_order(order: &[Vec<u32>], n_layers: usize, d_ffn: usize) -> Result<()> {
    if order.len() != n_layers {
        return Err(Error::Invalid(format!("the neuron order lists {} layers, the model has {n_layers}", order.len())));
    }
    let mut seen = vec![false; d_ffn];
    for (l, o) in order.iter().enumerate() {
        if o.len() != d_ffn {
            return Err(Error::Invalid(format!(
                "layer {l}: the neuron order has {} entries, d_ffn is {d_ffn}",
                o.len()
            )));
        }
        seen.fill(false);
        for &n in o {
            match seen.get_mut(n as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(Error::Invalid(format!(
                        "layer {l}: the neuron order is not a permutation of 0..{d_ffn}"
                    )))
                }
            }
        }
    }
    Ok(())
}

/// Largest `|stored - source|` of the rows and of the columns.
#[derive(Debug, Clone, Copy, Default)]
struct MaxErrors {
    rows: f32,
    columns: f32,
}

/// Writes the three files into `dir`; returns the manifest size, the resident size and whether it is a link to
/// `opts.share_resident`'s, the ffn size and the max abs errors.
fn write_into(
    dir: &Path,
    model: &ModelParts,
    src: &Src,
    source_path: &Path,
    opts: &ConvertOptions,
    plan: &Plan,
) -> Result<(u64, (u64, bool), u64, MaxErrors)> {
    let cfg = &model.cfg;
    let layout_id = format!("{:032x}", rand::random::<u128>());
    let id_bytes = layout_id_bytes(&layout_id).ok_or_else(|| Error::Invalid("layout id".into()))?;

    // resident.bin
    let (w, tensors) = resident_writer(src, cfg, plan.gated, source_path)?;
    let resident = w.to_bytes()?;
    let resident_path = dir.join(RESIDENT_FILE);
    let linked = match &opts.share_resident {
        Some(other) => link_if_same(&other.join(RESIDENT_FILE), &resident, &resident_path)?,
        None => false,
    };
    if !linked {
        write_synced(&resident_path, &resident)?;
    }
    let resident_info = ResidentInfo { len: resident.len() as u64, crc32c: crc32c::crc32c(&resident), tensors };
    drop(resident);

    // ffn.bin: the header (written again at the end, when the checksum table's place and crc are known), the
    // sections, the checksum table.
    let align = opts.align;
    let mut header = FfnHeader {
        version: VERSION,
        align: u32::try_from(align).map_err(|_| Error::Invalid(format!("alignment {align} too large")))?,
        n_layers: cfg.n_layers as u32,
        kind: opts.kind.code(),
        dtype: plan.row.ggml_id(),
        record_bytes: u32::try_from(plan.sections[0].record_bytes)
            .map_err(|_| Error::Invalid(format!("record of {} bytes too large", plan.sections[0].record_bytes)))?,
        record_stride: plan.sections[0].stride,
        layout_id: id_bytes,
        column_dtype: plan.column.ggml_id(),
        table_crc32c: 0,
        table_offset: 0,
        table_len: 0,
    };
    let ffn_path = dir.join(FFN_FILE);
    let file = File::create(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&vec![0u8; align as usize]).map_err(|e| Error::io(&ffn_path, e))?;
    let mut offset = align;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    let mut errors = MaxErrors::default();
    let names = opts.kind.section_names(plan.gated);
    let table_len = checksum_table_len(cfg.n_layers, names.len(), cfg.d_ffn, align)
        .ok_or_else(|| Error::Invalid(format!("a checksum table for {} layers overflows", cfg.n_layers)))?;
    // One crc32c per record, in table order: layer, section, position.
    let mut table = Vec::with_capacity(table_len as usize);
    for l in 0..cfg.n_layers {
        let rows = NeuronRows::from_parts(model, l)?;
        let parts = neuron_parts(model, l);
        let mut bufs: Vec<Vec<u8>> = plan.sections.iter().map(|s| vec![0u8; s.len as usize]).collect();
        let mut scratch = Vec::new();
        let order = opts.order.as_ref().map(|o| &o[l]);
        for k in 0..cfg.d_ffn {
            let n = order.map_or(k, |o| o[k] as usize);
            let mut at = 0usize;
            for (pi, part) in parts.iter().enumerate() {
                scratch.clear();
                let (dtype, worst) = match part {
                    Part::Column => (plan.column, &mut errors.columns),
                    _ => (plan.row, &mut errors.rows),
                };
                *worst = worst.max(part.encode(model, &rows, n, cfg.d_model, dtype, &mut scratch)?);
                let (buf, start) = match opts.kind {
                    LayoutKind::Bundled => (&mut bufs[0], (k as u64 * plan.sections[0].stride) as usize + at),
                    LayoutKind::Split => (&mut bufs[pi], (k as u64 * plan.sections[pi].stride) as usize),
                };
                buf[start..start + scratch.len()].copy_from_slice(&scratch);
                at += scratch.len();
            }
        }
        let mut sections = Vec::with_capacity(names.len());
        for ((name, buf), sp) in names.iter().zip(&bufs).zip(&plan.sections) {
            out.write_all(buf).map_err(|e| Error::io(&ffn_path, e))?;
            for k in 0..cfg.d_ffn {
                let at = (k as u64 * sp.stride) as usize;
                table.extend_from_slice(&crc32c::crc32c(&buf[at..at + sp.record_bytes as usize]).to_le_bytes());
            }
            sections.push(Section {
                name: name.to_string(),
                offset,
                len: sp.len,
                record_bytes: sp.record_bytes,
                record_stride: sp.stride,
                crc32c: crc32c::crc32c(buf),
            });
            offset += sp.len;
        }
        layers.push(LayerInfo { order: order.cloned(), sections });
    }
    table.resize(table_len as usize, 0);
    let checksums = ChecksumsInfo { offset, len: table_len, crc32c: crc32c::crc32c(&table) };
    out.write_all(&table).map_err(|e| Error::io(&ffn_path, e))?;
    offset += table_len;
    header.table_crc32c = checksums.crc32c;
    header.table_offset = checksums.offset;
    header.table_len = checksums.len;
    let hbytes = header.encode();
    let file = out.into_inner().map_err(|e| Error::io(&ffn_path, e.into_error()))?;
    std::os::unix::fs::FileExt::write_all_at(&file, &hbytes, 0).map_err(|e| Error::io(&ffn_path, e))?;
    file.sync_all().map_err(|e| Error::io(&ffn_path, e))?;
    drop(file);

    if opts.fail_before_manifest {
        return Err(layout_err(dir, "conversion interrupted before the manifest (test hook)"));
    }

    // manifest.json, last.
    let (source_len, sha256) = model_sha256(source_path)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        layout_id,
        model: cfg.clone(),
        source: SourceInfo { path: source_path.display().to_string(), len: source_len, sha256 },
        kind: opts.kind,
        dtype: plan.row.name().into(),
        column_dtype: plan.column.name().into(),
        align,
        record_bytes: plan.sections[0].record_bytes,
        record_stride: plan.sections[0].stride,
        pack: opts.pack,
        resident: resident_info.clone(),
        ffn: FfnInfo { len: offset, header_crc32c: FfnHeader::crc_of(&hbytes), checksums },
        layers,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
    let json = seal_manifest(&json)?;
    write_synced(&dir.join(MANIFEST_FILE), &json)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))?;
    Ok((json.len() as u64, (resident_info.len, linked), offset, errors))
}

/// Hard-links `other` to `path` when `other` holds exactly `bytes` (compared in full, 8 MiB at a time). False
/// when it is absent, differs, or cannot be linked (another file system): the caller then writes the bytes.
fn link_if_same(other: &Path, bytes: &[u8], path: &Path) -> Result<bool> {
    let Ok(mut f) = File::open(other) else { return Ok(false) };
    if f.metadata().map_err(|e| Error::io(other, e))?.len() != bytes.len() as u64 {
        return Ok(false);
    }
    let mut buf = vec![0u8; (8 << 20).min(bytes.len())];
    for chunk in bytes.chunks(buf.len().max(1)) {
        let got = &mut buf[..chunk.len()];
        f.read_exact(got).map_err(|e| Error::io(other, e))?;
        if got != chunk {
            return Ok(false);
        }
    }
    Ok(std::fs::hard_link(other, path).is_ok())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// One part of a neuron record.
enum Part {
    /// Row `n` of a matrix (gate, up, fc1); `up` selects the up rows of [`NeuronRows`].
    Row { w: WeightRef, up: bool },
    /// Column `n` of the second matrix (down, fc2).
    Column,
}

fn neuron_parts(model: &ModelParts, l: usize) -> Vec<Part> {
    match &model.layers[l].ffn {
        // Refused by `Plan::new`.
        FfnWeights::Streamed { .. } => Vec::new(),
        FfnWeights::Gated { gate, up, .. } => {
            vec![Part::Row { w: gate.w, up: false }, Part::Row { w: up.w, up: true }, Part::Column]
        }
        // The fc1 bias stays in resident.bin (4 bytes more would make a record straddle one more page).
        FfnWeights::Plain { fc1, .. } => vec![Part::Row { w: fc1.w, up: false }, Part::Column],
    }
}

impl Part {
    /// Appends the part for neuron `n` to `out` in `dtype` ; returns
    /// the largest error against the source's values.
    fn encode(
        &self,
        model: &ModelParts,
        rows: &NeuronRows,
        n: usize,
        d: usize,
        dtype: DType,
        out: &mut Vec<u8>,
    ) -> Result<f32> {
        let exact: &[f32] = match self {
            Part::Row { w, up } => {
                if w.dtype == dtype {
                    out.extend_from_slice(model.row(w, n));
                    return Ok(0.0);
                }
                let m = if *up { rows.up.as_deref().unwrap_or(&[]) } else { &rows.first };
                &m[n * d..(n + 1) * d]
            }
            Part::Column => &rows.second_t[n * d..(n + 1) * d],
        };
        let start = out.len();
        quant::quantize(dtype, exact, out)?;
        if dtype == DType::F32 {
            return Ok(0.0);
        }
        let mut back = vec![0.0f32; d];
        quant::dequantize(dtype, &out[start..], &mut back)?;
        Ok(back.iter().zip(exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max))
    }
}
