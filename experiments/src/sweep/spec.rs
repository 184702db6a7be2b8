//! A sweep's spec (a TOML file, `docs/sweeps.md`): the model or layout, the prompts, the fixed settings and
//! the grid; and the points it expands to, each with its typed settings and a content id.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use predictor::selectors::Selection;
use sha2::{Digest, Sha256};
use spike_flash::cache::{Budget, PolicySpec};
use spike_flash::engine::flash::CacheChoice;
use spike_flash::io::BackendKind;
use spike_flash::layout::{LayoutKind, RecordDType};

use crate::{Error, Result};

/// The settings a spec may fix or vary, in grid order: the grid's first key varies slowest, so the points of
/// one layout and record type stand together (a converted layout is made once and then reused). The last
/// three came later: see [`LATER`].
pub const SETTINGS: [&str; 17] = [
    "layout",
    "dtype",
    "selection",
    "hot",
    "backend",
    "align",
    "queue_depth",
    "max_merge",
    "max_gap",
    "overlap",
    "compute_all_cached",
    "budget",
    "cache",
    "window",
    "sparsity",
    "rank",
    "profile",
];

/// Settings added after sweeps had been run, with their default text: at the default they add nothing to a
/// point's id, so the ids (and the resumable rows) of specs written before them stay as they were.
pub const LATER: [(&str, &str); 3] = [("sparsity", ""), ("rank", ""), ("profile", "none")];

/// Rank of a predictor made by a sweep when the spec sets none (as `spike train-predictor`).
pub const DEFAULT_RANK: usize = 64;

/// Where the layouts of a sweep come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SourceSpec {
    /// An existing layout directory: its kind and record type are fixed.
    Layout(PathBuf),
    /// A model (GGUF file or checkpoint directory; `None`: the fetched default model), converted once per
    /// layout kind and record type into `DIR/layouts/`.
    Model(Option<PathBuf>),
}

/// The prompts every point decodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PromptSpec {
    /// Text whose tokens make the prompts.
    pub text: PathBuf,
    /// Number of prompts.
    pub count: usize,
    /// Tokens per prompt (consecutive pieces of the text's tokens).
    pub tokens: usize,
    /// Tokens decoded after each prompt, one at a time; each is measured.
    pub generate: usize,
}

/// A parsed spec.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spec {
    /// The spec's file (for messages).
    #[serde(skip)]
    pub path: PathBuf,
    /// A name for the sweep (default: the spec file's stem).
    pub name: String,
    pub source: SourceSpec,
    /// The model is a planted checkpoint (its statistics were planted, not learned): every row says so.
    pub planted: bool,
    pub prompts: PromptSpec,
    /// Where selections `oracle` and `predictor` (without a file) are made from; absent from specs that
    /// make none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainSpec>,
    /// Fixed settings, as written (canonical text).
    pub fixed: BTreeMap<String, String>,
    /// The grids (one `[grid]` table, or several `[[grid]]` tables whose points follow one another): each
    /// grid's varied settings with their values as written (canonical text), keys in [`SETTINGS`] order.
    #[serde(rename = "grid", serialize_with = "grids_as_written")]
    pub grids: Vec<Grid>,
}

/// One grid: varied settings and their values.
pub type Grid = Vec<(String, Vec<String>)>;

