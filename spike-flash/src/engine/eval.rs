//! Perplexity, computed as llama.cpp's perplexity tool does so the numbers compare: the token stream is cut
//! into chunks of `n_ctx` tokens, each chunk is evaluated from an empty cache, the first half of a chunk is
//! context only, and the negative log-likelihood of the tokens in the second half is averaged.

use super::model::{FfnStep, Model};
use crate::{Error, Result};

/// Perplexity of a token stream.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the perplexity (llama.cpp's estimate from the NLL's variance).
    pub stderr: f64,
    pub chunks: usize,
    pub n_ctx: usize,
    pub scored_tokens: usize,
    pub mean_nll: f64,
}

/// `-log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    sum.ln() - (logits[target as usize] as f64 - max)
}

/// Perplexity over `tokens` in chunks of `n_ctx`; `progress(chunk_done, chunks, ppl_so_far)` after each chunk.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    n_ctx: usize,
    ffn: &mut dyn FfnStep,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if n_ctx < 4 {
        return Err(Error::Invalid(format!("context {n_ctx} is too short for perplexity (need at least 4)")));
    }
    let chunks = tokens.len() / n_ctx;
    if chunks == 0 {
        return Err(Error::Invalid(format!("the text has {} tokens, fewer than one context of {n_ctx}", tokens.len())));
    }
    let vocab = model.config().vocab_size;
    let first = n_ctx / 2;
    let mut state = model.try_new_state(n_ctx)?;
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    for c in 0..chunks {
        let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
        state.reset();
        let logits = model.forward_with(&mut state, chunk, first, ffn)?;
        for j in first..n_ctx - 1 {
            let row = j - first;
            let v = nll(&logits[row * vocab..(row + 1) * vocab], chunk[j + 1]);
            sum += v;
            sum2 += v * v;
            count += 1;
        }
        progress(c + 1, chunks, (sum / count as f64).exp());
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let stderr = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    Ok(Perplexity { ppl, stderr, chunks, n_ctx, scored_tokens: count, mean_nll: mean })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let logits = vec![0.25f32; 1000];
        assert!((nll(&logits, 3) - (1000f64).ln()).abs() < 1e-9);
    }
}
