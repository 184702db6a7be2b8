//! A damaged layout is refused by `spike generate --layout`, not only by `spike verify` (issue 18: one flipped
//! byte of `ffn.bin` used to give other text and exit 0): bytes flipped in each file of a bundled and a split
//! layout of a generated checkpoint make both commands exit 1 with an error naming the file and the place, with
//! no panic; the unflipped layouts generate the dense engine's tokens. Also: an edited manifest cannot switch
//! the resident checks off, version 2 layouts are refused with the advice to convert again, and
//! `--no-verify-reads` (for measuring the check's cost) is what lets a damaged record through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{fail, ok, spike, synth};
use spike_flash::layout::{self, Manifest};
use spike_flash::model::gguf::GgufFile;

const PROMPT: &str = "the quick brown fox jumps";

/// `spike generate` (flash mode with `layout`, else dense on `model`): the tokens it generated.
fn generated(args: &[&std::ffi::OsStr]) -> Vec<u64> {
    let out = spike()
        .arg("generate")
        .args(args)
        .args(["-p", PROMPT, "-n", "6", "--ignore-eos", "--format", "json"])
        .output()
        .expect("run spike generate");
    let v: serde_json::Value = serde_json::from_str(&ok(out, "generate")).expect("one JSON object");
    v["generated_tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("a token id")).collect()
}

/// Asserts that `spike args...` exits with status 1 (an error, not a signal) without a panic, naming every one
/// of `needles`; returns its standard error.
fn refused(args: &[&std::ffi::OsStr], needles: &[&str]) -> String {
    let out = spike().args(args).output().expect("run spike");
    assert_eq!(out.status.code(), Some(1), "{args:?}: exit {:?}", out.status);
    let err = fail(out, &format!("{args:?}"));
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
    err
}

fn xor(path: &Path, at: u64, bit: u8) {
    let mut b = std::fs::read(path).expect("read");
    b[at as usize] ^= bit;
    std::fs::write(path, b).expect("write");
}

/// With bit `bit` of byte `at` of the layout's `file` flipped, `generate` and `verify` both refuse the layout
/// naming `file` and each of `place`; the byte is flipped back after.
fn flipped(lay: &Path, file: &str, at: u64, bit: u8, place: &[&str]) {
    let path = lay.join(file);
    xor(&path, at, bit);
    let mut needles = vec![file];
    needles.extend_from_slice(place);
    let gen = ["generate".as_ref(), "--layout".as_ref(), lay.as_os_str(), "-p".as_ref(), PROMPT.as_ref()];
    refused(&gen, &needles);
    refused(&["verify".as_ref(), lay.as_os_str()], &needles);
    xor(&path, at, bit);
}

fn manifest(lay: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(lay.join(layout::MANIFEST_FILE)).expect("read")).expect("manifest")
}

/// The manifest of `lay` as JSON, without its seal, to be edited.
fn unsealed(lay: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lay.join(layout::MANIFEST_FILE)).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove(layout::MANIFEST_CRC_KEY);
    v
}

fn convert(ck: &Path, lay: PathBuf, kind: &str) -> PathBuf {
    let out = spike().arg("convert").arg("-m").arg(ck).arg("-o").arg(&lay).args(["--layout", kind]).output();
    ok(out.expect("run spike convert"), "convert");
    lay
}

#[test]
fn flipped_bytes_in_every_file_are_refused_by_generate_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    // Seed 18: five different tokens in six, so an FFN computed from other bytes would show.
    let ck = synth(tmp.path(), "llama", 18, 128);
    let dense = generated(&["-m".as_ref(), ck.as_os_str()]);
    assert!(dense.iter().collect::<std::collections::BTreeSet<_>>().len() >= 4, "{dense:?}");
    for kind in ["bundled", "split"] {
        let lay = convert(&ck, tmp.path().join(format!("{kind}.spike")), kind);
        let out = ok(spike().arg("verify").arg(&lay).output().unwrap(), "verify");
        assert!(out.contains(": ok (") && out.contains("records"), "{out}");
        assert_eq!(generated(&["--layout".as_ref(), lay.as_os_str()]), dense, "{kind}: flash = dense");

        let m = manifest(&lay);
        let mlen = std::fs::metadata(lay.join(layout::MANIFEST_FILE)).unwrap().len();
        for at in [0, mlen / 3, mlen / 2, mlen - 3] {
            flipped(&lay, layout::MANIFEST_FILE, at, 0x02, &[]);
        }
        // resident.bin: a tensor's data, the tokenizer in its metadata, its GGUF header.
        let rpath = lay.join(layout::RESIDENT_FILE);
        let g = GgufFile::open(&rpath).unwrap();
        let name = g.tensors().iter().find(|t| t.name.contains("k_proj")).unwrap().name.clone();
        let at = g.data_offset() + g.tensor(&name).unwrap().offset + 17;
        drop(g);
        flipped(&lay, layout::RESIDENT_FILE, at, 0x10, &[&format!("tensor `{name}`")]);
        let bytes = std::fs::read(&rpath).unwrap();
        let merges = bytes.windows(8).position(|w| w == b"\"merges\"").unwrap() as u64;
        flipped(&lay, layout::RESIDENT_FILE, merges + 2, 0x20, &["outside the tensors' data", "tokenizer"]);
        flipped(&lay, layout::RESIDENT_FILE, 9, 0x01, &[]);
        // ffn.bin: the header, a record in each section of the last layer, the checksum table.
        flipped(&lay, layout::FFN_FILE, 20, 0x01, &["header"]);
        let last = m.layers.len() - 1;
        for (si, s) in m.layers[last].sections.iter().enumerate() {
            let k = 40 + 7 * si as u64;
            let offset = s.offset + k * s.record_stride;
            let place = format!(
                "layer {last} section `{}`: the record at position {k} (neuron {k}), at byte offset {offset}",
                s.name
            );
            flipped(&lay, layout::FFN_FILE, offset + s.record_bytes - 1, 0x08, &[&place]);
        }
        flipped(&lay, layout::FFN_FILE, m.ffn.checksums.offset + 3, 0x04, &["the checksum table"]);
    }
}