/// Serializes one grid as the grid itself (the form of specs written before several grids were allowed, so
/// that their hashes stay the same) and several as a list of grids.
fn grids_as_written<S: serde::Serializer>(grids: &[Grid], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    match grids {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

/// The `[train]` section: the trace that the sweep calibrates activation thresholds on (selection `oracle`)
/// and trains predictors on (selection `predictor`), as `spike calibrate` and `spike train-predictor` do.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// A trace of the source model (`spike trace`).
    pub trace: PathBuf,
    /// Share of the trace's tokens (whole documents) held out for validation. Default 0.2.
    #[serde(default = "TrainSpec::default_valid_fraction")]
    pub valid_fraction: f64,
    /// Seed of the document split. Default 0.
    #[serde(default)]
    pub split_seed: u64,
    /// Train on at most this many tokens of the training split (the first ones). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train_tokens: Option<usize>,
    /// Passes over the training tokens. Default 10.
    #[serde(default = "TrainSpec::default_epochs")]
    pub epochs: usize,
    /// Per layer, the decision threshold keeps this share of the validation split's truly active neurons.
    /// Default 0.95.
    #[serde(default = "TrainSpec::default_recall")]
    pub recall: f64,
    /// `count` or `magnitude` (`spike train-predictor --positives`). Default `count`.
    #[serde(default = "TrainSpec::default_positives")]
    pub positives: String,
}

impl TrainSpec {
    fn default_valid_fraction() -> f64 {
        0.2
    }
    fn default_epochs() -> usize {
        predictor::train::TrainConfig::default().epochs
    }
    fn default_recall() -> f64 {
        0.95
    }
    fn default_positives() -> String {
        "count".to_string()
    }
}

/// What a point runs with: every setting typed, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub layout: LayoutKind,
    pub dtype: RecordDType,
    pub selection: Chooser,
    pub hot: Option<PathBuf>,
    pub backend: BackendKind,
    pub align: usize,
    pub queue_depth: usize,
    pub max_merge: usize,
    pub max_gap: usize,
    pub overlap: bool,
    pub compute_all_cached: bool,
    pub budget: Option<Budget>,
    /// The cache choice with the window length filled in.
    pub cache: CacheChoice,
    pub window: Option<u32>,
    /// Target sparsity of the thresholds a `oracle` or `predictor` selection is made with.
    pub sparsity: Option<f64>,
    /// Rank of a `predictor` selection made by the sweep.
    pub rank: Option<usize>,
    /// A device profile (`spike profile-device`'s JSON) for the cost model's predicted I/O per token.
    pub profile: Option<PathBuf>,
}

