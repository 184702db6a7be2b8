//! The flash layout of a converted model (`NAME.spike/`): `manifest.json`, `resident.bin` (a GGUF file of the
//! tensors that stay in DRAM) and `ffn.bin` (the FFN neurons, one record per neuron, in aligned sections).
//! `docs/format.md` describes the format byte by byte; the constants and types here mirror it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::model::quant::DType;
use crate::{Error, Result};

mod checks;
mod read;
mod resident;
mod write;

pub use read::{Layout, NeuronF32, VerifyReport};
pub use resident::{Loaded, Resident, TensorSpan};
pub use write::{
    check_order, write, ConvertOptions, RecordDType, SectionRecords, Summary, HF_CONFIG_KEY, HF_TOKENIZER_KEY,
};

/// The manifest's `format` member.
pub const FORMAT: &str = "spike-layout";
/// The format version this code writes and reads.
pub const VERSION: u32 = 3;
/// `ffn.bin`'s magic.
pub const FFN_MAGIC: &[u8; 8] = b"SPIKEFFN";
/// Bytes of `ffn.bin`'s header that carry data (the header occupies `align` bytes).
pub const HEADER_USED: usize = 84;
/// The manifest's last member: its own crc32c.
pub const MANIFEST_CRC_KEY: &str = "manifest_crc32c";
/// The smallest allowed alignment.
pub const MIN_ALIGN: u64 = 512;
/// The default alignment.
pub const DEFAULT_ALIGN: u64 = 4096;
/// File names inside a layout directory.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const RESIDENT_FILE: &str = "resident.bin";
pub const FFN_FILE: &str = "ffn.bin";
/// Marks a directory an unfinished conversion is writing into.
pub const PARTIAL_MARK: &str = ".partial-";

/// How a layer's neurons are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// One record per neuron holding all its parts: one read per neuron.
    Bundled,
    /// One section per matrix: one read per neuron and matrix.
    Split,
}

impl LayoutKind {
    /// The code in `ffn.bin`'s header.
    pub const fn code(self) -> u32 {
        match self {
            LayoutKind::Bundled => 0,
            LayoutKind::Split => 1,
        }
    }

    /// The section names of a layer, for a gated (Llama) or plain (OPT) FFN.
    pub fn section_names(self, gated: bool) -> &'static [&'static str] {
        match (self, gated) {
            (LayoutKind::Bundled, _) => &["bundle"],
            (LayoutKind::Split, true) => &["gate", "up", "down"],
            (LayoutKind::Split, false) => &["fc1", "fc2"],
        }
    }
}

/// `source` in the manifest: the converted model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    pub len: u64,
    pub sha256: String,
}

/// `resident` in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentInfo {
    pub len: u64,
    pub crc32c: u32,
    /// Each tensor's crc32c over its data bytes.
    pub tensors: BTreeMap<String, u32>,
}

/// `ffn` in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FfnInfo {
    pub len: u64,
    pub header_crc32c: u32,
    /// Where the checksum table lies in `ffn.bin`.
    pub checksums: ChecksumsInfo,
}

/// `ffn.checksums` in the manifest: the checksum table (a crc32c per record) at the end of `ffn.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumsInfo {
    pub offset: u64,
    /// `4 * n_layers * n_sections * d_ffn` rounded up to `align`.
    pub len: u64,
    /// Over all `len` bytes.
    pub crc32c: u32,
}

/// One section of `ffn.bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    /// Payload bytes of one record of this section (a neuron when bundled; a row or a column when split).
    pub record_bytes: u64,
    /// Distance between consecutive records of this section: `record_bytes` rounded up to `pack`.
    pub record_stride: u64,
    pub crc32c: u32,
}

/// One layer in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// `order[k]` is the neuron stored at position `k`; `None` is the identity.
    pub order: Option<Vec<u32>>,
    pub sections: Vec<Section>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub layout_id: String,
    pub model: ModelConfig,
    pub source: SourceInfo,
    pub kind: LayoutKind,
    /// Element type of the rows (gate, up, fc1), as ggml names it (`f32`, `f16`, `q8_0`, `q4_0`, `q4_1`).
    pub dtype: String,
    /// Element type of the columns (down, fc2), named like `dtype`.
    pub column_dtype: String,
    pub align: u64,
    /// Payload bytes of one record of a layer's first section: a neuron (bundled) or a row (split).
    pub record_bytes: u64,
    /// `record_bytes` rounded up to `pack`.
    pub record_stride: u64,
    pub pack: u64,
    pub resident: ResidentInfo,
    pub ffn: FfnInfo,
    pub layers: Vec<LayerInfo>,
}

/// The record element type named `name`, if the format allows it.
pub fn dtype_by_name(name: &str) -> Option<DType> {
    [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1].into_iter().find(|t| t.name() == name)
}

