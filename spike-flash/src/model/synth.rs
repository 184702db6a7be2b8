//! Random-weight models in real file formats, for tests and experiments: every test builds its own model in
//! milliseconds from a named seed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

use super::config::{whole_heads, Activation, Arch, ModelConfig, RopeStyle};
use super::gguf::{GgufFile, MetaValue};
use super::gguf_write::GgufWriter;
use super::planted::{PlanFile, Planted};
use super::quant::{self, DType};
use super::safetensors::{
    dtype_to_safetensors, expected_tensors, HfCheckpoint, CONFIG_FILE, INDEX_FILE, SINGLE_FILE, TOKENIZER_FILE,
};
use crate::io::install::{self, OutputLock, Stale};
use crate::{Error, Result};

/// A GGUF file (bytes) holding a random Llama model of `spec` (see [`SynthSpec::tiny_gguf`]): matrices in
/// `spec.dtype` (any ggml type), norms in f32, no tokenizer. Weights are drawn uniformly with a scale of
/// `1/sqrt(fan_in)` so activations stay of order one; `spec.shards` is not used. Refuses what a GGUF `llama`
/// cannot hold (another architecture, ReLU, post-norm blocks, an embedding projection), and a `spec.model`
/// that is not what the written file reads back as.
pub fn llama_gguf(spec: &SynthSpec) -> Result<Vec<u8>> {
    let s = &spec.model;
    let relu = s.activation != Activation::Silu;
    if s.arch != Arch::Llama || relu || !s.pre_norm || s.word_embed_proj_dim.is_some() {
        return Err(Error::Invalid(format!(
            "synthetic GGUF: a {:?} model{} (a GGUF llama is pre-norm, SiLU-gated, without embedding projection)",
            s.arch,
            if relu { " with ReLU" } else { "" }
        )));
    }
    let (dtype, seed) = (spec.dtype, spec.seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let head_dim = s.d_model / s.n_heads;
    let kv = s.n_kv_heads * head_dim;
    let mut w = GgufWriter::new();
    llama_meta(&mut w, s, format!("synthetic llama seed {seed}"), s.max_positions, head_dim);

    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, dt: DType| -> Result<()> {
        let scale = 1.0 / (cols as f32).sqrt();
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-scale..scale) * 1.7).collect();
        w.add_tensor_f32(name, &[cols as u64, rows as u64], dt, &v)
    };
    // The embedding feeds the residual stream directly: give it unit-ish entries.
    let emb: Vec<f32> = (0..s.vocab_size * s.d_model).map(|i| ((i as f32 * 0.618).sin()) * 0.9).collect();
    w.add_tensor_f32("token_embd.weight", &[s.d_model as u64, s.vocab_size as u64], dtype, &emb)?;
    let norm = |len: usize, rng: &mut StdRng| -> Vec<f32> { (0..len).map(|_| rng.gen_range(0.6..1.4)).collect() };
    let mut rng2 = StdRng::seed_from_u64(seed ^ 0x5eed);
    w.add_tensor_f32("output_norm.weight", &[s.d_model as u64], DType::F32, &norm(s.d_model, &mut rng2))?;
    if !s.tied_embeddings {
        matrix(&mut w, "output.weight", s.vocab_size, s.d_model, dtype)?;
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
    let file = GgufFile::from_bytes(Path::new("(synthetic GGUF)"), w.to_bytes()?)?;
    let read = ModelConfig::from_gguf(&file)?;
    if read != *s {
        return Err(Error::Invalid(format!(
            "synthetic GGUF: a configuration the file does not record: {}",
            differences(s, &read)
        )));
    }
    Ok(file.bytes().to_vec())
}

// ---------------------------------------------------------------------------------------------------------
// Hugging Face checkpoints
// ---------------------------------------------------------------------------------------------------------

/// A synthetic model: its configuration and how its file is written. Either a Hugging Face checkpoint (OPT or
/// Llama, [`write_hf_checkpoint`]) or a GGUF Llama ([`llama_gguf`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// The configuration the written model reads back as, to the last field: a spec whose `model` the file
    /// cannot record (a norm epsilon in an OPT `config.json`, a stale `head_dim`, half-split rotary pairs in
    /// a GGUF llama) is refused. [`SynthSpec::with_model`] changes it and derives the dependent fields again.
    pub model: ModelConfig,
    /// Element type of the tensors: F32, F16 or BF16 for every tensor of a checkpoint; any ggml type for
    /// the matrices of a GGUF file (its norms are F32).
    pub dtype: DType,
    pub seed: u64,
    /// Number of safetensors files; more than one writes `model.safetensors.index.json`.
    pub shards: usize,
    /// OPT only: construct the weights by this planting plan ([`super::planted`]) instead of drawing them
    /// uniformly; the checkpoint's `config.json` and `planted.json` record the plan.
    pub planted: Option<PlanFile>,
}

