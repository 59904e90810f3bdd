//! The classifier test of the CaloChallenge (SPEC §5): a DNN separates generated (label 0) from
//! reference (label 1) showers; the best-test-accuracy model is calibrated by isotonic regression
//! on the test split and scored on the validation split (AUC, JSD).

use crate::evaluate::{EvalConfig, Scan};
use crate::progress::bar;
use crate::stats::{accuracy, bce, calibration_curve, jsd_from_bce, roc_auc, Isotonic};
use caloforge_core::{apply_threshold, CoreError, Features, Geometry, ShowerFile};
use caloforge_nn::classifier::{train_classifier, Samples};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

/// Classifier input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassifierMode {
    /// [log10 E_inc, E_i / E_inc] on thresholded voxels.
    Low,
    /// [log10 E_inc, E_i / (E_layer + 1e-16), log10(E_l + 1e-8)].
    LowNormed,
    /// The high-level feature vector.
    High,
    /// Point-cloud observables ([`crate::points`]).
    Points,
}

impl ClassifierMode {
    /// Name used in file names (`cls-low`, …).
    pub fn name(self) -> &'static str {
        match self {
            ClassifierMode::Low => "cls-low",
            ClassifierMode::LowNormed => "cls-low-normed",
            ClassifierMode::High => "cls-high",
            ClassifierMode::Points => "cls-points",
        }
    }
}

/// One training's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierRun {
    /// Seed of this run.
    pub seed: u64,
    /// Calibrated validation AUC.
    pub auc: f64,
    /// Calibrated validation JSD.
    pub jsd: f64,
    /// Calibrated validation accuracy.
    pub accuracy: f64,
    /// Uncalibrated validation AUC.
    pub auc_uncalibrated: f64,
    /// Epoch kept.
    pub best_epoch: usize,
    /// Test accuracy of that epoch.
    pub best_test_accuracy: f64,
    /// Calibration curve after calibration: (fraction of positives, mean prediction).
    pub calibration: (Vec<f64>, Vec<f64>),
}

/// Result of the classifier test over all repeats.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierResult {
    /// Mode.
    pub mode: ClassifierMode,
    /// Input dimension.
    pub input_dim: usize,
    /// Sizes of (train, test, validation) per class.
    pub split_per_class: (usize, usize, usize),
    /// Mean AUC.
    pub auc_mean: f64,
    /// Standard deviation of the AUC over repeats (0 for one run).
    pub auc_std: f64,
    /// Mean JSD.
    pub jsd_mean: f64,
    /// Standard deviation of the JSD.
    pub jsd_std: f64,
    /// Every run.
    pub runs: Vec<ClassifierRun>,
}

fn build_inputs(
    mode: ClassifierMode,
    cfg: &EvalConfig,
    g: &Geometry,
    file: &ShowerFile,
    scan: &Scan,
) -> Result<Samples, CoreError> {
    let n = file.len();
    let v = g.n_voxels();
    let layer_col: Vec<usize> =
        g.relevant_layers
            .iter()
            .enumerate()
            .fold(vec![0; g.layers.len()], |mut acc, (c, &l)| {
                acc[l] = c;
                acc
            });
    let dim = match mode {
        ClassifierMode::Low => v + 1,
        ClassifierMode::LowNormed => v + 1 + g.relevant_layers.len(),
        ClassifierMode::High | ClassifierMode::Points => Features::high_level_dim(g),
    };
    let mut x: Vec<f32> = Vec::with_capacity(n * dim);
    if mode == ClassifierMode::High {
        let mut row = Vec::with_capacity(dim);
        for (i, &e) in scan.energies.iter().enumerate() {
            row.clear();
            scan.features.high_level_vector(i, e, &mut row);
            x.extend(row.iter().map(|&a| a as f32));
        }
    } else {
        let rows = file.rows_per_window(cfg.window_bytes / rayon::current_num_threads().max(1));
        let parts = file.map_windows(rows, |start, mut data| {
            let raw = if mode == ClassifierMode::LowNormed {
                Some(data.clone())
            } else {
                None
            };
            apply_threshold(&mut data, cfg.dataset.min_energy());
            let mut x: Vec<f32> = Vec::with_capacity(data.len() / v * dim);
            for (k, row) in data.chunks(v).enumerate() {
                let i = start + k;
                let e = scan.energies[i];
                x.push(e.log10() as f32);
                match &raw {
                    None => x.extend(row.iter().map(|&a| (a / e) as f32)),
                    Some(raw) => {
                        let raw_row = &raw[k * v..(k + 1) * v];
                        for (j, &a) in raw_row.iter().enumerate() {
                            let el = scan.features.e_layer[layer_col[g.voxel_layer[j]]][i];
                            x.push((a / (el + 1e-16)) as f32);
                        }
                        x.extend(
                            scan.features
                                .e_layer
                                .iter()
                                .map(|c| (c[i] + 1e-8).log10() as f32),
                        );
                    }
                }
            }
            Ok(x)
        })?;
        for p in parts {
            x.extend(p);
        }
    }
    Ok(Samples {
        x,
        y: Vec::new(),
        dim,
    })
}

/// Per-class split sizes: the official absolute numbers when the file is large enough,
/// otherwise 60 / 20 / 20 %.
pub fn split_sizes(n: usize, official: (usize, usize)) -> (usize, usize, usize) {
    let (tr, te) = official;
    if n > tr + te {
        (tr, te, n - tr - te)
    } else {
        let tr = (n as f64 * 0.6) as usize;
        let te = (n as f64 * 0.2) as usize;
        (tr, te, n - tr - te)
    }
}

