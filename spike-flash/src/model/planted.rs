//! Planted OPT checkpoints: weights constructed so that the ReLU FFN's activations on real text have the
//! statistics "LLM in a flash" reports for OPT 6.7B (sparsity, a heavy-tailed neuron popularity,
//! token-to-token persistence, low-rank predictability). A planted model is a simulation of those
//! activation statistics, not a trained model: its text continuations mean nothing.
//!
//! A [`PlantPlan`] (a versioned TOML file, `experiments/plans/opt-planted-v*.toml`) holds the construction's
//! parameters; [`Planted`] derives every tensor from a plan, a model configuration and a seed, one tensor at
//! a time, so a paper-scale checkpoint is written without holding it in memory
//! ([`super::synth::write_hf_checkpoint_with_progress`] calls it when [`super::synth::SynthSpec::planted`] is
//! set).
//!
//! The construction. The residual stream's coordinates are split into blocks LayerNorm keeps apart (it
//! subtracts one mean and divides by one scale per vector, so a block's content survives up to a common
//! factor): `P` (the first `2 n_pf` coordinates) carries cos/sin of the position at `n_pf` fixed frequencies,
//! `C` (the next `d_c`) a context written by layer 0's attention, `T` (the rest) the token embedding and what
//! later layers add.
//! * Layer 0's attention: q and k read `P` only, every head alike, scaled so that the score of key `j` for
//!   query `i` is `sharpness * K(i - j)` with `K(0) = 1` a Gaussian kernel of width `width_tokens *
//!   sqrt(sharpness)` (the frequencies are quantiles of that Gaussian's spectrum). The softmax weights are then
//!   about `exp(-(i - j)^2 / (2 width_tokens^2))` over the preceding tokens. v reads `T`, out_proj writes into
//!   `C` only: `C` is a weighted mean of the recent tokens' embeddings, a slowly drifting topic.
//! * Every layer's fc1 row `n` reads `C` (variance share `slow_share` of its pre-activation; at most `d_c`
//!   directions, a low-rank part a predictor can see) and `T` (the rest; the current token, spread over all
//!   of `T`, which a low-rank map cannot follow for thousands of neurons at once). Its bias is `-theta_n` with
//!   `theta_n = Phi^-1(1 - p_n)` and `p_n` log-normal: neuron `n` fires on about `p_n` of the tokens, if its
//!   pre-activation is a unit normal. Rows are scaled per layer by the residual's expected scale, so each
//!   layer's pre-activations have unit variance whatever the earlier layers added.
//! * fc2 writes into `T` only, scaled so one FFN adds `ffn_out_share` of the embedding's variance there;
//!   layers after the first have random attention adding `attn_out_share`; LayerNorms are plain (weight 1,
//!   bias 0) except the final one, which scales the tied logits to `logit_std`.
//!
//! All of this holds in expectation over random draws and for tokens that are independent; real text has
//! repeated tokens and a non-zero mean embedding, which is why the statistics are measured (`spike
//! trace-stats`), never taken from the plan.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::{Arch, ModelConfig};
use crate::{Error, Result};

/// Parameters of a planted construction, as a plan file states them (see the module docs and
/// `experiments/plans/opt-planted-v1.toml` for what each does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantPlan {
    /// The plan's name, e.g. `opt-planted-v1`; it must contain `planted`.
    pub name: String,
    pub version: u32,
    pub activity: Activity,
    pub context: Context,
    pub residual: Residual,
}

/// Which neurons fire how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    /// Mean per-neuron firing probability.
    pub mean_active: f64,
    /// Standard deviation of the log of a neuron's firing probability.
    pub freq_log_sigma: f64,
    pub freq_min: f64,
    pub freq_max: f64,
    /// Share of a pre-activation's variance coming from the context block.
    pub slow_share: f64,
}

/// Layer 0's attention over recent tokens and the context block it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Width (standard deviation, tokens) of the attention weights over preceding tokens.
    pub width_tokens: f64,
    /// Score of the current token over a far one.
    pub sharpness: f64,
    /// Number of position frequencies, capped at `head_dim / 2`.
    pub position_features: usize,
    /// Width of the context block, capped at `d_model / 4`.
    pub dims: usize,
    /// Per-coordinate variance of the context block relative to the embedding's.
    pub variance: f64,
}

/// Sizes of what each block adds to the residual stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Residual {
    pub attn_out_share: f64,
    pub ffn_out_share: f64,
    pub logit_std: f64,
}

