//! `spike report`: the paper's claims beside ours, from the CSV files of sweep folders. The work is
//! `experiments::report`'s.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `spike report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A sweep folder, or a folder of them (its subfolders and those of DIR/sweeps are read). The report is
    /// written to DIR/REPORT.md, with links relative to DIR.
    dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let r = experiments::report::write(&args.dir).with_context(|| format!("reporting on {}", args.dir.display()))?;
    println!(
        "read {} sweep folders: {}",
        r.sweeps.len(),
        r.sweeps.iter().map(|s| s.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let claims: usize = r.sections.iter().map(|s| s.lines.len()).sum();
    println!("{} sections, {claims} numbers; not covered: {}", r.sections.len(), r.missing.len());
    println!("wrote {}", r.path.display());
    Ok(())
}