impl SynthSpec {
    /// A small pre-norm OPT for tests: 2 layers, d_model 64, FFN 256, 4 heads, vocab 320, 64 positions, f32,
    /// tied embeddings, one file.
    pub fn tiny_opt(seed: u64) -> SynthSpec {
        SynthSpec {
            model: ModelConfig {
                arch: Arch::Opt,
                n_layers: 2,
                d_model: 64,
                d_ffn: 256,
                n_heads: 4,
                n_kv_heads: 4,
                head_dim: 16,
                vocab_size: 320,
                context_length: 64,
                // What an OPT `config.json` reads as: it records neither.
                norm_eps: 1e-5,
                rope_base: 10_000.0,
                rope_dim: 0,
                rope_style: RopeStyle::Half,
                activation: Activation::Relu,
                tied_embeddings: true,
                pre_norm: true,
                word_embed_proj_dim: None,
                max_positions: 64,
                qkv_bias: true,
                out_bias: true,
                ffn_bias: true,
                norm_affine: true,
                final_norm: true,
            },
            dtype: DType::F32,
            seed,
            shards: 1,
            planted: None,
        }
    }

    /// A small Llama checkpoint for tests: 2 layers, d_model 64, FFN 128, 4 heads / 2 KV heads, vocab 320,
    /// 2048 positions, norm epsilon 1e-5, rope base 10000, f32, tied embeddings.
    pub fn tiny_llama(seed: u64) -> SynthSpec {
        SynthSpec::tiny_opt(seed).with_model(|m| {
            m.arch = Arch::Llama;
            m.d_ffn = 128;
            m.n_kv_heads = 2;
            m.max_positions = 2048;
            m.activation = Activation::Silu;
            (m.qkv_bias, m.out_bias, m.ffn_bias) = (false, false, false);
        })
    }

    /// A small Llama for GGUF tests, matrices in `dtype`: [`SynthSpec::tiny_llama`] with a vocabulary of 96
    /// (a GGUF from [`llama_gguf`] carries no tokenizer) and rotary pairs interleaved, as GGUF's llama has them.
    pub fn tiny_gguf(dtype: DType, seed: u64) -> SynthSpec {
        let spec = SynthSpec::tiny_llama(seed).with_model(|m| {
            m.vocab_size = 96;
            m.rope_style = RopeStyle::Interleaved;
        });
        SynthSpec { dtype, ..spec }
    }

    /// OPT 6.7B's shapes: 32 layers, d_model 4096, FFN 16384, 32 heads, vocab 50272, 2048 positions.
    pub fn opt_6_7b(seed: u64, dtype: DType) -> SynthSpec {
        let spec = SynthSpec::tiny_opt(seed).with_model(|m| {
            (m.n_layers, m.d_model, m.d_ffn) = (32, 4096, 16384);
            (m.n_heads, m.n_kv_heads) = (32, 32);
            (m.vocab_size, m.max_positions) = (50272, 2048);
        });
        SynthSpec { dtype, ..spec }
    }

    /// The `tiny` preset of `spike synth` (planted in tests and CI): 4 layers, d_model 128, FFN 1024, 4 heads
    /// (head_dim 32), vocab 512, 1024 positions, f32.
    pub fn opt_tiny_preset(seed: u64) -> SynthSpec {
        SynthSpec::tiny_opt(seed).with_model(|m| {
            (m.n_layers, m.d_model, m.d_ffn) = (4, 128, 1024);
            (m.vocab_size, m.max_positions) = (512, 1024);
        })
    }

    /// OPT 1.3B's shapes: 24 layers, d_model 2048, FFN 8192, 32 heads, vocab 50272, 2048 positions.
    pub fn opt_1_3b(seed: u64, dtype: DType) -> SynthSpec {
        SynthSpec::opt_6_7b(seed, dtype).with_model(|m| (m.n_layers, m.d_model, m.d_ffn) = (24, 2048, 8192))
    }

    /// This spec with its configuration changed by `edit`, then the fields that depend on others derived
    /// again as both file formats derive them: `head_dim` (whole heads of `d_model`; 0 when the heads do not
    /// divide it, which the readers refuse), `rope_dim` (a Llama rotates whole heads, OPT has no rotary),
    /// `context_length` (all of `max_positions`) and `final_norm` (pre-norm models only). The rest is as
    /// `edit` leaves it.
    pub fn with_model(mut self, edit: impl FnOnce(&mut ModelConfig)) -> SynthSpec {
        edit(&mut self.model);
        let m = &mut self.model;
        m.head_dim = whole_heads(m.d_model, m.n_heads);
        m.rope_dim = match m.arch {
            Arch::Llama => m.head_dim,
            Arch::Opt => 0,
        };
        m.context_length = m.max_positions;
        m.final_norm = m.pre_norm;
        self
    }

    /// The `config.json` this checkpoint gets: the keys and spellings of transformers' `OPTConfig` /
    /// `LlamaConfig`, plus `spike_planted` (the plan's record) for a planted checkpoint.
    pub fn hf_config_json(&self) -> Value {
        let mut v = self.hf_config_json_plain();
        if let (Some(p), Some(obj)) = (&self.planted, v.as_object_mut()) {
            obj.insert("_name_or_path".into(), json!(format!("spike-planted-opt-seed{}", self.seed)));
            obj.insert("spike_planted".into(), p.record());
        }
        v
    }

