//! The flash layout end to end on tiny synthetic models: conversion, reading neurons back against the source,
//! checksum verification naming what is damaged, validation at open, and atomic creation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use spike_flash::engine::model::Model;

use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind, RecordDType};
use spike_flash::model::bind::Source;
use spike_flash::model::gguf::GgufFile;
use spike_flash::model::quant::{self, DType};
use spike_flash::model::synth::{self, SynthSpec};
use spike_flash::model::weights::{FfnWeights, NeuronRows};
use spike_flash::Error;

fn tiny_gguf(dir: &Path, dtype: DType) -> (PathBuf, Model) {
    let bytes = synth::llama_gguf(&SynthSpec::tiny_gguf(dtype, 7)).unwrap();
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

/// Converts a tiny Llama model with `src` matrices, rows as `rd` and columns as `cd`, and checks the types
/// (`want_row`, `want_col`), every size, and every neuron of every layer against the source: rows copied byte
/// for byte when they keep the source's type, everything else equal to the source's values stored in the
/// wanted type, and the reported errors equal to the largest errors found.
fn check_round_trip(
    src: DType,
    kind: LayoutKind,
    rd: RecordDType,
    cd: Option<RecordDType>,
    want_row: DType,
    want_col: DType,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path(), src);
    let out = tmp.path().join("tiny.spike");
    let o = ConvertOptions { column_dtype: cd, ..opts(kind, rd) };
    let summary = layout::write(&model, &path, &out, &o).unwrap();
    let lay = Layout::open(&out).unwrap();
    let case = format!("{src} source, {kind:?}, rows {rd:?} columns {cd:?}");
    assert_eq!((lay.dtype(), lay.column_dtype()), (want_row, want_col), "{case}");
    assert_eq!(
        (lay.manifest().dtype.as_str(), lay.manifest().column_dtype.as_str()),
        (want_row.name(), want_col.name())
    );
    assert_eq!((summary.dtype.as_str(), summary.column_dtype.as_str()), (want_row.name(), want_col.name()));
    lay.check_model(model.config(), Some(&spike_flash::model::fetch::sha256_file(&path).unwrap())).unwrap();
    let report = lay.verify().unwrap();
    assert_eq!(report.sections, model.config().n_layers * if kind == LayoutKind::Split { 3 } else { 1 });
    assert!(report.tensors > 0);
    let (d, f) = (model.config().d_model, model.config().d_ffn);
    let rb = want_row.bytes_for(d as u64).unwrap() as usize;
    let cb = want_col.bytes_for(d as u64).unwrap() as usize;
    assert_eq!((lay.row_bytes(), lay.column_bytes(), lay.payload_bytes()), (rb, cb, 2 * rb + cb), "{case}");
    assert_eq!(summary.neuron_bytes as usize, 2 * rb + cb);
    let sections: Vec<u64> = match kind {
        LayoutKind::Bundled => vec![(2 * rb + cb) as u64],
        LayoutKind::Split => vec![rb as u64, rb as u64, cb as u64],
    };
    assert_eq!(summary.record_bytes, sections[0], "{case}");
    assert_eq!(summary.sections.iter().map(|s| s.record_bytes).collect::<Vec<_>>(), sections, "{case}");
    let m = lay.manifest();
    assert_eq!((m.record_bytes, m.record_stride), (sections[0], sections[0]));
    for layer in &m.layers {
        for (s, &want) in layer.sections.iter().zip(&sections) {
            assert_eq!((s.record_bytes, s.record_stride), (want, want), "{case}: section {}", s.name);
            assert_eq!(s.len, (f as u64 * want).div_ceil(4096) * 4096, "{case}: section {}", s.name);
        }
    }
    let (mut worst_rows, mut worst_cols) = (0.0f32, 0.0f32);
    let rows_copied = rd == RecordDType::Source;
    for l in 0..model.config().n_layers {
        let rows = NeuronRows::from_model(&model, l).unwrap();
        let FfnWeights::Gated { gate, up, .. } = &model.layer(l).ffn else { panic!("gated") };
        for n in 0..f {
            let rec = lay.neuron_record(l, n).unwrap();
            assert_eq!(rec.len(), 2 * rb + cb);
            if rows_copied {
                assert_eq!(&rec[..rb], model.matrix(&gate.w).row(n), "gate row bytes, layer {l} neuron {n}");
                assert_eq!(&rec[rb..2 * rb], model.matrix(&up.w).row(n), "up row bytes, layer {l} neuron {n}");
            }
            let got = lay.decode_neuron(&rec).unwrap();
            let row = |m: &[f32]| m[n * d..(n + 1) * d].to_vec();
            let expect = |exact: Vec<f32>| if rows_copied { exact } else { roundtrip(want_row, &exact) };
            let (gate_exact, up_exact) = (row(&rows.first), row(rows.up.as_deref().unwrap()));
            assert_eq!(bits(&got.first), bits(&expect(gate_exact.clone())), "gate, layer {l} neuron {n}");
            assert_eq!(bits(got.up.as_deref().unwrap()), bits(&expect(up_exact.clone())), "up {l}/{n}");
            for (a, b) in got.first.iter().chain(got.up.as_deref().unwrap()).zip(gate_exact.iter().chain(&up_exact)) {
                worst_rows = worst_rows.max((a - b).abs());
            }
            let col = row(&rows.second_t);
            assert_eq!(bits(&got.second_col), bits(&roundtrip(want_col, &col)), "down, layer {l} neuron {n}");
            for (a, b) in got.second_col.iter().zip(&col) {
                worst_cols = worst_cols.max((a - b).abs());
            }
        }
    }
    assert_eq!(summary.max_abs_error_rows, worst_rows, "{case}: reported row error");
    assert_eq!(summary.max_abs_error_columns, worst_cols, "{case}: reported column error");
    assert_eq!(worst_rows == 0.0, rows_copied || want_row == DType::F32, "{case}: row error {worst_rows}");
    assert_eq!(worst_cols == 0.0, want_col == DType::F32, "{case}: column error {worst_cols}");
}

