//! Neuron selectors built from files, checked against the model they are used with: a trained predictor or an
//! oracle (the truly active neurons at calibrated thresholds) for a flash layout, and the predicted sparse FFN
//! of a model held in memory, optionally audited against the oracle (`spike perplexity --predictor`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use spike_flash::engine::model::Model;
use spike_flash::engine::sparse::{all_rows, NeuronSelector, Oracle, SparseFfn, SparseStats};
use spike_flash::layout::Layout;
use spike_flash::model::bind::Source;

use crate::calibrate::Thresholds;
use crate::metrics::{Confusion, Quality};
use crate::select::Audited;
use crate::trace::ModelIdentity;
use crate::{Error, Result};

/// What picks a flash run's neurons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every neuron.
    All,
    /// A trained predictor (a file of `spike train-predictor`).
    Predictor(PathBuf),
    /// The truly active neurons at the per-layer thresholds of this file (from `spike calibrate`).
    Oracle(PathBuf),
}

/// The identity of `layout`'s source model, as traces, thresholds and predictors record it.
fn identity(layout: &Layout) -> ModelIdentity {
    let m = layout.manifest();
    ModelIdentity::with_sha(m.source.sha256.clone(), &m.model)
}

/// The predictor at `path`, checked against `layout`'s model: a selector and its DRAM bytes.
pub fn layout_predictor(layout: &Layout, path: &Path) -> Result<(Box<dyn NeuronSelector + Send>, u64)> {
    let p = crate::file::read(path)?;
    p.check_model(path, &identity(layout))?;
    let bytes = p.dram_bytes() as u64;
    Ok((Box::new(p), bytes))
}

/// An oracle over `layout`'s source model (memory-mapped, outside any DRAM budget) with the per-layer
/// thresholds at `path`, checked against the layout's model.
pub fn layout_oracle(layout: &Layout, path: &Path) -> Result<Box<dyn NeuronSelector + Send>> {
    let t = Thresholds::load(path)?;
    t.check_model(path, &identity(layout))?;
    let src = PathBuf::from(&layout.manifest().source.path);
    let source = Source::open(&src).map_err(|e| Error::Mismatch {
        path: src.clone(),
        what: format!("the oracle needs the layout's source model: {e}"),
    })?;
    let dense = Model::from_source(&source)?;
    layout.check_model(dense.config(), None)?;
    let rows = all_rows(&dense)?;
    Ok(Box::new(Oracle::new(&dense, rows, t.thresholds)?))
}

/// The selector of `selection` for `layout` and its DRAM bytes (the oracle's are outside the budget: 0);
/// `None` for every neuron.
pub fn for_layout(layout: &Layout, selection: &Selection) -> Result<Option<(Box<dyn NeuronSelector + Send>, u64)>> {
    Ok(match selection {
        Selection::All => None,
        Selection::Predictor(p) => Some(layout_predictor(layout, p)?),
        Selection::Oracle(t) => Some((layout_oracle(layout, t)?, 0)),
    })
}

/// The sparse FFN over a trained predictor's choices for a model held in memory, audited against an oracle
/// at the predictor's activation thresholds when asked.
pub struct PredictedFfn {
    path: PathBuf,
    pub ffn: SparseFfn<Box<dyn NeuronSelector>>,
    audit: Option<Arc<Mutex<Vec<Confusion>>>>,
    dram_bytes: usize,
    ranks: Vec<usize>,
}

/// What a predicted run reports.
#[derive(Debug, serde::Serialize)]
pub struct PredictedReport {
    pub path: String,
    pub ranks: Vec<usize>,
    pub dram_bytes: usize,
    pub stats: SparseStats,
    pub realised_active_fraction: f64,
    /// Means over layers, against the oracle at the predictor's activation thresholds (when audited).
    pub audit: Option<Quality>,
}

impl PredictedFfn {
    /// The predictor at `path` over `model` (loaded from `model_path`, which identifies it), audited when
    /// `audit` (a dense FFN per token more).
    pub fn new(path: &Path, model: &Model, model_path: &Path, audit: bool) -> Result<PredictedFfn> {
        let cfg = model.config();
        let pred = crate::file::read(path)?;
        let identity = ModelIdentity::of(model_path, cfg)?;
        pred.check_model(path, &identity)?;
        let dram_bytes = pred.dram_bytes();
        let ranks = pred.layers().iter().map(|l| l.weights.rank()).collect();
        let rows = all_rows(model)?;
        let (selector, counts): (Box<dyn NeuronSelector>, _) = if audit {
            let thresholds = pred.layers().iter().map(|l| l.act_threshold).collect();
            let oracle = Oracle::new(model, rows.clone(), thresholds)?;
            let audited = Audited::new(pred, oracle, cfg.n_layers, cfg.d_ffn);
            let counts = audited.counts();
            (Box::new(audited), Some(counts))
        } else {
            (Box::new(pred), None)
        };
        Ok(PredictedFfn {
            path: path.to_path_buf(),
            ffn: SparseFfn::with_rows(rows, selector),
            audit: counts,
            dram_bytes,
            ranks,
        })
    }

    /// What the run computed, and how well the predictor did against the oracle (when audited).
    pub fn report(self) -> PredictedReport {
        let st = self.ffn.stats;
        let audit = self.audit.map(|c| Quality::of(&c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
        PredictedReport {
            path: self.path.display().to_string(),
            ranks: self.ranks,
            dram_bytes: self.dram_bytes,
            stats: st,
            realised_active_fraction: st.active as f64 / st.total.max(1) as f64,
            audit,
        }
    }
}
