#![forbid(unsafe_code)]
//! Sweeps, CSV rows, charts and reports (filled in by later issues).
