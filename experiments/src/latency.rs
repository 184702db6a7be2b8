//! The paper's Fig. 1 and Tables 2 and 3 from a CSV file alone: per-token latency split into flash I/O, memory
//! management and compute for each row of a flash bench, beside the paper's rows. Two inputs are read:
//!
//! - the summary of `spike bench --layout` (`NAME.summary.csv`: `row`, `io_ms`, `mm_ms`, `compute_ms`,
//!   `total_ms`, `mb_per_token`, ..., `planted`), measured on a layout; `planted` is true when the layout was
//!   converted from a planted checkpoint (summaries written before the column existed read as not planted);
//! - the `table3.csv` of a paper-scale run (`scripts/paper-scale-table.py`: `row`, `io_ms`, `mem_ms`,
//!   `compute_ms`, `total_ms`, `gb_read_per_token`, `paper_row`, `planted`, ...), whose rows say `planted`.
//!
//! The chart is drawn beside the CSV: `table3-latency.{png,svg}`, or `table3-latency-planted.{png,svg}`.

use std::path::{Path, PathBuf};

use crate::chart::{Bar, BarPanel, StackedBars};
use crate::paper;
use crate::{Error, Result};

/// OPT 6.7B's fp16 checkpoint in GB, the paper's model (its Table 2 bytes over this are shares of the model).
pub const PAPER_MODEL_GB: f64 = 13.4;

/// The parts of a token's latency, in the paper's order.
pub const SEGMENTS: [&str; 3] = ["flash I/O", "memory management", "compute"];

/// A row of the paper's Table 2 (OPT 6.7B, fp16, half the model in DRAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PaperRow {
    Naive,
    Hybrid,
    Predictor,
    Windowing,
    /// Predictor, windowing and row-column bundling: Table 3's `all`.
    Bundling,
}

impl PaperRow {
    pub const ALL: [PaperRow; 5] =
        [PaperRow::Naive, PaperRow::Hybrid, PaperRow::Predictor, PaperRow::Windowing, PaperRow::Bundling];

    /// The row's name in the paper's Table 2 (as `table3.csv` writes it in `paper_row`).
    pub fn name(self) -> &'static str {
        match self {
            PaperRow::Naive => "naive",
            PaperRow::Hybrid => "hybrid",
            PaperRow::Predictor => "+ predictor",
            PaperRow::Windowing => "+ windowing",
            PaperRow::Bundling => "all (+ bundling)",
        }
    }

    /// The row named `name` in a `table3.csv`'s `paper_row` column.
    pub fn parse(name: &str) -> Option<PaperRow> {
        PaperRow::ALL.into_iter().find(|r| r.name() == name.trim())
    }

    /// The paper's row that a `spike bench --layout` row stands for: naive (`naive-all`, every weight read
    /// every token, when the bench has it; else `naive`, every FFN record) and hybrid as they are, the
    /// predictor rows on the split layout for Table 2's unbundled steps, predictor + window on the bundled
    /// layout for everything together (the bench's own `all` row holds every neuron resident: not the paper's).
    pub fn of_bench_row(row: &str) -> Option<PaperRow> {
        match row.trim() {
            "naive" | "naive-all" => Some(PaperRow::Naive),
            "hybrid" => Some(PaperRow::Hybrid),
            "predictor (split)" => Some(PaperRow::Predictor),
            "predictor+window (split)" => Some(PaperRow::Windowing),
            "predictor+window" => Some(PaperRow::Bundling),
            _ => None,
        }
    }

    /// Claim ids of the paper's GB read and I/O ms per token (Table 2), and its read throughput there.
    fn table2_claims(self) -> (&'static str, &'static str, &'static str) {
        match self {
            PaperRow::Naive => ("table2_gb_naive", "table2_io_naive", "throughput_naive"),
            PaperRow::Hybrid => ("table2_gb_hybrid", "table2_io_hybrid", "throughput_naive"),
            PaperRow::Predictor => ("table2_gb_predictor", "table2_io_predictor", "throughput_split"),
            PaperRow::Windowing => ("table2_gb_window", "table2_io_window", "throughput_split"),
            PaperRow::Bundling => ("table2_gb_bundled", "table2_io_bundled", "throughput_bundled"),
        }
    }

    /// The claim-id prefix of the paper's Table 3 row (CPU), for the naive and the all-techniques rows.
    fn table3_prefix(self) -> Option<&'static str> {
        match self {
            PaperRow::Naive => Some("table3_naive"),
            PaperRow::Bundling => Some("table3_all"),
            _ => None,
        }
    }
}

