//! What the fuzz harnesses (`fuzz/`, `docs/fuzzing.md`) and their replay in the tests (`tests/fuzz_replay.rs`)
//! do with one input of this crate's readers: hand it to the reader the way it meets files, then do what a
//! caller does next with whatever it accepted. A reader must answer every input with a value or an error; a
//! panic, an abort or a huge allocation here is a bug in the reader. Not part of the crate's API.

use std::path::Path;

use ndarray::Array2;

use crate::calibrate::Thresholds;
use crate::trace::Trace;

/// A trace file written at `path`, opened, then every layer (up to 64) read, its checksums checked, and the
/// document split computed. Returns whether the trace opened.
pub fn trace(path: &Path, data: &[u8]) -> bool {
    if std::fs::write(path, data).is_err() {
        return false;
    }
    let Ok(t) = Trace::open(path) else { return false };
    let _ = t.documents();
    let _ = t.split(0.25, 1);
    for l in 0..t.meta().n_layers.min(64) {
        let _ = t.layer(l);
    }
    true
}

/// A thresholds file written at `path`, loaded, and checked against its own model. Returns whether it loaded.
pub fn thresholds(path: &Path, data: &[u8]) -> bool {
    if std::fs::write(path, data).is_err() {
        return false;
    }
    let Ok(t) = Thresholds::load(path) else { return false };
    let _ = t.check_model(path, &t.model.clone());
    true
}

/// A predictor file parsed from bytes, then every layer (up to 64) run on one all-ones input of d_model
/// values (d_model up to 4096). Returns whether it parsed.
pub fn predictor(data: &[u8]) -> bool {
    let Ok(p) = crate::file::from_bytes(Path::new("fuzz.pred"), data) else { return false };
    let d = p.identity().d_model;
    if d <= 4096 {
        let x = Array2::<f32>::ones((1, d));
        for l in 0..p.layers().len().min(64) {
            let _ = p.predict_batch(l, x.view());
        }
    }
    true
}
