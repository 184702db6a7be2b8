//! `spike reproduce`: the whole chain on the default model, stage by stage, into one run folder: the machine,
//! a device profile, the dense checks (greedy generation, GPL-3 perplexity, dense speed), the training corpus,
//! a trace, thresholds and their statistics, a predictor, every sweep of `experiments/specs/`, the flash bench
//! inside a memory cgroup, optionally the planted paper-scale run, the charts and the report.
//!
//! Each stage runs in process through the libraries, except three that need their own process: the corpus
//! (`scripts/corpus.sh`, Python's own documentation as text), the flash bench (a memory cgroup holds a
//! process, `scripts/cgroup-run.sh`) and the paper-scale run (`scripts/paper-scale.sh`). A stage is done when
//! its marker `DIR/stages/NAME.done` and all its outputs exist: a rerun on the same folder skips it and says
//! so, which is how an interrupted run resumes. A run folder holds `reproduce.json` (its flags); a folder
//! without one that is not empty is refused, so no committed result is written over.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use predictor::calibrate::Thresholds;
use predictor::corpus::{documents, DocSplit};
use predictor::lowrank::RankSpec;
use predictor::trace::{record, ModelIdentity, RecordConfig, Trace, TraceWriter};
use predictor::train::{train_predictor, PredictorConfig, TraceLayers, TrainConfig};
use spike_flash::engine::input::ActPrecision;
use spike_flash::engine::model::{DenseFfn, Model};
use spike_flash::engine::sampler::argmax;
use spike_flash::layout::{self, ConvertOptions, LayoutKind};
use spike_flash::model::bind::Source;

use crate::device::{self, ProfileConfig};
use crate::sweep::{self, output, plot, Shard, Spec, SweepRun};
use crate::{dense_bench, latency, report, summary, trace_stats, Error, Result};

/// The held-out text of the dense checks and of the bench prompts.
pub const GPL3: &str = "/usr/share/common-licenses/GPL-3";

/// What a reproduce run is told.
#[derive(Debug, Clone)]
pub struct ReproduceConfig {
    /// The run folder.
    pub out: PathBuf,
    /// Small token counts and fewer grid points: minutes, not an hour.
    pub quick: bool,
    /// Add the planted paper-scale run (`scripts/paper-scale.sh`).
    pub paper_scale: bool,
    /// The repository root (experiments/specs, scripts/).
    pub repo: PathBuf,
    /// The `spike` executable, for the bench in its memory cgroup.
    pub exe: PathBuf,
    /// The model file (the default model, fetched).
    pub model: PathBuf,
    pub precision: ActPrecision,
}

/// The sizes of a run: the full one or `--quick`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    pub profile: ProfileConfig,
    /// GPL-3 perplexity chunks of 512 tokens (None: the whole text, as llama.cpp's 18.35 was measured).
    pub ppl_chunks: Option<usize>,
    pub dense: dense_bench::DenseBench,
    pub trace_tokens: usize,
    pub k_max: usize,
    pub rank: usize,
    pub epochs: usize,
    pub max_train_tokens: Option<usize>,
    /// Flash bench: prompts (rounds), prompt tokens, decoded tokens.
    pub bench: (usize, usize, usize),
    /// Sweeps: prompts per point and decoded tokens per prompt (None: as the spec says).
    pub sweep_prompts: Option<(usize, usize)>,
}

impl Sizes {
    pub fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                profile: ProfileConfig {
                    file_size: 256 << 20,
                    chunks: vec![4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20],
                    depths: vec![1, 4, 16, 32],
                    seconds_per_point: 0.25,
                    rounds: 1,
                    ..ProfileConfig::default()
                },
                ppl_chunks: Some(4),
                dense: dense_bench::DenseBench { prompt: 64, gen: 32, reps: 2, memory: false },
                trace_tokens: 2000,
                k_max: 8,
                rank: 32,
                epochs: 3,
                max_train_tokens: Some(1000),
                bench: (1, 32, 8),
                sweep_prompts: Some((1, 8)),
            }
        } else {
            Sizes {
                profile: ProfileConfig {
                    file_size: 1 << 30,
                    seconds_per_point: 0.5,
                    rounds: 2,
                    ..ProfileConfig::default()
                },
                ppl_chunks: None,
                dense: dense_bench::DenseBench { prompt: 128, gen: 128, reps: 3, memory: false },
                trace_tokens: 10_000,
                k_max: 16,
                rank: 32,
                epochs: TrainConfig::default().epochs,
                max_train_tokens: None,
                bench: (3, 64, 32),
                sweep_prompts: None,
            }
        }
    }
}

/// What a run reports while it goes (the CLI draws a progress bar per stage). Every method has a no-op default.
pub trait StageProgress {
    /// Stage `index` of `count` starts; it has `units` steps (0 when unknown).
    fn stage(&mut self, _index: usize, _count: usize, _name: &str, _units: u64) {}
    /// The stage turns out to have `units` steps.
    fn set_units(&mut self, _units: u64) {}
    /// `units` more steps are done.
    fn advance(&mut self, _units: u64) {}
    /// The stage is done, in `secs` seconds.
    fn finished(&mut self, _name: &str, _secs: f64) {}
    /// Stage `index` of `count` is skipped: its outputs are complete.
    fn skipped(&mut self, _index: usize, _count: usize, _name: &str, _why: &str) {}
    /// Something to read.
    fn note(&mut self, _text: &str) {}
}