    fn hf_config_json_plain(&self) -> Value {
        let torch_dtype = match self.dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        };
        let m = &self.model;
        match m.arch {
            Arch::Opt => json!({
                "_name_or_path": format!("spike-synthetic-opt-seed{}", self.seed),
                "activation_dropout": 0.0,
                "activation_function": m.activation.hf_name(),
                "architectures": ["OPTForCausalLM"],
                "attention_dropout": 0.0,
                "bos_token_id": SYNTH_EOS,
                "do_layer_norm_before": m.pre_norm,
                "dropout": 0.0,
                "enable_bias": true,
                "eos_token_id": SYNTH_EOS,
                "ffn_dim": m.d_ffn,
                "hidden_size": m.d_model,
                "init_std": 0.02,
                "layer_norm_elementwise_affine": true,
                "layerdrop": 0.0,
                "max_position_embeddings": m.max_positions,
                "model_type": "opt",
                "num_attention_heads": m.n_heads,
                "num_hidden_layers": m.n_layers,
                "pad_token_id": SYNTH_PAD,
                "prefix": "</s>",
                "tie_word_embeddings": m.tied_embeddings,
                "torch_dtype": torch_dtype,
                "use_cache": true,
                "vocab_size": m.vocab_size,
                "word_embed_proj_dim": m.embed_dim(),
            }),
            Arch::Llama => json!({
                "_name_or_path": format!("spike-synthetic-llama-seed{}", self.seed),
                "architectures": ["LlamaForCausalLM"],
                "attention_bias": false,
                "attention_dropout": 0.0,
                "bos_token_id": SYNTH_BOS,
                "eos_token_id": SYNTH_EOS,
                "head_dim": m.d_model / m.n_heads.max(1),
                "hidden_act": m.activation.hf_name(),
                "hidden_size": m.d_model,
                "initializer_range": 0.02,
                "intermediate_size": m.d_ffn,
                "max_position_embeddings": m.max_positions,
                "mlp_bias": false,
                "model_type": "llama",
                "num_attention_heads": m.n_heads,
                "num_hidden_layers": m.n_layers,
                "num_key_value_heads": m.n_kv_heads,
                "pretraining_tp": 1,
                "rms_norm_eps": json_f32(m.norm_eps),
                "rope_scaling": null,
                "rope_theta": json_f32(m.rope_base),
                "tie_word_embeddings": m.tied_embeddings,
                "torch_dtype": torch_dtype,
                "use_cache": true,
                "vocab_size": m.vocab_size,
            }),
        }
    }

    /// The model configuration of this checkpoint, read back from its `config.json` as a reader would: equal
    /// to `self.model`, or the spec is refused.
    pub fn config(&self) -> Result<ModelConfig> {
        let bad = |what: String| Err(Error::Invalid(format!("synthetic checkpoint: {what}")));
        let m = &self.model;
        if dtype_to_safetensors(self.dtype).is_none() {
            return bad(format!("dtype {} (use f32, f16 or bf16)", self.dtype));
        }
        if self.shards == 0 {
            return bad("0 shards".into());
        }
        if m.vocab_size < SYNTH_SPECIALS.len() + 1 {
            return bad(format!("vocabulary of {} tokens (at least {})", m.vocab_size, SYNTH_SPECIALS.len() + 1));
        }
        if self.planted.is_some() && (m.arch != Arch::Opt || !m.pre_norm || m.word_embed_proj_dim.is_some()) {
            return bad("a planted model that is not a pre-norm OPT without embedding projection".into());
        }
        match m.arch {
            Arch::Opt => {
                if m.n_kv_heads != m.n_heads {
                    return bad(format!("OPT with {} KV heads for {} heads", m.n_kv_heads, m.n_heads));
                }
                if m.activation != Activation::Relu {
                    return bad("OPT without ReLU".into());
                }
            }
            Arch::Llama => {
                if m.word_embed_proj_dim.is_some() || !m.pre_norm {
                    return bad("a Llama with an embedding projection or post-norm".into());
                }
            }
        }
        let cfg = ModelConfig::from_hf_config(Path::new("(synthetic config.json)"), &self.hf_config_json())?;
        if cfg != *m {
            return bad(format!("a configuration its config.json does not record: {}", differences(m, &cfg)));
        }
        let n = expected_tensors(&cfg).iter().filter(|t| t.required).count();
        if self.shards > n {
            return bad(format!("{} shards for {n} tensors", self.shards));
        }
        Ok(cfg)
    }

    /// Bytes of tensor data the checkpoint holds.
    pub fn tensor_bytes(&self) -> Result<u64> {
        let cfg = self.config()?;
        let elem = self.dtype.block_bytes() as u64;
        Ok(expected_tensors(&cfg)
            .iter()
            .filter(|t| t.required)
            .map(|t| t.shape.iter().product::<usize>() as u64 * elem)
            .sum())
    }
}

/// The fields in which `want` and `got` differ, as `field want (reads back as got)`, comma-separated.
fn differences(want: &ModelConfig, got: &ModelConfig) -> String {
    let fields = |c: &ModelConfig| match serde_json::to_value(c) {
        Ok(Value::Object(o)) => o,
        _ => serde_json::Map::new(),
    };
    // The f32 fields as f32s print (1e-5 rather than its f64 widening).
    let show = |v: Option<&Value>| match v {
        Some(Value::Number(n)) if !n.is_u64() => format!("{}", n.as_f64().unwrap_or(f64::NAN) as f32),
        Some(v) => v.to_string(),
        None => "nothing".into(),
    };
    let got = fields(got);
    let diff: Vec<String> = fields(want)
        .into_iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .map(|(k, v)| format!("{k} {} (reads back as {})", show(Some(&v)), show(got.get(&k))))
        .collect();
    diff.join(", ")
}

