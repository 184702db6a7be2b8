#![forbid(unsafe_code)]
//! Spike's measurement harnesses and their outputs: the device profiler, the cost model's validation, the
//! layout read benchmark, the flash Table-3 bench, sweeps over flash settings (sharded and merged), per-token
//! records as CSV rows, medians and summaries, and charts. `spike-flash` produces numbers; this crate turns them into rows, tables and charts.

pub mod chart;
pub mod cost_validation;
pub mod dense_bench;
pub mod device;
pub mod error;
pub mod latency;
pub mod layout_bench;
pub mod paper;
pub mod record;
pub mod report;
pub mod reproduce;
pub mod summary;
pub mod sweep;
pub mod table3;
pub mod trace_stats;

pub use error::{Error, Result};
