//! Binding a model file's tensors to the engine's parts: names, shapes and types checked, bytes located.

use std::sync::Arc;

use super::config::{Arch, ModelConfig, OPT_POSITION_OFFSET};
use super::gguf::GgufFile;
use super::quant::DType;
use super::safetensors::HfCheckpoint;
use crate::engine::model::{FfnWeights, LayerWeights, Linear, ModelParts, Norm, Positions, WeightRef};
use crate::{Error, Result};

fn tensor_err(file: &GgufFile, name: &str, what: String) -> Error {
    Error::Tensor { path: file.path().to_path_buf(), name: name.to_string(), what }
}

/// A 2-D GGUF tensor (`rows x cols`, `cols` contiguous: GGUF dims `[cols, rows]`), shape and size checked.
fn gguf_matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<WeightRef> {
    let info = file.tensor(name)?;
    let dims: Vec<u64> = info.dims.iter().copied().filter(|&x| x != 1).collect();
    let want: Vec<u64> = [cols as u64, rows as u64].into_iter().filter(|&x| x != 1).collect();
    if dims != want {
        return Err(tensor_err(file, name, format!("shape {:?}, expected [{cols}, {rows}]", info.dims)));
    }
    let len = info.dtype.bytes_for(info.n_elements()).ok_or_else(|| tensor_err(file, name, "size overflow".into()))?;
    let offset = file.data_offset() + info.offset;
    if offset.checked_add(len).is_none_or(|end| end > file.file_len()) {
        return Err(tensor_err(file, name, "data past the end of the file".into()));
    }
    Ok(WeightRef { dtype: info.dtype, rows, cols, shard: 0, offset: offset as usize, len: len as usize })
}

/// A 1-D float tensor of `len` values (norm weights, biases).
fn gguf_vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let w = gguf_matrix(file, name, 1, len)?;
    if !matches!(w.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(tensor_err(file, name, format!("a vector of type {}, expected a float type", w.dtype)));
    }
    file.tensor_f32(name)
}

/// The parts of a Llama-architecture GGUF model.
pub fn gguf_llama(file: Arc<GgufFile>) -> Result<ModelParts> {
    let cfg = ModelConfig::from_gguf(&file)?;
    let (d, f, kv, v) = (cfg.d_model, cfg.d_ffn, cfg.kv_dim(), cfg.vocab_size);
    let lin = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
        Ok(Linear { w: gguf_matrix(&file, name, rows, cols)?, b: None })
    };
    let rms = |name: &str| -> Result<Norm> { Ok(Norm::Rms { w: gguf_vector(&file, name, d)? }) };
    let tok_embd = gguf_matrix(&file, "token_embd.weight", v, d)?;
    let output = if cfg.tied_embeddings { tok_embd } else { gguf_matrix(&file, "output.weight", v, d)? };
    let output_norm = Some(rms("output_norm.weight")?);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        layers.push(LayerWeights {
            attn_norm: rms(&n("attn_norm"))?,
            q: lin(&n("attn_q"), d, d)?,
            k: lin(&n("attn_k"), kv, d)?,
            v: lin(&n("attn_v"), kv, d)?,
            o: lin(&n("attn_output"), d, d)?,
            ffn_norm: rms(&n("ffn_norm"))?,
            ffn: FfnWeights::Gated {
                gate: lin(&n("ffn_gate"), f, d)?,
                up: lin(&n("ffn_up"), f, d)?,
                down: lin(&n("ffn_down"), d, f)?,
            },
        });
    }
    Ok(ModelParts {
        source: file.clone(),
        cfg,
        tok_embd,
        project_in: None,
        project_out: None,
        positions: Positions::Rope,
        output_norm,
        output,
        layers,
    })
}

impl crate::engine::model::WeightSource for HfCheckpoint {
    fn label(&self) -> &std::path::Path {
        self.dir()
    }
    fn shard_bytes(&self, i: usize) -> &[u8] {
        HfCheckpoint::shard_bytes(self, i)
    }
}

/// A 2-D checkpoint tensor of `rows x cols` (PyTorch `[out, in]`).
fn hf_matrix(ck: &HfCheckpoint, name: &str, rows: usize, cols: usize) -> Result<WeightRef> {
    let t = ck.tensor(name)?;
    if t.shape != [rows, cols] {
        return Err(Error::Tensor {
            path: t.file.to_path_buf(),
            name: name.to_string(),
            what: format!("shape {:?}, expected [{rows}, {cols}]", t.shape),
        });
    }
    let (shard, range) = ck.location(name)?;
    Ok(WeightRef { dtype: t.dtype, rows, cols, shard, offset: range.start, len: range.len() })
}

fn hf_vector(ck: &HfCheckpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    let v = ck.tensor_f32(name)?;
    if v.len() != len {
        return Err(Error::Tensor {
            path: ck.dir().to_path_buf(),
            name: name.into(),
            what: format!("{} values, expected {len}", v.len()),
        });
    }
    Ok(v)
}

