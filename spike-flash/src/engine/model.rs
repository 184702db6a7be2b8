//! The transformer forward pass over weights that stay in the model file, with a KV cache, batched prompt
//! processing and single-token decode. One structure serves the Llama family (RMSNorm, rotary positions,
//! grouped-query attention, gated FFN) and OPT (LayerNorm, learned positions, biases, plain ReLU FFN). The FFN
//! is one replaceable step ([`FfnStep`]): the dense FFN here, sparse and flash-backed FFNs elsewhere.

use std::sync::Arc;

use rayon::prelude::*;

use super::input::{ActPrecision, Input};
use super::kernels::QMatrix;
use super::ops::{self, RopeTable};
use crate::model::config::{Activation, ModelConfig};
use crate::model::gguf::GgufFile;
use crate::model::weights::{FfnWeights, LayerWeights, Linear, ModelParts, Norm, Positions, WeightRef};
use crate::{Error, Result};

/// A model ready to run; matrices stay where the source keeps them (memory-mapped, quantized).
pub struct Model {
    p: ModelParts,
    precision: ActPrecision,
}

/// Per-sequence state: the KV cache, the position, and scratch buffers reused between calls.
pub struct State {
    pos: usize,
    max_seq: usize,
    /// `[layer][kv_head][pos][head_dim]`.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    scratch: Scratch,
    /// The dense FFN's buffers, reused by [`Model::forward`] from token to token.
    dense: DenseFfn<'static>,
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
    emb: Vec<f32>,
    acts: Input,
    rope: RopeTable,
}

impl State {
    /// An empty sequence of at most `max_seq` tokens over zeroed key and value caches.
    fn with_caches(max_seq: usize, k_cache: Vec<f32>, v_cache: Vec<f32>) -> State {
        State { pos: 0, max_seq, k_cache, v_cache, scratch: Scratch::default(), dense: DenseFfn::default() }
    }

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

/// The FFN of one layer, replaceable: maps the normalized hidden states `x` (`n` rows of `d_model`) to the
/// FFN output `out` (same shape, overwritten).
pub trait FfnStep {
    fn forward(&mut self, model: &Model, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()>;
}

/// Receives, per layer and token, the FFN's input and every neuron's activation (`act(gate x) * up x` for
/// gated FFNs, `act(fc1 x + b)` for plain ones): what tracing and predictor training consume.
pub trait ActivationSink {
    fn record(&mut self, layer: usize, x: &[f32], neurons: &[f32]);
}

/// The dense FFN: every neuron computed. With a sink attached it reports the activations; without one it
/// does no extra work.
#[derive(Default)]
pub struct DenseFfn<'s> {
    acts: Input,
    h: Vec<f32>,
    u: Vec<f32>,
    sink: Option<&'s mut dyn ActivationSink>,
}

impl<'s> DenseFfn<'s> {
    /// A dense FFN that reports activations to `sink`.
    pub fn with_sink(sink: &'s mut dyn ActivationSink) -> Self {
        DenseFfn { sink: Some(sink), ..Default::default() }
    }

    /// The neuron activations of `n` tokens (`n x d_ffn`) into `self.h`.
    fn neurons(&mut self, model: &Model, layer: usize, x: &[f32], n: usize) -> Result<()> {
        let f = model.config().d_ffn;
        self.h.resize(n * f, 0.0);
        let act = model.config().activation;
        match &model.p.layers[layer].ffn {
            FfnWeights::Gated { gate, up, .. } => {
                self.u.resize(n * f, 0.0);
                model.linear(gate, x, n, &mut self.acts, &mut self.h);
                model.linear_same_input(up, x, n, &mut self.acts, &mut self.u);
                for (g, u) in self.h.iter_mut().zip(&self.u) {
                    *g = activate(act, *g) * u;
                }
            }
            FfnWeights::Plain { fc1, .. } => {
                model.linear(fc1, x, n, &mut self.acts, &mut self.h);
                for g in self.h.iter_mut() {
                    *g = activate(act, *g);
                }
            }
            FfnWeights::Streamed { .. } => return Err(streamed_err(model, layer)),
        }
        Ok(())
    }
}

fn streamed_err(model: &Model, layer: usize) -> Error {
    Error::Invalid(format!(
        "{}: layer {layer}'s FFN is on flash; the dense in-memory FFN cannot run it (use a flash FFN step)",
        model.p.source.label().display()
    ))
}

impl FfnStep for DenseFfn<'_> {
    fn forward(&mut self, model: &Model, layer: usize, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        self.neurons(model, layer, x, n)?;
        if let Some(sink) = self.sink.as_deref_mut() {
            let (d, f) = (model.config().d_model, model.config().d_ffn);
            for t in 0..n {
                sink.record(layer, &x[t * d..(t + 1) * d], &self.h[t * f..(t + 1) * f]);
            }
        }
        let second = model.p.layers[layer].ffn.second().ok_or_else(|| streamed_err(model, layer))?;
        model.linear(second, &self.h, n, &mut self.acts, out);
        Ok(())
    }
}

