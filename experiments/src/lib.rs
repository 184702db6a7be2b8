#![forbid(unsafe_code)]
//! Sweeps, CSV rows, charts and reports (filled in by later issues).

pub mod chart;
pub mod error;

pub use error::{Error, Result};
