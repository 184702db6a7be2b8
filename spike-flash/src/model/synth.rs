//! Random-weight models in real file formats, for tests and experiments: every test builds its own model in
//! milliseconds from a named seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::gguf::MetaValue;
use super::gguf_write::GgufWriter;
use super::quant::DType;
use crate::Result;

/// Shapes of a synthetic Llama-architecture model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaShape {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub norm_eps: f32,
    /// Write a separate `output.weight` instead of tying it to the embedding.
    pub untied_output: bool,
}

impl LlamaShape {
    /// A model small enough for unit tests, with grouped-query attention.
    pub fn tiny() -> LlamaShape {
        LlamaShape {
            n_layers: 2,
            d_model: 64,
            d_ffn: 128,
            n_heads: 4,
            n_kv_heads: 2,
            vocab: 96,
            rope_base: 10_000.0,
            norm_eps: 1e-5,
            untied_output: false,
        }
    }
}

/// A GGUF file (bytes) holding a random Llama model: matrices in `dtype`, norms in f32, no tokenizer.
/// Weights are drawn uniformly with a scale of `1/sqrt(fan_in)` so activations stay of order one.
pub fn llama_gguf(shape: &LlamaShape, dtype: DType, seed: u64) -> Result<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = shape;
    let head_dim = s.d_model / s.n_heads;
    let kv = s.n_kv_heads * head_dim;
    let mut w = GgufWriter::new();
    let u32m = |v: usize| MetaValue::U32(v as u32);
    w.add_meta("general.architecture", MetaValue::String("llama".into()));
    w.add_meta("general.name", MetaValue::String(format!("synthetic llama seed {seed}")));
    w.add_meta("llama.block_count", u32m(s.n_layers));
    w.add_meta("llama.context_length", u32m(2048));
    w.add_meta("llama.embedding_length", u32m(s.d_model));
    w.add_meta("llama.feed_forward_length", u32m(s.d_ffn));
    w.add_meta("llama.attention.head_count", u32m(s.n_heads));
    w.add_meta("llama.attention.head_count_kv", u32m(s.n_kv_heads));
    w.add_meta("llama.rope.freq_base", MetaValue::F32(s.rope_base));
    w.add_meta("llama.rope.dimension_count", u32m(head_dim));
    w.add_meta("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(s.norm_eps));
    w.add_meta("llama.vocab_size", u32m(s.vocab));

    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, dt: DType| -> Result<()> {
        let scale = 1.0 / (cols as f32).sqrt();
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-scale..scale) * 1.7).collect();
        w.add_tensor_f32(name, &[cols as u64, rows as u64], dt, &v)
    };
    // The embedding feeds the residual stream directly: give it unit-ish entries.
    let emb: Vec<f32> = (0..s.vocab * s.d_model).map(|i| ((i as f32 * 0.618).sin()) * 0.9).collect();
    w.add_tensor_f32("token_embd.weight", &[s.d_model as u64, s.vocab as u64], dtype, &emb)?;
    let norm = |len: usize, rng: &mut StdRng| -> Vec<f32> { (0..len).map(|_| rng.gen_range(0.6..1.4)).collect() };
    let mut rng2 = StdRng::seed_from_u64(seed ^ 0x5eed);
    w.add_tensor_f32("output_norm.weight", &[s.d_model as u64], DType::F32, &norm(s.d_model, &mut rng2))?;
    if s.untied_output {
        matrix(&mut w, "output.weight", s.vocab, s.d_model, dtype)?;
    }
    for l in 0..s.n_layers {
        let n = |x: &str| format!("blk.{l}.{x}.weight");
        w.add_tensor_f32(n("attn_norm"), &[s.d_model as u64], DType::F32, &norm(s.d_model, &mut rng2))?;
        matrix(&mut w, &n("attn_q"), s.d_model, s.d_model, dtype)?;
        matrix(&mut w, &n("attn_k"), kv, s.d_model, dtype)?;
        matrix(&mut w, &n("attn_v"), kv, s.d_model, dtype)?;
        matrix(&mut w, &n("attn_output"), s.d_model, s.d_model, dtype)?;
        w.add_tensor_f32(n("ffn_norm"), &[s.d_model as u64], DType::F32, &norm(s.d_model, &mut rng2))?;
        matrix(&mut w, &n("ffn_gate"), s.d_ffn, s.d_model, dtype)?;
        matrix(&mut w, &n("ffn_up"), s.d_ffn, s.d_model, dtype)?;
        matrix(&mut w, &n("ffn_down"), s.d_model, s.d_ffn, dtype)?;
    }
    w.to_bytes()
}