/// A [`StageProgress`] that says nothing.
pub struct Silent;

impl StageProgress for Silent {}

/// A sweep's progress, passed on as its stage's.
struct SweepProgress<'a>(&'a mut dyn StageProgress);

impl sweep::Progress for SweepProgress<'_> {
    fn start(&mut self, _points: usize, units: u64) {
        self.0.set_units(units);
    }
    fn advance(&mut self, units: u64) {
        self.0.advance(units);
    }
    fn note(&mut self, text: &str) {
        self.0.note(text);
    }
}

/// The flags a run folder was started with (`reproduce.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub quick: bool,
    pub paper_scale: bool,
    /// When the folder was started (UTC).
    pub started: String,
    pub commit: String,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub report: PathBuf,
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
}

/// `YYYY-MM-DDTHH-MM-SSZ` of `secs` seconds since the Unix epoch (UTC): a folder name that sorts by time.
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The default run folder: `results/runs/<UTC date-time>/` under `repo`.
pub fn default_out(repo: &Path) -> PathBuf {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    repo.join("results").join("runs").join(utc_stamp(now))
}

/// One stage: its name and the files that say it is complete.
struct Stage {
    name: String,
    outputs: Vec<PathBuf>,
    kind: StageKind,
}

enum StageKind {
    Machine,
    Device,
    Dense,
    Corpus,
    Trace,
    Thresholds,
    Predictor,
    Sweep(PathBuf),
    Flash,
    PaperScale(&'static str),
    Report,
}

/// The run folder's files, named once.
struct Paths {
    out: PathBuf,
}

impl Paths {
    fn p(&self, rel: &str) -> PathBuf {
        self.out.join(rel)
    }
    fn trace(&self) -> PathBuf {
        self.p("scratch/train.trace")
    }
    fn corpus(&self) -> PathBuf {
        self.p("corpus/train.txt")
    }
    fn thresholds(&self, s: &str) -> PathBuf {
        self.p(&format!("traces/thresholds-s{s}.json"))
    }
    fn hot(&self) -> PathBuf {
        self.p("traces/stats/hot-thresholds-s0.50.json")
    }
    fn predictor(&self, rank: usize) -> PathBuf {
        self.p(&format!("flash/predictor-s0.50-r{rank}.pred"))
    }
    fn profile(&self) -> PathBuf {
        self.p("device/device-profile.json")
    }
    fn marker(&self, stage: &str) -> PathBuf {
        self.p(&format!("stages/{}.done", stage.replace(['/', ' '], "-")))
    }
}

/// The paper-scale preset of a run.
fn preset(quick: bool) -> &'static str {
    if quick {
        "tiny"
    } else {
        "opt-1.3b"
    }
}

/// Checks and opens the run folder: a new or empty folder gets `reproduce.json`; a folder with one resumes when
/// its flags are the same; anything else is refused.
fn open_folder(cfg: &ReproduceConfig) -> Result<RunInfo> {
    let info_path = cfg.out.join("reproduce.json");
    if info_path.exists() {
        let info: RunInfo = output::read_json(&info_path)?;
        if info.quick != cfg.quick || info.paper_scale != cfg.paper_scale {
            return Err(Error::Invalid(format!(
                "{} was started with{} --quick and with{} --paper-scale: give the same flags to resume it, or \
                 another --out",
                cfg.out.display(),
                if info.quick { "" } else { "out" },
                if info.paper_scale { "" } else { "out" }
            )));
        }
        return Ok(info);
    }
    if cfg.out.exists() {
        let mut entries = std::fs::read_dir(&cfg.out).map_err(|e| Error::Io { path: cfg.out.clone(), source: e })?;
        if entries.next().is_some() {
            return Err(Error::Invalid(format!(
                "--out {}: the folder holds files but no reproduce.json, so it is not a run of `spike reproduce`; \
                 give a new folder (results are never written over)",
                cfg.out.display()
            )));
        }
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::Io { path: cfg.out.clone(), source: e })?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let info =
        RunInfo { quick: cfg.quick, paper_scale: cfg.paper_scale, started: utc_stamp(now), commit: output::commit() };
    output::write_json(&info_path, &info)?;
    Ok(info)
}

/// The stages of a run, in order.
fn stages(cfg: &ReproduceConfig, sizes: &Sizes) -> Result<Vec<Stage>> {
    let p = Paths { out: cfg.out.clone() };
    let st = |name: &str, outputs: Vec<PathBuf>, kind: StageKind| Stage { name: name.into(), outputs, kind };
    let mut v = vec![
        st("machine", vec![p.p("machine.json")], StageKind::Machine),
        st("device profile", vec![p.profile(), p.p("device/device-profile.csv")], StageKind::Device),
        st(
            "dense checks",
            vec![p.p("dense/generate.json"), p.p("dense/perplexity.json"), p.p("dense/bench-dense.csv")],
            StageKind::Dense,
        ),
        st("corpus", vec![p.corpus()], StageKind::Corpus),
        st("trace", vec![p.trace()], StageKind::Trace),
        st(
            "thresholds and statistics",
            vec![p.thresholds("0.50"), p.thresholds("0.70"), p.hot(), p.p("traces/stats/summary.txt")],
            StageKind::Thresholds,
        ),
        st("predictor", vec![p.predictor(sizes.rank)], StageKind::Predictor),
    ];
    for spec in spec_files(&cfg.repo)? {
        let name = spec.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = p.p(&format!("sweeps/{name}"));
        v.push(st(&format!("sweep {name}"), vec![dir.join("raw.csv"), dir.join("sweep.json")], StageKind::Sweep(spec)));
    }
    v.push(st(
        "flash bench under a memory cap",
        vec![p.p("flash/bench.summary.csv"), p.p("flash/cap.json")],
        StageKind::Flash,
    ));
    if cfg.paper_scale {
        let tag = format!("{}-planted-v2", preset(cfg.quick));
        v.push(st(
            "paper scale (planted)",
            vec![p.p(&format!("paper-scale/{tag}/table3.csv"))],
            StageKind::PaperScale(preset(cfg.quick)),
        ));
    }
    v.push(st("charts and report", vec![p.p("REPORT.md"), p.p("raw.csv")], StageKind::Report));
    Ok(v)
}

