//! `spike verify`: checks a flash layout's structure and every checksum: what every command running a model
//! from a layout checks when it opens it, and every record and section of `ffn.bin`.

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
        "{}: ok ({} layers, {:?}, {} rows, {} columns; {} sections, {} records and {} resident tensors checked, {} \
         bytes)",
        args.layout.display(),
        m.layers.len(),
        m.kind,
        m.dtype,
        m.column_dtype,
        r.sections,
        r.records,
        r.tensors,
        r.bytes
    );
    Ok(())
}