/// What picks a point's neurons.
#[derive(Debug, Clone, PartialEq)]
pub enum Chooser {
    /// All neurons, or a selector from a file (`predictor:PATH`, `oracle:PATH`).
    File(Selection),
    /// The truly active neurons at thresholds the sweep calibrates on `[train]`'s trace for `sparsity`.
    Oracle,
    /// A predictor the sweep trains on `[train]`'s trace at `sparsity` and `rank`.
    Predictor,
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Position in grid order (0-based), the same in every shard.
    pub index: usize,
    /// Content id: a hash of the source, the prompts and every setting's canonical text. A point keeps its id
    /// when other points of the spec change, which is what lets a fixed spec resume.
    pub id: String,
    /// Every setting's canonical text, in [`SETTINGS`] order (the CSV columns).
    pub columns: Vec<(&'static str, String)>,
    pub settings: Settings,
}

impl Point {
    /// The settings that the grid varies, as `key=value` pairs.
    pub fn label(&self, spec: &Spec) -> String {
        let varied: Vec<String> = spec
            .varied()
            .into_iter()
            .filter_map(|k| self.columns.iter().find(|(c, _)| *c == k).map(|(c, v)| format!("{c}={v}")))
            .collect();
        if varied.is_empty() {
            "the only point".to_string()
        } else {
            varied.join(", ")
        }
    }
}

/// Which points a run takes: shard `index` (1-based) of `count` runs the points whose grid number is
/// `index - 1` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Every point.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Whether the point numbered `point` (0-based, grid order) is this shard's.
    pub fn has(&self, point: usize) -> bool {
        point % self.count == self.index - 1
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::Invalid(format!("shard `{s}`: expected I/N with 1 <= I <= N, e.g. 1/2"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The spec file's top level, as TOML has it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    source: RawSource,
    prompts: RawPrompts,
    train: Option<TrainSpec>,
    #[serde(default)]
    fixed: BTreeMap<String, toml::Value>,
    /// A table (`[grid]`) or a list of tables (`[[grid]]`).
    grid: Option<toml::Value>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    model: Option<String>,
    layout: Option<PathBuf>,
    #[serde(default)]
    planted: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompts {
    text: PathBuf,
    count: usize,
    tokens: usize,
    generate: usize,
}

impl Spec {
    /// Reads and checks the spec at `path`. Relative paths inside it are taken from the current directory.
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        Spec::parse(&text, path)
    }

    /// Parses and checks spec text `text` (of the file `path`, for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Spec> {
        let raw: RawSpec =
            toml::from_str(text).map_err(|e| Error::SpecSyntax { path: path.to_path_buf(), what: e.to_string() })?;
        let bad = |key: &str, what: String| Error::Spec { path: path.to_path_buf(), key: key.to_string(), what };
        let source = match (raw.source.model, raw.source.layout) {
            (Some(_), Some(_)) => {
                return Err(bad("source", "give either source.model or source.layout, not both".into()));
            }
            (None, None) => {
                return Err(bad("source", "give source.model (a model, or \"default\") or source.layout".into()));
            }
            (Some(m), None) if m == "default" => SourceSpec::Model(None),
            (Some(m), None) => SourceSpec::Model(Some(PathBuf::from(m))),
            (None, Some(l)) => SourceSpec::Layout(l),
        };
        let p = raw.prompts;
        for (key, v) in [("prompts.count", p.count), ("prompts.tokens", p.tokens), ("prompts.generate", p.generate)] {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        let prompts = PromptSpec { text: p.text, count: p.count, tokens: p.tokens, generate: p.generate };
        let mut fixed = BTreeMap::new();
        for (k, v) in &raw.fixed {
            let key = format!("fixed.{k}");
            check_key(k, &key, path)?;
            fixed.insert(k.clone(), scalar(v).map_err(|what| bad(&key, what))?);
        }
        let tables = match raw.grid {
            None => vec![toml::map::Map::new()],
            Some(toml::Value::Table(t)) => vec![t],
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .into_iter()
                .enumerate()
                .map(|(i, t)| match t {
                    toml::Value::Table(t) => Ok(t),
                    _ => Err(bad(&format!("grid[{i}]"), "each [[grid]] is a table of settings".into())),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(bad("grid", "write [grid] (one table) or [[grid]] tables".into())),
        };
        let many = tables.len() > 1;
        let mut grids = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            let name = |k: &str| if many { format!("grid[{i}].{k}") } else { format!("grid.{k}") };
            for k in table.keys() {
                check_key(k, &name(k), path)?;
            }
            let mut grid = Vec::new();
            for k in SETTINGS {
                let Some(v) = table.get(k) else { continue };
                let key = name(k);
                if fixed.contains_key(k) {
                    return Err(bad(&key, format!("`{k}` is both fixed and varied; keep one")));
                }
                let toml::Value::Array(values) = v else {
                    return Err(bad(&key, "a grid setting is a list of values, e.g. [1, 2, 3]".into()));
                };
                if values.is_empty() {
                    return Err(bad(&key, "the list is empty".into()));
                }
                let values =
                    values.iter().map(|v| scalar(v).map_err(|what| bad(&key, what))).collect::<Result<Vec<_>>>()?;
                grid.push((k.to_string(), values));
            }
            grids.push(grid);
        }
        if let Some(t) = &raw.train {
            if !(t.valid_fraction > 0.0 && t.valid_fraction < 1.0) {
                return Err(bad("train.valid_fraction", format!("{} is not between 0 and 1", t.valid_fraction)));
            }
            if !(t.recall > 0.0 && t.recall <= 1.0) {
                return Err(bad("train.recall", format!("{} is not in (0, 1]", t.recall)));
            }
            if t.epochs == 0 {
                return Err(bad("train.epochs", "must be at least 1".into()));
            }
            if t.max_train_tokens == Some(0) {
                return Err(bad("train.max_train_tokens", "must be at least 1".into()));
            }
            t.positives.parse::<predictor::train::Positives>().map_err(|e| bad("train.positives", e))?;
        }
        if let SourceSpec::Layout(_) = source {
            for k in ["layout", "dtype"] {
                if fixed.contains_key(k) || grids.iter().flatten().any(|(g, _)| g == k) {
                    return Err(bad(
                        k,
                        format!("source.layout fixes the layout's {k}; to vary it, name a model in source.model"),
                    ));
                }
            }
        }
        let name = match raw.name {
            Some(n) => n,
            None => path.file_stem().map_or_else(|| "sweep".to_string(), |s| s.to_string_lossy().into_owned()),
        };
        let spec = Spec {
            path: path.to_path_buf(),
            name,
            source,
            planted: raw.source.planted,
            prompts,
            train: raw.train,
            fixed,
            grids,
        };
        // Every point's settings must parse before the first point runs.
        spec.points()?;
        Ok(spec)
    }

    /// The spec's hash: SHA-256 of its canonical form (what it says, not how it is written: comments, spacing
    /// and key order do not count), in hex. Shards of one spec carry the same hash.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).expect("a spec serializes: strings, numbers and lists");
        hex(&Sha256::digest(json.as_bytes()))
    }

    /// Number of points: per grid the product of its list lengths, summed over the grids.
    pub fn n_points(&self) -> usize {
        self.grids.iter().map(|g| g.iter().map(|(_, v)| v.len()).product::<usize>()).sum()
    }

    /// The settings that some grid varies, in [`SETTINGS`] order.
    pub fn varied(&self) -> Vec<&'static str> {
        SETTINGS.iter().copied().filter(|k| self.grids.iter().flatten().any(|(g, _)| g == k)).collect()
    }

    /// Every point, in grid order: the grids one after another, and in each the first key of [`SETTINGS`]
    /// varying slowest.
    pub fn points(&self) -> Result<Vec<Point>> {
        let mut points = Vec::with_capacity(self.n_points());
        for grid in &self.grids {
            let n: usize = grid.iter().map(|(_, v)| v.len()).product();
            for i in 0..n {
                let mut values = self.fixed.clone();
                let mut rest = i;
                for (k, vs) in grid.iter().rev() {
                    values.insert(k.clone(), vs[rest % vs.len()].clone());
                    rest /= vs.len();
                }
                points.push(self.point(points.len(), &values)?);
            }
        }
        Ok(points)
    }

    fn point(&self, index: usize, values: &BTreeMap<String, String>) -> Result<Point> {
        let bad = |key: &str, what: String| Error::Spec {
            path: self.path.clone(),
            key: self.key_of(key),
            what: format!("{what} (point {index})"),
        };
        let get = |k: &str| values.get(k).map(String::as_str);
        let layout = match get("layout").unwrap_or("bundled") {
            "bundled" => LayoutKind::Bundled,
            "split" => LayoutKind::Split,
            other => return Err(bad("layout", format!("`{other}` is not bundled or split"))),
        };
        let dtype = match get("dtype").unwrap_or("source") {
            "source" => RecordDType::Source,
            "f32" => RecordDType::F32,
            "f16" => RecordDType::F16,
            "q8_0" => RecordDType::Q8_0,
            "q4_1" => RecordDType::Q4_1,
            other => return Err(bad("dtype", format!("`{other}` is not source, f32, f16, q8_0 or q4_1"))),
        };
        let selection = match get("selection").unwrap_or("all") {
            "all" => Chooser::File(Selection::All),
            "oracle" => Chooser::Oracle,
            "predictor" => Chooser::Predictor,
            s => match s.split_once(':') {
                Some(("predictor", p)) if !p.is_empty() => Chooser::File(Selection::Predictor(PathBuf::from(p))),
                Some(("oracle", p)) if !p.is_empty() => Chooser::File(Selection::Oracle(PathBuf::from(p))),
                _ => {
                    return Err(bad(
                        "selection",
                        format!(
                            "`{s}` is not all, predictor:PATH (a predictor file), oracle:PATH (a thresholds file), \
                             or oracle or predictor (made from [train]'s trace)"
                        ),
                    ))
                }
            },
        };
        let made = !matches!(selection, Chooser::File(_));
        if made && self.train.is_none() {
            return Err(bad(
                "selection",
                "selection `oracle` or `predictor` without a file is made from a trace: add a [train] section \
                 naming one (trace = \"PATH\")"
                    .into(),
            ));
        }
        let sparsity = match get("sparsity") {
            None if made => {
                return Err(bad(
                    "sparsity",
                    "selection `oracle` or `predictor` without a file needs the target sparsity of its thresholds \
                     (sparsity = 0.5)"
                        .into(),
                ))
            }
            None => None,
            Some(_) if !made => {
                return Err(bad(
                    "sparsity",
                    "applies only to selection `oracle` or `predictor` (made from [train]'s trace); give it in a \
                     grid of its own ([[grid]]) if other points select otherwise"
                        .into(),
                ))
            }
            Some(v) => match v.parse::<f64>() {
                Ok(x) if (0.0..1.0).contains(&x) => Some(x),
                _ => return Err(bad("sparsity", format!("`{v}` is not a fraction in [0, 1)"))),
            },
        };
        let rank = match (get("rank"), &selection) {
            (None, Chooser::Predictor) => Some(DEFAULT_RANK),
            (None, _) => None,
            (Some(v), Chooser::Predictor) => match v.parse::<usize>() {
                Ok(r) if r > 0 => Some(r),
                _ => return Err(bad("rank", format!("`{v}` is not a positive whole number"))),
            },
            (Some(_), _) => {
                return Err(bad("rank", "applies only to selection `predictor` (made from [train]'s trace)".into()))
            }
        };
        let profile = match get("profile").unwrap_or("none") {
            "none" => None,
            p => Some(PathBuf::from(p)),
        };
        let hot = match get("hot").unwrap_or("none") {
            "none" => None,
            p => Some(PathBuf::from(p)),
        };
        let backend =
            get("backend").unwrap_or("uring").parse::<BackendKind>().map_err(|e| bad("backend", e.to_string()))?;
        let defaults = spike_flash::io::IoConfig::default();
        let size = |k: &str, default: usize| -> Result<usize> {
            match get(k) {
                None => Ok(default),
                Some(v) => parse_size(v).ok_or_else(|| {
                    bad(k, format!("`{v}` is not a size in bytes (a whole number, or with a K, M or G suffix)"))
                }),
            }
        };
        let align = size("align", defaults.align)?;
        let max_merge = size("max_merge", defaults.max_merge)?;
        let max_gap = size("max_gap", defaults.max_gap)?;
        let queue_depth = match get("queue_depth") {
            None => defaults.queue_depth,
            Some(v) => match v.parse::<usize>() {
                Ok(q) if q > 0 => q,
                _ => return Err(bad("queue_depth", format!("`{v}` is not a positive whole number"))),
            },
        };
        let flag = |k: &str| -> Result<bool> {
            match get(k).unwrap_or("false") {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(bad(k, format!("`{other}` is not true or false"))),
            }
        };
        let (overlap, compute_all_cached) = (flag("overlap")?, flag("compute_all_cached")?);
        let budget = match get("budget").unwrap_or("none") {
            "none" => None,
            b => Some(b.parse::<Budget>().map_err(|e| bad("budget", e.to_string()))?),
        };
        let window = match get("window") {
            None => None,
            Some(v) => {
                Some(v.parse::<u32>().map_err(|_| bad("window", format!("`{v}` is not a whole number of tokens")))?)
            }
        };
        let cache_text = get("cache").unwrap_or(if window.is_some() { "window" } else { "none" });
        let cache = match (window, cache_text.strip_suffix("window")) {
            // A policy template whose window length the `window` setting fills: `window`, `hot:F+window`.
            (Some(k), Some(head)) if head.is_empty() || head.ends_with('+') => {
                format!("{head}window:{k}").parse::<CacheChoice>().map_err(|e| bad("cache", e.to_string()))?
            }
            (Some(_), _) => {
                return Err(bad(
                    "cache",
                    format!(
                        "`{cache_text}` with a window setting: write the policy without its length (`window` or \
                         `hot:F+window`), the window setting fills it in"
                    ),
                ))
            }
            (None, _) => cache_text.parse::<CacheChoice>().map_err(|e| bad("cache", e.to_string()))?,
        };
        let settings = Settings {
            layout,
            dtype,
            selection,
            hot,
            backend,
            align,
            queue_depth,
            max_merge,
            max_gap,
            overlap,
            compute_all_cached,
            budget,
            cache,
            window,
            sparsity,
            rank,
            profile,
        };
        let columns = settings.columns();
        let mut key = String::new();
        // The id covers what the measurement depends on besides the machine: the source, the prompts, every
        // setting. serde_json writes these fields in declaration order.
        let ident = serde_json::json!({"source": &self.source, "planted": self.planted, "prompts": &self.prompts});
        key.push_str(&ident.to_string());
        if made {
            let train = serde_json::to_string(&self.train).expect("a train section serializes: paths and numbers");
            let _ = write!(key, ";train={train}");
        }
        for (k, v) in &columns {
            if LATER.iter().any(|(later, default)| later == k && v == default) {
                continue;
            }
            let _ = write!(key, ";{k}={v}");
        }
        let id = hex(&Sha256::digest(key.as_bytes()))[..16].to_string();
        Ok(Point { index, id, columns, settings })
    }

    /// `fixed.K` or `grid.K`, whichever holds setting `k`; `k` itself when neither (a default).
    fn key_of(&self, k: &str) -> String {
        if self.fixed.contains_key(k) {
            format!("fixed.{k}")
        } else if self.grids.iter().flatten().any(|(g, _)| g == k) {
            format!("grid.{k}")
        } else {
            k.to_string()
        }
    }
}

impl Settings {
    /// Every setting's canonical text, in [`SETTINGS`] order.
    pub fn columns(&self) -> Vec<(&'static str, String)> {
        let kind = match self.layout {
            LayoutKind::Bundled => "bundled",
            LayoutKind::Split => "split",
        };
        let selection = match &self.selection {
            Chooser::File(Selection::All) => "all".to_string(),
            Chooser::File(Selection::Predictor(p)) => format!("predictor:{}", p.display()),
            Chooser::File(Selection::Oracle(p)) => format!("oracle:{}", p.display()),
            Chooser::Oracle => "oracle".to_string(),
            Chooser::Predictor => "predictor".to_string(),
        };
        vec![
            ("layout", kind.to_string()),
            ("dtype", dtype_name(self.dtype).to_string()),
            ("selection", selection),
            ("hot", self.hot.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string())),
            ("backend", self.backend.to_string()),
            ("align", self.align.to_string()),
            ("queue_depth", self.queue_depth.to_string()),
            ("max_merge", self.max_merge.to_string()),
            ("max_gap", self.max_gap.to_string()),
            ("overlap", self.overlap.to_string()),
            ("compute_all_cached", self.compute_all_cached.to_string()),
            ("budget", self.budget.map_or_else(|| "none".to_string(), |b| b.to_string())),
            ("cache", self.cache.to_string()),
            ("window", self.window.map_or_else(String::new, |k| k.to_string())),
            ("sparsity", self.sparsity.map_or_else(String::new, |s| s.to_string())),
            ("rank", self.rank.map_or_else(String::new, |r| r.to_string())),
            ("profile", self.profile.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string())),
        ]
    }