/// The sweep specs of `repo/experiments/specs`, in name order.
pub fn spec_files(repo: &Path) -> Result<Vec<PathBuf>> {
    let dir = repo.join("experiments/specs");
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
    let mut v = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::Io { path: dir.clone(), source: e })?;
        if e.path().extension().is_some_and(|x| x == "toml") {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Runs every stage not yet complete in `cfg.out`; returns where the report is.
pub fn run(cfg: &ReproduceConfig, progress: &mut dyn StageProgress) -> Result<Outcome> {
    if !cfg.repo.join("experiments/specs").is_dir() || !cfg.repo.join("scripts").is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not the repository root (no experiments/specs and scripts/ in it): run spike reproduce from there",
            cfg.repo.display()
        )));
    }
    if !cfg.model.exists() {
        return Err(Error::Invalid(format!("the model {} does not exist (spike fetch-model)", cfg.model.display())));
    }
    open_folder(cfg)?;
    let sizes = Sizes::of(cfg.quick);
    let stages = stages(cfg, &sizes)?;
    let paths = Paths { out: cfg.out.clone() };
    let mut outcome = Outcome { report: paths.p("REPORT.md"), ran: vec![], skipped: vec![], notes: vec![] };
    let n = stages.len();
    for (i, s) in stages.iter().enumerate() {
        let marker = paths.marker(&s.name);
        // The report is made from every stage's outputs: it is made again whenever a stage ran.
        let stale = matches!(s.kind, StageKind::Report) && !outcome.ran.is_empty();
        if !stale && marker.exists() && s.outputs.iter().all(|o| o.exists()) {
            progress.skipped(i + 1, n, &s.name, "its outputs are complete");
            outcome.skipped.push(s.name.clone());
            continue;
        }
        let t0 = Instant::now();
        progress.stage(i + 1, n, &s.name, 0);
        let mut notes = Vec::new();
        let r = run_stage(cfg, &sizes, &paths, &s.kind, progress, &mut notes);
        for note in &notes {
            progress.note(note);
        }
        outcome.notes.extend(notes);
        r.map_err(|e| Error::Invalid(format!("stage `{}`: {e}", s.name)))?;
        if let Some(missing) = s.outputs.iter().find(|o| !o.exists()) {
            return Err(Error::Invalid(format!("stage `{}` did not write {}", s.name, missing.display())));
        }
        let secs = t0.elapsed().as_secs_f64();
        mkdir(marker.parent().expect("a marker lives in DIR/stages"))?;
        output::write_json(&marker, &serde_json::json!({ "stage": s.name, "seconds": secs }))?;
        progress.finished(&s.name, secs);
        outcome.ran.push(s.name.clone());
    }
    Ok(outcome)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io { path: path.to_path_buf(), source: e }
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

fn load_model(cfg: &ReproduceConfig) -> Result<(Model, spike_flash::model::tokenizer::Tokenizer)> {
    let source = Source::open(&cfg.model)?;
    let tokenizer = source.tokenizer()?;
    let mut model = Model::from_source(&source)?;
    model.set_precision(cfg.precision);
    Ok((model, tokenizer))
}