/// `x` as a JSON number that prints as the shortest decimal reading back as `x` (`1e-5`, not the f64
/// widening `1.0000000474974513e-5`), as transformers writes its configs.
fn json_f32(x: f32) -> Value {
    json!(x.to_string().parse::<f64>().expect("an f32's decimal form parses as f64"))
}

/// Token ids of the synthetic tokenizer's special tokens, laid out as OPT's (RoBERTa's) vocabulary is.
const SYNTH_SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];
const SYNTH_BOS: u32 = 0;
const SYNTH_PAD: u32 = 1;
const SYNTH_EOS: u32 = 2;

/// Where a synthetic checkpoint's writing is, reported after each tensor.
#[derive(Debug, Clone, Copy)]
pub struct SynthProgress<'a> {
    /// The tensor just written.
    pub tensor: &'a str,
    pub tensors_done: usize,
    pub tensors_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Writes a random-weight Hugging Face checkpoint into `dir` (created if needed): the safetensors file(s),
/// `config.json`, `tokenizer.json` and `tokenizer_config.json`. See [`write_hf_checkpoint_with_progress`].
pub fn write_hf_checkpoint(spec: &SynthSpec, dir: &Path) -> Result<()> {
    write_hf_checkpoint_with_progress(spec, dir, &mut |_| {}).map(|_| ())
}

/// [`write_hf_checkpoint`], calling `progress` after every tensor.
///
/// Tensors are generated one at a time while the file is written (at most one tensor is in memory), so
/// paper-scale shapes fit. Each tensor's values depend only on the seed and the tensor's name, not on the
/// thread count or the shard layout. Scales keep activations of order one: projections reading a normalized
/// state have variance `1/fan_in`, embeddings give tied logits of standard deviation about 3, and the
/// matrices writing into the residual stream add about three times the embeddings' size. OPT's fc1 biases are drawn from
/// [-1.2, -0.1] so that, with pre-activations of unit variance, about 55-90% of each neuron's ReLU outputs
/// are zero (about 70% over all neurons), which gives sparsity experiments something to find. Files are
/// written under temporary names and renamed; `config.json` comes last, so a directory with a `config.json`
/// is complete. A temporary file is removed on any error (a full disk included). The whole write holds `dir`'s
/// [`OutputLock`], so a second writer of the same directory meanwhile is refused ([`Error::OutputBusy`]);
/// temporary files in `dir` left by writers no longer running are removed first and returned.
pub fn write_hf_checkpoint_with_progress(
    spec: &SynthSpec,
    dir: &Path,
    progress: &mut dyn FnMut(&SynthProgress),
) -> Result<Vec<Stale>> {
    let cfg = spec.config()?;
    let st_dtype = dtype_to_safetensors(spec.dtype).expect("SynthSpec::config accepts only F32, F16 and BF16");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = OutputLock::acquire(dir)?;
    let removed = install::remove_stale(dir, crate::io::temp_pid)?;
    let plans: Vec<Plan> = expected_tensors(&cfg)
        .into_iter()
        .filter(|t| t.required)
        .map(|t| Plan {
            init: init_for(&cfg, &t.name),
            seed: tensor_seed(spec.seed, &t.name),
            name: t.name,
            shape: t.shape,
        })
        .collect();
    let planted = match &spec.planted {
        Some(p) => {
            let planted = Planted::new(&p.plan, &cfg, spec.seed)?;
            for t in &plans {
                planted.check_name(&t.name)?;
            }
            Some(planted)
        }
        None => None,
    };
    let elem = spec.dtype.block_bytes() as u64;
    let bytes_of = |p: &Plan| p.shape.iter().product::<usize>() as u64 * elem;
    let total: u64 = plans.iter().map(bytes_of).sum();

    // Contiguous groups of about total/shards bytes each, none empty.
    let mut groups: Vec<Vec<&Plan>> = vec![Vec::new()];
    let mut acc = 0u64;
    for (i, p) in plans.iter().enumerate() {
        let last_full = groups.last().is_some_and(|g| !g.is_empty());
        let tensors_left = plans.len() - i;
        let groups_left = spec.shards - groups.len();
        if last_full
            && groups_left > 0
            && (acc >= groups.len() as u64 * total / spec.shards as u64 || tensors_left <= groups_left)
        {
            groups.push(Vec::new());
        }
        groups.last_mut().expect("starts with one group").push(p);
        acc += bytes_of(p);
    }

    let ctx = RefCell::new(WriteCtx {
        progress,
        tensors_done: 0,
        tensors_total: plans.len(),
        bytes_done: 0,
        bytes_total: total,
    });
    let info: Option<HashMap<String, String>> = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut weight_map = serde_json::Map::new();
    for (gi, group) in groups.iter().enumerate() {
        let file = if spec.shards == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", gi + 1, spec.shards)
        };
        let path = dir.join(&file);
        let tmp = crate::io::temp_path(&path);
        let pending = crate::io::interrupt::register(&tmp, crate::io::interrupt::Kind::Partial);
        let views: Vec<(&str, LazyTensor)> = group
            .iter()
            .map(|p| {
                let t = LazyTensor { plan: p, dtype: spec.dtype, st_dtype, ctx: &ctx, planted: planted.as_ref() };
                (p.name.as_str(), t)
            })
            .collect();
        let written = safetensors::tensor::serialize_to_file(views, &info, &tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(&tmp, io),
            other => Error::Safetensors { path: tmp.clone(), what: format!("writing: {other}") },
        });
        let written = match written {
            Ok(()) => pending.finish(|| rename(&tmp, &path)),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Best effort: the temporary file is garbage either way, and the first error is the one to report.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        for p in group {
            weight_map.insert(p.name.clone(), json!(file));
        }
    }
    let stale = if spec.shards == 1 { dir.join(INDEX_FILE) } else { dir.join(SINGLE_FILE) };
    if stale.exists() {
        std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
    }
    if spec.shards > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join(INDEX_FILE), &index)?;
    }
    // OPT was trained with `</s>` in front of every document; its tokenizer adds it as BOS.
    let bos = match spec.model.arch {
        Arch::Opt => SYNTH_EOS,
        Arch::Llama => SYNTH_BOS,
    };
    write_json(&dir.join(TOKENIZER_FILE), &synth_tokenizer_json(spec.model.vocab_size, bos))?;
    let tok_config = json!({
        "add_bos_token": true, "add_eos_token": false, "bos_token": SYNTH_SPECIALS[bos as usize],
        "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": spec.model.max_positions,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    write_json(&dir.join("tokenizer_config.json"), &tok_config)?;
    let planted_meta = dir.join(PLANTED_FILE);
    match (&spec.planted, &planted) {
        (Some(p), Some(c)) => {
            let mut record = p.record();
            if let Some(obj) = record.as_object_mut() {
                obj.insert("construction".into(), c.describe());
            }
            write_json(&planted_meta, &record)?;
        }
        _ if planted_meta.exists() => {
            std::fs::remove_file(&planted_meta).map_err(|e| Error::io(&planted_meta, e))?;
        }
        _ => {}
    }
    write_json(&dir.join(CONFIG_FILE), &spec.hf_config_json())?;
    Ok(removed)
}

/// The file a planted checkpoint describes its plan and construction in.
pub const PLANTED_FILE: &str = "planted.json";

/// A tensor to generate: uniform values in `init` from a per-tensor seed.
struct Plan {
    name: String,
    shape: Vec<usize>,
    init: (f32, f32),
    seed: u64,
}

struct WriteCtx<'p> {
    progress: &'p mut dyn FnMut(&SynthProgress),
    tensors_done: usize,
    tensors_total: usize,
    bytes_done: u64,
    bytes_total: u64,
}