/// A plan file read from disk: the plan, where it came from, and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanFile {
    pub plan: PlantPlan,
    pub path: PathBuf,
    pub sha256: String,
}

impl PlanFile {
    /// Reads and validates the plan at `path`.
    pub fn load(path: &Path) -> Result<PlanFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let plan = PlantPlan::parse(path, &text)?;
        let sha256 = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        Ok(PlanFile { plan, path: path.to_path_buf(), sha256 })
    }

    /// What a planted checkpoint records about its plan (in `config.json` and `planted.json`).
    pub fn record(&self) -> Value {
        json!({
            "planted": true,
            "note": "a simulation of OPT 6.7B's activation statistics (LLM in a flash), not a trained model",
            "plan": self.plan.name,
            "plan_version": self.plan.version,
            "plan_file": self.path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "plan_sha256": self.sha256,
            "parameters": self.plan,
        })
    }
}

impl PlantPlan {
    /// Parses plan text (`path` names it in errors) and checks every parameter's range.
    pub fn parse(path: &Path, text: &str) -> Result<PlantPlan> {
        let plan: PlantPlan = toml::from_str(text).map_err(|e| Error::Plan {
            path: path.to_path_buf(),
            key: "(file)".into(),
            what: e.message().to_string(),
        })?;
        plan.validate(path)?;
        Ok(plan)
    }

    /// Every parameter in its range; `path` names the plan in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, what: String| Err(Error::Plan { path: path.to_path_buf(), key: key.into(), what });
        let open01 = |x: f64| x > 0.0 && x < 1.0;
        let a = &self.activity;
        if !self.name.contains("planted") {
            return bad("name", format!("`{}` does not say `planted`", self.name));
        }
        if !open01(a.mean_active) {
            return bad("activity.mean_active", format!("{} is not in (0, 1)", a.mean_active));
        }
        if !(a.freq_log_sigma.is_finite() && (0.0..=4.0).contains(&a.freq_log_sigma)) {
            return bad("activity.freq_log_sigma", format!("{} is not in [0, 4]", a.freq_log_sigma));
        }
        if !(open01(a.freq_min) && open01(a.freq_max) && a.freq_min <= a.mean_active && a.mean_active <= a.freq_max) {
            return bad(
                "activity.freq_min",
                format!("need 0 < freq_min {} <= mean_active <= freq_max {} < 1", a.freq_min, a.freq_max),
            );
        }
        if !open01(a.slow_share) {
            return bad("activity.slow_share", format!("{} is not in (0, 1)", a.slow_share));
        }
        let c = &self.context;
        if !(c.width_tokens.is_finite() && (0.25..=256.0).contains(&c.width_tokens)) {
            return bad("context.width_tokens", format!("{} is not in [0.25, 256]", c.width_tokens));
        }
        if !(c.sharpness.is_finite() && (1.0..=64.0).contains(&c.sharpness)) {
            return bad("context.sharpness", format!("{} is not in [1, 64]", c.sharpness));
        }
        if c.position_features < 2 {
            return bad("context.position_features", format!("{} (at least 2)", c.position_features));
        }
        if c.dims < 2 {
            return bad("context.dims", format!("{} (at least 2)", c.dims));
        }
        if !(c.variance.is_finite() && c.variance > 0.0 && c.variance <= 16.0) {
            return bad("context.variance", format!("{} is not in (0, 16]", c.variance));
        }
        let r = &self.residual;
        for (key, v) in [("residual.attn_out_share", r.attn_out_share), ("residual.ffn_out_share", r.ffn_out_share)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad(key, format!("{v} is not in [0, 1]"));
            }
        }
        if !(r.logit_std.is_finite() && r.logit_std > 0.0 && r.logit_std <= 100.0) {
            return bad("residual.logit_std", format!("{} is not in (0, 100]", r.logit_std));
        }
        Ok(())
    }
}

/// The construction of one planted checkpoint: a plan applied to a model configuration and a seed. Tensors
/// come from [`Planted::tensor`], each depending only on the plan, the shapes, the seed and its name.
#[derive(Debug, Clone)]
pub struct Planted {
    plan: PlantPlan,
    seed: u64,
    d: usize,
    d_ffn: usize,
    n_layers: usize,
    head_dim: usize,
    n_heads: usize,
    /// Position frequencies (`n_pf` of them); `P` is coordinates `0..2 n_pf`.
    omega: Vec<f64>,
    /// The context block `C`: coordinates `c0..c0 + d_c`; the token block `T` is `c0 + d_c..d`.
    c0: usize,
    d_c: usize,
}