fn run_stage(
    cfg: &ReproduceConfig,
    sizes: &Sizes,
    p: &Paths,
    kind: &StageKind,
    progress: &mut dyn StageProgress,
    notes: &mut Vec<String>,
) -> Result<()> {
    match kind {
        StageKind::Machine => output::write_json(&p.p("machine.json"), &output::Machine::describe()),
        StageKind::Device => {
            let dir = p.p("device");
            mkdir(&dir)?;
            let c = &sizes.profile;
            progress.set_units((c.chunks.len() * c.depths.len() * c.rounds) as u64);
            // The scratch file lives where the run's layouts do: the device they are read from.
            let scratch = p.p("scratch");
            mkdir(&scratch)?;
            let profile = device::run_profile(&scratch, c, &mut |_, _| progress.advance(1))?;
            profile.save(&p.profile())?;
            device::write_profile_csv(&profile, &dir.join("device-profile.csv"))?;
            device::draw_profile(&profile, &dir)?;
            Ok(())
        }
        StageKind::Dense => dense(cfg, sizes, p, progress),
        StageKind::Corpus => {
            let out = p.corpus();
            let log = p.p("corpus/corpus.log");
            mkdir(&p.p("corpus"))?;
            let mut cmd = Command::new("bash");
            cmd.arg(cfg.repo.join("scripts/corpus.sh")).arg(&out);
            subprocess(cmd, &log, progress, |_| false)?;
            Ok(())
        }
        StageKind::Trace => trace(cfg, sizes, p, progress),
        StageKind::Thresholds => {
            let trace = Trace::open(&p.trace())?;
            progress.set_units(2 + 1);
            for s in ["0.50", "0.70"] {
                let target: f64 = s.parse().expect("a literal sparsity");
                let t = Thresholds::calibrate(&trace, target, 0.2, 0, &mut |_| {})?;
                mkdir(&p.p("traces"))?;
                t.save(&p.thresholds(s))?;
                progress.advance(1);
            }
            drop(trace);
            let stats = trace_stats::TraceStatsConfig {
                thresholds: vec![p.thresholds("0.50"), p.thresholds("0.70")],
                predictors: vec![],
                sparsity: vec![],
                abs_threshold: vec![],
                valid_fraction: 0.2,
                seed: 0,
                k_max: sizes.k_max,
                coact_sample: 16,
            };
            trace_stats::run(&p.trace(), &stats, &p.p("traces/stats"), &mut |_, _| {})?;
            progress.advance(1);
            Ok(())
        }
        StageKind::Predictor => train(sizes, p, progress, notes),
        StageKind::Sweep(spec) => sweep_stage(cfg, sizes, p, spec, progress, notes),
        StageKind::Flash => flash(cfg, sizes, p, progress, notes),
        StageKind::PaperScale(preset) => {
            let tag = format!("{preset}-planted-v2");
            let out = p.p(&format!("paper-scale/{tag}"));
            mkdir(&out)?;
            let mut cmd = Command::new("bash");
            cmd.arg(cfg.repo.join("scripts/paper-scale.sh")).args(["--preset", preset, "--out"]).arg(&out);
            if cfg.quick {
                cmd.args(["--prompt", "16", "--gen", "8", "--prompts", "1"]);
            }
            // The script's seven steps each print a line `== [N s] K/7 ...`.
            progress.set_units(7);
            subprocess(cmd, &out.join("paper-scale.log"), progress, |l| l.starts_with("== ["))?;
            Ok(())
        }
        StageKind::Report => {
            raw_csv(p)?;
            report::write(&p.out)?;
            Ok(())
        }
    }
}

/// Greedy generation, GPL-3 perplexity and the dense speed.
fn dense(cfg: &ReproduceConfig, sizes: &Sizes, p: &Paths, progress: &mut dyn StageProgress) -> Result<()> {
    let dir = p.p("dense");
    mkdir(&dir)?;
    let (model, tok) = load_model(cfg)?;
    let text = std::fs::read_to_string(GPL3).map_err(io_err(Path::new(GPL3)))?;
    let mut tokens = tok.encode(&text)?;
    let ctx = 512;
    if let Some(c) = sizes.ppl_chunks {
        tokens.truncate(c * ctx);
    }
    let chunks = tokens.len() / ctx;
    progress.set_units((1 + chunks + 2 * sizes.dense.reps) as u64);
    // Greedy continuation, as llama.cpp's " Paris." reference was made.
    let prompt_text = "The capital of France is";
    let prompt = tok.encode(prompt_text)?;
    let n = 8;
    let mut state = model.try_new_state(prompt.len() + n)?;
    let mut logits = model.forward(&mut state, &prompt, false)?;
    let mut generated = Vec::new();
    for i in 0..n {
        let next = argmax(&logits);
        if Some(next) == tok.eos() {
            break;
        }
        generated.push(next);
        if i + 1 < n {
            logits = model.forward(&mut state, &[next], false)?;
        }
    }
    let continuation = tok.decode(&generated)?;
    output::write_json(
        &dir.join("generate.json"),
        &serde_json::json!({
            "prompt": prompt_text, "tokens": generated, "text": continuation, "temperature": 0,
            "reference": "llama.cpp greedy: \" Paris.\" then a blank line (docs/reference-numbers.md)",
        }),
    )?;
    progress.advance(1);
    let mut ffn = DenseFfn::default();
    let ppl = spike_flash::engine::eval::perplexity(&model, &tokens, ctx, &mut ffn, &mut |_, _, _| {
        progress.advance(1);
    })?;
    output::write_json(
        &dir.join("perplexity.json"),
        &serde_json::json!({
            "file": GPL3, "ctx": ctx, "result": ppl,
            "whole_text": sizes.ppl_chunks.is_none(),
            "reference": "llama.cpp, the whole text at context 512: 18.35 (docs/reference-numbers.md)",
        }),
    )?;
    let rows = dense_bench::run(&model, &cfg.model, &sizes.dense, &mut || progress.advance(1))?;
    summary::write_csv(&dir.join("bench-dense.csv"), &rows)?;
    Ok(())
}

/// A dense run over the corpus, recorded.
fn trace(cfg: &ReproduceConfig, sizes: &Sizes, p: &Paths, progress: &mut dyn StageProgress) -> Result<()> {
    let (model, tok) = load_model(cfg)?;
    let identity = ModelIdentity::of(&cfg.model, model.config())?;
    let corpus = p.corpus();
    let text = std::fs::read_to_string(&corpus).map_err(io_err(&corpus))?;
    let docs = documents(&text, DocSplit::Sections).iter().map(|d| tok.encode(d)).collect::<Result<Vec<_>, _>>()?;
    mkdir(&p.p("scratch"))?;
    let ctx = 512;
    let mut writer =
        TraceWriter::create(&p.trace(), identity, ctx, "spike reproduce: default model; corpus/train.txt")?;
    progress.set_units(sizes.trace_tokens as u64);
    let mut last = 0;
    record(&model, docs, RecordConfig { ctx, max_tokens: sizes.trace_tokens }, &mut writer, &mut |n| {
        progress.advance(n.saturating_sub(last) as u64);
        last = n;
    })?;
    writer.finish()?;
    Ok(())
}

