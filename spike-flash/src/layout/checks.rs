//! The records' checksums (`docs/format.md`, Checksum table): each record read from `ffn.bin` against its entry
//! in the checksum table, as the flash loop's reads arrive ([`Layout::check_records`]), and every record and
//! section in [`Layout::verify`].

use std::fs::File;

use rayon::prelude::*;

use super::read::{read_exact, Layout, VerifyReport};
use super::FFN_FILE;
use crate::{Error, Result};

/// Batches of at least this many bytes are checked on every thread of the pool; smaller ones on the caller's.
const PARALLEL_BYTES: usize = 256 << 10;

/// The records of one section that fail their crc32c among those checked together.
#[derive(Debug, Clone, Copy)]
struct Bad {
    /// The section's index in its layer.
    section: usize,
    count: usize,
    /// The lowest and highest positions that fail.
    first: u32,
    last: u32,
    /// What the record at `first` holds and what its checksums say.
    neuron: u32,
    stored: u32,
    computed: u32,
}

impl Bad {
    /// The record at position `pos` of section `section`, holding neuron `neuron`, whose entry in the checksum
    /// table is `stored`: a failure when `bytes` do not match it.
    fn check(section: usize, pos: u32, neuron: u32, stored: u32, bytes: &[u8]) -> Option<Bad> {
        let computed = crc32c::crc32c(bytes);
        (stored != computed).then_some(Bad { section, count: 1, first: pos, last: pos, neuron, stored, computed })
    }

    /// The failures of `a` and `b` together: those of the lower section when they differ.
    fn merge(a: Option<Bad>, b: Option<Bad>) -> Option<Bad> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) if a.section != b.section => Some(if a.section < b.section { a } else { b }),
            (Some(a), Some(b)) => {
                let lo = if a.first <= b.first { a } else { b };
                Some(Bad { count: a.count + b.count, last: a.last.max(b.last), ..lo })
            }
        }
    }
}

impl Layout {
    /// DRAM the checksum table takes (4 bytes per record), counted in a flash run's budget.
    pub fn checksum_bytes(&self) -> u64 {
        (self.checksums.capacity() * 4) as u64
    }

    /// The position (place in file order) of neuron `neuron` of `layer`.
    fn position_of(&self, layer: usize, neuron: u32) -> u32 {
        match self.position.get(layer) {
            Some(p) if !p.is_empty() => p[neuron as usize],
            _ => neuron,
        }
    }

    /// Checks records read from `ffn.bin` against the checksum table: `rows` holds the payloads of the neurons
    /// `neurons` (original numbering) of `layer`, one after the other in the bundled payload format
    /// ([`Layout::neuron_reads`], [`Layout::payload_bytes`] each). Each part of a payload is checked against
    /// the entry of its section and position. A mismatch is an [`Error::RecordChecksum`] naming `ffn.bin`, the
    /// layer, the section, the positions that fail and the byte offset of the first. Large batches are checked
    /// on every thread of the pool.
    pub fn check_records(&self, layer: usize, neurons: &[u32], rows: &[u8]) -> Result<()> {
        let m = &self.manifest;
        let f = m.model.d_ffn;
        let payload = self.payload_bytes();
        if layer >= m.layers.len() {
            return Err(Error::Invalid(format!("layer {layer} of {}", m.layers.len())));
        }
        if rows.len() < neurons.len() * payload {
            return Err(Error::Invalid(format!(
                "{} bytes hold fewer than {} records of {payload} bytes",
                rows.len(),
                neurons.len()
            )));
        }
        if let Some(n) = neurons.iter().find(|&&n| n as usize >= f) {
            return Err(Error::Invalid(format!("neuron {n} of {f}")));
        }
        let ns = self.parts.len();
        let table = &self.checksums[layer * ns * f..(layer + 1) * ns * f];
        let check = |k: usize| -> Option<Bad> {
            let neuron = neurons[k];
            let pos = self.position_of(layer, neuron);
            let row = &rows[k * payload..(k + 1) * payload];
            self.parts.iter().enumerate().find_map(|(section, &(at, len))| {
                Bad::check(section, pos, neuron, table[section * f + pos as usize], &row[at..at + len])
            })
        };
        let bad = if neurons.len() * payload >= PARALLEL_BYTES {
            (0..neurons.len()).into_par_iter().with_min_len(64).map(check).reduce(|| None, Bad::merge)
        } else {
            (0..neurons.len()).map(check).fold(None, Bad::merge)
        };
        match bad {
            None => Ok(()),
            Some(b) => Err(self.record_error(layer, b)),
        }
    }

    /// The error for the failing records `b` of `layer`.
    fn record_error(&self, layer: usize, b: Bad) -> Error {
        let s = &self.manifest.layers[layer].sections[b.section];
        Error::RecordChecksum {
            path: self.ffn_path(),
            layer,
            section: s.name.clone(),
            count: b.count,
            first: b.first,
            last: b.last,
            neuron: b.neuron,
            offset: s.offset + u64::from(b.first) * s.record_stride,
            len: s.record_bytes,
            stored: b.stored,
            computed: b.computed,
        }
    }

    /// Checks every checksum of the layout: everything [`Layout::load`] checks (`resident.bin` included), every
    /// record against the checksum table and every section's crc32c. The error lists each section whose crc
    /// or records fail (the records as the flash loop names them), and what is wrong in `resident.bin`.
    pub fn verify(&self) -> Result<VerifyReport> {
        let m = &self.manifest;
        let f = m.model.d_ffn;
        let ns = self.parts.len();
        let mut failures = Vec::new();
        let mut report = VerifyReport { sections: 0, records: 0, tensors: 0, bytes: 0 };
        let ffn_path = self.ffn_path();
        let file = File::open(&ffn_path).map_err(|e| Error::io(&ffn_path, e))?;
        let mut buf = Vec::new();
        for (l, layer) in m.layers.iter().enumerate() {
            for (si, s) in layer.sections.iter().enumerate() {
                // `Layout::open` placed every section inside the file.
                buf.resize(s.len as usize, 0);
                read_exact(&file, &ffn_path, &mut buf, s.offset)?;
                let crc = crc32c::crc32c(&buf);
                if crc != s.crc32c {
                    failures.push(format!(
                        "{FFN_FILE}: layer {l} section `{}`: crc32c {crc:08x}, the manifest says {:08x}",
                        s.name, s.crc32c
                    ));
                }
                let table = &self.checksums[(l * ns + si) * f..(l * ns + si + 1) * f];
                let (stride, len) = (s.record_stride as usize, s.record_bytes as usize);
                let neuron_at = |k: usize| match &layer.order {
                    Some(order) => order[k],
                    None => k as u32,
                };
                let bad = (0..f)
                    .into_par_iter()
                    .with_min_len(256)
                    .map(|k| Bad::check(si, k as u32, neuron_at(k), table[k], &buf[k * stride..k * stride + len]))
                    .reduce(|| None, Bad::merge);
                if let Some(b) = bad {
                    failures.push(self.record_error(l, b).to_string());
                }
                report.sections += 1;
                report.records += f as u64;
                report.bytes += s.len;
            }
        }
        report.bytes += m.ffn.checksums.len;
        match self.resident() {
            Ok(_) => {
                report.tensors = m.resident.tensors.len();
                report.bytes += m.resident.len;
            }
            Err(e) => failures.push(e.to_string()),
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(Error::Layout { path: self.dir.clone(), what: format!("verification failed: {}", failures.join("; ")) })
        }
    }
}
