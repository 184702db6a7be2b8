//! Activation traces: a dense run of a model over a corpus, recorded per layer and token (the FFN input and
//! every neuron's activation magnitude) in the versioned format of `docs/trace-format.md`.
//!
//! [`TraceWriter`] is an [`ActivationSink`]: the dense FFN reports to it, it spills each layer to its own
//! temporary file, and [`TraceWriter::finish`] assembles the trace atomically. [`Trace::open`] distrusts the
//! file: every size is checked against the file length before anything is allocated, and each layer's bytes
//! against their checksum when read.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use spike_flash::engine::model::{ActivationSink, DenseFfn, Model};
use spike_flash::model::config::{Activation, ModelConfig};

use crate::{Error, Result};

/// First bytes of every trace file.
pub const MAGIC: &[u8; 8] = b"SPKTRACE";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the fixed part of the header.
pub const FIXED_HEADER: usize = 128;
/// Longest label accepted.
pub const MAX_LABEL: usize = 65_536;
/// Bytes per segment-table entry (start, len, doc as u64).
pub const SEGMENT_BYTES: u64 = 24;

// Offsets in the fixed header.
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_SHA: usize = 16;
const OFF_LAYERS: usize = 48;
const OFF_D_MODEL: usize = 52;
const OFF_D_FFN: usize = 56;
const OFF_CTX: usize = 60;
const OFF_ACT: usize = 64;
const ACT_LEN: usize = 16;
const OFF_TOKENS: usize = 80;
const OFF_SEGMENTS: usize = 88;
const OFF_LABEL_LEN: usize = 96;

/// What a trace (or a thresholds or predictor file) is tied to: the model file's sha256 and the shapes the
/// recorded vectors have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelIdentity {
    /// Lower-case hex sha256 of the model file.
    pub sha256: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ffn: usize,
    pub activation: Activation,
}

impl ModelIdentity {
    /// The identity of the model at `path` (a GGUF file, or a checkpoint folder: its `config.json` then its
    /// `*.safetensors` files in name order) with configuration `cfg`. Hashes the whole model.
    pub fn of(path: &Path, cfg: &ModelConfig) -> Result<ModelIdentity> {
        let sha256 = spike_flash::model::fetch::model_sha256(path)?.1;
        Ok(ModelIdentity::with_sha(sha256, cfg))
    }

    /// The identity of a model whose sha256 is already known.
    pub fn with_sha(sha256: String, cfg: &ModelConfig) -> ModelIdentity {
        ModelIdentity {
            sha256,
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            d_ffn: cfg.d_ffn,
            activation: cfg.activation,
        }
    }

    /// An error naming `path` (a file that claims identity `self`) unless `self` and `model` agree; says
    /// every field that differs.
    pub fn check(&self, path: &Path, model: &ModelIdentity) -> Result<()> {
        let mut diffs = Vec::new();
        let mut dim = |name: &str, file: usize, m: usize| {
            if file != m {
                diffs.push(format!("{name} is {file} in the file but {m} in the model"));
            }
        };
        dim("n_layers", self.n_layers, model.n_layers);
        dim("d_model", self.d_model, model.d_model);
        dim("d_ffn", self.d_ffn, model.d_ffn);
        if self.activation != model.activation {
            diffs.push(format!(
                "the activation is {} in the file but {} in the model",
                self.activation.hf_name(),
                model.activation.hf_name()
            ));
        }
        if self.sha256 != model.sha256 {
            diffs.push(format!("it was made from model sha256 {} but this model's is {}", self.sha256, model.sha256));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::mismatch(path, format!("belongs to another model: {}", diffs.join("; "))))
        }
    }
}

/// A run of tokens evaluated as one sequence from an empty cache; `doc` is its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
    pub doc: usize,
}

impl Segment {
    /// The token indices of this segment.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// Everything a trace says besides its vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceMeta {
    /// Lower-case hex sha256 of the model the trace was recorded from.
    pub model_sha256: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ffn: usize,
    pub activation: Activation,
    /// Longest segment evaluated as one sequence.
    pub ctx: usize,
    /// Tokens recorded.
    pub n_tokens: usize,
    /// Free text: where the trace came from.
    pub label: String,
    /// The token ids, in recording order.
    pub tokens: Vec<u32>,
    /// Segments in order, covering `0..n_tokens`.
    pub segments: Vec<Segment>,
}

