//! Malformed Hugging Face checkpoints, each built byte by byte: every case is an error that names the file and
//! says what is wrong.

use std::path::Path;

use serde_json::{json, Value};
use spike_flash::model::config::ModelConfig;
use spike_flash::model::safetensors::{expected_tensors, HfCheckpoint, INDEX_FILE, SINGLE_FILE};
use spike_flash::Error;

/// A small OPT: hidden 64, FFN 128, 4 heads, one layer, vocabulary 16, 8 positions.
fn config() -> Value {
    json!({"model_type": "opt", "hidden_size": 64, "ffn_dim": 128, "num_attention_heads": 4,
           "num_hidden_layers": 1, "vocab_size": 16, "max_position_embeddings": 8,
           "do_layer_norm_before": true, "word_embed_proj_dim": 64, "activation_function": "relu"})
}

/// (name, dtype, shape) of every tensor the small OPT needs, all F32.
fn tensors() -> Vec<(String, String, Vec<usize>)> {
    let cfg = ModelConfig::from_hf_config(Path::new("config.json"), &config()).expect("valid config");
    expected_tensors(&cfg).into_iter().filter(|t| t.required).map(|t| (t.name, "F32".to_string(), t.shape)).collect()
}

fn dtype_size(d: &str) -> usize {
    match d {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    }
}

/// The bytes of a safetensors file from a header text and a data section, header padded to 8 bytes.
fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

/// A well-formed safetensors file holding `list`, tensors back to back, values 0.5.
fn st_file(list: &[(String, String, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut at = 0usize;
    for (name, dtype, shape) in list {
        let n = shape.iter().product::<usize>() * dtype_size(dtype);
        header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + n]}));
        at += n;
    }
    let data: Vec<u8> = (0..at / 4).flat_map(|_| 0.5f32.to_le_bytes()).chain(std::iter::repeat_n(0, at % 4)).collect();
    file_bytes(&Value::Object(header).to_string(), &data)
}

/// A checkpoint directory with `config` and one `model.safetensors` of `bytes`.
fn checkpoint(config: &str, bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("config.json"), config).expect("config");
    std::fs::write(dir.path().join(SINGLE_FILE), bytes).expect("weights");
    dir
}

/// Opens `dir`, expecting an error whose message names `file` and contains every one of `needles`.
fn open_err(dir: &Path, file: &str, needles: &[&str]) -> Error {
    let err = HfCheckpoint::open(dir).expect_err("malformed checkpoint must not open");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&dir.join(file).display().to_string()), "message should name {file}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message should say `{n}`: {msg}");
    }
    err
}

#[test]
fn the_well_formed_base_case_opens() {
    let dir = checkpoint(&config().to_string(), &st_file(&tensors()));
    let ck = HfCheckpoint::open(dir.path()).expect("opens");
    assert_eq!(ck.tensor_f32("model.decoder.layers.0.fc1.bias").expect("bias"), vec![0.5; 128]);
}

#[test]
fn header_length_past_the_end_of_the_file() {
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    let dir = checkpoint(&config().to_string(), &bytes);
    let err = open_err(dir.path(), SINGLE_FILE, &["header length 1000 runs past the end of the file (16 bytes"]);
    assert!(matches!(err, Error::Safetensors { .. }));
}

#[test]
fn file_shorter_than_the_header_length() {
    let dir = checkpoint(&config().to_string(), &[1, 0, 0]);
    open_err(dir.path(), SINGLE_FILE, &["3 bytes, shorter than the 8-byte header length"]);
}

#[test]
fn huge_header_length() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    let dir = checkpoint(&config().to_string(), &bytes);
    open_err(dir.path(), SINGLE_FILE, &["exceeds the 100000000-byte limit"]);
}

