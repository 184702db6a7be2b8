//! The tiny planted preset end to end (`spike synth --preset tiny --planted`, `spike trace`): its measured
//! ReLU sparsity on a fixed English text lies in a band derived from the plan, its active sets persist from
//! token to token beyond what independent tokens would give, and the same seed writes byte-identical files.
//! The activations are counted straight from the trace, not taken from the plan or from trace-stats.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, spike};
use predictor::trace::Trace;
use spike_flash::model::planted::PlanFile;

const SEED_PLANTED: &str = "7";
const SEED_OTHER: &str = "8";

/// The committed first plan.
fn plan_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/plans/opt-planted-v1.toml")
}

/// Plain English prose, written for this test (not the calibration or held-out texts of the report).
const TEXT: &str = "The old harbour town wakes slowly in winter. Before the sun is up, the bakers light their \
ovens and the smell of bread drifts down the narrow streets toward the water. Fishermen check their nets by \
lamplight, talking quietly about the weather and the price of fuel, while gulls wait on the roofs for \
whatever falls from the boats. By eight o'clock the school bus climbs the hill, and the shopkeepers sweep \
the pavement in front of their doors. Visitors are rare at this time of year, so the cafes keep short hours \
and the owners take turns to travel inland to see their families. In the afternoon the wind rises and the \
sea turns grey; the ferry to the island may not sail, and people who planned to cross sit in the waiting \
room reading newspapers and watching the clock. When the lights come on in the evening, the town looks \
smaller than it is, a handful of windows between the dark hills and the darker water. Somebody plays the \
piano in the hall behind the church, practising the same slow piece again and again, and the notes carry \
across the square to the men standing outside the inn. Later the rain begins, steady and cold, and by \
midnight only the lighthouse is awake, turning its long white beam over the empty bay.";

fn synth(dir: &Path, name: &str, seed: &str) -> PathBuf {
    let out_dir = dir.join(name);
    let out = spike()
        .args(["synth", "--arch", "opt", "--preset", "tiny", "--planted"])
        .arg(plan_path())
        .args(["--seed", seed, "-o"])
        .arg(&out_dir)
        .output()
        .expect("run spike synth");
    let stdout = ok(out, "spike synth --preset tiny --planted");
    assert!(stdout.contains("planted OPT checkpoint (plan opt-planted-v1"), "{stdout}");
    out_dir
}

#[test]
fn tiny_planted_model_is_sparse_persistent_and_reproducible() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = synth(dir.path(), "a-planted", SEED_PLANTED);
    let b = synth(dir.path(), "b-planted", SEED_PLANTED);
    let c = synth(dir.path(), "c-planted", SEED_OTHER);
    for f in ["model.safetensors", "config.json", "planted.json", "tokenizer.json"] {
        let read = |d: &Path| std::fs::read(d.join(f)).expect("read a written file");
        assert!(read(&a) == read(&b), "{f}: the same seed wrote different bytes");
    }
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).expect("weights");
    assert!(weights(&a) != weights(&c), "another seed wrote the same weights");
    let config = std::fs::read_to_string(a.join("config.json")).expect("config.json");
    assert!(config.contains("\"spike_planted\"") && config.contains("opt-planted-v1"), "{config}");

    let text = dir.path().join("harbour.txt");
    std::fs::write(&text, TEXT).expect("write the text");
    let trace = dir.path().join("tiny-planted.trace");
    let out = spike()
        .args(["trace", "-m"])
        .arg(&a)
        .arg("-f")
        .arg(&text)
        .args(["--split", "file", "--tokens", "600", "-o"])
        .arg(&trace)
        .output()
        .expect("run spike trace");
    ok(out, "spike trace");

    // The plan's neurons fire with mean probability p under unit-normal pre-activations; real text is not
    // a stream of independent normal inputs (repeated tokens, a non-zero mean embedding), so the band allows
    // a factor of 2 either way: an independent check that the construction plants sparsity of the right
    // order, which a sign error, a lost bias or a mis-scaled layer would break.
    let plan = PlanFile::load(&plan_path()).expect("plan");
    let p = plan.plan.activity.mean_active;
    let (lo, hi) = (1.0 - 2.0 * p, 1.0 - p / 2.0);
    let t = Trace::open(&trace).expect("open the trace");
    let n_layers = t.meta().n_layers;
    for l in 0..n_layers {
        let acts = t.layer_acts(l).expect("layer activations");
        let (tokens, neurons) = acts.dim();
        let zero = acts.iter().filter(|&&v| v == 0.0).count() as f64 / (tokens * neurons) as f64;
        assert!((lo..=hi).contains(&zero), "layer {l}: sparsity {zero:.4} outside [{lo:.4}, {hi:.4}]");

        // Persistence: of the neurons active at a token, the share active at the previous token, against
        // what independent tokens with the same per-neuron frequencies would give.
        let active = acts.mapv(|v| v > 0.0);
        let freq: Vec<f64> =
            active.columns().into_iter().map(|c| c.iter().filter(|&&x| x).count() as f64 / tokens as f64).collect();
        let (mut both, mut now) = (0usize, 0usize);
        for tok in 1..tokens {
            for n in 0..neurons {
                if active[[tok, n]] {
                    now += 1;
                    both += usize::from(active[[tok - 1, n]]);
                }
            }
        }
        let reuse = both as f64 / now.max(1) as f64;
        let independent = freq.iter().map(|f| f * f).sum::<f64>() / freq.iter().sum::<f64>().max(1e-12);
        assert!(reuse > 2.0 * independent, "layer {l}: reuse {reuse:.3} against {independent:.3} if independent");
    }
}

