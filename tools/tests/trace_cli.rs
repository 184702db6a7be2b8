//! `spike trace`, `trace-stats`, `calibrate` and `perplexity --sparsity` end to end on checkpoints the tests
//! generate.

mod common;

use std::path::Path;
use std::process::Command;

use common::{corpus, fail, json, ok, spike, synth};

/// `spike <cmd> -m <model> -f <text>`: how every run on a model and a corpus here starts.
fn on_model(cmd: &str, model: &Path, text: &Path) -> Command {
    let mut c = spike();
    c.arg(cmd).arg("-m").arg(model).arg("-f").arg(text);
    c
}

#[test]
fn trace_calibrate_stats_and_oracle_perplexity_on_a_silu_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = synth(dir.path(), "llama", 3, 256);
    let text = corpus(dir.path(), 12);
    let trace = dir.path().join("t.trace");
    let stdout = ok(
        on_model("trace", &ck, &text).args(["--tokens", "300", "--ctx", "48", "-o"]).arg(&trace).output().expect("run"),
        "trace",
    );
    assert!(stdout.contains(&trace.display().to_string()) && stdout.contains("300 tokens"), "{stdout}");
    assert!(trace.exists());
    // No spill or temporary files are left beside the trace.
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).expect("ls").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with('.')), "{left:?}");

    let thr = dir.path().join("thr.json");
    ok(
        spike().arg("calibrate").arg(&trace).args(["--sparsity", "0.6", "-o"]).arg(&thr).output().expect("run"),
        "calibrate",
    );
    let t = json(&thr);
    assert_eq!(t["target_sparsity"].as_f64(), Some(0.6));
    for s in t["train_sparsity"].as_array().expect("array") {
        assert!((s.as_f64().expect("f64") - 0.6).abs() < 0.01, "{s}");
    }

    let stats = dir.path().join("stats");
    let stdout = ok(
        spike()
            .arg("trace-stats")
            .arg(&trace)
            .arg("--thresholds")
            .arg(&thr)
            .args(["--sparsity", "0.8", "--k-max", "4", "-o"])
            .arg(&stats)
            .output()
            .expect("run"),
        "trace-stats",
    );
    assert!(stdout.contains("reuse") && stdout.contains("co-activation"), "{stdout}");
    for f in ["sparsity.csv", "reuse.csv", "coactivation.csv", "coactivation-summary.csv", "summary.txt"] {
        assert!(stats.join(f).exists(), "{f}");
    }
    let reuse = std::fs::read_to_string(stats.join("reuse.csv")).expect("reuse.csv");
    // Two settings x (2 layers + the mean) x 4 window lengths, plus the header.
    assert_eq!(reuse.lines().count(), 1 + 2 * 3 * 4, "{reuse}");
    let hot = json(&stats.join("hot-thr.json"));
    assert_eq!(hot["layers"].as_array().map(Vec::len), Some(2));
    assert_eq!(hot["layers"][0]["neurons"].as_array().map(Vec::len), Some(256));
    assert!(stats.join("hot-s0.80.json").exists());

    let ppl = dir.path().join("ppl.json");
    ok(
        on_model("perplexity", &ck, &text)
            .args(["-c", "32", "--sparsity", "oracle:0.6", "--thresholds"])
            .arg(&thr)
            .arg("--json")
            .arg(&ppl)
            .output()
            .expect("run"),
        "perplexity oracle",
    );
    let v = json(&ppl);
    let realised = v["sparsity"]["realised_sparsity"].as_f64().expect("realised sparsity");
    assert!((realised - 0.6).abs() < 0.1, "{realised}");
    assert!(v["sparsity"]["stats"]["active"].as_u64().is_some_and(|a| a > 0));

    // Calibrating on the fly from the trace gives the same thresholds.
    let ppl2 = dir.path().join("ppl2.json");
    ok(
        on_model("perplexity", &ck, &text)
            .args(["-c", "32", "--sparsity", "oracle:0.6", "--trace"])
            .arg(&trace)
            .arg("--json")
            .arg(&ppl2)
            .output()
            .expect("run"),
        "perplexity oracle from a trace",
    );
    assert_eq!(json(&ppl2)["result"], v["result"]);

    // A trace or thresholds of another model, and modes that do not fit the model, are clear errors.
    let other = synth(dir.path(), "llama", 4, 256);
    let err = fail(
        on_model("perplexity", &other, &text)
            .args(["-c", "32", "--sparsity", "oracle:0.6", "--trace"])
            .arg(&trace)
            .output()
            .expect("run"),
        "a trace of another model",
    );
    assert!(err.contains(&trace.display().to_string()) && err.contains("another model"), "{err}");
    let err = fail(
        on_model("perplexity", &other, &text)
            .args(["-c", "32", "--sparsity", "oracle:0.6", "--thresholds"])
            .arg(&thr)
            .output()
            .expect("run"),
        "thresholds of another model",
    );
    assert!(err.contains(&thr.display().to_string()) && err.contains("sha256"), "{err}");
    let err = fail(
        on_model("perplexity", &ck, &text).args(["--sparsity", "oracle:relu"]).output().expect("run"),
        "oracle:relu on a SiLU model",
    );
    assert!(err.contains("ReLU"), "{err}");
    let err = fail(
        on_model("perplexity", &ck, &text).args(["--sparsity", "oracle:0.6"]).output().expect("run"),
        "oracle without thresholds",
    );
    assert!(err.contains("--thresholds") && err.contains("--trace"), "{err}");
    let err = fail(
        on_model("trace", &ck, &text)
            .args(["--tokens", "1000000", "-o"])
            .arg(dir.path().join("x.trace"))
            .output()
            .expect("run"),
        "more tokens than the corpus has",
    );
    assert!(err.contains("fewer than"), "{err}");
    assert!(!dir.path().join("x.trace").exists());
}