    /// The policy the cache choice names (`hybrid` is resolved by the session, against the budget).
    pub fn policy(&self) -> Option<PolicySpec> {
        match self.cache {
            CacheChoice::Policy(p) => Some(p),
            CacheChoice::Hybrid => None,
        }
    }
}

/// The name `spike convert --dtype` takes for `d`.
pub fn dtype_name(d: RecordDType) -> &'static str {
    match d {
        RecordDType::Source => "source",
        RecordDType::F32 => "f32",
        RecordDType::F16 => "f16",
        RecordDType::Q8_0 => "q8_0",
        RecordDType::Q4_1 => "q4_1",
    }
}

/// A setting's TOML value as canonical text: strings as they are, integers in decimal, booleans as
/// true/false.
fn scalar(v: &toml::Value) -> std::result::Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.trim().to_string()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("expected a string, a number or true/false, got {}", other.type_str())),
    }
}

/// Refuses a setting name that is not one of [`SETTINGS`].
fn check_key(k: &str, key: &str, path: &Path) -> Result<()> {
    if SETTINGS.contains(&k) {
        return Ok(());
    }
    Err(Error::Spec {
        path: path.to_path_buf(),
        key: key.to_string(),
        what: format!("unknown setting `{k}` (known: {})", SETTINGS.join(", ")),
    })
}

