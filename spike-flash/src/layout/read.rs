//! Opening, validating and verifying a flash layout directory (`docs/format.md`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    dtype_by_name, layout_id_bytes, round_up, section_record_bytes, FfnHeader, LayoutKind, Manifest, FFN_FILE, FORMAT,
    HEADER_USED, MANIFEST_FILE, MIN_ALIGN, PARTIAL_MARK, RESIDENT_FILE, VERSION,
};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::quant::{self, DType};
use crate::{Error, Result};

/// An opened, validated layout.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    manifest: Manifest,
    /// Element type of the rows (gate, up, fc1).
    dtype: DType,
    /// Element type of the columns (down, fc2).
    column_dtype: DType,
    gated: bool,
    /// Per layer, the position of each neuron (empty for the identity order).
    position: Vec<Vec<u32>>,
}

/// What [`Layout::verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub sections: usize,
    pub tensors: usize,
    pub bytes: u64,
}

/// One neuron, decoded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronF32 {
    /// Gate row (gated) or fc1 row (plain).
    pub first: Vec<f32>,
    /// Up row (gated only).
    pub up: Option<Vec<f32>>,
    /// Column of down / fc2.
    pub second_col: Vec<f32>,
    /// fc1 bias (plain FFNs in bundled layouts; split layouts keep it in resident.bin only).
    pub b1: Option<f32>,
}

fn err(path: &Path, what: impl Into<String>) -> Error {
    Error::Layout { path: path.to_path_buf(), what: what.into() }
}

