//! The device profiler: random O_DIRECT reads through io_uring over a scratch file (or an existing file),
//! throughput and latency (mean, median, 99th percentile) per (chunk size, queue depth), with the spread over
//! the rounds. This is the curve of the paper's Figure 2b for the machine it runs on, and the table the cost
//! model reads ([`spike_flash::cost::DeviceProfile`]).
//!
//! The CSV (`device-profile.csv`) has one row per point: the columns of the first version (`chunk_bytes`, ...,
//! `mean_latency_us`, `backend`, `direct`, `dir`, `kernel`), then `p50_latency_us`, `p99_latency_us`,
//! `rounds`, `mib_s_min`, `mib_s_max`, `mean_latency_us_min`, `mean_latency_us_max`. The charts are drawn from
//! the CSV alone, from either version (a CSV without the later columns draws without percentiles or spread).

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use spike_flash::cost::{DeviceProfile, ProfilePoint, RoundSpread, PROFILE_FORMAT, PROFILE_VERSION};
use spike_flash::io::{AlignedBuf, IoConfig, IoStats, ReadBackend, ReadReq, ScratchFile, UringBackend};
use spike_flash::{Error, Result};

use crate::chart::{LineChart, Series};

/// What to measure. Build with `ProfileConfig { .., ..ProfileConfig::default() }`, check with
/// [`ProfileConfig::validated`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileConfig {
    /// Size of the scratch file. Default 2 GiB: large enough that the device's own cache does not serve the
    /// random reads.
    pub file_size: u64,
    /// Chunk sizes in bytes, multiples of 4096. Default 4 KiB, 8 KiB, ..., 1 MiB.
    pub chunks: Vec<usize>,
    /// Queue depths. Default 1, 2, 4, ..., 64.
    pub depths: Vec<usize>,
    /// Measuring time per point and round, after a short warm-up. Default 1 s.
    pub seconds_per_point: f64,
    /// Rounds over the whole grid; a point's figures are the median of its rounds. Default 3. Rounds make the
    /// profile robust to a shared or rate-limited device whose speed drifts, or that grants bursts after a
    /// quieter spell (a token bucket): one round's outlier is outvoted.
    pub rounds: usize,
    /// Seed of the random offsets. Default 42.
    pub seed: u64,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            file_size: 2 << 30,
            chunks: (12..=20).map(|k| 1usize << k).collect(),
            depths: (0..=6).map(|k| 1usize << k).collect(),
            seconds_per_point: 1.0,
            rounds: 3,
            seed: 42,
        }
    }
}

impl ProfileConfig {
    pub fn validated(self) -> Result<Self> {
        let bad = |w: String| Err(Error::Invalid(w));
        if self.chunks.is_empty() || self.depths.is_empty() {
            return bad("the profile needs at least one chunk size and one queue depth".into());
        }
        if let Some(c) = self.chunks.iter().find(|&&c| c == 0 || c % 4096 != 0 || c > (64 << 20)) {
            return bad(format!("chunk size {c} is not a multiple of 4096 in 4 KiB..=64 MiB"));
        }
        if let Some(d) = self.depths.iter().find(|&&d| d == 0 || d > 1024) {
            return bad(format!("queue depth {d} is not in 1..=1024"));
        }
        let max_chunk = *self.chunks.iter().max().expect("checked non-empty") as u64;
        if self.file_size < 16 * max_chunk || !self.file_size.is_multiple_of(4096) {
            return bad(format!(
                "file size {} is not a multiple of 4096 of at least 16 times the largest chunk",
                self.file_size
            ));
        }
        if !(self.seconds_per_point > 0.0 && self.seconds_per_point <= 600.0) {
            return bad(format!("seconds per point {} is not in (0, 600]", self.seconds_per_point));
        }
        if !(1..=100).contains(&self.rounds) {
            return bad(format!("rounds {} is not in 1..=100", self.rounds));
        }
        Ok(self)
    }
}

