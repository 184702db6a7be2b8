//! Damage anywhere in a layout is caught when a model runs from it, not only by `verify` (issue 18): bytes
//! flipped in every file of a bundled and a split layout (the manifest, `resident.bin`'s header, metadata and
//! tensors, `ffn.bin`'s header, a record in each section, the checksum table) make loading and generating, the
//! way `spike generate --layout` does, fail with an error naming the file and the place, never a panic or a
//! huge allocation; `verify` refuses the same layouts. Unflipped, each layout generates the dense engine's
//! tokens. The model is a tiny Llama checkpoint with a tokenizer, of a fixed seed; its f32 records hold the
//! checkpoint's exact values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use spike_flash::engine::flash::{FlashConfig, FlashOptions, FlashSession};
use spike_flash::engine::model::Model;
use spike_flash::engine::sampler::argmax;
use spike_flash::io::{BackendKind, IoConfig};
use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind, Manifest};
use spike_flash::model::bind::Source;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::synth::{self, SynthSpec};
use spike_flash::Error;

#[global_allocator]
static ALLOC: spike_flash::io::CappedAlloc<{ 256 << 20 }> = spike_flash::io::CappedAlloc;

/// Seed of the tiny checkpoint: one whose greedy continuation of `PROMPT` is six different tokens, so that an
/// FFN computed from other bytes would show in them.
const SEED_MODEL: u64 = 1;
const PROMPT: [u32; 6] = [5, 17, 42, 99, 7, 250];
const GEN: usize = 6;

/// Greedy tokens after `PROMPT`: each step is the argmax of the logits of the last token.
fn greedy(mut step: impl FnMut(&[u32]) -> spike_flash::Result<Vec<f32>>) -> spike_flash::Result<Vec<u32>> {
    let mut logits = step(&PROMPT)?;
    let mut out = Vec::new();
    for _ in 0..GEN {
        let next = argmax(&logits);
        out.push(next);
        logits = step(&[next])?;
    }
    Ok(out)
}

fn dense_tokens(ck: &Path) -> Vec<u32> {
    let model = Model::from_source(&Source::open(ck).unwrap()).unwrap();
    let mut state = model.new_state(PROMPT.len() + GEN + 1);
    greedy(|t| model.forward(&mut state, t, false)).unwrap()
}

/// What `spike generate --layout` does: open a flash session (every check of a valid layout), read every
/// neuron of every layer per token through `backend`, decode greedily. A panic is returned as an error
/// starting with `PANIC`.
fn flash_tokens(dir: &Path, backend: BackendKind, overlap: bool) -> Result<Vec<u32>, String> {
    flash_tokens_with(FlashConfig { backend, overlap, ..FlashConfig::new(dir) })
}

fn flash_tokens_with(config: FlashConfig) -> Result<Vec<u32>, String> {
    let run = || -> spike_flash::Result<Vec<u32>> {
        let session = FlashSession::open(config, true)?;
        let (mut ffn, _) = session.ffn(None)?;
        let model = &session.model;
        let mut state = model.try_new_state(PROMPT.len() + GEN + 1)?;
        greedy(|t| model.forward_with(&mut state, t, t.len() - 1, &mut ffn))
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => Err(format!(
            "PANIC: {:?}",
            p.downcast_ref::<String>().map(String::as_str).or(p.downcast_ref::<&str>().copied())
        )),
    }
}

/// `spike verify`'s verdict.
fn verified(dir: &Path) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| Layout::open(dir).and_then(|l| l.verify()))) {
        Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
        Err(_) => Err("PANIC in verify".into()),
    }
}

fn xor(path: &Path, at: u64, bit: u8) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= bit;
    fs::write(path, b).unwrap();
}

/// Flips `bit` of byte `at` of `file` in the layout `dir`, runs it (with `backend`) and verifies it, flips the
/// byte back, and returns the run's error; fails the test when the run or `verify` succeeds, or either
/// panics, or the error does not name `file`.
fn damaged(dir: &Path, file: &str, at: u64, bit: u8, backend: BackendKind) -> String {
    let path = dir.join(file);
    xor(&path, at, bit);
    let (run, verify) = (flash_tokens(dir, backend, false), verified(dir));
    xor(&path, at, bit);
    let what = format!("{file} byte {at} bit {bit:#x}");
    let e = run.err().unwrap_or_else(|| panic!("{what}: generated without an error"));
    let v = verify.err().unwrap_or_else(|| panic!("{what}: verify passed"));
    assert!(!e.contains("PANIC") && !v.contains("PANIC"), "{what}: {e} / {v}");
    assert!(e.contains(file), "{what}: the error does not name {file}: {e}");
    e
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&fs::read(dir.join(layout::MANIFEST_FILE)).unwrap()).unwrap()
}

