//! Hugging Face checkpoints: a directory with `config.json` and the weights in safetensors, either one
//! `model.safetensors` or shards listed by `model.safetensors.index.json` (whose `weight_map` names the shard
//! file of every tensor).
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype": "F16", "shape": [rows, cols], "data_offsets": [begin, end]}, "__metadata__": {..}}`),
//! then the tensors' bytes, row-major (PyTorch order: a linear layer's weight is `[out, in]`), with offsets
//! relative to the end of the header. The `safetensors` crate validates a file over its memory map; this module
//! then checks every tensor the configuration needs (present, a supported dtype, the shape the configuration
//! implies) when the checkpoint is opened, so that later reads cannot fail on shape.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use serde_json::Value;

use super::config::{Arch, ModelConfig, OPT_POSITION_OFFSET};
use super::quant::{self, DType};
use crate::{Error, Result};

/// The configuration file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The tokenizer of a checkpoint, in the `tokenizers` library's format.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The element type this toolkit reads for a safetensors dtype (F32, F16 and BF16).
pub fn dtype_from_safetensors(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// The safetensors dtype of a plain floating-point [`DType`] (quantized types have none).
pub fn dtype_to_safetensors(d: DType) -> Option<StDtype> {
    match d {
        DType::F32 => Some(StDtype::F32),
        DType::F16 => Some(StDtype::F16),
        DType::BF16 => Some(StDtype::BF16),
        _ => None,
    }
}

/// A tensor the configuration implies, with its Hugging Face name and row-major shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// Absent is an error; an optional tensor (a tied `lm_head.weight`) is checked only when present.
    pub required: bool,
    /// The shape in words, for error messages: `[d_ffn, d_model]`.
    pub dims: &'static str,
}