/// Random reads of `chunk` bytes at random multiples of `offset_align` below `file_len - chunk`, `depth` in
/// flight, for about `seconds`, through `backend` (which must not merge). Returns the stats of the measured
/// part. The reads land round-robin in a buffer of `buffer_bytes` (at least `2 * depth` chunks); the content
/// is not looked at. The buffer's size matters on some virtual machines, where concurrent reads into the
/// same few pages are slower than into distinct memory: fio uses `depth` chunks, an engine reading neurons
/// into their cache slots uses distinct memory.
#[allow(clippy::too_many_arguments)]
pub fn measure_random(
    backend: &mut dyn ReadBackend,
    file_len: u64,
    chunk: usize,
    offset_align: usize,
    depth: usize,
    buffer_bytes: usize,
    seconds: f64,
    seed: u64,
) -> Result<IoStats> {
    let slots = (buffer_bytes / chunk).max(2 * depth);
    let mut buf = AlignedBuf::with_align(slots * chunk, offset_align.clamp(512, 4096))?;
    // Fault every page in now: a read into a page never touched makes the kernel allocate and zero it inside
    // the measured read.
    for page in buf.as_mut_slice().chunks_mut(4096) {
        page[0] = 1;
    }
    let blocks = (file_len - chunk as u64) / offset_align as u64 + 1;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reqs = Vec::new();
    let mut batch = |backend: &mut dyn ReadBackend, n: usize| {
        reqs.clear();
        reqs.extend((0..n).map(|i| ReadReq {
            offset: rng.gen_range(0..blocks) * offset_align as u64,
            len: chunk,
            dst: (i % slots) * chunk,
        }));
        backend.read_batch(&reqs, &mut buf)
    };
    // The warm-up also sizes the batches: a quarter of the measuring time each, between 100 and 500 ms, so
    // that the queue draining at the end of a batch (about half a read's latency of lost depth: 1.7 ms for
    // 128 KiB reads at depth 32 on the reference disk) costs under 1% of the measured time.
    let warm = (16 * depth).max(64);
    let t = Instant::now();
    batch(backend, warm)?;
    let rate = warm as f64 / t.elapsed().as_secs_f64().max(1e-6);
    let per_batch = ((rate * (seconds / 4.0).clamp(0.1, 0.5)) as usize).clamp(16 * depth, 1 << 17);
    backend.reset_stats();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        batch(backend, per_batch)?;
    }
    Ok(backend.stats().clone())
}

/// The profile reads into this much distinct memory, as an engine filling its neuron cache does.
pub const PROFILE_BUFFER: usize = 256 << 20;

/// Measures every (chunk, depth) of `cfg` over a fresh scratch file in `dir`, `cfg.rounds` times over the
/// whole grid, and keeps per point the round with the median throughput. Calls `progress` after each
/// measurement with the round number (0-based) and the measured point.
pub fn run_profile(
    dir: &Path,
    cfg: &ProfileConfig,
    progress: &mut dyn FnMut(usize, &ProfilePoint),
) -> Result<DeviceProfile> {
    let cfg = cfg.clone().validated()?;
    let scratch = ScratchFile::create(dir, cfg.file_size)?;
    let mut p = profile_path(scratch.path(), scratch.len(), &cfg, progress)?;
    p.dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).display().to_string();
    Ok(p)
}

/// Like [`run_profile`], over the existing file at `path` (read only, never modified or removed), for
/// example a layout's `ffn.bin`: the profile then describes reads of that file where it lies. `cfg.file_size`
/// is ignored (the file's length is used); the file must be at least 16 times the largest chunk.
pub fn run_profile_file(
    path: &Path,
    cfg: &ProfileConfig,
    progress: &mut dyn FnMut(usize, &ProfilePoint),
) -> Result<DeviceProfile> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let cfg = ProfileConfig { file_size: len - len % 4096, ..cfg.clone() }
        .validated()
        .map_err(|e| Error::Invalid(format!("{}: {len} bytes: {e}", path.display())))?;
    let mut p = profile_path(path, len, &cfg, progress)?;
    let full = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    p.dir = full.parent().map_or_else(String::new, |d| d.display().to_string());
    p.file = Some(full.display().to_string());
    Ok(p)
}

