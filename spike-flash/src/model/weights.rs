//! The parts of a model as the importers bind them: where weight bytes live ([`WeightSource`], [`WeightRef`]),
//! linear maps, norms, FFN weights, layers, positions, and one layer's FFN as neuron-major f32 rows
//! ([`NeuronRows`]). The engine computes on these; the flash layout reads and writes them.

use std::path::Path;
use std::sync::Arc;

use super::config::ModelConfig;
use super::gguf::GgufFile;
use super::quant::{self, DType};
use crate::{Error, Result};

/// Where a model's weight bytes live: one or more byte ranges (shards), typically memory maps.
pub trait WeightSource: Send + Sync {
    /// The file (or folder) the weights come from, for messages.
    fn label(&self) -> &Path;
    /// The bytes of shard `i`.
    fn shard_bytes(&self, i: usize) -> &[u8];
}

impl WeightSource for GgufFile {
    fn label(&self) -> &Path {
        self.path()
    }
    fn shard_bytes(&self, _i: usize) -> &[u8] {
        self.bytes()
    }
}

/// A weight matrix of `rows x cols` (`cols` contiguous): where its bytes sit and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightRef {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub shard: usize,
    pub offset: usize,
    pub len: usize,
}

/// A linear map `y = W x (+ b)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: WeightRef,
    pub b: Option<Vec<f32>>,
}

/// A normalization with its learned parameters.
#[derive(Debug, Clone)]
pub enum Norm {
    /// `x / rms(x) * w`.
    Rms { w: Vec<f32> },
    /// `(x - mean) / std * w + b`.
    Layer { w: Vec<f32>, b: Vec<f32> },
}

/// The FFN weights of one layer.
#[derive(Debug, Clone)]
pub enum FfnWeights {
    /// `down(act(gate x) * up x)` (SwiGLU and relufied variants).
    Gated { gate: Linear, up: Linear, down: Linear },
    /// `fc2(act(fc1 x + b1)) + b2` (OPT).
    Plain { fc1: Linear, fc2: Linear },
    /// The matrices stay on flash (a layout's `ffn.bin`); only the biases are in DRAM. An FFN step that reads
    /// the layout computes it.
    Streamed { b1: Option<Vec<f32>>, b2: Option<Vec<f32>> },
}

impl FfnWeights {
    /// The projection that maps the hidden state to the neurons (gate or fc1), one row per neuron; `None` when
    /// streamed.
    pub fn first(&self) -> Option<&Linear> {
        match self {
            FfnWeights::Gated { gate, .. } => Some(gate),
            FfnWeights::Plain { fc1, .. } => Some(fc1),
            FfnWeights::Streamed { .. } => None,
        }
    }
    /// The projection that maps neurons back to the hidden state (down or fc2), one column per neuron; `None`
    /// when streamed.
    pub fn second(&self) -> Option<&Linear> {
        match self {
            FfnWeights::Gated { down, .. } => Some(down),
            FfnWeights::Plain { fc2, .. } => Some(fc2),
            FfnWeights::Streamed { .. } => None,
        }
    }
    /// The biases of the first projection (per neuron) and of the second (per output dimension).
    pub fn biases(&self) -> (Option<&[f32]>, Option<&[f32]>) {
        match self {
            FfnWeights::Streamed { b1, b2 } => (b1.as_deref(), b2.as_deref()),
            w => (w.first().and_then(|l| l.b.as_deref()), w.second().and_then(|l| l.b.as_deref())),
        }
    }
}

/// The weights of one transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Norm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub ffn_norm: Norm,
    pub ffn: FfnWeights,
}

/// How positions enter the model.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Rotary embeddings on q and k, in the configuration's style.
    Rope,
    /// A learned table added to the embeddings: row `pos + offset` (OPT's offset is 2), `d_model` wide.
    Learned { table: Vec<f32>, offset: usize, rows: usize },
}

/// All the parts of a model, as the importers bind them.
pub struct ModelParts {
    pub source: Arc<dyn WeightSource>,
    pub cfg: ModelConfig,
    /// `vocab x d_embed`: the token embedding (`d_embed` is `d_model` unless projected).
    pub tok_embd: WeightRef,
    pub project_in: Option<Linear>,
    pub project_out: Option<Linear>,
    pub positions: Positions,
    pub output_norm: Option<Norm>,
    /// `vocab x d_embed`: the output matrix (the embedding when tied).
    pub output: WeightRef,
    pub layers: Vec<LayerWeights>,
}

impl WeightRef {
    /// Bytes per row (`cols` is a whole number of blocks, checked when the matrix is bound).
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_len() * self.dtype.block_bytes()
    }
}

impl AsRef<ModelParts> for ModelParts {
    fn as_ref(&self) -> &ModelParts {
        self
    }
}

