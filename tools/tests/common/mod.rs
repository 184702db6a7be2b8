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

/// A random checkpoint of 2 layers, `d_model` 64 and `ffn` neurons: `arch` llama (SiLU) or opt (ReLU).
pub fn synth(dir: &Path, arch: &str, seed: u32, ffn: usize) -> PathBuf {
    let ck = dir.join(format!("{arch}-{seed}-{ffn}"));
    let out = spike()
        .args(["synth", "--arch", arch, "--layers", "2", "--d-model", "64", "--ffn", &ffn.to_string()])
        .args(["--heads", "4", "--vocab", "320", "--dtype", "f32", "--seed", &seed.to_string(), "-o"])
        .arg(&ck)
        .output()
        .expect("run spike synth");
    ok(out, "synth");
    ck
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