/// A tensor whose bytes are generated when the serializer asks for them, one tensor at a time.
struct LazyTensor<'a, 'p> {
    plan: &'a Plan,
    dtype: DType,
    st_dtype: safetensors::Dtype,
    ctx: &'a RefCell<WriteCtx<'p>>,
    planted: Option<&'a Planted>,
}

impl safetensors::View for LazyTensor<'_, '_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.st_dtype
    }

    fn shape(&self) -> &[usize] {
        &self.plan.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let n: usize = self.plan.shape.iter().product();
        let bytes = match self.planted {
            Some(p) => {
                let v = p.tensor(&self.plan.name, &self.plan.shape).expect("every name was checked before writing");
                encode_values(&v, self.dtype)
            }
            None => synth_values(self.plan.seed, n, self.plan.init, self.dtype),
        };
        let mut ctx = self.ctx.borrow_mut();
        ctx.tensors_done += 1;
        ctx.bytes_done += bytes.len() as u64;
        let p = SynthProgress {
            tensor: &self.plan.name,
            tensors_done: ctx.tensors_done,
            tensors_total: ctx.tensors_total,
            bytes_done: ctx.bytes_done,
            bytes_total: ctx.bytes_total,
        };
        (ctx.progress)(&p);
        std::borrow::Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.plan.shape.iter().product::<usize>() * self.dtype.block_bytes()
    }
}

/// The uniform range a tensor's values are drawn from (see [`write_hf_checkpoint_with_progress`]).
fn init_for(cfg: &ModelConfig, name: &str) -> (f32, f32) {
    let d = cfg.d_model as f32;
    let f = cfg.d_ffn as f32;
    let e = cfg.embed_dim() as f32;
    // Standard deviation of the embeddings (tied logits then have a standard deviation of about 3), and of
    // what each block adds to the residual stream: three times more, so that after the first layer the
    // stream is not dominated by the input token's own embedding, which would make every tied model
    // predict its input token.
    let sigma = 3.0 / e.sqrt();
    let branch = 3.0 * sigma;
    let sym = |std: f32| (-std * 3f32.sqrt(), std * 3f32.sqrt());
    let module = name.rsplit('.').nth(1).unwrap_or("");
    let is_bias = name.ends_with(".bias");
    match (module, is_bias) {
        ("embed_tokens" | "embed_positions" | "lm_head", _) => sym(sigma),
        (
            "self_attn_layer_norm" | "final_layer_norm" | "input_layernorm" | "post_attention_layernorm" | "norm",
            false,
        ) => (0.8, 1.2),
        ("fc1", true) => (-1.2, -0.1),
        ("out_proj" | "fc2" | "o_proj" | "down_proj", true) => (-0.1 * branch, 0.1 * branch),
        (_, true) => (-0.1, 0.1),
        ("out_proj" | "o_proj", false) => sym(branch / d.sqrt()),
        // ReLU/SiLU outputs carry about a fifth to a third of the variance of their unit-variance input.
        ("fc2" | "down_proj", false) => sym(branch * (4.0 / f).sqrt()),
        ("project_in", false) => sym(1.0 / e.sqrt()),
        _ => sym(1.0 / d.sqrt()),
    }
}