/// A tiny Llama checkpoint and its bundled (neurons stored in reverse order) and split layouts.
fn layouts(tmp: &Path) -> (PathBuf, Vec<PathBuf>) {
    let ck = tmp.join("ck");
    synth::write_hf_checkpoint(&SynthSpec::tiny_llama(SEED_MODEL), &ck).unwrap();
    let model = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let (n, f) = (model.config().n_layers, model.config().d_ffn as u32);
    let reversed: Vec<Vec<u32>> = vec![(0..f).rev().collect(); n];
    let mut dirs = Vec::new();
    for (kind, order) in [(LayoutKind::Bundled, Some(reversed)), (LayoutKind::Split, None)] {
        let dir = tmp.join(format!("{kind:?}.spike"));
        let opts = ConvertOptions { kind, align: 512, order, ..Default::default() };
        layout::write(&model, &ck, &dir, &opts).unwrap();
        dirs.push(dir);
    }
    (ck, dirs)
}

/// The checkpoint, the bundled layout of [`layouts`] and its manifest.
fn bundled(tmp: &Path) -> (PathBuf, PathBuf, Manifest) {
    let (ck, mut dirs) = layouts(tmp);
    let dir = dirs.swap_remove(0);
    let m = manifest(&dir);
    (ck, dir, m)
}

#[test]
fn unflipped_layouts_generate_the_dense_tokens_with_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, dirs) = layouts(tmp.path());
    let want = dense_tokens(&ck);
    let distinct: std::collections::BTreeSet<u32> = want.iter().copied().collect();
    assert_eq!(distinct.len(), GEN, "seed {SEED_MODEL} no longer gives {GEN} different tokens: {want:?}");
    for dir in &dirs {
        verified(dir).unwrap();
        for backend in BackendKind::ALL {
            for overlap in [false, true] {
                let got = flash_tokens(dir, backend, overlap);
                assert_eq!(got.as_ref(), Ok(&want), "{} {backend} overlap {overlap}", dir.display());
            }
        }
    }
}

/// The checksum table holds, for each layer, section and position, the crc32c of the record's payload as it
/// lies in `ffn.bin` (computed here from the file's bytes, with the manifest's offsets).
#[test]
fn the_checksum_table_holds_each_records_crc() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = layouts(tmp.path());
    for dir in &dirs {
        let m = manifest(dir);
        let ffn = fs::read(dir.join(layout::FFN_FILE)).unwrap();
        let t = m.ffn.checksums;
        assert_eq!(t.offset + t.len, ffn.len() as u64, "the table ends the file");
        let table = &ffn[t.offset as usize..(t.offset + t.len) as usize];
        assert_eq!(crc32c::crc32c(table), t.crc32c);
        let f = m.model.d_ffn;
        let mut i = 0;
        for layer in &m.layers {
            for s in &layer.sections {
                for k in 0..f as u64 {
                    let at = (s.offset + k * s.record_stride) as usize;
                    let want = crc32c::crc32c(&ffn[at..at + s.record_bytes as usize]);
                    assert_eq!(&table[4 * i..4 * i + 4], &want.to_le_bytes(), "section {} position {k}", s.name);
                    i += 1;
                }
            }
        }
        assert!(table[4 * i..].iter().all(|&b| b == 0), "zero padding");
    }
}