/// The tensors a model with configuration `cfg` has, by Hugging Face name, in the order Hugging Face stores
/// them (embeddings, layers, final norm, output).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<ExpectedTensor> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, dims: &'static str| {
        out.push(ExpectedTensor { name, shape, required: true, dims })
    };
    let d = cfg.d_model;
    let f = cfg.d_ffn;
    let q = cfg.n_heads * cfg.head_dim;
    let kv = cfg.kv_dim();
    match cfg.arch {
        Arch::Opt => {
            let p = "model.decoder";
            let e = cfg.embed_dim();
            push(format!("{p}.embed_tokens.weight"), vec![cfg.vocab_size, e], "[vocab_size, word_embed_proj_dim]");
            push(
                format!("{p}.embed_positions.weight"),
                vec![cfg.max_positions + OPT_POSITION_OFFSET, d],
                "[max_position_embeddings + 2, hidden_size]",
            );
            if let Some(pd) = cfg.word_embed_proj_dim {
                push(format!("{p}.project_in.weight"), vec![d, pd], "[hidden_size, word_embed_proj_dim]");
                push(format!("{p}.project_out.weight"), vec![pd, d], "[word_embed_proj_dim, hidden_size]");
            }
            if cfg.final_norm && cfg.norm_affine {
                push(format!("{p}.final_layer_norm.weight"), vec![d], "[hidden_size]");
                push(format!("{p}.final_layer_norm.bias"), vec![d], "[hidden_size]");
            }
            for l in 0..cfg.n_layers {
                let n = |x: &str| format!("{p}.layers.{l}.{x}");
                for m in ["q_proj", "k_proj", "v_proj"] {
                    push(n(&format!("self_attn.{m}.weight")), vec![d, d], "[hidden_size, hidden_size]");
                    if cfg.qkv_bias {
                        push(n(&format!("self_attn.{m}.bias")), vec![d], "[hidden_size]");
                    }
                }
                push(n("self_attn.out_proj.weight"), vec![d, d], "[hidden_size, hidden_size]");
                if cfg.out_bias {
                    push(n("self_attn.out_proj.bias"), vec![d], "[hidden_size]");
                }
                if cfg.norm_affine {
                    push(n("self_attn_layer_norm.weight"), vec![d], "[hidden_size]");
                    push(n("self_attn_layer_norm.bias"), vec![d], "[hidden_size]");
                }
                push(n("fc1.weight"), vec![f, d], "[ffn_dim, hidden_size]");
                if cfg.ffn_bias {
                    push(n("fc1.bias"), vec![f], "[ffn_dim]");
                }
                push(n("fc2.weight"), vec![d, f], "[hidden_size, ffn_dim]");
                if cfg.ffn_bias {
                    push(n("fc2.bias"), vec![d], "[hidden_size]");
                }
                if cfg.norm_affine {
                    push(n("final_layer_norm.weight"), vec![d], "[hidden_size]");
                    push(n("final_layer_norm.bias"), vec![d], "[hidden_size]");
                }
            }
            out.push(ExpectedTensor {
                name: "lm_head.weight".into(),
                shape: vec![cfg.vocab_size, e],
                required: !cfg.tied_embeddings,
                dims: "[vocab_size, word_embed_proj_dim]",
            });
        }
        Arch::Llama => {
            push("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d], "[vocab_size, hidden_size]");
            for l in 0..cfg.n_layers {
                let n = |x: &str| format!("model.layers.{l}.{x}");
                push(n("input_layernorm.weight"), vec![d], "[hidden_size]");
                push(n("self_attn.q_proj.weight"), vec![q, d], "[heads * head_dim, hidden_size]");
                if cfg.qkv_bias {
                    push(n("self_attn.q_proj.bias"), vec![q], "[heads * head_dim]");
                }
                for m in ["k_proj", "v_proj"] {
                    push(n(&format!("self_attn.{m}.weight")), vec![kv, d], "[kv_heads * head_dim, hidden_size]");
                    if cfg.qkv_bias {
                        push(n(&format!("self_attn.{m}.bias")), vec![kv], "[kv_heads * head_dim]");
                    }
                }
                push(n("self_attn.o_proj.weight"), vec![d, q], "[hidden_size, heads * head_dim]");
                if cfg.out_bias {
                    push(n("self_attn.o_proj.bias"), vec![d], "[hidden_size]");
                }
                push(n("post_attention_layernorm.weight"), vec![d], "[hidden_size]");
                push(n("mlp.gate_proj.weight"), vec![f, d], "[intermediate_size, hidden_size]");
                push(n("mlp.up_proj.weight"), vec![f, d], "[intermediate_size, hidden_size]");
                push(n("mlp.down_proj.weight"), vec![d, f], "[hidden_size, intermediate_size]");
                if cfg.ffn_bias {
                    push(n("mlp.gate_proj.bias"), vec![f], "[intermediate_size]");
                    push(n("mlp.up_proj.bias"), vec![f], "[intermediate_size]");
                    push(n("mlp.down_proj.bias"), vec![d], "[hidden_size]");
                }
            }
            push("model.norm.weight".into(), vec![d], "[hidden_size]");
            out.push(ExpectedTensor {
                name: "lm_head.weight".into(),
                shape: vec![cfg.vocab_size, d],
                required: !cfg.tied_embeddings,
                dims: "[vocab_size, hidden_size]",
            });
        }
    }
    out
}

/// One tensor of a checkpoint, borrowed from the mapped file: row-major, little-endian.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The safetensors file holding the tensor.
    pub file: &'a Path,
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of a row: the last dimension (1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows: the product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }

    /// The whole tensor converted to `f32`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.rows_f32(0..self.rows())
    }

    /// Rows `range` converted to `f32` (row-major, `range.len() * row_len()` values).
    pub fn rows_f32(&self, range: Range<usize>) -> Result<Vec<f32>> {
        let bad = |what: String| Error::Tensor { path: self.file.to_path_buf(), name: self.name.to_string(), what };
        if range.start > range.end || range.end > self.rows() {
            return Err(bad(format!("rows {range:?} of a tensor with {} rows", self.rows())));
        }
        let elem = self.dtype.block_bytes();
        let row_bytes = self.row_len() * elem;
        let bytes = &self.data[range.start * row_bytes..range.end * row_bytes];
        let mut out = vec![0.0f32; range.len() * self.row_len()];
        quant::dequantize(self.dtype, bytes, &mut out).map_err(|e| bad(e.to_string()))?;
        Ok(out)
    }
}

/// A tensor's place: its shard, type, shape and absolute byte range in the shard's file.
#[derive(Debug)]
struct Entry {
    name: String,
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    range: Range<usize>,
}

