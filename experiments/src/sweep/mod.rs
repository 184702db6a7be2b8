//! Sweeps (`spike sweep`, `docs/sweeps.md`): a spec's grid of flash settings run point by point in process,
//! each point's medians appended as tidy rows to `DIR/raw.csv`; shards of a sweep run apart and merged; charts
//! drawn from the CSV alone.
//!
//! A point's rows are written together, by rewriting `raw.csv` atomically at the point's end, so the file
//! never holds part of a point: a point is done exactly when its rows are there, and an interrupted sweep
//! resumes by skipping the done points' ids. Each decoded token's record goes to `tokens.csv` (labelled with
//! its point's id), written just before the point's rows.

pub mod output;
pub mod plot;
pub mod spec;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::Digest;

use predictor::calibrate::Thresholds;
use predictor::lowrank::RankSpec;
use predictor::metrics::LayerMetrics;
use predictor::selectors::{for_layout, Selection};
use predictor::trace::Trace;
use predictor::train::{train_predictor, PredictorConfig, TraceLayers, TrainConfig};
use spike_flash::engine::flash::{CacheChoice, Dram, FlashConfig, FlashSession};
use spike_flash::engine::input::ActPrecision;
use spike_flash::engine::model::Model;
use spike_flash::engine::sampler::argmax;
use spike_flash::io::IoConfig;
use spike_flash::layout::{self, ConvertOptions, Layout, LayoutKind, RecordDType};
use spike_flash::model::bind::Source;

use crate::record::TokenRecord;
use crate::summary::median;
use crate::{Error, Result};
pub use output::{Machine, Row, SweepInfo};
pub use spec::{Chooser, Point, Shard, SourceSpec, Spec, TrainSpec};

/// The metrics every point records, in row order; a point is complete when `raw.csv` has all of them.
/// Times are medians over the decoded tokens, ms; shares are of the FFN's neurons (layers x d_ffn). A value
/// that the point could not measure (no reads, no device profile) is NaN.
pub const METRICS: [&str; 27] = [
    "tokens",
    "total_ms",
    "io_ms",
    "mm_ms",
    "compute_ms",
    "select_ms",
    "other_ms",
    "mb_read_per_token",
    "reads_per_token",
    "bytes_read",
    "neurons_read",
    "hit_rate",
    "active_share",
    "window_held_share",
    "new_per_token_share",
    "window_held_mb",
    "cache_fill",
    "slots_per_layer",
    "dram_total_bytes",
    "dram_resident_bytes",
    "dram_caches_bytes",
    "dram_staging_bytes",
    "record_bytes",
    "mean_read_bytes",
    "io_mb_s",
    "predicted_io_ms",
    "prompt_perplexity",
];

/// A predictor's validation metrics (the split of `[train]`), for points whose predictor the sweep trained:
/// one row per layer (column `layer`) and one with the mean over layers (`layer` empty).
pub const PREDICTOR_METRICS: [&str; 6] = [
    "valid_recall",
    "valid_precision",
    "valid_false_negative_rate",
    "valid_predicted_true_ratio",
    "valid_true_active_fraction",
    "valid_predicted_active_fraction",
];

/// What a sweep run is told.
#[derive(Debug, Clone)]
pub struct SweepRun {
    pub spec: Spec,
    /// The output folder.
    pub out: PathBuf,
    pub shard: Shard,
    /// Activation precision of block-quantized weights.
    pub precision: ActPrecision,
}

/// What a sweep reports while it runs (the CLI draws a progress bar from it). Every method has a no-op
/// default.
pub trait Progress {
    /// `points` points will run, `units` steps in all (a prompt pass or a decoded token each).
    fn start(&mut self, _points: usize, _units: u64) {}
    /// Point `point` starts.
    fn point(&mut self, _point: &Point, _label: &str) {}
    /// `units` more steps are done.
    fn advance(&mut self, _units: u64) {}
    /// Something the user should read (a conversion, a budget that decides the cache size, ...).
    fn note(&mut self, _text: &str) {}
}

/// A [`Progress`] that says nothing.
pub struct Quiet;