fn profile_path(
    path: &Path,
    file_len: u64,
    cfg: &ProfileConfig,
    progress: &mut dyn FnMut(usize, &ProfilePoint),
) -> Result<DeviceProfile> {
    let align = 4096;
    let grid: Vec<(usize, usize)> = cfg.depths.iter().flat_map(|&d| cfg.chunks.iter().map(move |&c| (d, c))).collect();
    let mut rounds: Vec<Vec<ProfilePoint>> = vec![Vec::with_capacity(cfg.rounds); grid.len()];
    for round in 0..cfg.rounds {
        for &depth in &cfg.depths {
            let io = IoConfig { merge: false, queue_depth: depth, ..IoConfig::default() }.validated()?;
            let mut backend = UringBackend::new(path, &io)?;
            for &chunk in &cfg.chunks {
                let seed = cfg.seed ^ ((chunk as u64) << 16) ^ ((round as u64) << 40) ^ depth as u64;
                let s = measure_random(
                    &mut backend,
                    file_len,
                    chunk,
                    align,
                    depth,
                    PROFILE_BUFFER,
                    cfg.seconds_per_point,
                    seed,
                )?;
                let seconds = s.wait_ns as f64 / 1e9;
                let p = ProfilePoint {
                    chunk_bytes: chunk,
                    queue_depth: depth,
                    reads: s.reads,
                    bytes: s.bytes_read,
                    seconds,
                    mib_s: s.throughput_mib_s(),
                    iops: s.reads as f64 / seconds,
                    mean_latency_us: s.mean_latency_us(),
                    p50_latency_us: s.latency_hist.quantile_us(0.5),
                    p99_latency_us: s.latency_hist.quantile_us(0.99),
                    spread: None,
                };
                progress(round, &p);
                let k = grid.iter().position(|&g| g == (depth, chunk)).expect("every measured point is in the grid");
                rounds[k].push(p);
            }
        }
    }
    let points = rounds
        .into_iter()
        .map(|mut r| {
            let range = |f: fn(&ProfilePoint) -> f64| {
                r.iter().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
            };
            let ((mib_s_min, mib_s_max), (lat_min, lat_max)) = (range(|q| q.mib_s), range(|q| q.mean_latency_us));
            let spread = RoundSpread {
                rounds: r.len(),
                mib_s_min,
                mib_s_max,
                mean_latency_us_min: lat_min,
                mean_latency_us_max: lat_max,
            };
            r.sort_by(|a, b| a.mib_s.total_cmp(&b.mib_s));
            let mut median = r.swap_remove(r.len() / 2);
            median.spread = Some(spread);
            median
        })
        .collect();
    Ok(DeviceProfile {
        format: PROFILE_FORMAT.into(),
        version: PROFILE_VERSION,
        dir: String::new(),
        file: None,
        file_size: file_len,
        backend: "uring".into(),
        direct: true,
        offset_align: align,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        points,
    })
}

#[derive(serde::Serialize)]
struct Row<'a> {
    chunk_bytes: usize,
    queue_depth: usize,
    reads: u64,
    bytes: u64,
    seconds: f64,
    mib_s: f64,
    iops: f64,
    mean_latency_us: f64,
    backend: &'a str,
    direct: bool,
    dir: &'a str,
    kernel: &'a str,
    // Since the second version of the CSV, after the first version's columns so that readers by position
    // still find those.
    p50_latency_us: Option<f64>,
    p99_latency_us: Option<f64>,
    rounds: Option<usize>,
    mib_s_min: Option<f64>,
    mib_s_max: Option<f64>,
    mean_latency_us_min: Option<f64>,
    mean_latency_us_max: Option<f64>,
}

/// Writes the profile's CSV (long format, one row per point).
pub fn write_profile_csv(p: &DeviceProfile, path: &Path) -> Result<()> {
    crate::summary::write_csv(
        path,
        p.points.iter().map(|q| Row {
            chunk_bytes: q.chunk_bytes,
            queue_depth: q.queue_depth,
            reads: q.reads,
            bytes: q.bytes,
            seconds: q.seconds,
            mib_s: q.mib_s,
            iops: q.iops,
            mean_latency_us: q.mean_latency_us,
            backend: &p.backend,
            direct: p.direct,
            dir: &p.dir,
            kernel: &p.kernel,
            p50_latency_us: q.p50_latency_us,
            p99_latency_us: q.p99_latency_us,
            rounds: q.spread.map(|s| s.rounds),
            mib_s_min: q.spread.map(|s| s.mib_s_min),
            mib_s_max: q.spread.map(|s| s.mib_s_max),
            mean_latency_us_min: q.spread.map(|s| s.mean_latency_us_min),
            mean_latency_us_max: q.spread.map(|s| s.mean_latency_us_max),
        }),
    )
}