/// The activation function.
#[inline]
pub fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Silu => ops::silu(x),
        Activation::Relu => x.max(0.0),
        Activation::Gelu => ops::gelu(x),
    }
}

impl AsRef<ModelParts> for Model {
    fn as_ref(&self) -> &ModelParts {
        &self.p
    }
}

impl Model {
    /// A model from bound parts; checks that shapes agree with the configuration.
    pub fn new(p: ModelParts) -> Result<Model> {
        p.cfg.validate(p.source.label())?;
        let m = Model { p, precision: ActPrecision::default() };
        m.check_shapes()?;
        Ok(m)
    }

    /// Binds a Llama-architecture GGUF file.
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model> {
        Model::new(crate::model::bind::gguf_llama(file)?)
    }

    /// The resident model of a flash layout (`resident.bin` read and checked by [`Layout::resident`]): every
    /// FFN is left on flash.
    ///
    /// [`Layout::resident`]: crate::layout::Layout::resident
    pub fn from_layout(layout: &crate::layout::Layout) -> Result<Model> {
        Model::new(layout.resident()?.parts)
    }

    /// Binds an opened model file or checkpoint.
    pub fn from_source(source: &crate::model::bind::Source) -> Result<Model> {
        Model::new(source.parts()?)
    }

    fn check_shapes(&self) -> Result<()> {
        let c = &self.p.cfg;
        let bad = |what: String| Err(Error::Invalid(format!("{}: {what}", self.p.source.label().display())));
        let d_embed = self.p.project_in.as_ref().map_or(c.d_model, |l| l.w.cols);
        if self.p.tok_embd.rows != c.vocab_size || self.p.tok_embd.cols != d_embed {
            return bad(format!("token embedding is {}x{}", self.p.tok_embd.rows, self.p.tok_embd.cols));
        }
        if self.p.layers.len() != c.n_layers {
            return bad(format!("{} layers bound, config says {}", self.p.layers.len(), c.n_layers));
        }
        for src in [self.p.tok_embd, self.p.output].into_iter().chain(self.p.layers.iter().flat_map(|l| {
            let ffn = [l.ffn.first(), l.ffn.second()].into_iter().flatten().map(|lin| lin.w);
            [l.q.w, l.k.w, l.v.w, l.o.w].into_iter().chain(ffn)
        })) {
            let bytes = self.p.source.shard_bytes(src.shard);
            if src.offset.checked_add(src.len).is_none_or(|e| e > bytes.len())
                || src.dtype.bytes_for((src.rows * src.cols) as u64) != Some(src.len as u64)
            {
                return bad(format!("a {}x{} {} matrix does not fit its bytes", src.rows, src.cols, src.dtype));
            }
        }
        Ok(())
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.p.cfg
    }

    /// The weights of layer `l`.
    pub fn layer(&self, l: usize) -> &LayerWeights {
        &self.p.layers[l]
    }

    /// All parts.
    pub fn parts(&self) -> &ModelParts {
        &self.p
    }

