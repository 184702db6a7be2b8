//! `spike sweep` end to end on a generated model: a small spec run whole, and as 2 shards with GNU parallel
//! then merged, gives the same points, settings and byte counts (timings differ); shards of different specs
//! are refused; a sweep stopped by a failing point resumes without rerunning the points it finished; bad
//! specs are refused by key before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{fail, ok, spike};
use experiments::sweep::METRICS;

/// Metrics that depend only on the settings, the model and the prompts: byte and neuron counts, shares and
/// DRAM sizes. They must agree between runs; times need not.
const EXACT: [&str; 12] = [
    "tokens",
    "bytes_read",
    "neurons_read",
    "mb_read_per_token",
    "reads_per_token",
    "window_held_share",
    "new_per_token_share",
    "window_held_mb",
    "active_share",
    "slots_per_layer",
    "dram_caches_bytes",
    "record_bytes",
];

/// The setting columns of raw.csv.
const SETTINGS: [&str; 17] = [
    "point",
    "model",
    "planted",
    "layout",
    "dtype",
    "selection",
    "backend",
    "align",
    "queue_depth",
    "max_merge",
    "budget",
    "cache",
    "window",
    "prompts",
    "prompt_tokens",
    "gen_tokens",
    "budget_decides",
];

/// A SiLU checkpoint, the text its prompts come from, and thresholds calibrated on its own trace `t.trace` (so
/// that the oracle picks a part of each layer and a window has something to hold).
fn model(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    common::calibrated_llama(dir, 7, 160)
}

/// A spec over `grid` (TOML lines of the [grid] table) with the oracle of `thr`.
fn write_spec(path: &Path, ck: &Path, text: &Path, thr: &Path, generate: usize, fixed: &str, grid: &str) {
    let spec = format!(
        "name = \"test\"\n[source]\nmodel = {ck:?}\n[prompts]\ntext = {text:?}\ncount = 2\ntokens = 8\n\
         generate = {generate}\n[fixed]\nselection = \"oracle:{}\"\n{fixed}\n[grid]\n{grid}\n",
        thr.display()
    );
    std::fs::write(path, spec).expect("write the spec");
}

/// raw.csv's rows keyed by (point id, metric), each a map from column to value.
fn rows(dir: &Path) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(dir.join("raw.csv")).expect("open raw.csv");
    let headers = r.headers().expect("headers").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("a CSV record");
            let row: BTreeMap<String, String> =
                headers.iter().map(String::from).zip(rec.iter().map(String::from)).collect();
            ((row["point_id"].clone(), row["metric"].clone()), row)
        })
        .collect()
}

fn sweep(spec: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = spike();
    c.arg("sweep").arg(spec).arg("-o").arg(out).args(extra);
    c
}