#[test]
fn a_flipped_record_in_each_section_is_named_by_layer_section_position_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = layouts(tmp.path());
    for dir in &dirs {
        let m = manifest(dir);
        let f = m.model.d_ffn as u64;
        let reversed = m.layers[1].order.is_some();
        for (si, s) in m.layers[1].sections.iter().enumerate() {
            // A different record of layer 1 in each section; one byte in the middle of its payload.
            let k = f / 2 + 3 * si as u64;
            let offset = s.offset + k * s.record_stride;
            let neuron = if reversed { f - 1 - k } else { k };
            for (i, backend) in BackendKind::ALL.into_iter().enumerate() {
                let bit = 1u8 << (2 * i);
                let e = damaged(dir, layout::FFN_FILE, offset + s.record_bytes / 2, bit, backend);
                let want = format!(
                    "layer 1 section `{}`: the record at position {k} (neuron {neuron}), at byte offset {offset} ({} \
                     bytes)",
                    s.name, s.record_bytes
                );
                assert!(e.contains(&want), "{backend}: `{want}` not in: {e}");
            }
            // The prefetch's reads (overlap) are checked too.
            let path = dir.join(layout::FFN_FILE);
            xor(&path, offset + 1, 0x10);
            let e = flash_tokens(dir, BackendKind::Pool, true).unwrap_err();
            xor(&path, offset + 1, 0x10);
            assert!(
                e.contains(&format!("layer 1 section `{}`", s.name)) && e.contains(&format!("position {k}")),
                "{e}"
            );
        }
    }
}

/// Runs of records read in chunks smaller than a layer (`max_merge`): the records a chunk holds whole are
/// checked as it arrives, those that straddle two chunks after the batch; damage in either kind is caught and
/// named, and unflipped the chunked reads generate the dense tokens.
#[test]
fn records_inside_and_across_chunk_boundaries_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, dir, m) = bundled(tmp.path());
    let dir = &dir;
    let s = &m.layers[0].sections[0];
    let (f, stride) = (m.model.d_ffn as u64, s.record_stride);
    let io = IoConfig { max_merge: 4096, ..IoConfig::default() };
    let want = dense_tokens(&ck);
    // Layer 0's records start at byte 512 of the 4 KiB-aligned range the run is read in: record 4 spans
    // 3584..4352 of it, across the first chunk boundary; record 5 (4352..5120) lies inside the second chunk.
    assert_eq!((s.offset, stride), (512, 768));
    for backend in BackendKind::ALL {
        let config = FlashConfig { backend, io: io.clone(), ..FlashConfig::new(dir) };
        assert_eq!(flash_tokens_with(config.clone()).as_ref(), Ok(&want), "{backend}");
        for k in [4u64, 5] {
            let at = s.offset + k * stride + 700;
            xor(&dir.join(layout::FFN_FILE), at, 0x02);
            let e = flash_tokens_with(config.clone()).unwrap_err();
            xor(&dir.join(layout::FFN_FILE), at, 0x02);
            let place =
                format!("the record at position {k} (neuron {}), at byte offset {}", f - 1 - k, s.offset + k * stride);
            assert!(e.contains(&place), "{backend}: `{place}` not in: {e}");
        }
    }
}

/// A record damaged in every position of a layer: one error for the batch, naming the range of positions.
#[test]
fn a_damaged_layer_is_named_as_a_range_of_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir, m) = bundled(tmp.path());
    let dir = &dir;
    let s = &m.layers[0].sections[0];
    let f = m.model.d_ffn as u64;
    let path = dir.join(layout::FFN_FILE);
    let mut bytes = fs::read(&path).unwrap();
    for k in 0..f {
        bytes[(s.offset + k * s.record_stride + 2) as usize] ^= 0x04;
    }
    fs::write(&path, &bytes).unwrap();
    let e = flash_tokens(dir, BackendKind::Uring, false).unwrap_err();
    let want = format!(
        "layer 0 section `bundle`: {f} records at positions 0..={} fail their crc32c; the first, position 0 (neuron {}), \
         at byte offset {}",
        f - 1,
        f - 1,
        s.offset
    );
    assert!(e.contains(&want), "`{want}` not in: {e}");
    // verify names them alike.
    let v = verified(dir).unwrap_err();
    assert!(v.contains(&want), "`{want}` not in: {v}");
}

#[test]
fn every_flipped_byte_of_the_manifest_is_refused_as_damage_to_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = layouts(tmp.path());
    for dir in &dirs {
        let len = fs::metadata(dir.join(layout::MANIFEST_FILE)).unwrap().len();
        for at in 0..len {
            let bit = 1u8 << (at % 8);
            damaged(dir, layout::MANIFEST_FILE, at, bit, BackendKind::Pool);
        }
    }
}

