//! The `spike` binary end to end on checkpoints the tests generate.

use std::process::Command;

fn spike() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spike"))
}

#[test]
fn generate_and_perplexity_accept_a_checkpoint_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = dir.path().join("opt");
    let out = spike()
        .args(["synth", "--arch", "opt", "--layers", "2", "--d-model", "64", "--ffn", "256", "--heads", "4"])
        .args(["--vocab", "320", "--dtype", "f32", "--seed", "5", "-o"])
        .arg(&ck)
        .output()
        .expect("run spike synth");
    assert!(out.status.success(), "synth: {}", String::from_utf8_lossy(&out.stderr));

    let out = spike()
        .arg("generate")
        .arg("-m")
        .arg(&ck)
        .args(["-p", "hello", "-n", "5", "--format", "json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "generate: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["generated_tokens"].as_array().map(Vec::len), Some(5));
    assert!(v["prompt_tokens"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(v["decode_tokens_per_s"].as_f64().is_some_and(|x| x > 0.0));

    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(20)).expect("write");
    let json = dir.path().join("ppl.json");
    let out = spike()
        .arg("perplexity")
        .arg("-m")
        .arg(&ck)
        .arg("-f")
        .arg(&text)
        .args(["-c", "32", "--json"])
        .arg(&json)
        .output()
        .expect("run");
    assert!(out.status.success(), "perplexity: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let ppl = v["result"]["ppl"].as_f64().expect("ppl");
    // A random 320-token model: perplexity is finite and near the vocabulary size, not 1.
    assert!(ppl.is_finite() && ppl > 10.0, "{ppl}");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let out = spike().args(["generate", "-m", "/nonexistent/model.gguf", "-p", "x"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn convert_then_verify_a_tiny_model() {
    use spike_flash::model::{quant::DType, synth};
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny.gguf");
    let bytes = synth::llama_gguf(&synth::SynthSpec::tiny_gguf(DType::Q4_1, 3)).expect("synth");
    std::fs::write(&model, bytes).expect("write");
    let out_dir = dir.path().join("tiny.spike");
    let out = spike()
        .arg("convert")
        .arg("-m")
        .arg(&model)
        .arg("-o")
        .arg(&out_dir)
        .args(["--layout", "split", "--dtype", "q8_0", "--column-dtype", "f16", "--align", "512"])
        .output()
        .expect("run spike convert");
    assert!(out.status.success(), "convert: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tiny.spike") && text.contains("read amplification"), "{text}");
    assert!(text.contains("rows q8_0, columns f16"), "{text}");
    let out = spike().arg("verify").arg(&out_dir).output().expect("run spike verify");
    assert!(out.status.success(), "verify: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    // The last byte of the last section (the padding before the checksum table that ends the file): only the
    // section's crc32c covers it.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).expect("read")).expect("manifest");
    let table = manifest["ffn"]["checksums"]["offset"].as_u64().expect("the checksum table's offset") as usize;
    let mut ffn = std::fs::read(out_dir.join("ffn.bin")).expect("read");
    ffn[table - 1] ^= 1;
    std::fs::write(out_dir.join("ffn.bin"), ffn).expect("write");
    let out = spike().arg("verify").arg(&out_dir).output().expect("run spike verify");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("layer 1 section `down`"), "{err}");
}