#[test]
fn sharded_with_gnu_parallel_merges_to_the_unsharded_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ck, text, thr) = model(d);
    let spec = d.join("spec.toml");
    write_spec(
        &spec,
        &ck,
        &text,
        &thr,
        4,
        "budget = \"none\"",
        "layout = [\"bundled\", \"split\"]\nwindow = [0, 1, 3]",
    );

    let whole = d.join("whole");
    let stdout = ok(sweep(&spec, &whole, &[]).output().expect("run sweep"), "sweep");
    assert!(stdout.contains("6 of 6 points (6 ran now, 0 already done)"), "{stdout}");
    assert!(stdout.contains("window-tradeoff.png"), "no chart drawn:\n{stdout}");
    for f in ["raw.csv", "machine.json", "sweep.json", "spec.toml", "window-tradeoff.svg", "window-usage.png"] {
        assert!(whole.join(f).exists(), "{f} missing");
    }
    let a = rows(&whole);
    assert_eq!(a.len(), 6 * METRICS.len(), "one row per point and metric");
    // A window holds more as it grows; every row says it was measured, not planted, with no budget deciding.
    let metric = |rows: &BTreeMap<(String, String), BTreeMap<String, String>>, layout: &str, k: &str, m: &str| {
        rows.values()
            .find(|r| r["layout"] == layout && r["window"] == k && r["metric"] == m)
            .map(|r| r["value"].parse::<f64>().expect("a number"))
            .expect("the row exists")
    };
    assert_eq!(metric(&a, "bundled", "0", "window_held_share"), 0.0);
    assert!(metric(&a, "bundled", "3", "window_held_share") > metric(&a, "bundled", "1", "window_held_share"));
    assert!(metric(&a, "bundled", "3", "new_per_token_share") < metric(&a, "bundled", "0", "new_per_token_share"));
    assert!(a.values().all(|r| r["planted"] == "false" && r["budget_decides"] == "false"));

    // Resuming a finished sweep runs nothing.
    let again = ok(sweep(&spec, &whole, &["--no-plot"]).output().expect("run sweep"), "sweep again");
    assert!(again.contains("(0 ran now, 6 already done)"), "{again}");

    if Command::new("parallel").arg("--version").output().is_err() {
        eprintln!("SKIPPED the sharded half: GNU parallel is not installed (apt-get install parallel)");
        return;
    }
    let shard_dir = |i: usize| d.join(format!("shard-{i}"));
    let out = Command::new("parallel")
        .args(["--halt", "now,fail=1", env!("CARGO_BIN_EXE_spike"), "--threads", "1", "sweep"])
        .arg(&spec)
        .arg("-o")
        .arg(d.join("shard-{}"))
        .args(["--shard", "{}/2", "--no-plot", ":::", "1", "2"])
        .output()
        .expect("run GNU parallel");
    ok(out, "parallel shards");
    let merged = d.join("merged");
    let out = spike().args(["sweep", "merge"]).arg(shard_dir(1)).arg(shard_dir(2)).arg("-o").arg(&merged).output();
    let stdout = ok(out.expect("run merge"), "merge");
    assert!(stdout.contains("6 of 6 points"), "{stdout}");
    let m = rows(&merged);
    assert_eq!(a.keys().collect::<Vec<_>>(), m.keys().collect::<Vec<_>>(), "the same points and metrics");
    for (key, ra) in &a {
        let rm = &m[key];
        for col in SETTINGS {
            assert_eq!(ra[col], rm[col], "{key:?}: column {col}");
        }
        if EXACT.contains(&key.1.as_str()) {
            assert_eq!(ra["value"], rm["value"], "{key:?}: a count that must not depend on sharding");
        }
    }
    let info = common::json(&merged.join("sweep.json"));
    assert_eq!(info["points_done"], 6);
    assert_eq!(info["spec_sha256"], common::json(&shard_dir(1).join("sweep.json"))["spec_sha256"]);

    // A shard of another spec (another prompt length) is refused by name, and nothing is written.
    let other = d.join("other.toml");
    write_spec(&other, &ck, &text, &thr, 3, "budget = \"none\"", "window = [0]");
    ok(sweep(&other, &d.join("other"), &["--no-plot"]).output().expect("run sweep"), "other sweep");
    let bad = d.join("bad-merge");
    let out = spike().args(["sweep", "merge"]).arg(shard_dir(1)).arg(d.join("other")).arg("-o").arg(&bad).output();
    let err = fail(out.expect("run merge"), "merging shards of two specs");
    assert!(err.contains("another spec"), "{err}");
    assert!(!bad.exists(), "a refused merge writes nothing");
}

#[test]
fn a_failed_point_resumes_without_rerunning_done_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ck, text, thr) = model(d);
    let spec = d.join("spec.toml");
    // 1000 bytes cannot hold the resident tensors: the third point (budget 1000, window 1) fails.
    write_spec(&spec, &ck, &text, &thr, 3, "", "budget = [\"none\", \"1000\"]\nwindow = [1, 2]");
    let out_dir = d.join("out");
    let err = fail(sweep(&spec, &out_dir, &[]).output().expect("run sweep"), "a sweep with a failing point");
    assert!(err.contains("sweep point 2") && err.contains("budget=1000"), "{err}");
    let before = rows(&out_dir);
    let done: std::collections::BTreeSet<&String> = before.values().map(|r| &r["point"]).collect();
    assert_eq!(done.into_iter().cloned().collect::<Vec<_>>(), ["0", "1"], "the points before the failure are kept");

    // Fixed: a budget that holds the model. The done points keep their rows (their timings too: not rerun).
    write_spec(&spec, &ck, &text, &thr, 3, "", "budget = [\"none\", \"200%\"]\nwindow = [1, 2]");
    let stdout = ok(sweep(&spec, &out_dir, &[]).output().expect("run sweep"), "resumed sweep");
    assert!(stdout.contains("(2 ran now, 2 already done)"), "{stdout}");
    let after = rows(&out_dir);
    assert_eq!(after.len(), 4 * METRICS.len());
    for (key, row) in &before {
        assert_eq!(&after[key], row, "{key:?} changed: the point ran again");
    }

    // A folder written before a metric existed: point 0 lacks `prompt_perplexity`. It runs again, and its rows
    // replace the old ones instead of standing beside them.
    let raw = out_dir.join("raw.csv");
    let text = std::fs::read_to_string(&raw).expect("read raw.csv");
    let kept: Vec<&str> =
        text.lines().filter(|l| !(l.starts_with("test,0,") && l.contains(",prompt_perplexity,"))).collect();
    std::fs::write(&raw, kept.join("\n") + "\n").expect("write raw.csv");
    let stdout = ok(sweep(&spec, &out_dir, &["--no-plot"]).output().expect("run sweep"), "sweep of an older folder");
    assert!(stdout.contains("(1 ran now, 3 already done)"), "{stdout}");
    let lines = std::fs::read_to_string(&raw).expect("read raw.csv").lines().count();
    assert_eq!(lines, 1 + 4 * METRICS.len(), "each point's metrics once");
}

