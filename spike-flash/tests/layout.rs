//! The flash layout end to end on tiny synthetic models: conversion, reading neurons back against the source,
//! checksum verification naming what is damaged, validation at open, and atomic creation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use spike_flash::engine::model::{FfnWeights, Model};
use spike_flash::engine::sparse::NeuronRows;
use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind, RecordDType};
use spike_flash::model::bind::Source;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::{self, DType};
use spike_flash::model::synth::{self, LlamaShape, SynthSpec};
use spike_flash::Error;

fn tiny_gguf(dir: &Path, dtype: DType) -> (PathBuf, Model) {
    let bytes = synth::llama_gguf(&LlamaShape::tiny(), dtype, 7).unwrap();
    let path = dir.join(format!("tiny-{dtype}.gguf"));
    fs::write(&path, bytes).unwrap();
    let model = Model::from_source(&Source::open(&path).unwrap()).unwrap();
    (path, model)
}

fn opts(kind: LayoutKind, dtype: RecordDType) -> ConvertOptions {
    ConvertOptions { kind, dtype, ..Default::default() }
}

/// `values` stored as `dtype` and read back.
fn roundtrip(dtype: DType, values: &[f32]) -> Vec<f32> {
    let mut q = Vec::new();
    quant::quantize(dtype, values, &mut q).unwrap();
    let mut back = vec![0.0; values.len()];
    quant::dequantize(dtype, &q, &mut back).unwrap();
    back
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Converts and checks every neuron of every layer against the source.
fn check_round_trip(src: DType, kind: LayoutKind, rd: RecordDType, want: DType) {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path(), src);
    let out = tmp.path().join("tiny.spike");
    let summary = layout::write(&model, &path, &out, &opts(kind, rd)).unwrap();
    let lay = Layout::open(&out).unwrap();
    assert_eq!(lay.dtype(), want);
    lay.check_model(model.config(), Some(&spike_flash::model::fetch::sha256_file(&path).unwrap())).unwrap();
    let report = lay.verify().unwrap();
    assert_eq!(report.sections, model.config().n_layers * if kind == LayoutKind::Split { 3 } else { 1 });
    assert!(report.tensors > 0);
    let (d, f) = (model.config().d_model, model.config().d_ffn);
    let rb = want.bytes_for(d as u64).unwrap() as usize;
    assert_eq!(summary.neuron_bytes as usize, 3 * rb);
    assert_eq!(summary.record_bytes as usize, if kind == LayoutKind::Split { rb } else { 3 * rb });
    let mut worst = 0.0f32;
    for l in 0..model.config().n_layers {
        let rows = NeuronRows::from_model(&model, l).unwrap();
        let FfnWeights::Gated { gate, up, .. } = &model.layer(l).ffn else { panic!("gated") };
        for n in 0..f {
            let rec = lay.neuron_record(l, n).unwrap();
            if rd == RecordDType::Source {
                assert_eq!(&rec[..rb], model.matrix(&gate.w).row(n), "gate row bytes, layer {l} neuron {n}");
                assert_eq!(&rec[rb..2 * rb], model.matrix(&up.w).row(n), "up row bytes, layer {l} neuron {n}");
            }
            let got = lay.decode_neuron(&rec).unwrap();
            let row = |m: &[f32]| m[n * d..(n + 1) * d].to_vec();
            let expect = |exact: Vec<f32>, copied: bool| if copied { exact } else { roundtrip(want, &exact) };
            let copied = want == src;
            assert_eq!(bits(&got.first), bits(&expect(row(&rows.first), copied)), "gate, layer {l} neuron {n}");
            let up_rows = rows.up.as_deref().unwrap();
            assert_eq!(bits(got.up.as_deref().unwrap()), bits(&expect(row(up_rows), copied)), "up {l}/{n}");
            let col = row(&rows.second_t);
            assert_eq!(bits(&got.second_col), bits(&roundtrip(want, &col)), "down, layer {l} neuron {n}");
            for (a, b) in got.second_col.iter().zip(&col) {
                worst = worst.max((a - b).abs());
                assert!((a - b).abs() <= summary.max_abs_error, "down error {} > reported", (a - b).abs());
            }
            assert_eq!(got.b1, None);
        }
    }
    if want == DType::F32 {
        assert_eq!(summary.max_abs_error, 0.0);
    } else {
        assert!(worst > 0.0 && worst <= summary.max_abs_error);
    }
}