/// The flash loop's predictor: rank `sizes.rank` at the calibrated 50% sparsity.
fn train(sizes: &Sizes, p: &Paths, progress: &mut dyn StageProgress, notes: &mut Vec<String>) -> Result<()> {
    let trace = Trace::open(&p.trace())?;
    let t = Thresholds::load(&p.thresholds("0.50"))?;
    let (mut train, valid) = trace.split(t.valid_fraction, t.seed);
    if trace.meta().splits_by_segment() {
        notes.push("the trace holds one document: train and validation are split by segment".into());
    }
    if let Some(m) = sizes.max_train_tokens {
        train.truncate(m);
    }
    if train.is_empty() || valid.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the train/validation split leaves one side empty ({} / {} tokens)",
            p.trace().display(),
            train.len(),
            valid.len()
        )));
    }
    let n_layers = trace.meta().n_layers;
    progress.set_units(n_layers as u64);
    let cfg = PredictorConfig {
        ranks: RankSpec::uniform(sizes.rank),
        train: TrainConfig { epochs: sizes.epochs, ..TrainConfig::default() },
        recall: 0.95,
    };
    let identity = trace.meta().identity();
    let source = TraceLayers::new(&trace, train, valid, t.thresholds.clone())?;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (pred, rows) = train_predictor(&source, identity, &cfg, &|_| {
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })?;
    progress.advance(done.into_inner() as u64);
    let out = p.predictor(sizes.rank);
    mkdir(&p.p("flash"))?;
    predictor::file::write(&out, &pred)?;
    summary::write_csv(&out.with_extension("csv"), &rows)?;
    Ok(())
}

/// The spec at `spec` as this run runs it: its inputs taken from this run's folder (the trace, thresholds and
/// device profile of `results/` replaced by the run's own), and with `--quick` fewer prompts and grid points.
pub fn adapt_spec(text: &str, spec: &Path, out: &Path, quick: bool) -> Result<String> {
    let bad = |what: String| Error::SpecSyntax { path: spec.to_path_buf(), what };
    let mut v: toml::Value = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let o = out.display().to_string();
    let swaps = [
        ("results/traces/scratch/train.trace".to_string(), format!("{o}/scratch/train.trace")),
        ("results/traces/".to_string(), format!("{o}/traces/")),
        ("results/sweeps/cost-model-default/device/".to_string(), format!("{o}/device/")),
    ];
    fn walk(v: &mut toml::Value, f: &dyn Fn(&str) -> String) {
        match v {
            toml::Value::String(s) => *s = f(s),
            toml::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| walk(x, f)),
            _ => {}
        }
    }
    walk(&mut v, &|s: &str| {
        let mut s = s.to_string();
        for (from, to) in &swaps {
            if s.contains(from.as_str()) {
                s = s.replace(from.as_str(), to);
                break;
            }
        }
        s
    });
    if quick {
        let table = v.as_table_mut().ok_or_else(|| bad("not a table".into()))?;
        if let Some(pr) = table.get_mut("prompts").and_then(toml::Value::as_table_mut) {
            pr.insert("count".into(), toml::Value::Integer(1));
            let gen = pr.get("generate").and_then(toml::Value::as_integer).unwrap_or(8).min(8);
            pr.insert("generate".into(), toml::Value::Integer(gen));
        }
        if let Some(tr) = table.get_mut("train").and_then(toml::Value::as_table_mut) {
            let m = tr.get("max_train_tokens").and_then(toml::Value::as_integer).unwrap_or(1000).min(1000);
            tr.insert("max_train_tokens".into(), toml::Value::Integer(m));
            tr.insert("epochs".into(), toml::Value::Integer(3));
        }
        let thin = |g: &mut toml::value::Table| {
            for (k, list) in g.iter_mut() {
                let Some(a) = list.as_array_mut() else { continue };
                let keep: Vec<toml::Value> = match k.as_str() {
                    // K = 0 (no window), 1, the paper's 5 and the widest.
                    "window" => {
                        a.iter().filter(|x| [0, 1, 5, 10].contains(&x.as_integer().unwrap_or(-1))).cloned().collect()
                    }
                    "dtype" => a.iter().filter(|x| matches!(x.as_str(), Some("source" | "f32"))).cloned().collect(),
                    "rank" => a.iter().take(2).cloned().collect(),
                    "sparsity" if a.len() > 2 => vec![a[0].clone(), a[a.len() - 1].clone()],
                    _ => continue,
                };
                if !keep.is_empty() {
                    *a = keep;
                }
            }
        };
        match table.get_mut("grid") {
            Some(toml::Value::Table(g)) => thin(g),
            Some(toml::Value::Array(gs)) => gs.iter_mut().filter_map(toml::Value::as_table_mut).for_each(thin),
            _ => {}
        }
    }
    toml::to_string(&v).map_err(|e| bad(e.to_string()))
}

