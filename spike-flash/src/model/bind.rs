//! Binding a model file's tensors to the engine's parts: names, shapes and types checked, bytes located.

use std::sync::Arc;

use super::config::ModelConfig;
use super::gguf::GgufFile;
use super::quant::DType;
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
