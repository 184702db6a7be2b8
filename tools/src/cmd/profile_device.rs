//! `spike profile-device`: random O_DIRECT reads through io_uring over a scratch file in `--dir`, throughput and
//! mean latency per (chunk size, queue depth); writes device-profile.json and .csv and draws the chart.

use std::path::PathBuf;

use anyhow::Context;
use experiments::device::{
    draw_profile, draw_profile_csv, run_profile, run_profile_file, write_profile_csv, ProfileConfig,
};

/// Arguments of `spike profile-device`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder on the file system to profile (where the layout will live); the scratch file is created there
    /// without a name and vanishes when the command ends, however it ends.
    #[arg(long, required_unless_present_any = ["file", "redraw"], conflicts_with_all = ["file", "redraw"])]
    dir: Option<PathBuf>,
    /// Instead of --dir: read this existing file (for example a layout's ffn.bin), which is left as it is.
    /// It must be at least 16 times the largest chunk.
    #[arg(long, conflicts_with = "redraw")]
    file: Option<PathBuf>,
    /// Measure nothing: draw the charts again from OUT/device-profile.csv.
    #[arg(long)]
    redraw: bool,
    /// Size of the scratch file (K, M, G suffixes are powers of 1024).
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    file_size: u64,
    /// Chunk sizes, comma separated, multiples of 4K.
    #[arg(long, value_delimiter = ',', default_value = "4K,8K,16K,32K,64K,128K,256K,512K,1M", value_parser = parse_size)]
    chunks: Vec<u64>,
    /// Queue depths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    depths: Vec<usize>,
    /// Measuring time per (chunk, depth) point and round, seconds.
    #[arg(long, default_value_t = 1.0)]
    seconds_per_point: f64,
    /// Rounds over the whole grid; each point keeps the median of its rounds (robust to a drifting device).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Output folder for device-profile.{json,csv,png,svg}.
    #[arg(long, default_value = "results/device")]
    out: PathBuf,
}

/// Parses a byte size: a number with an optional K/M/G/T suffix (binary, `KiB`/`KB`/`K` alike).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 4K, 1M, 2GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("`{s}`: unknown size unit `{unit}`")),
    };
    let v = num * mult as f64;
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0) {
        return Err(format!("`{s}` is not a whole number of bytes"));
    }
    Ok(v as u64)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.redraw {
        let csv = args.out.join("device-profile.csv");
        let charts = draw_profile_csv(&csv, &args.out).with_context(|| format!("drawing {}", csv.display()))?;
        for c in charts {
            println!("wrote {}", c.display());
        }
        return Ok(());
    }
    let cfg = ProfileConfig {
        file_size: args.file_size,
        chunks: args.chunks.iter().map(|&c| c as usize).collect(),
        depths: args.depths.clone(),
        seconds_per_point: args.seconds_per_point,
        rounds: args.rounds,
        ..ProfileConfig::default()
    }
    .validated()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let what = match (&args.file, &args.dir) {
        (Some(f), _) => format!("the existing file {}", f.display()),
        (None, Some(d)) => {
            format!("a {} scratch file in {}", experiments::chart::binary_label(cfg.file_size as f64), d.display())
        }
        (None, None) => anyhow::bail!("give --dir or --file"),
    };
    eprintln!(
        "profile-device: {what}, {} rounds of {} points of {} s (O_DIRECT, io_uring: the page cache is not used)",
        cfg.rounds,
        cfg.chunks.len() * cfg.depths.len(),
        cfg.seconds_per_point
    );
    let mut show = |round: usize, q: &spike_flash::cost::ProfilePoint| {
        eprintln!(
            "  round {round}  chunk {:>5}  depth {:>3}  {:>8.1} MiB/s  {:>9.0} IOPS  {:>8.1} us",
            experiments::chart::binary_label(q.chunk_bytes as f64),
            q.queue_depth,
            q.mib_s,
            q.iops,
            q.mean_latency_us
        )
    };
    let profile = match (&args.file, &args.dir) {
        (Some(f), _) => run_profile_file(f, &cfg, &mut show).with_context(|| format!("profiling {}", f.display())),
        (None, Some(d)) => run_profile(d, &cfg, &mut show).with_context(|| format!("profiling {}", d.display())),
        (None, None) => Err(anyhow::anyhow!("give --dir or --file")),
    }?;
    let json = args.out.join("device-profile.json");
    profile.save(&json)?;
    let csv = args.out.join("device-profile.csv");
    write_profile_csv(&profile, &csv).with_context(|| format!("writing {}", csv.display()))?;
    let charts = draw_profile(&profile, &args.out)?;
    println!("wrote {}", json.display());
    println!("wrote {}", csv.display());
    for c in charts {
        println!("wrote {}", c.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert!(parse_size("4Q").is_err());
        assert!(parse_size("x").is_err());
    }
}