#[test]
fn header_is_not_json() {
    let dir = checkpoint(&config().to_string(), &file_bytes(r#"{"a": {"dtype": "F32", "#, &[]));
    open_err(dir.path(), SINGLE_FILE, &["header is not valid JSON", "EOF"]);
}

#[test]
fn header_is_not_utf8() {
    let dir = checkpoint(&config().to_string(), &file_bytes("{\"\u{e9}\": 1}", &[]));
    let mut bytes = std::fs::read(dir.path().join(SINGLE_FILE)).expect("read");
    bytes[10] = 0xFF;
    std::fs::write(dir.path().join(SINGLE_FILE), &bytes).expect("write");
    open_err(dir.path(), SINGLE_FILE, &["header is not UTF-8"]);
}

#[test]
fn dtype_and_shape_disagree_with_the_byte_length() {
    let header = r#"{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}"#;
    let dir = checkpoint(&config().to_string(), &file_bytes(header, &[0; 20]));
    open_err(dir.path(), SINGLE_FILE, &["tensor `w`", "F32 and shape [2, 3] need 24 bytes", "[0, 20] hold 20"]);
}

#[test]
fn offsets_leave_a_gap() {
    let header = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}"#;
    let dir = checkpoint(&config().to_string(), &file_bytes(header, &[0; 20]));
    open_err(dir.path(), SINGLE_FILE, &["tensor `b`: data starts at 12, but the previous tensor ends at 8"]);
}

#[test]
fn trailing_bytes_after_the_last_tensor() {
    let header = r#"{"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}"#;
    let dir = checkpoint(&config().to_string(), &file_bytes(header, &[0; 12]));
    open_err(dir.path(), SINGLE_FILE, &["cover 8 bytes of data, but the file holds 12"]);
}

#[test]
fn unknown_dtype_name() {
    let header = r#"{"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 2]}}"#;
    let dir = checkpoint(&config().to_string(), &file_bytes(header, &[0; 2]));
    open_err(dir.path(), SINGLE_FILE, &["tensor `a`: unknown or missing dtype \"Q4\""]);
}

#[test]
fn missing_tensor() {
    let list: Vec<_> = tensors().into_iter().filter(|t| t.0 != "model.decoder.layers.0.fc2.bias").collect();
    let dir = checkpoint(&config().to_string(), &st_file(&list));
    let err = open_err(dir.path(), SINGLE_FILE, &["model.decoder.layers.0.fc2.bias", "missing", "[64]"]);
    assert!(matches!(err, Error::Tensor { .. }));
}

#[test]
fn config_and_tensor_shape_disagree() {
    // config.json says hidden_size 64, but q_proj is 48 x 64.
    let q = "model.decoder.layers.0.self_attn.q_proj.weight";
    let list: Vec<_> =
        tensors().into_iter().map(|(n, d, s)| if n == q { (n, d, vec![48, 64]) } else { (n, d, s) }).collect();
    let dir = checkpoint(&config().to_string(), &st_file(&list));
    let err = open_err(
        dir.path(),
        SINGLE_FILE,
        &[q, "shape [48, 64], but config.json implies [64, 64] = [hidden_size, hidden_size] (hidden_size 64"],
    );
    assert!(matches!(err, Error::Tensor { .. }));
}

#[test]
fn vocabulary_disagrees_with_the_embedding() {
    let mut cfg = config();
    cfg["vocab_size"] = json!(17);
    let dir = checkpoint(&cfg.to_string(), &st_file(&tensors()));
    open_err(dir.path(), SINGLE_FILE, &["model.decoder.embed_tokens.weight", "shape [16, 64]", "[17, 64]"]);
}

#[test]
fn unsupported_dtype() {
    let q = "model.decoder.layers.0.self_attn.q_proj.weight";
    let list: Vec<_> =
        tensors().into_iter().map(|(n, d, s)| if n == q { (n, "I32".to_string(), s) } else { (n, d, s) }).collect();
    let dir = checkpoint(&config().to_string(), &st_file(&list));
    let err = open_err(dir.path(), SINGLE_FILE, &[q, "dtype I32 (supported: F32, F16, BF16)"]);
    assert!(matches!(err, Error::Unsupported { .. }));

    // A tensor the model does not use may have any dtype, but reading it is refused.
    let mut list = tensors();
    list.push(("model.decoder.position_ids".into(), "I64".into(), vec![8]));
    let dir = checkpoint(&config().to_string(), &st_file(&list));
    let ck = HfCheckpoint::open(dir.path()).expect("unused I64 tensor is fine");
    let err = ck.tensor("model.decoder.position_ids").expect_err("I64 is not readable");
    assert!(err.to_string().contains("dtype I64"), "{err}");
}

#[test]
fn config_is_not_json() {
    let dir = checkpoint("{\"model_type\": \"opt\",\n  \"hidden_size\": 64,,\n}", &st_file(&tensors()));
    let err = open_err(dir.path(), "config.json", &["invalid JSON at line 2, column 21"]);
    assert!(matches!(err, Error::Json { line: 2, column: 21, .. }), "{err:?}");
}

#[test]
fn config_misses_a_required_key() {
    let mut cfg = config();
    cfg.as_object_mut().expect("object").remove("num_hidden_layers");
    let dir = checkpoint(&cfg.to_string(), &st_file(&tensors()));
    let err = open_err(dir.path(), "config.json", &["missing required metadata key `num_hidden_layers`"]);
    assert!(matches!(err, Error::MissingKey { .. }));
}

#[test]
fn config_has_a_key_of_the_wrong_type() {
    let mut cfg = config();
    cfg["do_layer_norm_before"] = json!("yes");
    let dir = checkpoint(&cfg.to_string(), &st_file(&tensors()));
    open_err(dir.path(), "config.json", &["`do_layer_norm_before`: expected true or false, found \"yes\""]);
}

#[test]
fn config_of_an_unknown_model_type() {
    let mut cfg = config();
    cfg["model_type"] = json!("bloom");
    let dir = checkpoint(&cfg.to_string(), &st_file(&tensors()));
    let err = open_err(dir.path(), "config.json", &["model_type `bloom`"]);
    assert!(matches!(err, Error::Unsupported { .. }));
}

#[test]
fn no_config_and_no_weights() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let err = HfCheckpoint::open(dir.path()).expect_err("empty directory");
    assert!(err.to_string().contains("config.json"), "{err}");
    std::fs::write(dir.path().join("config.json"), config().to_string()).expect("config");
    let err = HfCheckpoint::open(dir.path()).expect_err("no weights");
    assert!(err.to_string().contains("neither model.safetensors nor model.safetensors.index.json"), "{err}");
}