#[test]
fn q4_1_source_bundled_and_split_read_back_the_source() {
    check_round_trip(DType::Q4_1, LayoutKind::Bundled, RecordDType::Source, DType::Q4_1);
    check_round_trip(DType::Q4_1, LayoutKind::Split, RecordDType::Source, DType::Q4_1);
}

#[test]
fn f32_source_bundled_and_split_are_exact() {
    check_round_trip(DType::F32, LayoutKind::Bundled, RecordDType::Source, DType::F32);
    check_round_trip(DType::F32, LayoutKind::Split, RecordDType::Source, DType::F32);
}

#[test]
fn other_record_types() {
    check_round_trip(DType::Q4_1, LayoutKind::Bundled, RecordDType::F32, DType::F32);
    check_round_trip(DType::Q4_1, LayoutKind::Split, RecordDType::F16, DType::F16);
    check_round_trip(DType::F32, LayoutKind::Bundled, RecordDType::Q8_0, DType::Q8_0);
    check_round_trip(DType::F32, LayoutKind::Split, RecordDType::Q4_1, DType::Q4_1);
}

#[test]
fn packing_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path(), DType::Q4_1);
    let o = ConvertOptions { align: 512, pack: 512, ..Default::default() };
    let s = layout::write(&model, &path, &tmp.path().join("a.spike"), &o).unwrap();
    assert_eq!((s.record_bytes, s.record_stride), (120, 512));
    assert!((s.read_amplification - 512.0 / 120.0).abs() < 1e-9);
    let f = model.config().d_ffn as u64;
    assert_eq!(s.ffn_bytes, 512 + 2 * f * 512);
    assert_eq!(fs::metadata(tmp.path().join("a.spike/ffn.bin")).unwrap().len(), s.ffn_bytes);
    let lay = Layout::open(&tmp.path().join("a.spike")).unwrap();
    lay.verify().unwrap();
    let s = layout::write(&model, &path, &tmp.path().join("b.spike"), &ConvertOptions::default()).unwrap();
    assert_eq!((s.record_bytes, s.record_stride), (120, 120));
    assert_eq!(s.ffn_bytes, 4096 + 2 * (f * 120).div_ceil(4096) * 4096);
    for bad in [ConvertOptions { align: 1000, ..Default::default() }, ConvertOptions { pack: 8, ..Default::default() }]
    {
        assert!(matches!(layout::write(&model, &path, &tmp.path().join("c.spike"), &bad), Err(Error::Invalid(_))));
    }
    assert!(!tmp.path().join("c.spike").exists());
}

fn converted(tmp: &Path) -> (PathBuf, Model, PathBuf) {
    let (path, model) = tiny_gguf(tmp, DType::Q4_1);
    let out = tmp.join("m.spike");
    layout::write(&model, &path, &out, &ConvertOptions::default()).unwrap();
    (path, model, out)
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x40;
    fs::write(path, b).unwrap();
}

#[test]
fn verify_names_the_damaged_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, out) = converted(tmp.path());
    let lay = Layout::open(&out).unwrap();
    let s = &lay.manifest().layers[1].sections[0];
    flip(&out.join("ffn.bin"), s.offset + 77);
    let lay = Layout::open(&out).unwrap();
    let e = lay.verify().unwrap_err().to_string();
    assert!(e.contains("layer 1 section `bundle`"), "{e}");
    assert!(!e.contains("layer 0"), "{e}");
}

#[test]
fn verify_names_the_damaged_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, out) = converted(tmp.path());
    let rpath = out.join("resident.bin");
    let g = GgufFile::open(&rpath).unwrap();
    assert!(g.tensors().iter().all(|t| !t.name.contains("ffn_gate") && !t.name.contains("ffn_down")));
    assert!(g.tensor("blk.1.ffn_norm.weight").is_ok());
    let at = g.data_offset() + g.tensor("blk.1.attn_q.weight").unwrap().offset + 5;
    drop(g);
    flip(&rpath, at);
    let e = Layout::open(&out).unwrap().verify().unwrap_err().to_string();
    assert!(e.contains("tensor `blk.1.attn_q.weight`"), "{e}");
    assert!(!e.contains("ffn.bin"), "{e}");
}

#[test]
fn resident_holds_the_source_metadata_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, out) = converted(tmp.path());
    let src = GgufFile::open(&path).unwrap();
    let res = GgufFile::open(&out.join("resident.bin")).unwrap();
    assert_eq!(res.metadata().count(), src.metadata().count());
    for (k, v) in src.metadata() {
        assert_eq!(res.get(k), Some(v), "{k}");
    }
    for t in res.tensors() {
        assert_eq!(res.tensor_data(&t.name).unwrap(), src.tensor_data(&t.name).unwrap(), "{}", t.name);
    }
    assert_eq!(res.tensors().len() + 3 * 2, src.tensors().len());
}

