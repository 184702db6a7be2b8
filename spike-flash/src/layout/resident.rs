//! `resident.bin` read once and checked, and [`Layout::load`]: the one definition of a valid layout
//! (`docs/format.md`, Validation on load) that `spike verify` and every command running a model from a layout
//! apply.

use std::path::Path;
use std::sync::Arc;

use super::read::Layout;
use super::{HF_CONFIG_KEY, HF_TOKENIZER_KEY, RESIDENT_FILE};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::ModelParts;
use crate::{Error, Result};

/// `resident.bin`, read and checked: the model's parts that stay in DRAM, bound with the FFN left on flash, and
/// the tokenizer.
pub struct Resident {
    pub parts: ModelParts,
    /// Where each tensor lies in `resident.bin`, in file order, with the crc32c the manifest gives it.
    pub spans: Vec<TensorSpan>,
    /// `None` when the model the layout was converted from had none (no `tokenizer.ggml.model` in a GGUF file,
    /// no `tokenizer.json` beside a checkpoint): a model run on token ids.
    pub tokenizer: Option<Tokenizer>,
}

/// Where one tensor of `resident.bin` lies in the file (`offset` from the file's start, `len` bytes), with the
/// crc32c the manifest gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpan {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    pub crc32c: u32,
}

impl TensorSpan {
    /// The transformer layer the tensor belongs to (`blk.N.` in GGUF names, `layers.N.` in Hugging Face ones),
    /// or `None` for the model's other tensors (embeddings, positions, the final norm, the output head).
    pub fn layer(&self) -> Option<usize> {
        let n = &self.name;
        let rest = n.strip_prefix("blk.").or_else(|| n.find(".layers.").map(|i| &n[i + ".layers.".len()..]))?;
        rest.split('.').next()?.parse().ok()
    }
}

/// A layout that passed every check of a valid layout but the records' (which are checked as they are read):
/// what [`Layout::load`] returns.
pub struct Loaded {
    pub layout: Layout,
    pub resident: Resident,
}

fn err(path: &Path, what: impl Into<String>) -> Error {
    Error::Layout { path: path.to_path_buf(), what: what.into() }
}

impl Layout {
    /// Opens the layout in `dir` and checks everything a valid layout must be but its records' bytes: the
    /// structure ([`Layout::open`]) and `resident.bin` ([`Layout::resident`]). `spike verify` goes through
    /// here and then checks every record; running a model goes through here and checks each record it reads.
    pub fn load(dir: &Path) -> Result<Loaded> {
        let layout = Layout::open(dir)?;
        let resident = layout.resident()?;
        Ok(Loaded { layout, resident })
    }

