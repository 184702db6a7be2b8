//! A model or layout file truncated while `spike generate` maps it: the next read of a vanished page raises
//! SIGBUS, which must end the run with an error naming the file (exit status 1), not a silent death by signal
//! (issue: "a model file truncated while generate maps it ends the process with SIGBUS and no message").
//!
//! Each run generates many tokens from a model large enough that a token takes milliseconds; the file is
//! truncated once the first generated text has arrived (the model is mapped and decoding), so every later token
//! reads vanished pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use spike_flash::model::quant::DType;
use spike_flash::model::synth::llama_hf_to_gguf;

mod common;

use common::{ok, spike, synth_into, Shape};

/// Seed of the checkpoint.
const SEED: u32 = 0x5b;
/// Tokens generated: many times what is printed before the truncation.
const TOKENS: &str = "1500";

/// A Llama checkpoint of 8 layers, d_model 256, FFN 1024 (f32, about 40 MB): milliseconds per token.
fn checkpoint(dir: &Path) -> PathBuf {
    let shape = Shape { arch: "llama", layers: 8, d_model: 256, ffn: 1024, heads: 4 };
    synth_into(&shape, SEED, &dir.join("ck"))
}

/// Runs `generate` with `args`, truncates `victim` once the first text has arrived, and checks the end.
fn truncated_while_generating(args: &[&std::ffi::OsStr], victim: &Path) {
    let mut child = spike()
        .args(["generate", "-p", "the quick brown fox", "-n", TOKENS, "--ignore-eos"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("generate printed text before ending");
    std::fs::OpenOptions::new().write(true).open(victim).unwrap().set_len(0).unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!("error: {} changed size while mapped (SIGBUS at offset ", victim.display());
    assert!(stderr.contains(&want), "{want} not in: {stderr}");
    assert!(stderr.contains("it is now 0 bytes"), "{stderr}");
}

#[test]
fn a_safetensors_model_truncated_while_generating_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(tmp.path());
    truncated_while_generating(&["-m".as_ref(), ck.as_os_str()], &ck.join("model.safetensors"));
}

#[test]
fn a_gguf_model_truncated_while_generating_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(tmp.path());
    let gguf = tmp.path().join("m.gguf");
    llama_hf_to_gguf(&ck, &gguf, DType::F32).unwrap();
    truncated_while_generating(&["-m".as_ref(), gguf.as_os_str()], &gguf);
}

#[test]
fn a_layout_truncated_while_generating_through_mmap_is_an_error_naming_ffn_bin() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(tmp.path());
    let lay = tmp.path().join("m.spike");
    let out = Command::new(env!("CARGO_BIN_EXE_spike")).arg("convert").arg("-m").arg(&ck).arg("-o").arg(&lay).output();
    ok(out.unwrap(), "convert");
    let args = ["--layout".as_ref(), lay.as_os_str(), "--backend".as_ref(), "mmap".as_ref()];
    truncated_while_generating(&args, &lay.join("ffn.bin"));
}
