//! The report and every chart of a sweep folder, from small synthetic CSV files with fixed values: the report's
//! ratio is ours over the paper's for a known row, each chart is written as a non-empty PNG and SVG, and a bad
//! CSV is refused with an error naming the file and the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use experiments::paper;
use experiments::record::TokenRecord;
use experiments::report;
use experiments::sweep::output::{self, Row, SweepInfo};
use experiments::sweep::plot;

/// A row of point `point` with `settings`, metric `metric` = `value` (layer `layer`, empty for the point's).
fn row(point: usize, settings: &[(&str, &str)], layer: &str, metric: &str, value: f64) -> Row {
    let mut r = Row {
        sweep: "synthetic".into(),
        point,
        point_id: format!("id{point}"),
        model: "tiny.gguf".into(),
        planted: false,
        layout: "bundled".into(),
        dtype: "source".into(),
        selection: "all".into(),
        hot: "none".into(),
        backend: "uring".into(),
        align: "4096".into(),
        queue_depth: "32".into(),
        max_merge: "1048576".into(),
        max_gap: "0".into(),
        overlap: "false".into(),
        compute_all_cached: "false".into(),
        budget: "none".into(),
        cache: "none".into(),
        window: String::new(),
        sparsity: String::new(),
        rank: String::new(),
        profile: "none".into(),
        prompts: 2,
        prompt_tokens: 8,
        gen_tokens: 4,
        budget_decides: false,
        layer: layer.into(),
        metric: metric.into(),
        value,
        commit: "abc".into(),
        machine: "test cpu".into(),
    };
    for (k, v) in settings {
        assert!(r.set_setting(k, v.to_string()), "setting {k}");
    }
    r
}

/// A sweep folder at `dir` holding `rows` and `tokens`.
fn folder(dir: &Path, rows: &[Row], tokens: &[TokenRecord]) {
    std::fs::create_dir_all(dir).unwrap();
    let points = rows.iter().map(|r| r.point).max().map_or(0, |p| p + 1);
    let info = SweepInfo {
        name: "synthetic".into(),
        spec_sha256: "0".repeat(64),
        shard: "1/1".into(),
        points_total: points,
        points_expected: points,
        points_done: points,
        spec_path: Some("experiments/specs/synthetic.toml".into()),
    };
    output::write_json(&dir.join("sweep.json"), &info).unwrap();
    output::write_json(&dir.join("machine.json"), &serde_json::json!({"cpu": "test cpu", "cores": 2})).unwrap();
    output::write_rows(&dir.join("raw.csv"), rows).unwrap();
    output::write_tokens(&dir.join("tokens.csv"), tokens).unwrap();
}