/// A manifest edited to list no resident tensor, and sealed again as a deliberate edit would be, does not
/// switch the resident checks off: a damaged tensor is still refused, by generate as by verify.
#[test]
fn an_edited_manifest_cannot_switch_the_resident_checks_off() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = synth(tmp.path(), "llama", 13, 128);
    let lay = convert(&ck, tmp.path().join("l.spike"), "bundled");
    let mpath = lay.join(layout::MANIFEST_FILE);
    let mut v = unsealed(&lay);
    v["resident"]["tensors"] = serde_json::json!({});
    std::fs::write(&mpath, layout::seal_manifest(&serde_json::to_vec_pretty(&v).unwrap()).unwrap()).unwrap();
    let gen = ["generate".as_ref(), "--layout".as_ref(), lay.as_os_str(), "-p".as_ref(), PROMPT.as_ref()];
    refused(&gen, &["resident.bin", "is not in the manifest's resident.tensors"]);
    refused(&["verify".as_ref(), lay.as_os_str()], &["resident.bin", "is not in the manifest's resident.tensors"]);
    // Unsealed, the same edit is refused as an edit.
    std::fs::write(&mpath, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    refused(&gen, &["manifest.json", "edited"]);
}

#[test]
fn version_2_layouts_are_refused_with_the_advice_to_convert_again() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = synth(tmp.path(), "llama", 14, 128);
    let lay = convert(&ck, tmp.path().join("old.spike"), "bundled");
    // As version 2 wrote it: no seal, no checksum table.
    let mut v = unsealed(&lay);
    v["ffn"].as_object_mut().unwrap().remove("checksums");
    v["version"] = 2.into();
    std::fs::write(lay.join(layout::MANIFEST_FILE), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let needles = ["manifest.json", "format version 2", "convert the model again with `spike convert`"];
    let gen = ["generate".as_ref(), "--layout".as_ref(), lay.as_os_str(), "-p".as_ref(), PROMPT.as_ref()];
    refused(&gen, &needles);
    refused(&["verify".as_ref(), lay.as_os_str()], &needles);
}

/// `--no-verify-reads` turns the per-record check off (to measure its cost): the damaged record it lets through
/// is the one the check refuses.
#[test]
fn no_verify_reads_lets_a_damaged_record_through() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = synth(tmp.path(), "llama", 15, 128);
    let lay = convert(&ck, tmp.path().join("l.spike"), "bundled");
    let s = manifest(&lay).layers[0].sections[0].clone();
    xor(&lay.join(layout::FFN_FILE), s.offset + 5 * s.record_stride + 9, 0x40);
    let gen = ["generate".as_ref(), "--layout".as_ref(), lay.as_os_str(), "-p".as_ref(), PROMPT.as_ref()];
    refused(&gen, &["ffn.bin", "layer 0 section `bundle`: the record at position 5 (neuron 5)"]);
    let out = spike().args(gen).args(["-n", "2", "--no-verify-reads"]).output().expect("run spike generate");
    ok(out, "generate --no-verify-reads");
    // Without a layout the flag would be ignored: refused by name, as every flash option.
    let dense = ["generate".as_ref(), "-m".as_ref(), ck.as_os_str(), "-p".as_ref(), PROMPT.as_ref()];
    let mut args = dense.to_vec();
    args.push("--no-verify-reads".as_ref());
    refused(&args, &["--no-verify-reads"]);
}