struct Shard {
    path: PathBuf,
    map: crate::io::Mapping,
}

/// An opened Hugging Face checkpoint directory: its configuration and its tensors, memory-mapped.
///
/// The weights are `model.safetensors` when it exists, else the shards of `model.safetensors.index.json`
/// (the order transformers uses). Opening reads `config.json` into a [`ModelConfig`], validates every safetensors file with the `safetensors`
/// crate, and checks every tensor of [`expected_tensors`]: present, F32/F16/BF16, and of the shape the
/// configuration implies. Checkpoints of the bare base model (`decoder.*` for OPT, `layers.*` for Llama) are
/// accepted under the `model.`-prefixed names.
pub struct HfCheckpoint {
    dir: PathBuf,
    config: ModelConfig,
    raw_config: Value,
    shards: Vec<Shard>,
    entries: Vec<Entry>,
    /// Name (and `model.`-prefixed alias) to entry.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for HfCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfCheckpoint")
            .field("dir", &self.dir)
            .field("arch", &self.config.arch)
            .field("shards", &self.shards.len())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl HfCheckpoint {
    /// Opens the checkpoint in directory `dir`.
    pub fn open(dir: &Path) -> Result<HfCheckpoint> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let raw_config: Value = serde_json::from_str(&text).map_err(|e| Error::json(&config_path, &e))?;
        let config = ModelConfig::from_hf_config(&config_path, &raw_config)?;

        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        // transformers looks for the single file first, then for the index.
        let (shards, entries, weights_path) = if single_path.exists() {
            let map = crate::io::map_file(&single_path)?;
            let parsed = parse_shard(&single_path, &map)?;
            let entries = parsed.into_iter().map(|p| p.into_entry(0)).collect();
            (vec![Shard { path: single_path.clone(), map }], entries, single_path)
        } else if index_path.exists() {
            let (s, e) = open_sharded(dir, &index_path)?;
            (s, e, index_path)
        } else {
            return Err(Error::Safetensors {
                path: dir.to_path_buf(),
                what: format!("neither {SINGLE_FILE} nor {INDEX_FILE} is in the directory"),
            });
        };

        let mut index = HashMap::with_capacity(entries.len() * 2);
        for (i, e) in entries.iter().enumerate() {
            index.insert(e.name.clone(), i);
        }
        for (i, e) in entries.iter().enumerate() {
            if !e.name.starts_with("model.") && !e.name.starts_with("lm_head.") {
                index.entry(format!("model.{}", e.name)).or_insert(i);
            }
        }
        let ckpt = HfCheckpoint { dir: dir.to_path_buf(), config, raw_config, shards, entries, index };
        ckpt.check_expected(&weights_path)?;
        Ok(ckpt)
    }