/// Every figure's points, with known values.
fn synthetic() -> (Vec<Row>, Vec<TokenRecord>) {
    let mut rows = Vec::new();
    let mut point = 0;
    let mut add = |rows: &mut Vec<Row>, settings: &[(&str, &str)], metrics: &[(&str, f64)]| {
        for (m, v) in metrics {
            rows.push(row(point, settings, "", m, *v));
        }
        point += 1;
        point - 1
    };
    // Windowing: K = 0 and 5; at K = 5 the window holds 48% (the paper: 24%) and 1.2% is read per token.
    add(
        &mut rows,
        &[("window", "0"), ("cache", "window:0")],
        &[
            ("window_held_share", 0.0),
            ("new_per_token_share", 0.3),
            ("active_share", 0.3),
            ("window_held_mb", 0.0),
            ("mb_read_per_token", 10.0),
        ],
    );
    add(
        &mut rows,
        &[("window", "5"), ("cache", "window:5")],
        &[
            ("window_held_share", 0.48),
            ("new_per_token_share", 0.012),
            ("active_share", 0.3),
            ("window_held_mb", 8.0),
            ("mb_read_per_token", 0.4),
        ],
    );
    // Bundling: read size bundled 8 KiB against split 2 KiB (4x; the paper: 2x), throughput 900 against 600
    // MB/s.
    for (layout, dtype, record, read, mb_s) in [
        ("bundled", "source", 1332.0, 8192.0, 900.0),
        ("split", "source", 1332.0, 2048.0, 600.0),
        ("bundled", "f32", 6912.0, 16384.0, 1000.0),
        ("split", "f32", 6912.0, 4096.0, 700.0),
    ] {
        add(
            &mut rows,
            &[("layout", layout), ("dtype", dtype), ("selection", "oracle:t.json")],
            &[("record_bytes", record), ("mean_read_bytes", read), ("io_mb_s", mb_s), ("mb_read_per_token", 20.0)],
        );
    }
    // Predictors of rank 16 and 64 over 3 layers, and perplexity against sparsity.
    for (rank, over) in [("16", 2.5), ("64", 1.5)] {
        let s = [("selection", "predictor"), ("sparsity", "0.5"), ("rank", rank)];
        let p = add(
            &mut rows,
            &s,
            &[
                ("valid_recall", 0.95),
                ("valid_precision", 0.5),
                ("valid_false_negative_rate", 0.05),
                ("valid_predicted_true_ratio", over),
                ("active_share", 0.7),
                ("prompt_perplexity", 20.0),
            ],
        );
        for layer in 0..3 {
            for (m, v) in [
                ("valid_recall", 0.95),
                ("valid_predicted_true_ratio", over + 0.1 * layer as f64),
                ("valid_predicted_active_fraction", 0.8),
                ("valid_true_active_fraction", 0.5),
            ] {
                rows.push(row(p, &s, &layer.to_string(), m, v));
            }
        }
    }
    add(
        &mut rows,
        &[("selection", "oracle"), ("sparsity", "0.7")],
        &[("prompt_perplexity", 25.0), ("active_share", 0.3)],
    );
    add(
        &mut rows,
        &[("selection", "oracle"), ("sparsity", "0.5")],
        &[("prompt_perplexity", 19.0), ("active_share", 0.5)],
    );
    add(&mut rows, &[("selection", "all")], &[("prompt_perplexity", 18.0)]);
    // The cost model: the last point's tokens, measured 1.1x, 0.9x and 2x the prediction.
    let id = format!("id{}", point - 1);
    let tokens = [(10.0, 11.0), (20.0, 18.0), (5.0, 10.0)]
        .iter()
        .enumerate()
        .map(|(i, &(pred, io))| TokenRecord {
            label: id.clone(),
            step: i,
            tokens: 1,
            reads: 10,
            bytes_read: 1 << 20,
            predicted_io_ms: pred,
            io_ms: io,
            ..TokenRecord::default()
        })
        .collect();
    (rows, tokens)
}

#[test]
fn the_report_ratio_is_ours_over_the_papers() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, tokens) = synthetic();
    folder(&dir.path().join("sweeps/synthetic"), &rows, &tokens);
    let r = report::write(dir.path()).unwrap();
    assert_eq!(r.path, dir.path().join("REPORT.md"));
    let line = |topic: &str, quantity_of: &str| {
        let c = paper::claim(quantity_of).unwrap();
        r.sections
            .iter()
            .filter(|s| s.topic == topic)
            .flat_map(|s| s.lines.iter())
            .find(|l| l.paper.as_ref().is_some_and(|p| p.id == c.id))
            .cloned()
            .unwrap_or_else(|| panic!("no {topic} line for {quantity_of}"))
    };
    let held = line("windowing", "window_held_k5");
    assert_eq!(held.ours, 0.48);
    assert_eq!(held.ratio(), Some(0.48 / paper::claim("window_held_k5").unwrap().value));
    let chunk = line("bundling", "bundling_chunk");
    assert_eq!(chunk.ours, 4.0, "8 KiB over 2 KiB");
    assert_eq!(chunk.ratio(), Some(4.0 / paper::claim("bundling_chunk").unwrap().value));
    let fnr = line("predictor", "predictor_fnr");
    assert_eq!(fnr.ratio(), Some(0.05 / paper::claim("predictor_fnr").unwrap().value));
    // False positives: 0.8 - 0.95 x 0.5 in every layer.
    let fp = line("predictor", "predictor_fp");
    assert!((fp.ours - (0.8 - 0.95 * 0.5)).abs() < 1e-12, "{}", fp.ours);
    // Perplexity over every neuron's, and the cost model's median (of 1.1, 0.9, 2.0).
    let ours = |topic: &str, quantity: &str, setting: &str| {
        r.sections
            .iter()
            .filter(|s| s.topic == topic)
            .flat_map(|s| s.lines.iter())
            .find(|l| l.quantity == quantity && l.setting.contains(setting))
            .map(|l| l.ours)
    };
    assert_eq!(ours("sparsity", "perplexity over every neuron's", "sparsity 0.7"), Some(25.0 / 18.0));
    assert_eq!(ours("cost model", "measured over predicted I/O per token (median)", "every token"), Some(1.1));
    // The markdown shows the row with its ratio, links the chart relative to the report and gives the command.
    let md = std::fs::read_to_string(&r.path).unwrap();
    assert!(md.contains("| 48.0% | 2.00 |"), "{md}");
    assert!(md.contains("(sweeps/synthetic/window-usage") || md.contains("none drawn"), "{md}");
    assert!(md.contains("spike sweep experiments/specs/synthetic.toml -o"), "{md}");
    assert!(md.contains("Table 3"), "what no sweep covers is listed:\n{md}");
}