fn take(src: &Samples, idx: &[usize], label: f32, dst: &mut Samples) {
    for &i in idx {
        dst.x
            .extend_from_slice(&src.x[i * src.dim..(i + 1) * src.dim]);
        dst.y.push(label);
    }
}

/// Runs the classifier test `cfg.cls_repeats` times.
pub fn run_classifier_test(
    mode: ClassifierMode,
    cfg: &EvalConfig,
    g: &Geometry,
    gen_file: &ShowerFile,
    ref_file: &ShowerFile,
    gscan: &Scan,
    rscan: &Scan,
) -> Result<ClassifierResult, CoreError> {
    let gen = build_inputs(mode, cfg, g, gen_file, gscan)?;
    let reference = build_inputs(mode, cfg, g, ref_file, rscan)?;
    classify(
        mode,
        &cfg.classifier,
        cfg.cls_repeats,
        cfg.progress,
        cfg.dataset.classifier_split(),
        &gen,
        &reference,
    )
}

/// The classifier test on prepared inputs (`x` of every shower, `y` unused): generated vs
/// reference, trained `repeats` times; `official` are the (train, test) sizes per class used
/// when there are enough showers.
pub fn classify(
    mode: ClassifierMode,
    classifier: &caloforge_nn::classifier::ClassifierConfig,
    repeats: usize,
    progress: bool,
    official: (usize, usize),
    gen: &Samples,
    reference: &Samples,
) -> Result<ClassifierResult, CoreError> {
    let dim = gen.dim;
    let (n_gen, n_ref) = (gen.x.len() / dim.max(1), reference.x.len() / dim.max(1));
    let n = n_gen.min(n_ref);
    if n_gen != n_ref {
        eprintln!(
            "warning: {n_gen} generated vs {n_ref} reference showers; the classifier uses the first {n} after shuffling each"
        );
    }
    let sizes = split_sizes(n, official);
    if sizes.0 == 0 || sizes.1 == 0 || sizes.2 == 0 {
        return Err(CoreError::Invalid(format!(
            "{} needs at least 5 showers per file, got {n}",
            mode.name()
        )));
    }
    let mut runs = Vec::new();
    for rep in 0..repeats.max(1) {
        let seed = classifier.seed.wrapping_add(rep as u64);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut split = |count: usize| {
            let mut idx: Vec<usize> = (0..count).collect();
            idx.shuffle(&mut rng);
            idx.truncate(n);
            idx
        };
        let gi = split(n_gen);
        let ri = split(n_ref);
        let mut parts = [
            Samples {
                dim,
                ..Default::default()
            },
            Samples {
                dim,
                ..Default::default()
            },
            Samples {
                dim,
                ..Default::default()
            },
        ];
        let bounds = [0, sizes.0, sizes.0 + sizes.1, n];
        for (p, part) in parts.iter_mut().enumerate() {
            take(gen, &gi[bounds[p]..bounds[p + 1]], 0.0, part);
            take(reference, &ri[bounds[p]..bounds[p + 1]], 1.0, part);
        }
        let [train, test, val] = parts;
        let mut ccfg = classifier.clone();
        ccfg.seed = seed;
        let n_batches = train.len().div_ceil(ccfg.batch_size.max(1));
        let pb = bar(
            progress,
            (ccfg.epochs * n_batches) as u64,
            &format!("{} run {}/{}", mode.name(), rep + 1, repeats.max(1)),
        );
        let clf = train_classifier(
            &ccfg,
            &train,
            &test,
            |_, _| pb.inc(1),
            |r| {
                pb.set_position((r.epoch * n_batches) as u64);
                pb.set_message(format!(
                    "{} ep {} acc {:.3}",
                    mode.name(),
                    r.epoch,
                    r.test_accuracy
                ));
            },
        );
        pb.finish_and_clear();
        let y_test: Vec<f64> = test.y.iter().map(|&v| v as f64).collect();
        let y_val: Vec<f64> = val.y.iter().map(|&v| v as f64).collect();
        let p_test = clf.predict_proba(&test);
        let p_val = clf.predict_proba(&val);
        let iso = Isotonic::fit(&p_test, &y_test, 1e-6, 1.0 - 1e-6);
        let p_cal: Vec<f64> = p_val.iter().map(|&p| iso.predict(p)).collect();
        let b = bce(&p_cal, &y_val);
        runs.push(ClassifierRun {
            seed,
            auc: roc_auc(&p_cal, &y_val),
            jsd: jsd_from_bce(b),
            accuracy: accuracy(&p_cal, &y_val),
            auc_uncalibrated: roc_auc(&p_val, &y_val),
            best_epoch: clf.best_epoch,
            best_test_accuracy: clf.best_test_accuracy,
            calibration: calibration_curve(&p_cal, &y_val, 10),
        });
    }
    let stat = |f: fn(&ClassifierRun) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        (m, sd)
    };
    let (auc_mean, auc_std) = stat(|r| r.auc);
    let (jsd_mean, jsd_std) = stat(|r| r.jsd);
    Ok(ClassifierResult {
        mode,
        input_dim: dim,
        split_per_class: sizes,
        auc_mean,
        auc_std,
        jsd_mean,
        jsd_std,
        runs,
    })
}