/// Converts `ck` and runs `spike bench --layout` on it (two rows that need no predictor); the bench's stderr.
fn bench_layout(dir: &Path, ck: &Path, name: &str, text: &Path) -> String {
    let lay = dir.join(format!("{name}.spike"));
    ok(spike().arg("convert").arg("-m").arg(ck).arg("-o").arg(&lay).output().expect("run convert"), "convert");
    let csv = dir.join(name).join("bench.csv");
    let out = spike()
        .arg("bench")
        .arg("--layout")
        .arg(&lay)
        .args(["--rows", "naive,all", "--prompt", "8", "--gen", "2", "--prompts", "1", "--text"])
        .arg(text)
        .arg("--csv")
        .arg(&csv)
        .output()
        .expect("run spike bench");
    assert!(out.status.success(), "bench {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `planted` column of every row of a bench summary.
fn planted_column(summary: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(summary).expect("open the summary");
    let col = r.headers().expect("header").iter().position(|h| h == "planted").expect("a planted column");
    r.records().map(|rec| rec.expect("record")[col].to_string()).collect()
}

/// `spike bench` on a layout of a planted checkpoint says so in its summary (the checkpoint's `spike_planted`,
/// kept in the layout's `resident.bin`) and draws `table3-latency-planted`; on a random checkpoint's layout it
/// draws `table3-latency`, not planted.
#[test]
fn a_bench_on_a_planted_layout_labels_its_chart_planted() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = dir.path().join("harbour.txt");
    std::fs::write(&text, TEXT).expect("write the text");
    let planted = synth(dir.path(), "ck-planted", SEED_PLANTED);
    let random = common::synth(dir.path(), "opt", 0x5e, 256);
    for (ck, name, is_planted) in [(&planted, "p", true), (&random, "r", false)] {
        let stderr = bench_layout(dir.path(), ck, name, &text);
        let out = dir.path().join(name);
        let (stem, other) = if is_planted {
            ("table3-latency-planted", "table3-latency")
        } else {
            ("table3-latency", "table3-latency-planted")
        };
        let png = out.join(format!("{stem}.png"));
        assert!(stderr.contains(&format!("chart: {}", png.display())), "{name}: {stderr}");
        assert!(png.is_file() && out.join(format!("{stem}.svg")).is_file(), "{name}");
        assert!(!out.join(format!("{other}.png")).exists(), "{name}");
        assert_eq!(planted_column(&out.join("bench.summary.csv")), vec![is_planted.to_string(); 2], "{name}");
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).expect("read the SVG");
        assert_eq!(svg.contains("planted"), is_planted, "{name}: the chart's labels");
    }
}