/// `--dtype source` of a 4-bit source: rows byte for byte, q8_0 columns by default; explicit Q4_1 columns are
/// the source's type re-quantized along the other axis.
#[test]
fn q4_1_source_bundled_and_split_read_back_the_source() {
    use RecordDType::{Source, Q4_1};
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        check_round_trip(DType::Q4_1, kind, Source, None, DType::Q4_1, DType::Q8_0);
        check_round_trip(DType::Q4_1, kind, Source, Some(Q4_1), DType::Q4_1, DType::Q4_1);
        check_round_trip(DType::Q4_1, kind, Source, Some(Source), DType::Q4_1, DType::Q4_1);
    }
    check_round_trip(DType::Q4_0, LayoutKind::Split, Source, None, DType::Q4_0, DType::Q8_0);
    check_round_trip(DType::Q4_0, LayoutKind::Bundled, Source, Some(Source), DType::Q4_0, DType::Q4_0);
}

#[test]
fn f32_and_q8_0_sources_keep_one_type_by_default() {
    check_round_trip(DType::F32, LayoutKind::Bundled, RecordDType::Source, None, DType::F32, DType::F32);
    check_round_trip(DType::F32, LayoutKind::Split, RecordDType::Source, None, DType::F32, DType::F32);
    check_round_trip(DType::Q8_0, LayoutKind::Bundled, RecordDType::Source, None, DType::Q8_0, DType::Q8_0);
}

#[test]
fn other_record_types() {
    use RecordDType::{Source, F16, F32, Q4_1, Q8_0};
    check_round_trip(DType::Q4_1, LayoutKind::Bundled, F32, None, DType::F32, DType::F32);
    check_round_trip(DType::Q4_1, LayoutKind::Split, F16, None, DType::F16, DType::F16);
    check_round_trip(DType::F32, LayoutKind::Bundled, Q8_0, None, DType::Q8_0, DType::Q8_0);
    check_round_trip(DType::F32, LayoutKind::Split, Q4_1, None, DType::Q4_1, DType::Q4_1);
    // Rows and columns of different types.
    check_round_trip(DType::Q4_1, LayoutKind::Split, F16, Some(Q4_1), DType::F16, DType::Q4_1);
    check_round_trip(DType::F32, LayoutKind::Bundled, Q8_0, Some(F16), DType::Q8_0, DType::F16);
    check_round_trip(DType::Q4_1, LayoutKind::Split, Source, Some(F32), DType::Q4_1, DType::F32);
    check_round_trip(DType::F32, LayoutKind::Split, Q4_1, Some(Source), DType::Q4_1, DType::F32);
}