#[test]
fn flipped_bytes_of_resident_bin_are_refused_naming_the_tensor_or_the_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = layouts(tmp.path());
    let dir = &dirs[1];
    let rpath = dir.join(layout::RESIDENT_FILE);
    let g = GgufFile::open(&rpath).unwrap();
    let bytes = fs::read(&rpath).unwrap();
    // A tensor's data.
    let name = g.tensors().iter().find(|t| t.name.contains("q_proj")).unwrap().name.clone();
    let at = g.data_offset() + g.tensor(&name).unwrap().offset + 9;
    let e = damaged(dir, layout::RESIDENT_FILE, at, 0x08, BackendKind::Pool);
    assert!(e.contains(&format!("tensor `{name}`")), "{e}");
    // The tokenizer in the metadata: the tensors match, the file does not.
    let merges = bytes.windows(8).position(|w| w == b"\"merges\"").unwrap() as u64;
    let e = damaged(dir, layout::RESIDENT_FILE, merges + 3, 0x20, BackendKind::Pool);
    assert!(e.contains("outside the tensors' data") && e.contains("tokenizer"), "{e}");
    drop(g);
    // The GGUF header (tensor count, metadata count) and a sample of every other byte.
    for at in (8..24).chain((0..bytes.len() as u64).step_by(211)) {
        damaged(dir, layout::RESIDENT_FILE, at, 1 << (at % 8), BackendKind::Pool);
    }
}

#[test]
fn flipped_bytes_of_the_ffn_header_and_the_checksum_table_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = layouts(tmp.path());
    for dir in &dirs {
        let m = manifest(dir);
        for at in 0..layout::HEADER_USED as u64 {
            let e = damaged(dir, layout::FFN_FILE, at, 1 << (at % 8), BackendKind::Uring);
            assert!(["magic", "version", "header"].iter().any(|w| e.contains(w)), "header byte {at}: {e}");
        }
        let e = damaged(dir, layout::FFN_FILE, 300, 0x01, BackendKind::Uring);
        assert!(e.contains("byte 300 of the header block is not zero"), "{e}");
        let t = m.ffn.checksums;
        // An entry, and the padding after the last one.
        for at in [t.offset + 4 * 5 + 1, t.offset + t.len - 1] {
            let e = damaged(dir, layout::FFN_FILE, at, 0x80, BackendKind::Mmap);
            assert!(e.contains("the checksum table") && e.contains("crc32c"), "{e}");
        }
    }
}

/// A version 2 `ffn.bin` (its header's version; the manifest's is `tests/layout.rs`'s and the CLI's) is refused
/// with the advice to convert again, naming `ffn.bin`.
#[test]
fn a_version_2_ffn_bin_is_refused_with_the_advice_to_convert_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir, _) = bundled(tmp.path());
    xor(&dir.join(layout::FFN_FILE), 8, 0x03 ^ 0x02);
    let r = Layout::open(&dir);
    assert!(matches!(&r, Err(Error::Layout { path, .. }) if path.ends_with(layout::FFN_FILE)), "{:?}", r.err());
    let e = r.err().unwrap().to_string();
    assert!(e.contains("format version 2") && e.contains("spike convert"), "{e}");
}

/// Turning the check off (to measure its cost) lets a damaged record through: the check is what catches it.
#[test]
fn without_the_check_a_damaged_record_goes_unnoticed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir, m) = bundled(tmp.path());
    xor(&dir.join(layout::FFN_FILE), m.layers[0].sections[0].offset + 8, 0x40);
    let config = FlashConfig { verify_reads: false, ..FlashConfig::new(&dir) };
    let session = FlashSession::open(config, false).unwrap();
    let (mut ffn, _) = session.ffn(None).unwrap();
    let mut state = session.model.try_new_state(PROMPT.len() + 1).unwrap();
    session.model.forward_with(&mut state, &PROMPT, PROMPT.len() - 1, &mut ffn).unwrap();
    assert_eq!(ffn.stats.verify_ns, 0);
    ffn.set_options(FlashOptions::default()).unwrap();
    let e = session.model.forward_with(&mut state, &[3], 0, &mut ffn).unwrap_err();
    assert!(matches!(e, Error::RecordChecksum { layer: 0, .. }), "{e}");
}
