//! `spike verify`: checks a flash layout's structure and every checksum.

use std::path::PathBuf;

use spike_flash::layout::Layout;

/// Arguments of `spike verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The layout directory (NAME.spike).
    layout: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = Layout::open(&args.layout)?;
    let r = layout.verify()?;
    let m = layout.manifest();
    println!(
        "{}: ok ({} layers, {:?}, {} rows, {} columns; {} sections and {} resident tensors checked, {} bytes)",
        args.layout.display(),
        m.layers.len(),
        m.kind,
        m.dtype,
        m.column_dtype,
        r.sections,
        r.tensors,
        r.bytes
    );
    Ok(())
}
