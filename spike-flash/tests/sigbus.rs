//! A mapped file truncated while in use: the next read of a vanished page raises SIGBUS, which must end the
//! process with a message naming the file and the offset and a non-zero exit status, not kill it by signal
//! (`io::map_file`, `io::Mapping`). Each case runs in a child process (this test binary run again on one test,
//! told by `SPIKE_SIGBUS_CHILD` to play the child): it opens a file the way the engine does, truncates it, and
//! reads on. The parent checks how the child ended and what it wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spike_flash::engine::flash::{FlashConfig, FlashSession};
use spike_flash::engine::model::Model;
use spike_flash::io::{BackendKind, MAP_FAULT_EXIT_CODE};
use spike_flash::layout::{self, ConvertOptions};
use spike_flash::model::bind::Source;
use spike_flash::model::quant::DType;
use spike_flash::model::synth::{self, SynthSpec};

const CHILD: &str = "SPIKE_SIGBUS_CHILD";
const FILE: &str = "SPIKE_SIGBUS_FILE";
/// What a child prints and its status when the read it was made for did not fault.
const NO_FAULT: &str = "child: no fault";
const NO_FAULT_CODE: i32 = 99;

/// In a child: the file the parent prepared. In the parent: `None`.
fn child_file() -> Option<PathBuf> {
    std::env::var_os(CHILD).map(|_| PathBuf::from(std::env::var_os(FILE).expect("the parent names the file")))
}

/// Runs test `name` of this binary in a child told to play the child on `file`.
fn run_child(name: &str, file: &Path) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env(FILE, file)
        .output()
        .unwrap()
}

/// The child ended by exit status, with the message naming `file`; returns the offset it reported.
fn assert_named_exit(out: &Output, file: &Path) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
    assert_eq!(out.status.code(), Some(MAP_FAULT_EXIT_CODE), "{stderr}");
    let head = format!("error: {} changed size while mapped (SIGBUS at offset ", file.display());
    let at = stderr.find(&head).unwrap_or_else(|| panic!("no message naming {}: {stderr}", file.display()));
    let rest = &stderr[at + head.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(rest[digits.len()..].starts_with("): it is now 0 bytes;"), "{stderr}");
    digits.parse().unwrap()
}

/// Makes the child's own death by signal leave no core file behind.
fn no_core_dumps() {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads a valid rlimit struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) }, 0);
}

fn truncate(path: &Path) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(0).unwrap();
}

/// The child's end when nothing faulted.
fn no_fault() -> ! {
    println!("{NO_FAULT}");
    std::process::exit(NO_FAULT_CODE)
}

fn tiny_gguf(dir: &Path, seed: u64) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, synth::llama_gguf(&SynthSpec::tiny_gguf(DType::F32, seed)).unwrap()).unwrap();
    p
}

/// The child: a model opened from `path` as `spike generate --model` opens it, the file truncated, a token run.
fn run_model_after_truncation(path: &Path, weights: &Path) -> ! {
    let model = Model::from_source(&Source::open(path).unwrap()).unwrap();
    let mut state = model.try_new_state(8).unwrap();
    model.forward(&mut state, &[1, 2], false).unwrap();
    truncate(weights);
    model.forward(&mut state, &[3], false).unwrap();
    no_fault()
}

#[test]
fn a_gguf_model_truncated_while_mapped_is_an_error_naming_it() {
    if let Some(file) = child_file() {
        run_model_after_truncation(&file, &file);
    }
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(tmp.path(), 31);
    let out = run_child("a_gguf_model_truncated_while_mapped_is_an_error_naming_it", &gguf);
    assert_named_exit(&out, &gguf);
}

#[test]
fn a_safetensors_checkpoint_truncated_while_mapped_is_an_error_naming_it() {
    if let Some(file) = child_file() {
        run_model_after_truncation(file.parent().unwrap(), &file);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    synth::write_hf_checkpoint(&SynthSpec::tiny_llama(32), &dir).unwrap();
    let weights = dir.join("model.safetensors");
    let out = run_child("a_safetensors_checkpoint_truncated_while_mapped_is_an_error_naming_it", &weights);
    assert_named_exit(&out, &weights);
}

#[test]
fn a_layout_read_through_mmap_truncated_while_mapped_is_an_error_naming_ffn_bin() {
    if let Some(ffn_bin) = child_file() {
        let dir = ffn_bin.parent().unwrap();
        let config = FlashConfig { backend: BackendKind::Mmap, ..FlashConfig::new(dir) };
        let session = FlashSession::open(config, false).unwrap();
        let (mut ffn, _) = session.ffn(None).unwrap();
        let model = &session.model;
        let mut state = model.try_new_state(8).unwrap();
        model.forward_with(&mut state, &[1, 2], 1, &mut ffn).unwrap();
        truncate(&ffn_bin);
        model.forward_with(&mut state, &[3], 0, &mut ffn).unwrap();
        no_fault();
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tiny_gguf(tmp.path(), 33);
    let model = Model::from_source(&Source::open(&src).unwrap()).unwrap();
    let dir = tmp.path().join("tiny.spike");
    layout::write(&model, &src, &dir, &ConvertOptions::default()).unwrap();
    let ffn_bin = dir.join(layout::FFN_FILE);
    let out = run_child("a_layout_read_through_mmap_truncated_while_mapped_is_an_error_naming_ffn_bin", &ffn_bin);
    let offset = assert_named_exit(&out, &ffn_bin);
    // The records follow the header's aligned block.
    assert!(offset >= ConvertOptions::default().align, "offset {offset} inside the header");
}

#[test]
fn other_sigbus_signals_keep_their_default_action() {
    if let Some(file) = child_file() {
        no_core_dumps();
        let how = std::env::var("SPIKE_SIGBUS_HOW").unwrap();
        if how == "raise" {
            // The action before the handler: the default (Rust's own handler takes faults only; a signal sent
            // to the process it would let pass).
            // SAFETY: resetting a signal's action to its default.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
        // The handler is installed by the first registered mapping.
        let registered = spike_flash::io::map_file(&file).unwrap();
        assert!(registered.is_registered());
        match how.as_str() {
            "raise" => {
                // SAFETY: raising a signal at this process.
                unsafe { libc::raise(libc::SIGBUS) };
            }
            _ => {
                // A mapping the table does not hold.
                let other = file.with_extension("other");
                std::fs::write(&other, vec![1u8; 1 << 16]).unwrap();
                let f = std::fs::File::open(&other).unwrap();
                // SAFETY: this test truncates the file on purpose, to see the fault it raises.
                let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
                truncate(&other);
                std::hint::black_box(map[1 << 15]);
            }
        }
        no_fault();
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("registered.bin");
    std::fs::write(&file, [5u8; 4096]).unwrap();
    for how in ["raise", "unregistered"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["other_sigbus_signals_keep_their_default_action", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env(FILE, &file)
            .env("SPIKE_SIGBUS_HOW", how)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{how}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("changed size while mapped"), "{how}: {stderr}");
    }
}
