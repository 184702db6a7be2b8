//! Binding a model file's tensors to the engine's parts: names, shapes and types checked, bytes located.

use std::sync::Arc;

use super::config::{Arch, ModelConfig, OPT_POSITION_OFFSET};
use super::gguf::GgufFile;
use super::quant::DType;
use super::safetensors::HfCheckpoint;
use super::weights::{FfnWeights, LayerWeights, Linear, ModelParts, Norm, Positions, WeightRef, WeightSource};
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

/// Named tensors a binder reads: a GGUF file (the source's, or a layout's `resident.bin`, which keeps the
/// source's tensor names) or a Hugging Face checkpoint.
trait Tensors {
    fn contains(&self, name: &str) -> bool;
    /// A `rows x cols` matrix (`cols` contiguous), shape and size checked.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<WeightRef>;
    /// A float vector of `len` values (norm weights, biases).
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
    /// The number of rows of a 2-D tensor.
    fn rows(&self, name: &str) -> Result<usize>;
}

impl Tensors for GgufFile {
    fn contains(&self, name: &str) -> bool {
        self.tensor(name).is_ok()
    }
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<WeightRef> {
        gguf_matrix(self, name, rows, cols)
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        if info.n_elements() != len as u64 {
            return Err(tensor_err(self, name, format!("{} values, expected {len}", info.n_elements())));
        }
        if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(tensor_err(self, name, format!("a vector of type {}, expected a float type", info.dtype)));
        }
        self.tensor_f32(name)
    }
    fn rows(&self, name: &str) -> Result<usize> {
        Ok(self.tensor(name)?.rows() as usize)
    }
}

impl Tensors for HfCheckpoint {
    fn contains(&self, name: &str) -> bool {
        HfCheckpoint::contains(self, name)
    }
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<WeightRef> {
        let t = self.tensor(name)?;
        if t.shape != [rows, cols] {
            return Err(Error::Tensor {
                path: t.file.to_path_buf(),
                name: name.to_string(),
                what: format!("shape {:?}, expected [{rows}, {cols}]", t.shape),
            });
        }
        let (shard, range) = self.location(name)?;
        Ok(WeightRef { dtype: t.dtype, rows, cols, shard, offset: range.start, len: range.len() })
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.tensor_f32(name)?;
        if v.len() != len {
            return Err(Error::Tensor {
                path: self.dir().to_path_buf(),
                name: name.into(),
                what: format!("{} values, expected {len}", v.len()),
            });
        }
        Ok(v)
    }
    fn rows(&self, name: &str) -> Result<usize> {
        Ok(self.tensor(name)?.rows())
    }
}

impl WeightSource for HfCheckpoint {
    fn label(&self) -> &std::path::Path {
        self.dir()
    }
    fn shard_bytes(&self, i: usize) -> &[u8] {
        HfCheckpoint::shard_bytes(self, i)
    }
}

/// Whether the FFN matrices are bound from the tensors or stay on flash (a layout's `resident.bin`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ffn {
    Bound,
    Streamed,
}

/// The parts of a Llama-architecture GGUF model.
pub fn gguf_llama(file: Arc<GgufFile>) -> Result<ModelParts> {
    let cfg = ModelConfig::from_gguf(&file)?;
    llama_gguf_names(&*file, file.clone(), cfg, Ffn::Bound)
}

