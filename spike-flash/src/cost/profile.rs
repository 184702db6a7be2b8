//! A device profile: random-read throughput and latency per (chunk size, queue depth), measured by the
//! profiler of the `experiments` crate (`spike profile-device`) and read by the cost model. Its JSON form is the
//! file `device-profile.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One measured point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfilePoint {
    pub chunk_bytes: usize,
    pub queue_depth: usize,
    pub reads: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Throughput, MiB/s.
    pub mib_s: f64,
    pub iops: f64,
    /// Mean time from submission to completion of one read, microseconds.
    pub mean_latency_us: f64,
    /// Median and 99th percentile of the reads' latencies, microseconds (from a histogram of eighth-octave
    /// buckets: within 12.5%); absent from profiles written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_latency_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_us: Option<f64>,
    /// The spread over the rounds this point was measured in (the point's other figures are those of its
    /// median round); absent from profiles written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<RoundSpread>,
}

/// The lowest and highest figures of a profile point over its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundSpread {
    pub rounds: usize,
    pub mib_s_min: f64,
    pub mib_s_max: f64,
    pub mean_latency_us_min: f64,
    pub mean_latency_us_max: f64,
}

/// A device profile: where and how it was measured, and the points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Always `"spike-device-profile"`.
    pub format: String,
    pub version: u32,
    /// The folder the scratch file lived in (so, the file system and device measured).
    pub dir: String,
    /// The existing file that was read instead of a scratch file (`spike profile-device --file`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub file_size: u64,
    /// Always `"uring"` with `direct: true` for profiles made by the profiler: reads bypassed the page cache.
    pub backend: String,
    pub direct: bool,
    /// Offsets were random multiples of this.
    pub offset_align: usize,
    pub kernel: String,
    pub created_unix: u64,
    pub points: Vec<ProfilePoint>,
}

pub const PROFILE_FORMAT: &str = "spike-device-profile";
pub const PROFILE_VERSION: u32 = 1;

impl DeviceProfile {
    /// Reads a profile written by [`DeviceProfile::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p: DeviceProfile = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not a device profile: {e}", path.display())))?;
        if p.format != PROFILE_FORMAT || p.version != PROFILE_VERSION {
            return Err(Error::Invalid(format!(
                "{}: format {:?} version {} (expected {PROFILE_FORMAT:?} version {PROFILE_VERSION})",
                path.display(),
                p.format,
                p.version
            )));
        }
        Ok(p)
    }

    /// Writes the profile as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(format!("profile to JSON: {e}")))?;
        crate::io::write_atomic(path, |w| w.write_all(text.as_bytes()).and_then(|_| w.write_all(b"\n")))
    }

    /// The point measured at exactly this chunk size and depth.
    pub fn point(&self, chunk_bytes: usize, queue_depth: usize) -> Option<&ProfilePoint> {
        self.points.iter().find(|p| p.chunk_bytes == chunk_bytes && p.queue_depth == queue_depth)
    }
}