impl TraceMeta {
    /// The model identity the trace claims.
    pub fn identity(&self) -> ModelIdentity {
        ModelIdentity {
            sha256: self.model_sha256.clone(),
            n_layers: self.n_layers,
            d_model: self.d_model,
            d_ffn: self.d_ffn,
            activation: self.activation,
        }
    }

    /// Documents as token ranges, in order.
    pub fn documents(&self) -> Vec<Range<usize>> {
        let mut docs: Vec<Range<usize>> = Vec::new();
        let mut last_doc = None;
        for s in &self.segments {
            match docs.last_mut() {
                Some(r) if last_doc == Some(s.doc) => r.end = s.start + s.len,
                _ => docs.push(s.range()),
            }
            last_doc = Some(s.doc);
        }
        docs
    }

    /// Whether [`TraceMeta::split`] splits by segment instead of by document: a trace of one document in several
    /// segments (context windows) could otherwise give one side nothing.
    pub fn splits_by_segment(&self) -> bool {
        self.documents().len() < 2 && self.segments.len() >= 2
    }

    /// The units a split keeps whole: the documents, or the segments when [`TraceMeta::splits_by_segment`].
    fn split_units(&self) -> Vec<Range<usize>> {
        match self.splits_by_segment() {
            true => self.segments.iter().map(Segment::range).collect(),
            false => self.documents(),
        }
    }

