//! caloforge-eval: the CaloChallenge 2022 evaluation, numerically equal to the official
//! `evaluate.py` for features and separation powers.
//!
//! * [`hist`]: NumPy-semantics histograms and the separation power.
//! * [`observables`]: the histogrammed observables, names and bin edges.
//! * [`stats`]: isotonic calibration, ROC AUC, BCE/JSD.
//! * [`classifier_test`]: the DNN classifier test (cls-low, cls-low-normed, cls-high).
//! * [`fpd`]: FPD and KPD.
//! * [`plots`], [`report`]: PNGs and the one-file HTML report.
//! * [`evaluate`]: the `caloforge evaluate` pipeline (streaming, bounded memory).

pub mod classifier_test;
pub mod evaluate;
pub mod fpd;
pub mod hist;
pub mod observables;
pub mod plots;
pub mod points;
pub mod progress;
pub mod report;
pub mod stats;

pub use evaluate::{evaluate, EvalConfig, EvalSummary, Mode};

/// Classifier precision choice, re-exported for the CLI.
pub mod classifier_precision {
    pub use caloforge_nn::device::Precision;
}