/// One spec of `experiments/specs`, adapted to the run, run and plotted.
fn sweep_stage(
    cfg: &ReproduceConfig,
    sizes: &Sizes,
    p: &Paths,
    spec: &Path,
    progress: &mut dyn StageProgress,
    notes: &mut Vec<String>,
) -> Result<()> {
    let name = spec.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let text = std::fs::read_to_string(spec).map_err(io_err(spec))?;
    let adapted = format!(
        "# {} as `spike reproduce{}` runs it: inputs from this run's folder{}.\n{}",
        spec.strip_prefix(&cfg.repo).unwrap_or(spec).display(),
        if cfg.quick { " --quick" } else { "" },
        if cfg.quick { ", fewer prompts and points" } else { "" },
        adapt_spec(&text, spec, &p.out, sizes.sweep_prompts.is_some())?
    );
    let spec_out = p.p(&format!("specs/{name}.toml"));
    mkdir(&p.p("specs"))?;
    // Written only when it changed, so that a resumed run keeps the same spec file.
    if std::fs::read_to_string(&spec_out).ok().as_deref() != Some(adapted.as_str()) {
        spike_flash::io::write_atomic(&spec_out, |w| w.write_all(adapted.as_bytes()))?;
    }
    let spec = Spec::load(&spec_out)?;
    let dir = p.p(&format!("sweeps/{name}"));
    let run = SweepRun { spec, out: dir.clone(), shard: Shard::ALL, precision: cfg.precision };
    let o = sweep::run(&run, &mut SweepProgress(progress))?;
    if o.skipped > 0 {
        notes.push(format!("sweep {name}: {} points already done, {} run now", o.skipped, o.ran));
    }
    let plotted = plot::plot(&dir)?;
    notes.extend(plotted.notes.into_iter().map(|n| format!("sweep {name}: {n}")));
    Ok(())
}

/// Runs `cmd` with its output into `log`; each line `is_step` accepts advances the stage by one.
fn subprocess(
    mut cmd: Command,
    log: &Path,
    progress: &mut dyn StageProgress,
    is_step: impl Fn(&str) -> bool,
) -> Result<std::process::ExitStatus> {
    if let Some(d) = log.parent() {
        mkdir(d)?;
    }
    let mut file = std::fs::File::create(log).map_err(io_err(log))?;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Invalid(format!("starting {what}: {e}")))?;
    let stderr = child.stderr.take().expect("stderr was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    // stdout goes to the log from its own thread, so that neither pipe fills while the other is read.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
            if tx2.send(line).is_err() {
                break;
            }
        }
    });
    let t_err = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for line in rx {
        writeln!(file, "{line}").map_err(io_err(log))?;
        if is_step(&line) {
            progress.advance(1);
        }
    }
    let _ = (t_out.join(), t_err.join());
    let status = child.wait().map_err(|e| Error::Invalid(format!("waiting for {what}: {e}")))?;
    if !status.success() {
        return Err(Error::Invalid(format!("{what} failed ({status}); its output is in {}", log.display())));
    }
    Ok(status)
}

/// The flash bench's settings and where its outputs go.
struct BenchArgs<'a> {
    layout: &'a Path,
    split: &'a Path,
    budget: u64,
    predictor: &'a Path,
    hot: &'a Path,
    profile: &'a Path,
    sizes: &'a Sizes,
}

impl BenchArgs<'_> {
    /// `spike bench --layout ...` writing its rows to `csv`.
    fn args(&self, csv: &Path) -> Vec<std::ffi::OsString> {
        let (prompts, prompt, gen) = self.sizes.bench;
        let mut a: Vec<std::ffi::OsString> = vec!["bench".into(), "--layout".into(), self.layout.into()];
        a.extend(["--split-layout".into(), self.split.into()]);
        a.extend(["--budget".into(), self.budget.to_string().into()]);
        a.extend(["--predictor".into(), self.predictor.into(), "--hot".into(), self.hot.into()]);
        a.extend(["--profile".into(), self.profile.into()]);
        a.extend(["--rows".into(), "naive,hybrid,predictor,predictor+window".into(), "--window".into(), "5".into()]);
        a.extend(["--prompts".into(), prompts.to_string().into(), "--prompt".into(), prompt.to_string().into()]);
        a.extend(["--gen".into(), gen.to_string().into(), "--text".into(), GPL3.into(), "--csv".into(), csv.into()]);
        a
    }
}

