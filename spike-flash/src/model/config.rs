//! The model configuration every import path produces: the shapes and hyper-parameters the engine needs,
//! read from the model file at run time.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gguf::GgufFile;
use crate::{Error, Result};

/// Model family, which fixes the block structure of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// RMSNorm, rotary positions, grouped-query attention, gated FFN (SmolLM2, Llama, Qwen2).
    Llama,
    /// LayerNorm, learned absolute positions, multi-head attention and a two-matrix FFN (fc1, activation,
    /// fc2), with biases: Meta's OPT, the paper's main model family.
    Opt,
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
    /// The exact (erf) GELU, Hugging Face's `gelu`.
    Gelu,
}

impl Activation {
    /// The activation for a Hugging Face `hidden_act` / `activation_function` name, if supported.
    pub fn from_hf_name(name: &str) -> Option<Activation> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            _ => return None,
        })
    }

    /// The Hugging Face name of this activation.
    pub const fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
        }
    }
}

/// OPT's learned position table starts at row 2: position `p` of a sequence reads row `p + 2` of
/// `embed_positions` (a fairseq legacy), so the table has `max_positions + 2` rows.
pub const OPT_POSITION_OFFSET: usize = 2;

fn yes() -> bool {
    true
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
    /// Each block normalizes its input (pre-norm: Llama, and OPT's `do_layer_norm_before = true`); when
    /// false the norm follows the residual add (post-norm, OPT-350m).
    #[serde(default = "yes")]
    pub pre_norm: bool,
    /// OPT: width of the token embedding when it differs from `d_model`. The embedding is then mapped in by
    /// `project_in` (d_model x proj) and the final state out by `project_out` (proj x d_model), and the tied
    /// output matrix is vocab x proj. `None` when embeddings are `d_model` wide.
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    /// Number of positions the model can address: OPT's learned table has this many usable rows (plus
    /// [`OPT_POSITION_OFFSET`]); for rotary models it equals `context_length`. 0 when not recorded.
    #[serde(default)]
    pub max_positions: usize,
    /// The Q, K and V projections have biases (OPT; Qwen2; Llama with `attention_bias`).
    #[serde(default)]
    pub qkv_bias: bool,
    /// The attention output projection has a bias (OPT; Llama with `attention_bias`).
    #[serde(default)]
    pub out_bias: bool,
    /// The FFN matrices have biases (OPT's fc1 and fc2; Llama with `mlp_bias`).
    #[serde(default)]
    pub ffn_bias: bool,
    /// Norms have learned parameters: RMSNorm a weight, LayerNorm a weight and a bias (OPT's
    /// `layer_norm_elementwise_affine`).
    #[serde(default = "yes")]
    pub norm_affine: bool,
    /// A norm is applied to the last layer's output before the output matrix (false for post-norm OPT).
    #[serde(default = "yes")]
    pub final_norm: bool,
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
            word_embed_proj_dim: None,
            max_positions: context_length,
            qkv_bias: false,
            out_bias: false,
            ffn_bias: false,
            norm_affine: true,
            final_norm: true,
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
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!("d_model {} not divisible by {} heads", self.d_model, self.n_heads));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} heads not divisible by {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim * self.n_heads != self.d_model {
            return bad(format!("head_dim {} x {} heads != d_model {}", self.head_dim, self.n_heads, self.d_model));
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return bad(format!("rope dimension {} for head dimension {}", self.rope_dim, self.head_dim));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!("norm epsilon {} / rope base {}", self.norm_eps, self.rope_base));
        }
        match self.arch {
            Arch::Llama => {
                if !self.pre_norm || self.word_embed_proj_dim.is_some() {
                    return bad("post-norm or an embedding projection in a Llama-architecture model".into());
                }
            }
            Arch::Opt => {
                if self.n_kv_heads != self.n_heads || self.rope_dim != 0 {
                    return bad(format!(
                        "OPT with {} KV heads for {} heads or a rotary dimension {}",
                        self.n_kv_heads, self.n_heads, self.rope_dim
                    ));
                }
                if self.max_positions == 0 || self.max_positions > MAX_DIM {
                    return bad(format!("OPT position table of {} rows", self.max_positions));
                }
                if let Some(p) = self.word_embed_proj_dim {
                    if p == 0 || p > MAX_DIM || p == self.d_model {
                        return bad(format!("word_embed_proj_dim {p} for d_model {}", self.d_model));
                    }
                }
            }
        }
        Ok(())
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the token embedding and of the output matrix's rows: `word_embed_proj_dim` or `d_model`.
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.d_model)
    }

    /// Reads a Hugging Face `config.json` file (see [`ModelConfig::from_hf_config`]).
    pub fn from_hf_config_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::json(path, &e))?;
        Self::from_hf_config(path, &value)
    }

    /// The configuration a Hugging Face `config.json` describes; `path` names it in errors.
    ///
    /// `model_type` `opt` reads `hidden_size`, `ffn_dim`, `num_attention_heads`, `num_hidden_layers`,
    /// `vocab_size`, `max_position_embeddings`, `do_layer_norm_before`, `word_embed_proj_dim`,
    /// `activation_function`, `enable_bias`, `layer_norm_elementwise_affine`, `_remove_final_layer_norm` and
    /// `tie_word_embeddings`, with the defaults of transformers' `OPTConfig`; LayerNorm epsilon is PyTorch's
    /// 1e-5, which OPT does not configure.
    ///
    /// `llama`, `qwen2` and `mistral` read `hidden_size`, `intermediate_size`, `num_attention_heads`,
    /// `num_key_value_heads`, `num_hidden_layers`, `vocab_size`, `rms_norm_eps`, `rope_theta`,
    /// `tie_word_embeddings`, `hidden_act`, `max_position_embeddings`, `head_dim`, `attention_bias` and
    /// `mlp_bias` (Qwen2 always has Q/K/V biases). Rotary pairs follow the Hugging Face convention
    /// ([`RopeStyle::Half`]). Rope scaling and an active sliding window are refused as unsupported, except
    /// Mistral's window, which caps `context_length` so that it never takes effect.
    pub fn from_hf_config(path: &Path, config: &Value) -> Result<ModelConfig> {
        let obj = config.as_object().ok_or_else(|| Error::BadKey {
            path: path.to_path_buf(),
            key: "(top level)".into(),
            expected: "a JSON object".into(),
            found: json_kind(config).into(),
        })?;
        let keys = HfKeys { path, obj };
        let model_type = keys.req_str("model_type")?;
        let cfg = match model_type {
            "opt" => hf_opt(&keys)?,
            "llama" | "qwen2" | "mistral" => hf_llama(&keys, model_type)?,
            other => {
                return Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("model_type `{other}` (supported: opt, llama, qwen2, mistral)"),
                })
            }
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

