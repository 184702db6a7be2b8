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
}

/// One repeat of one test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub test: &'static str,
    pub rep: usize,
    pub tokens: usize,
    pub ms: f64,
    pub tokens_per_s: f64,
    pub threads: usize,
    pub isa: String,
    pub act_precision: String,
    pub model: String,
}

/// Median, lowest and highest tokens/s of test `test` (`pp` or `tg`) over `rows`.
pub fn spread(rows: &[Row], test: &str) -> (f64, f64, f64) {
    let tps: Vec<f64> = rows.iter().filter(|r| r.test == test).map(|r| r.tokens_per_s).collect();
    let (lo, hi) = tps.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    (median(tps), lo, hi)
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
        threads,
        isa: isa.to_string(),
        act_precision: precision.to_string(),
        model: model.display().to_string(),
    }
}
