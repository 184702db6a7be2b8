#![forbid(unsafe_code)]
//! Activation traces in, low-rank sparsity predictors out: per FFN layer a rank-r map from the FFN's input to
//! every neuron's logit (`lowrank`), trained with a class-balanced loss (`train`), judged by recall and
//! precision (`metrics`), stored with checksums (`file`, `docs/predictor-format.md`) and used by the sparse
//! FFN as its neuron selector (`select`).

pub mod error;
pub mod file;
pub mod lowrank;
pub mod metrics;
pub mod select;
pub mod train;

pub use error::{Error, Result};
pub use file::ModelIdentity;
pub use select::{LayerPredictor, Predictor};