/// Llama-family tensors under llama.cpp's GGUF names.
fn llama_gguf_names(t: &dyn Tensors, source: Arc<dyn WeightSource>, cfg: ModelConfig, ffn: Ffn) -> Result<ModelParts> {
    let (d, f, kv, v) = (cfg.d_model, cfg.d_ffn, cfg.kv_dim(), cfg.vocab_size);
    let lin = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
        Ok(Linear { w: t.matrix(name, rows, cols)?, b: None })
    };
    let rms = |name: &str| -> Result<Norm> { Ok(Norm::Rms { w: t.vector(name, d)? }) };
    let tok_embd = t.matrix("token_embd.weight", v, d)?;
    let output = if cfg.tied_embeddings { tok_embd } else { t.matrix("output.weight", v, d)? };
    let output_norm = Some(rms("output_norm.weight")?);
    // Not reserved from `n_layers`, a count the file states: a layer is pushed only once its tensors are found
    // in the file, so the file's contents bound the growth.
    let mut layers = Vec::new();
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        layers.push(LayerWeights {
            attn_norm: rms(&n("attn_norm"))?,
            q: lin(&n("attn_q"), d, d)?,
            k: lin(&n("attn_k"), kv, d)?,
            v: lin(&n("attn_v"), kv, d)?,
            o: lin(&n("attn_output"), d, d)?,
            ffn_norm: rms(&n("ffn_norm"))?,
            ffn: match ffn {
                Ffn::Streamed => FfnWeights::Streamed { b1: None, b2: None },
                Ffn::Bound => FfnWeights::Gated {
                    gate: lin(&n("ffn_gate"), f, d)?,
                    up: lin(&n("ffn_up"), f, d)?,
                    down: lin(&n("ffn_down"), d, f)?,
                },
            },
        });
    }
    Ok(ModelParts {
        source,
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

/// The parts of a Hugging Face checkpoint (OPT or Llama family).
pub fn hf(ck: Arc<HfCheckpoint>) -> Result<ModelParts> {
    let cfg = ck.config().clone();
    hf_names(&*ck, ck.clone(), cfg, Ffn::Bound)
}

/// OPT or Llama-family tensors under their Hugging Face names.
fn hf_names(t: &dyn Tensors, source: Arc<dyn WeightSource>, cfg: ModelConfig, ffn: Ffn) -> Result<ModelParts> {
    let (d, f, kv, v) = (cfg.d_model, cfg.d_ffn, cfg.kv_dim(), cfg.vocab_size);
    let q_dim = cfg.n_heads * cfg.head_dim;
    let lin = |name: &str, rows: usize, cols: usize, bias: bool| -> Result<Linear> {
        let w = t.matrix(&format!("{name}.weight"), rows, cols)?;
        let b = if bias { Some(t.vector(&format!("{name}.bias"), rows)?) } else { None };
        Ok(Linear { w, b })
    };
    // A streamed FFN keeps only its biases: `first` and `second` name the two projections.
    let streamed = |first: &str, second: &str| -> Result<FfnWeights> {
        let bias = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if cfg.ffn_bias {
                Ok(Some(t.vector(&format!("{name}.bias"), len)?))
            } else {
                Ok(None)
            }
        };
        Ok(FfnWeights::Streamed { b1: bias(first, f)?, b2: bias(second, d)? })
    };
    match cfg.arch {
        Arch::Opt => {
            let p = "model.decoder";
            let e = cfg.embed_dim();
            let ln = |name: &str| -> Result<Norm> {
                if cfg.norm_affine {
                    Ok(Norm::Layer {
                        w: t.vector(&format!("{name}.weight"), d)?,
                        b: t.vector(&format!("{name}.bias"), d)?,
                    })
                } else {
                    Ok(Norm::Layer { w: vec![1.0; d], b: vec![0.0; d] })
                }
            };
            let tok_embd = t.matrix(&format!("{p}.embed_tokens.weight"), v, e)?;
            let pos_name = format!("{p}.embed_positions.weight");
            let pos_rows = t.rows(&pos_name)?;
            let table = t.vector(&pos_name, pos_rows * d)?;
            let (project_in, project_out) = if e != d {
                (
                    Some(lin(&format!("{p}.project_in"), d, e, false)?),
                    Some(lin(&format!("{p}.project_out"), e, d, false)?),
                )
            } else {
                (None, None)
            };
            let output = if t.contains("lm_head.weight") { t.matrix("lm_head.weight", v, e)? } else { tok_embd };
            let output_norm = if cfg.final_norm { Some(ln(&format!("{p}.final_layer_norm"))?) } else { None };
            // Grown as layers are found, not reserved from `n_layers` (see `llama_gguf_names`).
            let mut layers = Vec::new();
            for l in 0..cfg.n_layers {
                let n = |s: &str| format!("{p}.layers.{l}.{s}");
                layers.push(LayerWeights {
                    attn_norm: ln(&n("self_attn_layer_norm"))?,
                    q: lin(&n("self_attn.q_proj"), q_dim, d, cfg.qkv_bias)?,
                    k: lin(&n("self_attn.k_proj"), kv, d, cfg.qkv_bias)?,
                    v: lin(&n("self_attn.v_proj"), kv, d, cfg.qkv_bias)?,
                    o: lin(&n("self_attn.out_proj"), d, q_dim, cfg.out_bias)?,
                    ffn_norm: ln(&n("final_layer_norm"))?,
                    ffn: match ffn {
                        Ffn::Streamed => streamed(&n("fc1"), &n("fc2"))?,
                        Ffn::Bound => FfnWeights::Plain {
                            fc1: lin(&n("fc1"), f, d, cfg.ffn_bias)?,
                            fc2: lin(&n("fc2"), d, f, cfg.ffn_bias)?,
                        },
                    },
                });
            }
            Ok(ModelParts {
                source,
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
            let rms = |name: &str| -> Result<Norm> { Ok(Norm::Rms { w: t.vector(name, d)? }) };
            let tok_embd = t.matrix("model.embed_tokens.weight", v, d)?;
            let output = if t.contains("lm_head.weight") { t.matrix("lm_head.weight", v, d)? } else { tok_embd };
            // Grown as layers are found, not reserved from `n_layers` (see `llama_gguf_names`).
            let mut layers = Vec::new();
            for l in 0..cfg.n_layers {
                let n = |s: &str| format!("model.layers.{l}.{s}");
                layers.push(LayerWeights {
                    attn_norm: rms(&n("input_layernorm.weight"))?,
                    q: lin(&n("self_attn.q_proj"), q_dim, d, cfg.qkv_bias)?,
                    k: lin(&n("self_attn.k_proj"), kv, d, cfg.qkv_bias)?,
                    v: lin(&n("self_attn.v_proj"), kv, d, cfg.qkv_bias)?,
                    o: lin(&n("self_attn.o_proj"), d, q_dim, cfg.out_bias)?,
                    ffn_norm: rms(&n("post_attention_layernorm.weight"))?,
                    ffn: match ffn {
                        Ffn::Streamed => streamed(&n("mlp.gate_proj"), &n("mlp.down_proj"))?,
                        Ffn::Bound => FfnWeights::Gated {
                            gate: lin(&n("mlp.gate_proj"), f, d, cfg.ffn_bias)?,
                            up: lin(&n("mlp.up_proj"), f, d, cfg.ffn_bias)?,
                            down: lin(&n("mlp.down_proj"), d, f, cfg.ffn_bias)?,
                        },
                    },
                });
            }
            Ok(ModelParts {
                source,
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

/// The parts of a layout's resident model: `resident.bin` (opened by the caller) bound with the FFN matrices
/// left on flash. `cfg` is the manifest's configuration; `hf_names` says whether the tensors carry Hugging Face
/// checkpoint names (a checkpoint's layout) or llama.cpp's GGUF names.
pub fn resident(file: Arc<GgufFile>, cfg: ModelConfig, hf_tensor_names: bool) -> Result<ModelParts> {
    if hf_tensor_names {
        hf_names(&*file, file.clone(), cfg, Ffn::Streamed)
    } else {
        llama_gguf_names(&*file, file.clone(), cfg, Ffn::Streamed)
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