/// The paper's Table 2 numbers of a row: GB read and I/O ms per token, read throughput in GB/s.
pub fn paper_table2(row: PaperRow) -> Result<(f64, f64, f64)> {
    let (gb, io, tp) = row.table2_claims();
    Ok((paper::claim(gb)?.value, paper::claim(io)?.value, paper::claim(tp)?.value))
}

/// The paper's Table 3 numbers (OPT 6.7B, M1 Max CPU) of a row, in [`SEGMENTS`] order then the total; `None`
/// for the rows Table 3 does not have.
pub fn paper_table3(row: PaperRow) -> Result<Option<[f64; 4]>> {
    let Some(p) = row.table3_prefix() else { return Ok(None) };
    let c = |part: &str| paper::claim(&format!("{p}_{part}")).map(|c| c.value);
    Ok(Some([c("io")?, c("mem")?, c("compute")?, c("total")?]))
}

/// One row of a latency table: medians per decoded token.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRow {
    pub row: String,
    pub io_ms: f64,
    pub mem_ms: f64,
    pub compute_ms: f64,
    pub total_ms: f64,
    /// Tokens per second (1000 / total_ms when the file does not say).
    pub tokens_per_s: f64,
    /// GB read from flash per token; NaN when the file does not say.
    pub gb_read_per_token: f64,
    /// Those bytes over the checkpoint's (paper-scale tables only; NaN otherwise).
    pub share_of_model: f64,
    /// Decoded tokens the medians are over (bench summaries only; 0 when the file does not say).
    pub tokens: usize,
    /// The model's DRAM in the row, MiB (NaN when the file does not say).
    pub dram_mib: f64,
    /// The paper's row this row stands for.
    pub paper_row: Option<PaperRow>,
}

/// What kind of file a latency table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `spike bench --layout`'s summary CSV.
    BenchSummary,
    /// A paper-scale `table3.csv`.
    PaperScale,
}

/// A latency table read from a CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyTable {
    pub path: PathBuf,
    pub source: Source,
    /// Any row says `planted` (a paper-scale table of a planted checkpoint).
    pub planted: bool,
    pub rows: Vec<LatencyRow>,
}

