//! `spike bench --layout` end to end on a generated model: every row of the table runs, on the bundled and the
//! split layout, and the per-token CSV obeys what each row means (naive reads every neuron every token, `all`
//! reads nothing once loaded, hybrid reads the neurons its budget does not hold, overlap changes when reads
//! happen, not what is read).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spike_flash::layout::Layout;

mod common;

use common::{ok, spike};

/// A random Llama (SiLU) checkpoint converted to a layout of `kind` (bundled or split).
fn layout(dir: &Path, kind: &str) -> PathBuf {
    let ck = dir.join("ck");
    if !ck.exists() {
        let out = spike()
            .args(["synth", "--arch", "llama", "--layers", "8", "--d-model", "64", "--ffn", "256", "--heads", "4"])
            .args(["--vocab", "320", "--dtype", "f32", "--seed", "11", "-o"])
            .arg(&ck)
            .output()
            .expect("run spike synth");
        ok(out, "synth");
    }
    let lay = dir.join(format!("{kind}.spike"));
    let out = spike().arg("convert").arg("-m").arg(&ck).arg("-o").arg(&lay).args(["--layout", kind]).output();
    ok(out.expect("run spike convert"), "convert");
    lay
}

/// The CSV's rows, by label, as maps from column to value.
fn rows_by_label(csv: &Path) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut r = csv::Reader::from_path(csv).expect("open the bench CSV");
    let headers = r.headers().expect("headers").clone();
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.expect("a CSV record");
        let row: BTreeMap<String, String> =
            headers.iter().map(String::from).zip(rec.iter().map(String::from)).collect();
        out.entry(row["label"].clone()).or_default().push(row);
    }
    out
}

/// Runs `spike bench` with `args`, the prompts from `text` and the per-token rows to `csv`; checks that the
/// table has a line for each of `rows` and returns it.
fn bench(args: &[&std::ffi::OsStr], text: &Path, csv: &Path, rows: &[String]) -> String {
    let out = spike().arg("bench").args(args).arg("--text").arg(text).arg("--csv").arg(csv).output();
    let stdout = ok(out.expect("run spike bench"), "bench");
    for name in rows {
        assert!(stdout.contains(&format!("| {name} |")), "no table row {name}:\n{stdout}");
    }
    stdout
}

fn num(row: &BTreeMap<String, String>, col: &str) -> f64 {
    row[col].parse().unwrap_or_else(|_| panic!("column {col}: `{}` is not a number", row[col]))
}

#[test]
fn bench_rows_on_bundled_and_split_layouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundled = layout(dir.path(), "bundled");
    let split = layout(dir.path(), "split");
    let lay = Layout::open(&bundled).expect("open the layout");
    let (n_layers, f) = (lay.manifest().layers.len(), lay.manifest().model.d_ffn);
    let payload = lay.payload_bytes();
    // Room for the resident part, the read buffers of an overlapped row (staging, prefetch and two backends'
    // scratch: a layer each, plus a few pages of alignment), and a quarter of the FFN: hybrid, without overlap,
    // pins about half of each layer.
    let budget = lay.manifest().resident.len as usize + 4 * (f * payload + 6 * 4096) + n_layers * f * payload / 4;
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog and runs far away. ".repeat(20)).unwrap();
    let csv = dir.path().join("bench.csv");
    let (prompts, gen) = (2usize, 3usize);
    let labels = ["naive", "naive+overlap", "hybrid", "all"];
    let names: Vec<String> = labels.iter().flat_map(|l| [l.to_string(), format!("{l} (split)")]).collect();
    let (gen_s, prompts_s, budget_s) = (gen.to_string(), prompts.to_string(), budget.to_string());
    let args = ["--layout".as_ref(), bundled.as_os_str(), "--split-layout".as_ref(), split.as_os_str()];
    let rows = ["--rows", "naive,naive+overlap,hybrid,all", "--prompt", "8", "--gen", &gen_s, "--prompts", &prompts_s];
    let args: Vec<&std::ffi::OsStr> = args
        .into_iter()
        .chain(rows.iter().map(|a| a.as_ref()))
        .chain(["--budget".as_ref(), budget_s.as_ref()])
        .collect();
    bench(&args, &text, &csv, &names);
    assert!(dir.path().join("bench.summary.csv").exists());
    let by = rows_by_label(&csv);
    assert_eq!(by.len(), 2 * labels.len(), "{:?}", by.keys().collect::<Vec<_>>());
    for (label, rows) in &by {
        assert_eq!(rows.len(), prompts * gen, "{label}: one record per decoded token");
        let every = (n_layers * f) as f64;
        for r in rows {
            let (read, active, hit) = (num(r, "neurons_read"), num(r, "neurons_active"), num(r, "hit_rate"));
            assert_eq!(active, every, "{label}: every neuron is selected");
            if label.starts_with("naive") {
                assert_eq!(read, every, "{label}: the whole FFN is read every token");
                assert_eq!(hit, 0.0, "{label}");
                assert!(num(r, "bytes_read") >= every * payload as f64, "{label}: {r:?}");
            } else if label.starts_with("all") {
                assert_eq!((read, num(r, "bytes_read")), (0.0, 0.0), "{label}: everything is resident");
            } else {
                assert!(read > 0.0 && read < every, "{label}: the budget pins a part of each layer: {r:?}");
                assert!(hit > 0.0 && hit < 1.0, "{label}");
            }
        }
    }
}