/// A byte size: a whole number with an optional K, M or G suffix (binary units, as the CLI's read settings).
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [source]
        model = "m.gguf"
        [prompts]
        text = "t.txt"
        count = 2
        tokens = 8
        generate = 4
    "#;

    fn spec(extra: &str) -> Result<Spec> {
        Spec::parse(&format!("{BASE}\n{extra}"), Path::new("s.toml"))
    }

    #[test]
    fn grid_order_and_window_fill() {
        let s =
            spec("[fixed]\nbudget = \"64MiB\"\n[grid]\nwindow = [1, 2]\nlayout = [\"bundled\", \"split\"]").unwrap();
        let pts = s.points().unwrap();
        assert_eq!(pts.len(), 4);
        // layout varies slowest, window fastest.
        let cols: Vec<(String, String)> = pts
            .iter()
            .map(|p| (p.columns[0].1.clone(), p.columns.iter().find(|c| c.0 == "cache").unwrap().1.clone()))
            .collect();
        assert_eq!(cols[0], ("bundled".into(), "window:1".into()));
        assert_eq!(cols[1], ("bundled".into(), "window:2".into()));
        assert_eq!(cols[2], ("split".into(), "window:1".into()));
        assert_eq!(pts[0].settings.budget, Some(Budget::Bytes(64 << 20)));
        // Ids are distinct and do not depend on the other points.
        assert_ne!(pts[0].id, pts[1].id);
        let one = spec("[fixed]\nbudget = \"64MiB\"\nlayout = \"bundled\"\n[grid]\nwindow = [2, 7]").unwrap();
        assert_eq!(one.points().unwrap()[0].id, pts[1].id);
    }

    #[test]
    fn hash_ignores_comments_and_order() {
        let a = spec("[fixed]\nbackend = \"pool\"\nbudget = \"none\"").unwrap();
        let b = spec("# a comment\n[fixed]\nbudget = \"none\"\n\nbackend = \"pool\"").unwrap();
        assert_eq!(a.hash(), b.hash());
        let c = spec("[fixed]\nbackend = \"uring\"").unwrap();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn bad_input_names_the_key() {
        let e = spec("[grid]\nwindw = [1]").unwrap_err().to_string();
        assert!(e.contains("grid.windw"), "{e}");
        let e = spec("[grid]\nbudget = [\"lots\"]").unwrap_err().to_string();
        assert!(e.contains("grid.budget"), "{e}");
        let e = spec("[fixed]\ncache = \"lru\"\n[grid]\nwindow = [1]").unwrap_err().to_string();
        assert!(e.contains("fixed.cache"), "{e}");
        let e = spec("[fixed]\nwindow = 3\n[grid]\nwindow = [1]").unwrap_err().to_string();
        assert!(e.contains("grid.window"), "{e}");
        let e = Spec::parse("[source]\nmodel = \"m\"", Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("s.toml") && e.contains("prompts"), "{e}");
        let e = Spec::parse(&BASE.replace("count = 2", "count = 0"), Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("prompts.count"), "{e}");
    }

    #[test]
    fn the_committed_window_sweep_keeps_its_hash_and_point_ids() {
        // Settings and grids added since must not change what older specs hash to, nor their points' ids,
        // or their folders would no longer resume.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let spec = Spec::load(&root.join("experiments/specs/window-default.toml")).unwrap();
        let dir = root.join("results/sweeps/window-default");
        let info: crate::sweep::SweepInfo = crate::sweep::output::read_json(&dir.join("sweep.json")).unwrap();
        assert_eq!(spec.hash(), info.spec_sha256);
        let rows = crate::sweep::output::read_rows(&dir.join("raw.csv")).unwrap();
        for p in spec.points().unwrap() {
            assert!(rows.iter().any(|r| r.point == p.index && r.point_id == p.id), "point {} changed id", p.index);
        }
    }

    #[test]
    fn several_grids_and_made_selections() {
        let train = "[train]\ntrace = \"t.trace\"\nmax_train_tokens = 100\n";
        let s = spec(&format!(
            "{train}[[grid]]\nselection = [\"all\"]\n[[grid]]\nselection = [\"oracle\", \"predictor\"]\n\
             sparsity = [0.5, 0.7]"
        ))
        .unwrap();
        let pts = s.points().unwrap();
        assert_eq!(pts.len(), 5);
        assert_eq!(pts[0].settings.selection, Chooser::File(Selection::All));
        assert_eq!((pts[1].settings.selection.clone(), pts[1].settings.sparsity), (Chooser::Oracle, Some(0.5)));
        // A predictor made without a rank gets the default one, and its column says so.
        assert_eq!(pts[3].settings.rank, Some(DEFAULT_RANK));
        assert!(pts[3].columns.contains(&("rank", DEFAULT_RANK.to_string())));
        assert_eq!(pts[4].label(&s), "selection=predictor, sparsity=0.7");
        // Made points' ids cover the [train] section; the others' do not.
        let other = spec(&format!(
            "{}[[grid]]\nselection = [\"all\"]\n[[grid]]\nselection = [\"oracle\", \"predictor\"]\n\
             sparsity = [0.5, 0.7]",
            train.replace("100", "200")
        ))
        .unwrap()
        .points()
        .unwrap();
        assert_eq!(other[0].id, pts[0].id);
        assert_ne!(other[1].id, pts[1].id);
    }

    #[test]
    fn made_selections_are_checked_by_key() {
        let train = "[train]\ntrace = \"t.trace\"\n";
        let e = spec("[fixed]\nselection = \"oracle\"\nsparsity = 0.5").unwrap_err().to_string();
        assert!(e.contains("fixed.selection") && e.contains("[train]"), "{e}");
        let e = spec(&format!("{train}[fixed]\nselection = \"oracle\"")).unwrap_err().to_string();
        assert!(e.contains("`sparsity`") && e.contains("needs"), "{e}");
        let e = spec(&format!("{train}[grid]\nselection = [\"all\", \"oracle\"]\nsparsity = [0.5]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("grid.sparsity") && e.contains("[[grid]]"), "{e}");
        let e = spec(&format!("{train}[fixed]\nselection = \"oracle\"\nsparsity = 1.5")).unwrap_err().to_string();
        assert!(e.contains("fixed.sparsity"), "{e}");
        let e =
            spec(&format!("{train}[fixed]\nselection = \"oracle\"\nsparsity = 0.5\nrank = 8")).unwrap_err().to_string();
        assert!(e.contains("fixed.rank"), "{e}");
        let e = spec("[train]\ntrace = \"t\"\nrecall = 2.0").unwrap_err().to_string();
        assert!(e.contains("train.recall"), "{e}");
        let e = spec("[[grid]]\nwindow = [1]\n[[grid]]\nwindw = [2]").unwrap_err().to_string();
        assert!(e.contains("grid[1].windw"), "{e}");
    }

    #[test]
    fn shards_partition_the_points() {
        let s: Shard = "2/3".parse().unwrap();
        assert!(s.has(1) && s.has(4) && !s.has(0) && !s.has(2));
        assert!("0/2".parse::<Shard>().is_err());
        assert!("3/2".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