fn hf_opt(k: &HfKeys) -> Result<ModelConfig> {
    let d_model = k.req_dim("hidden_size")?;
    let n_heads = k.req_dim("num_attention_heads")?;
    let max_positions = k.opt_dim("max_position_embeddings")?.unwrap_or(2048);
    let pre_norm = k.opt_bool("do_layer_norm_before")?.unwrap_or(true);
    let remove_final = k.opt_bool("_remove_final_layer_norm")?.unwrap_or(false);
    let bias = k.opt_bool("enable_bias")?.unwrap_or(true);
    Ok(ModelConfig {
        arch: Arch::Opt,
        n_layers: k.req_dim("num_hidden_layers")?,
        d_model,
        d_ffn: k.req_dim("ffn_dim")?,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: whole_heads(d_model, n_heads),
        vocab_size: k.req_dim("vocab_size")?,
        context_length: max_positions,
        norm_eps: 1e-5,
        rope_base: 10_000.0,
        rope_dim: 0,
        rope_style: RopeStyle::Half,
        activation: k.activation("activation_function", "relu")?,
        tied_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        pre_norm,
        word_embed_proj_dim: k.opt_dim("word_embed_proj_dim")?.filter(|&p| p != d_model),
        max_positions,
        qkv_bias: bias,
        out_bias: bias,
        ffn_bias: bias,
        norm_affine: k.opt_bool("layer_norm_elementwise_affine")?.unwrap_or(true),
        final_norm: pre_norm && !remove_final,
    })
}