impl ModelParts {
    /// The bytes of matrix `w` (its bounds were checked when the model was bound; see [`ModelParts::check`]).
    pub fn bytes(&self, w: &WeightRef) -> &[u8] {
        &self.source.shard_bytes(w.shard)[w.offset..w.offset + w.len]
    }

    /// The weight bytes one decode step reads: every matrix once (the output head included, the FFN's only
    /// when it is in DRAM), one row of the token embedding (the whole table when it is also the output head,
    /// counted there) and of a learned position table, and the f32 norms and biases.
    pub fn decode_bytes(&self) -> u64 {
        let lin = |l: &Linear| (l.w.len + l.b.as_ref().map_or(0, |b| 4 * b.len())) as u64;
        let norm = |n: &Norm| match n {
            Norm::Rms { w } => 4 * w.len() as u64,
            Norm::Layer { w, b } => 4 * (w.len() + b.len()) as u64,
        };
        let ffn = |f: &FfnWeights| match f {
            FfnWeights::Gated { gate, up, down } => lin(gate) + lin(up) + lin(down),
            FfnWeights::Plain { fc1, fc2 } => lin(fc1) + lin(fc2),
            FfnWeights::Streamed { .. } => 0,
        };
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                norm(&l.attn_norm) + lin(&l.q) + lin(&l.k) + lin(&l.v) + lin(&l.o) + norm(&l.ffn_norm) + ffn(&l.ffn)
            })
            .sum();
        let tied = self.tok_embd == self.output;
        let embd_row = if tied { 0 } else { self.tok_embd.row_bytes() as u64 };
        let position_row = match &self.positions {
            Positions::Rope => 0,
            Positions::Learned { table, rows, .. } => 4 * (table.len() / (*rows).max(1)) as u64,
        };
        layers
            + self.output.len as u64
            + embd_row
            + position_row
            + self.project_in.iter().chain(&self.project_out).map(lin).sum::<u64>()
            + self.output_norm.as_ref().map_or(0, norm)
    }

    /// The bytes of row `r` of matrix `w`.
    ///
    /// # Panics
    /// When `r >= w.rows`.
    pub fn row(&self, w: &WeightRef, r: usize) -> &[u8] {
        assert!(r < w.rows, "row {r} of a {}-row matrix", w.rows);
        let n = w.row_bytes();
        &self.bytes(w)[r * n..(r + 1) * n]
    }
}

/// One layer's neurons, neuron-major: row `i` of each matrix belongs to neuron `i`.
#[derive(Debug, Clone)]
pub struct NeuronRows {
    /// `d_ffn x d_model`: gate rows (gated) or fc1 rows (plain).
    pub first: Vec<f32>,
    /// `d_ffn x d_model`: up rows (gated only).
    pub up: Option<Vec<f32>>,
    /// `d_ffn x d_model`: columns of down / fc2.
    pub second_t: Vec<f32>,
    /// fc1 bias, per neuron (plain only).
    pub b1: Option<Vec<f32>>,
    /// Bias of the second projection, per output dimension.
    pub b2: Option<Vec<f32>>,
}

impl NeuronRows {
    /// Dequantizes layer `l`'s FFN of `parts` into neuron-major rows.
    pub fn from_parts(parts: &ModelParts, l: usize) -> Result<NeuronRows> {
        let (d, f) = (parts.cfg.d_model, parts.cfg.d_ffn);
        let dense = |lin: &Linear| -> Result<Vec<f32>> {
            let mut out = vec![0.0f32; lin.w.rows * lin.w.cols];
            quant::dequantize(lin.w.dtype, parts.bytes(&lin.w), &mut out)?;
            Ok(out)
        };
        let lw = parts.layers.get(l).ok_or_else(|| Error::Invalid(format!("no layer {l}")))?;
        let (first, up, second) = match &lw.ffn {
            FfnWeights::Gated { gate, up, down } => (dense(gate)?, Some(dense(up)?), down),
            FfnWeights::Plain { fc1, fc2 } => (dense(fc1)?, None, fc2),
            FfnWeights::Streamed { .. } => {
                return Err(Error::Invalid(format!("layer {l}'s FFN is on flash, not in the model's memory")))
            }
        };
        let s = dense(second)?;
        if s.len() != d * f || first.len() != d * f {
            return Err(Error::Invalid(format!("layer {l}: FFN matrices are not {f} x {d}")));
        }
        let mut second_t = vec![0.0f32; d * f];
        for j in 0..d {
            for i in 0..f {
                second_t[i * d + j] = s[j * f + i];
            }
        }
        let (b1, b2) = lw.ffn.biases();
        Ok(NeuronRows { first, up, second_t, b1: b1.map(<[f32]>::to_vec), b2: b2.map(<[f32]>::to_vec) })
    }
}
