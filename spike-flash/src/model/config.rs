//! The model configuration every import path produces: the shapes and hyper-parameters the engine needs,
//! read from the model file at run time.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gguf::GgufFile;
use crate::{Error, Result};

/// Model family, which fixes the block structure of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// RMSNorm, rotary positions, grouped-query attention, gated FFN (SmolLM2, Llama, Qwen2).
    Llama,
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: llama.cpp's convention, which GGUF's llama Q/K weights are permuted for.
    Interleaved,
    /// Pairs `(x[i], x[i + dim/2])`: the Hugging Face (GPT-NeoX) convention.
    Half,
}

/// Activation of the FFN's gate (gated FFN) or first projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Silu,
    Relu,
    Gelu,
}

/// Shapes and hyper-parameters of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub context_length: usize,
    pub norm_eps: f32,
    pub rope_base: f32,
    /// Leading dimensions of each head that are rotated.
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// The output matrix is the token embedding.
    pub tied_embeddings: bool,
    /// Normalize before each sub-block (Llama, most OPT) rather than after the residual add (OPT-350m).
    pub pre_norm: bool,
}

/// Largest dimension accepted from a file; guards the allocations sized from these numbers.
const MAX_DIM: usize = 1 << 20;

impl ModelConfig {
    /// Reads the configuration of a Llama-architecture GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let path = g.path();
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!("architecture `{arch}` (this reader supports `llama`)"),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let dim = |k: &str| -> Result<usize> { checked_dim(path, &key(k), g.get_u32(&key(k))?) };
        let n_layers = dim("block_count")?;
        let d_model = dim("embedding_length")?;
        let d_ffn = dim("feed_forward_length")?;
        let n_heads = dim("attention.head_count")?;
        let n_kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => dim("attention.head_count_kv")?,
            None => n_heads,
        };
        let embd = g.tensor("token_embd.weight")?;
        let vocab_size = match g.get(&key("vocab_size")) {
            Some(_) => dim("vocab_size")?,
            None => checked_dim(path, "token_embd.weight rows", embd.rows().try_into().unwrap_or(u32::MAX))?,
        };
        let head_dim = if n_heads > 0 && d_model % n_heads == 0 { d_model / n_heads } else { 0 };
        let rope_dim = match g.get(&key("rope.dimension_count")) {
            Some(_) => dim("rope.dimension_count")?,
            None => head_dim,
        };
        let context_length = match g.get(&key("context_length")) {
            Some(_) => dim("context_length")?,
            None => 2048,
        };
        let rope_base = match g.get(&key("rope.freq_base")) {
            Some(_) => g.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let norm_eps = g.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let tied_embeddings = g.tensor("output.weight").is_err();
        let cfg = ModelConfig {
            arch: Arch::Llama,
            n_layers,
            d_model,
            d_ffn,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            norm_eps,
            rope_base,
            rope_dim,
            rope_style: RopeStyle::Interleaved,
            activation: Activation::Silu,
            tied_embeddings,
            pre_norm: true,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the relations between dimensions the engine relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| {
            Err(Error::BadKey {
                path: path.to_path_buf(),
                key: "model configuration".into(),
                expected: "consistent dimensions".into(),
                found: what,
            })
        };
        if self.n_layers == 0 || self.d_model == 0 || self.d_ffn == 0 || self.vocab_size == 0 {
            return bad(format!("a zero dimension in {self:?}"));
        }
        if self.n_heads == 0 || self.d_model % self.n_heads != 0 {
            return bad(format!("d_model {} not divisible by {} heads", self.d_model, self.n_heads));
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!("{} heads not divisible by {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim * self.n_heads != self.d_model {
            return bad(format!("head_dim {} x {} heads != d_model {}", self.head_dim, self.n_heads, self.d_model));
        }
        if self.rope_dim > self.head_dim || self.rope_dim % 2 != 0 {
            return bad(format!("rope dimension {} for head dimension {}", self.rope_dim, self.head_dim));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!("norm epsilon {} / rope base {}", self.norm_eps, self.rope_base));
        }
        Ok(())
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

fn checked_dim(path: &Path, key: &str, v: u32) -> Result<usize> {
    let v = v as usize;
    if v > MAX_DIM {
        return Err(Error::BadKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: format!("at most {MAX_DIM}"),
            found: v.to_string(),
        });
    }
    Ok(v)
}
