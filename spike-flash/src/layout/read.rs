//! Opening, validating and verifying a flash layout directory (`docs/format.md`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    check_manifest_seal, checksum_table_len, dtype_by_name, layout_id_bytes, round_up, section_record_bytes, FfnHeader,
    Manifest, FFN_FILE, FORMAT, HEADER_USED, MANIFEST_CRC_KEY, MANIFEST_FILE, MIN_ALIGN, OLD_VERSION, PARTIAL_MARK,
    RESIDENT_FILE, VERSION,
};
use crate::model::config::ModelConfig;
use crate::model::quant::{self, DType};
use crate::{Error, Result};

/// An opened layout: its manifest, `ffn.bin`'s header and its checksum table checked ([`Layout::open`]).
#[derive(Debug)]
pub struct Layout {
    pub(super) dir: PathBuf,
    pub(super) manifest: Manifest,
    /// Element type of the rows (gate, up, fc1).
    pub(super) dtype: DType,
    /// Element type of the columns (down, fc2).
    pub(super) column_dtype: DType,
    pub(super) gated: bool,
    /// Per layer, the position of each neuron (empty for the identity order).
    pub(super) position: Vec<Vec<u32>>,
    /// The checksum table: a crc32c per record, by layer, section and position.
    pub(super) checksums: Vec<u32>,
    /// Per section of a layer: where its part lies in a payload of the bundled format (offset, length).
    pub(super) parts: Vec<(usize, usize)>,
}

/// What [`Layout::verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub sections: usize,
    /// Records checked against the checksum table.
    pub records: u64,
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
}

fn err(path: &Path, what: impl Into<String>) -> Error {
    Error::Layout { path: path.to_path_buf(), what: what.into() }
}

impl Layout {
    /// Opens the layout in `dir`, checking its structure (`docs/format.md`, Validation on load): the manifest
    /// (its own checksum first), `ffn.bin`'s length and header, and its checksum table, which it loads. Neither
    /// `resident.bin`'s contents nor the records are read: what runs a model opens a layout with
    /// [`Layout::load`], which checks `resident.bin` too; the records are checked as they are read.
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
        // The seal first: a damaged manifest is reported as damaged, not as whatever the damage made of it.
        let sealed = check_manifest_seal(&text).map_err(|w| err(&mpath, w))?;
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::json(&mpath, &e))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(err(&mpath, format!("`format` is {other:?}, expected \"{FORMAT}\""))),
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v @ 1..) if v < u64::from(VERSION) => {
                return Err(err(&mpath, format!("format version {v}: {OLD_VERSION}")));
            }
            other => {
                return Err(err(
                    &mpath,
                    format!("format version {}, this reader reads version {VERSION} only", show(other)),
                ))
            }
        }
        if !sealed {
            return Err(err(
                &mpath,
                format!("has no `{MANIFEST_CRC_KEY}` as its last member: damaged, or edited without sealing it again"),
            ));
        }
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| err(&mpath, format!("does not describe a version {VERSION} layout: {e}")))?;
        let Checked { dtype, column_dtype, gated, position, parts } = check_manifest(&mpath, &manifest)?;
        let mut layout = Layout {
            dir: dir.to_path_buf(),
            manifest,
            dtype,
            column_dtype,
            gated,
            position,
            checksums: Vec::new(),
            parts,
        };
        layout.checksums = layout.check_files()?;
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

    /// Checks `ffn.bin`'s length and header against the manifest and `resident.bin`'s length; returns the
    /// checksum table, read and checked.
    fn check_files(&self) -> Result<Vec<u32>> {
        let m = &self.manifest;
        let ffn_path = self.dir.join(FFN_FILE);
        let f = File::open(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
        let len = f.metadata().map_err(|e| Error::io(&ffn_path, e))?.len();
        if len != m.ffn.len {
            return Err(Error::Length { path: ffn_path, len, expected: m.ffn.len, what: "the manifest".into() });
        }
        let mut h = [0u8; HEADER_USED];
        read_exact(&f, &ffn_path, &mut h, 0)?;
        let hd = FfnHeader::decode(&h).map_err(|w| err(&ffn_path, w))?;
        // The rest of the header block is zero. `check_manifest` placed the checksum table at or after `align`,
        // inside the manifest's `ffn.len`, which is the file's length: the block lies inside the file. Read in
        // pieces of at most 64 KiB, whatever `align` says.
        let mut piece = vec![0u8; (m.align as usize).min(1 << 16)];
        let mut at = HEADER_USED as u64;
        while at < m.align {
            let n = piece.len().min((m.align - at) as usize);
            read_exact(&f, &ffn_path, &mut piece[..n], at)?;
            if let Some(i) = piece[..n].iter().position(|&b| b != 0) {
                return Err(err(
                    &ffn_path,
                    format!("byte {} of the header block is not zero: the file is damaged", at + i as u64),
                ));
            }
            at += n as u64;
        }
        let want_id = layout_id_bytes(&m.layout_id);
        let t = &m.ffn.checksums;
        let checks: [(&str, bool); 13] = [
            ("version", hd.version == VERSION),
            ("header crc32c (manifest)", FfnHeader::crc_of(&h) == m.ffn.header_crc32c),
            ("layout_id", Some(hd.layout_id) == want_id),
            ("align", u64::from(hd.align) == m.align),
            ("n_layers", hd.n_layers as usize == m.layers.len()),
            ("kind", hd.kind == m.kind.code()),
            ("dtype", hd.dtype == self.dtype.ggml_id()),
            ("column_dtype", hd.column_dtype == self.column_dtype.ggml_id()),
            ("record_bytes", u64::from(hd.record_bytes) == m.record_bytes),
            ("record_stride", hd.record_stride == m.record_stride),
            ("checksum table offset", hd.table_offset == t.offset),
            ("checksum table length", hd.table_len == t.len),
            ("checksum table crc32c", hd.table_crc32c == t.crc32c),
        ];
        if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(err(
                &ffn_path,
                format!("header's {what} does not match the manifest: files of two conversions?"),
            ));
        }
        // Likewise no larger than the file.
        let mut table = vec![0u8; t.len as usize];
        read_exact(&f, &ffn_path, &mut table, t.offset)?;
        let crc = crc32c::crc32c(&table);
        if crc != t.crc32c {
            return Err(Error::Checksum {
                path: ffn_path,
                place: format!("the checksum table (offset {}, {} bytes)", t.offset, t.len),
                stored: t.crc32c,
                computed: crc,
            });
        }
        let entries = m.layers.len() * self.parts.len() * m.model.d_ffn;
        let checksums =
            table.chunks_exact(4).take(entries).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let rpath = self.dir.join(RESIDENT_FILE);
        let rlen = std::fs::metadata(&rpath).map_err(|e| Error::io(&rpath, e))?.len();
        if rlen != m.resident.len {
            return Err(err(&rpath, format!("is {rlen} bytes, the manifest says {}", m.resident.len)));
        }
        Ok(checksums)
    }

    /// The payload of neuron `neuron` (original index) of `layer`, in the bundled record format whatever the
    /// layout's kind (split layouts' rows and column are read from each section and concatenated), checked
    /// against the checksum table.
    pub fn neuron_record(&self, layer: usize, neuron: usize) -> Result<Vec<u8>> {
        let ffn_path = self.dir.join(FFN_FILE);
        let file = File::open(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
        let mut out = Vec::with_capacity(self.payload_bytes());
        for (off, len) in self.record_spans(layer, neuron)? {
            let start = out.len();
            out.resize(start + len as usize, 0);
            read_exact(&file, &ffn_path, &mut out[start..], off)?;
        }
        self.check_records(layer, &[neuron as u32], &out)?;
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
        rows * self.row_bytes() + self.column_bytes()
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
    /// payload format (gate | up | down, or fc1 | fc2; a split layout's parts land one after the other).
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

    /// Decodes a payload returned by [`Layout::neuron_record`].
    pub fn decode_neuron(&self, bytes: &[u8]) -> Result<NeuronF32> {
        let d = self.manifest.model.d_model;
        let (rb, cb) = (self.row_bytes(), self.column_bytes());
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
            Ok(NeuronF32 { first, up: Some(up), second_col: decode(self.column_dtype, 2 * rb, cb)? })
        } else {
            Ok(NeuronF32 {
                first: decode(self.dtype, 0, rb)?,
                up: None,
                second_col: decode(self.column_dtype, rb, cb)?,
            })
        }
    }
}

