//! The per-token record of a flash run: the work between two snapshots of a flash FFN's counters, as one CSV
//! row (`--trace-out`, the bench's per-token rows).

use spike_flash::engine::flash::Snapshot;

/// What one step (a token, or a prompt) cost in flash mode: the row of `--trace-out`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// What produced the step (a bench row's name, `prompt` or `decode`; a sweep point's id).
    pub label: String,
    /// Sequence (prompt) number.
    pub seq: usize,
    /// Step number (0 is the prompt when the prompt is recorded as one step).
    pub step: usize,
    /// Tokens in the step.
    pub tokens: usize,
    /// Wall time of the step, ms.
    pub total_ms: f64,
    pub bytes_requested: u64,
    pub bytes_read: u64,
    /// Device reads issued.
    pub reads: u64,
    /// Mean device read, bytes.
    pub mean_chunk: f64,
    /// Wall time of the batched reads, ms.
    pub io_ms: f64,
    /// Copying records out of the read backends' scratch buffers (requests whose destination could not take
    /// the aligned device read), ms: part of `io_ms`, except the prefetch thread's copies with overlap.
    pub io_copy_ms: f64,
    /// Checking the records that arrived against the layout's checksum table, ms: part of `io_ms` (with
    /// io_uring, partly while the step's other reads are still in flight). NaN in files written before the
    /// check existed (their `tokens.csv` has no such column).
    #[serde(default = "not_measured")]
    pub verify_ms: f64,
    /// The cost model's prediction for the same reads, ms (0 without a device profile).
    pub predicted_io_ms: f64,
    /// Memory management (read lists, cache bookkeeping, row copies), ms.
    pub mm_ms: f64,
    /// FFN compute over the rows, ms.
    pub ffn_compute_ms: f64,
    /// Choosing the active neurons (predictor or oracle), ms.
    pub select_ms: f64,
    /// Everything else: attention, norms, embeddings, logits, ms.
    pub other_ms: f64,
    /// Active neurons, summed over the step's layers and tokens.
    pub neurons_active: u64,
    /// Neurons whose records were read from flash.
    pub neurons_read: u64,
    /// Share of the active neurons that did not have to be read.
    pub hit_rate: f64,
    /// Model bytes in DRAM (resident tensors, predictor, neuron caches).
    pub dram_bytes: u64,
}

impl TokenRecord {
    /// The record of the work between snapshots `a` and `b`, which took `total_ms` of wall time.
    pub fn between(step: usize, tokens: usize, total_ms: f64, a: &Snapshot, b: &Snapshot, dram_bytes: u64) -> Self {
        let (f, g) = (&a.flash, &b.flash);
        let ms = |x: u64, y: u64| y.saturating_sub(x) as f64 / 1e6;
        let reads = b.io.reads - a.io.reads;
        let bytes_read = b.io.bytes_read - a.io.bytes_read;
        let active = g.neurons_active - f.neurons_active;
        let read = g.neurons_read - f.neurons_read;
        let (io_ms, mm_ms, compute_ms, select_ms) =
            (ms(f.io_ns, g.io_ns), ms(f.mm_ns, g.mm_ns), ms(f.compute_ns, g.compute_ns), ms(f.select_ns, g.select_ns));
        TokenRecord {
            label: String::new(),
            seq: 0,
            step,
            tokens,
            total_ms,
            bytes_requested: b.io.bytes_requested - a.io.bytes_requested,
            bytes_read,
            reads,
            mean_chunk: if reads == 0 { 0.0 } else { bytes_read as f64 / reads as f64 },
            io_ms,
            io_copy_ms: ms(a.io.copy_ns, b.io.copy_ns),
            verify_ms: ms(f.verify_ns, g.verify_ns),
            predicted_io_ms: ms(f.predicted_io_ns, g.predicted_io_ns),
            mm_ms,
            ffn_compute_ms: compute_ms,
            select_ms,
            other_ms: (total_ms - io_ms - mm_ms - compute_ms - select_ms).max(0.0),
            neurons_active: active,
            neurons_read: read,
            hit_rate: if active == 0 { 1.0 } else { 1.0 - (read.min(active) as f64 / active as f64) },
            dram_bytes,
        }
    }
}

/// A value an older file did not record.
fn not_measured() -> f64 {
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_from_before_the_read_check_reads_with_nan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        let mut rec = TokenRecord { io_ms: 2.5, ..TokenRecord::default() };
        crate::sweep::output::write_tokens(&path, std::slice::from_ref(&rec)).unwrap();
        // The same file without the column, as sweeps wrote it before the check existed.
        let text = std::fs::read_to_string(&path).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let i = header.iter().position(|h| *h == "verify_ms").unwrap();
        let cut: Vec<String> = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(',').collect();
                f.remove(i);
                f.join(",")
            })
            .collect();
        std::fs::write(&path, cut.join("\n") + "\n").unwrap();
        let back = crate::sweep::output::read_tokens(&path).unwrap();
        assert!(back[0].verify_ms.is_nan());
        rec.verify_ms = back[0].verify_ms;
        assert_eq!(back[0].io_ms, rec.io_ms);
    }
}