impl Progress for Quiet {}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub points_total: usize,
    /// This shard's points.
    pub points_in_shard: usize,
    /// Of those, already done before this run.
    pub skipped: usize,
    pub ran: usize,
    /// Grid numbers of the points whose cache size the budget, not the policy, decided.
    pub budget_decided: Vec<usize>,
    pub raw_csv: PathBuf,
}

/// Runs the shard's points of `run.spec` that `run.out` does not hold yet.
pub fn run(run: &SweepRun, progress: &mut dyn Progress) -> Result<Outcome> {
    let spec = &run.spec;
    let files = output::Files::of(&run.out);
    let points = spec.points()?;
    check_inputs(spec, &points)?;
    std::fs::create_dir_all(&run.out).map_err(|e| Error::Io { path: run.out.clone(), source: e })?;
    let hash = spec.hash();
    if files.info.exists() {
        let info: SweepInfo = output::read_json(&files.info)?;
        if info.shard != run.shard.to_string() {
            return Err(Error::ShardConflict {
                dir: run.out.clone(),
                found: info.shard,
                wanted: run.shard.to_string(),
            });
        }
        if info.spec_sha256 != hash {
            progress.note(&format!(
                "{} was started with another version of the spec: points whose settings, source and prompts are \
                 unchanged are kept",
                run.out.display()
            ));
        }
    }
    // Rows of points this spec no longer has move to stale.csv, not into the sweep and not away.
    let ids: BTreeSet<&str> = points.iter().map(|p| p.id.as_str()).collect();
    let (mut rows, stale): (Vec<Row>, Vec<Row>) =
        output::read_rows(&files.raw)?.into_iter().partition(|r| ids.contains(r.point_id.as_str()));
    let (mut tokens, stale_tokens): (Vec<TokenRecord>, Vec<TokenRecord>) =
        output::read_tokens(&files.tokens)?.into_iter().partition(|t| ids.contains(t.label.as_str()));
    if !stale_tokens.is_empty() {
        let stale_path = run.out.join("stale-tokens.csv");
        let mut old = output::read_tokens(&stale_path)?;
        old.extend(stale_tokens);
        output::write_tokens(&stale_path, &old)?;
        output::write_tokens(&files.tokens, &tokens)?;
    }
    if !stale.is_empty() {
        let stale_path = run.out.join("stale.csv");
        let mut old = output::read_rows(&stale_path)?;
        let n: BTreeSet<&str> = stale.iter().map(|r| r.point_id.as_str()).collect();
        progress.note(&format!(
            "moving the rows of {} points that this spec no longer has to {}",
            n.len(),
            stale_path.display()
        ));
        old.extend(stale);
        output::write_rows(&stale_path, &old)?;
        output::write_rows(&files.raw, &rows)?;
    }
    let spec_text = std::fs::read(&spec.path).map_err(|e| Error::Io { path: spec.path.clone(), source: e })?;
    spike_flash::io::write_atomic(&files.spec, |w| w.write_all(&spec_text))?;
    let machine = Machine::describe();
    if !files.machine.exists() {
        output::write_json(&files.machine, &machine)?;
    }
    let done = output::complete_points(&rows, &METRICS);
    let mine: Vec<&Point> = points.iter().filter(|p| run.shard.has(p.index)).collect();
    let todo: Vec<&Point> = mine.iter().copied().filter(|p| !done.contains(&p.id)).collect();
    let mut info = SweepInfo {
        name: spec.name.clone(),
        spec_sha256: hash,
        shard: run.shard.to_string(),
        points_total: points.len(),
        points_expected: mine.len(),
        points_done: mine.len() - todo.len(),
        spec_path: Some(spec.path.display().to_string()),
    };
    output::write_json(&files.info, &info)?;
    let per_point = (spec.prompts.count * (spec.prompts.generate + 1)) as u64;
    progress.start(todo.len(), per_point * todo.len() as u64);
    let mut ctx = Context {
        spec,
        precision: run.precision,
        layouts: files.layouts.clone(),
        selectors: run.out.join("selectors"),
        tokens: HashMap::new(),
        trace: None,
    };
    let mut budget_decided = Vec::new();
    for point in &todo {
        let label = point.label(spec);
        progress.point(point, &label);
        let m = ctx.measure(point, progress).map_err(|e| Error::Point {
            index: point.index,
            settings: label.clone(),
            source: Box::new(e),
        })?;
        if m.budget_decides {
            budget_decided.push(point.index);
            progress.note(&format!(
                "point {} ({label}): the DRAM budget, not the cache policy, sets the cache size: {} row slots per \
                 layer, `{}` could use {}",
                point.index, m.slots, m.policy, m.policy_slots
            ));
        }
        // A point's tokens from an earlier, interrupted run of it (tokens written, rows not) are replaced.
        tokens.retain(|t| t.label != point.id);
        tokens.extend(m.records.iter().map(|r| TokenRecord { label: point.id.clone(), ..*r }));
        output::write_tokens(&files.tokens, &tokens)?;
        // A point whose rows lack metrics added since it ran is measured again: its old rows go.
        rows.retain(|r| r.point_id != point.id);
        rows.extend(m.rows(spec, point, &machine));
        output::write_rows(&files.raw, &rows)?;
        info.points_done += 1;
        output::write_json(&files.info, &info)?;
    }
    Ok(Outcome {
        points_total: points.len(),
        points_in_shard: mine.len(),
        skipped: mine.len() - todo.len(),
        ran: todo.len(),
        budget_decided,
        raw_csv: files.raw,
    })
}

