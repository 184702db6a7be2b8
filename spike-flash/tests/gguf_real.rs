//! Reads the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) when it is present. Marked as such:
//! without the file every test prints a `SKIP:` line and passes.
//!
//! Expected values were read once from the same file with llama.cpp's python reader (`gguf` 0.19.0:
//! `GGUFReader`, `gguf.quants.dequantize`), independently of this crate.

#![allow(clippy::unwrap_used)]

use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::DType;
use std::path::PathBuf;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$SPIKE_DEFAULT_MODEL` if set, else the fetcher's cache under `$HOME/.cache/spike/models/`.
fn default_model() -> Option<GgufFile> {
    let path = match std::env::var_os("SPIKE_DEFAULT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/spike/models").join(MODEL_FILE)
        }
    };
    if !path.is_file() {
        println!("SKIP: default model not found at {}; run spike fetch-model", path.display());
        return None;
    }
    Some(GgufFile::open(&path).unwrap())
}

#[test]
fn header_and_hyperparameters() {
    let Some(f) = default_model() else { return };
    assert_eq!(f.version(), 3);
    assert_eq!(f.file_len(), 98_362_432);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[..3], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!((types.len(), types[0]), (49152, 3));
    assert_eq!(f.metadata().count(), 33);
    assert_eq!(f.metadata().last().unwrap().0, "general.quantization_version");
}

#[test]
fn tensor_table() {
    let Some(f) = default_model() else { return };
    let count = |d: DType| f.tensors().iter().filter(|t| t.dtype == d).count();
    assert_eq!((count(DType::Q4_1), count(DType::F32), count(DType::Q8_0)), (210, 61, 1));
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dtype, DType::Q8_0);
    assert_eq!(emb.dims, [576, 49152]);
    assert_eq!((emb.row_len(), emb.rows()), (576, 49152));
    assert_eq!(emb.n_bytes, 30_081_024);
    assert_eq!(f.data_offset() + emb.offset, 1_785_664);
    let up = f.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!((up.dtype, up.dims.as_slice()), (DType::Q4_1, &[576u64, 1536][..]));
    let down = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(down.dims, [1536, 576]);
    assert_eq!(f.data_offset() + down.offset, 31_868_992);
    assert!(f.tensor("blk.30.ffn_up.weight").is_err());
}

#[test]
fn tensor_values_match_python_gguf() {
    let Some(f) = default_model() else { return };
    let norm = f.tensor_f32("blk.0.ffn_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert_eq!(norm[..6], [0.09375, 0.10546875, 0.10205078, 0.07470703, 0.10644531, 0.099609375]);
    assert_eq!(norm.iter().map(|&v| f64::from(v)).sum::<f64>(), 61.69384765625);

    let emb = f.tensor_f32("token_embd.weight").unwrap();
    assert_eq!(emb[..4], [-0.106544495, 0.032978058, 0.0481987, -0.022830963]);
    assert_eq!(emb[576], -0.023803711);
    // numpy sums pairwise and we sum in order, so the totals agree to rounding only.
    let sum: f64 = emb.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - -15353.04449415207).abs() < 1e-6, "{sum}");

    let up = f.tensor_f32("blk.0.ffn_up.weight").unwrap();
    assert_eq!(up[..4], [-0.092285156, 0.10668945, 0.2559204, -0.092285156]);
    assert_eq!(up[1536 * 576 - 1], -0.01373291);
    let sum: f64 = up.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - -149.01732635498047).abs() < 1e-7, "{sum}");
}