/// The per-layer tensors a planted OPT has (names after `layers.L.`).
const LAYER_TENSORS: [&str; 16] = [
    "self_attn_layer_norm.weight",
    "self_attn_layer_norm.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
];

/// Per-layer scales derived from the plan (see [`Planted::layer_scales`]).
#[derive(Debug, Clone, Copy)]
struct LayerScales {
    /// Expected variance of a token-block coordinate at this layer's FFN input, before LayerNorm.
    t_var: f64,
    /// Expected root mean square of the residual's coordinates there (LayerNorm divides by it).
    rms: f64,
}

impl Planted {
    /// The construction of `plan` for an OPT model `cfg` (pre-norm, no embedding projection) and `seed`.
    pub fn new(plan: &PlantPlan, cfg: &ModelConfig, seed: u64) -> Result<Planted> {
        let refuse = |what: String| Err(Error::Invalid(format!("planted checkpoint: {what}")));
        if cfg.arch != Arch::Opt || !cfg.pre_norm || cfg.word_embed_proj_dim.is_some() {
            return refuse("only a pre-norm OPT without embedding projection can be planted".into());
        }
        let d = cfg.d_model;
        let head_dim = cfg.head_dim;
        let n_pf = plan.context.position_features.min(head_dim / 2);
        let d_c = plan.context.dims.min(d / 4);
        if n_pf < 2 || d_c < 2 || 2 * n_pf + d_c + 16 > d {
            return refuse(format!(
                "d_model {d} (head_dim {head_dim}) leaves no room for {n_pf} position features, a context of {d_c} \
                 and a token block of at least 16"
            ));
        }
        // Quantiles of the positive half of N(0, 1 / l^2), l = width * sqrt(sharpness): then
        // mean_f cos(omega_f x) is close to exp(-x^2 / (2 l^2)) for x up to about 2 pi n_pf l / 3, beyond a
        // context of 2048 for the plan's values, and sharpness * (K(x) - 1) is about -x^2 / (2 width^2) near 0.
        let l = plan.context.width_tokens * plan.context.sharpness.sqrt();
        let omega = (0..n_pf).map(|f| inv_normal_cdf(0.5 + 0.5 * (f as f64 + 0.5) / n_pf as f64) / l).collect();
        Ok(Planted {
            plan: plan.clone(),
            seed,
            d,
            d_ffn: cfg.d_ffn,
            n_layers: cfg.n_layers,
            head_dim,
            n_heads: cfg.n_heads,
            omega,
            c0: 2 * n_pf,
            d_c,
        })
    }

    fn n_pf(&self) -> usize {
        self.omega.len()
    }

    fn d_t(&self) -> usize {
        self.d - self.c0 - self.d_c
    }

    fn t0(&self) -> usize {
        self.c0 + self.d_c
    }

    /// The normalized attention kernel `K(x) = mean_f cos(omega_f x)`, `K(0) = 1`.
    fn kernel(&self, x: f64) -> f64 {
        self.omega.iter().map(|w| (w * x).cos()).sum::<f64>() / self.n_pf() as f64
    }

    /// Sum of the squared attention weights of a token with 511 predecessors: the variance of a weighted mean
    /// of independent unit vectors, which the out_proj gain divides out.
    fn attention_weight_square_sum(&self) -> f64 {
        let beta = self.plan.context.sharpness;
        let w: Vec<f64> = (0..512).map(|x| (beta * (self.kernel(x as f64) - 1.0)).exp()).collect();
        let s: f64 = w.iter().sum();
        w.iter().map(|v| (v / s) * (v / s)).sum()
    }

    /// Expected scales at layer `l`'s FFN input: the token block holds the embedding (variance 1) plus what
    /// `l` later attentions (layers 1..=l) and `l` FFNs (layers 0..l) added; `P` holds cos/sin (mean square
    /// 1/2); `C` the context's variance.
    fn layer_scales(&self, l: usize) -> LayerScales {
        let r = &self.plan.residual;
        let t_var = 1.0 + l as f64 * (r.attn_out_share + r.ffn_out_share);
        let ms = (self.d_t() as f64 * t_var + self.n_pf() as f64 + self.d_c as f64 * self.plan.context.variance)
            / self.d as f64;
        LayerScales { t_var, rms: ms.sqrt() }
    }