#[test]
fn every_chart_writes_png_and_svg() {
    if experiments::chart::LineChart::skip_without_font() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (rows, tokens) = synthetic();
    folder(dir.path(), &rows, &tokens);
    let p = plot::plot(dir.path()).unwrap();
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let names: Vec<String> = p.charts.iter().map(|c| c.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, plot::CHARTS, "every chart, in order");
    for png in &p.charts {
        assert_eq!(&std::fs::read(png).unwrap()[1..4], b"PNG", "{}", png.display());
        let svg = std::fs::read_to_string(png.with_extension("svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("measured"), "{}", png.display());
    }
    // The paper's values are drawn and say so.
    let usage = std::fs::read_to_string(dir.path().join("window-usage.svg")).unwrap();
    assert!(usage.contains("paper (OPT 6.7B)"));
    // A folder of one kind of point draws its figures and says why it draws no others.
    let only = tempfile::tempdir().unwrap();
    folder(only.path(), &rows[..10], &[]);
    let p = plot::plot(only.path()).unwrap();
    assert_eq!(p.charts.len(), 2, "{:?}", p.charts);
    assert_eq!(p.notes.len(), 4, "{:?}", p.notes);
}

#[test]
fn a_bad_csv_names_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, tokens) = synthetic();
    folder(dir.path(), &rows, &tokens);
    let raw = dir.path().join("raw.csv");
    let text = std::fs::read_to_string(&raw).unwrap();
    // Line 4 (the third row) gets a value that is no number.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let v = lines[3].rfind(",abc,").unwrap();
    let start = lines[3][..v].rfind(',').unwrap();
    lines[3].replace_range(start + 1..v, "fast");
    std::fs::write(&raw, lines.join("\n") + "\n").unwrap();
    for e in [plot::plot(dir.path()).unwrap_err().to_string(), report::build(dir.path()).unwrap_err().to_string()] {
        assert!(e.contains("raw.csv") && e.contains("line: 4"), "{e}");
    }
    // A per-layer row whose layer is no number.
    let mut bad = rows.clone();
    let i = bad.iter().position(|r| !r.layer.is_empty()).unwrap();
    bad[i].layer = "last".into();
    folder(dir.path(), &bad, &tokens);
    let e = plot::plot(dir.path()).unwrap_err().to_string();
    assert!(e.contains("raw.csv") && e.contains(&format!("line {}", i + 2)) && e.contains("`last`"), "{e}");
    // tokens.csv is checked as well.
    folder(dir.path(), &rows, &tokens);
    std::fs::write(dir.path().join("tokens.csv"), "label,seq\nid1,x\n").unwrap();
    let e = plot::plot(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokens.csv"), "{e}");
    // A folder without raw.csv is no sweep.
    let empty = tempfile::tempdir().unwrap();
    let e = plot::plot(empty.path()).unwrap_err().to_string();
    assert!(e.contains("not a sweep output"), "{e}");
}

/// A bench summary of `spike bench --layout` (measured) and a paper-scale table (planted), with fixed values.
const BENCH_SUMMARY: &str = "row,tokens,io_ms,io_copy_ms,verify_ms,predicted_io_ms,predicted_over_measured,mm_ms,\
compute_ms,total_ms,tokens_per_s,mb_per_token,reads_per_token,hit_rate,active_share,dram_mib
naive,32,40.25,0,1,41,1.01,0.5,11.25,52,19.23,61.44,60,0,1,50.25
hybrid,32,30.5,0,1,31,1.01,0.75,11.75,43,23.25,50,60,0.1,1,50.25
predictor+window,32,4.5,0,0.5,4,0.9,1.25,8.25,14,71.43,3.5,40,0.6,0.4,50.25
predictor+window (split),32,9.5,0,0.5,9,0.9,1.25,8.25,19,52.63,3.3,120,0.6,0.4,50.25
";
const TABLE3: &str = "row,layout,paper_row,io_ms,mem_ms,compute_ms,total_ms,gb_read_per_token,share_of_model,\
dram_gb,throughput_gbps,predicted_io_ms,tokens_per_s,hit_rate,active_share,paper_gb_read_per_token,\
paper_share_of_model,paper_io_ms,paper_total_ms,cgroup_limit_gb,cgroup_peak_gb,major_faults,planted
naive,bundled,naive,1061.51,1.90,541.62,1633.37,1.6114,0.6123,1.157,1.518,1156.38,0.61,0.0000,1.0000,13.4,1.0000,2196,3182,1.416,1.416,19,true
all,bundled,all (+ bundling),1044.96,1.12,290.20,1310.44,0.4639,0.1763,1.316,0.444,631.03,0.76,0.0390,0.2203,0.2,0.0149,87,669,1.416,1.416,19,true
";

#[test]
fn the_latency_tables_show_the_csv_numbers_measured_and_planted_apart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flash")).unwrap();
    std::fs::write(dir.path().join("flash/bench.summary.csv"), BENCH_SUMMARY).unwrap();
    let tag = dir.path().join("paper-scale/opt-1.3b-planted-v2");
    std::fs::create_dir_all(&tag).unwrap();
    std::fs::write(tag.join("table3.csv"), TABLE3).unwrap();
    std::fs::create_dir_all(dir.path().join("dense")).unwrap();
    std::fs::write(
        dir.path().join("dense/generate.json"),
        r#"{"prompt": "The capital of France is", "text": " Paris."}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dense/perplexity.json"),
        r#"{"result": {"ppl": 18.25, "stderr": 1.5, "chunks": 4, "n_ctx": 512}, "whole_text": false}"#,
    )
    .unwrap();
    // No sweep folder: the latency tables alone make a report.
    let r = report::write(dir.path()).unwrap();
    assert_eq!(r.latency.len(), 2);
    assert!(!r.latency[0].planted && r.latency[1].planted);
    let md = std::fs::read_to_string(&r.path).unwrap();
    let measured = md.find("## Measured on real models").expect("a measured section");
    let planted = md.find("## Planted checkpoints").expect("a planted section");
    assert!(measured < planted);
    // Every row's numbers, read from the CSV text here, stand in its Table 3 line, in its section.
    for (csv, cols, section) in [
        (BENCH_SUMMARY, ["io_ms", "mm_ms", "compute_ms", "total_ms"], measured..planted),
        (TABLE3, ["io_ms", "mem_ms", "compute_ms", "total_ms"], planted..md.len()),
    ] {
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            let v = |name: &str| format!("{:.2}", f[at(name)].parse::<f64>().unwrap());
            let want = format!("| {} | {} | {} | {} | {} |", f[0], v(cols[0]), v(cols[1]), v(cols[2]), v(cols[3]));
            let found = md[section.clone()].find(&want);
            assert!(found.is_some(), "{want} not in its section of\n{md}");
        }
    }
    // Table 2: ours beside the paper's row it stands for, with the throughput from our bytes and time.
    assert!(
        md.contains("| predictor+window (split) | + windowing | 0.0033 | 0.2 | 9.50 | 164 | 0.347 | 1.25 |"),
        "{md}"
    );
    assert!(md.contains("| all | all (+ bundling) | 0.4639 | 0.2 | 17.6% | 1.49% | 1044.96 | 87 |"), "{md}");
    // The paper's Table 3 row beside ours, and the speed-up from our rows.
    assert!(md.contains("| 105 / 58 / 506 / 669 (all (+ bundling)) |"), "{md}");
    assert!(md.contains(&format!("{:.2}x faster end to end", 52.0 / 14.0)), "{md}");
    assert!(!md.contains("Table 3 and Fig. 1 (latency per token"), "Table 3 is covered, not missing:\n{md}");
    assert!(
        md.contains("GPL-3 perplexity at context 512: 18.250 +/- 1.500 over 4 chunks (the first chunks only"),
        "{md}"
    );
    assert!(md.contains("\" Paris.\"; llama.cpp's"), "{md}");
    if !experiments::chart::LineChart::font_missing() {
        assert!(md.contains("[table3-latency.svg](flash/table3-latency.svg)"), "{md}");
        assert!(md.contains("(paper-scale/opt-1.3b-planted-v2/table3-latency-planted.svg)"), "{md}");
        let svg = std::fs::read_to_string(tag.join("table3-latency-planted.svg")).unwrap();
        assert!(svg.contains("planted") && svg.contains("paper: OPT 6.7B"));
    }
}
