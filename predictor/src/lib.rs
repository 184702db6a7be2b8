#![forbid(unsafe_code)]
//! Activation traces in, low-rank sparsity predictors out: dense runs recorded to trace files ([`trace`]), the
//! statistics read from them ([`stats`]), per-layer activation thresholds for models that are not ReLU
//! ([`calibrate`]), and the corpus splitting the tracer uses ([`corpus`]); per FFN layer a rank-r map from the
//! FFN's input to every neuron's logit ([`lowrank`]), trained with a class-balanced loss ([`train`]), judged
//! by recall and precision ([`metrics`]), stored with checksums ([`file`], `docs/predictor-format.md`) and
//! used by the sparse FFN as its neuron selector ([`select`]).

pub mod calibrate;
pub mod corpus;
pub mod error;
pub mod file;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod lowrank;
pub mod metrics;
pub mod select;
pub mod selectors;
pub mod stats;
pub mod trace;
pub mod train;

pub use error::{Error, Result};
pub use select::{LayerPredictor, Predictor};
pub use trace::ModelIdentity;