/// Draws throughput and latency against chunk size, one line per queue depth (see [`draw_profile_csv`]).
pub fn draw_profile(p: &DeviceProfile, out: &Path) -> crate::Result<Vec<PathBuf>> {
    let points: Vec<ChartPoint> = p
        .points
        .iter()
        .map(|q| ChartPoint {
            chunk_bytes: q.chunk_bytes,
            queue_depth: q.queue_depth,
            mib_s: q.mib_s,
            mean_latency_us: q.mean_latency_us,
            p50_latency_us: q.p50_latency_us,
            p99_latency_us: q.p99_latency_us,
            rounds: q.spread.map(|s| s.rounds),
            mib_s_min: q.spread.map(|s| s.mib_s_min),
            mib_s_max: q.spread.map(|s| s.mib_s_max),
        })
        .collect();
    draw_points(&points, out)
}

/// The columns of a profile's CSV that its charts need (the other columns are ignored; those of the second
/// version may be missing, or empty).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
struct ChartPoint {
    chunk_bytes: usize,
    queue_depth: usize,
    mib_s: f64,
    mean_latency_us: f64,
    #[serde(default)]
    p50_latency_us: Option<f64>,
    #[serde(default)]
    p99_latency_us: Option<f64>,
    #[serde(default)]
    rounds: Option<usize>,
    #[serde(default)]
    mib_s_min: Option<f64>,
    #[serde(default)]
    mib_s_max: Option<f64>,
}

/// Draws the charts of [`draw_profile`] from a profile's CSV (`device-profile.csv`, as
/// [`write_profile_csv`] writes it, of either version) into `out`, measuring nothing:
///
/// - `device-profile.{png,svg}`: throughput against chunk size, a line per queue depth through the median
///   rounds, with a bar from the lowest to the highest round where the CSV has them;
/// - `device-latency.{png,svg}`: latency on a log axis, a solid line per queue depth through the median (p50)
///   and a dashed one in the same colour through the 99th percentile; a CSV without percentiles draws the
///   mean latency instead, and says so.
pub fn draw_profile_csv(csv_path: &Path, out: &Path) -> crate::Result<Vec<PathBuf>> {
    let bad = |what: String| crate::Error::Csv { path: csv_path.to_path_buf(), what };
    let mut r = csv::Reader::from_path(csv_path).map_err(|e| bad(e.to_string()))?;
    let points =
        r.deserialize().collect::<std::result::Result<Vec<ChartPoint>, _>>().map_err(|e| bad(e.to_string()))?;
    if points.is_empty() {
        return Err(bad("no profile points (rows) to draw".into()));
    }
    draw_points(&points, out)
}