impl Layout {
    /// Opens the layout in `dir`, checking everything `docs/format.md` lists short of the checksums.
    pub fn open(dir: &Path) -> Result<Layout> {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains(PARTIAL_MARK) {
            return Err(err(dir, "the directory of an unfinished conversion, not a layout"));
        }
        let mpath = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&mpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err(dir, "no manifest.json: not a layout, or an incomplete one"))
            }
            Err(e) => return Err(Error::io(&mpath, e)),
        };
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::json(&mpath, &e))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(err(&mpath, format!("`format` is {other:?}, expected \"{FORMAT}\""))),
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            other => {
                return Err(err(
                    &mpath,
                    format!("format version {}, this reader reads version {VERSION} only", show(other)),
                ))
            }
        }
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| err(&mpath, format!("does not describe a version {VERSION} layout: {e}")))?;
        let Checked { dtype, column_dtype, gated, position } = check_manifest(&mpath, &manifest)?;
        let layout = Layout { dir: dir.to_path_buf(), manifest, dtype, column_dtype, gated, position };
        layout.check_files()?;
        Ok(layout)
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The element type of the rows (gate, up, fc1).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The element type of the columns (down, fc2).
    pub fn column_dtype(&self) -> DType {
        self.column_dtype
    }

    /// Checks that the layout was made from a model of configuration `cfg` and, when given, of file sha256
    /// `sha256`.
    pub fn check_model(&self, cfg: &ModelConfig, sha256: Option<&str>) -> Result<()> {
        let mpath = self.dir.join(MANIFEST_FILE);
        if self.manifest.model != *cfg {
            return Err(err(&mpath, "was converted from a model of another configuration"));
        }
        if let Some(s) = sha256 {
            if !s.eq_ignore_ascii_case(&self.manifest.source.sha256) {
                return Err(err(
                    &mpath,
                    format!("was converted from a file of sha256 {}", self.manifest.source.sha256),
                ));
            }
        }
        Ok(())
    }

    fn check_files(&self) -> Result<()> {
        let m = &self.manifest;
        let ffn_path = self.dir.join(FFN_FILE);
        let f = File::open(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
        let len = f.metadata().map_err(|e| Error::io(&ffn_path, e))?.len();
        if len != m.ffn.len {
            return Err(Error::Length { path: ffn_path, len, expected: m.ffn.len, what: "the manifest".into() });
        }
        let mut h = [0u8; HEADER_USED];
        f.read_exact_at(&mut h, 0).map_err(|e| Error::io(&ffn_path, e))?;
        let hd = FfnHeader::decode(&h).map_err(|w| err(&ffn_path, w))?;
        let crc = u32::from_le_bytes([h[60], h[61], h[62], h[63]]);
        let want_id = layout_id_bytes(&m.layout_id);
        let checks: [(&str, bool); 10] = [
            ("version", hd.version == VERSION),
            ("header crc32c (manifest)", crc == m.ffn.header_crc32c),
            ("layout_id", Some(hd.layout_id) == want_id),
            ("align", u64::from(hd.align) == m.align),
            ("n_layers", hd.n_layers as usize == m.layers.len()),
            ("kind", hd.kind == m.kind.code()),
            ("dtype", hd.dtype == self.dtype.ggml_id()),
            ("column_dtype", hd.column_dtype == self.column_dtype.ggml_id()),
            ("record_bytes", u64::from(hd.record_bytes) == m.record_bytes),
            ("record_stride", hd.record_stride == m.record_stride),
        ];
        if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(err(
                &ffn_path,
                format!("header's {what} does not match the manifest: files of two conversions?"),
            ));
        }
        let rpath = self.dir.join(RESIDENT_FILE);
        let rlen = std::fs::metadata(&rpath).map_err(|e| Error::io(&rpath, e))?.len();
        if rlen != m.resident.len {
            return Err(err(&rpath, format!("is {rlen} bytes, the manifest says {}", m.resident.len)));
        }
        Ok(())
    }

    /// Checks every section's and resident tensor's crc32c; the error names each layer and section, or
    /// tensor, that fails.
    pub fn verify(&self) -> Result<VerifyReport> {
        let m = &self.manifest;
        let mut failures = Vec::new();
        let mut report = VerifyReport { sections: 0, tensors: 0, bytes: 0 };
        let ffn_path = self.dir.join(FFN_FILE);
        let f = File::open(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
        let mut buf = Vec::new();
        for (l, layer) in m.layers.iter().enumerate() {
            for s in &layer.sections {
                buf.resize(s.len as usize, 0);
                f.read_exact_at(&mut buf, s.offset).map_err(|e| Error::io(&ffn_path, e))?;
                let crc = crc32c::crc32c(&buf);
                if crc != s.crc32c {
                    failures.push(format!(
                        "{FFN_FILE}: layer {l} section `{}`: crc32c {crc:08x}, the manifest says {:08x}",
                        s.name, s.crc32c
                    ));
                }
                report.sections += 1;
                report.bytes += s.len;
            }
        }
        let rpath = self.dir.join(RESIDENT_FILE);
        let whole = std::fs::read(&rpath).map_err(|e| Error::io(&rpath, e))?;
        let crc = crc32c::crc32c(&whole);
        report.bytes += whole.len() as u64;
        match GgufFile::from_bytes(&rpath, whole) {
            Ok(g) => {
                for (name, &want) in &m.resident.tensors {
                    match g.tensor_data(name) {
                        Ok(data) => {
                            let crc = crc32c::crc32c(data);
                            if crc != want {
                                failures.push(format!(
                                    "{RESIDENT_FILE}: tensor `{name}`: crc32c {crc:08x}, the manifest says {want:08x}"
                                ));
                            }
                            report.tensors += 1;
                        }
                        Err(_) => failures.push(format!("{RESIDENT_FILE}: tensor `{name}` is missing")),
                    }
                }
                for t in g.tensors().iter().filter(|t| !m.resident.tensors.contains_key(&t.name)) {
                    failures.push(format!("{RESIDENT_FILE}: tensor `{}` is not in the manifest", t.name));
                }
            }
            Err(e) => failures.push(format!("{RESIDENT_FILE}: does not parse: {e}")),
        }
        if crc != m.resident.crc32c {
            failures.push(format!(
                "{RESIDENT_FILE}: whole-file crc32c {crc:08x}, the manifest says {:08x}",
                m.resident.crc32c
            ));
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(err(&self.dir, format!("verification failed: {}", failures.join("; "))))
        }
    }

    /// The payload of neuron `neuron` (original index) of `layer`, in the bundled record format whatever the
    /// layout's kind (split layouts' rows and column are read from each section and concatenated).
    pub fn neuron_record(&self, layer: usize, neuron: usize) -> Result<Vec<u8>> {
        let ffn_path = self.dir.join(FFN_FILE);
        let file = File::open(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
        let mut out = Vec::with_capacity(self.payload_bytes());
        for (off, len) in self.record_spans(layer, neuron)? {
            let start = out.len();
            out.resize(start + len as usize, 0);
            file.read_exact_at(&mut out[start..], off).map_err(|e| Error::Read {
                path: ffn_path.clone(),
                offset: off,
                length: len,
                source: e,
            })?;
        }
        Ok(out)
    }

    /// `ffn.bin`'s path.
    pub fn ffn_path(&self) -> PathBuf {
        self.dir.join(FFN_FILE)
    }

    /// Whether the FFN is gated (Llama family: gate, up and down parts) rather than plain (OPT: fc1, fc2).
    pub fn gated(&self) -> bool {
        self.gated
    }

    /// Bytes of one row (gate, up, fc1) of `d_model` values in the rows' type.
    pub fn row_bytes(&self) -> usize {
        // `check_manifest` made sure `d_model` is a whole number of blocks.
        self.dtype.bytes_for(self.manifest.model.d_model as u64).unwrap_or(0) as usize
    }

    /// Bytes of one column (down, fc2) of `d_model` values in the columns' type.
    pub fn column_bytes(&self) -> usize {
        self.column_dtype.bytes_for(self.manifest.model.d_model as u64).unwrap_or(0) as usize
    }

    /// Bytes of a neuron in the bundled record format ([`Layout::neuron_record`]'s payload): what
    /// [`Layout::neuron_reads`] places at its destination, whatever the layout's kind.
    pub fn payload_bytes(&self) -> usize {
        let rows = if self.gated { 2 } else { 1 };
        let bias = if !self.gated && self.manifest.kind == LayoutKind::Bundled { 4 } else { 0 };
        rows * self.row_bytes() + self.column_bytes() + bias
    }

    /// Where neuron `neuron` (original numbering) of `layer` is stored: the file offset and payload length of
    /// its record in each section (one for bundled layouts; one per matrix for split ones).
    fn record_spans(&self, layer: usize, neuron: usize) -> Result<impl Iterator<Item = (u64, u64)> + '_> {
        let m = &self.manifest;
        let li = m.layers.get(layer).ok_or_else(|| Error::Invalid(format!("layer {layer} of {}", m.layers.len())))?;
        if neuron >= m.model.d_ffn {
            return Err(Error::Invalid(format!("neuron {neuron} of {}", m.model.d_ffn)));
        }
        let k = match self.position.get(layer) {
            Some(p) if !p.is_empty() => u64::from(p[neuron]),
            _ => neuron as u64,
        };
        Ok(li.sections.iter().map(move |s| (s.offset + k * s.record_stride, s.record_bytes)))
    }

    /// Appends the reads that place neuron `neuron` of `layer` at byte `dst` of a buffer, in the bundled
    /// payload format (gate | up | down, or fc1 | fc2 | fc1 bias; a split layout's parts land one after the
    /// other, and its plain records carry no bias).
    pub fn neuron_reads(
        &self,
        layer: usize,
        neuron: usize,
        dst: usize,
        out: &mut Vec<crate::io::ReadReq>,
    ) -> Result<()> {
        let mut at = dst;
        for (offset, len) in self.record_spans(layer, neuron)? {
            let len = len as usize;
            out.push(crate::io::ReadReq { offset, len, dst: at });
            at += len;
        }
        Ok(())
    }

    /// The parts of the model that stay in DRAM: `resident.bin` read into memory (not mapped: under a memory
    /// budget its pages must not be evicted and re-read), every tensor's crc32c checked, bound with the FFN left
    /// on flash.
    pub fn resident_parts(&self) -> Result<crate::model::weights::ModelParts> {
        let rpath = self.dir.join(RESIDENT_FILE);
        let bytes = std::fs::read(&rpath).map_err(|e| Error::io(&rpath, e))?;
        let mut g = GgufFile::from_bytes(&rpath, bytes)?;
        // The tokenizer's vocabulary is most of the metadata; the model does not need it (see `tokenizer`).
        g.retain_metadata(|k| !k.starts_with("tokenizer.") && k != super::HF_TOKENIZER_KEY);
        for (name, &want) in &self.manifest.resident.tensors {
            let crc = crc32c::crc32c(g.tensor_data(name)?);
            if crc != want {
                return Err(Error::Checksum {
                    path: rpath,
                    place: format!("tensor `{name}`"),
                    stored: want,
                    computed: crc,
                });
            }
        }
        let hf = g.get(super::HF_CONFIG_KEY).is_some();
        if !hf {
            let cfg = ModelConfig::from_gguf(&g)?;
            if cfg != self.manifest.model {
                return Err(err(&rpath, "its metadata describes another model than the manifest"));
            }
        }
        crate::model::bind::resident(std::sync::Arc::new(g), self.manifest.model.clone(), hf)
    }

    /// The model's tokenizer, from `resident.bin`'s metadata.
    pub fn tokenizer(&self) -> Result<crate::model::tokenizer::Tokenizer> {
        let rpath = self.dir.join(RESIDENT_FILE);
        let g = GgufFile::open(&rpath)?;
        match g.get(super::HF_TOKENIZER_KEY) {
            Some(_) => {
                let json = g.get_str(super::HF_TOKENIZER_KEY)?;
                let config = g.get_str(super::HF_CONFIG_KEY)?;
                let config: serde_json::Value = serde_json::from_str(config).map_err(|e| Error::json(&rpath, &e))?;
                crate::model::tokenizer::Tokenizer::from_json(&rpath, json, Some(config), None)
            }
            None if g.get(super::HF_CONFIG_KEY).is_some() => {
                Err(err(&rpath, "the checkpoint this layout was converted from had no tokenizer.json"))
            }
            None => crate::model::tokenizer::Tokenizer::from_gguf(&g),
        }
    }

    /// Decodes a payload returned by [`Layout::neuron_record`].
    pub fn decode_neuron(&self, bytes: &[u8]) -> Result<NeuronF32> {
        let d = self.manifest.model.d_model;
        let (rb, cb) = (self.row_bytes(), self.column_bytes());
        // Split plain (OPT) layouts keep the fc1 bias in resident.bin only: their records are a row and a column.
        let want = self.payload_bytes();
        if bytes.len() != want {
            return Err(Error::Invalid(format!("a neuron record is {want} bytes, got {}", bytes.len())));
        }
        let decode = |dtype: DType, at: usize, len: usize| -> Result<Vec<f32>> {
            let mut v = vec![0.0f32; d];
            quant::dequantize(dtype, &bytes[at..at + len], &mut v)?;
            Ok(v)
        };
        if self.gated {
            let (first, up) = (decode(self.dtype, 0, rb)?, decode(self.dtype, rb, rb)?);
            Ok(NeuronF32 { first, up: Some(up), second_col: decode(self.column_dtype, 2 * rb, cb)?, b1: None })
        } else {
            let b1 = bytes.get(rb + cb..rb + cb + 4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            Ok(NeuronF32 {
                first: decode(self.dtype, 0, rb)?,
                up: None,
                second_col: decode(self.column_dtype, rb, cb)?,
                b1,
            })
        }
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "missing".to_string(), |v| v.to_string())
}

/// What [`check_manifest`] derives from a consistent manifest.
struct Checked {
    dtype: DType,
    column_dtype: DType,
    gated: bool,
    /// Per layer, the position of each neuron (empty for the identity order).
    position: Vec<Vec<u32>>,
}

/// Checks the manifest's internal consistency; returns the row and column types, whether the FFN is gated,
/// and the per-layer neuron positions.
fn check_manifest(mpath: &Path, m: &Manifest) -> Result<Checked> {
    let dtype = dtype_by_name(&m.dtype).ok_or_else(|| err(mpath, format!("unknown row dtype `{}`", m.dtype)))?;
    let column_dtype = dtype_by_name(&m.column_dtype)
        .ok_or_else(|| err(mpath, format!("unknown column dtype `{}`", m.column_dtype)))?;
    if !m.align.is_power_of_two() || m.align < MIN_ALIGN {
        return Err(err(mpath, format!("align {} is not a power of two >= {MIN_ALIGN}", m.align)));
    }
    if m.pack != 1 && m.pack != m.align {
        return Err(err(mpath, format!("pack {} is neither 1 nor align {}", m.pack, m.align)));
    }
    let gated = m.model.arch != crate::model::config::Arch::Opt;
    let (d, f) = (m.model.d_model, m.model.d_ffn);
    let Some(recs) = section_record_bytes(m.kind, dtype, column_dtype, d, gated) else {
        return Err(err(
            mpath,
            format!("d_model {d} is not a whole number of {} blocks and {} blocks", m.dtype, m.column_dtype),
        ));
    };
    if recs.first() != Some(&m.record_bytes) {
        return Err(err(
            mpath,
            format!(
                "record_bytes {} does not fit {} rows and {} columns of {d}",
                m.record_bytes, m.dtype, m.column_dtype
            ),
        ));
    }
    if m.record_stride != round_up(m.record_bytes, m.pack) {
        return Err(err(mpath, format!("record_stride {} is not record_bytes rounded to pack", m.record_stride)));
    }
    if m.layers.len() != m.model.n_layers {
        return Err(err(mpath, format!("{} layers listed, the model has {}", m.layers.len(), m.model.n_layers)));
    }
    let names = m.kind.section_names(gated);
    let mut spans = Vec::new();
    let mut positions = Vec::with_capacity(m.layers.len());
    for (l, layer) in m.layers.iter().enumerate() {
        let got: Vec<&str> = layer.sections.iter().map(|s| s.name.as_str()).collect();
        if got != names {
            return Err(err(mpath, format!("layer {l}: sections {got:?}, expected {names:?}")));
        }
        for (s, &rb) in layer.sections.iter().zip(&recs) {
            let stride = round_up(rb, m.pack);
            let bad = if s.record_bytes != rb {
                Some("has the wrong record_bytes for its rows' or columns' type")
            } else if s.record_stride != stride {
                Some("has a record_stride that is not record_bytes rounded to pack")
            } else if s.offset % m.align != 0 {
                Some("is not aligned")
            } else if s.len != round_up(f as u64 * stride, m.align) {
                Some("has the wrong length")
            } else if s.offset < m.align || s.offset.checked_add(s.len).is_none_or(|e| e > m.ffn.len) {
                Some("lies outside ffn.bin's data")
            } else {
                None
            };
            if let Some(bad) = bad {
                return Err(err(
                    mpath,
                    format!(
                        "layer {l} section `{}` (offset {}, len {}, record_bytes {}, record_stride {}) {bad}",
                        s.name, s.offset, s.len, s.record_bytes, s.record_stride
                    ),
                ));
            }
            spans.push((s.offset, s.offset + s.len, l, s.name.clone()));
        }
        positions.push(match &layer.order {
            None => Vec::new(),
            Some(order) => {
                let mut pos = vec![u32::MAX; f];
                if order.len() != f {
                    return Err(err(mpath, format!("layer {l}: order has {} entries, d_ffn is {f}", order.len())));
                }
                for (k, &n) in order.iter().enumerate() {
                    match pos.get_mut(n as usize) {
                        Some(p) if *p == u32::MAX => *p = k as u32,
                        _ => return Err(err(mpath, format!("layer {l}: order is not a permutation of 0..{f}"))),
                    }
                }
                pos
            }
        });
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(err(
                mpath,
                format!("layer {} section `{}` overlaps layer {} section `{}`", w[0].2, w[0].3, w[1].2, w[1].3),
            ));
        }
    }
    Ok(Checked { dtype, column_dtype, gated, position: positions })
}