    /// Neuron firing probabilities of layer `l`: log-normal around the plan's mean, clipped.
    pub fn firing_probabilities(&self, l: usize) -> Vec<f64> {
        let a = &self.plan.activity;
        let mu = a.mean_active.ln() - a.freq_log_sigma * a.freq_log_sigma / 2.0;
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, &format!("planted.layers.{l}.frequencies")));
        (0..self.d_ffn)
            .map(|_| (mu + a.freq_log_sigma * normal(&mut rng)).exp().clamp(a.freq_min, a.freq_max))
            .collect()
    }

    /// Thresholds `theta_n = Phi^-1(1 - p_n)` of layer `l` (fc1's bias is their negation).
    fn thresholds(&self, l: usize) -> Vec<f64> {
        self.firing_probabilities(l).into_iter().map(|p| inv_normal_cdf(1.0 - p)).collect()
    }

    /// The values of tensor `name` (row-major, `shape` as the checkpoint expects), or an error for a name
    /// this construction does not know.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let rest = name.strip_prefix("model.decoder.").unwrap_or(name);
        let d = self.d;
        let t0 = self.t0();
        let seed = sub_seed(self.seed, name);
        let out = match rest {
            "embed_tokens.weight" | "lm_head.weight" => {
                // A unit normal per token-block coordinate; nothing in P or C.
                gaussian_rows(seed, shape[0], d, |_, c| if c >= t0 { 1.0 } else { 0.0 })
            }
            "embed_positions.weight" => {
                // Row p + 2 is position p (OPT's offset); rows 0 and 1 are never used.
                let mut v = vec![0f32; n];
                for (row, r) in v.chunks_mut(d).enumerate().skip(2) {
                    let p = (row - 2) as f64;
                    for (f, w) in self.omega.iter().enumerate() {
                        r[2 * f] = (w * p).cos() as f32;
                        r[2 * f + 1] = (w * p).sin() as f32;
                    }
                }
                v
            }
            "final_layer_norm.weight" => {
                // Tied logits: sum over T of x_c e_c with x_c of variance t_var / rms^2 and e_c unit normal.
                let s = self.layer_scales(self.n_layers);
                let g = self.plan.residual.logit_std * s.rms / (self.d_t() as f64 * s.t_var).sqrt();
                vec![g as f32; n]
            }
            "final_layer_norm.bias" => vec![0.0; n],
            _ => self.layer_tensor(rest, shape, seed)?,
        };
        if out.len() != n {
            return Err(Error::Invalid(format!("planted tensor `{name}`: {} values for shape {shape:?}", out.len())));
        }
        Ok(out)
    }

    /// Whether this construction knows tensor `name` (an error naming it otherwise), checked before anything
    /// is written.
    pub fn check_name(&self, name: &str) -> Result<()> {
        let rest = name.strip_prefix("model.decoder.").unwrap_or(name);
        let top = ["embed_tokens.weight", "lm_head.weight", "embed_positions.weight"];
        let top = top.contains(&rest) || rest.starts_with("final_layer_norm.");
        match self.split_layer(rest) {
            _ if top => Ok(()),
            Some((_, what)) if LAYER_TENSORS.contains(&what) => Ok(()),
            _ => Err(Error::Invalid(format!("planted checkpoint: no construction for tensor `{name}`"))),
        }
    }

    /// `layers.L.WHAT` as `(L, WHAT)` for a layer of this model.
    fn split_layer<'n>(&self, rest: &'n str) -> Option<(usize, &'n str)> {
        rest.strip_prefix("layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, w)| Some((l.parse::<usize>().ok()?, w)))
            .filter(|(l, _)| *l < self.n_layers)
    }

    fn layer_tensor(&self, rest: &str, shape: &[usize], seed: u64) -> Result<Vec<f32>> {
        let unknown = || Error::Invalid(format!("planted checkpoint: no construction for tensor `{rest}`"));
        let (l, what) = self.split_layer(rest).ok_or_else(unknown)?;
        let n: usize = shape.iter().product();
        let (d, f) = (self.d, self.d_ffn);
        let (c0, t0, npf2) = (self.c0, self.t0(), 2 * self.n_pf());
        let r = &self.plan.residual;
        let out = match what {
            "self_attn_layer_norm.weight" | "final_layer_norm.weight" => vec![1.0; n],
            "self_attn_layer_norm.bias"
            | "final_layer_norm.bias"
            | "self_attn.q_proj.bias"
            | "self_attn.k_proj.bias"
            | "self_attn.v_proj.bias"
            | "self_attn.out_proj.bias"
            | "fc2.bias" => vec![0.0; n],
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" if l == 0 => {
                // Every head's first 2 n_pf dimensions copy P. With LayerNorm's scale s (P . P' = n_pf K / s^2
                // after it) and OPT's q scaling by head_dim^-1/2, q . k = sharpness * K.
                let s = ((self.d_t() as f64 + self.n_pf() as f64) / d as f64).sqrt();
                let gain = if what.starts_with("self_attn.q") {
                    self.plan.context.sharpness * (self.head_dim as f64).sqrt() * s * s / self.n_pf() as f64
                } else {
                    1.0
                };
                let mut v = vec![0f32; n];
                for h in 0..self.n_heads {
                    for c in 0..npf2 {
                        v[(h * self.head_dim + c) * d + c] = gain as f32;
                    }
                }
                v
            }
            "self_attn.v_proj.weight" if l == 0 => {
                // Reads T: unit-variance outputs from LayerNorm'd inputs of variance 1 / s^2.
                let s = ((self.d_t() as f64 + self.n_pf() as f64) / d as f64).sqrt();
                let std = s / (self.d_t() as f64).sqrt();
                gaussian_rows(seed, d, d, |_, c| if c >= t0 { std } else { 0.0 })
            }
            "self_attn.out_proj.weight" if l == 0 => {
                // Writes C: a weighted mean of unit vectors has variance sum w^2, brought to the plan's.
                let g = (self.plan.context.variance / self.attention_weight_square_sum()).sqrt();
                let std = g / (d as f64).sqrt();
                gaussian_rows(seed, d, d, |row, _| if (c0..t0).contains(&row) { std } else { 0.0 })
            }
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                let std = 1.0 / (d as f64).sqrt();
                gaussian_rows(seed, d, d, |_, _| std)
            }
            "self_attn.out_proj.weight" => {
                // Writes T, adding at most attn_out_share (a mean of unit-variance values varies less).
                let std = (r.attn_out_share / d as f64).sqrt();
                gaussian_rows(seed, d, d, |row, _| if row >= t0 { std } else { 0.0 })
            }
            "fc1.weight" => {
                // Row n: C part of variance slow_share, T part of variance 1 - slow_share, both after this
                // layer's LayerNorm (coordinates of variance var / rms^2).
                let s = self.layer_scales(l);
                let slow = self.plan.activity.slow_share;
                let c_std = (slow / self.plan.context.variance).sqrt() * s.rms / (self.d_c as f64).sqrt();
                let t_std = ((1.0 - slow) / s.t_var).sqrt() * s.rms / (self.d_t() as f64).sqrt();
                gaussian_rows(seed, f, d, |_, c| {
                    if c >= t0 {
                        t_std
                    } else if c >= c0 {
                        c_std
                    } else {
                        0.0
                    }
                })
            }
            "fc1.bias" => self.thresholds(l).into_iter().map(|t| -t as f32).collect(),
            "fc2.weight" => {
                // With unit-normal pre-activations z - theta, E[relu^2] = (1 + theta^2) Q(theta) -
                // theta phi(theta); the sum over neurons times std^2 is what one FFN adds per T coordinate.
                let sum: f64 = self.thresholds(l).iter().map(|&t| relu_square_mean(t)).sum();
                let std = (r.ffn_out_share / sum.max(1e-12)).sqrt();
                gaussian_rows(seed, d, f, |row, _| if row >= t0 { std } else { 0.0 })
            }
            _ => return Err(unknown()),
        };
        Ok(out)
    }

    /// The construction's derived sizes (block widths and the seed), which `planted.json` records beside
    /// the plan.
    pub fn describe(&self) -> Value {
        json!({
            "position_features": self.n_pf(),
            "context_dims": self.d_c,
            "token_dims": self.d_t(),
            "seed": self.seed,
        })
    }
}