/// Every file the points name exists before the first point runs.
fn check_inputs(spec: &Spec, points: &[Point]) -> Result<()> {
    let missing = |key: &str, path: &Path, what: &str| Error::Spec {
        path: spec.path.clone(),
        key: key.to_string(),
        what: format!("{what} {} does not exist", path.display()),
    };
    if !spec.prompts.text.exists() {
        return Err(missing("prompts.text", &spec.prompts.text, "the text file"));
    }
    match &spec.source {
        SourceSpec::Layout(l) if !l.exists() => return Err(missing("source.layout", l, "the layout")),
        SourceSpec::Model(Some(m)) if !m.exists() => return Err(missing("source.model", m, "the model")),
        _ => {}
    }
    for p in points {
        let key = |k: &str| if spec.fixed.contains_key(k) { format!("fixed.{k}") } else { format!("grid.{k}") };
        match &p.settings.selection {
            Chooser::File(Selection::Predictor(f)) if !f.exists() => {
                return Err(missing(&key("selection"), f, "the predictor file"))
            }
            Chooser::File(Selection::Oracle(f)) if !f.exists() => {
                return Err(missing(&key("selection"), f, "the thresholds file"))
            }
            Chooser::Oracle | Chooser::Predictor => {
                if let Some(t) = spec.train.as_ref().filter(|t| !t.trace.exists()) {
                    return Err(missing("train.trace", &t.trace, "the trace"));
                }
            }
            _ => {}
        }
        if let Some(f) = p.settings.profile.as_ref().filter(|f| !f.exists()) {
            return Err(missing(&key("profile"), f, "the device profile"));
        }
        if let Some(h) = p.settings.hot.as_ref().filter(|h| !h.exists()) {
            return Err(missing(&key("hot"), h, "the hot list"));
        }
    }
    Ok(())
}

/// What points of one run share: converted layouts, made selectors, the prompts' tokens per layout and the
/// `[train]` trace.
struct Context<'a> {
    spec: &'a Spec,
    precision: ActPrecision,
    layouts: PathBuf,
    /// Where thresholds and predictors made from the trace go (`DIR/selectors/`).
    selectors: PathBuf,
    tokens: HashMap<PathBuf, Vec<Vec<u32>>>,
    trace: Option<Trace>,
}

/// One point's measurements.
struct Measured {
    model: String,
    records: Vec<TokenRecord>,
    /// Per decoded token: cache rows in use after it, summed over layers.
    rows_held: Vec<u64>,
    capacity: u64,
    dram: Dram,
    layers: usize,
    d_ffn: usize,
    record_bytes: usize,
    budget_decides: bool,
    slots: usize,
    policy: String,
    policy_slots: usize,
    /// Perplexity of the prompts' tokens, each predicted from the ones before it in the prompt pass.
    prompt_perplexity: f64,
    /// Whether a device profile gave the cost model's predictions.
    predicted: bool,
    /// The validation metrics of a predictor the sweep trained, per layer.
    predictor_layers: Vec<LayerMetrics>,
}

