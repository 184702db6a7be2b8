//! The Llama-family forward pass over weights as GGUF stores them, with a KV cache, batched prompt processing
//! and single-token decode. The FFN is one replaceable step ([`FfnStep`]): the dense FFN here, the sparse
//! flash-backed FFN of the flash engine later.

use std::sync::Arc;

use rayon::prelude::*;

use super::kernels::{self, Acts, QMatrix};
use super::ops::{self, RopeTable};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::quant::DType;
use crate::{Error, Result};

/// A weight matrix: where its bytes sit in the model file and its shape.
#[derive(Debug, Clone, Copy)]
pub struct WeightRef {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    len: usize,
}

/// The weights of one transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: WeightRef,
    pub wk: WeightRef,
    pub wv: WeightRef,
    pub wo: WeightRef,
    pub ffn_norm: Vec<f32>,
    pub gate: WeightRef,
    pub up: WeightRef,
    pub down: WeightRef,
}

/// A Llama-architecture model whose matrices stay in the (memory-mapped) file, quantized.
pub struct LlamaModel {
    file: Arc<GgufFile>,
    cfg: ModelConfig,
    tok_embd: WeightRef,
    output: WeightRef,
    output_norm: Vec<f32>,
    layers: Vec<LayerWeights>,
}

/// Per-sequence state: the KV cache, the position, and scratch buffers reused between calls.
pub struct State {
    pos: usize,
    max_seq: usize,
    /// `[layer][kv_head][pos][head_dim]`.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    acts: Acts,
    rope: RopeTable,
}

impl State {
    /// Tokens processed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The longest sequence this state can hold.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Forgets the sequence, keeping the allocations.
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}

/// The FFN of one layer, replaceable: it maps the normalized hidden states `x` (`n` rows of `d_model`) to the
/// FFN output `out` (same shape, overwritten).
pub trait FfnStep {
    fn forward(&mut self, model: &LlamaModel, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()>;
}

/// The dense gated FFN: `down(act(gate x) * up x)` with every neuron computed.
#[derive(Default)]
pub struct DenseFfn {
    acts: Acts,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl FfnStep for DenseFfn {
    fn forward(&mut self, model: &LlamaModel, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let lw = &model.layers[layer];
        let f = model.cfg.d_ffn;
        self.gate.resize(n * f, 0.0);
        self.up.resize(n * f, 0.0);
        model.project(&lw.gate, x, n, &mut self.acts, &mut self.gate);
        if lw.up.dtype != lw.gate.dtype {
            self.acts.prepare(lw.up.dtype, x, n, lw.up.cols);
        }
        kernels::matmul(&model.matrix(&lw.up), &self.acts, &mut self.up);
        for (g, u) in self.gate.iter_mut().zip(&self.up) {
            *g = ops::silu(*g) * u;
        }
        model.project(&lw.down, &self.gate, n, &mut self.acts, out);
        Ok(())
    }
}

impl LlamaModel {
    /// Binds the model's tensors in a GGUF file, checking every name, type and shape.
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<LlamaModel> {
        let cfg = ModelConfig::from_gguf(&file)?;
        let (d, f, kv, v) = (cfg.d_model, cfg.d_ffn, cfg.kv_dim(), cfg.vocab_size);
        let mat = |name: &str, rows: usize, cols: usize| weight(&file, name, rows, cols);
        let vec = |name: &str, len: usize| -> Result<Vec<f32>> {
            let w = weight(&file, name, 1, len)?;
            file.tensor_f32(name).and_then(|x| {
                if w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16 {
                    Ok(x)
                } else {
                    Err(tensor_err(&file, name, format!("a norm weight of type {}", w.dtype)))
                }
            })
        };
        let tok_embd = mat("token_embd.weight", v, d)?;
        let output = if cfg.tied_embeddings { tok_embd } else { mat("output.weight", v, d)? };
        let output_norm = vec("output_norm.weight", d)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: vec(&n("attn_norm"), d)?,
                wq: mat(&n("attn_q"), d, d)?,
                wk: mat(&n("attn_k"), kv, d)?,
                wv: mat(&n("attn_v"), kv, d)?,
                wo: mat(&n("attn_output"), d, d)?,
                ffn_norm: vec(&n("ffn_norm"), d)?,
                gate: mat(&n("ffn_gate"), f, d)?,
                up: mat(&n("ffn_up"), f, d)?,
                down: mat(&n("ffn_down"), d, f)?,
            });
        }
        Ok(LlamaModel { file, cfg, tok_embd, output, output_norm, layers })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The file the weights come from.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// The weights of layer `l`.
    pub fn layer(&self, l: usize) -> &LayerWeights {
        &self.layers[l]
    }

