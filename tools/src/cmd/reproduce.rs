//! `spike reproduce`: the whole chain on the default model into one dated run folder, a progress bar per
//! stage, resumable. The work is `experiments::reproduce`'s.

use std::path::PathBuf;

use anyhow::Context;
use experiments::reproduce::{self, ReproduceConfig, StageProgress};
use indicatif::{ProgressBar, ProgressStyle};
use spike_flash::engine::input::ActPrecision;
use spike_flash::model::fetch::resolve_model;

/// Arguments of `spike reproduce`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small token counts and fewer sweep points (under 15 minutes on 2 cores) instead of the full run.
    #[arg(long)]
    quick: bool,
    /// Run folder (default: results/runs/<UTC date-time>/). Give an interrupted run's folder, with the same
    /// flags, to resume it: stages whose outputs are complete are skipped.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Also run the planted OPT checkpoint of scripts/paper-scale.sh (opt-1.3b; the tiny preset with --quick).
    #[arg(long)]
    paper_scale: bool,
}

/// One progress bar per stage.
struct Bars {
    bar: Option<ProgressBar>,
}

impl Bars {
    fn say(&self, text: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(text),
            _ => eprintln!("{text}"),
        }
    }
}

impl StageProgress for Bars {
    fn stage(&mut self, index: usize, count: usize, name: &str, units: u64) {
        let bar = ProgressBar::new(units);
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {elapsed} elapsed, ETA {eta} {msg}")
                .expect("the template is valid"),
        );
        bar.set_prefix(format!("[{index}/{count}] {name}"));
        if bar.is_hidden() {
            eprintln!("[{index}/{count}] {name}");
        }
        self.bar = Some(bar);
    }

    fn set_units(&mut self, units: u64) {
        if let Some(b) = &self.bar {
            b.set_length(units);
        }
    }

    fn advance(&mut self, units: u64) {
        if let Some(b) = &self.bar {
            b.inc(units);
        }
    }

    fn finished(&mut self, name: &str, secs: f64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.say(format!("done: {name} ({secs:.0} s)"));
    }

    fn skipped(&mut self, index: usize, count: usize, name: &str, why: &str) {
        self.say(format!("[{index}/{count}] {name}: skipped, {why}"));
    }

    fn note(&mut self, text: &str) {
        self.say(format!("note: {text}"));
    }
}

pub fn run(args: Args, precision: ActPrecision) -> anyhow::Result<()> {
    let repo = std::env::current_dir().context("the current directory")?;
    let out = args.out.clone().unwrap_or_else(|| {
        let abs = reproduce::default_out(&repo);
        abs.strip_prefix(&repo).map(PathBuf::from).unwrap_or(abs)
    });
    let cfg = ReproduceConfig {
        out: out.clone(),
        quick: args.quick,
        paper_scale: args.paper_scale,
        repo,
        exe: std::env::current_exe().context("the path of this spike executable")?,
        model: resolve_model(None)?,
        precision,
    };
    eprintln!(
        "spike reproduce{}{} into {} (interrupted? run the same command with --out {} to resume)",
        if args.quick { " --quick" } else { "" },
        if args.paper_scale { " --paper-scale" } else { "" },
        out.display(),
        out.display()
    );
    let t0 = std::time::Instant::now();
    let mut bars = Bars { bar: None };
    let outcome = reproduce::run(&cfg, &mut bars);
    if let Some(b) = bars.bar.take() {
        b.abandon();
    }
    let o = outcome.with_context(|| {
        format!("reproducing into {} (rerun with --out {} to resume)", out.display(), out.display())
    })?;
    println!(
        "{} stages run, {} skipped (already complete) in {:.1} min",
        o.ran.len(),
        o.skipped.len(),
        t0.elapsed().as_secs_f64() / 60.0
    );
    println!("report: {}", o.report.display());
    Ok(())
}