/// A 64-bit mix (splitmix64's finalizer).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of tensor `name` in a checkpoint of seed `seed` (FNV-1a of the name, mixed with the seed).
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    mix64(seed ^ mix64(h))
}

/// Elements per independently seeded chunk; fixed, so values do not depend on the thread count.
const SYNTH_CHUNK: usize = 1 << 16;

/// `n` values uniform in `[lo, hi)` encoded as `dtype` (F32, F16 or BF16), little-endian. Chunks of
/// [`SYNTH_CHUNK`] elements are generated in parallel, each from its own seed.
pub fn synth_values(seed: u64, n: usize, (lo, hi): (f32, f32), dtype: DType) -> Vec<u8> {
    let elem = dtype.block_bytes();
    let mut out = vec![0u8; n * elem];
    out.par_chunks_mut(SYNTH_CHUNK * elem).enumerate().for_each(|(ci, buf)| {
        let mut rng = StdRng::seed_from_u64(mix64(seed ^ mix64(ci as u64 + 1)));
        for c in buf.chunks_exact_mut(elem) {
            let x = lo + (hi - lo) * rng.gen::<f32>();
            match dtype {
                DType::F16 => c.copy_from_slice(&quant::f32_to_f16_bits(x).to_le_bytes()),
                DType::BF16 => c.copy_from_slice(&quant::f32_to_bf16_bits(x).to_le_bytes()),
                _ => c.copy_from_slice(&x.to_le_bytes()),
            }
        }
    });
    out
}

/// `values` encoded as `dtype` (F32, F16 or BF16), little-endian.
pub fn encode_values(values: &[f32], dtype: DType) -> Vec<u8> {
    let elem = dtype.block_bytes();
    let mut out = vec![0u8; values.len() * elem];
    out.par_chunks_mut(SYNTH_CHUNK * elem).zip(values.par_chunks(SYNTH_CHUNK)).for_each(|(buf, vals)| {
        for (c, &x) in buf.chunks_exact_mut(elem).zip(vals) {
            match dtype {
                DType::F16 => c.copy_from_slice(&quant::f32_to_f16_bits(x).to_le_bytes()),
                DType::BF16 => c.copy_from_slice(&quant::f32_to_bf16_bits(x).to_le_bytes()),
                _ => c.copy_from_slice(&x.to_le_bytes()),
            }
        }
    });
    out
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(format!("serializing JSON: {e}")))?;
    text.push('\n');
    crate::io::write_atomic(path, |w| w.write_all(text.as_bytes()))
}

// ---------------------------------------------------------------------------------------------------------
// The synthetic tokenizer
// ---------------------------------------------------------------------------------------------------------

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others are shifted
/// to U+0100 and up, so every byte string is a string of printable characters (space is `Ġ`).
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b as usize] = char::from_u32(c).expect("below U+0200, a valid scalar value");
    }
    table
}

/// English text the synthetic tokenizer's first merges are learned from.
const MERGE_TEXT: &str = "The capital of France is Paris. The model reads the weights of the neurons that the \
    next token needs from flash memory, and keeps the rest on the device. A language model predicts the next \
    word of a sentence from the words that come before it. When the memory of the machine is too small for \
    the whole model, the parameters are stored on flash and loaded on demand. This is the main idea of the \
    paper, and the tests of this toolkit use a small model that is made from random numbers and a seed. \
    There are many layers in the network, and each of them has attention and a feed forward part. In the \
    feed forward part most of the neurons are not active for a given token, so their rows are not read.";