impl LatencyTable {
    /// Reads a bench summary or a paper-scale `table3.csv`, telling them apart by their columns.
    pub fn read(path: &Path) -> Result<LatencyTable> {
        let bad = |what: String| Error::Csv { path: path.to_path_buf(), what };
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r.headers().map_err(|e| bad(e.to_string()))?.iter().map(str::to_string).collect();
        let col = |name: &str| header.iter().position(|h| h == name);
        let source = match (col("mem_ms"), col("mm_ms")) {
            (Some(_), _) => Source::PaperScale,
            (None, Some(_)) => Source::BenchSummary,
            (None, None) => return Err(bad(
                "neither a `spike bench --layout` summary (column mm_ms) nor a paper-scale table3.csv (column mem_ms)"
                    .into(),
            )),
        };
        let need = |name: &str| col(name).ok_or_else(|| bad(format!("no column `{name}`")));
        let mem = if source == Source::PaperScale { "mem_ms" } else { "mm_ms" };
        let (c_row, c_io, c_mem, c_compute, c_total) =
            (need("row")?, need("io_ms")?, need(mem)?, need("compute_ms")?, need("total_ms")?);
        let mut rows = Vec::new();
        let mut planted = false;
        for (i, rec) in r.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| bad(format!("line {line}: {e}")))?;
            let field = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::trim).unwrap_or("");
            let number = |c: usize, name: &str| -> Result<f64> {
                let f = field(Some(c));
                f.parse::<f64>().map_err(|_| bad(format!("line {line}: `{name}` is `{f}`, not a number")))
            };
            let optional = |name: &str| -> Result<f64> {
                match field(col(name)) {
                    "" => Ok(f64::NAN),
                    f => f.parse::<f64>().map_err(|_| bad(format!("line {line}: `{name}` is `{f}`, not a number"))),
                }
            };
            let row = field(Some(c_row)).to_string();
            if row.is_empty() {
                return Err(bad(format!("line {line}: `row` is empty")));
            }
            let total_ms = number(c_total, "total_ms")?;
            let (gb, paper_row) = match source {
                Source::PaperScale => (optional("gb_read_per_token")?, PaperRow::parse(field(col("paper_row")))),
                Source::BenchSummary => (optional("mb_per_token")? / 1e3, PaperRow::of_bench_row(&row)),
            };
            let tokens_per_s = match optional("tokens_per_s")? {
                t if t.is_finite() => t,
                _ => 1e3 / total_ms,
            };
            planted |= field(col("planted")).eq_ignore_ascii_case("true");
            rows.push(LatencyRow {
                io_ms: number(c_io, "io_ms")?,
                mem_ms: number(c_mem, mem)?,
                compute_ms: number(c_compute, "compute_ms")?,
                total_ms,
                tokens_per_s,
                gb_read_per_token: gb,
                share_of_model: optional("share_of_model")?,
                tokens: optional("tokens")?.max(0.0) as usize,
                dram_mib: match source {
                    Source::BenchSummary => optional("dram_mib")?,
                    Source::PaperScale => optional("dram_gb")? * 1e9 / f64::from(1u32 << 20),
                },
                paper_row,
                row,
            });
        }
        if rows.is_empty() {
            return Err(bad("no rows".into()));
        }
        // The paper's naive row reads the whole model: `naive-all` stands for it when the bench ran one.
        if rows.iter().any(|r| r.row == "naive-all") {
            for r in rows.iter_mut().filter(|r| r.row == "naive") {
                r.paper_row = None;
            }
        }
        Ok(LatencyTable { path: path.to_path_buf(), source, planted, rows })
    }

    /// What the table measured, for titles: `planted checkpoint` (with the run's folder name for a paper-scale
    /// table, which names the checkpoint; a bench summary's folder is wherever `--csv` put it), or `measured`.
    pub fn what(&self) -> String {
        if self.planted {
            let tag = match self.source {
                Source::PaperScale => {
                    self.path.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned())
                }
                Source::BenchSummary => None,
            };
            format!("planted checkpoint {}", tag.unwrap_or_default()).trim_end().to_string()
        } else {
            "measured".to_string()
        }
    }

    /// The chart's file stem: `table3-latency`, with `-planted` for a planted table.
    pub fn chart_stem(&self) -> &'static str {
        if self.planted {
            "table3-latency-planted"
        } else {
            "table3-latency"
        }
    }

    /// The row that stands for the paper's `row`, if the table has one.
    pub fn row_for(&self, row: PaperRow) -> Option<&LatencyRow> {
        self.rows.iter().find(|r| r.paper_row == Some(row))
    }

    /// The stacked-bar chart: ours in one panel, the paper's Table 3 (CPU) in another.
    pub fn chart(&self) -> Result<StackedBars> {
        let tokens = self.rows.iter().map(|r| r.tokens).max().unwrap_or(0);
        let ours_title = match (self.planted, tokens) {
            (true, _) => "ours, planted: median per decoded token (a simulation of OPT's statistics)".to_string(),
            (false, 0) => "ours, measured: median per decoded token".to_string(),
            (false, n) => format!("ours, measured: median per decoded token, {n} tokens per row"),
        };
        let ours = BarPanel {
            title: ours_title,
            bars: self
                .rows
                .iter()
                .map(|r| Bar { label: r.row.clone(), values: vec![r.io_ms, r.mem_ms, r.compute_ms] })
                .collect(),
        };
        let mut paper_bars = Vec::new();
        for (row, label) in [(PaperRow::Naive, "naive"), (PaperRow::Bundling, "all (predictor + window + bundling)")] {
            if let Some([io, mem, compute, _]) = paper_table3(row)? {
                paper_bars.push(Bar { label: label.into(), values: vec![io, mem, compute] });
            }
        }
        let paper = BarPanel { title: "paper: OPT 6.7B on an M1 Max CPU (Table 3)".into(), bars: paper_bars };
        Ok(StackedBars {
            title: format!("Per-token latency by row (Fig. 1 / Table 3), {}", self.what()),
            x_label: "ms per token (each panel on its own scale)".into(),
            segments: SEGMENTS.iter().map(|s| s.to_string()).collect(),
            unit: "ms".into(),
            panels: vec![ours, paper],
        })
    }
}