#[test]
fn bad_specs_are_refused_by_key_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let text = common::corpus(d, 2);
    let spec = d.join("spec.toml");
    let out_dir = d.join("out");
    let base = format!(
        "[source]\nmodel = \"nowhere.gguf\"\n[prompts]\ntext = {text:?}\ncount = 1\ntokens = 4\ngenerate = 2\n"
    );
    for (extra, key) in [
        ("[grid]\nwindw = [1]", "grid.windw"),
        ("[grid]\nbudget = [\"lots\"]", "grid.budget"),
        ("[fixed]\ncache = \"lru\"\n[grid]\nwindow = [1]", "fixed.cache"),
        ("[grid]\nwindow = [1]", "source.model"),
        ("[fixed]\nselection = \"oracle:missing.json\"", "source.model"),
    ] {
        std::fs::write(&spec, format!("{base}{extra}\n")).expect("write the spec");
        let err = fail(sweep(&spec, &out_dir, &[]).output().expect("run sweep"), extra);
        assert!(err.contains(key), "{extra}: {err}");
        assert!(!out_dir.exists(), "{extra}: a refused spec writes nothing");
    }
    let out = spike().args(["sweep", "merge"]).arg(d).arg("-o").arg(d.join("m")).output();
    let err = fail(out.expect("run merge"), "merging a folder that is no sweep");
    assert!(err.contains("not a sweep output"), "{err}");
}

#[test]
fn every_chart_and_the_report_from_one_sweep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ck, text, _) = model(d);
    let device = d.join("device");
    let out = spike()
        .args(["profile-device", "--dir"])
        .arg(d)
        .args(["--file-size", "4M", "--chunks", "4K,64K", "--depths", "1,4", "--seconds-per-point", "0.02"])
        .args(["--rounds", "1", "--out"])
        .arg(&device)
        .output();
    ok(out.expect("run profile-device"), "profile-device");
    let spec = d.join("spec.toml");
    let toml = format!(
        "name = \"all\"\n[source]\nmodel = {ck:?}\n[prompts]\ntext = {text:?}\ncount = 2\ntokens = 8\ngenerate = 3\n\
         [train]\ntrace = {:?}\nepochs = 2\n[fixed]\nbudget = \"none\"\nprofile = {:?}\n\
         [[grid]]\nlayout = [\"bundled\", \"split\"]\nselection = [\"all\"]\nwindow = [0, 5]\n\
         [[grid]]\nselection = [\"oracle\"]\nsparsity = [0.5, 0.7]\n\
         [[grid]]\nselection = [\"predictor\"]\nsparsity = [0.6]\nrank = [4, 8]\n",
        d.join("t.trace"),
        device.join("device-profile.json")
    );
    std::fs::write(&spec, toml).expect("write the spec");
    let out_dir = d.join("out");
    let stdout = ok(sweep(&spec, &out_dir, &[]).output().expect("run sweep"), "sweep");
    assert!(stdout.contains("8 of 8 points"), "{stdout}");
    for chart in experiments::sweep::plot::CHARTS {
        for ext in ["png", "svg"] {
            let f = out_dir.join(format!("{chart}.{ext}"));
            let len = std::fs::metadata(&f).map_or(0, |m| m.len());
            assert!(len > 0, "{} missing or empty:\n{stdout}", f.display());
        }
    }
    // The predictors' validation metrics: one row per layer and a mean, for each rank.
    let text_csv = std::fs::read_to_string(out_dir.join("raw.csv")).expect("read raw.csv");
    let per_layer = text_csv.lines().filter(|l| l.contains(",valid_recall,")).count();
    assert_eq!(per_layer, 2 * 3, "2 ranks x (2 layers + the mean)");
    let tokens = std::fs::read_to_string(out_dir.join("tokens.csv")).expect("read tokens.csv");
    assert_eq!(tokens.lines().count(), 1 + 8 * 2 * 3, "a header and every decoded token");

    let out = spike().arg("report").arg(&out_dir).output();
    let stdout = ok(out.expect("run report"), "report");
    assert!(stdout.contains("REPORT.md"), "{stdout}");
    let md = std::fs::read_to_string(out_dir.join("REPORT.md")).expect("read REPORT.md");
    for part in ["Windowing", "bundling", "predictor", "Perplexity vs sparsity", "cost model", "window-usage.svg"] {
        assert!(md.contains(part), "REPORT.md lacks {part}:\n{md}");
    }
    assert!(md.contains(&format!("spike sweep {} -o {}", spec.display(), out_dir.display())), "{md}");
    // A report of a folder without sweeps says so.
    let err = fail(spike().arg("report").arg(d.join("device")).output().expect("run report"), "report of no sweep");
    assert!(err.contains("no sweep folders"), "{err}");
}