fn hf_llama(k: &HfKeys, model_type: &str) -> Result<ModelConfig> {
    let unsupported = |what: String| Error::Unsupported { path: k.path.to_path_buf(), what };
    let d_model = k.req_dim("hidden_size")?;
    let n_heads = k.req_dim("num_attention_heads")?;
    let head_dim = match k.opt_dim("head_dim")? {
        Some(hd) if hd.checked_mul(n_heads) != Some(d_model) => {
            return Err(unsupported(format!(
                "head_dim {hd} with {n_heads} heads for hidden_size {d_model} (heads must tile hidden_size)"
            )))
        }
        Some(hd) => hd,
        None => whole_heads(d_model, n_heads),
    };
    if let Some(scaling) = k.get("rope_scaling") {
        return Err(unsupported(format!("rope_scaling {scaling}")));
    }
    if model_type == "qwen2" && k.opt_bool("use_sliding_window")?.unwrap_or(false) {
        return Err(unsupported("qwen2 with use_sliding_window = true".into()));
    }
    let max_positions = k.opt_dim("max_position_embeddings")?.unwrap_or(2048);
    // Mistral attends to the last `sliding_window` positions only; within that many tokens full attention
    // is the same computation.
    let context_length = match (model_type, k.opt_dim("sliding_window")?) {
        ("mistral", Some(w)) if w > 0 => max_positions.min(w),
        _ => max_positions,
    };
    let attention_bias = k.opt_bool("attention_bias")?.unwrap_or(false);
    Ok(ModelConfig {
        arch: Arch::Llama,
        n_layers: k.req_dim("num_hidden_layers")?,
        d_model,
        d_ffn: k.req_dim("intermediate_size")?,
        n_heads,
        n_kv_heads: k.opt_dim("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        vocab_size: k.req_dim("vocab_size")?,
        context_length,
        norm_eps: k.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope_base: k.opt_f32("rope_theta")?.unwrap_or(10_000.0),
        rope_dim: head_dim,
        rope_style: RopeStyle::Half,
        activation: k.activation("hidden_act", "silu")?,
        tied_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        pre_norm: true,
        word_embed_proj_dim: None,
        max_positions: context_length,
        qkv_bias: attention_bias || model_type == "qwen2",
        out_bias: attention_bias,
        ffn_bias: k.opt_bool("mlp_bias")?.unwrap_or(false),
        norm_affine: true,
        final_norm: true,
    })
}

/// `d / heads` when it divides evenly, else 0, which [`ModelConfig::validate`] rejects with both numbers.
pub(crate) fn whole_heads(d: usize, heads: usize) -> usize {
    if heads > 0 && d.is_multiple_of(heads) {
        d / heads
    } else {
        0
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the keys of a `config.json` object; `null` counts as absent, as in transformers.
struct HfKeys<'a> {
    path: &'a Path,
    obj: &'a serde_json::Map<String, Value>,
}

impl HfKeys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, expected: &str, v: &Value) -> Error {
        let mut found = v.to_string();
        if found.len() > 80 {
            found = format!("{} ({} characters)", json_kind(v), found.len());
        }
        Error::BadKey { path: self.path.to_path_buf(), key: key.into(), expected: expected.into(), found }
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingKey { path: self.path.to_path_buf(), key: key.into() }
    }

    fn opt_dim(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_u64() {
            Some(n) if n <= MAX_DIM as u64 => Ok(Some(n as usize)),
            _ => Err(self.bad(key, &format!("an integer from 0 to {MAX_DIM}"), v)),
        }
    }

    fn req_dim(&self, key: &str) -> Result<usize> {
        self.opt_dim(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(Some(x as f32)),
            _ => Err(self.bad(key, "a finite number", v)),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_bool().map(Some).ok_or_else(|| self.bad(key, "true or false", v))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_str().map(Some).ok_or_else(|| self.bad(key, "a string", v))
    }

    fn req_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let name = self.opt_str(key)?.unwrap_or(default);
        Activation::from_hf_name(name).ok_or_else(|| Error::Unsupported {
            path: self.path.to_path_buf(),
            what: format!("{key} = `{name}` (supported: relu, silu, gelu)"),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_hf_config(Path::new("config.json"), &v)
    }

    /// facebook/opt-125m's config.json, as published.
    fn opt_125m() -> Value {
        json!({
            "_name_or_path": "facebook/opt-125m", "activation_dropout": 0.0, "activation_function": "relu",
            "architectures": ["OPTForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2,
            "do_layer_norm_before": true, "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 3072,
            "hidden_size": 768, "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048,
            "model_type": "opt", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
            "prefix": "</s>", "torch_dtype": "float16", "transformers_version": "4.21.0.dev0",
            "use_cache": true, "vocab_size": 50272, "word_embed_proj_dim": 768
        })
    }

    #[test]
    fn opt_125m_maps() {
        let c = hf(opt_125m()).expect("opt-125m config");
        assert_eq!(c.arch, Arch::Opt);
        assert_eq!((c.n_layers, c.d_model, c.d_ffn, c.n_heads, c.n_kv_heads), (12, 768, 3072, 12, 12));
        assert_eq!((c.head_dim, c.vocab_size, c.max_positions, c.context_length), (64, 50272, 2048, 2048));
        assert_eq!(c.activation, Activation::Relu);
        assert!(c.pre_norm && c.final_norm && c.norm_affine && c.tied_embeddings);
        assert!(c.qkv_bias && c.out_bias && c.ffn_bias);
        assert_eq!(c.word_embed_proj_dim, None);
        assert_eq!(c.embed_dim(), 768);
        assert_eq!(c.rope_dim, 0);
        assert_eq!(c.norm_eps, 1e-5);
    }

    #[test]
    fn opt_350m_is_post_norm_with_projection() {
        let mut v = opt_125m();
        v["hidden_size"] = json!(1024);
        v["ffn_dim"] = json!(4096);
        v["num_attention_heads"] = json!(16);
        v["num_hidden_layers"] = json!(24);
        v["do_layer_norm_before"] = json!(false);
        v["word_embed_proj_dim"] = json!(512);
        let c = hf(v).expect("opt-350m config");
        assert!(!c.pre_norm && !c.final_norm);
        assert_eq!(c.word_embed_proj_dim, Some(512));
        assert_eq!(c.embed_dim(), 512);
    }

    #[test]
    fn opt_defaults_when_keys_are_absent() {
        let v = json!({"model_type": "opt", "hidden_size": 64, "ffn_dim": 256, "num_attention_heads": 4,
            "num_hidden_layers": 2, "vocab_size": 300, "enable_bias": false,
            "layer_norm_elementwise_affine": false, "_remove_final_layer_norm": true});
        let c = hf(v).expect("minimal opt config");
        assert_eq!(c.max_positions, 2048);
        assert!(c.pre_norm && !c.final_norm && !c.norm_affine);
        assert!(!c.qkv_bias && !c.out_bias && !c.ffn_bias);
    }

    /// HuggingFaceTB/SmolLM2-135M-Instruct's config.json (the keys that matter).
    fn smollm2() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
            "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "max_position_embeddings": 8192,
            "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
            "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
            "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 49152
        })
    }

    #[test]
    fn llama_smollm2_maps() {
        let c = hf(smollm2()).expect("SmolLM2 config");
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!((c.n_layers, c.d_model, c.d_ffn, c.n_heads, c.n_kv_heads), (30, 576, 1536, 9, 3));
        assert_eq!((c.head_dim, c.rope_dim, c.vocab_size, c.context_length), (64, 64, 49152, 8192));
        assert_eq!(c.rope_style, RopeStyle::Half);
        assert_eq!(c.rope_base, 100_000.0);
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!(c.activation, Activation::Silu);
        assert!(c.tied_embeddings && c.pre_norm && c.final_norm);
        assert!(!c.qkv_bias && !c.out_bias && !c.ffn_bias);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_mistral_window_caps_context() {
        let mut v = smollm2();
        v["model_type"] = json!("qwen2");
        v["use_sliding_window"] = json!(false);
        v["sliding_window"] = json!(4096);
        let c = hf(v.clone()).expect("qwen2 config");
        assert!(c.qkv_bias && !c.out_bias);
        assert_eq!(c.context_length, 8192);
        v["use_sliding_window"] = json!(true);
        assert!(matches!(hf(v.clone()), Err(Error::Unsupported { .. })));
        v["model_type"] = json!("mistral");
        let c = hf(v).expect("mistral config");
        assert!(!c.qkv_bias);
        assert_eq!((c.context_length, c.max_positions), (4096, 4096));
    }

    #[test]
    fn llama_defaults_and_explicit_head_dim() {
        let v = json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 300, "head_dim": 16});
        let c = hf(v.clone()).expect("minimal llama config");
        assert_eq!(c.n_kv_heads, 4);
        assert_eq!(c.norm_eps, 1e-6);
        assert_eq!(c.rope_base, 10_000.0);
        assert!(!c.tied_embeddings);
        let mut v = v;
        v["head_dim"] = json!(32);
        let err = hf(v).expect_err("decoupled head_dim").to_string();
        assert!(err.contains("head_dim 32"), "{err}");
    }

    #[test]
    fn refusals_name_the_key() {
        let mut v = smollm2();
        v["model_type"] = json!("gpt_neox");
        let err = hf(v).expect_err("unknown model_type");
        assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("gpt_neox")), "{err}");

        let mut v = smollm2();
        v["hidden_act"] = json!("gelu_pytorch_tanh");
        let err = hf(v).expect_err("unknown activation");
        assert!(matches!(&err, Error::Unsupported { what, .. } if what.contains("gelu_pytorch_tanh")), "{err}");

        let mut v = opt_125m();
        v.as_object_mut().expect("object").remove("ffn_dim");
        let err = hf(v).expect_err("missing ffn_dim");
        assert!(matches!(&err, Error::MissingKey { key, .. } if key == "ffn_dim"), "{err}");

        let mut v = opt_125m();
        v["hidden_size"] = json!("768");
        let err = hf(v).expect_err("string dimension");
        assert!(matches!(&err, Error::BadKey { key, .. } if key == "hidden_size"), "{err}");

        let mut v = opt_125m();
        v["ffn_dim"] = json!(1u64 << 21);
        let err = hf(v).expect_err("huge dimension");
        assert!(matches!(&err, Error::BadKey { key, .. } if key == "ffn_dim"), "{err}");

        let mut v = smollm2();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        assert!(matches!(hf(v), Err(Error::Unsupported { .. })));

        let mut v = opt_125m();
        v["num_attention_heads"] = json!(7);
        let err = hf(v).expect_err("heads do not divide").to_string();
        assert!(err.contains("not divisible by 7 heads"), "{err}");

        assert!(matches!(hf(json!([1, 2])), Err(Error::BadKey { .. })));
        assert!(matches!(hf(json!({})), Err(Error::MissingKey { .. })));
    }

    #[test]
    fn old_serialized_configs_get_llama_defaults() {
        let c = hf(smollm2()).expect("config");
        let mut v = serde_json::to_value(&c).expect("serialize");
        for k in ["pre_norm", "word_embed_proj_dim", "max_positions", "qkv_bias", "out_bias", "ffn_bias"] {
            v.as_object_mut().expect("object").remove(k);
        }
        v.as_object_mut().expect("object").remove("norm_affine");
        v.as_object_mut().expect("object").remove("final_norm");
        let back: ModelConfig = serde_json::from_value(v).expect("deserialize without the new fields");
        assert!(back.pre_norm && back.norm_affine && back.final_norm && !back.qkv_bias);
        assert_eq!(back.word_embed_proj_dim, None);
    }
}