/// A byte-level BPE `tokenizer.json` with `vocab` tokens: `<s>`, `<pad>`, `</s>`, `<unk>` (ids 0-3), then
/// the 256 bytes (printable ASCII first, so a vocabulary below 260 keeps the useful ones; missing bytes
/// encode as `<unk>`), then merges learned from a fixed English text, then systematic merges (a token
/// followed by a lowercase letter) until the vocabulary is full. The post-processor prepends token `bos`.
pub fn synth_tokenizer_json(vocab: usize, bos: u32) -> Value {
    let chars = byte_chars();
    let mut order: Vec<u8> = (32u8..=126).collect();
    order.extend([b'\n', b'\t', b'\r']);
    order.extend((0u8..=255).filter(|b| !(32..=126).contains(b) && !matches!(b, b'\n' | b'\t' | b'\r')));
    let mut tokens: Vec<String> = SYNTH_SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(order.iter().map(|&b| chars[b as usize].to_string()));
    tokens.truncate(vocab);
    let mut ids: HashMap<String, usize> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i)).collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut add = |a: &str, b: &str, tokens: &mut Vec<String>, ids: &mut HashMap<String, usize>| {
        let m = format!("{a}{b}");
        ids.insert(m.clone(), tokens.len());
        tokens.push(m);
        merges.push((a.to_string(), b.to_string()));
    };

    if tokens.len() == SYNTH_SPECIALS.len() + 256 {
        // Words as GPT-2's pre-tokenizer cuts them, roughly: an optional leading space, then a run of
        // letters, of digits, or of other non-space characters.
        let mut words: HashMap<Vec<String>, usize> = HashMap::new();
        let mut cur = String::new();
        let class = |c: char| {
            if c.is_alphabetic() {
                0
            } else if c.is_numeric() {
                1
            } else {
                2
            }
        };
        let flush = |cur: &mut String, words: &mut HashMap<Vec<String>, usize>| {
            if !cur.is_empty() {
                let syms = cur.bytes().map(|b| chars[b as usize].to_string()).collect();
                *words.entry(syms).or_default() += 1;
                cur.clear();
            }
        };
        for c in MERGE_TEXT.chars() {
            let starts = match cur.chars().last() {
                None => false,
                Some(' ') => c == ' ',
                Some(p) => c == ' ' || class(p) != class(c),
            };
            if starts {
                flush(&mut cur, &mut words);
            }
            cur.push(c);
        }
        flush(&mut cur, &mut words);
        let mut words: Vec<(Vec<String>, usize)> = words.into_iter().collect();
        words.sort();
        while tokens.len() < vocab {
            let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
            for (w, n) in &words {
                for p in w.windows(2) {
                    *counts.entry((p[0].as_str(), p[1].as_str())).or_default() += n;
                }
            }
            // The most frequent pair not yet a token; ties go to the smaller pair, so the result is
            // deterministic.
            let best = counts
                .into_iter()
                .filter(|&((a, b), n)| n >= 2 && !ids.contains_key(&format!("{a}{b}")))
                .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)));
            let Some(((a, b), _)) = best else { break };
            let (a, b) = (a.to_string(), b.to_string());
            add(&a, &b, &mut tokens, &mut ids);
            let m = format!("{a}{b}");
            for (w, _) in &mut words {
                let mut i = 0;
                while i + 1 < w.len() {
                    if w[i] == a && w[i + 1] == b {
                        w[i] = m.clone();
                        w.remove(i + 1);
                    }
                    i += 1;
                }
            }
        }
        let letters: Vec<String> = (b'a'..=b'z').map(|b| chars[b as usize].to_string()).collect();
        let mut base = SYNTH_SPECIALS.len();
        while tokens.len() < vocab {
            let t = tokens[base].clone();
            for l in &letters {
                if tokens.len() >= vocab {
                    break;
                }
                if !ids.contains_key(&format!("{t}{l}")) {
                    add(&t, l, &mut tokens, &mut ids);
                }
            }
            base += 1;
        }
    }

    let vocab_json: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let merges_json: Vec<Value> = merges.iter().map(|(a, b)| json!(format!("{a} {b}"))).collect();
    let added: Vec<Value> = SYNTH_SPECIALS
        .iter()
        .enumerate()
        .take(vocab)
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let b = SYNTH_SPECIALS[bos as usize % SYNTH_SPECIALS.len()];
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}},
        },
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_json, "merges": merges_json,
        },
    })
}

// ---------------------------------------------------------------------------------------------------------
// Hugging Face Llama to GGUF
// ---------------------------------------------------------------------------------------------------------