#[test]
fn packing_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path(), DType::Q4_1);
    // The default for a Q4_1 source: two Q4_1 rows of 64 values (40 B each) and a q8_0 column (68 B).
    let o = ConvertOptions { align: 512, pack: 512, ..Default::default() };
    let s = layout::write(&model, &path, &tmp.path().join("a.spike"), &o).unwrap();
    assert_eq!((s.record_bytes, s.record_stride), (148, 512));
    assert!((s.read_amplification - 512.0 / 148.0).abs() < 1e-9);
    let f = model.config().d_ffn as u64;
    // The checksum table ends the file: a u32 per record of the 2 layers, in whole alignment units.
    let table = |sections: u64, align: u64| (4 * 2 * sections * f).div_ceil(align) * align;
    assert_eq!(s.ffn_bytes, 512 + 2 * f * 512 + table(1, 512));
    assert_eq!(fs::metadata(tmp.path().join("a.spike/ffn.bin")).unwrap().len(), s.ffn_bytes);
    let lay = Layout::open(&tmp.path().join("a.spike")).unwrap();
    lay.verify().unwrap();
    let s = layout::write(&model, &path, &tmp.path().join("b.spike"), &ConvertOptions::default()).unwrap();
    assert_eq!((s.record_bytes, s.record_stride), (148, 148));
    assert_eq!(s.ffn_bytes, 4096 + 2 * (f * 148).div_ceil(4096) * 4096 + table(1, 4096));
    let o = ConvertOptions { column_dtype: Some(RecordDType::Q4_1), ..Default::default() };
    let s = layout::write(&model, &path, &tmp.path().join("b4.spike"), &o).unwrap();
    assert_eq!((s.record_bytes, s.record_stride, s.neuron_bytes), (120, 120, 120));
    // Split: the rows' sections have 40-byte records, the columns' 68-byte ones, each section its own length.
    let o = ConvertOptions { kind: LayoutKind::Split, align: 512, ..Default::default() };
    let s = layout::write(&model, &path, &tmp.path().join("s.spike"), &o).unwrap();
    let strides: Vec<(u64, u64)> = s.sections.iter().map(|r| (r.record_bytes, r.record_stride)).collect();
    assert_eq!(strides, [(40, 40), (40, 40), (68, 68)]);
    assert_eq!((s.record_bytes, s.record_stride, s.neuron_bytes), (40, 40, 148));
    let (rows, cols) = ((f * 40).div_ceil(512) * 512, (f * 68).div_ceil(512) * 512);
    assert_eq!(s.ffn_bytes, 512 + 2 * (2 * rows + cols) + table(3, 512));
    assert!((s.read_amplification - 3.0 * 512.0 / 148.0).abs() < 1e-9);
    let lay = Layout::open(&tmp.path().join("s.spike")).unwrap();
    lay.verify().unwrap();
    let m = lay.manifest();
    let lens: Vec<u64> = m.layers[1].sections.iter().map(|s| s.len).collect();
    assert_eq!(lens, [rows, rows, cols]);
    // Neuron 5 of layer 1: one read per section, placed one after the other in the bundled payload format.
    let mut reqs = Vec::new();
    lay.neuron_reads(1, 5, 1000, &mut reqs).unwrap();
    let got: Vec<(u64, usize, usize)> = reqs.iter().map(|r| (r.offset, r.len, r.dst)).collect();
    let sec = &m.layers[1].sections;
    let want =
        [(sec[0].offset + 5 * 40, 40, 1000), (sec[1].offset + 5 * 40, 40, 1040), (sec[2].offset + 5 * 68, 68, 1080)];
    assert_eq!(got, want);
    for bad in [ConvertOptions { align: 1000, ..Default::default() }, ConvertOptions { pack: 8, ..Default::default() }]
    {
        assert!(matches!(layout::write(&model, &path, &tmp.path().join("c.spike"), &bad), Err(Error::Invalid(_))));
    }
    assert!(!tmp.path().join("c.spike").exists());
}

