//! Tokenizers built from the model file, through the `tokenizers` crate.
//!
//! A GGUF file with `tokenizer.ggml.model = gpt2` carries a byte-level BPE: its tokens, its merges, token
//! types and a pre-tokenizer name. We turn those into the JSON form the `tokenizers` crate loads
//! (`tokenizer.json`), so GGUF and Hugging Face checkpoints go through one code path.

use serde_json::{json, Value};

use super::gguf::GgufFile;
use crate::{Error, Result};

/// ggml token types that are control or user-defined tokens: matched whole in text, never split by BPE.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A text tokenizer with the model's BOS/EOS conventions.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name, as llama.cpp's vocabulary code maps them.
fn pre_tokenizer(path: &std::path::Path, pre: &str) -> Result<Value> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(match pre {
        // GPT-2's regex alone.
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" => byte_level,
        // Every digit is its own piece, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
        }),
        other => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!("tokenizer.ggml.pre = `{other}` (supported: gpt2, smollm, starcoder, refact)"),
            })
        }
    })
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let path = g.path();
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!("tokenizer.ggml.model = `{model}` (supported: gpt2, a byte-level BPE)"),
            });
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let types = match g.get("tokenizer.ggml.token_type") {
            Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?,
            None => Vec::new(),
        };
        let pre = match g.get("tokenizer.ggml.pre") {
            Some(_) => g.get_str("tokenizer.ggml.pre")?,
            None => "default",
        };
        let id_key = |k: &str| -> Result<Option<u32>> {
            match g.get(k) {
                Some(_) => Ok(Some(g.get_u32(k)?)),
                None => Ok(None),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            Some(_) => g.get_bool("tokenizer.ggml.add_bos_token")?,
            None => false,
        };

        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.insert((*tok).to_string(), json!(id));
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
                }));
            }
        }
        if vocab.len() != tokens.len() {
            return Err(Error::BadKey {
                path: path.to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
                expected: "distinct tokens".into(),
                found: format!("{} distinct of {}", vocab.len(), tokens.len()),
            });
        }
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer(path, pre)?,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let inner = spec
            .to_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer(format!("{}: building the BPE tokenizer: {e}", path.display())))?;
        for id in [bos, eos].into_iter().flatten() {
            if id as usize >= tokens.len() {
                return Err(Error::BadKey {
                    path: path.to_path_buf(),
                    key: "tokenizer.ggml.bos_token_id / eos_token_id".into(),
                    expected: format!("an id below the vocabulary size {}", tokens.len()),
                    found: id.to_string(),
                });
            }
        }
        Ok(Tokenizer { inner, bos, eos, add_bos, vocab_size: tokens.len() })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// BOS and EOS come, in this order of precedence, from `config.json` beside the file (`bos_token_id`,
    /// `eos_token_id`; the first of a list), from `tokenizer_config.json` beside it (`bos_token`, `eos_token`,
    /// as a string or `{"content": ..}`), or from the tokenizer's special added tokens with a conventional name
    /// (`<s>`, `<|begin_of_text|>`, `<bos>`; `</s>`, `<|end_of_text|>`, `<|endoftext|>`, `<eos>`). BOS is
    /// prepended when `tokenizer_config.json` says `add_bos_token: true`, or, without that key, when the
    /// tokenizer's own post-processor prepends it.
    pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let side = |name: &str| -> Result<Option<Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_str(&text).map(Some).map_err(|e| Error::json(&p, &e))
        };
        let config = side("config.json")?;
        let tok_config = side("tokenizer_config.json")?;
        Self::from_json(path, &text, config, tok_config)
    }

    /// A Hugging Face `tokenizer.json` given as text, with the `config.json` and `tokenizer_config.json`
    /// that would sit beside it (see [`Tokenizer::from_file`]); `path` names the source in errors.
    pub fn from_json(
        path: &std::path::Path,
        json: &str,
        config: Option<Value>,
        tok_config: Option<Value>,
    ) -> Result<Tokenizer> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer(format!("{}: loading: {e}", path.display())))?;

        let config_id = |key: &str| -> Option<u32> {
            let v = config.as_ref()?.get(key)?;
            let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
            v.as_u64().and_then(|n| u32::try_from(n).ok())
        };
        let named = |key: &str| -> Option<u32> {
            let v = tok_config.as_ref()?.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(s)
        };
        let added = |names: &[&str]| -> Option<u32> {
            let specials = inner.get_added_tokens_decoder();
            let mut ids: Vec<u32> = specials
                .iter()
                .filter(|(_, t)| t.special && names.contains(&t.content.as_str()))
                .map(|(&id, _)| id)
                .collect();
            ids.sort_unstable();
            ids.first().copied()
        };
        let bos = config_id("bos_token_id")
            .or_else(|| named("bos_token"))
            .or_else(|| added(&["<s>", "<|begin_of_text|>", "<bos>"]));
        let eos = config_id("eos_token_id")
            .or_else(|| named("eos_token"))
            .or_else(|| added(&["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"]));
        let vocab_size = inner.get_vocab_size(true);
        for (what, id) in [("BOS", bos), ("EOS", eos)] {
            if let Some(id) = id.filter(|&id| id as usize >= vocab_size) {
                return Err(Error::Tokenizer(format!(
                    "{}: {what} id {id} is not below the vocabulary size {vocab_size}",
                    path.display()
                )));
            }
        }
        let add_bos = match tok_config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool) {
            Some(b) => b,
            // Without the key, do what the tokenizer's post-processor does with special tokens on.
            None => match bos {
                Some(b) => {
                    let with = inner.encode("a", true).map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
                    let without = inner.encode("a", false).map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
                    with.get_ids().first() == Some(&b) && without.get_ids().first() != Some(&b)
                }
                None => false,
            },
        };
        Ok(Tokenizer { inner, bos, eos, add_bos, vocab_size })
    }

    /// Whether [`Tokenizer::encode`] puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Token ids of `text`, with BOS first when the model asks for it. Special tokens written in the text
    /// (such as `<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(format!("encoding: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(format!("decoding: {e}")))
    }

    /// The end-of-sequence token, if the model names one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The beginning-of-sequence token, if the model names one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}
