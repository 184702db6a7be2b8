//! A sweep's output folder: `raw.csv` (tidy rows, one per point and metric), `machine.json` (where it ran),
//! `sweep.json` (the spec's hash, the shard, how many points are done) and `spec.toml` (the spec as given).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One row of `raw.csv`: one metric of one point, with every setting beside it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The sweep's name.
    pub sweep: String,
    /// The point's number in grid order (0-based).
    pub point: usize,
    /// The point's content id (see [`super::spec::Point::id`]).
    pub point_id: String,
    /// The model's name (its file or folder name, without the machine's path).
    pub model: String,
    /// Whether the model is planted (statistics planted, not learned): its numbers say nothing of real models.
    pub planted: bool,
    pub layout: String,
    pub dtype: String,
    pub selection: String,
    pub hot: String,
    pub backend: String,
    pub align: String,
    pub queue_depth: String,
    pub max_merge: String,
    pub max_gap: String,
    pub overlap: String,
    pub compute_all_cached: String,
    pub budget: String,
    pub cache: String,
    pub window: String,
    /// Columns added later ([`super::spec::LATER`]): absent from older files, read as their defaults.
    #[serde(default)]
    pub sparsity: String,
    #[serde(default)]
    pub rank: String,
    #[serde(default = "none")]
    pub profile: String,
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// The DRAM budget, not the cache policy, set the cache size: fewer row slots per layer than the policy
    /// could use.
    pub budget_decides: bool,
    /// The FFN layer a per-layer metric is of (a predictor's validation metrics); empty for a point's
    /// metrics. Absent from older files.
    #[serde(default)]
    pub layer: String,
    pub metric: String,
    pub value: f64,
    /// `git rev-parse --short=12 HEAD` where the sweep ran (`-dirty` with uncommitted changes), or `unknown`.
    pub commit: String,
    /// The CPU model.
    pub machine: String,
}

impl Row {
    /// The value of setting column `key` (one of [`super::spec::SETTINGS`]).
    pub fn setting(&self, key: &str) -> Option<&str> {
        Some(match key {
            "layout" => &self.layout,
            "dtype" => &self.dtype,
            "selection" => &self.selection,
            "hot" => &self.hot,
            "backend" => &self.backend,
            "align" => &self.align,
            "queue_depth" => &self.queue_depth,
            "max_merge" => &self.max_merge,
            "max_gap" => &self.max_gap,
            "overlap" => &self.overlap,
            "compute_all_cached" => &self.compute_all_cached,
            "budget" => &self.budget,
            "cache" => &self.cache,
            "window" => &self.window,
            "sparsity" => &self.sparsity,
            "rank" => &self.rank,
            "profile" => &self.profile,
            _ => return None,
        })
    }

    /// Sets setting column `key`; false when there is no such column.
    pub fn set_setting(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "layout" => &mut self.layout,
            "dtype" => &mut self.dtype,
            "selection" => &mut self.selection,
            "hot" => &mut self.hot,
            "backend" => &mut self.backend,
            "align" => &mut self.align,
            "queue_depth" => &mut self.queue_depth,
            "max_merge" => &mut self.max_merge,
            "max_gap" => &mut self.max_gap,
            "overlap" => &mut self.overlap,
            "compute_all_cached" => &mut self.compute_all_cached,
            "budget" => &mut self.budget,
            "cache" => &mut self.cache,
            "window" => &mut self.window,
            "sparsity" => &mut self.sparsity,
            "rank" => &mut self.rank,
            "profile" => &mut self.profile,
            _ => return false,
        };
        *slot = value;
        true
    }
}

fn none() -> String {
    "none".to_string()
}

/// `sweep.json`: what the folder holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepInfo {
    pub name: String,
    /// [`super::spec::Spec::hash`] of the spec the rows come from.
    pub spec_sha256: String,
    /// `I/N`, or `merged`.
    pub shard: String,
    /// Points in the whole spec.
    pub points_total: usize,
    /// Points this folder should hold (its shard's, or every point once merged).
    pub points_expected: usize,
    /// Points whose rows are in `raw.csv`.
    pub points_done: usize,
    /// The spec file as the command named it (relative to where it ran), for the report's commands; absent
    /// from older folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_path: Option<String>,
}

/// The machine a sweep ran on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// CPU model (`model name` of /proc/cpuinfo), or `unknown`.
    pub cpu: String,
    /// Logical CPUs the process may use.
    pub cores: usize,
    /// Compute threads of the run.
    pub threads: usize,
    /// Kernel instruction set in use (scalar, avx2, avx512).
    pub isa: String,
    /// `MemTotal` of /proc/meminfo, KiB (0 when unknown).
    pub memory_kib: u64,
    /// Kernel release.
    pub kernel: String,
    /// The 1-minute load average when the sweep started (other work on the machine slows every point).
    pub load_average: f64,
    pub commit: String,
}

impl Machine {
    /// This machine, now.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().into());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(f64::NAN);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: spike_flash::engine::threads(),
            isa: spike_flash::engine::kernels::isa().to_string(),
            memory_kib,
            kernel,
            load_average,
            commit: commit(),
        }
    }
}

/// The commit of the current directory's git checkout (12 hex digits, `-dirty` when tracked files differ
/// from it), or `unknown` outside a checkout or without git.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
        _ => "unknown".to_string(),
    }
}

/// The rows of `path` (none when it does not exist).
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let csv_err = |e: csv::Error| Error::Csv { path: path.to_path_buf(), what: e.to_string() };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    r.deserialize().map(|row| row.map_err(csv_err)).collect()
}

/// Writes `rows` to `path` atomically: a reader sees the old file or the new one, never a part.
pub fn write_rows(path: &Path, rows: &[Row]) -> Result<()> {
    crate::summary::write_csv(path, rows).map_err(Error::from)
}

/// The per-token records of `path` (none when it does not exist).
pub fn read_tokens(path: &Path) -> Result<Vec<crate::record::TokenRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let csv_err = |e: csv::Error| Error::Csv { path: path.to_path_buf(), what: e.to_string() };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    r.deserialize().map(|row| row.map_err(csv_err)).collect()
}

/// Writes per-token records to `path` atomically.
pub fn write_tokens(path: &Path, tokens: &[crate::record::TokenRecord]) -> Result<()> {
    crate::summary::write_csv(path, tokens).map_err(Error::from)
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    spike_flash::io::write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
    .map_err(Error::from)
}

/// Reads the JSON file `path`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), what: e.to_string() })
}

/// The ids of the points that have every metric of `metrics` in `rows`.
pub fn complete_points(rows: &[Row], metrics: &[&str]) -> BTreeSet<String> {
    let mut seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in rows {
        seen.entry(&r.point_id).or_default().insert(&r.metric);
    }
    seen.into_iter().filter(|(_, m)| metrics.iter().all(|x| m.contains(x))).map(|(id, _)| id.to_string()).collect()
}

/// The files of a sweep folder.
pub struct Files {
    pub raw: PathBuf,
    /// Per decoded token, the flash loop's record; `label` is the point's id.
    pub tokens: PathBuf,
    pub machine: PathBuf,
    pub info: PathBuf,
    pub spec: PathBuf,
    pub layouts: PathBuf,
}

impl Files {
    pub fn of(dir: &Path) -> Files {
        Files {
            raw: dir.join("raw.csv"),
            tokens: dir.join("tokens.csv"),
            machine: dir.join("machine.json"),
            info: dir.join("sweep.json"),
            spec: dir.join("spec.toml"),
            layouts: dir.join("layouts"),
        }
    }
}