/// The oracle rows of the bench and the read alignment, on a SiLU model with thresholds calibrated on its own
/// trace: the oracle selects a part of each layer and reads exactly that (a cache only lowers what is read);
/// reading whole 512-byte sectors instead of 4 KiB pages reads fewer bytes for the same records and changes
/// nothing in the output; an alignment that is not a power of two is refused by name.
#[test]
fn oracle_rows_and_read_alignment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ck, text, thr) = common::calibrated_llama(dir.path(), 5, 200);
    let lay = dir.path().join("l.spike");
    ok(spike().arg("convert").arg("-m").arg(&ck).arg("-o").arg(&lay).output().expect("run convert"), "convert");
    let l = Layout::open(&lay).expect("open the layout");
    let (n_layers, f, payload) = (l.manifest().layers.len(), l.manifest().model.d_ffn, l.payload_bytes());
    let every = (n_layers * f) as f64;

    // The bench's oracle rows beside naive.
    let budget = l.manifest().resident.len as usize + 2 * (f * payload + 6 * 4096) + n_layers * f * payload / 4;
    let csv = dir.path().join("bench.csv");
    let budget = budget.to_string();
    let args: Vec<&std::ffi::OsStr> = ["--layout".as_ref(), lay.as_os_str(), "--oracle".as_ref(), thr.as_os_str()]
        .into_iter()
        .chain(
            ["--rows", "naive,oracle,oracle+hybrid", "--prompt", "8", "--gen", "4", "--prompts", "2"]
                .map(|a| a.as_ref()),
        )
        .chain(["--budget".as_ref(), budget.as_ref()])
        .collect();
    bench(&args, &text, &csv, &["naive", "oracle", "oracle+hybrid"].map(String::from));
    let by = rows_by_label(&csv);
    let mut hits = 0.0;
    for (label, rows) in &by {
        assert_eq!(rows.len(), 8, "{label}");
        for r in rows {
            let (read, active) = (num(r, "neurons_read"), num(r, "neurons_active"));
            match label.as_str() {
                "naive" => assert_eq!((active, read), (every, every), "naive selects and reads every neuron"),
                "oracle" => {
                    assert!(active > 0.0 && active < every, "the oracle selects a part: {r:?}");
                    assert_eq!(read, active, "without a cache the oracle reads what it selects: {r:?}");
                }
                _ => {
                    assert!(active > 0.0 && active < every && read <= active, "{label}: {r:?}");
                    hits += num(r, "hit_rate");
                }
            }
        }
    }
    assert!(hits > 0.0, "the hybrid cache serves some of the oracle's neurons");

    // The same oracle run read in 4 KiB pages and in 512-byte sectors.
    let generate = |align: &str, trace_out: &Path| {
        let out = spike()
            .args(["generate", "-p", "the quick brown fox", "-n", "6", "--ignore-eos", "--layout"])
            .arg(&lay)
            .arg("--oracle")
            .arg(&thr)
            .args(["--io-align", align, "--trace-out"])
            .arg(trace_out)
            .output()
            .expect("run spike generate");
        ok(out, "generate")
    };
    let (t4k, t512) = (dir.path().join("a4k.csv"), dir.path().join("a512.csv"));
    let (text4k, text512) = (generate("4096", &t4k), generate("512", &t512));
    assert_eq!(text4k, text512, "the alignment changes what is read, not what is computed");
    let (a, b) = (rows_by_label(&t4k), rows_by_label(&t512));
    let steps = |m: &BTreeMap<String, Vec<BTreeMap<String, String>>>| -> Vec<BTreeMap<String, String>> {
        m.values().flatten().cloned().collect()
    };
    let (a, b) = (steps(&a), steps(&b));
    assert_eq!(a.len(), b.len());
    let (mut read4k, mut read512) = (0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(num(x, "bytes_requested"), num(y, "bytes_requested"), "same records: {x:?} {y:?}");
        assert!(num(y, "bytes_read") <= num(x, "bytes_read"), "{x:?} {y:?}");
        assert!(num(y, "bytes_read") >= num(y, "bytes_requested"), "{y:?}");
        read4k += num(x, "bytes_read");
        read512 += num(y, "bytes_read");
    }
    assert!(read512 < read4k, "sectors read less than pages: {read512} vs {read4k}");

    let err = common::fail(
        spike()
            .args(["generate", "-p", "the", "-n", "1", "--layout"])
            .arg(&lay)
            .args(["--io-align", "1000"])
            .output()
            .expect("run"),
        "generate --io-align 1000",
    );
    assert!(err.contains("io align 1000"), "{err}");
}