    /// A view of a weight matrix.
    pub fn matrix(&self, w: &WeightRef) -> QMatrix<'_> {
        QMatrix::trusted(w.dtype, w.rows, w.cols, &self.p.source.shard_bytes(w.shard)[w.offset..w.offset + w.len])
    }

    /// `out = x W^T + b` for `n` rows of `x`.
    pub fn linear(&self, l: &Linear, x: &[f32], n: usize, input: &mut Input, out: &mut [f32]) {
        input.prepare(l.w.dtype, x, n, l.w.cols, self.precision);
        self.linear_prepared(l, input, out);
    }

    /// Like [`Model::linear`] for an input that may already be prepared from the same `x`.
    fn linear_same_input(&self, l: &Linear, x: &[f32], n: usize, input: &mut Input, out: &mut [f32]) {
        if !input.fits(l.w.dtype) {
            input.prepare(l.w.dtype, x, n, l.w.cols, self.precision);
        }
        self.linear_prepared(l, input, out);
    }

    fn linear_prepared(&self, l: &Linear, input: &mut Input, out: &mut [f32]) {
        input.matmul(&self.matrix(&l.w), out);
        if let Some(b) = &l.b {
            for row in out.chunks_exact_mut(b.len()) {
                for (o, bi) in row.iter_mut().zip(b) {
                    *o += bi;
                }
            }
        }
    }

    /// How activations are quantized for block-quantized weights.
    pub fn precision(&self) -> ActPrecision {
        self.precision
    }

    /// Sets how activations are quantized for block-quantized weights.
    pub fn set_precision(&mut self, p: ActPrecision) {
        self.precision = p;
    }

    fn norm(&self, norm: &Norm, x: &[f32], out: &mut [f32]) {
        let eps = self.p.cfg.norm_eps;
        let d = self.p.cfg.d_model;
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            match norm {
                Norm::Rms { w } => ops::rms_norm(xr, w, eps, or),
                Norm::Layer { w, b } => ops::layer_norm(xr, w, b, eps, or),
            }
        }
    }

    /// A fresh state holding up to `max_seq` tokens, for sizes the caller knows to be small (tests, fixed
    /// windows); a size that comes from input goes through [`Model::try_new_state`].
    pub fn new_state(&self, max_seq: usize) -> State {
        let len = self.p.cfg.n_layers * max_seq * self.p.cfg.kv_dim();
        State::with_caches(max_seq, vec![0.0; len], vec![0.0; len])
    }

    /// The longest sequence the model addresses: its context length, or its position table's rows; `None` when
    /// the model file records neither.
    pub fn max_context(&self) -> Option<usize> {
        let c = &self.p.cfg;
        [c.context_length, c.max_positions].into_iter().find(|&n| n > 0)
    }

    /// A fresh state holding up to `max_seq` tokens, checked before anything is allocated: at least one
    /// token, no longer than the model's context ([`Model::max_context`]), and a KV cache that fits in the
    /// memory the system has available (`MemAvailable` of `/proc/meminfo`, where it can be read).
    pub fn try_new_state(&self, max_seq: usize) -> Result<State> {
        if max_seq == 0 {
            return Err(Error::Invalid("a sequence of 0 tokens".into()));
        }
        if let Some(ctx) = self.max_context().filter(|&c| max_seq > c) {
            return Err(Error::Invalid(format!(
                "a sequence of {max_seq} tokens is longer than the model's context of {ctx} tokens"
            )));
        }
        let len = self.p.cfg.n_layers.checked_mul(max_seq).and_then(|x| x.checked_mul(self.p.cfg.kv_dim()));
        let bytes = len.and_then(|l| l.checked_mul(2 * std::mem::size_of::<f32>()));
        let (Some(len), Some(bytes)) = (len, bytes) else {
            return Err(Error::Invalid(format!("a KV cache for {max_seq} tokens overflows the address space")));
        };
        if let Some(avail) = available_memory().filter(|&a| bytes as u64 > a) {
            return Err(Error::Invalid(format!(
                "a KV cache for {max_seq} tokens takes {bytes} bytes, more than the {avail} bytes of memory available"
            )));
        }
        let zeros = |what: &str| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len)
                .map_err(|e| Error::Invalid(format!("allocating the {what} cache for {max_seq} tokens: {e}")))?;
            v.resize(len, 0.0);
            Ok(v)
        };
        Ok(State::with_caches(max_seq, zeros("key")?, zeros("value")?))
    }

    /// Runs `tokens` through the model with the dense FFN and returns the logits of every new position
    /// (`tokens.len() x vocab`, row-major) when `all_logits`, else of the last one only.
    pub fn forward(&self, state: &mut State, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let first = if all_logits { 0 } else { tokens.len().saturating_sub(1) };
        let mut ffn = std::mem::take(&mut state.dense);
        let logits = self.forward_with(state, tokens, first, &mut ffn);
        state.dense = ffn;
        logits
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
        let cfg = &self.p.cfg;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Invalid("forward called with no tokens".into()));
        }
        if first_logit >= n {
            return Err(Error::Invalid(format!("first logit {first_logit} is past the {n} tokens given")));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        if state.pos + n > state.max_seq {
            return Err(Error::Invalid(format!(
                "sequence of {} tokens exceeds the state's capacity of {}",
                state.pos + n,
                state.max_seq
            )));
        }
        if let Positions::Learned { rows, offset, .. } = &self.p.positions {
            if state.pos + n + offset > *rows {
                return Err(Error::Invalid(format!(
                    "position {} is past the model's {} learned positions",
                    state.pos + n - 1,
                    rows - offset
                )));
            }
        }
        let (d, kv) = (cfg.d_model, cfg.kv_dim());
        let start = state.pos;
        let s = &mut state.scratch;
        for buf in [&mut s.x, &mut s.xn, &mut s.q, &mut s.att, &mut s.proj] {
            buf.resize(n * d, 0.0);
        }
        s.k.resize(n * kv, 0.0);
        s.v.resize(n * kv, 0.0);
        self.embed(tokens, start, s)?;
        if matches!(self.p.positions, Positions::Rope) {
            s.rope.fill(start, n, cfg.rope_dim, cfg.rope_base);
        }

        for (l, lw) in self.p.layers.iter().enumerate() {
            // Attention sub-block.
            if cfg.pre_norm {
                self.norm(&lw.attn_norm, &s.x, &mut s.xn);
            } else {
                s.xn.copy_from_slice(&s.x);
            }
            self.linear(&lw.q, &s.xn, n, &mut s.acts, &mut s.q);
            self.linear_same_input(&lw.k, &s.xn, n, &mut s.acts, &mut s.k);
            self.linear_same_input(&lw.v, &s.xn, n, &mut s.acts, &mut s.v);
            if matches!(self.p.positions, Positions::Rope) {
                for t in 0..n {
                    s.rope.apply(cfg.rope_style, t, &mut s.q[t * d..(t + 1) * d], cfg.head_dim);
                    s.rope.apply(cfg.rope_style, t, &mut s.k[t * kv..(t + 1) * kv], cfg.head_dim);
                }
            }
            self.store_kv(&mut state.k_cache, &mut state.v_cache, l, start, n, &s.k, &s.v, state.max_seq);
            self.attention(&state.k_cache, &state.v_cache, l, start, n, &s.q, &mut s.att, state.max_seq);
            self.linear(&lw.o, &s.att, n, &mut s.acts, &mut s.proj);
            add_into(&mut s.x, &s.proj);
            if !cfg.pre_norm {
                s.xn.copy_from_slice(&s.x);
                self.norm(&lw.attn_norm, &s.xn, &mut s.x);
            }

            // FFN sub-block.
            if cfg.pre_norm {
                self.norm(&lw.ffn_norm, &s.x, &mut s.xn);
            } else {
                s.xn.copy_from_slice(&s.x);
            }
            ffn.forward(self, l, &s.xn, n, &mut s.proj)?;
            add_into(&mut s.x, &s.proj);
            if !cfg.pre_norm {
                s.xn.copy_from_slice(&s.x);
                self.norm(&lw.ffn_norm, &s.xn, &mut s.x);
            }
        }

        let first = first_logit;
        let m = n - first;
        let xs = &s.x[first * d..n * d];
        let xn = &mut s.xn[..m * d];
        match &self.p.output_norm {
            Some(norm) => self.norm(norm, xs, xn),
            None => xn.copy_from_slice(xs),
        }
        let mut logits = vec![0.0f32; m * cfg.vocab_size];
        match &self.p.project_out {
            Some(po) => {
                s.emb.resize(m * po.w.rows, 0.0);
                self.linear(po, xn, m, &mut s.acts, &mut s.emb);
                s.acts.prepare(self.p.output.dtype, &s.emb, m, self.p.output.cols, self.precision);
            }
            None => s.acts.prepare(self.p.output.dtype, xn, m, self.p.output.cols, self.precision),
        }
        s.acts.matmul(&self.matrix(&self.p.output), &mut logits);
        state.pos += n;
        Ok(logits)
    }

    /// Token embeddings (projected in, plus learned positions) of `tokens` at positions `start..` into `s.x`.
    fn embed(&self, tokens: &[u32], start: usize, s: &mut Scratch) -> Result<()> {
        let d = self.p.cfg.d_model;
        let n = tokens.len();
        let embd = self.matrix(&self.p.tok_embd);
        let de = embd.cols;
        let target: &mut Vec<f32> = if self.p.project_in.is_some() { &mut s.emb } else { &mut s.x };
        target.resize(n * de, 0.0);
        for (t, &tok) in tokens.iter().enumerate() {
            crate::model::quant::dequantize(embd.dtype, embd.row(tok as usize), &mut target[t * de..(t + 1) * de])?;
        }
        if let Some(pi) = &self.p.project_in {
            self.linear(pi, &s.emb, n, &mut s.acts, &mut s.x);
        }
        if let Positions::Learned { table, offset, .. } = &self.p.positions {
            for t in 0..n {
                let row = start + t + offset;
                add_into(&mut s.x[t * d..(t + 1) * d], &table[row * d..(row + 1) * d]);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn store_kv(
        &self,
        kc: &mut [f32],
        vc: &mut [f32],
        l: usize,
        start: usize,
        n: usize,
        k: &[f32],
        v: &[f32],
        max_seq: usize,
    ) {
        let (hd, nkv) = (self.p.cfg.head_dim, self.p.cfg.n_kv_heads);
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
        let cfg = &self.p.cfg;
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
        // About n * (start + n) * d multiply-adds; below a few hundred thousand, threads cost more than they save.
        if n * (start + n) * d < 1 << 18 {
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

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes, where it can be read.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