/// Draws the chart of the latency CSV `csv` beside it (PNG and SVG); returns the PNG's path.
pub fn plot(csv: &Path) -> Result<PathBuf> {
    let table = LatencyTable::read(csv)?;
    let dir = csv.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = table.chart_stem();
    let (png, svg) = (dir.join(format!("{stem}.png")), dir.join(format!("{stem}.svg")));
    table.chart()?.write(&png, &svg)?;
    Ok(png)
}

/// The latency CSV files of a results folder `dir`, in name order: `bench.summary.csv` in `dir`, `dir/flash`
/// and `dir/bench`; `table3.csv` in `dir`, `dir/paper-scale` and each folder of `dir/paper-scale`.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("flash"), dir.join("bench")] {
        let f = d.join("bench.summary.csv");
        if f.is_file() {
            found.push(f);
        }
    }
    let scale = dir.join("paper-scale");
    let mut folders = vec![dir.to_path_buf(), scale.clone()];
    if scale.is_dir() {
        let entries = std::fs::read_dir(&scale).map_err(|e| Error::Io { path: scale.clone(), source: e })?;
        let mut sub = Vec::new();
        for e in entries {
            let e = e.map_err(|e| Error::Io { path: scale.clone(), source: e })?;
            if e.path().is_dir() {
                sub.push(e.path());
            }
        }
        sub.sort();
        folders.extend(sub);
    }
    for d in folders {
        let f = d.join("table3.csv");
        if f.is_file() {
            found.push(f);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: &str = "row,tokens,io_ms,io_copy_ms,predicted_io_ms,predicted_over_measured,mm_ms,compute_ms,\
total_ms,tokens_per_s,mb_per_token,reads_per_token,hit_rate,active_share,dram_mib
naive,64,51.5,0.0,50.0,1.0,0.25,12.25,64.0,15.625,61.44,60,0,1,50.2
predictor+window,64,3.5,,,,1.5,9.0,14.0,71.4,2.5,40,0.5,0.4,50.2
predictor+window (split),64,6.0,,,,1.5,9.5,17.0,,2.25,90,0.5,0.4,50.2
all,64,0,,,,0,8,8,125,0,0,1,1,80
";

    #[test]
    fn a_bench_summary_reads_back_its_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bench.summary.csv");
        std::fs::write(&p, BENCH).unwrap();
        let t = LatencyTable::read(&p).unwrap();
        assert_eq!(t.source, Source::BenchSummary);
        assert!(!t.planted);
        assert_eq!(t.rows.len(), 4);
        let n = &t.rows[0];
        assert_eq!((n.io_ms, n.mem_ms, n.compute_ms, n.total_ms), (51.5, 0.25, 12.25, 64.0));
        assert!((n.gb_read_per_token - 0.06144).abs() < 1e-15, "{}", n.gb_read_per_token);
        assert_eq!(n.tokens, 64);
        assert_eq!(n.dram_mib, 50.2);
        assert_eq!(n.paper_row, Some(PaperRow::Naive));
        // The bench's own `all` row holds everything resident: not the paper's `all`.
        assert_eq!(t.rows[3].paper_row, None);
        assert_eq!(t.row_for(PaperRow::Bundling).unwrap().row, "predictor+window");
        assert_eq!(t.row_for(PaperRow::Windowing).unwrap().row, "predictor+window (split)");
        // With a naive-all row, it is the paper's naive, not naive.
        let with_all = BENCH.replace("all,64,0,", "naive-all,64,0,");
        std::fs::write(&p, with_all).unwrap();
        let t2 = LatencyTable::read(&p).unwrap();
        assert_eq!(t2.row_for(PaperRow::Naive).unwrap().row, "naive-all");
        assert_eq!(t2.rows[0].paper_row, None);
        // A missing tokens/s is 1000 / total.
        assert!((t.rows[2].tokens_per_s - 1e3 / 17.0).abs() < 1e-12);
        assert_eq!(t.chart_stem(), "table3-latency");
        assert_eq!(t.what(), "measured");
    }

    #[test]
    fn a_paper_scale_table_says_planted() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("opt-1.3b-planted-v2");
        std::fs::create_dir(&sub).unwrap();
        let p = sub.join("table3.csv");
        std::fs::write(
            &p,
            "row,layout,paper_row,io_ms,mem_ms,compute_ms,total_ms,gb_read_per_token,share_of_model,planted\n\
             naive,bundled,naive,1061.51,1.90,541.62,1633.37,1.6114,0.6123,true\n\
             all,bundled,all (+ bundling),1044.96,1.12,290.20,1310.44,0.4639,0.1763,true\n",
        )
        .unwrap();
        let t = LatencyTable::read(&p).unwrap();
        assert_eq!(t.source, Source::PaperScale);
        assert!(t.planted);
        assert_eq!(t.rows[1].paper_row, Some(PaperRow::Bundling));
        assert_eq!(t.rows[1].share_of_model, 0.1763);
        assert_eq!(t.chart_stem(), "table3-latency-planted");
        assert_eq!(t.what(), "planted checkpoint opt-1.3b-planted-v2");
        let c = t.chart().unwrap();
        assert!(c.title.contains("planted"));
        assert_eq!(c.panels[1].bars[0].values, vec![2196.0, 0.0, 986.0]);
        assert_eq!(files(dir.path()).unwrap(), Vec::<PathBuf>::new());
        std::fs::create_dir(dir.path().join("paper-scale")).unwrap();
        std::fs::rename(&sub, dir.path().join("paper-scale/opt-1.3b-planted-v2")).unwrap();
        assert_eq!(files(dir.path()).unwrap(), vec![dir.path().join("paper-scale/opt-1.3b-planted-v2/table3.csv")]);
    }

    #[test]
    fn bad_files_name_the_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        let e = LatencyTable::read(&p).unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains("mm_ms") && e.contains("mem_ms"), "{e}");
        std::fs::write(&p, "row,io_ms,mm_ms,compute_ms,total_ms\nnaive,1,2,3,4\nhybrid,1,two,3,4\n").unwrap();
        let e = LatencyTable::read(&p).unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains("line 3") && e.contains("mm_ms") && e.contains("two"), "{e}");
        std::fs::write(&p, "row,io_ms,mm_ms,total_ms\nnaive,1,2,4\n").unwrap();
        let e = LatencyTable::read(&p).unwrap_err().to_string();
        assert!(e.contains("compute_ms"), "{e}");
        std::fs::write(&p, "row,io_ms,mm_ms,compute_ms,total_ms\n").unwrap();
        assert!(LatencyTable::read(&p).unwrap_err().to_string().contains("no rows"));
    }

    #[test]
    fn a_bench_summary_of_a_planted_layout_is_labelled_planted() {
        if crate::chart::LineChart::skip_without_font() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bench.summary.csv");
        let mut lines = BENCH.lines();
        let mut text = format!("{},planted\n", lines.next().unwrap());
        for l in lines {
            text.push_str(&format!("{l},true\n"));
        }
        std::fs::write(&p, text).unwrap();
        let t = LatencyTable::read(&p).unwrap();
        assert!(t.planted);
        // A bench summary's folder is wherever --csv put it: not the checkpoint's name.
        assert_eq!(t.what(), "planted checkpoint");
        let png = plot(&p).unwrap();
        assert_eq!(png, dir.path().join("table3-latency-planted.png"));
        assert!(!dir.path().join("table3-latency.png").exists());
        let svg = std::fs::read_to_string(dir.path().join("table3-latency-planted.svg")).unwrap();
        assert!(svg.contains("Table 3), planted checkpoint") && svg.contains("ours, planted"), "{svg}");
        // `false` in the column is not planted.
        std::fs::write(&p, format!("{}\n", std::fs::read_to_string(&p).unwrap().replace(",true", ",false"))).unwrap();
        assert!(!LatencyTable::read(&p).unwrap().planted);
    }

    #[test]
    fn the_chart_is_drawn_beside_the_csv() {
        if crate::chart::LineChart::skip_without_font() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bench.summary.csv");
        std::fs::write(&p, BENCH).unwrap();
        let png = plot(&p).unwrap();
        assert_eq!(png, dir.path().join("table3-latency.png"));
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        let svg = std::fs::read_to_string(dir.path().join("table3-latency.svg")).unwrap();
        for text in ["flash I/O", "memory management", "compute", "predictor+window (split)", "64 ms"] {
            assert!(svg.contains(text), "{text} not in the SVG");
        }
        assert!(!svg.contains(&dir.path().display().to_string()), "a machine path in the chart");
    }
}
