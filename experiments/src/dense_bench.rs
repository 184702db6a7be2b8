//! Dense speed as llama-bench measures it: prompt processing (a batch of `prompt` tokens from an empty cache,
//! `pp`) and decode (`gen` tokens one at a time, `tg`), `reps` repeats each, one row per repeat.

use std::path::Path;
use std::time::Instant;

use spike_flash::engine::kernels;
use spike_flash::engine::model::Model;
use spike_flash::engine::sampler::argmax;

use crate::summary::median;
use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseBench {
    /// Prompt tokens processed as one batch.
    pub prompt: usize,
    /// Tokens decoded one at a time.
    pub gen: usize,
    /// Repeats of each test.
    pub reps: usize,
    /// Also measure the memory read bandwidth in each repeat, after decode (test `mem`): with the weight bytes
    /// one decode step reads, it bounds the decode speed.
    pub memory: bool,
}

/// Bytes of the buffer the memory test reads: far beyond any cache of this machine kind.
pub const MEMORY_TEST_BYTES: usize = 1 << 30;

/// One repeat of one test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub test: &'static str,
    pub rep: usize,
    pub tokens: usize,
    pub ms: f64,
    pub tokens_per_s: f64,
    /// The memory test's read bandwidth, 10^9 bytes per second (empty for pp and tg).
    pub gb_per_s: Option<f64>,
    pub threads: usize,
    pub isa: String,
    pub act_precision: String,
    pub model: String,
}

/// Median, lowest and highest tokens/s of test `test` (`pp` or `tg`) over `rows`.
pub fn spread(rows: &[Row], test: &str) -> (f64, f64, f64) {
    spread_of(rows.iter().filter(|r| r.test == test).map(|r| r.tokens_per_s).collect())
}

/// Median, lowest and highest of `values`.
pub fn spread_of(values: Vec<f64>) -> (f64, f64, f64) {
    let (lo, hi) = values.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    (median(values), lo, hi)
}

/// Runs `b` on `model` (loaded from `path`), calling `progress` after each run.
pub fn run(model: &Model, path: &Path, b: &DenseBench, progress: &mut dyn FnMut()) -> Result<Vec<Row>> {
    if b.reps == 0 || b.prompt == 0 || b.gen == 0 {
        return Err(Error::Invalid("the repeats, prompt and generated tokens must be positive".into()));
    }
    // The state first: it checks the sizes against the model before anything is allocated.
    let mut state = model.try_new_state(b.prompt.max(b.gen + 1))?;
    let vocab = model.config().vocab_size as u64;
    // Fixed pseudo-random prompt tokens (llama-bench also benchmarks on arbitrary tokens).
    let prompt: Vec<u32> = (0..b.prompt as u64).map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32).collect();
    let threads = spike_flash::engine::threads();
    let isa = format!("{:?}", kernels::isa());
    let precision = format!("{:?}", model.precision()).to_lowercase();
    // The memory test's buffer, written once so its pages exist before any pass is timed.
    let buffer = if b.memory { Some(memory_buffer(MEMORY_TEST_BYTES)?) } else { None };
    // Warm-up: touches every weight once so the first repeat does not pay for page faults.
    model.forward(&mut state, &prompt[..prompt.len().min(8)], false)?;

    let mut rows = Vec::new();
    for rep in 0..b.reps {
        state.reset();
        let t = Instant::now();
        model.forward(&mut state, &prompt, false)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(row("pp", rep, b.prompt, ms, threads, (&isa, &precision), path));
        progress();

        state.reset();
        let mut tok = prompt[0];
        let t = Instant::now();
        for _ in 0..b.gen {
            let logits = model.forward(&mut state, &[tok], false)?;
            tok = argmax(&logits);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(row("tg", rep, b.gen, ms, threads, (&isa, &precision), path));
        progress();

        if let Some(buf) = &buffer {
            let t = Instant::now();
            std::hint::black_box(read_all(buf, threads));
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut r = row("mem", rep, 0, ms, threads, (&isa, &precision), path);
            r.tokens_per_s = f64::NAN;
            r.gb_per_s = Some(MEMORY_TEST_BYTES as f64 / (ms / 1e3) / 1e9);
            rows.push(r);
            progress();
        }
    }

    Ok(rows)
}

fn row(
    test: &'static str,
    rep: usize,
    tokens: usize,
    ms: f64,
    threads: usize,
    (isa, precision): (&str, &str),
    model: &std::path::Path,
) -> Row {
    Row {
        test,
        rep,
        tokens,
        ms,
        tokens_per_s: tokens as f64 / (ms / 1e3),
        gb_per_s: None,
        threads,
        isa: isa.to_string(),
        act_precision: precision.to_string(),
        model: model.display().to_string(),
    }
}

/// A buffer of `bytes` (a multiple of 64), every page written.
fn memory_buffer(bytes: usize) -> Result<Vec<u64>> {
    let n = bytes / 8;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::Invalid(format!("cannot allocate the memory test's {bytes}-byte buffer")))?;
    v.extend((0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    Ok(v)
}

/// Reads every word of `buf` once, split over `threads` threads (the engine's count), and returns a sum that
/// depends on all of them (so no read can be dropped). Eight independent sums per thread keep the loads
/// streaming rather than waiting on one add chain.
pub fn read_all(buf: &[u64], threads: usize) -> u64 {
    let share = buf.len().div_ceil(threads.max(1)).next_multiple_of(8);
    std::thread::scope(|s| {
        let parts: Vec<_> = buf
            .chunks(share.max(8))
            .map(|part| {
                s.spawn(move || {
                    let mut acc = [0u64; 8];
                    let words = part.chunks_exact(8);
                    let rest: u64 = words.remainder().iter().fold(0, |a, &x| a.wrapping_add(x));
                    for w in words {
                        for (a, &x) in acc.iter_mut().zip(w) {
                            *a = a.wrapping_add(x);
                        }
                    }
                    acc.iter().fold(rest, |a, &x| a.wrapping_add(x))
                })
            })
            .collect();
        parts.into_iter().map(|h| h.join().unwrap_or(0)).fold(0, u64::wrapping_add)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_all_sums_every_word_once() {
        for (n, threads) in [(0usize, 2usize), (1, 1), (7, 3), (64, 2), (1001, 2), (4096, 5)] {
            let buf: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xF00D).collect();
            let want = buf.iter().fold(0u64, |a, &x| a.wrapping_add(x));
            assert_eq!(read_all(&buf, threads), want, "{n} words over {threads} threads");
        }
    }
}