    /// Splits the tokens into train and validation indices (each ascending) such that no document (no segment,
    /// for a one-document trace: [`TraceMeta::splits_by_segment`]) contributes to both. Documents are shuffled with `seed` and given to validation until it holds at least
    /// `valid_fraction` of the tokens (so it may hold up to one document more); when `valid_fraction` is
    /// below 1, training keeps at least one document. `valid_fraction` is clamped to `[0, 1]`.
    pub fn split(&self, valid_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let docs = self.split_units();
        let frac = if valid_fraction.is_nan() { 0.0 } else { valid_fraction.clamp(0.0, 1.0) };
        let target = frac * self.n_tokens as f64;
        let mut order: Vec<usize> = (0..docs.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut is_valid = vec![false; docs.len()];
        let (mut valid_tokens, mut valid_docs) = (0usize, 0usize);
        for d in order {
            let keeps_train = frac >= 1.0 || valid_docs + 1 < docs.len();
            if (valid_tokens as f64) < target && keeps_train {
                is_valid[d] = true;
                valid_tokens += docs[d].len();
                valid_docs += 1;
            }
        }
        let (mut train, mut valid) = (Vec::new(), Vec::new());
        for (d, r) in docs.into_iter().enumerate() {
            if is_valid[d] {
                valid.extend(r);
            } else {
                train.extend(r);
            }
        }
        (train, valid)
    }
}

/// An opened trace file. Layers are read on demand.
#[derive(Debug)]
pub struct Trace {
    path: PathBuf,
    file: File,
    meta: TraceMeta,
    header_len: u64,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Bytes of one layer section: `2 T (d_model + d_ffn) + 8`, `None` on overflow.
fn section_len(n_tokens: u64, d_model: u64, d_ffn: u64) -> Option<u64> {
    n_tokens.checked_mul(d_model.checked_add(d_ffn)?)?.checked_mul(2)?.checked_add(8)
}

/// Bytes of the header: `128 + label_len + 4 T + 24 S + 4`, `None` on overflow.
fn header_len(label_len: u64, n_tokens: u64, n_segments: u64) -> Option<u64> {
    (FIXED_HEADER as u64)
        .checked_add(label_len)?
        .checked_add(n_tokens.checked_mul(4)?)?
        .checked_add(n_segments.checked_mul(SEGMENT_BYTES)?)?
        .checked_add(4)
}

fn parse_activation(name: &str) -> Option<Activation> {
    Activation::from_hf_name(name).filter(|a| a.hf_name() == name)
}

impl Trace {
    /// Opens and validates a trace: header, sizes against the file length, header checksum, segment table.
    /// Layer checksums are checked when each layer is read.
    pub fn open(path: &Path) -> Result<Trace> {
        let bad = |what: String| Error::format(path, what);
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if file_len < FIXED_HEADER as u64 {
            return Err(bad(format!(
                "not a trace: {file_len} bytes, shorter than the {FIXED_HEADER}-byte header (truncated?)"
            )));
        }
        let mut fixed = [0u8; FIXED_HEADER];
        file.read_exact(&mut fixed).map_err(|e| Error::io(path, e))?;
        if &fixed[..8] != MAGIC {
            return Err(bad("not a trace: wrong magic (expected SPKTRACE)".into()));
        }
        let version = u32_at(&fixed, OFF_VERSION);
        if version != VERSION {
            return Err(bad(format!("trace format version {version}; this build reads version {VERSION}")));
        }
        let stored_header_len = u32_at(&fixed, OFF_HEADER_LEN) as u64;
        let n_layers = u32_at(&fixed, OFF_LAYERS) as u64;
        let d_model = u32_at(&fixed, OFF_D_MODEL) as u64;
        let d_ffn = u32_at(&fixed, OFF_D_FFN) as u64;
        let ctx = u32_at(&fixed, OFF_CTX) as u64;
        let act_raw = &fixed[OFF_ACT..OFF_ACT + ACT_LEN];
        let n_tokens = u64_at(&fixed, OFF_TOKENS);
        let n_segments = u64_at(&fixed, OFF_SEGMENTS);
        let label_len = u32_at(&fixed, OFF_LABEL_LEN) as u64;
        if n_layers == 0 || d_model == 0 || d_ffn == 0 || ctx == 0 {
            return Err(bad(format!(
                "zero dimension in the header: n_layers {n_layers}, d_model {d_model}, d_ffn {d_ffn}, ctx {ctx}"
            )));
        }
        let act_name = std::str::from_utf8(act_raw).ok().map(|s| s.trim_end_matches('\0'));
        let activation = act_name
            .and_then(parse_activation)
            .ok_or_else(|| bad(format!("unknown activation {:?} in the header", String::from_utf8_lossy(act_raw))))?;
        if label_len > MAX_LABEL as u64 {
            return Err(bad(format!("label of {label_len} bytes (at most {MAX_LABEL})")));
        }
        let hlen = header_len(label_len, n_tokens, n_segments)
            .ok_or_else(|| bad(format!("header sizes overflow: {n_tokens} tokens, {n_segments} segments")))?;
        if hlen != stored_header_len {
            return Err(bad(format!(
                "header length field says {stored_header_len} bytes but {n_tokens} tokens, {n_segments} segments \
                 and a {label_len}-byte label need {hlen}"
            )));
        }
        let expected = section_len(n_tokens, d_model, d_ffn)
            .and_then(|s| s.checked_mul(n_layers))
            .and_then(|s| s.checked_add(hlen))
            .ok_or_else(|| bad(format!("sizes overflow: {n_layers} layers of {n_tokens} tokens")))?;
        if expected != file_len {
            return Err(bad(format!(
                "{n_layers} layers x {n_tokens} tokens x ({d_model} + {d_ffn}) need {expected} bytes but the file \
                 has {file_len} ({})",
                if file_len < expected { "truncated" } else { "trailing bytes" }
            )));
        }
        // hlen <= file_len now, so this allocation is bounded by the file's real size.
        let mut header = vec![0u8; hlen as usize];
        header[..FIXED_HEADER].copy_from_slice(&fixed);
        file.read_exact(&mut header[FIXED_HEADER..]).map_err(|e| Error::io(path, e))?;
        let body = hlen as usize - 4;
        let stored = u32_at(&header, body);
        let computed = crc32c::crc32c(&header[..body]);
        if stored != computed {
            return Err(Error::Checksum { path: path.into(), section: "header".into(), stored, computed });
        }
        if header[OFF_LABEL_LEN + 4..FIXED_HEADER].iter().any(|&b| b != 0) {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let mut off = FIXED_HEADER;
        let label = std::str::from_utf8(&header[off..off + label_len as usize])
            .map_err(|_| bad("the label is not UTF-8".into()))?
            .to_string();
        off += label_len as usize;
        let tokens: Vec<u32> = header[off..off + 4 * n_tokens as usize]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        off += 4 * n_tokens as usize;
        let mut segments = Vec::with_capacity(n_segments as usize);
        let mut next = 0u64;
        let mut prev_doc: Option<u64> = None;
        for (i, e) in header[off..off + SEGMENT_BYTES as usize * n_segments as usize]
            .chunks_exact(SEGMENT_BYTES as usize)
            .enumerate()
        {
            let (start, len, doc) = (u64_at(e, 0), u64_at(e, 8), u64_at(e, 16));
            let doc_ok = match prev_doc {
                None => doc == 0,
                Some(p) => doc == p || Some(doc) == p.checked_add(1),
            };
            if start != next || len == 0 || len > ctx || !doc_ok {
                return Err(bad(format!(
                    "segment {i} (start {start}, len {len}, doc {doc}) does not continue the table: segments must \
                     start at {next}, be 1..={ctx} tokens long, and keep or increment the document id"
                )));
            }
            next = start + len; // start == next <= n_tokens and len <= ctx: no overflow.
            if next > n_tokens {
                return Err(bad(format!("segment {i} ends at token {next}, past the {n_tokens} tokens")));
            }
            prev_doc = Some(doc);
            segments.push(Segment { start: start as usize, len: len as usize, doc: doc as usize });
        }
        if next != n_tokens {
            return Err(bad(format!("the segments cover {next} of the {n_tokens} tokens")));
        }
        let meta = TraceMeta {
            model_sha256: hex(&header[OFF_SHA..OFF_SHA + 32]),
            n_layers: n_layers as usize,
            d_model: d_model as usize,
            d_ffn: d_ffn as usize,
            activation,
            ctx: ctx as usize,
            n_tokens: n_tokens as usize,
            label,
            tokens,
            segments,
        };
        Ok(Trace { path: path.to_path_buf(), file, meta, header_len: hlen })
    }

    /// The file this trace was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's contents.
    pub fn meta(&self) -> &TraceMeta {
        &self.meta
    }

    /// Documents as token ranges (see [`TraceMeta::documents`]).
    pub fn documents(&self) -> Vec<Range<usize>> {
        self.meta.documents()
    }

    /// Train and validation token indices, no document in both (see [`TraceMeta::split`]).
    pub fn split(&self, valid_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        self.meta.split(valid_fraction, seed)
    }

    /// An error naming this trace unless it was recorded from `model` (sha256, dimensions, activation).
    pub fn check_model(&self, model: &ModelIdentity) -> Result<()> {
        self.meta.identity().check(&self.path, model)
    }

    /// Layer `l`'s FFN inputs, `tokens x d_model`.
    pub fn layer_inputs(&self, l: usize) -> Result<Array2<f32>> {
        self.block(l, false)
    }

    /// Layer `l`'s neuron activation magnitudes, `tokens x d_ffn`.
    pub fn layer_acts(&self, l: usize) -> Result<Array2<f32>> {
        self.block(l, true)
    }

    /// Layer `l`'s inputs and activation magnitudes.
    pub fn layer(&self, l: usize) -> Result<(Array2<f32>, Array2<f32>)> {
        Ok((self.layer_inputs(l)?, self.layer_acts(l)?))
    }

    fn block(&self, l: usize, acts: bool) -> Result<Array2<f32>> {
        let m = &self.meta;
        if l >= m.n_layers {
            return Err(Error::Invalid(format!(
                "{}: layer {l} asked for, the trace has {} layers",
                self.path.display(),
                m.n_layers
            )));
        }
        let (t, d, f) = (m.n_tokens as u64, m.d_model as u64, m.d_ffn as u64);
        // Sizes were checked against the file length in `open`: no overflow below.
        let sec = section_len(t, d, f).expect("checked in open");
        let base = self.header_len + l as u64 * sec;
        let (off, width, crc_off, name) = if acts {
            (base + 2 * t * d, f, base + 2 * t * (d + f) + 4, "activations")
        } else {
            (base, d, base + 2 * t * (d + f), "inputs")
        };
        let mut bytes = vec![0u8; (2 * t * width) as usize];
        self.file.read_exact_at(&mut bytes, off).map_err(|e| Error::io(&self.path, e))?;
        let mut crc = [0u8; 4];
        self.file.read_exact_at(&mut crc, crc_off).map_err(|e| Error::io(&self.path, e))?;
        let stored = u32::from_le_bytes(crc);
        let computed = crc32c::crc32c(&bytes);
        if stored != computed {
            return Err(Error::Checksum {
                path: self.path.clone(),
                section: format!("layer {l} {name}"),
                stored,
                computed,
            });
        }
        let values: Vec<f32> =
            bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect();
        Ok(Array2::from_shape_vec((t as usize, width as usize), values).expect("length is t x width"))
    }
}

/// What [`TraceWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub n_tokens: usize,
    pub n_segments: usize,
    pub n_docs: usize,
    /// Values beyond the f16 range, stored saturated.
    pub saturated: u64,
}

/// Records a trace: declare each segment with [`TraceWriter::begin_segment`], run the dense model over it
/// with this writer as the [`ActivationSink`], and [`TraceWriter::finish`]. Each layer's records spill to a
/// temporary file beside the output; nothing appears at the output path until `finish` renames it there.
pub struct TraceWriter {
    path: PathBuf,
    model: ModelIdentity,
    ctx: usize,
    label: String,
    _spill_dir: tempfile::TempDir,
    /// Removes the spill folder if the process is interrupted (SIGINT, SIGTERM, SIGHUP) while it exists.
    _spill_guard: spike_flash::io::interrupt::Pending,
    spill_paths: Vec<PathBuf>,
    spills: Vec<BufWriter<File>>,
    recorded: Vec<usize>,
    tokens: Vec<u32>,
    segments: Vec<Segment>,
    error: Option<Error>,
    buf: Vec<u8>,
    saturated: u64,
}

impl TraceWriter {
    /// A writer for `path` of traces of `model`, segments up to `ctx` tokens, with a free-text `label`.
    pub fn create(path: &Path, model: ModelIdentity, ctx: usize, label: &str) -> Result<TraceWriter> {
        if ctx == 0 || ctx > u32::MAX as usize {
            return Err(Error::Invalid(format!("segment length (ctx) {ctx} is out of range")));
        }
        if model.n_layers == 0 || model.d_model == 0 || model.d_ffn == 0 {
            return Err(Error::Invalid("a model with a zero dimension cannot be traced".into()));
        }
        if unhex(&model.sha256).is_none() {
            return Err(Error::Invalid(format!("model sha256 {:?} is not 64 hex digits", model.sha256)));
        }
        let mut label = label.to_string();
        if label.len() > MAX_LABEL {
            let mut cut = MAX_LABEL;
            while !label.is_char_boundary(cut) {
                cut -= 1;
            }
            label.truncate(cut);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let spill_dir =
            tempfile::Builder::new().prefix(".spike-trace-spill.").tempdir_in(&dir).map_err(|e| Error::io(&dir, e))?;
        let spill_guard =
            spike_flash::io::interrupt::register(spill_dir.path(), spike_flash::io::interrupt::Kind::Partial);
        let mut spills = Vec::with_capacity(model.n_layers);
        let mut spill_paths = Vec::with_capacity(model.n_layers);
        for l in 0..model.n_layers {
            let p = spill_dir.path().join(format!("layer{l}.bin"));
            let f = File::create(&p).map_err(|e| Error::io(&p, e))?;
            spills.push(BufWriter::with_capacity(1 << 20, f));
            spill_paths.push(p);
        }
        Ok(TraceWriter {
            path: path.to_path_buf(),
            recorded: vec![0; model.n_layers],
            model,
            ctx,
            label,
            _spill_dir: spill_dir,
            _spill_guard: spill_guard,
            spill_paths,
            spills,
            tokens: Vec::new(),
            segments: Vec::new(),
            error: None,
            buf: Vec::new(),
            saturated: 0,
        })
    }

    /// Tokens declared so far.
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Declares the next segment, `tokens` evaluated as one sequence from an empty cache, which starts a new
    /// document when `new_document` (the first segment always does).
    pub fn begin_segment(&mut self, tokens: &[u32], new_document: bool) -> Result<()> {
        if tokens.is_empty() || tokens.len() > self.ctx {
            return Err(Error::Invalid(format!("a segment of {} tokens (must be 1..={})", tokens.len(), self.ctx)));
        }
        if let Some(l) = self.recorded.iter().position(|&r| r != self.tokens.len()) {
            return Err(Error::Invalid(format!(
                "layer {l} has {} tokens recorded but {} were declared: a segment was not run",
                self.recorded[l],
                self.tokens.len()
            )));
        }
        let doc = match self.segments.last() {
            None => 0,
            Some(s) => s.doc + usize::from(new_document),
        };
        self.segments.push(Segment { start: self.tokens.len(), len: tokens.len(), doc });
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    fn spill(&mut self, layer: usize, x: &[f32], neurons: &[f32]) -> Result<()> {
        let m = &self.model;
        if layer >= m.n_layers || x.len() != m.d_model || neurons.len() != m.d_ffn {
            return Err(Error::Invalid(format!(
                "a record for layer {layer} with {} inputs and {} neurons does not fit a model of {} layers, \
                 d_model {}, d_ffn {}",
                x.len(),
                neurons.len(),
                m.n_layers,
                m.d_model,
                m.d_ffn
            )));
        }
        if self.recorded[layer] >= self.tokens.len() {
            return Err(Error::Invalid(format!(
                "layer {layer} got more records than the {} tokens declared",
                self.tokens.len()
            )));
        }
        self.buf.clear();
        let mut saturated = 0u64;
        let mut put = |v: f32, buf: &mut Vec<u8>| {
            let h = f16::from_f32(v);
            let h = if h.is_infinite() {
                saturated += 1;
                if v > 0.0 {
                    f16::MAX
                } else {
                    f16::MIN
                }
            } else {
                h
            };
            buf.extend_from_slice(&h.to_bits().to_le_bytes());
        };
        for &v in x {
            put(v, &mut self.buf);
        }
        for &v in neurons {
            put(v.abs(), &mut self.buf);
        }
        self.saturated += saturated;
        self.spills[layer].write_all(&self.buf).map_err(|e| Error::io(&self.spill_paths[layer], e))?;
        self.recorded[layer] += 1;
        Ok(())
    }

    /// Writes the trace atomically (temporary name, fsync, rename) and removes the spill files.
    pub fn finish(mut self) -> Result<TraceSummary> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let t = self.tokens.len();
        if t == 0 {
            return Err(Error::Invalid("no tokens were recorded".into()));
        }
        if let Some(l) = self.recorded.iter().position(|&r| r != t) {
            return Err(Error::Invalid(format!("layer {l} has {} records for {t} tokens", self.recorded[l])));
        }
        for (l, s) in self.spills.iter_mut().enumerate() {
            s.flush().map_err(|e| Error::io(&self.spill_paths[l], e))?;
        }
        let m = &self.model;
        let mut header = vec![0u8; FIXED_HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        let hlen = header_len(self.label.len() as u64, t as u64, self.segments.len() as u64)
            .filter(|&h| h <= u32::MAX as u64)
            .ok_or_else(|| Error::Invalid(format!("{t} tokens make a header too large for the format")))?;
        header[OFF_HEADER_LEN..OFF_HEADER_LEN + 4].copy_from_slice(&(hlen as u32).to_le_bytes());
        header[OFF_SHA..OFF_SHA + 32].copy_from_slice(&unhex(&m.sha256).expect("checked in create"));
        let dim = |v: usize| u32::try_from(v).map_err(|_| Error::Invalid(format!("dimension {v} exceeds u32")));
        header[OFF_LAYERS..OFF_LAYERS + 4].copy_from_slice(&dim(m.n_layers)?.to_le_bytes());
        header[OFF_D_MODEL..OFF_D_MODEL + 4].copy_from_slice(&dim(m.d_model)?.to_le_bytes());
        header[OFF_D_FFN..OFF_D_FFN + 4].copy_from_slice(&dim(m.d_ffn)?.to_le_bytes());
        header[OFF_CTX..OFF_CTX + 4].copy_from_slice(&dim(self.ctx)?.to_le_bytes());
        let name = m.activation.hf_name().as_bytes();
        header[OFF_ACT..OFF_ACT + name.len()].copy_from_slice(name);
        header[OFF_TOKENS..OFF_TOKENS + 8].copy_from_slice(&(t as u64).to_le_bytes());
        header[OFF_SEGMENTS..OFF_SEGMENTS + 8].copy_from_slice(&(self.segments.len() as u64).to_le_bytes());
        header[OFF_LABEL_LEN..OFF_LABEL_LEN + 4].copy_from_slice(&(self.label.len() as u32).to_le_bytes());
        header.extend_from_slice(self.label.as_bytes());
        for tok in &self.tokens {
            header.extend_from_slice(&tok.to_le_bytes());
        }
        for s in &self.segments {
            for v in [s.start, s.len, s.doc] {
                header.extend_from_slice(&(v as u64).to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(header.len() as u64, hlen);

        let (d, f) = (m.d_model, m.d_ffn);
        let record = 2 * (d + f);
        let spill_paths = self.spill_paths.clone();
        drop(std::mem::take(&mut self.spills));
        let mut spill_error: Option<Error> = None;
        let written = spike_flash::io::write_atomic(&self.path, |w| {
            w.write_all(&header)?;
            let mut inputs = vec![0u8; 2 * t * d];
            let mut acts = vec![0u8; 2 * t * f];
            let mut rec = vec![0u8; record];
            for p in &spill_paths {
                let mut r = std::io::BufReader::with_capacity(1 << 20, File::open(p)?);
                for i in 0..t {
                    if let Err(e) = r.read_exact(&mut rec) {
                        spill_error = Some(Error::io(p, e));
                        return Err(std::io::Error::other("reading a spill file failed"));
                    }
                    inputs[2 * i * d..2 * (i + 1) * d].copy_from_slice(&rec[..2 * d]);
                    acts[2 * i * f..2 * (i + 1) * f].copy_from_slice(&rec[2 * d..]);
                }
                w.write_all(&inputs)?;
                w.write_all(&acts)?;
                w.write_all(&crc32c::crc32c(&inputs).to_le_bytes())?;
                w.write_all(&crc32c::crc32c(&acts).to_le_bytes())?;
            }
            Ok(())
        });
        if let Some(e) = spill_error {
            return Err(e);
        }
        written?;
        let bytes = std::fs::metadata(&self.path).map_err(|e| Error::io(&self.path, e))?.len();
        let n_docs = self.segments.last().map_or(0, |s| s.doc + 1);
        Ok(TraceSummary {
            path: self.path.clone(),
            bytes,
            n_tokens: t,
            n_segments: self.segments.len(),
            n_docs,
            saturated: self.saturated,
        })
    }
}

impl ActivationSink for TraceWriter {
    fn record(&mut self, layer: usize, x: &[f32], neurons: &[f32]) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.spill(layer, x, neurons) {
            self.error = Some(e);
        }
    }
}

/// How [`record`] runs a model over documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordConfig {
    /// Longest sequence evaluated at once; longer documents are cut into segments of this many tokens.
    pub ctx: usize,
    /// Stop after this many tokens (the last segment is shortened to fit).
    pub max_tokens: usize,
}

/// Runs the dense `model` over `docs` (token ids per document, in order) into `writer`: each document in
/// segments of at most `cfg.ctx` tokens, each segment from an empty cache, until `cfg.max_tokens` tokens.
/// Empty documents are skipped. `progress(tokens_so_far)` after each segment. Returns the tokens recorded.
pub fn record(
    model: &Model,
    docs: impl IntoIterator<Item = Vec<u32>>,
    cfg: RecordConfig,
    writer: &mut TraceWriter,
    progress: &mut dyn FnMut(usize),
) -> Result<usize> {
    if cfg.ctx == 0 || cfg.ctx > writer.ctx {
        return Err(Error::Invalid(format!("ctx {} must be 1..={} (the writer's)", cfg.ctx, writer.ctx)));
    }
    let mut state = model.try_new_state(cfg.ctx)?;
    'docs: for doc in docs {
        for (i, chunk) in doc.chunks(cfg.ctx).enumerate() {
            let room = cfg.max_tokens.saturating_sub(writer.n_tokens());
            if room == 0 {
                break 'docs;
            }
            let seg = &chunk[..chunk.len().min(room)];
            writer.begin_segment(seg, i == 0)?;
            state.reset();
            let mut ffn = DenseFfn::with_sink(&mut *writer);
            model.forward_with(&mut state, seg, seg.len() - 1, &mut ffn)?;
            drop(ffn);
            if let Some(e) = writer.error.take() {
                return Err(e);
            }
            progress(writer.n_tokens());
        }
    }
    Ok(writer.n_tokens())
}
