//! The predictor file (format version 1, `docs/predictor-format.md`): header with the model's identity, a
//! layer table with ranks, thresholds and crc32c, then each layer's f16 weights. The constants below mirror
//! the document.

use std::path::Path;

use spike_flash::model::config::Activation;

use crate::lowrank::CompactLowRank;
use crate::select::{LayerPredictor, Predictor};
use crate::trace::ModelIdentity;
use crate::{Error, Result};

pub const MAGIC: [u8; 8] = *b"SPKPRED\0";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 128;
pub const ENTRY_BYTES: usize = 32;
/// Weight type code of f16.
pub const WEIGHTS_F16: u32 = 1;
/// Largest `n_layers`, `d_model` or `d_ffn` a reader accepts.
pub const MAX_DIM: u64 = 1 << 24;

/// The 32 bytes of a hex sha256 (all zero for an empty string: unknown).
fn sha256_bytes(hex: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.is_empty() {
        return Ok(out);
    }
    let bad = || Error::Invalid(format!("`{hex}` is not a sha256 (64 hex digits)"));
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Lower-case hex of a sha256 (empty for all zero: unknown).
fn sha256_hex(bytes: &[u8; 32]) -> String {
    if *bytes == [0; 32] {
        String::new()
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn activation_code(a: Activation) -> u32 {
    match a {
        Activation::Silu => 0,
        Activation::Relu => 1,
        Activation::Gelu => 2,
    }
}

fn activation_of(code: u32) -> Option<Activation> {
    Some(match code {
        0 => Activation::Silu,
        1 => Activation::Relu,
        2 => Activation::Gelu,
        _ => return None,
    })
}

/// Bytes of a layer's weight block: `2 d r + 2 r n + 4 n`, `None` on overflow.
fn block_len(d: u64, r: u64, n: u64) -> Option<u64> {
    let a = d.checked_mul(r)?.checked_mul(2)?;
    let b = r.checked_mul(n)?.checked_mul(2)?;
    a.checked_add(b)?.checked_add(n.checked_mul(4)?)
}

/// The file's bytes.
pub fn to_bytes(p: &Predictor) -> Result<Vec<u8>> {
    let id = p.identity();
    let sha = sha256_bytes(&id.sha256)?;
    let n_layers = p.layers().len();
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(n_layers);
    for l in p.layers() {
        let w = &l.weights;
        let mut b = Vec::with_capacity(w.bytes());
        b.extend_from_slice(w.at_bytes());
        b.extend_from_slice(w.bt_bytes());
        for v in w.bias() {
            b.extend_from_slice(&v.to_le_bytes());
        }
        blocks.push(b);
    }
    let mut table = Vec::with_capacity(n_layers * ENTRY_BYTES);
    let mut offset = (HEADER_BYTES + n_layers * ENTRY_BYTES) as u64;
    for (l, b) in p.layers().iter().zip(&blocks) {
        table.extend_from_slice(&(l.weights.rank() as u32).to_le_bytes());
        table.extend_from_slice(&l.decision_threshold.to_le_bytes());
        table.extend_from_slice(&l.act_threshold.to_le_bytes());
        table.extend_from_slice(&crc32c::crc32c(b).to_le_bytes());
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&(b.len() as u64).to_le_bytes());
        offset += b.len() as u64;
    }
    let mut out = Vec::with_capacity(offset as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&sha);
    for v in [id.n_layers, id.d_model, id.d_ffn] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    out.extend_from_slice(&activation_code(id.activation).to_le_bytes());
    out.extend_from_slice(&WEIGHTS_F16.to_le_bytes());
    out.extend_from_slice(&p.target_recall().to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&table).to_le_bytes());
    out.resize(HEADER_BYTES - 4, 0);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&table);
    for b in &blocks {
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Writes `p` to `path` atomically.
pub fn write(path: &Path, p: &Predictor) -> Result<()> {
    let bytes = to_bytes(p)?;
    spike_flash::io::write_atomic(path, |w| w.write_all(&bytes))?;
    Ok(())
}

/// Reads the predictor file at `path`.
pub fn read(path: &Path) -> Result<Predictor> {
    // The allocation is the file's real length, never a size read from inside it.
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(path, &bytes)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Parses a predictor file's bytes; `path` names the file in errors.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Predictor> {
    let bad = |what: String| Error::format(path, what);
    let checksum = |section: &str, stored: u32, computed: u32| Error::Checksum {
        path: path.to_path_buf(),
        section: section.to_string(),
        stored,
        computed,
    };
    let len = bytes.len() as u64;
    if bytes.len() < 8 || bytes[..8] != MAGIC {
        return Err(bad("not a Spike predictor file (bad magic)".into()));
    }
    if bytes.len() < HEADER_BYTES {
        return Err(bad(format!("truncated: {len} bytes, shorter than the {HEADER_BYTES}-byte header")));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(bad(format!("format version {version}; this build reads version {VERSION}")));
    }
    let header_size = u32_at(bytes, 12);
    if header_size as usize != HEADER_BYTES {
        return Err(bad(format!("header size {header_size}, expected {HEADER_BYTES}")));
    }
    let (stored, computed) = (u32_at(bytes, 124), crc32c::crc32c(&bytes[..124]));
    if stored != computed {
        return Err(checksum("the header", stored, computed));
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&bytes[16..48]);
    let (n_layers, d, n) = (u64::from(u32_at(bytes, 48)), u64::from(u32_at(bytes, 52)), u64::from(u32_at(bytes, 56)));
    for (name, v) in [("n_layers", n_layers), ("d_model", d), ("d_ffn", n)] {
        if v == 0 || v > MAX_DIM {
            return Err(bad(format!("{name} {v} is outside 1..={MAX_DIM}")));
        }
    }
    let act_code = u32_at(bytes, 60);
    let activation = activation_of(act_code).ok_or_else(|| bad(format!("unknown activation code {act_code}")))?;
    let wtype = u32_at(bytes, 64);
    if wtype != WEIGHTS_F16 {
        return Err(bad(format!("unknown weight type {wtype} (version 1 has only 1 = f16)")));
    }
    let target_recall = f32_at(bytes, 68);
    let table_end = HEADER_BYTES as u64 + n_layers * ENTRY_BYTES as u64;
    if table_end > len {
        return Err(bad(format!(
            "truncated: the layer table of {n_layers} layers ends at byte {table_end}, past the file's {len} bytes"
        )));
    }
    let table = &bytes[HEADER_BYTES..table_end as usize];
    let (stored, computed) = (u32_at(bytes, 72), crc32c::crc32c(table));
    if stored != computed {
        return Err(checksum("the layer table", stored, computed));
    }
    // Every size is checked against the file before any weight is allocated.
    let mut entries = Vec::with_capacity(n_layers as usize);
    let mut expected_offset = table_end;
    for l in 0..n_layers as usize {
        let e = &table[l * ENTRY_BYTES..(l + 1) * ENTRY_BYTES];
        let r = u64::from(u32_at(e, 0));
        if r == 0 || r > n {
            return Err(bad(format!("layer {l}: rank {r} is outside 1..={n}")));
        }
        let (offset, block) = (u64_at(e, 16), u64_at(e, 24));
        if offset != expected_offset {
            return Err(bad(format!("layer {l}: weights at offset {offset}, expected {expected_offset}")));
        }
        let want = block_len(d, r, n).ok_or_else(|| bad(format!("layer {l}: weight size overflows")))?;
        if block != want {
            return Err(bad(format!("layer {l}: weight block of {block} bytes, expected {want} for rank {r}")));
        }
        let end = offset.checked_add(block).filter(|&e| e <= len).ok_or_else(|| {
            bad(format!("truncated: layer {l}'s weights end past the file's {len} bytes (at {offset} + {block})"))
        })?;
        entries.push((r as usize, f32_at(e, 4), f32_at(e, 8), u32_at(e, 12), offset as usize, end as usize));
        expected_offset = end;
    }
    if expected_offset != len {
        return Err(bad(format!(
            "{} bytes after the last layer's weights (file of {len} bytes)",
            len - expected_offset
        )));
    }
    let (d, n) = (d as usize, n as usize);
    let mut layers = Vec::with_capacity(entries.len());
    for (l, (r, thr, act_thr, crc, start, end)) in entries.into_iter().enumerate() {
        let block = &bytes[start..end];
        let computed = crc32c::crc32c(block);
        if computed != crc {
            return Err(checksum(&format!("layer {l}'s weights"), crc, computed));
        }
        let singles = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let (a_bytes, rest) = block.split_at(2 * d * r);
        let (b_bytes, bias_bytes) = rest.split_at(2 * r * n);
        let weights = CompactLowRank::from_parts((d, r, n), a_bytes.to_vec(), b_bytes.to_vec(), singles(bias_bytes))
            .map_err(|e| bad(format!("layer {l}: {e}")))?;
        layers.push(LayerPredictor { weights, decision_threshold: thr, act_threshold: act_thr });
    }
    let identity =
        ModelIdentity { sha256: sha256_hex(&sha256), n_layers: n_layers as usize, d_model: d, d_ffn: n, activation };
    Predictor::new(identity, target_recall, layers).map_err(|e| bad(e.to_string()))
}