    /// A view of a weight matrix.
    pub fn matrix(&self, w: &WeightRef) -> QMatrix<'_> {
        QMatrix { dtype: w.dtype, rows: w.rows, cols: w.cols, data: &self.file.bytes()[w.offset..w.offset + w.len] }
    }

    /// `out = x W^T` for `n` rows of `x`, preparing the activations for `w`'s type.
    fn project(&self, w: &WeightRef, x: &[f32], n: usize, acts: &mut Acts, out: &mut [f32]) {
        acts.prepare(w.dtype, x, n, w.cols);
        kernels::matmul(&self.matrix(w), acts, out);
    }

    /// A fresh state holding up to `max_seq` tokens.
    pub fn new_state(&self, max_seq: usize) -> State {
        let len = self.cfg.n_layers * max_seq * self.cfg.kv_dim();
        State { pos: 0, max_seq, k_cache: vec![0.0; len], v_cache: vec![0.0; len], scratch: Scratch::default() }
    }

    /// Runs `tokens` through the model with the dense FFN and returns the logits of every new position
    /// (`tokens.len() x vocab`, row-major) when `all_logits`, else of the last one only.
    pub fn forward(&self, state: &mut State, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let first = if all_logits { 0 } else { tokens.len().saturating_sub(1) };
        self.forward_with(state, tokens, first, &mut DenseFfn::default())
    }

    /// Appends `tokens` to the sequence in `state`, computing each layer's FFN with `ffn`, and returns the
    /// logits of the new positions `first_logit..tokens.len()` (row-major, `vocab` per row).
    pub fn forward_with(
        &self,
        state: &mut State,
        tokens: &[u32],
        first_logit: usize,
        ffn: &mut dyn FfnStep,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Invalid("forward called with no tokens".into()));
        }
        if state.pos + n > state.max_seq {
            return Err(Error::Invalid(format!(
                "sequence of {} tokens exceeds the state's capacity of {}",
                state.pos + n,
                state.max_seq
            )));
        }
        if first_logit >= n {
            return Err(Error::Invalid(format!("first logit {first_logit} is past the {n} tokens given")));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let (d, kv) = (cfg.d_model, cfg.kv_dim());
        let start = state.pos;
        let s = &mut state.scratch;
        s.x.resize(n * d, 0.0);
        s.xn.resize(n * d, 0.0);
        s.q.resize(n * d, 0.0);
        s.k.resize(n * kv, 0.0);
        s.v.resize(n * kv, 0.0);
        s.att.resize(n * d, 0.0);
        s.proj.resize(n * d, 0.0);
        let embd = self.matrix(&self.tok_embd);
        for (t, &tok) in tokens.iter().enumerate() {
            crate::model::quant::dequantize(embd.dtype, embd.row(tok as usize), &mut s.x[t * d..(t + 1) * d])?;
        }
        s.rope.fill(start, n, cfg.rope_dim, cfg.rope_base);

        for (l, lw) in self.layers.iter().enumerate() {
            for t in 0..n {
                ops::rms_norm(&s.x[t * d..(t + 1) * d], &lw.attn_norm, cfg.norm_eps, &mut s.xn[t * d..(t + 1) * d]);
            }
            s.acts.prepare(lw.wq.dtype, &s.xn, n, d);
            kernels::matmul(&self.matrix(&lw.wq), &s.acts, &mut s.q);
            for (w, out) in [(&lw.wk, &mut s.k), (&lw.wv, &mut s.v)] {
                if w.dtype != lw.wq.dtype {
                    s.acts.prepare(w.dtype, &s.xn, n, d);
                }
                kernels::matmul(&self.matrix(w), &s.acts, out);
            }
            for t in 0..n {
                s.rope.apply(cfg.rope_style, t, &mut s.q[t * d..(t + 1) * d], cfg.head_dim);
                s.rope.apply(cfg.rope_style, t, &mut s.k[t * kv..(t + 1) * kv], cfg.head_dim);
            }
            self.store_kv((&mut state.k_cache, &mut state.v_cache), l, start, n, &s.k, &s.v, state.max_seq);
            self.attention(&state.k_cache, &state.v_cache, l, start, n, &s.q, &mut s.att, state.max_seq);
            self.project(&lw.wo, &s.att, n, &mut s.acts, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }

            for t in 0..n {
                ops::rms_norm(&s.x[t * d..(t + 1) * d], &lw.ffn_norm, cfg.norm_eps, &mut s.xn[t * d..(t + 1) * d]);
            }
            ffn.forward(self, l, &s.xn, n, &mut s.proj)?;
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
        }

        let first = first_logit;
        let m = n - first;
        for t in first..n {
            ops::rms_norm(&s.x[t * d..(t + 1) * d], &self.output_norm, cfg.norm_eps, &mut s.xn[t * d..(t + 1) * d]);
        }
        let mut logits = vec![0.0f32; m * cfg.vocab_size];
        self.project(&self.output, &s.xn[first * d..n * d], m, &mut s.acts, &mut logits);
        state.pos += n;
        Ok(logits)
    }

    #[allow(clippy::too_many_arguments)]
    fn store_kv(
        &self,
        cache: (&mut [f32], &mut [f32]),
        l: usize,
        start: usize,
        n: usize,
        k: &[f32],
        v: &[f32],
        max_seq: usize,
    ) {
        let (hd, nkv) = (self.cfg.head_dim, self.cfg.n_kv_heads);
        let (kc, vc) = cache;
        for t in 0..n {
            for g in 0..nkv {
                let dst = ((l * nkv + g) * max_seq + start + t) * hd;
                let src = (t * nkv + g) * hd;
                kc[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                vc[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
            }
        }
    }

    /// Causal grouped-query attention of `n` new tokens at positions `start..start + n` over the cache.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kc: &[f32],
        vc: &[f32],
        l: usize,
        start: usize,
        n: usize,
        q: &[f32],
        out: &mut [f32],
        max_seq: usize,
    ) {
        let cfg = &self.cfg;
        let (hd, nh, nkv, d) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.d_model);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let one = |t: usize, h: usize, o: &mut [f32], scores: &mut Vec<f32>| {
            let g = h / group;
            let base = (l * nkv + g) * max_seq;
            let len = start + t + 1;
            let qv = &q[t * d + h * hd..t * d + (h + 1) * hd];
            scores.clear();
            scores.extend((0..len).map(|j| ops::dot(qv, &kc[(base + j) * hd..(base + j + 1) * hd]) * scale));
            ops::softmax(scores);
            o.fill(0.0);
            for (j, &a) in scores.iter().enumerate() {
                ops::axpy(a, &vc[(base + j) * hd..(base + j + 1) * hd], o);
            }
        };
        // Work is about n * (start + n) * d multiply-adds; below a few hundred thousand, threads cost more than
        // they save.
        let work = n * (start + n) * d;
        if work < 1 << 18 {
            let mut scores = Vec::new();
            for (t, row) in out.chunks_exact_mut(d).enumerate() {
                for (h, o) in row.chunks_exact_mut(hd).enumerate() {
                    one(t, h, o, &mut scores);
                }
            }
        } else {
            out.par_chunks_exact_mut(hd).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
                one(i / nh, i % nh, o, scores);
            });
        }
    }
}

fn tensor_err(file: &GgufFile, name: &str, what: String) -> Error {
    Error::Tensor { path: file.path().to_path_buf(), name: name.to_string(), what }
}

/// Binds a 2-D tensor (`rows x cols`, with `cols` the contiguous dimension) and checks its shape and size.
fn weight(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<WeightRef> {
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
    Ok(WeightRef { dtype: info.dtype, rows, cols, offset: offset as usize, len: len as usize })
}
