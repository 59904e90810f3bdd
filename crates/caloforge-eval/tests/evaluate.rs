//! End-to-end evaluation on tiny files.

use caloforge_core::io::write_showers;
use caloforge_core::DatasetKind;
use caloforge_eval::evaluate::{chi2_text, einc_warning, HistResult};
use caloforge_eval::{evaluate, EvalConfig, Mode};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// Writes `n` random photon showers (dataset 1) with response `scale`.
fn photons(dir: &Path, name: &str, n: usize, scale: f64, seed: u64) -> PathBuf {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v = 368;
    let mut e = Vec::new();
    let mut s = Vec::new();
    for _ in 0..n {
        let einc = 2f64.powi(rng.random_range(8..23));
        e.push(einc);
        let mut row = vec![0.0f32; v];
        for _ in 0..40 {
            let j = rng.random_range(0..v);
            row[j] += (einc * scale / 40.0 * rng.random_range(0.5..1.5)) as f32;
        }
        s.extend(row);
    }
    let p = dir.join(name);
    write_showers(&p, &e, &s, v).unwrap();
    p
}

fn cfg(gen: PathBuf, reference: PathBuf, mode: Mode, out: PathBuf) -> EvalConfig {
    let mut c = EvalConfig::new(DatasetKind::Photons1, gen, reference, mode, out);
    c.progress = false;
    c.classifier.hidden = 32;
    c.classifier.epochs = 3;
    c.classifier.batch_size = 50;
    c.fpd.min_samples = 100;
    c.fpd.max_samples = 300;
    c.fpd.num_batches = 3;
    c.kpd.batch_size = 100;
    c.kpd.num_batches = 3;
    c
}

#[test]
fn identical_samples_have_zero_separation_and_all_outputs_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let r = photons(dir.path(), "r.h5", 300, 1.0, 1);
    let out = dir.path().join("ev");
    let s = evaluate(&cfg(r.clone(), r, Mode::All, out.clone())).unwrap();
    for h in &s.histograms {
        assert!(
            h.separation_power == 0.0 || h.separation_power.is_nan(),
            "{}: {}",
            h.name,
            h.separation_power
        );
    }
    // 30 official histograms + 15 extras for 1-photons.
    assert_eq!(s.histograms.iter().filter(|h| !h.extra).count(), 30);
    assert_eq!(s.histograms.len(), 45);
    for f in [
        "histogram_chi2_1-photons.txt",
        "classifier_cls-low_1-photons.txt",
        "fpd_kpd_1-photons.txt",
        "metrics.json",
        "report.html",
        "Etot_Einc_dataset_1-photons.png",
        "Average_Layer_1_dataset_1-photons.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let cls = std::fs::read_to_string(out.join("classifier_cls-low_1-photons.txt")).unwrap();
    assert!(
        cls.starts_with("Final result of classifier test (AUC / JSD):\n"),
        "{cls}"
    );
    let fpd = s.fpd_x1e3.unwrap();
    assert!(fpd.value.abs() < 50.0, "{fpd:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["dataset"], "1-photons");
    assert!(std::fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("data:image/png;base64,"));
}

#[test]
fn a_miscalibrated_sample_is_separated() {
    let dir = tempfile::tempdir().unwrap();
    let r = photons(dir.path(), "r.h5", 400, 1.0, 1);
    let g = photons(dir.path(), "g.h5", 400, 0.8, 2);
    let mut c = cfg(g, r, Mode::HistChi, dir.path().join("ev"));
    c.mode = Mode::HistChi;
    let s = evaluate(&c).unwrap();
    let etot = s
        .histograms
        .iter()
        .find(|h| h.name == "Etot / Einc")
        .unwrap();
    assert!(etot.separation_power > 0.5, "{}", etot.separation_power);
    // hist-chi writes no PNG.
    assert!(s.histograms.iter().all(|h| h.png.is_none()));
    // The classifier on voxels / E_inc sees the 20 % scale difference (a linear function).
    let mut c2 = cfg(
        photons(dir.path(), "g2.h5", 400, 0.8, 2),
        photons(dir.path(), "r2.h5", 400, 1.0, 1),
        Mode::ClsLow,
        dir.path().join("ev2"),
    );
    c2.classifier.epochs = 30;
    c2.classifier.hidden = 64;
    c2.classifier.batch_size = 40;
    c2.classifier.lr = 2e-3;
    let s = evaluate(&c2).unwrap();
    assert!(s.classifiers[0].auc_mean > 0.7, "{:?}", s.classifiers[0]);
}

#[test]
fn chi2_text_matches_evaluate_py_format() {
    let h = |name: &str, v: f64| HistResult {
        name: name.into(),
        separation_power: v,
        extra: false,
        png: None,
        edges: vec![],
        reference_counts: vec![],
        generated_counts: vec![],
    };
    let t = chi2_text(&[
        h("Etot / Einc", 0.012),
        h("E layer 0", 1.5e-5),
        h("Voxel distribution", f64::NAN),
    ]);
    assert_eq!(
        t,
        "List of chi2 of the plotted histograms, see eq. 15 of 2009.03796 for its definition.\n\
         Etot / Einc: \n0.012\n\nE layer 0: \n1.5e-05\n\nVoxel distribution: \nnan\n\n"
    );
}

#[test]
fn einc_mismatch_warns() {
    let a: Vec<f64> = (0..500).map(|i| 1000.0 + i as f64).collect();
    let b: Vec<f64> = (0..500).map(|i| 1200.0 + i as f64).collect();
    assert!(einc_warning(&a, &b).is_some());
    assert!(einc_warning(&a, &a).is_none());
}

#[test]
fn wrong_dataset_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = photons(dir.path(), "r.h5", 20, 1.0, 1);
    let mut c = cfg(r.clone(), r.clone(), Mode::Hist, dir.path().join("ev"));
    c.dataset = DatasetKind::Ds2;
    let e = evaluate(&c).unwrap_err().to_string();
    assert!(
        e.contains("r.h5") && e.contains("368 voxels per shower, the dataset needs 6480"),
        "{e}"
    );
    assert!(
        !dir.path().join("ev").exists(),
        "no output directory on bad input"
    );
}