/// Whether a memory cgroup can be made here (cgroup v1's memory controller, writable: root).
fn cgroup_available() -> std::result::Result<(), String> {
    let root = Path::new("/sys/fs/cgroup/memory");
    if !root.is_dir() {
        return Err("no cgroup v1 memory controller at /sys/fs/cgroup/memory".into());
    }
    let probe = root.join(format!("spike-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) => Err(format!("cannot create a cgroup under {} ({e}): run as root", root.display())),
    }
}

/// The flash bench on the default model: bundled and split layouts (hot neurons first), the process's own
/// overhead measured by an uncapped run, then the bench inside a memory cgroup of the model budget plus that
/// overhead.
fn flash(
    cfg: &ReproduceConfig,
    sizes: &Sizes,
    p: &Paths,
    progress: &mut dyn StageProgress,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = p.p("flash");
    mkdir(&dir)?;
    let (prompts, _, _) = sizes.bench;
    // Two conversions, two bench runs of 8 rows (4 per layout) x prompts each. No naive-all row: on the
    // default model the resident tensors it reads every token (the tied embeddings above all) do not fit in
    // the model budget, and the bench refuses the row.
    progress.set_units(2 + 2 * 8 * prompts as u64);
    let order = layout::read_neuron_lists(&p.hot())?;
    let source = Source::open(&cfg.model)?;
    let model = Model::from_source(&source)?;
    let mut layouts = Vec::new();
    for kind in [LayoutKind::Bundled, LayoutKind::Split] {
        let name = if kind == LayoutKind::Bundled { "bundled" } else { "split" };
        let out = p.p(&format!("scratch/layouts/default-{name}-hotfirst.spike"));
        if layout::Layout::load(&out).is_err() {
            let opts = ConvertOptions { order: Some(order.clone()), kind, force: true, ..Default::default() };
            layout::write(&model, &cfg.model, &out, &opts)?;
        }
        layouts.push(out);
        progress.advance(1);
    }
    drop((model, source));
    let model_bytes = std::fs::metadata(&cfg.model).map_err(io_err(&cfg.model))?.len();
    // The model budget of scripts/flash-budget.sh: 60% of the model file.
    let budget = model_bytes * 60 / 100;
    let bench = BenchArgs {
        layout: &layouts[0],
        split: &layouts[1],
        budget,
        predictor: &p.predictor(sizes.rank),
        hot: &p.hot(),
        profile: &p.profile(),
        sizes,
    };
    let is_round = |l: &str| l.starts_with("round ");
    // The process's overhead: the same bench uncapped, its peak resident memory less the largest model DRAM a
    // row held.
    let rss = dir.join("overhead.maxrss-kib");
    let over_csv = p.p("scratch/overhead.csv");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"]).arg(&rss).arg(&cfg.exe).args(bench.args(&over_csv));
    subprocess(cmd, &dir.join("overhead.log"), progress, is_round)?;
    let peak_kib: u64 = std::fs::read_to_string(&rss)
        .map_err(io_err(&rss))?
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("{}: no peak resident size", rss.display())))?;
    let uncapped = latency::LatencyTable::read(&over_csv.with_extension("summary.csv"))?;
    let dram_mib = uncapped.rows.iter().map(|r| r.dram_mib).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let dram = (dram_mib * f64::from(1u32 << 20)) as u64;
    let overhead = (peak_kib * 1024).saturating_sub(dram);
    let limit = budget + overhead;
    let csv = dir.join("bench.csv");
    let log = dir.join("bench.txt");
    let capped = match cgroup_available() {
        Ok(()) => {
            let mut cmd = Command::new("bash");
            cmd.arg(cfg.repo.join("scripts/cgroup-run.sh"))
                .arg(limit.to_string())
                .arg("--")
                .arg(&cfg.exe)
                .args(bench.args(&csv));
            subprocess(cmd, &log, progress, is_round)?;
            Ok(())
        }
        Err(why) => {
            notes.push(format!("the flash bench ran without a memory cap: {why}"));
            let mut cmd = Command::new(&cfg.exe);
            cmd.args(bench.args(&csv));
            subprocess(cmd, &log, progress, is_round)?;
            Err(why)
        }
    };
    let peak = std::fs::read_to_string(&log)
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("cgroup-run:")).map(str::to_string));
    output::write_json(
        &dir.join("cap.json"),
        &serde_json::json!({
            "model_file_bytes": model_bytes,
            "model_budget_bytes": budget,
            "uncapped_peak_resident_bytes": peak_kib * 1024,
            "largest_row_model_dram_bytes": dram,
            "overhead_bytes": overhead,
            "cgroup_limit_bytes": limit,
            "capped": capped.is_ok(),
            "not_capped_because": capped.err(),
            "cgroup_run": peak,
        }),
    )?;
    let _ = std::fs::remove_file(&over_csv);
    let _ = std::fs::remove_file(over_csv.with_extension("summary.csv"));
    latency::plot(&dir.join("bench.summary.csv"))?;
    Ok(())
}