fn draw_points(points: &[ChartPoint], out: &Path) -> crate::Result<Vec<PathBuf>> {
    let mut depths: Vec<usize> = points.iter().map(|q| q.queue_depth).collect();
    depths.sort_unstable();
    depths.dedup();
    let at = |d: usize| points.iter().filter(move |q| q.queue_depth == d);
    let rounds = points.iter().filter_map(|q| q.rounds).max();
    let spread = points.iter().any(|q| q.mib_s_min.is_some() && q.mib_s_max.is_some());
    let throughput: Vec<Series> = depths
        .iter()
        .map(|&d| Series {
            spread: at(d).map(|q| (q.mib_s_min.unwrap_or(f64::NAN), q.mib_s_max.unwrap_or(f64::NAN))).collect(),
            ..Series::line(format!("queue depth {d}"), at(d).map(|q| (q.chunk_bytes as f64, q.mib_s)).collect())
        })
        .collect();
    let percentiles = points.iter().any(|q| q.p50_latency_us.is_some());
    let mut latency = Vec::new();
    for (i, &d) in depths.iter().enumerate() {
        let of = |f: fn(&ChartPoint) -> Option<f64>| -> Vec<(f64, f64)> {
            at(d).map(|q| (q.chunk_bytes as f64, f(q).unwrap_or(f64::NAN))).collect()
        };
        if percentiles {
            latency
                .push(Series { color: Some(i), ..Series::line(format!("queue depth {d}"), of(|q| q.p50_latency_us)) });
            latency.push(Series { color: Some(i), ..Series::dashed("", of(|q| q.p99_latency_us)) });
        } else {
            latency.push(Series {
                color: Some(i),
                ..Series::line(format!("queue depth {d}"), of(|q| Some(q.mean_latency_us)))
            });
        }
    }
    let throughput_title = match (spread, rounds) {
        (true, Some(n)) if n > 1 => {
            format!("Random O_DIRECT reads (io_uring): throughput, median of {n} rounds, bars min to max (measured)")
        }
        _ => "Random O_DIRECT reads (io_uring): throughput (measured)".to_string(),
    };
    let (latency_title, latency_y) = if percentiles {
        (
            "Random O_DIRECT reads (io_uring): latency, median solid, 99th percentile dashed (measured)",
            "latency per read (microseconds, log scale)",
        )
    } else {
        ("Random O_DIRECT reads (io_uring): mean latency (measured)", "mean latency per read (microseconds, log scale)")
    };
    let mut written = Vec::new();
    let charts = [
        ("device-profile", throughput_title.as_str(), "MiB/s", false, throughput),
        ("device-latency", latency_title, latency_y, true, latency),
    ];
    for (name, title, y, log_y, s) in charts {
        // The title names no folder: a machine's paths say nothing to the reader and differ between hosts.
        let chart = LineChart {
            title: title.to_string(),
            x_label: "chunk size (bytes, log2 scale)".into(),
            y_label: y.into(),
            log2_x: true,
            log_y,
            legend: crate::chart::LegendAt::UpperLeft,
            series: s,
        };
        let (png, svg) = (out.join(format!("{name}.png")), out.join(format!("{name}.svg")));
        chart.write(&png, &svg)?;
        written.extend([png, svg]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spike_flash::io::fill_pattern;

    #[test]
    fn tiny_profile_runs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProfileConfig {
            file_size: 4 << 20,
            chunks: vec![4096, 65536],
            depths: vec![1, 4],
            seconds_per_point: 0.02,
            rounds: 3,
            seed: 1,
        };
        let mut calls = 0;
        let p = run_profile(dir.path(), &cfg, &mut |_, _| calls += 1).unwrap();
        assert_eq!(calls, 12);
        assert_eq!(p.points.len(), 4);
        assert!(p.points.iter().all(|q| q.reads > 0 && q.mib_s > 0.0 && q.mean_latency_us > 0.0));
        for q in &p.points {
            let (p50, p99) = (q.p50_latency_us.unwrap(), q.p99_latency_us.unwrap());
            assert!(0.0 < p50 && p50 <= p99, "{q:?}");
            let s = q.spread.unwrap();
            assert_eq!(s.rounds, 3);
            assert!(s.mib_s_min <= q.mib_s && q.mib_s <= s.mib_s_max, "the median round lies in the spread: {q:?}");
            assert!(s.mean_latency_us_min <= q.mean_latency_us && q.mean_latency_us <= s.mean_latency_us_max);
        }
        // The CSV keeps the first version's columns first, then the new ones.
        let csv = dir.path().join("device-profile.csv");
        write_profile_csv(&p, &csv).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(
            text.starts_with(
                "chunk_bytes,queue_depth,reads,bytes,seconds,mib_s,iops,mean_latency_us,backend,direct,dir,kernel,\
             p50_latency_us,p99_latency_us,rounds,mib_s_min,mib_s_max,mean_latency_us_min,mean_latency_us_max\n"
            ),
            "{text}"
        );
        let f = dir.path().join("p.json");
        p.save(&f).unwrap();
        // serde_json parses floats to within an ulp or so, not always bit for bit.
        let q = DeviceProfile::load(&f).unwrap();
        assert_eq!(q.points.len(), p.points.len());
        for (a, b) in p.points.iter().zip(&q.points) {
            assert_eq!((a.chunk_bytes, a.queue_depth, a.reads), (b.chunk_bytes, b.queue_depth, b.reads));
            assert!((a.mib_s - b.mib_s).abs() <= 1e-9 * a.mib_s);
        }
        assert!(p.point(65536, 4).is_some());
    }

    #[test]
    fn charts_from_the_csv_alone() {
        if crate::chart::LineChart::skip_without_font() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("device-profile.csv");
        let head = "chunk_bytes,queue_depth,reads,bytes,seconds,mib_s,iops,mean_latency_us,backend,direct,dir,kernel\n";
        let rows = "4096,1,10,40960,0.1,0.4,100,10.0,uring,true,/somewhere/else,6\n\
                    65536,1,10,655360,0.1,6.2,100,10.0,uring,true,/somewhere/else,6\n";
        std::fs::write(&csv, format!("{head}{rows}")).unwrap();
        let out = draw_profile_csv(&csv, dir.path()).unwrap();
        assert_eq!(out.len(), 4);
        for f in &out {
            assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
        }
        let svg = std::fs::read_to_string(dir.path().join("device-profile.svg")).unwrap();
        assert!(svg.contains("(measured)") && !svg.contains("/somewhere/else"), "the title names no folder");
        // The first version's CSV: the mean latency on a log axis, no spread.
        let svg = std::fs::read_to_string(dir.path().join("device-latency.svg")).unwrap();
        assert!(svg.contains("mean latency") && svg.contains("log scale") && !svg.contains("percentile"), "{svg}");
        // A bad number names the file and the record.
        std::fs::write(&csv, format!("{head}4096,1,10,40960,0.1,fast,100,10.0,uring,true,/x,6\n")).unwrap();
        let e = draw_profile_csv(&csv, dir.path()).unwrap_err().to_string();
        assert!(e.contains("device-profile.csv") && e.contains("line: 2"), "{e}");
    }

    #[test]
    fn charts_of_the_second_csv_version_show_percentiles_and_the_spread_over_rounds() {
        if crate::chart::LineChart::skip_without_font() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("device-profile.csv");
        let mut text = String::from(
            "chunk_bytes,queue_depth,reads,bytes,seconds,mib_s,iops,mean_latency_us,backend,direct,dir,kernel,\
             p50_latency_us,p99_latency_us,rounds,mib_s_min,mib_s_max,mean_latency_us_min,mean_latency_us_max\n",
        );
        // Latencies from 40 us to 35 ms: four decades.
        for (d, scale) in [(1usize, 1.0), (8, 6.0), (64, 30.0)] {
            for k in 12..=20 {
                let chunk = 1usize << k;
                let p50 = 40.0 * scale * (chunk as f64 / 4096.0).sqrt();
                let mib_s = d as f64 * chunk as f64 / (1 << 20) as f64 / (p50 / 1e6);
                text.push_str(&format!(
                    "{chunk},{d},100,{},1.0,{mib_s},100,{p50},uring,true,/somewhere/else,6,{p50},{},3,{},{},{},{}\n",
                    100 * chunk,
                    p50 * 3.0,
                    mib_s * 0.9,
                    mib_s * 1.05,
                    p50 * 0.95,
                    p50 * 1.1
                ));
            }
        }
        std::fs::write(&csv, text).unwrap();
        let out = draw_profile_csv(&csv, dir.path()).unwrap();
        assert_eq!(out.len(), 4);
        let svg = std::fs::read_to_string(dir.path().join("device-latency.svg")).unwrap();
        // The decades of the log axis, each a tick label (the SVG writes a text's content on its own line).
        for want in
            ["99th percentile dashed", "log scale", "queue depth 64", "\n10\n", "\n100\n", "\n1000\n", "\n10000\n"]
        {
            assert!(svg.contains(want), "{want} not in the latency chart");
        }
        assert!(!svg.contains("/somewhere/else"), "the title names no folder");
        let svg = std::fs::read_to_string(dir.path().join("device-profile.svg")).unwrap();
        assert!(svg.contains("median of 3 rounds, bars min to max"), "the throughput chart shows the spread");
        // A value that is not a number in a new column names the column's line.
        std::fs::write(
            &csv,
            "chunk_bytes,queue_depth,reads,bytes,seconds,mib_s,iops,mean_latency_us,backend,direct,dir,kernel,\
             p50_latency_us\n4096,1,10,40960,0.1,0.4,100,10.0,uring,true,/x,6,soon\n",
        )
        .unwrap();
        let e = draw_profile_csv(&csv, dir.path()).unwrap_err().to_string();
        assert!(e.contains("device-profile.csv") && e.contains("line: 2"), "{e}");
    }

    #[test]
    fn profile_of_an_existing_file_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let mut bytes = vec![0u8; (2 << 20) + 100];
        fill_pattern(0, &mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let cfg = ProfileConfig {
            chunks: vec![4096],
            depths: vec![2],
            seconds_per_point: 0.01,
            rounds: 1,
            ..Default::default()
        };
        let p = run_profile_file(&path, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(p.file_size, bytes.len() as u64);
        assert!(p.file.as_deref().is_some_and(|f| f.ends_with("data.bin")), "{:?}", p.file);
        assert!(p.points[0].reads > 0);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is unchanged");
        // Too small for the chunk: a clear error naming the file.
        let big = ProfileConfig { chunks: vec![1 << 20], ..cfg };
        let e = run_profile_file(&path, &big, &mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("data.bin") && e.contains("16 times"), "{e}");
    }
}