impl Context<'_> {
    /// The layout a point runs on: the spec's, or the model converted to the point's kind and record type
    /// (once; a conversion of another model in its place is redone).
    fn layout(&self, kind: LayoutKind, dtype: RecordDType, progress: &mut dyn Progress) -> Result<PathBuf> {
        let model = match &self.spec.source {
            SourceSpec::Layout(l) => return Ok(l.clone()),
            SourceSpec::Model(m) => spike_flash::model::fetch::resolve_model(m.as_deref())?,
        };
        let kind_name = match kind {
            LayoutKind::Bundled => "bundled",
            LayoutKind::Split => "split",
        };
        let dir = self.layouts.join(format!("{kind_name}-{}.spike", spec::dtype_name(dtype)));
        let len = std::fs::metadata(&model).map_err(|e| Error::Io { path: model.clone(), source: e })?.len();
        if let Ok(l) = Layout::open(&dir) {
            let s = &l.manifest().source;
            if Path::new(&s.path) == model && (s.len == len || model.is_dir()) {
                return Ok(dir);
            }
        }
        progress.note(&format!("converting {} into {}", model.display(), dir.display()));
        std::fs::create_dir_all(&self.layouts).map_err(|e| Error::Io { path: self.layouts.clone(), source: e })?;
        let source = Source::open(&model)?;
        let m = Model::from_source(&source)?;
        let opts = ConvertOptions { kind, dtype, force: true, ..Default::default() };
        layout::write(&m, &model, &dir, &opts)?;
        Ok(dir)
    }

    /// The prompts' tokens for the layout at `dir`, from its tokenizer.
    fn prompts(&mut self, dir: &Path) -> Result<Vec<Vec<u32>>> {
        if let Some(t) = self.tokens.get(dir) {
            return Ok(t.clone());
        }
        let p = &self.spec.prompts;
        let text = std::fs::read_to_string(&p.text).map_err(|e| Error::Io { path: p.text.clone(), source: e })?;
        let tokens = Layout::open(dir)?.tokenizer()?.encode(&text)?;
        // The tokenizer is gone; give its heap back before the points load their models.
        spike_flash::io::trim_heap();
        let prompts = crate::table3::prompts_from(&tokens, p.count, p.tokens, &p.text)?;
        self.tokens.insert(dir.to_path_buf(), prompts.clone());
        Ok(prompts)
    }

    /// Runs `point`: every prompt from an empty state and empty caches, then its decoded tokens one by one.
    fn measure(&mut self, point: &Point, progress: &mut dyn Progress) -> Result<Measured> {
        let s = &point.settings;
        let dir = self.layout(s.layout, s.dtype, progress)?;
        let prompts = self.prompts(&dir)?;
        let (selection, predictor_layers) = self.selection(s, progress)?;
        let hot = s.hot.as_deref().map(spike_flash::layout::read_neuron_lists).transpose()?;
        let config = FlashConfig {
            backend: s.backend,
            io: IoConfig {
                align: s.align,
                max_gap: s.max_gap,
                max_merge: s.max_merge,
                queue_depth: s.queue_depth,
                threads: s.queue_depth,
                ..IoConfig::default()
            },
            cache: s.cache,
            budget: s.budget,
            hot,
            compute_all_cached: s.compute_all_cached,
            overlap: s.overlap,
            profile: s.profile.clone(),
            precision: self.precision,
            ..FlashConfig::new(&dir)
        };
        let session = FlashSession::open(config, false)?;
        let model = &session.model;
        let (layers, d_ffn) = (model.config().n_layers, model.config().d_ffn);
        let gen = self.spec.prompts.generate;
        let mut records = Vec::new();
        let mut rows_held = Vec::new();
        let mut dram = Dram::default();
        let mut capacity = 0;
        let (mut nll, mut scored) = (0.0f64, 0usize);
        for (seq, prompt) in prompts.iter().enumerate() {
            let selector = for_layout(&session.layout, &selection)?;
            let (mut ffn, d) = session.ffn(selector)?;
            dram = d;
            capacity = ffn.cache_stats().capacity;
            let mut state = model.new_state(prompt.len() + gen + 1);
            // Every position's logits: each prompt token after the first is scored as the model predicts it.
            let all = model.forward_with(&mut state, prompt, 0, &mut ffn)?;
            let vocab = all.len() / prompt.len();
            for (row, &next) in all.chunks_exact(vocab).zip(&prompt[1..]) {
                nll += neg_log_softmax(row, next as usize);
                scored += 1;
            }
            let mut logits = all[all.len() - vocab..].to_vec();
            drop(all);
            progress.advance(1);
            for _ in 0..gen {
                let next = argmax(&logits);
                let a = ffn.snapshot();
                let t = Instant::now();
                logits = model.forward_with(&mut state, &[next], 0, &mut ffn)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let mut rec = TokenRecord::between(records.len(), 1, ms, &a, &ffn.snapshot(), dram.total);
                rec.seq = seq;
                records.push(rec);
                rows_held.push(ffn.cache_stats().rows);
                progress.advance(1);
            }
            drop(ffn);
            spike_flash::io::trim_heap();
        }
        // The policy in force (`hybrid` resolved); it round-trips through its text.
        let policy: spike_flash::cache::PolicySpec = dram.policy.parse()?;
        let policy_slots = policy.max_slots(d_ffn);
        let budget_decides = match (s.budget, s.cache) {
            (None, _) => false,
            // Hybrid's pinned set is as large as the budget allows, by definition.
            (Some(_), CacheChoice::Hybrid) => true,
            (Some(_), CacheChoice::Policy(_)) => dram.slots_per_layer < policy_slots,
        };
        Ok(Measured {
            model: model_name(&session.layout),
            records,
            rows_held,
            capacity,
            slots: dram.slots_per_layer,
            policy: dram.policy.clone(),
            policy_slots,
            dram,
            layers,
            d_ffn,
            record_bytes: session.layout.payload_bytes(),
            budget_decides,
            prompt_perplexity: if scored == 0 { f64::NAN } else { (nll / scored as f64).exp() },
            predicted: s.profile.is_some(),
            predictor_layers,
        })
    }

    /// The trace of `[train]`, opened once.
    fn trace(&mut self) -> Result<(&Trace, &TrainSpec)> {
        let train = self.spec.train.as_ref().ok_or_else(|| Error::Spec {
            path: self.spec.path.clone(),
            key: "train".into(),
            what: "a made selection needs a [train] section".into(),
        })?;
        if self.trace.is_none() {
            self.trace = Some(Trace::open(&train.trace)?);
        }
        Ok((self.trace.as_ref().expect("opened above"), train))
    }

    /// What picks `s`'s neurons: the selection's file, or thresholds and a predictor made from `[train]`'s
    /// trace into `DIR/selectors/` (once per sparsity and rank; a later run reuses them), with the trained
    /// predictor's per-layer validation metrics.
    fn selection(&mut self, s: &spec::Settings, progress: &mut dyn Progress) -> Result<(Selection, Vec<LayerMetrics>)> {
        let sparsity = match (&s.selection, s.sparsity) {
            (Chooser::File(f), _) => return Ok((f.clone(), Vec::new())),
            (_, Some(x)) => x,
            (_, None) => return Err(Error::Invalid("a made selection without a sparsity".into())),
        };
        let tag = self.train_tag()?;
        let dir = self.selectors.clone();
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
        let thr_path = dir.join(format!("thresholds-s{sparsity}-{tag}.json"));
        if !thr_path.exists() {
            let (trace, train) = self.trace()?;
            progress.note(&format!("calibrating thresholds for sparsity {sparsity} on {}", train.trace.display()));
            let t = Thresholds::calibrate(trace, sparsity, train.valid_fraction, train.split_seed, &mut |_| {})?;
            t.save(&thr_path)?;
        }
        if s.selection == Chooser::Oracle {
            return Ok((Selection::Oracle(thr_path), Vec::new()));
        }
        let rank = s.rank.unwrap_or(spec::DEFAULT_RANK);
        let pred_path = dir.join(format!("predictor-s{sparsity}-r{rank}-{tag}.pred"));
        let csv_path = pred_path.with_extension("csv");
        if pred_path.exists() && csv_path.exists() {
            let csv_err = |e: csv::Error| Error::Csv { path: csv_path.clone(), what: e.to_string() };
            let mut r = csv::Reader::from_path(&csv_path).map_err(csv_err)?;
            let layers = r.deserialize().map(|row| row.map_err(csv_err)).collect::<Result<Vec<LayerMetrics>>>()?;
            return Ok((Selection::Predictor(pred_path), layers));
        }
        let thresholds = Thresholds::load(&thr_path)?;
        let (trace, train) = self.trace()?;
        let (mut train_tokens, valid_tokens) = trace.split(train.valid_fraction, train.split_seed);
        if let Some(m) = train.max_train_tokens {
            train_tokens.truncate(m);
        }
        if train_tokens.is_empty() || valid_tokens.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: the train/validation split (valid_fraction {}) leaves one side empty ({} / {} tokens)",
                train.trace.display(),
                train.valid_fraction,
                train_tokens.len(),
                valid_tokens.len()
            )));
        }
        let positives: predictor::train::Positives =
            train.positives.parse().map_err(|e: String| Error::Invalid(format!("train.positives: {e}")))?;
        let cfg = PredictorConfig {
            ranks: RankSpec::uniform(rank),
            train: TrainConfig { epochs: train.epochs, positives, ..TrainConfig::default() },
            recall: train.recall,
        };
        progress.note(&format!(
            "training a rank-{rank} predictor at sparsity {sparsity} on {} ({} training, {} validation tokens)",
            train.trace.display(),
            train_tokens.len(),
            valid_tokens.len()
        ));
        let source = TraceLayers::new(trace, train_tokens, valid_tokens, thresholds.thresholds)?
            .with_magnitudes(positives == predictor::train::Positives::Magnitude);
        let (pred, layers) = train_predictor(&source, trace.meta().identity(), &cfg, &|_| {})?;
        predictor::file::write(&pred_path, &pred)?;
        crate::summary::write_csv(&csv_path, &layers)?;
        Ok((Selection::Predictor(pred_path), layers))
    }

    /// A short hash of `[train]` and the trace file's length: the made selectors' names carry it, so a
    /// changed section or trace makes new ones.
    fn train_tag(&self) -> Result<String> {
        let train = self.spec.train.as_ref().ok_or_else(|| Error::Invalid("no [train] section".into()))?;
        let len =
            std::fs::metadata(&train.trace).map_err(|e| Error::Io { path: train.trace.clone(), source: e })?.len();
        let text = format!("{};len={len}", serde_json::to_string(train).expect("a train section serializes"));
        Ok(spec::hex(&sha2::Sha256::digest(text.as_bytes()))[..8].to_string())
    }
}

