//! `spike synth` end to end: the written directory opens as a Hugging Face checkpoint with the asked shapes.

use std::process::Command;

use spike_flash::model::config::{Activation, Arch};
use spike_flash::model::quant::DType;
use spike_flash::model::safetensors::HfCheckpoint;

fn spike() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spike"))
}

#[test]
fn synth_writes_a_checkpoint_that_opens() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = spike()
        .args(["--threads", "1", "synth", "--arch", "llama", "--layers", "3", "--d-model", "32", "--ffn", "96"])
        .args(["--heads", "4", "--kv-heads", "2", "--vocab", "300", "--dtype", "bf16", "--seed", "5", "--relu"])
        .args(["--shards", "2", "-o"])
        .arg(dir.path())
        .output()
        .expect("run spike");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("synthetic Llama checkpoint (random weights, seed 5)"), "{stdout}");
    let ck = HfCheckpoint::open(dir.path()).expect("opens");
    let c = ck.config();
    assert_eq!((c.arch, c.n_layers, c.d_model, c.d_ffn, c.n_heads, c.n_kv_heads), (Arch::Llama, 3, 32, 96, 4, 2));
    assert_eq!((c.vocab_size, c.activation), (300, Activation::Relu));
    assert_eq!(ck.files().count(), 2);
    assert_eq!(ck.tensor("model.layers.2.mlp.down_proj.weight").expect("down").dtype, DType::BF16);
    assert!(ck.tokenizer().expect("tokenizer").encode("hi").expect("encode").len() >= 2);
}

#[test]
fn synth_refuses_bad_shapes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = spike()
        .args(["synth", "--arch", "opt", "--layers", "1", "--d-model", "30", "--ffn", "8", "--heads", "4"])
        .args(["--vocab", "300", "-o"])
        .arg(dir.path())
        .output()
        .expect("run spike");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not divisible by 4 heads"), "{stderr}");
    let out = spike()
        .args(["synth", "--arch", "opt", "--layers", "1", "--d-model", "32", "--ffn", "8", "--heads", "4"])
        .args(["--vocab", "300", "--relu", "-o"])
        .arg(dir.path())
        .output()
        .expect("run spike");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--relu is for Llama"));
}