/// `DIR/raw.csv`: every sweep's rows (each row names its sweep in the column `sweep`) in one file.
fn raw_csv(p: &Paths) -> Result<()> {
    let mut out = String::new();
    let mut first: Option<(String, PathBuf)> = None;
    for dir in report::sweep_dirs(&p.out)? {
        let raw = output::Files::of(&dir).raw;
        let text = std::fs::read_to_string(&raw).map_err(io_err(&raw))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("").to_string();
        match &first {
            None => {
                out.push_str(&header);
                out.push('\n');
                first = Some((header, raw.clone()));
            }
            Some((h, from)) if *h != header => {
                return Err(Error::Csv {
                    path: raw.clone(),
                    what: format!("its columns differ from those of {}: cannot join them", from.display()),
                })
            }
            Some(_) => {}
        }
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    spike_flash::io::write_atomic(&p.p("raw.csv"), |w| w.write_all(out.as_bytes()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "1970-01-01T00-00-00Z");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29T00-00-00Z");
        assert_eq!(utc_stamp(1_796_684_316), "2026-12-07T22-58-36Z");
    }

    #[test]
    fn a_quick_spec_takes_the_run_inputs_and_fewer_points() {
        let text = r#"
name = "w"
[source]
model = "default"
[prompts]
text = "/usr/share/common-licenses/GPL-3"
count = 2
tokens = 32
generate = 16
[train]
trace = "results/traces/scratch/train.trace"
max_train_tokens = 4000
[fixed]
selection = "oracle:results/traces/thresholds-s0.50.json"
profile = "results/sweeps/cost-model-default/device/device-profile.json"
[grid]
window = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
dtype = ["source", "q8_0", "f16", "f32"]
"#;
        let out = adapt_spec(text, Path::new("w.toml"), Path::new("results/runs/x"), true).unwrap();
        let v: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(v["train"]["trace"].as_str(), Some("results/runs/x/scratch/train.trace"));
        assert_eq!(v["fixed"]["selection"].as_str(), Some("oracle:results/runs/x/traces/thresholds-s0.50.json"));
        assert_eq!(v["fixed"]["profile"].as_str(), Some("results/runs/x/device/device-profile.json"));
        assert_eq!(v["prompts"]["count"].as_integer(), Some(1));
        assert_eq!(v["prompts"]["generate"].as_integer(), Some(8));
        assert_eq!(v["train"]["max_train_tokens"].as_integer(), Some(1000));
        let w: Vec<i64> = v["grid"]["window"].as_array().unwrap().iter().filter_map(toml::Value::as_integer).collect();
        assert_eq!(w, [0, 1, 5, 10]);
        assert_eq!(v["grid"]["dtype"].as_array().unwrap().len(), 2);
        // The full run keeps the spec's points and prompts; only the inputs move.
        let full = adapt_spec(text, Path::new("w.toml"), Path::new("r"), false).unwrap();
        let v: toml::Value = toml::from_str(&full).unwrap();
        assert_eq!(v["grid"]["window"].as_array().unwrap().len(), 11);
        assert_eq!(v["prompts"]["count"].as_integer(), Some(2));
        assert_eq!(v["train"]["trace"].as_str(), Some("r/scratch/train.trace"));
        // Every spec of the repository adapts and still parses as a spec.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for spec in spec_files(repo).unwrap() {
            let text = std::fs::read_to_string(&spec).unwrap();
            let adapted = adapt_spec(&text, &spec, Path::new("results/runs/x"), true).unwrap();
            Spec::parse(&adapted, &spec).unwrap_or_else(|e| panic!("{}: {e}", spec.display()));
            assert!(!adapted.contains("\"results/traces"), "{}", spec.display());
        }
    }

    #[test]
    fn a_folder_of_other_files_is_refused_and_a_run_resumes_only_with_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |out: PathBuf, quick: bool| ReproduceConfig {
            out,
            quick,
            paper_scale: false,
            repo: PathBuf::from("."),
            exe: PathBuf::from("spike"),
            model: PathBuf::from("m.gguf"),
            precision: ActPrecision::default(),
        };
        std::fs::write(dir.path().join("raw.csv"), "x").unwrap();
        let e = open_folder(&cfg(dir.path().to_path_buf(), true)).unwrap_err().to_string();
        assert!(e.contains("--out") && e.contains("reproduce.json"), "{e}");
        let run = dir.path().join("run");
        let info = open_folder(&cfg(run.clone(), true)).unwrap();
        assert!(info.quick);
        assert_eq!(open_folder(&cfg(run.clone(), true)).unwrap(), info);
        let e = open_folder(&cfg(run, false)).unwrap_err().to_string();
        assert!(e.contains("--quick"), "{e}");
    }

    /// Records which stages started, ran and were skipped.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl StageProgress for Log {
        fn stage(&mut self, _: usize, _: usize, name: &str, _: u64) {
            self.0.push(format!("run {name}"));
        }
        fn skipped(&mut self, _: usize, _: usize, name: &str, _: &str) {
            self.0.push(format!("skip {name}"));
        }
    }

    #[test]
    fn a_stage_whose_outputs_are_complete_is_skipped_and_one_that_lost_an_output_runs_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let model = dir.path().join("model.gguf");
        std::fs::write(&model, "not read: every stage is done").unwrap();
        let cfg = ReproduceConfig {
            out: dir.path().join("run"),
            quick: true,
            paper_scale: false,
            repo,
            exe: PathBuf::from("spike"),
            model,
            precision: ActPrecision::default(),
        };
        open_folder(&cfg).unwrap();
        let all = stages(&cfg, &Sizes::of(true)).unwrap();
        let p = Paths { out: cfg.out.clone() };
        for s in &all {
            for o in &s.outputs {
                std::fs::create_dir_all(o.parent().unwrap()).unwrap();
                std::fs::write(o, "done").unwrap();
            }
            std::fs::create_dir_all(p.marker(&s.name).parent().unwrap()).unwrap();
            std::fs::write(p.marker(&s.name), "{}").unwrap();
        }
        let mut log = Log::default();
        let o = run(&cfg, &mut log).unwrap();
        assert!(o.ran.is_empty(), "{:?}", o.ran);
        assert_eq!(o.skipped.len(), all.len());
        assert!(o.skipped.iter().any(|s| s == "sweep window-default"), "{:?}", o.skipped);
        assert!(log.0.iter().all(|l| l.starts_with("skip ")), "{:?}", log.0);
        // The machine's description is gone: that stage runs again, and so does the report (which here
        // fails on the stand-in files, naming its stage); the stages between are skipped.
        std::fs::remove_file(cfg.out.join("machine.json")).unwrap();
        let mut log = Log::default();
        let e = run(&cfg, &mut log).unwrap_err().to_string();
        assert!(e.contains("stage `charts and report`"), "{e}");
        assert_eq!(log.0[0], "run machine");
        assert_eq!(log.0.last().unwrap(), "run charts and report");
        assert!(log.0[1..log.0.len() - 1].iter().all(|l| l.starts_with("skip ")), "{:?}", log.0);
        let m: output::Machine = output::read_json(&cfg.out.join("machine.json")).unwrap();
        assert!(m.cores >= 1);
    }
}