/// `x` rounded up to a multiple of `a` (`a > 0`).
pub fn round_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Payload bytes of one record of each section of a layer, in the order of [`LayoutKind::section_names`]:
/// bundled, one neuron (gate row | up row | down column, or fc1 row | fc2 column); split, a row
/// of `row` elements (gate, up, fc1) or a column of `column` elements (down, fc2). `None` when `d` is not a
/// whole number of blocks of either type.
pub fn section_record_bytes(kind: LayoutKind, row: DType, column: DType, d: usize, gated: bool) -> Option<Vec<u64>> {
    let rb = row.bytes_for(d as u64)?;
    let cb = column.bytes_for(d as u64)?;
    Some(match (kind, gated) {
        (LayoutKind::Bundled, true) => vec![2 * rb + cb],
        (LayoutKind::Bundled, false) => vec![rb + cb],
        (LayoutKind::Split, true) => vec![rb, rb, cb],
        (LayoutKind::Split, false) => vec![rb, cb],
    })
}

/// Payload bytes of one record of a layer's first section (the manifest's and header's `record_bytes`): a
/// whole neuron (bundled) or one row (split); `None` when `d` is not a whole number of blocks of either type.
pub fn record_bytes(kind: LayoutKind, row: DType, column: DType, d: usize, gated: bool) -> Option<u64> {
    section_record_bytes(kind, row, column, d, gated).and_then(|v| v.first().copied())
}

/// Bytes of the checksum table of `n_layers` layers of `n_sections` sections of `d_ffn` records: a u32 per
/// record, rounded up to `align`; `None` on overflow.
pub fn checksum_table_len(n_layers: usize, n_sections: usize, d_ffn: usize, align: u64) -> Option<u64> {
    let entries = (n_layers as u64).checked_mul(n_sections as u64)?.checked_mul(d_ffn as u64)?;
    entries.checked_mul(4)?.checked_next_multiple_of(align)
}

/// Adds the manifest's own checksum to `json`, a manifest serialized without it: `,\n  "manifest_crc32c": N`
/// inserted before the closing brace, `N` the crc32c of every byte before the key's opening quote
/// (`docs/format.md`). What the writer does last; a tool (or test) that edits a manifest on purpose seals it
/// again with this.
pub fn seal_manifest(json: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::Invalid("a manifest to seal must be a JSON object with members".into());
    let close = json.iter().rposition(|&b| b == b'}').ok_or_else(bad)?;
    let body = json[..close].trim_ascii_end();
    if !body.trim_ascii_start().starts_with(b"{") || body.ends_with(b"{") {
        return Err(bad());
    }
    let mut out = body.to_vec();
    out.extend_from_slice(b",\n  ");
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(format!("\"{MANIFEST_CRC_KEY}\": {crc}\n}}\n").as_bytes());
    Ok(out)
}

/// Checks a manifest's own checksum (see [`seal_manifest`]): `Ok(false)` when the manifest has none, `Err`
/// saying what is wrong when it has one that does not match or is not its last member.
pub fn check_manifest_seal(text: &[u8]) -> Result<bool, String> {
    let key = format!("\"{MANIFEST_CRC_KEY}\"");
    let Some(at) = text.windows(key.len()).rposition(|w| w == key.as_bytes()) else { return Ok(false) };
    // What follows the key: `: N` then only the closing brace, with white space anywhere between.
    let rest = text[at + key.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":").ok_or_else(|| format!("`{MANIFEST_CRC_KEY}` has no value"))?;
    let rest = rest.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let stored = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse::<u32>().ok());
    let Some(stored) = stored else { return Err(format!("`{MANIFEST_CRC_KEY}` is not a 32-bit unsigned integer")) };
    if rest[digits..].trim_ascii() != b"}" {
        return Err(format!("`{MANIFEST_CRC_KEY}` is not the last member: the manifest was edited, or is damaged"));
    }
    let computed = crc32c::crc32c(&text[..at]);
    if computed != stored {
        return Err(format!(
            "crc32c {computed:08x}, its `{MANIFEST_CRC_KEY}` says {stored:08x}: the manifest is damaged, or was \
             edited (an edit must be sealed again, docs/format.md)"
        ));
    }
    Ok(true)
}

/// The 16 bytes a layout id's 32 hex digits encode.
pub fn layout_id_bytes(id: &str) -> Option<[u8; 16]> {
    if id.len() != 32 || !id.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The fields of `ffn.bin`'s header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FfnHeader {
    pub version: u32,
    pub align: u32,
    pub n_layers: u32,
    pub kind: u32,
    pub dtype: u32,
    pub record_bytes: u32,
    pub record_stride: u64,
    pub layout_id: [u8; 16],
    pub column_dtype: u32,
    /// The checksum table's crc32c, offset and length.
    pub table_crc32c: u32,
    pub table_offset: u64,
    pub table_len: u64,
}

