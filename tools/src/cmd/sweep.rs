//! `spike sweep`: run a spec's grid of flash settings (`docs/sweeps.md`), one shard of it, merge shards, or
//! draw the charts of a sweep's CSV. The work is `experiments::sweep`'s.

use std::path::PathBuf;

use anyhow::Context;
use experiments::sweep::{self, plot, Point, Progress, Shard, Spec, SweepRun};
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::engine::input::ActPrecision;

/// Arguments of `spike sweep`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// The sweep's spec (TOML: source, prompts, fixed settings, grid; see docs/sweeps.md).
    #[arg(required = true)]
    spec: Option<PathBuf>,
    /// Output folder: raw.csv, machine.json, sweep.json, spec.toml, charts. A sweep already there resumes.
    #[arg(short, long, required = true)]
    out: Option<PathBuf>,
    /// Run shard I of N: the points whose grid number (from 0) is I-1 modulo N. Each shard needs its own
    /// folder; `spike sweep merge` joins them.
    #[arg(long)]
    shard: Option<Shard>,
    /// Do not draw the charts at the end.
    #[arg(long)]
    no_plot: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Join the outputs of a sweep's shards into one folder; refuses folders of different specs.
    Merge {
        /// The shards' output folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Output folder of the merged sweep.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Draw the charts of a sweep folder from its raw.csv (window trade-off, neuron usage vs window size).
    Plot {
        /// The sweep's output folder.
        dir: PathBuf,
    },
}

/// A progress bar over the steps of the points still to run (a prompt pass or a decoded token each).
struct Bar(ProgressBar);

impl Bar {
    /// Prints a line above the bar, or on stderr when the bar is hidden (not a terminal: a log file, GNU
    /// parallel, a Slurm job), where indicatif would drop it.
    fn say(&self, text: String) {
        if self.0.is_hidden() {
            eprintln!("{text}");
        } else {
            self.0.println(text);
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, points: usize, units: u64) {
        self.0.set_length(units);
        self.say(format!("{points} points to run"));
    }

    fn point(&mut self, point: &Point, label: &str) {
        self.0.set_message(format!("point {} ({label})", point.index));
    }

    fn advance(&mut self, units: u64) {
        self.0.inc(units);
    }

    fn note(&mut self, text: &str) {
        self.say(format!("note: {text}"));
    }
}

pub fn run(args: Args, precision: ActPrecision) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Merge { dirs, out }) => {
            let m = sweep::merge(&dirs, &out)?;
            println!(
                "merged {} folders: {} of {} points into {}",
                dirs.len(),
                m.points_done,
                m.points_total,
                out.display()
            );
            if !m.missing.is_empty() {
                println!("missing points (no shard holds them): {:?}", m.missing);
            }
            println!("draw the charts with: spike sweep plot {}", out.display());
            Ok(())
        }
        Some(Action::Plot { dir }) => draw(&dir),
        None => {
            let (spec, out) = (args.spec.expect("clap requires SPEC"), args.out.expect("clap requires --out"));
            let spec = Spec::load(&spec)?;
            let shard = args.shard.unwrap_or(Shard::ALL);
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed} elapsed, ETA {eta} {msg}")
                    .expect("the template is valid"),
            );
            let mut progress = Bar(bar);
            let run = SweepRun { spec, out: out.clone(), shard, precision };
            let outcome = sweep::run(&run, &mut progress);
            progress.0.finish_and_clear();
            let o = outcome?;
            println!(
                "sweep {}: shard {shard}, {} of {} points ({} ran now, {} already done); rows in {}",
                run.spec.name,
                o.points_in_shard,
                o.points_total,
                o.ran,
                o.skipped,
                o.raw_csv.display()
            );
            if !o.budget_decided.is_empty() {
                println!(
                    "the DRAM budget, not the cache policy, decided the cache size at points {:?} (column budget_decides)",
                    o.budget_decided
                );
            }
            if shard.count == 1 && !args.no_plot {
                draw(&out)?;
            }
            Ok(())
        }
    }
}

fn draw(dir: &std::path::Path) -> anyhow::Result<()> {
    let p = plot::plot(dir).with_context(|| format!("drawing the charts of {}", dir.display()))?;
    for n in &p.notes {
        println!("note: {n}");
    }
    for c in &p.charts {
        println!("chart: {} (and .svg)", c.display());
    }
    Ok(())
}