#[test]
fn open_refuses_truncated_and_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model, out) = converted(tmp.path());
    let ffn = out.join("ffn.bin");
    let len = fs::metadata(&ffn).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&ffn).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("ffn.bin") && e.contains("truncated"), "{e}");

    // ffn.bin of another conversion of the same model: same sizes, another layout id.
    let other = tmp.path().join("other.spike");
    layout::write(&model, &path, &other, &ConvertOptions::default()).unwrap();
    fs::copy(other.join("ffn.bin"), &ffn).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("ffn.bin") && e.contains("does not match the manifest"), "{e}");
}

#[test]
fn open_refuses_another_version_and_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, out) = converted(tmp.path());
    let mpath = out.join("manifest.json");
    let text = fs::read_to_string(&mpath).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["version"] = 2.into();
    fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("version 2") && e.contains("version 1"), "{e}");
    v["version"] = 1.into();
    v["format"] = "other".into();
    fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("`format`"), "{e}");
    v["format"] = "spike-layout".into();
    v["align"] = 300.into();
    fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("align 300"), "{e}");
    v["align"] = 4096.into();
    v["layers"][1]["sections"][0]["offset"] = v["layers"][0]["sections"][0]["offset"].clone();
    fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("overlaps"), "{e}");
}

#[test]
fn partial_directories_are_not_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model, out) = converted(tmp.path());
    let partial = tmp.path().join("m.spike.partial-12345");
    fs::rename(&out, &partial).unwrap();
    let e = Layout::open(&partial).unwrap_err().to_string();
    assert!(e.contains("unfinished conversion"), "{e}");
    fs::rename(&partial, &out).unwrap();
    fs::remove_file(out.join("manifest.json")).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("no manifest.json"), "{e}");

    // A conversion that fails midway leaves neither the layout nor its partial directory.
    let dest = tmp.path().join("fail.spike");
    let o = ConvertOptions { fail_before_manifest: true, ..Default::default() };
    assert!(layout::write(&model, &path, &dest, &o).is_err());
    assert!(!dest.exists());
    let names: Vec<String> =
        fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
}

#[test]
fn existing_output_is_replaced_only_when_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model, out) = converted(tmp.path());
    let id = Layout::open(&out).unwrap().manifest().layout_id.clone();
    let e = layout::write(&model, &path, &out, &ConvertOptions::default()).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    // A forced conversion that fails keeps the old layout.
    let o = ConvertOptions { force: true, fail_before_manifest: true, ..Default::default() };
    assert!(layout::write(&model, &path, &out, &o).is_err());
    assert_eq!(Layout::open(&out).unwrap().manifest().layout_id, id);
    let o = ConvertOptions { force: true, kind: LayoutKind::Split, ..Default::default() };
    layout::write(&model, &path, &out, &o).unwrap();
    let lay = Layout::open(&out).unwrap();
    assert_ne!(lay.manifest().layout_id, id);
    assert_eq!(lay.manifest().kind, LayoutKind::Split);
    lay.verify().unwrap();
    let names: Vec<String> =
        fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("partial") && !n.contains(".old-")), "{names:?}");
}

