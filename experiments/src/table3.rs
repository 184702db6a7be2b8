//! The paper's Table 3 on this machine (`spike bench --layout`). Each row is one flash configuration (naive,
//! hybrid, predictor, predictor + window, the same on a split layout, ...), run on the same prompts under the
//! same DRAM budget; per decoded token the time splits into I/O, memory management, FFN compute and the rest,
//! and the table shows medians beside the bytes read per token.

use std::path::{Path, PathBuf};
use std::time::Instant;

use predictor::selectors::{for_layout, Selection};
use spike_flash::engine::flash::{CacheChoice, FlashConfig, FlashSession};
use spike_flash::engine::sampler::argmax;
use spike_flash::layout::Layout;

use crate::record::TokenRecord;
use crate::summary::{median, write_csv};
use crate::{Error, Result};

/// One configuration of the table.
#[derive(Debug, Clone)]
pub struct RowSpec {
    pub name: String,
    pub layout: PathBuf,
    pub cache: CacheChoice,
    /// What picks the neurons of each token.
    pub selector: Selector,
    /// Overlap the next layer's reads with this layer's compute.
    pub overlap: bool,
    /// Run without the DRAM budget (the `all` row: every neuron resident, the upper bound).
    pub unbudgeted: bool,
    /// Read `resident.bin`'s tensors from flash every token too (the `naive-all` row: every weight, as the
    /// paper's naive row, [`FlashConfig::read_resident`]).
    pub read_resident: bool,
}

impl RowSpec {
    /// The row named `name` (naive, naive-all, hybrid, all, window, predictor, predictor+window, oracle, oracle+window,
    /// oracle+hybrid, each optionally with `+overlap`) on `layout`, its window rows of `window` tokens; the row's
    /// name gets `suffix`.
    pub fn parse(name: &str, layout: &Path, window: u32, suffix: &str) -> Result<RowSpec> {
        use spike_flash::cache::PolicySpec;
        let (base, overlap) = match name.strip_suffix("+overlap") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let none = CacheChoice::Policy(PolicySpec::None);
        let win = CacheChoice::Policy(PolicySpec::Window(window));
        let (cache, selector) = match base {
            "naive" | "naive-all" => (none, Selector::All),
            "hybrid" => (CacheChoice::Hybrid, Selector::All),
            "all" => (CacheChoice::Policy(PolicySpec::All), Selector::All),
            "window" => (win, Selector::All),
            "predictor" => (none, Selector::Predictor),
            "predictor+window" => (win, Selector::Predictor),
            "oracle" => (none, Selector::Oracle),
            "oracle+window" => (win, Selector::Oracle),
            "oracle+hybrid" => (CacheChoice::Hybrid, Selector::Oracle),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown bench row `{other}` (naive, naive-all, hybrid, all, window, predictor, predictor+window, oracle, \
                     oracle+window, oracle+hybrid)"
                )))
            }
        };
        Ok(RowSpec {
            name: format!("{name}{suffix}"),
            layout: layout.to_path_buf(),
            cache,
            selector,
            overlap,
            unbudgeted: base == "all",
            read_resident: base == "naive-all",
        })
    }
}

/// What picks a row's neurons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// Every neuron.
    All,
    /// The bench's predictor ([`FlashBench::predictor`]).
    Predictor,
    /// The bench's oracle ([`FlashBench::oracle`]): the truly active neurons.
    Oracle,
}

/// Settings of a flash bench run.
pub struct FlashBench {
    /// The settings every row shares (its layout, cache, budget and overlap are set per row).
    pub flash: FlashConfig,
    /// The predictor file of the predictor rows.
    pub predictor: Option<PathBuf>,
    /// The thresholds file of the oracle rows.
    pub oracle: Option<PathBuf>,
    pub rows: Vec<RowSpec>,
    /// Prompt token sequences (each decoded from an empty state).
    pub prompts: Vec<Vec<u32>>,
    pub gen: usize,
    pub csv: PathBuf,
}