/// `-ln softmax(row)[target]`, in f64 over the row's largest logit.
fn neg_log_softmax(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let t = row.get(target).map_or(f64::NEG_INFINITY, |&x| x as f64);
    max + sum.ln() - t
}

/// The layout's source model by name (the file or folder name, no path).
fn model_name(layout: &Layout) -> String {
    let p = Path::new(&layout.manifest().source.path);
    p.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
}

impl Measured {
    /// The metrics of [`METRICS`], in order.
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        let r = &self.records;
        let m = |g: &dyn Fn(&TokenRecord) -> f64| median(r.iter().map(g));
        let neurons = (self.layers * self.d_ffn) as f64;
        let held = |rows: u64| rows as f64;
        let values = [
            r.len() as f64,
            m(&|t| t.total_ms),
            m(&|t| t.io_ms),
            m(&|t| t.mm_ms),
            m(&|t| t.ffn_compute_ms),
            m(&|t| t.select_ms),
            m(&|t| t.other_ms),
            m(&|t| t.bytes_read as f64 / 1e6),
            m(&|t| t.reads as f64),
            r.iter().map(|t| t.bytes_read as f64).sum(),
            r.iter().map(|t| t.neurons_read as f64).sum(),
            m(&|t| t.hit_rate),
            m(&|t| t.neurons_active as f64 / neurons),
            median(self.rows_held.iter().map(|&x| held(x) / neurons)),
            m(&|t| t.neurons_read as f64 / neurons),
            median(self.rows_held.iter().map(|&x| held(x) * self.record_bytes as f64 / 1e6)),
            match self.capacity {
                0 => 0.0,
                c => median(self.rows_held.iter().map(|&x| held(x) / c as f64)),
            },
            self.dram.slots_per_layer as f64,
            self.dram.total as f64,
            self.dram.resident as f64,
            self.dram.caches as f64,
            self.dram.staging as f64,
            self.record_bytes as f64,
            {
                let (bytes, reads) = r.iter().fold((0u64, 0u64), |(b, n), t| (b + t.bytes_read, n + t.reads));
                if reads == 0 {
                    f64::NAN
                } else {
                    bytes as f64 / reads as f64
                }
            },
            median(r.iter().filter(|t| t.reads > 0 && t.io_ms > 0.0).map(|t| t.bytes_read as f64 / 1e3 / t.io_ms)),
            if self.predicted { m(&|t| t.predicted_io_ms) } else { f64::NAN },
            self.prompt_perplexity,
        ];
        METRICS.iter().copied().zip(values).collect()
    }

    /// The point's rows of `raw.csv`.
    fn rows(&self, spec: &Spec, point: &Point, machine: &Machine) -> Vec<Row> {
        let mut base = Row {
            sweep: spec.name.clone(),
            point: point.index,
            point_id: point.id.clone(),
            model: self.model.clone(),
            planted: spec.planted,
            layout: String::new(),
            dtype: String::new(),
            selection: String::new(),
            hot: String::new(),
            backend: String::new(),
            align: String::new(),
            queue_depth: String::new(),
            max_merge: String::new(),
            max_gap: String::new(),
            overlap: String::new(),
            compute_all_cached: String::new(),
            budget: String::new(),
            cache: String::new(),
            window: String::new(),
            sparsity: String::new(),
            rank: String::new(),
            profile: String::new(),
            prompts: spec.prompts.count,
            prompt_tokens: spec.prompts.tokens,
            gen_tokens: spec.prompts.generate,
            budget_decides: self.budget_decides,
            layer: String::new(),
            metric: String::new(),
            value: 0.0,
            commit: machine.commit.clone(),
            machine: machine.cpu.clone(),
        };
        for (k, v) in &point.columns {
            let known = base.set_setting(k, v.clone());
            debug_assert!(known, "every setting has a column");
        }
        let mut rows: Vec<Row> = self
            .metrics()
            .into_iter()
            .map(|(metric, value)| Row { metric: metric.to_string(), value, ..base.clone() })
            .collect();
        if !self.predictor_layers.is_empty() {
            let of = |m: &LayerMetrics| {
                [
                    m.recall,
                    m.precision,
                    m.false_negative_rate,
                    m.predicted_true_ratio,
                    m.true_active_fraction,
                    m.predicted_active_fraction,
                ]
            };
            let n = self.predictor_layers.len() as f64;
            for (i, metric) in PREDICTOR_METRICS.iter().enumerate() {
                let mean = self.predictor_layers.iter().map(|m| of(m)[i]).sum::<f64>() / n;
                rows.push(Row { metric: metric.to_string(), value: mean, ..base.clone() });
            }
            for m in &self.predictor_layers {
                for (metric, value) in PREDICTOR_METRICS.iter().zip(of(m)) {
                    rows.push(Row { layer: m.layer.to_string(), metric: metric.to_string(), value, ..base.clone() });
                }
            }
        }
        rows
    }
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub points_total: usize,
    pub points_done: usize,
    /// Grid numbers of the spec's points that no shard holds.
    pub missing: Vec<usize>,
    pub raw_csv: PathBuf,
}