/// A tiny OPT checkpoint (f16 weights, biases) converted both ways reads back the source's neurons.
#[test]
fn opt_checkpoint_bundled_and_split() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("opt");
    let spec = SynthSpec { shards: 2, dtype: DType::F16, ..SynthSpec::tiny_opt(3) };
    synth::write_hf_checkpoint(&spec, &ck).unwrap();
    let model = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let (d, f) = (model.config().d_model, model.config().d_ffn);
    for (kind, rd, want) in [
        (LayoutKind::Bundled, RecordDType::Source, DType::F16),
        (LayoutKind::Split, RecordDType::Source, DType::F16),
        (LayoutKind::Bundled, RecordDType::Q8_0, DType::Q8_0),
    ] {
        let out = tmp.path().join(format!("opt-{kind:?}-{want}.spike"));
        let s = layout::write(&model, &ck, &out, &opts(kind, rd)).unwrap();
        let rb = want.bytes_for(d as u64).unwrap();
        assert_eq!(s.neuron_bytes, 2 * rb + 4);
        let lay = Layout::open(&out).unwrap();
        lay.verify().unwrap();
        lay.check_model(model.config(), None).unwrap();
        assert_eq!(lay.manifest().layers[0].sections.len(), if kind == LayoutKind::Split { 2 } else { 1 });
        for l in 0..model.config().n_layers {
            let rows = NeuronRows::from_model(&model, l).unwrap();
            let b1 = rows.b1.as_ref().expect("OPT has fc1 biases");
            assert_eq!(b1.len(), f);
            for (n, &bias) in b1.iter().enumerate().take(f) {
                let got = lay.decode_neuron(&lay.neuron_record(l, n).unwrap()).unwrap();
                let first = rows.first[n * d..(n + 1) * d].to_vec();
                let first = if want == DType::F16 { first } else { roundtrip(want, &first) };
                assert_eq!(bits(&got.first), bits(&first), "fc1 row, layer {l} neuron {n}");
                assert_eq!(bits(&got.second_col), bits(&roundtrip(want, &rows.second_t[n * d..(n + 1) * d])));
                assert_eq!(got.up, None);
                let want_b1 = if kind == LayoutKind::Bundled { Some(bias) } else { None };
                assert_eq!(got.b1.map(f32::to_bits), want_b1.map(f32::to_bits), "b1, layer {l} neuron {n}");
            }
        }
        if want == DType::F16 {
            assert_eq!(s.max_abs_error, 0.0, "f16 columns of an f16 source are exact");
        }
        // resident.bin: everything but the streamed matrices, under the checkpoint's names, with the config.
        let res = GgufFile::open(&out.join("resident.bin")).unwrap();
        let names: Vec<&str> = res.tensors().iter().map(|t| t.name.as_str()).collect();
        assert!(names.iter().all(|n| !n.ends_with("fc1.weight") && !n.ends_with("fc2.weight")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("layers.1.fc1.bias")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("layers.1.fc2.bias")), "{names:?}");
        let cfg = res.get_str(layout::HF_CONFIG_KEY).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(cfg).is_ok());
        assert!(res.get_str(layout::HF_TOKENIZER_KEY).is_ok());
        assert_eq!(lay.manifest().source.len, {
            let mut n = 0;
            for e in fs::read_dir(&ck).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "safetensors") {
                    n += fs::metadata(&p).unwrap().len();
                }
            }
            n
        });
    }
}

#[test]
fn verify_flags_resident_tensors_the_manifest_does_not_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, out) = converted(tmp.path());
    let mpath = out.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
    v["resident"]["tensors"].as_object_mut().unwrap().remove("output_norm.weight").unwrap();
    fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let e = Layout::open(&out).unwrap().verify().unwrap_err().to_string();
    assert!(e.contains("tensor `output_norm.weight` is not in the manifest"), "{e}");
}

#[test]
fn llama_checkpoint_and_bf16_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("llama");
    synth::write_hf_checkpoint(&SynthSpec::tiny_llama(4), &ck).unwrap();
    let model = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let out = tmp.path().join("llama.spike");
    layout::write(&model, &ck, &out, &opts(LayoutKind::Split, RecordDType::Source)).unwrap();
    let lay = Layout::open(&out).unwrap();
    lay.verify().unwrap();
    let d = model.config().d_model;
    let rows = NeuronRows::from_model(&model, 1).unwrap();
    let got = lay.decode_neuron(&lay.neuron_record(1, 5).unwrap()).unwrap();
    assert_eq!(bits(&got.first), bits(&rows.first[5 * d..6 * d]));
    assert_eq!(bits(got.up.as_deref().unwrap()), bits(&rows.up.as_deref().unwrap()[5 * d..6 * d]));
    assert_eq!(bits(&got.second_col), bits(&rows.second_t[5 * d..6 * d]));
    let res = GgufFile::open(&out.join("resident.bin")).unwrap();
    assert!(res.tensors().iter().all(|t| !t.name.contains("mlp.")), "FFN matrices stay out of resident.bin");

    let ck = tmp.path().join("bf16");
    synth::write_hf_checkpoint(&SynthSpec { dtype: DType::BF16, ..SynthSpec::tiny_opt(5) }, &ck).unwrap();
    let model = Model::from_source(&Source::open(&ck).unwrap()).unwrap();
    let out = tmp.path().join("bf16.spike");
    let r = layout::write(&model, &ck, &out, &ConvertOptions::default());
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    assert!(!out.exists());
    layout::write(&model, &ck, &out, &opts(LayoutKind::Bundled, RecordDType::F32)).unwrap();
    assert!(layout::write(&model, &ck, &out, &opts(LayoutKind::Bundled, RecordDType::F32)).is_err());
}