/// Reads `buf.len()` bytes at `offset` of `file` (at `path`); a failure or a short read names both.
pub(super) fn read_exact(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        offset,
        length: buf.len() as u64,
        source: e,
    })
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
    /// Per section of a layer: its part of a payload in the bundled format (offset, length).
    parts: Vec<(usize, usize)>,
}

/// Checks the manifest's internal consistency; returns the row and column types, whether the FFN is gated,
/// the per-layer neuron positions and where each section's part lies in a payload.
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
    let t = &m.ffn.checksums;
    let table_len = checksum_table_len(m.layers.len(), names.len(), f, m.align);
    let placed = t.offset >= m.align && t.offset.is_multiple_of(m.align);
    if !placed || Some(t.len) != table_len || t.offset.checked_add(t.len) != Some(m.ffn.len) {
        return Err(err(
            mpath,
            format!(
                "ffn.checksums (offset {}, len {}) is not an aligned table of {} bytes after the header, ending \
                 ffn.bin ({} bytes)",
                t.offset,
                t.len,
                show(table_len),
                m.ffn.len
            ),
        ));
    }
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
            } else if Some(s.len) != (f as u64).checked_mul(stride).map(|b| round_up(b, m.align)) {
                Some("has the wrong length")
            } else if s.offset < m.align || s.offset.checked_add(s.len).is_none_or(|e| e > t.offset) {
                Some("lies outside ffn.bin's data (between the header and the checksum table)")
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
                if order.len() != f {
                    return Err(err(mpath, format!("layer {l}: order has {} entries, d_ffn is {f}", order.len())));
                }
                let mut pos = vec![u32::MAX; f];
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
    let mut parts = Vec::with_capacity(recs.len());
    let mut at = 0;
    for &rb in &recs {
        parts.push((at, rb as usize));
        at += rb as usize;
    }
    Ok(Checked { dtype, column_dtype, gated, position: positions, parts })
}
