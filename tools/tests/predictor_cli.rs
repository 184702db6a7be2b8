//! `spike train-predictor` and `spike perplexity --predictor` end to end on checkpoints the tests generate.

mod common;

use std::path::{Path, PathBuf};

use common::{corpus, fail, json, ok, spike, synth, WORDS};

/// A corpus of `docs` sections separated by two blank lines, and a held-out text of other words.
fn texts(dir: &Path, docs: usize) -> (PathBuf, PathBuf) {
    let corpus = corpus(dir, docs);
    let held_out: String = (0..400).map(|i| format!("{} ", WORDS[(i * 11 + i / 7) % WORDS.len()])).collect();
    let eval = dir.join("eval.txt");
    std::fs::write(&eval, held_out).expect("write eval text");
    (corpus, eval)
}

fn trace(ck: &Path, corpus: &Path, out: &Path) {
    let o = spike()
        .arg("trace")
        .arg("-m")
        .arg(ck)
        .arg("-f")
        .arg(corpus)
        .args(["--tokens", "600", "--ctx", "48", "-o"])
        .arg(out)
        .output()
        .expect("run");
    ok(o, "trace");
}

/// `spike perplexity -m model -f eval -c 32 --predictor pred`, for more arguments to follow.
fn perplexity_with(model: &Path, eval: &Path, pred: &Path) -> std::process::Command {
    let mut c = spike();
    c.arg("perplexity").arg("-m").arg(model).arg("-f").arg(eval).args(["-c", "32", "--predictor"]).arg(pred);
    c
}
#[test]
fn train_a_predictor_on_a_relu_model_and_score_text_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = synth(dir.path(), "opt", 5, 256);
    let (corpus, eval) = texts(dir.path(), 16);
    let tr = dir.path().join("t.trace");
    trace(&ck, &corpus, &tr);
    let pred = dir.path().join("out/p.pred");
    let stdout = ok(
        spike()
            .arg("train-predictor")
            .arg(&tr)
            .args(["-o"])
            .arg(&pred)
            .args(["--rank", "8", "--rank-last", "1:16", "--epochs", "4", "--recall", "0.9"])
            .output()
            .expect("run"),
        "train-predictor",
    );
    let csv = pred.with_extension("csv");
    assert!(stdout.contains(&pred.display().to_string()) && stdout.contains(&csv.display().to_string()), "{stdout}");
    assert!(stdout.contains("mean recall"), "{stdout}");
    let table = std::fs::read_to_string(&csv).expect("csv");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "header and one row per layer: {table}");
    assert!(lines[0].starts_with("layer,rank,"), "{}", lines[0]);
    assert!(lines[1].starts_with("0,8,") && lines[2].starts_with("1,16,"), "ranks 8 then 16 for the last layer");
    let p = predictor::file::read(&pred).expect("a valid predictor file");
    assert_eq!(p.layers().len(), 2);
    assert!(p.layers().iter().all(|l| l.act_threshold == 0.0), "ReLU labels use threshold 0");

    let js = dir.path().join("ppl.json");
    let stdout = ok(
        perplexity_with(&ck, &eval, &pred).args(["--predictor-recall", "--json"]).arg(&js).output().expect("run"),
        "perplexity --predictor",
    );
    assert!(stdout.contains("realised active fraction") && stdout.contains("recall"), "{stdout}");
    let v = json(&js);
    let r = &v["predictor"];
    let frac = r["realised_active_fraction"].as_f64().expect("fraction");
    assert!(frac > 0.0 && frac < 1.0, "{frac}");
    assert_eq!(r["dram_bytes"].as_u64(), Some(p.dram_bytes() as u64));
    let recall = r["audit"]["recall"].as_f64().expect("audited recall");
    assert!((0.0..=1.0).contains(&recall));
    assert!(v["result"]["ppl"].as_f64().expect("ppl").is_finite());
}

#[test]
fn wrong_inputs_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (corpus, eval) = texts(dir.path(), 12);
    // A SiLU model's trace needs a definition of "active".
    let llama = synth(dir.path(), "llama", 3, 128);
    let tr = dir.path().join("silu.trace");
    trace(&llama, &corpus, &tr);
    let pred = dir.path().join("p.pred");
    let err = fail(spike().arg("train-predictor").arg(&tr).arg("-o").arg(&pred).output().expect("run"), "no labels");
    assert!(err.contains("--sparsity") && err.contains(&tr.display().to_string()), "{err}");
    assert!(!pred.exists());
    ok(
        spike()
            .arg("train-predictor")
            .arg(&tr)
            .arg("-o")
            .arg(&pred)
            .args(["--sparsity", "0.5", "--rank", "4", "--epochs", "2"])
            .output()
            .expect("run"),
        "train-predictor --sparsity",
    );
    // The predictor belongs to the SiLU model, not to a ReLU one of other widths.
    let opt = synth(dir.path(), "opt", 4, 256);
    let err = fail(perplexity_with(&opt, &eval, &pred).output().expect("run"), "foreign predictor");
    assert!(err.contains(&pred.display().to_string()) && err.contains("d_ffn is 128"), "{err}");
    // A damaged predictor file.
    let mut bytes = std::fs::read(&pred).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = dir.path().join("bad.pred");
    std::fs::write(&bad, bytes).expect("write");
    let err = fail(perplexity_with(&llama, &eval, &bad).output().expect("run"), "damaged predictor");
    assert!(err.contains(&bad.display().to_string()) && err.contains("checksum"), "{err}");
}