/// Medians of one row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowSummary {
    pub row: String,
    pub tokens: usize,
    pub io_ms: f64,
    /// Of the I/O, copying out of the backends' scratch buffers.
    pub io_copy_ms: f64,
    /// Of the I/O, checking the records read against the layout's checksum table.
    pub verify_ms: f64,
    pub predicted_io_ms: f64,
    /// Median over tokens of the cost model's predicted I/O time over the measured one (tokens that read, with
    /// a `--profile`; NaN without). With `+overlap` the measured time is only the wait, so the ratio exceeds 1
    /// by what overlap hid.
    pub predicted_over_measured: f64,
    pub mm_ms: f64,
    pub compute_ms: f64,
    pub total_ms: f64,
    pub tokens_per_s: f64,
    pub mb_per_token: f64,
    pub reads_per_token: f64,
    pub hit_rate: f64,
    pub active_share: f64,
    pub dram_mib: f64,
    /// The row's layout was converted from a planted checkpoint ([`spike_flash::layout::Layout::planted`]): its
    /// weights simulate a model's activation statistics; charts and reports label it `planted`.
    pub planted: bool,
}

/// Runs every row; prints the table and writes the per-token CSV; returns the summaries.
///
/// The rows take turns: each prompt is a round in which every row is set up afresh (model, caches, read
/// buffers), decodes that prompt and is dropped again. A device whose speed drifts, or switches between modes
/// as this machine's disk does (results/device/NOTES.md), then weighs on every row alike, and only one row's
/// memory is held at a time (what a memory cgroup around the bench must allow).
pub fn run(b: &FlashBench) -> Result<Vec<RowSummary>> {
    // Every row's inputs before the first row runs.
    let selections = b
        .rows
        .iter()
        .map(|row| match row.selector {
            Selector::All => Ok(Selection::All),
            Selector::Predictor => b
                .predictor
                .clone()
                .map(Selection::Predictor)
                .ok_or_else(|| Error::Invalid(format!("row {}: a predictor row needs a predictor file", row.name))),
            Selector::Oracle => b
                .oracle
                .clone()
                .map(Selection::Oracle)
                .ok_or_else(|| Error::Invalid(format!("row {}: an oracle row needs a thresholds file", row.name))),
        })
        .collect::<Result<Vec<_>>>()?;
    let planted = b
        .rows
        .iter()
        .map(|row| {
            let layout = Layout::open(&row.layout).map_err(|e| in_row(&row.name, e))?;
            Ok(layout.planted().map_err(|e| in_row(&row.name, e))?.is_some())
        })
        .collect::<Result<Vec<bool>>>()?;
    let mut per_row: Vec<Vec<TokenRecord>> = vec![Vec::new(); b.rows.len()];
    // Per row: model DRAM in MiB, and neurons per token (layers x d_ffn), from its last setup.
    let mut shape = vec![(0.0, 1.0); b.rows.len()];
    for (pi, prompt) in b.prompts.iter().enumerate() {
        for (ri, row) in b.rows.iter().enumerate() {
            let config = FlashConfig {
                layout: row.layout.clone(),
                cache: row.cache,
                overlap: row.overlap || b.flash.overlap,
                budget: if row.unbudgeted { None } else { b.flash.budget },
                read_resident: row.read_resident || b.flash.read_resident,
                ..b.flash.clone()
            };
            if row.unbudgeted && b.flash.budget.is_some() && pi == 0 {
                eprintln!("note: row {} holds every neuron in DRAM, outside the budget (the upper bound)", row.name);
            }
            let session = FlashSession::open(config, false).map_err(|e| in_row(&row.name, e))?;
            let selector = for_layout(&session.layout, &selections[ri]).map_err(|e| in_row(&row.name, e))?;
            let (mut ffn, dram) = session.ffn(selector).map_err(|e| in_row(&row.name, e))?;
            let model = &session.model;
            let c = model.config();
            shape[ri] = (dram.total as f64 / (1 << 20) as f64, (c.d_ffn * c.n_layers) as f64);
            let recs = &mut per_row[ri];
            let first = recs.len();
            let mut state = model.try_new_state(prompt.len() + b.gen + 1)?;
            let mut logits = model.forward_with(&mut state, prompt, prompt.len() - 1, &mut ffn)?;
            for _ in 0..b.gen {
                let next = argmax(&logits);
                let a = ffn.snapshot();
                let t = Instant::now();
                logits = model.forward_with(&mut state, &[next], 0, &mut ffn)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let mut rec = TokenRecord::between(recs.len(), 1, ms, &a, &ffn.snapshot(), dram.total);
                rec.label.clone_from(&row.name);
                rec.seq = pi;
                recs.push(rec);
            }
            let ms: Vec<f64> = recs[first..].iter().map(|r| r.total_ms).collect();
            eprintln!(
                "round {}/{}, {}: {:.1} tok/s (median of {} tokens)",
                pi + 1,
                b.prompts.len(),
                row.name,
                1e3 / median(ms),
                b.gen
            );
            drop((ffn, session));
            spike_flash::io::trim_heap();
        }
    }
    let mut summaries = Vec::new();
    for (((row, recs), (dram_mib, neurons)), planted) in b.rows.iter().zip(&per_row).zip(shape).zip(planted) {
        let m = |g: &dyn Fn(&TokenRecord) -> f64| median(recs.iter().map(g));
        let total = m(&|r| r.total_ms);
        summaries.push(RowSummary {
            row: row.name.clone(),
            tokens: recs.len(),
            io_ms: m(&|r| r.io_ms),
            io_copy_ms: m(&|r| r.io_copy_ms),
            verify_ms: m(&|r| r.verify_ms),
            predicted_io_ms: m(&|r| r.predicted_io_ms),
            predicted_over_measured: median(
                recs.iter()
                    .filter(|r| r.io_ms > 0.0 && r.bytes_read > 0 && r.predicted_io_ms > 0.0)
                    .map(|r| r.predicted_io_ms / r.io_ms),
            ),
            mm_ms: m(&|r| r.mm_ms),
            compute_ms: m(&|r| r.ffn_compute_ms + r.select_ms + r.other_ms),
            total_ms: total,
            tokens_per_s: 1e3 / total,
            mb_per_token: m(&|r| r.bytes_read as f64 / 1e6),
            reads_per_token: m(&|r| r.reads as f64),
            hit_rate: m(&|r| r.hit_rate),
            active_share: m(&|r| r.neurons_active as f64 / neurons),
            dram_mib,
            planted,
        });
    }
    let all: Vec<TokenRecord> = per_row.into_iter().flatten().collect();
    write_csv(&b.csv, &all)?;
    print_table(&summaries);
    let summary_path = b.csv.with_extension("summary.csv");
    write_csv(&summary_path, &summaries)?;
    eprintln!("wrote per-token rows to {} and the table to {}", b.csv.display(), summary_path.display());
    Ok(summaries)
}