/// Writes `v` as the manifest `mpath`, sealed (a deliberate edit, as docs/format.md says a tool makes one).
fn write_sealed(mpath: &Path, v: &serde_json::Value) {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove(layout::MANIFEST_CRC_KEY);
    fs::write(mpath, layout::seal_manifest(serde_json::to_string_pretty(&v).unwrap().as_bytes()).unwrap()).unwrap();
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
    for old in [1, 2] {
        v["version"] = old.into();
        write_sealed(&mpath, &v);
        let e = Layout::open(&out).unwrap_err().to_string();
        assert!(e.contains("manifest.json") && e.contains(&format!("format version {old}")), "{e}");
        assert!(e.contains("convert the model again with `spike convert`"), "{e}");
        // As a version 2 layout was written: no seal.
        let mut unsealed = v.clone();
        unsealed.as_object_mut().unwrap().remove(layout::MANIFEST_CRC_KEY);
        fs::write(&mpath, serde_json::to_string_pretty(&unsealed).unwrap()).unwrap();
        let e = Layout::open(&out).unwrap_err().to_string();
        assert!(e.contains(&format!("format version {old}")) && e.contains("spike convert"), "{e}");
    }
    v["version"] = 4.into();
    write_sealed(&mpath, &v);
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("format version 4, this reader reads version 3 only"), "{e}");
    v["version"] = 3.into();
    v["format"] = "other".into();
    write_sealed(&mpath, &v);
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("`format`"), "{e}");
    v["format"] = "spike-layout".into();
    v["align"] = 300.into();
    write_sealed(&mpath, &v);
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("align 300"), "{e}");
    v["align"] = 4096.into();
    v["layers"][1]["sections"][0]["offset"] = v["layers"][0]["sections"][0]["offset"].clone();
    write_sealed(&mpath, &v);
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("overlaps"), "{e}");
    // An edit in place, not sealed again: refused as an edit before anything it says is believed.
    assert!(text.contains("\"pack\": 1,"));
    fs::write(&mpath, text.replace("\"pack\": 1,", "\"pack\": 4096,")).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("damaged, or was edited"), "{e}");
    // Re-serialized (members in another order): the seal is no longer last, which is refused alike.
    fs::write(&mpath, serde_json::to_string(&v).unwrap()).unwrap();
    let e = Layout::open(&out).unwrap_err().to_string();
    assert!(e.contains("is not the last member") && e.contains("edited"), "{e}");
}

