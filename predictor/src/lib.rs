#![forbid(unsafe_code)]
//! Activation traces in, low-rank sparsity predictors out: dense runs recorded to trace files ([`trace`]), the
//! statistics read from them ([`stats`]), per-layer activation thresholds for models that are not ReLU
//! ([`calibrate`]), and the corpus splitting the tracer uses ([`corpus`]).

pub mod calibrate;
pub mod corpus;
pub mod error;
pub mod stats;
pub mod trace;

pub use error::{Error, Result};