/// An error while setting up row `name`, saying which row.
fn in_row(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("row {name}: {e}"))
}

fn print_table(rows: &[RowSummary]) {
    println!(
        "| row | I/O ms | predicted I/O ms | predicted/measured | mem ms | compute ms | total ms | tok/s | \
         MB read/token | reads/token | hit rate | active | model DRAM MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.0} | {:.3} | {:.3} | {:.1} |",
            r.row,
            r.io_ms,
            r.predicted_io_ms,
            // No token read anything (the all row), or no --profile: no ratio.
            if r.predicted_over_measured.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2}", r.predicted_over_measured)
            },
            r.mm_ms,
            r.compute_ms,
            r.total_ms,
            r.tokens_per_s,
            r.mb_per_token,
            r.reads_per_token,
            r.hit_rate,
            r.active_share,
            r.dram_mib
        );
    }
    println!(
        "paper, OPT 6.7B on CPU (ms/token, I/O / mem / compute / total): naive 2196 / 0 / 986 / 3182; \
         all techniques 105 / 58 / 506 / 669 (Table 3)"
    );
}

/// Prompts: `n` consecutive pieces of `len` tokens from the start of `text`'s tokens.
pub fn prompts_from(tokens: &[u32], n: usize, len: usize, path: &Path) -> Result<Vec<Vec<u32>>> {
    if tokens.len() < n * len {
        return Err(Error::Invalid(format!(
            "{}: {} tokens, fewer than {n} prompts of {len}",
            path.display(),
            tokens.len()
        )));
    }
    Ok(tokens.chunks_exact(len).take(n).map(<[u32]>::to_vec).collect())
}