/// Permutes the rows of a Q or K projection (`rows x cols`, `n_heads` heads) from the Hugging Face rotary
/// convention, which pairs dimension `i` of a head with `i + head_dim/2`, to llama.cpp's, which pairs `2i`
/// with `2i + 1`: row `2i + j` of each head takes the old row `j * head_dim/2 + i`. This is what llama.cpp's
/// converter does to Llama checkpoints; after it, interleaved rotary embeddings on the GGUF weights give
/// the same attention scores as half-split ones on the original weights.
pub fn permute_qk_rows(w: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = h * hd + 2 * i + j;
                let src = h * hd + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The `llama` architecture's hyperparameters of `c` as GGUF metadata, with `name`, the context length and
/// the rotary dimension as the caller's file records them.
fn llama_meta(w: &mut GgufWriter, c: &ModelConfig, name: String, context: usize, rope_dim: usize) {
    let u32m = |v: usize| MetaValue::U32(v as u32);
    w.add_meta("general.architecture", MetaValue::String("llama".into()));
    w.add_meta("general.name", MetaValue::String(name));
    w.add_meta("llama.block_count", u32m(c.n_layers));
    w.add_meta("llama.context_length", u32m(context));
    w.add_meta("llama.embedding_length", u32m(c.d_model));
    w.add_meta("llama.feed_forward_length", u32m(c.d_ffn));
    w.add_meta("llama.attention.head_count", u32m(c.n_heads));
    w.add_meta("llama.attention.head_count_kv", u32m(c.n_kv_heads));
    w.add_meta("llama.rope.freq_base", MetaValue::F32(c.rope_base));
    w.add_meta("llama.rope.dimension_count", u32m(rope_dim));
    w.add_meta("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(c.norm_eps));
    w.add_meta("llama.vocab_size", u32m(c.vocab_size));
}

/// Writes the Llama checkpoint in `dir` as a GGUF file at `out`, as llama.cpp's converter would: tensors
/// renamed (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`), Q and K rows permuted for
/// interleaved rotary embeddings ([`permute_qk_rows`]), matrices in `dtype` and norms in f32, and, when
/// the checkpoint has a byte-level BPE `tokenizer.json`, its vocabulary as `tokenizer.ggml.*` metadata.
/// Models GGUF's `llama` architecture cannot express (biases, an activation other than SiLU) are refused.
/// The converted model is assembled in memory before it is written: meant for test-sized models.
pub fn llama_hf_to_gguf(dir: &Path, out: &Path, dtype: DType) -> Result<()> {
    let ck = HfCheckpoint::open(dir)?;
    let c = ck.config().clone();
    let refuse = |what: String| Err(Error::Unsupported { path: dir.join(CONFIG_FILE), what });
    if c.arch != Arch::Llama {
        return refuse(format!("converting a {:?} checkpoint to a GGUF llama", c.arch));
    }
    if c.activation != Activation::Silu || c.qkv_bias || c.out_bias || c.ffn_bias || c.rope_dim != c.head_dim {
        return refuse("a Llama with biases, a non-SiLU activation or partial rotary (not a GGUF llama)".into());
    }
    let mut w = GgufWriter::new();
    llama_meta(&mut w, &c, format!("converted from {}", dir.display()), c.context_length, c.rope_dim);
    if let Some(tj) = ck.tokenizer_json() {
        add_gguf_tokenizer(&mut w, &tj, &ck, c.vocab_size)?;
    }

    let mut put = |hf: &str, gg: &str, permute_heads: Option<usize>| -> Result<()> {
        let t = ck.tensor(hf)?;
        let shape = t.shape.to_vec();
        let mut v = t.to_f32()?;
        if let Some(h) = permute_heads {
            v = permute_qk_rows(&v, shape[0], shape[1], h);
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let dt = if shape.len() == 1 { DType::F32 } else { dtype };
        w.add_tensor_f32(gg, &dims, dt, &v)
    };
    put("model.embed_tokens.weight", "token_embd.weight", None)?;
    put("model.norm.weight", "output_norm.weight", None)?;
    if !c.tied_embeddings {
        put("lm_head.weight", "output.weight", None)?;
    }
    for l in 0..c.n_layers {
        let hf = |x: &str| format!("model.layers.{l}.{x}.weight");
        let gg = |x: &str| format!("blk.{l}.{x}.weight");
        put(&hf("input_layernorm"), &gg("attn_norm"), None)?;
        put(&hf("self_attn.q_proj"), &gg("attn_q"), Some(c.n_heads))?;
        put(&hf("self_attn.k_proj"), &gg("attn_k"), Some(c.n_kv_heads))?;
        put(&hf("self_attn.v_proj"), &gg("attn_v"), None)?;
        put(&hf("self_attn.o_proj"), &gg("attn_output"), None)?;
        put(&hf("post_attention_layernorm"), &gg("ffn_norm"), None)?;
        put(&hf("mlp.gate_proj"), &gg("ffn_gate"), None)?;
        put(&hf("mlp.up_proj"), &gg("ffn_up"), None)?;
        put(&hf("mlp.down_proj"), &gg("ffn_down"), None)?;
    }
    w.write(out)
}

/// ggml token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_UNUSED: i32 = 5;

/// Copies a byte-level BPE `tokenizer.json` into GGUF `tokenizer.ggml.*` metadata (model `gpt2`), padding
/// the token list to the model's vocabulary with unused `[PAD{id}]` tokens as llama.cpp's converter does.
fn add_gguf_tokenizer(w: &mut GgufWriter, path: &Path, ck: &HfCheckpoint, vocab: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let tj: Value = serde_json::from_str(&text).map_err(|e| Error::json(path, &e))?;
    let model = &tj["model"];
    let bad = |what: &str| Error::Unsupported { path: path.to_path_buf(), what: what.to_string() };
    if model["type"] != "BPE" || tj["pre_tokenizer"]["type"] != "ByteLevel" {
        return Err(bad("a tokenizer other than a byte-level BPE with the plain GPT-2 pre-tokenizer"));
    }
    let map = model["vocab"].as_object().ok_or_else(|| bad("a BPE without a vocab object"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab.max(map.len())];
    for (t, id) in map {
        let id = id.as_u64().and_then(|i| usize::try_from(i).ok()).filter(|&i| i < tokens.len());
        let id = id.ok_or_else(|| bad("a vocab id beyond the model's vocabulary"))?;
        tokens[id] = Some(t.clone());
    }
    let specials: Vec<u64> = tj["added_tokens"]
        .as_array()
        .map(|a| a.iter().filter(|t| t["special"] == true).filter_map(|t| t["id"].as_u64()).collect())
        .unwrap_or_default();
    let mut types = Vec::with_capacity(tokens.len());
    let mut strs = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.into_iter().enumerate() {
        match t {
            Some(t) => {
                types.push(MetaValue::I32(if specials.contains(&(i as u64)) { TOKEN_CONTROL } else { TOKEN_NORMAL }));
                strs.push(MetaValue::String(t));
            }
            None => {
                types.push(MetaValue::I32(TOKEN_UNUSED));
                strs.push(MetaValue::String(format!("[PAD{i}]")));
            }
        }
    }
    let merges: Vec<MetaValue> = model["merges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| match m {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
                    _ => None,
                })
                .map(MetaValue::String)
                .collect()
        })
        .unwrap_or_default();
    w.add_meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.add_meta("tokenizer.ggml.pre", MetaValue::String("gpt2".into()));
    w.add_meta("tokenizer.ggml.tokens", MetaValue::Array(strs));
    w.add_meta("tokenizer.ggml.token_type", MetaValue::Array(types));
    w.add_meta("tokenizer.ggml.merges", MetaValue::Array(merges));
    let tok = ck.tokenizer()?;
    if let Some(b) = tok.bos() {
        w.add_meta("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(e) = tok.eos() {
        w.add_meta("tokenizer.ggml.eos_token_id", MetaValue::U32(e));
    }
    w.add_meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(tok.adds_bos()));
    Ok(())
}