/// A `rows x cols` matrix of independent normals, entry `(r, c)` scaled by `std(r, c)` (0 leaves it 0).
/// Each row has its own seed, so the values do not depend on the thread count.
fn gaussian_rows(seed: u64, rows: usize, cols: usize, std: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f32> {
    let mut v = vec![0f32; rows * cols];
    v.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, row)| {
        let mut rng = StdRng::seed_from_u64(mix64(seed ^ mix64(r as u64 + 1)));
        for (c, x) in row.iter_mut().enumerate() {
            let s = std(r, c);
            if s != 0.0 {
                *x = (s * normal(&mut rng)) as f32;
            }
        }
    });
    v
}

/// A standard normal draw (Box-Muller on two uniforms; the first uniform is kept away from 0).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `E[max(0, z - theta)^2]` for a unit normal `z`.
fn relu_square_mean(theta: f64) -> f64 {
    let pdf = (-theta * theta / 2.0).exp() / (std::f64::consts::TAU).sqrt();
    let q = 0.5 * libm::erfc(theta / std::f64::consts::SQRT_2);
    (1.0 + theta * theta) * q - theta * pdf
}

/// The standard normal quantile function (Acklam's rational approximation, relative error below 1.2e-9),
/// for `p` in (0, 1).
pub fn inv_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.024_25 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.024_25 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// splitmix64's finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for `what` under `seed` (FNV-1a of the name, mixed).
fn sub_seed(seed: u64, what: &str) -> u64 {
    let h = what.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    mix64(seed ^ mix64(h ^ 0x0070_6c61_6e74_6564))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN_V1: &str = include_str!("../../../experiments/plans/opt-planted-v1.toml");

    #[test]
    fn quantile_function_inverts_the_cdf() {
        for &p in &[1e-6, 0.01, 0.033, 0.2, 0.5, 0.8, 0.967, 0.999] {
            let x = inv_normal_cdf(p);
            let back = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
            assert!((back - p).abs() < 1e-8 * p.max(1e-3), "p {p}: x {x} gives {back}");
        }
    }

    #[test]
    fn committed_plan_parses_and_bad_values_are_named() {
        let p = PlantPlan::parse(Path::new("v1.toml"), PLAN_V1).expect("v1 parses");
        assert!(p.name.contains("planted"));
        let bad = PLAN_V1.replace("slow_share = 0.8", "slow_share = 1.5");
        match PlantPlan::parse(Path::new("bad.toml"), &bad) {
            Err(Error::Plan { key, .. }) => assert_eq!(key, "activity.slow_share"),
            other => panic!("expected a plan error, got {other:?}"),
        }
        let extra = format!("{PLAN_V1}\n[extra]\nx = 1\n");
        assert!(matches!(PlantPlan::parse(Path::new("x.toml"), &extra), Err(Error::Plan { .. })));
    }

    #[test]
    fn paper_presets_are_plantable_without_writing() {
        use crate::model::quant::DType;
        use crate::model::safetensors::expected_tensors;
        use crate::model::synth::SynthSpec;
        let plan = PlanFile {
            plan: PlantPlan::parse(Path::new("v1.toml"), PLAN_V1).expect("v1 parses"),
            path: PathBuf::from("v1.toml"),
            sha256: String::new(),
        };
        for (spec, bytes) in [
            (SynthSpec::opt_6_7b(0, DType::F16), 13_316_947_968u64),
            (SynthSpec::opt_1_3b(0, DType::F16), 2_631_516_160),
        ] {
            let spec = SynthSpec { planted: Some(plan.clone()), ..spec };
            let cfg = spec.config().expect("config");
            assert_eq!(spec.tensor_bytes().expect("bytes"), bytes);
            let p = Planted::new(&plan.plan, &cfg, 0).expect("plantable");
            assert_eq!((p.n_pf(), p.d_c), (16, 96));
            for t in expected_tensors(&cfg).into_iter().filter(|t| t.required) {
                p.check_name(&t.name).expect("every tensor has a construction");
            }
            assert!(spec.hf_config_json()["spike_planted"]["planted"] == json!(true));
        }
    }

    #[test]
    fn attention_kernel_is_local() {
        let plan = PlantPlan::parse(Path::new("v1.toml"), PLAN_V1).expect("v1 parses");
        let cfg = ModelConfig::from_hf_config(
            Path::new("config.json"),
            &json!({"model_type": "opt", "hidden_size": 128, "ffn_dim": 512, "num_attention_heads": 4,
                    "num_hidden_layers": 2, "vocab_size": 300, "max_position_embeddings": 2048}),
        )
        .expect("config");
        let p = Planted::new(&plan, &cfg, 1).expect("planted");
        let beta = plan.context.sharpness;
        // Far tokens (beyond four widths, up to the longest context) weigh at most exp(-6) of the current one.
        let far = (16..2048).map(|x| beta * (p.kernel(x as f64) - 1.0)).fold(f64::NEG_INFINITY, f64::max);
        assert!(far < -6.0, "far score {far}");
        let near = beta * (p.kernel(1.0) - 1.0);
        assert!(near > -0.2 && near < 0.0, "adjacent score {near}");
    }
}