/// A two-shard checkpoint of the small OPT: the first three tensors in shard 1, the rest in shard 2.
fn sharded() -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("config.json"), config().to_string()).expect("config");
    let list = tensors();
    let (a, b) = list.split_at(3);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    std::fs::write(dir.path().join(names[0]), st_file(a)).expect("shard 1");
    std::fs::write(dir.path().join(names[1]), st_file(b)).expect("shard 2");
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        for (n, _, _) in part.iter() {
            map.insert(n.clone(), json!(names[i]));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).expect("index");
    (dir, index)
}

#[test]
fn the_well_formed_sharded_case_opens() {
    let (dir, _) = sharded();
    let ck = HfCheckpoint::open(dir.path()).expect("opens");
    assert_eq!(ck.files().count(), 2);
    assert_eq!(ck.names().count(), tensors().len());
}

#[test]
fn index_points_to_a_missing_shard() {
    let (dir, _) = sharded();
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).expect("remove");
    let err = open_err(dir.path(), INDEX_FILE, &["shard `model-00002-of-00002.safetensors`", "cannot be opened"]);
    assert!(matches!(err, Error::Safetensors { .. }));
}

#[test]
fn index_names_a_shard_that_lacks_the_tensor() {
    let (dir, mut index) = sharded();
    let name = tensors()[0].0.clone();
    index["weight_map"][&name] = json!("model-00002-of-00002.safetensors");
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).expect("index");
    open_err(
        dir.path(),
        INDEX_FILE,
        &[&format!("puts tensor `{name}` in shard `model-00002-of-00002.safetensors`, which does not contain it")],
    );
}

#[test]
fn index_shard_outside_the_directory() {
    let (dir, mut index) = sharded();
    let name = tensors()[0].0.clone();
    index["weight_map"][&name] = json!("../model-00001-of-00002.safetensors");
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).expect("index");
    open_err(dir.path(), INDEX_FILE, &["is not a plain file name"]);
}

#[test]
fn index_without_weight_map_or_not_json() {
    let (dir, _) = sharded();
    std::fs::write(dir.path().join(INDEX_FILE), r#"{"metadata": {}}"#).expect("index");
    open_err(dir.path(), INDEX_FILE, &["`weight_map`"]);
    std::fs::write(dir.path().join(INDEX_FILE), r#"{"weight_map": {"a": 3}}"#).expect("index");
    open_err(dir.path(), INDEX_FILE, &["weight_map.a", "a shard file name"]);
    std::fs::write(dir.path().join(INDEX_FILE), "{\"weight_map\": ").expect("index");
    open_err(dir.path(), INDEX_FILE, &["invalid JSON at line 1"]);
}

#[test]
fn a_malformed_shard_is_named() {
    let (dir, _) = sharded();
    let shard = "model-00001-of-00002.safetensors";
    let mut bytes = std::fs::read(dir.path().join(shard)).expect("read");
    bytes.truncate(bytes.len() - 4);
    std::fs::write(dir.path().join(shard), &bytes).expect("write");
    open_err(dir.path(), shard, &["malformed safetensors checkpoint", "the file holds"]);
}