    fn check_expected(&self, weights_path: &Path) -> Result<()> {
        for want in expected_tensors(&self.config) {
            let Some(&i) = self.index.get(&want.name) else {
                if want.required {
                    return Err(Error::Tensor {
                        path: weights_path.to_path_buf(),
                        name: want.name,
                        what: format!("missing; {} needs it with shape {:?} = {}", CONFIG_FILE, want.shape, want.dims),
                    });
                }
                continue;
            };
            let e = &self.entries[i];
            let path = &self.shards[e.shard].path;
            if dtype_from_safetensors(e.dtype).is_none() {
                return Err(unsupported_dtype(path, &e.name, e.dtype));
            }
            if e.shape != want.shape {
                return Err(Error::Tensor {
                    path: path.clone(),
                    name: e.name.clone(),
                    what: format!(
                        "shape {:?}, but {} implies {:?} = {} (hidden_size {}, ffn {}, vocab {})",
                        e.shape,
                        CONFIG_FILE,
                        want.shape,
                        want.dims,
                        self.config.d_model,
                        self.config.d_ffn,
                        self.config.vocab_size
                    ),
                });
            }
        }
        Ok(())
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model configuration read from `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `config.json` as parsed JSON, for keys the [`ModelConfig`] does not carry (token ids, dtype).
    pub fn raw_config(&self) -> &Value {
        &self.raw_config
    }

    /// The safetensors files, in shard order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// Names of all tensors as stored, in shard and file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// Whether tensor `name` (or its base-model spelling without `model.`) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Tensor `name`, borrowed from the mapped file. Unsupported dtypes (integers, F64, FP8) are an error.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let &i = self.index.get(name).ok_or_else(|| Error::Tensor {
            path: self.dir.clone(),
            name: name.to_string(),
            what: "not in the checkpoint".into(),
        })?;
        let e = &self.entries[i];
        let shard = &self.shards[e.shard];
        let dtype = dtype_from_safetensors(e.dtype).ok_or_else(|| unsupported_dtype(&shard.path, &e.name, e.dtype))?;
        // Parsing checked every range against the file (the crate checks that the data section is exactly
        // covered), so this slice is in bounds unless that check is wrong.
        let data = shard.map.get(e.range.clone()).ok_or_else(|| Error::Tensor {
            path: shard.path.clone(),
            name: e.name.clone(),
            what: format!("bytes {:?} lie outside the file", e.range),
        })?;
        Ok(TensorRef { file: &shard.path, name: &e.name, dtype, shape: &e.shape, data })
    }

    /// Where tensor `name` lies: its shard index and byte range in that shard's map.
    pub fn location(&self, name: &str) -> Result<(usize, Range<usize>)> {
        let &i = self.index.get(name).ok_or_else(|| Error::Tensor {
            path: self.dir.clone(),
            name: name.to_string(),
            what: "not in the checkpoint".into(),
        })?;
        Ok((self.entries[i].shard, self.entries[i].range.clone()))
    }

    /// The mapped bytes of shard `i`.
    pub fn shard_bytes(&self, i: usize) -> &[u8] {
        &self.shards[i].map
    }

    /// Tensor `name` converted to `f32`, row-major.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.to_f32()
    }

    /// Rows `range` of tensor `name` converted to `f32` (for matrices too large to convert whole).
    pub fn tensor_rows_f32(&self, name: &str, range: Range<usize>) -> Result<Vec<f32>> {
        self.tensor(name)?.rows_f32(range)
    }

    /// `tokenizer.json` beside the weights, if there is one.
    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        let p = self.dir.join(TOKENIZER_FILE);
        p.is_file().then_some(p)
    }

    /// The checkpoint's tokenizer (see [`super::tokenizer::Tokenizer::from_file`]).
    pub fn tokenizer(&self) -> Result<super::tokenizer::Tokenizer> {
        let p = self.tokenizer_json().ok_or_else(|| {
            Error::Tokenizer(format!("{}: no {TOKENIZER_FILE} in the checkpoint", self.dir.display()))
        })?;
        super::tokenizer::Tokenizer::from_file(&p)
    }
}

fn unsupported_dtype(path: &Path, name: &str, d: StDtype) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        what: format!("tensor `{name}` has dtype {d:?} (supported: F32, F16, BF16)"),
    }
}

/// A tensor as parsed from one file.
struct Parsed {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    range: Range<usize>,
}

impl Parsed {
    fn into_entry(self, shard: usize) -> Entry {
        Entry { name: self.name, shard, dtype: self.dtype, shape: self.shape, range: self.range }
    }
}

/// Validates one safetensors file with the crate and lists its tensors with absolute byte ranges, in file
/// order. A file the crate rejects is examined again to say what exactly is wrong.
fn parse_shard(path: &Path, bytes: &[u8]) -> Result<Vec<Parsed>> {
    let (n, metadata) = match SafeTensors::read_metadata(bytes) {
        Ok(x) => x,
        Err(e) => return Err(Error::Safetensors { path: path.to_path_buf(), what: diagnose(bytes, &e) }),
    };
    let base = 8 + n;
    let mut out: Vec<Parsed> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| Parsed {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            range: base + info.data_offsets.0..base + info.data_offsets.1,
        })
        .collect();
    out.sort_by_key(|p| (p.range.start, p.range.end));
    // Also checked by the crate; repeated so that slicing later never depends on its internals.
    for p in &out {
        if p.range.end > bytes.len() {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                name: p.name.clone(),
                what: format!("data {:?} past the end of the file ({} bytes)", p.range, bytes.len()),
            });
        }
    }
    Ok(out)
}

/// The largest header the `safetensors` crate accepts.
const MAX_HEADER: u64 = 100_000_000;

/// What is wrong with a file the `safetensors` crate rejected, in words that name the tensor and the numbers.
fn diagnose(bytes: &[u8], err: &safetensors::SafeTensorError) -> String {
    let len = bytes.len() as u64;
    let Some(head) = bytes.get(..8) else {
        return format!("the file is {len} bytes, shorter than the 8-byte header length");
    };
    let mut b8 = [0u8; 8];
    b8.copy_from_slice(head);
    let n = u64::from_le_bytes(b8);
    if n > MAX_HEADER {
        return format!("header length {n} exceeds the {MAX_HEADER}-byte limit (file is {len} bytes)");
    }
    if n > len - 8 {
        return format!("header length {n} runs past the end of the file ({len} bytes, so at most {})", len - 8);
    }
    let header = &bytes[8..8 + n as usize];
    let text = match std::str::from_utf8(header) {
        Ok(t) => t,
        Err(e) => return format!("header is not UTF-8 (bad byte at header offset {})", e.valid_up_to()),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return format!("header is not valid JSON: {e}"),
    };
    let Some(obj) = value.as_object() else {
        return "header is JSON but not an object".into();
    };
    let data_len = len - 8 - n;
    let mut spans: Vec<(u64, u64, &str)> = Vec::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            if !info.is_object() || info.as_object().is_some_and(|m| m.values().any(|v| !v.is_string())) {
                return "`__metadata__` is not an object of strings".into();
            }
            continue;
        }
        let dtype = info.get("dtype").and_then(Value::as_str);
        let Some(size) = dtype.and_then(st_dtype_size) else {
            return format!("tensor `{name}`: unknown or missing dtype {}", info.get("dtype").unwrap_or(&Value::Null));
        };
        let shape: Option<Vec<u64>> =
            info.get("shape").and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_u64).collect());
        let Some(shape) = shape else {
            return format!("tensor `{name}`: shape is not a list of non-negative integers");
        };
        let offs: Option<Vec<u64>> =
            info.get("data_offsets").and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_u64).collect());
        let (begin, end) = match offs.as_deref() {
            Some(&[b, e]) => (b, e),
            _ => return format!("tensor `{name}`: data_offsets is not a pair of non-negative integers"),
        };
        if end < begin {
            return format!("tensor `{name}`: data_offsets [{begin}, {end}] end before they begin");
        }
        let need = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        match need {
            None => return format!("tensor `{name}`: shape {shape:?} overflows"),
            Some(need) if need != end - begin => {
                return format!(
                    "tensor `{name}`: dtype {} and shape {shape:?} need {need} bytes, but data_offsets [{begin}, {end}] hold {}",
                    dtype.unwrap_or("?"),
                    end - begin
                )
            }
            Some(_) => {}
        }
        spans.push((begin, end, name));
    }
    spans.sort();
    let mut at = 0u64;
    for &(begin, end, name) in &spans {
        if begin != at {
            return format!(
                "tensor `{name}`: data starts at {begin}, but the previous tensor ends at {at} (gap or overlap)"
            );
        }
        at = end;
    }
    if at != data_len {
        return format!("the tensors cover {at} bytes of data, but the file holds {data_len} after the header");
    }
    format!("rejected by the safetensors reader: {err}")
}

/// Bytes per element of a safetensors dtype name.
fn st_dtype_size(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Opens the shards an index lists; every tensor of its `weight_map` must be in the shard it names.
fn open_sharded(dir: &Path, index_path: &Path) -> Result<(Vec<Shard>, Vec<Entry>)> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::json(index_path, &e))?;
    let map =
        v.get("weight_map").ok_or_else(|| Error::MissingKey { path: index_path.into(), key: "weight_map".into() })?;
    let map = map.as_object().ok_or_else(|| Error::BadKey {
        path: index_path.into(),
        key: "weight_map".into(),
        expected: "an object of tensor name to shard file".into(),
        found: "another JSON value".into(),
    })?;
    // Shard file name -> tensors it should hold; BTreeMap keeps shard order stable (model-00001-of-...).
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| Error::BadKey {
            path: index_path.into(),
            key: format!("weight_map.{name}"),
            expected: "a shard file name".into(),
            found: file.to_string(),
        })?;
        let plain = Path::new(file).file_name().is_some_and(|f| f == std::ffi::OsStr::new(file));
        if !plain || file == ".." {
            return Err(Error::Safetensors {
                path: index_path.into(),
                what: format!("shard `{file}` of tensor `{name}` is not a plain file name in the checkpoint directory"),
            });
        }
        by_shard.entry(file).or_default().push(name);
    }
    if by_shard.is_empty() {
        return Err(Error::Safetensors { path: index_path.into(), what: "weight_map is empty".into() });
    }
    let mut shards = Vec::with_capacity(by_shard.len());
    let mut entries = Vec::with_capacity(map.len());
    for (si, (file, names)) in by_shard.into_iter().enumerate() {
        let path = dir.join(file);
        let mapped = crate::io::map_file(&path).map_err(|e| Error::Safetensors {
            path: index_path.into(),
            what: format!("shard `{file}` (holding `{}` and {} more) cannot be opened: {e}", names[0], names.len() - 1),
        })?;
        let mut parsed: HashMap<String, Parsed> =
            parse_shard(&path, &mapped)?.into_iter().map(|p| (p.name.clone(), p)).collect();
        let mut mine: Vec<Entry> = Vec::with_capacity(names.len());
        for name in names {
            let p = parsed.remove(name).ok_or_else(|| Error::Safetensors {
                path: index_path.into(),
                what: format!("weight_map puts tensor `{name}` in shard `{file}`, which does not contain it"),
            })?;
            mine.push(p.into_entry(si));
        }
        mine.sort_by_key(|e| e.range.start);
        entries.extend(mine);
        shards.push(Shard { path, map: mapped });
    }
    Ok((shards, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> ModelConfig {
        ModelConfig::from_hf_config(Path::new("config.json"), &v).expect("config")
    }

    #[test]
    fn checkpoint_is_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<HfCheckpoint>();
    }

    #[test]
    fn dtypes_map_both_ways() {
        for d in [DType::F32, DType::F16, DType::BF16] {
            let st = dtype_to_safetensors(d).expect("plain float");
            assert_eq!(dtype_from_safetensors(st), Some(d));
            assert_eq!(st.size(), d.block_bytes());
        }
        assert_eq!(dtype_to_safetensors(DType::Q4_0), None);
        assert_eq!(dtype_from_safetensors(StDtype::I64), None);
        for (name, st) in [("BOOL", StDtype::BOOL), ("F8_E4M3", StDtype::F8_E4M3), ("I16", StDtype::I16)] {
            assert_eq!(st_dtype_size(name), Some(st.size() as u64));
        }
        assert_eq!(st_dtype_size("F64"), Some(8));
        assert_eq!(st_dtype_size("f32"), None);
    }

    #[test]
    fn expected_tensors_follow_the_config() {
        let opt = cfg(json!({"model_type": "opt", "hidden_size": 8, "ffn_dim": 16, "num_attention_heads": 2,
            "num_hidden_layers": 3, "vocab_size": 10, "max_position_embeddings": 4}));
        let t = expected_tensors(&opt);
        // embed, positions, final LN (2), per layer 4 x (weight, bias) + 2 LN x 2 + fc1/fc2 x 2; lm_head.
        assert_eq!(t.len(), 2 + 2 + 3 * (8 + 4 + 4) + 1);
        assert_eq!(t.iter().filter(|t| !t.required).map(|t| t.name.as_str()).collect::<Vec<_>>(), ["lm_head.weight"]);
        assert_eq!(t[1].shape, [6, 8]);

        let qwen = cfg(json!({"model_type": "qwen2", "hidden_size": 8, "intermediate_size": 16,
            "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 10}));
        let t = expected_tensors(&qwen);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"model.layers.0.self_attn.k_proj.bias"));
        assert!(!names.contains(&"model.layers.0.self_attn.o_proj.bias"));
        let k = t.iter().find(|t| t.name == "model.layers.0.self_attn.k_proj.weight").expect("k");
        assert_eq!(k.shape, [4, 8]);
        let lm = t.iter().find(|t| t.name == "lm_head.weight").expect("lm_head");
        assert!(lm.required, "Qwen2 and Llama are untied unless the config says otherwise");
    }
}