/// Joins the outputs of shards of one sweep (`dirs`) into `out`: one `raw.csv` in grid order, the spec, a
/// `sweep.json` and a `machine.json` listing each shard's machine. Refuses folders of different specs.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Merged> {
    let first = dirs.first().ok_or_else(|| Error::Invalid("merge: no sweep folders given".into()))?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    let mut infos = Vec::new();
    for d in dirs {
        if same(d, out) {
            return Err(Error::Invalid(format!("merge: the output {} is one of the inputs", out.display())));
        }
        let f = output::Files::of(d);
        if !f.info.exists() || !f.raw.exists() {
            return Err(Error::NotASweep { dir: d.clone() });
        }
        let info: SweepInfo = output::read_json(&f.info)?;
        if let Some((d0, i0)) = infos.first().map(|(d, i): &(PathBuf, SweepInfo)| (d, i)) {
            if i0.spec_sha256 != info.spec_sha256 {
                return Err(Error::SpecMismatch {
                    dir: d.clone(),
                    other: d0.clone(),
                    found: info.spec_sha256.clone(),
                    expected: i0.spec_sha256.clone(),
                });
            }
        }
        infos.push((d.clone(), info));
    }
    let files = output::Files::of(out);
    if files.info.exists() {
        let old: SweepInfo = output::read_json(&files.info)?;
        if old.spec_sha256 != infos[0].1.spec_sha256 {
            return Err(Error::SpecMismatch {
                dir: out.to_path_buf(),
                other: first.clone(),
                found: old.spec_sha256,
                expected: infos[0].1.spec_sha256.clone(),
            });
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut tokens: Vec<TokenRecord> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut machines = Vec::new();
    for (d, info) in &infos {
        let f = output::Files::of(d);
        let shard_rows = output::read_rows(&f.raw)?;
        // A point run by two folders (a shard given twice, or run again) counts once: the first folder's.
        let ids: BTreeSet<String> = shard_rows.iter().map(|r| r.point_id.clone()).collect();
        let fresh: BTreeSet<String> = ids.difference(&seen).cloned().collect();
        rows.extend(shard_rows.into_iter().filter(|r| fresh.contains(&r.point_id)));
        tokens.extend(output::read_tokens(&f.tokens)?.into_iter().filter(|t| fresh.contains(&t.label)));
        seen.extend(fresh);
        let machine: serde_json::Value =
            if f.machine.exists() { output::read_json(&f.machine)? } else { serde_json::Value::Null };
        machines.push(serde_json::json!({"shard": info.shard, "machine": machine}));
    }
    let order = |r: &Row| (r.point, METRICS.iter().position(|m| *m == r.metric).unwrap_or(METRICS.len()));
    rows.sort_by_key(order);
    let total = infos[0].1.points_total;
    let done: BTreeSet<usize> = rows.iter().map(|r| r.point).collect();
    let missing: Vec<usize> = (0..total).filter(|p| !done.contains(p)).collect();
    std::fs::create_dir_all(out).map_err(|e| Error::Io { path: out.to_path_buf(), source: e })?;
    let spec_text = std::fs::read(output::Files::of(first).spec.as_path())
        .map_err(|e| Error::Io { path: output::Files::of(first).spec, source: e })?;
    spike_flash::io::write_atomic(&files.spec, |w| w.write_all(&spec_text))?;
    output::write_json(&files.machine, &serde_json::json!({ "merged_from": machines }))?;
    let point_of: HashMap<&str, usize> = rows.iter().map(|r| (r.point_id.as_str(), r.point)).collect();
    tokens.sort_by_key(|t| point_of.get(t.label.as_str()).copied().unwrap_or(usize::MAX));
    output::write_tokens(&files.tokens, &tokens)?;
    output::write_rows(&files.raw, &rows)?;
    let info = SweepInfo {
        name: infos[0].1.name.clone(),
        spec_sha256: infos[0].1.spec_sha256.clone(),
        shard: "merged".to_string(),
        points_total: total,
        points_expected: total,
        points_done: done.len(),
        spec_path: infos[0].1.spec_path.clone(),
    };
    output::write_json(&files.info, &info)?;
    Ok(Merged { points_total: total, points_done: done.len(), missing, raw_csv: files.raw })
}
