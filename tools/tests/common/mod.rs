//! Helpers the command-line tests share: running `spike`, checking its exit, and the small checkpoints and
//! texts they generate. Each test binary uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `spike` binary, on 2 compute threads.
pub fn spike() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spike"));
    c.args(["--threads", "2"]);
    c
}

/// Asserts that the command succeeded; its standard output.
pub fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that the command failed; its standard error.
pub fn fail(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The shape of a random f32 checkpoint (vocabulary 320) made by `spike synth`.
pub struct Shape {
    pub arch: &'static str,
    pub layers: usize,
    pub d_model: usize,
    pub ffn: usize,
    pub heads: usize,
}

/// `spike synth` of a random f32 checkpoint of `shape` with `seed` into `out`, not yet run.
pub fn synth_cmd(shape: &Shape, seed: u32, out: &Path) -> Command {
    let mut c = spike();
    c.args(["synth", "--arch", shape.arch])
        .args(["--layers", &shape.layers.to_string(), "--d-model", &shape.d_model.to_string()])
        .args(["--ffn", &shape.ffn.to_string(), "--heads", &shape.heads.to_string()])
        .args(["--vocab", "320", "--dtype", "f32", "--seed", &seed.to_string(), "-o"])
        .arg(out);
    c
}

/// Runs [`synth_cmd`] and asserts it succeeded; the checkpoint `out`.
pub fn synth_into(shape: &Shape, seed: u32, out: &Path) -> PathBuf {
    ok(synth_cmd(shape, seed, out).output().expect("run spike synth"), "synth");
    out.to_path_buf()
}

/// A random checkpoint of 2 layers, `d_model` 64 and `ffn` neurons: `arch` llama (SiLU) or opt (ReLU).
pub fn synth(dir: &Path, arch: &'static str, seed: u32, ffn: usize) -> PathBuf {
    let shape = Shape { arch, layers: 2, d_model: 64, ffn, heads: 4 };
    synth_into(&shape, seed, &dir.join(format!("{arch}-{seed}-{ffn}")))
}

/// A corpus of `docs` sections separated by two blank lines, written to `dir/corpus.txt`.
pub fn corpus(dir: &Path, docs: usize) -> PathBuf {
    let mut text = String::new();
    for d in 0..docs {
        for p in 0..2 {
            for w in 0..25 {
                text.push_str(WORDS[(d * 7 + p * 3 + w * 5) % WORDS.len()]);
                text.push(' ');
            }
            text.push_str(".\n\n");
        }
        text.push('\n');
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).expect("write corpus");
    p
}

/// The words of [`corpus`].
pub const WORDS: [&str; 12] =
    ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far"];

/// A small Llama checkpoint (`synth` seed `seed`, FFN 256) and a corpus of 12 documents in `dir`, traced over
/// `tokens` tokens (context 48) and calibrated for 60% sparsity: (checkpoint, corpus, thresholds file).
pub fn calibrated_llama(dir: &Path, seed: u32, tokens: usize) -> (PathBuf, PathBuf, PathBuf) {
    let ck = synth(dir, "llama", seed, 256);
    let text = corpus(dir, 12);
    let trace = dir.join("t.trace");
    let out = spike()
        .arg("trace")
        .arg("-m")
        .arg(&ck)
        .arg("-f")
        .arg(&text)
        .args(["--tokens", &tokens.to_string(), "--ctx", "48", "-o"])
        .arg(&trace)
        .output();
    ok(out.expect("run trace"), "trace");
    let thr = dir.join("thr.json");
    let out = spike().arg("calibrate").arg(&trace).args(["--sparsity", "0.6", "-o"]).arg(&thr).output();
    ok(out.expect("run calibrate"), "calibrate");
    (ck, text, thr)
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read json")).expect("parse json")
}