/// The column type and the per-section record sizes are checked against each other and against `ffn.bin`'s
/// header, by name.
#[test]
fn open_checks_column_types_and_section_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, model) = tiny_gguf(tmp.path(), DType::Q4_1);
    let out = tmp.path().join("s.spike");
    layout::write(&model, &path, &out, &opts(LayoutKind::Split, RecordDType::Source)).unwrap();
    let mpath = out.join("manifest.json");
    let good: serde_json::Value = serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!((good["dtype"].as_str(), good["column_dtype"].as_str()), (Some("q4_1"), Some("q8_0")));
    assert_eq!(good["layers"][0]["sections"][2]["record_bytes"], 68);
    let ffn = out.join("ffn.bin");
    let header = fs::read(&ffn).unwrap()[..84].to_vec();
    assert_eq!(&header[8..12], &3u32.to_le_bytes(), "version 3");
    assert_eq!(&header[24..28], &3u32.to_le_bytes(), "rows: ggml q4_1");
    assert_eq!(&header[28..32], &40u32.to_le_bytes(), "record_bytes: a row");
    assert_eq!(&header[56..60], &8u32.to_le_bytes(), "columns: ggml q8_0");

    let open_with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        edit(&mut v);
        write_sealed(&mpath, &v);
        Layout::open(&out).unwrap_err().to_string()
    };
    let e = open_with(&|v| v["column_dtype"] = "bf16".into());
    assert!(e.contains("unknown column dtype `bf16`"), "{e}");
    // q4_1 columns would make the down records 40 bytes: the sections say 68.
    let e = open_with(&|v| v["column_dtype"] = "q4_1".into());
    assert!(e.contains("layer 0 section `down`") && e.contains("record_bytes 68"), "{e}");
    let e = open_with(&|v| v["layers"][1]["sections"][2]["record_stride"] = 72.into());
    assert!(e.contains("layer 1 section `down`") && e.contains("record_stride"), "{e}");
    let e = open_with(&|v| v["layers"][1]["sections"][0]["record_bytes"] = 68.into());
    assert!(e.contains("layer 1 section `gate`") && e.contains("record_bytes"), "{e}");
    let e = open_with(&|v| v["record_bytes"] = 68.into());
    assert!(e.contains("record_bytes 68 does not fit q4_1 rows and q8_0 columns"), "{e}");

    // A header with a valid crc that names other columns than the manifest: refused by name.
    let mut h = header.clone();
    h[56..60].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c::crc32c(&h[..80]);
    h[80..84].copy_from_slice(&crc.to_le_bytes());
    let mut bytes = fs::read(&ffn).unwrap();
    bytes[..84].copy_from_slice(&h);
    fs::write(&ffn, bytes).unwrap();
    let e = open_with(&|v| v["ffn"]["header_crc32c"] = crc.into());
    assert!(e.contains("ffn.bin") && e.contains("column_dtype does not match the manifest"), "{e}");
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
    for (kind, rd, cd, want, want_col) in [
        (LayoutKind::Bundled, RecordDType::Source, None, DType::F16, DType::F16),
        (LayoutKind::Split, RecordDType::Source, None, DType::F16, DType::F16),
        (LayoutKind::Bundled, RecordDType::Q8_0, None, DType::Q8_0, DType::Q8_0),
        (LayoutKind::Bundled, RecordDType::Source, Some(RecordDType::Q8_0), DType::F16, DType::Q8_0),
        (LayoutKind::Split, RecordDType::Source, Some(RecordDType::Q4_1), DType::F16, DType::Q4_1),
        (LayoutKind::Split, RecordDType::Q8_0, Some(RecordDType::F32), DType::Q8_0, DType::F32),
    ] {
        let out = tmp.path().join(format!("opt-{kind:?}-{want}-{want_col}.spike"));
        let s = layout::write(&model, &ck, &out, &ConvertOptions { column_dtype: cd, ..opts(kind, rd) }).unwrap();
        let rb = want.bytes_for(d as u64).unwrap();
        let cb = want_col.bytes_for(d as u64).unwrap();
        assert_eq!(s.neuron_bytes, rb + cb, "the fc1 bias stays in resident.bin");
        let lay = Layout::open(&out).unwrap();
        assert_eq!((lay.dtype(), lay.column_dtype()), (want, want_col));
        assert_eq!(lay.payload_bytes() as u64, rb + cb, "OPT records carry no bias");
        let records: Vec<u64> = s.sections.iter().map(|r| r.record_bytes).collect();
        assert_eq!(records, if kind == LayoutKind::Bundled { vec![rb + cb] } else { vec![rb, cb] });
        lay.verify().unwrap();
        lay.check_model(model.config(), None).unwrap();
        assert_eq!(lay.manifest().layers[0].sections.len(), if kind == LayoutKind::Split { 2 } else { 1 });
        for l in 0..model.config().n_layers {
            let rows = NeuronRows::from_model(&model, l).unwrap();
            for n in 0..f {
                let got = lay.decode_neuron(&lay.neuron_record(l, n).unwrap()).unwrap();
                let first = rows.first[n * d..(n + 1) * d].to_vec();
                let first = if want == DType::F16 { first } else { roundtrip(want, &first) };
                assert_eq!(bits(&got.first), bits(&first), "fc1 row, layer {l} neuron {n}");
                assert_eq!(bits(&got.second_col), bits(&roundtrip(want_col, &rows.second_t[n * d..(n + 1) * d])));
                assert_eq!(got.up, None);
            }
        }
        if want == DType::F16 {
            assert_eq!(s.max_abs_error_rows, 0.0, "f16 rows of an f16 source are copied");
        }
        if matches!(want_col, DType::F16 | DType::F32) {
            assert_eq!(s.max_abs_error_columns, 0.0, "{want_col} columns of an f16 source are exact");
        } else {
            assert!(s.max_abs_error_columns > 0.0);
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
        // The source is config.json then the safetensors files (docs/format.md), as traces identify it.
        assert_eq!(lay.manifest().source.len, {
            let mut n = fs::metadata(ck.join("config.json")).unwrap().len();
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

/// A manifest edited to list fewer resident tensors (and sealed again, as a deliberate edit would be) checks
/// nothing less: loading, as every command running the layout does, and verifying refuse it alike.
#[test]
fn a_manifest_listing_fewer_resident_tensors_is_refused_on_load_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, out) = converted(tmp.path());
    let mpath = out.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&mpath).unwrap()).unwrap();
    v["resident"]["tensors"].as_object_mut().unwrap().remove("output_norm.weight").unwrap();
    write_sealed(&mpath, &v);
    let want = "tensor `output_norm.weight` is not in the manifest's resident.tensors";
    let e = Layout::open(&out).unwrap().verify().unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    let e = Layout::load(&out).err().unwrap().to_string();
    assert!(e.contains("resident.bin") && e.contains(want), "{e}");
    v["resident"]["tensors"] = serde_json::json!({});
    write_sealed(&mpath, &v);
    assert!(Layout::load(&out).is_err(), "an empty list switches nothing off");
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

/// `share_resident`: a second layout of the same model links the first one's resident.bin (one inode, both
/// verify, same bytes); a layout of another model, or a damaged resident.bin, is not linked but written.
#[test]
fn a_second_layout_shares_an_identical_resident_file() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (path, model, bundled) = converted(tmp.path());
    let inode = |d: &Path| fs::metadata(d.join(layout::RESIDENT_FILE)).unwrap().ino();
    let split = tmp.path().join("split.spike");
    let share =
        ConvertOptions { share_resident: Some(bundled.clone()), ..opts(LayoutKind::Split, RecordDType::Source) };
    layout::write(&model, &path, &split, &share).unwrap();
    assert_eq!(inode(&split), inode(&bundled));
    Layout::open(&split).unwrap().verify().unwrap();
    Layout::open(&bundled).unwrap().verify().unwrap();

    // Another model (another seed): other bytes, so written, not linked.
    let other_tmp = tmp.path().join("other");
    fs::create_dir(&other_tmp).unwrap();
    let bytes = synth::llama_gguf(&SynthSpec::tiny_gguf(DType::Q4_1, 8)).unwrap();
    let other_path = other_tmp.join("tiny.gguf");
    fs::write(&other_path, bytes).unwrap();
    let other = Model::from_source(&Source::open(&other_path).unwrap()).unwrap();
    let out = tmp.path().join("other.spike");
    layout::write(&other, &other_path, &out, &share).unwrap();
    assert_ne!(inode(&out), inode(&bundled));
    Layout::open(&out).unwrap().verify().unwrap();

    // One byte changed in the file to share: written, not linked, and the new layout verifies.
    let copy = tmp.path().join("copy.spike");
    fs::create_dir(&copy).unwrap();
    fs::copy(bundled.join(layout::RESIDENT_FILE), copy.join(layout::RESIDENT_FILE)).unwrap();
    let len = fs::metadata(copy.join(layout::RESIDENT_FILE)).unwrap().len();
    flip(&copy.join(layout::RESIDENT_FILE), len / 2);
    let third = tmp.path().join("third.spike");
    let o = ConvertOptions { share_resident: Some(copy.clone()), ..opts(LayoutKind::Split, RecordDType::Source) };
    layout::write(&model, &path, &third, &o).unwrap();
    assert_ne!(inode(&third), inode(&copy));
    Layout::open(&third).unwrap().verify().unwrap();
}
