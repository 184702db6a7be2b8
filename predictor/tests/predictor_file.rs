//! The predictor file: bit-exact round trip, and every malformed or foreign file refused with an error that
//! names it.

use std::path::Path;

use ndarray::{Array1, Array2};
use predictor::file;
use predictor::lowrank::LowRank;
use predictor::ModelIdentity;
use predictor::{Error, LayerPredictor, Predictor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spike_flash::model::config::Activation;

const SEED_WEIGHTS: u64 = 0xf11e;
const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn identity() -> ModelIdentity {
    ModelIdentity { sha256: SHA.into(), n_layers: 3, d_model: 12, d_ffn: 20, activation: Activation::Silu }
}

/// A predictor with random weights and ranks 2, 3, 5.
fn sample() -> Predictor {
    let id = identity();
    let mut rng = StdRng::seed_from_u64(SEED_WEIGHTS);
    let layers = [2usize, 3, 5]
        .iter()
        .enumerate()
        .map(|(l, &r)| {
            let a = Array2::from_shape_fn((id.d_model, r), |_| rng.gen_range(-1.0f32..1.0));
            let b = Array2::from_shape_fn((r, id.d_ffn), |_| rng.gen_range(-1.0f32..1.0));
            let bias = Array1::from_shape_fn(id.d_ffn, |_| rng.gen_range(-2.0f32..0.0));
            let weights = LowRank::new(a, b, bias).expect("shapes chain").to_compact();
            LayerPredictor { weights, decision_threshold: -0.25 * l as f32, act_threshold: 0.01 * l as f32 }
        })
        .collect();
    Predictor::new(id, 0.95, layers).expect("consistent")
}

fn assert_names_file(e: &Error, path: &Path, what: &str) {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
    assert!(msg.contains(what), "error `{msg}` does not say `{what}`");
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.pred");
    let p = sample();
    file::write(&path, &p).expect("write");
    let bytes = std::fs::read(&path).expect("read back");
    assert_eq!(bytes, file::to_bytes(&p).expect("bytes"));
    let q = file::read(&path).expect("read");
    assert_eq!(q, p);
    assert_eq!(file::to_bytes(&q).expect("bytes"), bytes);
    assert_eq!(q.identity().sha256, SHA);
    // The layout of docs/predictor-format.md: header, table, then 2dr + 2rn + 4n bytes per layer.
    let (d, n) = (12usize, 20usize);
    let weights: usize = [2usize, 3, 5].iter().map(|r| 2 * d * r + 2 * r * n + 4 * n).sum();
    assert_eq!(bytes.len(), 128 + 3 * 32 + weights);
    assert_eq!(q.weight_bytes(), weights + 3 * 8);
    assert!(q.dram_bytes() > q.weight_bytes());
}

#[test]
fn truncated_files_are_refused_at_every_length() {
    let path = Path::new("/nowhere/truncated.pred");
    let bytes = file::to_bytes(&sample()).expect("bytes");
    for len in 0..bytes.len() {
        let e = file::from_bytes(path, &bytes[..len]).expect_err("a truncated file must not parse");
        assert!(matches!(e, Error::Format { .. } | Error::Checksum { .. }), "length {len}: {e}");
        assert_names_file(&e, path, "");
    }
    let e = file::from_bytes(path, &bytes[..100]).expect_err("short header");
    assert_names_file(&e, path, "truncated");
    let e = file::from_bytes(path, &bytes[..bytes.len() - 1]).expect_err("short weights");
    assert_names_file(&e, path, "truncated");
    let mut longer = bytes.clone();
    longer.push(0);
    let e = file::from_bytes(path, &longer).expect_err("trailing bytes");
    assert_names_file(&e, path, "after the last layer");
}

#[test]
fn every_flipped_byte_is_detected() {
    let path = Path::new("/nowhere/flipped.pred");
    let bytes = file::to_bytes(&sample()).expect("bytes");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let e = file::from_bytes(path, &b).expect_err("every byte is covered by a check");
        assert_names_file(&e, path, "");
    }
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    let e = file::from_bytes(path, &b).expect_err("weights flipped");
    assert_names_file(&e, path, "layer 2's weights");
    let mut b = bytes;
    b[0] = b'X';
    assert_names_file(&file::from_bytes(path, &b).expect_err("magic"), path, "bad magic");
}

/// Rewrites the header's checksum after an edit, so that the edit itself is what the reader sees.
fn reseal(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[..124]);
    b[124..128].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn other_versions_and_hostile_sizes_are_refused() {
    let path = Path::new("/nowhere/edited.pred");
    let bytes = file::to_bytes(&sample()).expect("bytes");

    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut b);
    assert_names_file(&file::from_bytes(path, &b).expect_err("version 2"), path, "version 2");

    // A huge layer count: refused from the file length, before any allocation.
    let mut b = bytes.clone();
    b[48..52].copy_from_slice(&(1u32 << 24).to_le_bytes());
    reseal(&mut b);
    assert_names_file(&file::from_bytes(path, &b).expect_err("layers"), path, "layer table");
    let mut b = bytes.clone();
    b[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert_names_file(&file::from_bytes(path, &b).expect_err("layers"), path, "n_layers");

    // Huge dimensions: the weight sizes no longer match the table.
    let mut b = bytes.clone();
    b[52..56].copy_from_slice(&(1u32 << 24).to_le_bytes());
    reseal(&mut b);
    assert_names_file(&file::from_bytes(path, &b).expect_err("d_model"), path, "weight block");

    let mut b = bytes.clone();
    b[64..68].copy_from_slice(&7u32.to_le_bytes());
    reseal(&mut b);
    assert_names_file(&file::from_bytes(path, &b).expect_err("weight type"), path, "weight type 7");

    // A rank above d_ffn in the table (table checksum resealed too).
    let mut b = bytes;
    b[128..132].copy_from_slice(&21u32.to_le_bytes());
    let crc = crc32c::crc32c(&b[128..128 + 3 * 32]);
    b[72..76].copy_from_slice(&crc.to_le_bytes());
    reseal(&mut b);
    assert_names_file(&file::from_bytes(path, &b).expect_err("rank"), path, "rank 21");
}

#[test]
fn a_predictor_for_another_model_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.pred");
    file::write(&path, &sample()).expect("write");
    let p = file::read(&path).expect("read");
    p.check_model(&path, &identity()).expect("its own model");
    for (other, what) in [
        (ModelIdentity { n_layers: 4, ..identity() }, "n_layers is 3 in the file but 4"),
        (ModelIdentity { d_model: 16, ..identity() }, "d_model is 12 in the file but 16"),
        (ModelIdentity { d_ffn: 24, ..identity() }, "d_ffn"),
        (ModelIdentity { activation: Activation::Relu, ..identity() }, "activation"),
        (ModelIdentity { sha256: "00".repeat(32), ..identity() }, "sha256"),
    ] {
        let e = p.check_model(&path, &other).expect_err("another model");
        assert!(matches!(e, Error::Mismatch { .. }));
        assert_names_file(&e, &path, what);
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let path = Path::new("/nowhere/at/all.pred");
    let e = file::read(path).expect_err("absent");
    assert!(matches!(e, Error::Io { .. }));
    assert_names_file(&e, path, "");
}
