//! Spike's flash-side library: model import, flash layout, I/O engine, neuron cache, inference engine and
//! cost model. See `DESIGN.md` at the workspace's shared folder for how the parts fit together.

pub mod cache;
pub mod cost;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod io;
pub mod layout;
pub mod model;

pub use error::{Error, Result};