#[test]
fn relu_oracle_perplexity_equals_dense() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = synth(dir.path(), "opt", 5, 256);
    let text = corpus(dir.path(), 6);
    let run = |mode: &str, name: &str| -> serde_json::Value {
        let p = dir.path().join(name);
        ok(
            on_model("perplexity", &ck, &text)
                .args(["-c", "32", "--sparsity", mode, "--json"])
                .arg(&p)
                .output()
                .expect("run"),
            mode,
        );
        json(&p)
    };
    let dense = run("dense", "dense.json");
    let oracle = run("oracle:relu", "oracle.json");
    let (a, b) = (dense["result"]["ppl"].as_f64().expect("ppl"), oracle["result"]["ppl"].as_f64().expect("ppl"));
    // Threshold 0 skips only neurons whose ReLU output is 0: the same function, up to f32 summation order.
    assert!((a - b).abs() <= 1e-4 * a, "dense {a} vs oracle {b}");
    let realised = oracle["sparsity"]["realised_sparsity"].as_f64().expect("realised");
    assert!(realised > 0.3, "the random ReLU model is sparse: {realised}");
    assert_eq!(dense["sparsity"]["mode"], "dense");

    // A ReLU trace calibrates to threshold 0 whatever the sparsity asked.
    let trace = dir.path().join("opt.trace");
    ok(on_model("trace", &ck, &text).args(["--tokens", "120", "-o"]).arg(&trace).output().expect("run"), "trace");
    let thr = dir.path().join("relu.json");
    let stdout = ok(
        spike().arg("calibrate").arg(&trace).args(["--sparsity", "0.9", "-o"]).arg(&thr).output().expect("run"),
        "calibrate",
    );
    assert!(stdout.contains("ReLU"), "{stdout}");
    let t = json(&thr);
    assert!(t["thresholds"].as_array().expect("thresholds").iter().all(|x| x.as_f64() == Some(0.0)));
    assert_eq!(t["method"], "relu");
}
