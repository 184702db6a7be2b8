//! What the fuzz harnesses (`fuzz/`, `docs/fuzzing.md`) and their replay in the tests (`tests/fuzz_replay.rs`)
//! do with one input of this crate's readers: hand it to the reader the way it meets files, then do what a
//! caller does next with whatever it accepted. A reader must answer every input with a value or an error; a
//! panic, an abort or a huge allocation here is a bug in the reader. Not part of the crate's API.
//!
//! Traces and predictor files carry crc32c checksums that a mutated input almost never matches, which would
//! stop nearly every input at the first check. So each input of these two is read twice: as given, and with
//! its checksums recomputed where the input's own header places them ([`fix_trace_checksums`],
//! [`fix_predictor_checksums`]), which lets the fuzzer reach the checks behind them.

use std::path::Path;

use ndarray::Array2;

use crate::calibrate::Thresholds;
use crate::trace::Trace;

/// A trace file written at `path`, opened, then every layer (up to 64) read, its checksums checked, and the
/// document split computed; then the same with the checksums made right. Returns whether either opened.
pub fn trace(path: &Path, data: &[u8]) -> bool {
    let raw = trace_once(path, data);
    match fix_trace_checksums(data) {
        Some(fixed) if fixed != data => trace_once(path, &fixed) || raw,
        _ => raw,
    }
}

fn trace_once(path: &Path, data: &[u8]) -> bool {
    if std::fs::write(path, data).is_err() {
        return false;
    }
    let Ok(t) = Trace::open(path) else { return false };
    let _ = t.documents();
    let _ = t.split(0.25, 1);
    for l in 0..t.meta().n_layers.min(64) {
        let _ = t.layer(l);
    }
    true
}

/// A thresholds file written at `path`, loaded, and checked against its own model. Returns whether it loaded.
pub fn thresholds(path: &Path, data: &[u8]) -> bool {
    if std::fs::write(path, data).is_err() {
        return false;
    }
    let Ok(t) = Thresholds::load(path) else { return false };
    let _ = t.check_model(path, &t.model.clone());
    true
}

/// A predictor file parsed from bytes, then every layer (up to 64) run on one all-ones input of d_model
/// values (d_model up to 4096); then the same with the checksums made right. Returns whether either parsed.
pub fn predictor(data: &[u8]) -> bool {
    let raw = predictor_once(data);
    match fix_predictor_checksums(data) {
        Some(fixed) if fixed != data => predictor_once(&fixed) || raw,
        _ => raw,
    }
}

fn predictor_once(data: &[u8]) -> bool {
    let Ok(p) = crate::file::from_bytes(Path::new("fuzz.pred"), data) else { return false };
    let d = p.identity().d_model;
    if d <= 4096 {
        let x = Array2::<f32>::ones((1, d));
        for l in 0..p.layers().len().min(64) {
            let _ = p.predict_batch(l, x.view());
        }
    }
    true
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// Writes the crc32c of `b[from..to]` at `at`, if all three lie in `b`.
fn put_crc(b: &mut [u8], from: u64, to: u64, at: u64) -> Option<()> {
    let (from, to, at) = (usize::try_from(from).ok()?, usize::try_from(to).ok()?, usize::try_from(at).ok()?);
    let crc = crc32c::crc32c(b.get(from..to)?);
    b.get_mut(at..at.checked_add(4)?)?.copy_from_slice(&crc.to_le_bytes());
    Some(())
}

/// `data` with its trace checksums recomputed (`docs/trace-format.md`): each layer's inputs and activations
/// (up to 64 layers, where they lie in the input) and the header's, at the places the header's own fields
/// give. `None` when the fixed header is absent.
pub fn fix_trace_checksums(data: &[u8]) -> Option<Vec<u8>> {
    use crate::trace::{FIXED_HEADER, MAGIC};
    if data.len() < FIXED_HEADER || &data[..8] != MAGIC {
        return None;
    }
    let mut b = data.to_vec();
    let hlen = u64::from(u32_at(&b, 12)?);
    let (n_layers, d, f) = (u64::from(u32_at(&b, 48)?), u64::from(u32_at(&b, 52)?), u64::from(u32_at(&b, 56)?));
    let t = u64_at(&b, 80)?;
    let inputs = t.checked_mul(d)?.checked_mul(2)?;
    let acts = t.checked_mul(f)?.checked_mul(2)?;
    let section = inputs.checked_add(acts)?.checked_add(8)?;
    for l in 0..n_layers.min(64) {
        let base = hlen.checked_add(section.checked_mul(l)?)?;
        let crcs = base.checked_add(inputs)?.checked_add(acts)?;
        let _ = put_crc(&mut b, base, base + inputs, crcs);
        let _ = put_crc(&mut b, base + inputs, crcs, crcs + 4);
    }
    if hlen >= 4 {
        let _ = put_crc(&mut b, 0, hlen - 4, hlen - 4);
    }
    Some(b)
}

/// `data` with its predictor-file checksums recomputed (`docs/predictor-format.md`): each layer's weights (up
/// to 64 layers, where the table places them in the input), the layer table's, then the header's. `None` when
/// the header is absent.
pub fn fix_predictor_checksums(data: &[u8]) -> Option<Vec<u8>> {
    use crate::file::{ENTRY_BYTES, HEADER_BYTES, MAGIC};
    if data.len() < HEADER_BYTES || data[..8] != MAGIC {
        return None;
    }
    let mut b = data.to_vec();
    let n_layers = u64::from(u32_at(&b, 48)?);
    let (header, entry) = (HEADER_BYTES as u64, ENTRY_BYTES as u64);
    for l in 0..n_layers.min(64) {
        let e = usize::try_from(header + l * entry).ok()?;
        let (Some(offset), Some(block)) = (u64_at(&b, e + 16), u64_at(&b, e + 24)) else { break };
        let _ = put_crc(&mut b, offset, offset.saturating_add(block), e as u64 + 12);
    }
    let table_end = header.checked_add(n_layers.checked_mul(entry)?)?;
    let _ = put_crc(&mut b, header, table_end, 72);
    let _ = put_crc(&mut b, 0, 124, 124);
    Some(b)
}