/// The parts of a Hugging Face checkpoint (OPT or Llama family).
pub fn hf(ck: Arc<HfCheckpoint>) -> Result<ModelParts> {
    let cfg = ck.config().clone();
    let (d, f, kv, v) = (cfg.d_model, cfg.d_ffn, cfg.kv_dim(), cfg.vocab_size);
    let q_dim = cfg.n_heads * cfg.head_dim;
    let lin = |name: &str, rows: usize, cols: usize, bias: bool| -> Result<Linear> {
        let w = hf_matrix(&ck, &format!("{name}.weight"), rows, cols)?;
        let b = if bias { Some(hf_vector(&ck, &format!("{name}.bias"), rows)?) } else { None };
        Ok(Linear { w, b })
    };
    match cfg.arch {
        Arch::Opt => {
            let p = "model.decoder";
            let e = cfg.embed_dim();
            let ln = |name: &str| -> Result<Norm> {
                if cfg.norm_affine {
                    Ok(Norm::Layer {
                        w: hf_vector(&ck, &format!("{name}.weight"), d)?,
                        b: hf_vector(&ck, &format!("{name}.bias"), d)?,
                    })
                } else {
                    Ok(Norm::Layer { w: vec![1.0; d], b: vec![0.0; d] })
                }
            };
            let tok_embd = hf_matrix(&ck, &format!("{p}.embed_tokens.weight"), v, e)?;
            let pos_name = format!("{p}.embed_positions.weight");
            let pos_rows = ck.tensor(&pos_name)?.rows();
            let table = hf_vector(&ck, &pos_name, pos_rows * d)?;
            let (project_in, project_out) = if e != d {
                (
                    Some(lin(&format!("{p}.project_in"), d, e, false)?),
                    Some(lin(&format!("{p}.project_out"), e, d, false)?),
                )
            } else {
                (None, None)
            };
            let output = if ck.contains("lm_head.weight") { hf_matrix(&ck, "lm_head.weight", v, e)? } else { tok_embd };
            let output_norm = if cfg.final_norm { Some(ln(&format!("{p}.final_layer_norm"))?) } else { None };
            let mut layers = Vec::with_capacity(cfg.n_layers);
            for l in 0..cfg.n_layers {
                let n = |s: &str| format!("{p}.layers.{l}.{s}");
                layers.push(LayerWeights {
                    attn_norm: ln(&n("self_attn_layer_norm"))?,
                    q: lin(&n("self_attn.q_proj"), q_dim, d, cfg.qkv_bias)?,
                    k: lin(&n("self_attn.k_proj"), kv, d, cfg.qkv_bias)?,
                    v: lin(&n("self_attn.v_proj"), kv, d, cfg.qkv_bias)?,
                    o: lin(&n("self_attn.out_proj"), d, q_dim, cfg.out_bias)?,
                    ffn_norm: ln(&n("final_layer_norm"))?,
                    ffn: FfnWeights::Plain {
                        fc1: lin(&n("fc1"), f, d, cfg.ffn_bias)?,
                        fc2: lin(&n("fc2"), d, f, cfg.ffn_bias)?,
                    },
                });
            }
            Ok(ModelParts {
                source: ck.clone(),
                cfg,
                tok_embd,
                project_in,
                project_out,
                positions: Positions::Learned { table, offset: OPT_POSITION_OFFSET, rows: pos_rows },
                output_norm,
                output,
                layers,
            })
        }
        Arch::Llama => {
            let rms = |name: &str| -> Result<Norm> { Ok(Norm::Rms { w: hf_vector(&ck, name, d)? }) };
            let tok_embd = hf_matrix(&ck, "model.embed_tokens.weight", v, d)?;
            let output = if ck.contains("lm_head.weight") { hf_matrix(&ck, "lm_head.weight", v, d)? } else { tok_embd };
            let mut layers = Vec::with_capacity(cfg.n_layers);
            for l in 0..cfg.n_layers {
                let n = |s: &str| format!("model.layers.{l}.{s}");
                layers.push(LayerWeights {
                    attn_norm: rms(&n("input_layernorm.weight"))?,
                    q: lin(&n("self_attn.q_proj"), q_dim, d, cfg.qkv_bias)?,
                    k: lin(&n("self_attn.k_proj"), kv, d, cfg.qkv_bias)?,
                    v: lin(&n("self_attn.v_proj"), kv, d, cfg.qkv_bias)?,
                    o: lin(&n("self_attn.o_proj"), d, q_dim, cfg.out_bias)?,
                    ffn_norm: rms(&n("post_attention_layernorm.weight"))?,
                    ffn: FfnWeights::Gated {
                        gate: lin(&n("mlp.gate_proj"), f, d, cfg.ffn_bias)?,
                        up: lin(&n("mlp.up_proj"), f, d, cfg.ffn_bias)?,
                        down: lin(&n("mlp.down_proj"), d, f, cfg.ffn_bias)?,
                    },
                });
            }
            Ok(ModelParts {
                source: ck.clone(),
                cfg,
                tok_embd,
                project_in: None,
                project_out: None,
                positions: Positions::Rope,
                output_norm: Some(rms("model.norm.weight")?),
                output,
                layers,
            })
        }
    }
}

/// A model file or checkpoint directory, opened: what every command taking `-m/--model` accepts.
pub enum Source {
    Gguf(Arc<GgufFile>),
    Hf(Arc<HfCheckpoint>),
}

impl Source {
    /// Opens a GGUF file, or a Hugging Face checkpoint directory (config.json + safetensors).
    pub fn open(path: &std::path::Path) -> Result<Source> {
        if path.is_dir() {
            Ok(Source::Hf(Arc::new(HfCheckpoint::open(path)?)))
        } else {
            Ok(Source::Gguf(Arc::new(GgufFile::open(path)?)))
        }
    }

    /// The model's tokenizer: from GGUF metadata or the checkpoint's tokenizer.json.
    pub fn tokenizer(&self) -> Result<super::tokenizer::Tokenizer> {
        match self {
            Source::Gguf(g) => super::tokenizer::Tokenizer::from_gguf(g),
            Source::Hf(h) => h.tokenizer(),
        }
    }

    /// The engine's parts.
    pub fn parts(&self) -> Result<ModelParts> {
        match self {
            Source::Gguf(g) => gguf_llama(g.clone()),
            Source::Hf(h) => hf(h.clone()),
        }
    }
}
