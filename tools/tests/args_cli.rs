//! Sizes and combinations from the command line are checked before anything is allocated: each bad argument is
//! a clear error naming the flag, with a non-zero exit and no panic, abort or signal (issue: sizes from
//! arguments were never bounded). The models are tiny synthetic checkpoints made by `spike synth`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus, fail, spike, synth};

/// Asserts that `spike args...` exits with status 1 (an error, not a signal) and that its message names
/// `needle`.
fn refused(args: &[&str], needle: &str) {
    let out = spike().args(args).output().expect("run spike");
    assert_eq!(out.status.code(), Some(1), "{args:?}: exit {:?}", out.status);
    let err = fail(out, &format!("{args:?}"));
    assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn sizes_beyond_the_context_are_refused_by_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = synth(tmp.path(), "llama", 3, 128);
    let m = ck.to_str().unwrap();
    // A huge -n used to size a KV cache of hundreds of GB up front and abort.
    refused(&["generate", "-m", m, "-p", "the fox", "-n", "10000000"], "-n 10000000");
    refused(&["generate", "-m", m, "-p", "the fox", "-n", "10000000"], "longer than the model's context");
    refused(&["bench", "-m", m, "--prompt", "100000000", "--gen", "1", "--reps", "1"], "--prompt 100000000");
    let text = corpus(tmp.path(), 4);
    let t = text.to_str().unwrap();
    refused(&["perplexity", "-m", m, "-f", t, "-c", "0"], "-c/--ctx 0");
    refused(&["perplexity", "-m", m, "-f", t, "-c", "100000000"], "-c/--ctx 100000000");
}

#[test]
fn flash_options_without_a_layout_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = synth(tmp.path(), "llama", 4, 128);
    let m = ck.to_str().unwrap();
    refused(&["generate", "-m", m, "-p", "the fox", "-n", "2", "--budget", "65%"], "--budget");
    refused(&["generate", "-m", m, "-p", "the fox", "-n", "2", "--cache", "window:5"], "--cache");
    refused(&["bench", "-m", m, "--prompt", "4", "--gen", "2", "--reps", "1", "--overlap"], "--overlap");
    let text = corpus(tmp.path(), 4);
    let t = text.to_str().unwrap();
    refused(&["perplexity", "-m", m, "-f", t, "-c", "64", "--max-merge", "64K"], "--max-merge");
}

#[test]
fn dense_options_with_a_layout_are_refused() {
    // Checked before the layout is opened.
    refused(&["bench", "--layout", "none.spike", "--memory-bound", "--csv", "b.csv"], "--memory-bound");
}

#[test]
fn fractions_and_buffers_out_of_range_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.trace");
    let tr = missing.to_str().unwrap();
    // Checked before the trace is opened.
    refused(&["calibrate", tr, "--sparsity", "0.5", "--valid-fraction", "NaN", "-o", "t.json"], "--valid-fraction NaN");
    refused(&["trace-stats", tr, "--valid-fraction", "1.5", "-o", "out"], "--valid-fraction 1.5");
    let file = tmp.path().join("data.bin");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
    refused(
        &["io-bench", "--file", file.to_str().unwrap(), "--backend", "pool", "--bs", "4096", "--buffer", "1"],
        "--buffer 1",
    );
}

#[test]
fn llama_cpp_short_flags_and_help_headings() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = synth(tmp.path(), "llama", 3, 128);
    let m = ck.to_str().unwrap();
    let prompt = tmp.path().join("prompt.txt");
    std::fs::write(&prompt, "the fox").unwrap();
    let p = prompt.to_str().unwrap();
    // llama.cpp's -t (threads) and -f (a prompt file).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spike"))
        .args(["-t", "1", "generate", "-m", m, "-f", p, "-n", "2", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt"], "the fox");
    assert_eq!(v["threads"], 1);
    // Both is a usage error (clap's exit status 2) naming the flags.
    let out = spike().args(["generate", "-m", m, "-p", "x", "-f", p]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--file") && err.contains("--prompt"), "{err}");
    // llama-bench's -p, -n and -r.
    let out = spike().args(["bench", "-m", m, "-p", "8", "-n", "4", "-r", "1"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("pp8") && text.contains("tg4"), "{text}");
    // Flash-only options under their own heading, after the dense ones.
    for cmd in ["bench", "generate"] {
        let help = String::from_utf8(spike().args([cmd, "--help"]).output().unwrap().stdout).unwrap();
        let heading = help.find("Flash mode (with --layout):").unwrap_or_else(|| panic!("{cmd}: no heading\n{help}"));
        assert!(help.find("--layout").unwrap() > heading, "{cmd}:\n{help}");
        assert!(help.find("--model").unwrap() < heading, "{cmd}:\n{help}");
    }
}
