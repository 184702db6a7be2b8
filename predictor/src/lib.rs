#![forbid(unsafe_code)]
//! Low-rank sparsity predictors (filled in by the predictor issue).