    /// `resident.bin`, read into memory (not mapped: under a memory budget its pages must not be evicted and
    /// re-read) and checked: its length and whole-file crc32c (which cover the tokenizer, the special token
    /// ids, the chat template and the hyperparameters), its tensors exactly those of the manifest with their
    /// crc32c, its model configuration the manifest's, its tokenizer built, its tensors bound to the model.
    pub fn resident(&self) -> Result<Resident> {
        let m = &self.manifest;
        let rpath = self.dir.join(RESIDENT_FILE);
        let bytes = std::fs::read(&rpath).map_err(|e| Error::io(&rpath, e))?;
        if bytes.len() as u64 != m.resident.len {
            let len = bytes.len() as u64;
            return Err(Error::Length { path: rpath, len, expected: m.resident.len, what: "the manifest".into() });
        }
        let crc = crc32c::crc32c(&bytes);
        let damaged =
            |place: String| Error::Checksum { path: rpath.clone(), place, stored: m.resident.crc32c, computed: crc };
        let mut g = match GgufFile::from_bytes(&rpath, bytes) {
            Ok(g) => g,
            Err(e) if crc != m.resident.crc32c => {
                return Err(damaged(format!("the whole file, which does not parse either ({e})")))
            }
            Err(e) => return Err(e),
        };
        // Both ways: a tensor the manifest does not list would go unchecked.
        if let Some(t) = g.tensors().iter().find(|t| !m.resident.tensors.contains_key(&t.name)) {
            return Err(err(&rpath, format!("tensor `{}` is not in the manifest's resident.tensors", t.name)));
        }
        for (name, &want) in &m.resident.tensors {
            let data =
                g.tensor_data(name).map_err(|_| err(&rpath, format!("tensor `{name}` of the manifest is missing")))?;
            let computed = crc32c::crc32c(data);
            if computed != want {
                return Err(Error::Checksum { path: rpath, place: format!("tensor `{name}`"), stored: want, computed });
            }
        }
        if crc != m.resident.crc32c {
            return Err(damaged(
                "the whole file, outside the tensors' data (which match): its header or metadata, where the \
                 tokenizer, the special token ids, the chat template and the hyperparameters are"
                    .into(),
            ));
        }
        let tokenizer = tokenizer_of(&g, &rpath)?;
        let hf = g.get(HF_CONFIG_KEY).is_some();
        let cfg = match hf {
            true => {
                let text = g.get_str(HF_CONFIG_KEY)?;
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::json(&rpath, &e))?;
                ModelConfig::from_hf_config(&rpath, &v)?
            }
            false => ModelConfig::from_gguf(&g)?,
        };
        if cfg != m.model {
            return Err(err(&rpath, "its metadata describes another model than the manifest"));
        }
        // The tokenizer's vocabulary is most of the metadata; the model does not need it.
        g.retain_metadata(|k| !k.starts_with("tokenizer.") && k != HF_TOKENIZER_KEY);
        let data = g.data_offset();
        let mut spans: Vec<TensorSpan> = g
            .tensors()
            .iter()
            .map(|t| TensorSpan {
                name: t.name.clone(),
                offset: data + t.offset,
                len: t.n_bytes,
                crc32c: m.resident.tensors[&t.name],
            })
            .collect();
        spans.sort_by_key(|s| s.offset);
        let parts = crate::model::bind::resident(Arc::new(g), m.model.clone(), hf)?;
        Ok(Resident { parts, spans, tokenizer })
    }

    /// The model's tokenizer, from `resident.bin` (read and checked as [`Layout::resident`] does).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        self.resident()?.take_tokenizer(self)
    }

    /// The `spike_planted` record of the checkpoint this layout was converted from (`spike synth --planted`
    /// writes it into `config.json`, which `resident.bin` keeps), or `None` for any other source: a layout
    /// whose weights are a simulation of a model's statistics, not a trained model, and results from it are
    /// labelled `planted`. Reads only `resident.bin`'s metadata (mapped, not checked: a label, not weights).
    pub fn planted(&self) -> Result<Option<serde_json::Value>> {
        let rpath = self.dir.join(RESIDENT_FILE);
        let g = GgufFile::open(&rpath)?;
        if g.get(HF_CONFIG_KEY).is_none() {
            return Ok(None);
        }
        let v: serde_json::Value =
            serde_json::from_str(g.get_str(HF_CONFIG_KEY)?).map_err(|e| Error::json(&rpath, &e))?;
        Ok(v.get("spike_planted").filter(|p| !p.is_null() && **p != serde_json::Value::Bool(false)).cloned())
    }
}

impl Resident {
    /// Takes the tokenizer out; an error naming `layout`'s `resident.bin` when the model it was converted from
    /// had none.
    pub fn take_tokenizer(&mut self, layout: &Layout) -> Result<Tokenizer> {
        self.tokenizer.take().ok_or_else(|| {
            err(
                &layout.dir.join(RESIDENT_FILE),
                "the model this layout was converted from had no tokenizer (no GGUF tokenizer metadata, or no \
                 tokenizer.json beside the checkpoint)",
            )
        })
    }
}

/// The tokenizer `resident.bin`'s metadata holds, built: a GGUF source's, or a checkpoint's `tokenizer.json`;
/// `None` when the model had none.
fn tokenizer_of(g: &GgufFile, rpath: &Path) -> Result<Option<Tokenizer>> {
    if g.get(HF_TOKENIZER_KEY).is_some() {
        let json = g.get_str(HF_TOKENIZER_KEY)?;
        let config = g.get_str(HF_CONFIG_KEY)?;
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| Error::json(rpath, &e))?;
        return Tokenizer::from_json(rpath, json, Some(config), None).map(Some);
    }
    if g.get(HF_CONFIG_KEY).is_some() || g.get(GGUF_TOKENIZER_KEY).is_none() {
        return Ok(None);
    }
    Tokenizer::from_gguf(g).map(Some)
}

/// The metadata key a GGUF file with a tokenizer has.
const GGUF_TOKENIZER_KEY: &str = "tokenizer.ggml.model";

#[cfg(test)]
mod tests {
    use super::TensorSpan;

    #[test]
    fn tensors_are_placed_in_their_layer_by_name() {
        let layer = |name: &str| TensorSpan { name: name.into(), offset: 0, len: 0, crc32c: 0 }.layer();
        assert_eq!(layer("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer("model.decoder.layers.3.self_attn.q_proj.weight"), Some(3));
        assert_eq!(layer("model.layers.0.input_layernorm.weight"), Some(0));
        for other in ["token_embd.weight", "output_norm.weight", "model.decoder.embed_positions.weight", "blk.x.y"] {
            assert_eq!(layer(other), None, "{other}");
        }
    }
}