impl FfnHeader {
    /// The used header bytes, crc included.
    pub fn encode(&self) -> [u8; HEADER_USED] {
        let mut h = [0u8; HEADER_USED];
        h[0..8].copy_from_slice(FFN_MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&self.align.to_le_bytes());
        h[16..20].copy_from_slice(&self.n_layers.to_le_bytes());
        h[20..24].copy_from_slice(&self.kind.to_le_bytes());
        h[24..28].copy_from_slice(&self.dtype.to_le_bytes());
        h[28..32].copy_from_slice(&self.record_bytes.to_le_bytes());
        h[32..40].copy_from_slice(&self.record_stride.to_le_bytes());
        h[40..56].copy_from_slice(&self.layout_id);
        h[56..60].copy_from_slice(&self.column_dtype.to_le_bytes());
        h[60..64].copy_from_slice(&self.table_crc32c.to_le_bytes());
        h[64..72].copy_from_slice(&self.table_offset.to_le_bytes());
        h[72..80].copy_from_slice(&self.table_len.to_le_bytes());
        let crc = crc32c::crc32c(&h[..80]);
        h[80..84].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header's own crc32c (bytes 80..84), as the manifest's `ffn.header_crc32c` records it.
    pub fn crc_of(h: &[u8; HEADER_USED]) -> u32 {
        u32::from_le_bytes([h[80], h[81], h[82], h[83]])
    }

    /// Parses the used header bytes: `Err` names what is wrong (magic, version, crc).
    pub fn decode(h: &[u8; HEADER_USED]) -> Result<FfnHeader, String> {
        if &h[0..8] != FFN_MAGIC {
            return Err(format!("bad magic {:?}, expected {:?}", &h[0..8], std::str::from_utf8(FFN_MAGIC)));
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        match u32_at(8) {
            VERSION => {}
            v @ 1..VERSION => return Err(format!("format version {v}: {}", OLD_VERSION)),
            v => return Err(format!("format version {v}, this reader reads version {VERSION} only")),
        }
        let crc = crc32c::crc32c(&h[..80]);
        if crc != Self::crc_of(h) {
            return Err(format!("header crc32c is {:08x}, the header says {:08x}", crc, Self::crc_of(h)));
        }
        let mut layout_id = [0u8; 16];
        layout_id.copy_from_slice(&h[40..56]);
        Ok(FfnHeader {
            version: u32_at(8),
            align: u32_at(12),
            n_layers: u32_at(16),
            kind: u32_at(20),
            dtype: u32_at(24),
            record_bytes: u32_at(28),
            record_stride: u64_at(32),
            layout_id,
            column_dtype: u32_at(56),
            table_crc32c: u32_at(60),
            table_offset: u64_at(64),
            table_len: u64_at(72),
        })
    }
}

/// What a reader says of a layout of an older format version.
pub const OLD_VERSION: &str = "a layout of an older format (without a checksum per record); convert the model \
                               again with `spike convert`";

/// Reads a per-layer list of neuron ids (a neuron order for [`ConvertOptions::order`], a hot list for the
/// neuron cache): `[[...], ...]`, `{"order": [[...], ...]}`, or a hot-neuron file of
/// `spike trace-stats` (`{"layers": [{"neurons": [...]}, ...]}`).
pub fn read_neuron_lists(path: &Path) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(path, &e))?;
    let v = match (v.get("order"), v.get("layers")) {
        (Some(o), _) => o.clone(),
        (None, Some(serde_json::Value::Array(layers))) => {
            serde_json::Value::Array(layers.iter().map(|l| l.get("neurons").cloned().unwrap_or_default()).collect())
        }
        _ => v,
    };
    serde_json::from_value(v).map_err(|e| Error::Layout {
        path: path.to_path_buf(),
        what: format!("expected an array of per-layer neuron id arrays: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_catches_a_flipped_bit() {
        let h = FfnHeader {
            version: VERSION,
            align: 4096,
            n_layers: 3,
            kind: 1,
            dtype: 3,
            record_bytes: 1332,
            record_stride: 4096,
            layout_id: layout_id_bytes("00112233445566778899aabbccddeeff").expect("id"),
            column_dtype: 8,
            table_crc32c: 0xdead_beef,
            table_offset: 1 << 33,
            table_len: 8192,
        };
        let mut b = h.encode();
        assert_eq!(&b[56..60], &[8, 0, 0, 0]);
        assert_eq!(&b[60..64], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[64..72], &(1u64 << 33).to_le_bytes());
        assert_eq!(&b[80..84], &crc32c::crc32c(&b[..80]).to_le_bytes());
        assert_eq!(FfnHeader::decode(&b), Ok(h));
        b[17] ^= 1;
        assert!(FfnHeader::decode(&b).expect_err("crc").contains("crc32c"));
        b[17] ^= 1;
        b[8] = 2;
        let e = FfnHeader::decode(&b).expect_err("version 2");
        assert!(e.contains("format version 2") && e.contains("spike convert"), "{e}");
        b[8] = 9;
        assert!(FfnHeader::decode(&b).expect_err("version 9").contains("reads version 3 only"));
        b[0] = b'X';
        assert!(FfnHeader::decode(&b).expect_err("magic").contains("magic"));
    }

    #[test]
    fn a_sealed_manifest_checks_and_any_change_is_caught() {
        let sealed = seal_manifest(b"{\n  \"a\": 1,\n  \"b\": [2, 3]\n}\n").expect("seal");
        let text = String::from_utf8(sealed.clone()).expect("utf-8");
        let at = text.find("\"manifest_crc32c\"").expect("key");
        assert_eq!(&text[..at], "{\n  \"a\": 1,\n  \"b\": [2, 3],\n  ");
        assert_eq!(text[at..].trim_end(), format!("\"manifest_crc32c\": {}\n}}", crc32c::crc32c(&sealed[..at])));
        let v: serde_json::Value = serde_json::from_slice(&sealed).expect("still JSON");
        assert_eq!(v["b"][1], 3);
        assert_eq!(check_manifest_seal(&sealed), Ok(true));
        assert_eq!(check_manifest_seal(b"{\"a\": 1}"), Ok(false), "no seal");
        for (i, bit) in (0..sealed.len()).flat_map(|i| [0x01u8, 0x20, 0x80].map(|b| (i, b))) {
            let mut m = sealed.clone();
            m[i] ^= bit;
            // Every single flipped bit is caught: by the crc, or as a seal that is no longer one (the key or its
            // place damaged: then the manifest has no seal, or its JSON breaks, which the reader refuses too).
            let caught = match check_manifest_seal(&m) {
                Err(_) => true,
                Ok(false) => true,
                Ok(true) => false,
            };
            assert!(caught, "flip of {bit:#x} at byte {i}");
        }
        let mut moved: serde_json::Value = serde_json::from_slice(&sealed).expect("json");
        moved["z"] = 1.into();
        let e = check_manifest_seal(serde_json::to_string(&moved).expect("json").as_bytes()).expect_err("not last");
        assert!(e.contains("not the last member"), "{e}");
        assert!(seal_manifest(b"{}").is_err() && seal_manifest(b"[1]").is_err());
    }

    #[test]
    fn sizes() {
        use LayoutKind::{Bundled, Split};
        assert_eq!(record_bytes(Bundled, DType::Q4_1, DType::Q4_1, 64, true), Some(3 * 40));
        assert_eq!(record_bytes(Bundled, DType::Q4_1, DType::Q8_0, 64, true), Some(2 * 40 + 68));
        assert_eq!(record_bytes(Bundled, DType::F32, DType::F32, 64, false), Some(2 * 256));
        assert_eq!(record_bytes(Bundled, DType::F16, DType::Q8_0, 64, false), Some(128 + 68));
        assert_eq!(record_bytes(Split, DType::Q8_0, DType::Q8_0, 64, true), Some(68));
        assert_eq!(record_bytes(Split, DType::Q8_0, DType::Q8_0, 48, true), None);
        assert_eq!(record_bytes(Split, DType::F32, DType::Q8_0, 48, true), None, "48 is not a whole q8_0 block");
        assert_eq!(section_record_bytes(Split, DType::Q4_1, DType::Q8_0, 64, true), Some(vec![40, 40, 68]));
        assert_eq!(section_record_bytes(Split, DType::F16, DType::Q4_1, 64, false), Some(vec![128, 40]));
        // The default model: d_model 576, Q4_1 rows and q8_0 columns.
        assert_eq!(record_bytes(Bundled, DType::Q4_1, DType::Q8_0, 576, true), Some(1332));
        assert_eq!(record_bytes(Bundled, DType::Q4_1, DType::Q4_1, 576, true), Some(1080));
        assert_eq!(round_up(1080, 4096), 4096);
        assert_eq!(round_up(8192, 4096), 8192);
        assert_eq!(dtype_by_name("q4_1"), Some(DType::Q4_1));
        assert_eq!(dtype_by_name("bf16"), None);
        assert_eq!(layout_id_bytes("zz"), None);
        // The default model bundled: 30 layers x 1536 records, 4 bytes each, in 4 KiB units.
        assert_eq!(checksum_table_len(30, 1, 1536, 4096), Some(184_320));
        assert_eq!(checksum_table_len(2, 3, 100, 512), Some(2560));
        assert_eq!(checksum_table_len(usize::MAX, 3, 100, 512), None);
    }
}
