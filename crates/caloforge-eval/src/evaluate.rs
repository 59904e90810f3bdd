//! `caloforge evaluate`: the CaloChallenge 2022 evaluation of generated vs reference showers.

use crate::classifier_test::{run_classifier_test, ClassifierMode, ClassifierResult};
use crate::fpd::{fpd, kpd, FpdConfig, KpdConfig, ValueError};
use crate::hist::{separation_power, Hist};
use crate::observables::{observables, Observable, Quantity};
use crate::plots;
use crate::progress::bar;
use crate::report;
use caloforge_core::numeric::py_float_repr;
use caloforge_core::{apply_threshold, CoreError, DatasetKind, Features, Geometry, ShowerFile};
use caloforge_nn::classifier::ClassifierConfig;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Evaluation modes (evaluate.py's, plus `fpd-kpd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// avg, hist, cls-low, fpd-kpd.
    All,
    /// Average shower images per layer.
    Avg,
    /// Histogram plots and separation powers.
    Hist,
    /// Separation powers only.
    HistChi,
    /// Histogram plots only.
    HistP,
    /// Classifier on voxels / E_inc.
    ClsLow,
    /// Classifier on layer-normalised voxels.
    ClsLowNormed,
    /// Classifier on high-level features.
    ClsHigh,
    /// Fréchet and kernel physics distances.
    FpdKpd,
}

impl std::str::FromStr for Mode {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        Ok(match s {
            "all" => Mode::All,
            "avg" => Mode::Avg,
            "hist" => Mode::Hist,
            "hist-chi" => Mode::HistChi,
            "hist-p" => Mode::HistP,
            "cls-low" => Mode::ClsLow,
            "cls-low-normed" => Mode::ClsLowNormed,
            "cls-high" => Mode::ClsHigh,
            "fpd-kpd" | "fpd" | "kpd" => Mode::FpdKpd,
            _ => {
                return Err(CoreError::Invalid(format!(
                    "unknown mode {s:?}: expected all, avg, hist, hist-chi, hist-p, cls-low, cls-low-normed, cls-high, fpd-kpd"
                )))
            }
        })
    }
}

impl Mode {
    fn hist_chi(self) -> bool {
        matches!(self, Mode::All | Mode::Hist | Mode::HistChi)
    }
    fn hist_p(self) -> bool {
        matches!(self, Mode::All | Mode::Hist | Mode::HistP)
    }
    fn avg(self) -> bool {
        matches!(self, Mode::All | Mode::Avg)
    }
    fn fpd(self) -> bool {
        matches!(self, Mode::All | Mode::FpdKpd)
    }
    fn classifiers(self) -> Vec<ClassifierMode> {
        match self {
            Mode::All | Mode::ClsLow => vec![ClassifierMode::Low],
            Mode::ClsLowNormed => vec![ClassifierMode::LowNormed],
            Mode::ClsHigh => vec![ClassifierMode::High],
            _ => vec![],
        }
    }
}

/// Everything `evaluate` needs.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Dataset.
    pub dataset: DatasetKind,
    /// Generated showers.
    pub generated: PathBuf,
    /// Reference (Geant4) showers.
    pub reference: PathBuf,
    /// Mode.
    pub mode: Mode,
    /// Output directory (created if missing).
    pub out_dir: PathBuf,
    /// Binning file overriding the embedded one.
    pub binning: Option<PathBuf>,
    /// Classifier settings (seed included).
    pub classifier: ClassifierConfig,
    /// Independent classifier trainings (mean ± std reported).
    pub cls_repeats: usize,
    /// Seed for every random draw of the evaluation.
    pub seed: u64,
    /// FPD settings.
    pub fpd: FpdConfig,
    /// KPD settings.
    pub kpd: KpdConfig,
    /// Show progress bars.
    pub progress: bool,
    /// Bytes of showers read per window (bounds memory).
    pub window_bytes: usize,
}

impl EvalConfig {
    /// Defaults of the official evaluation for `dataset`.
    pub fn new(
        dataset: DatasetKind,
        generated: PathBuf,
        reference: PathBuf,
        mode: Mode,
        out_dir: PathBuf,
    ) -> Self {
        EvalConfig {
            dataset,
            generated,
            reference,
            mode,
            out_dir,
            binning: None,
            classifier: ClassifierConfig::default(),
            cls_repeats: 1,
            seed: 42,
            fpd: FpdConfig::default(),
            kpd: KpdConfig::default(),
            progress: true,
            window_bytes: 256 << 20,
        }
    }
}

/// One histogram's result.
#[derive(Debug, Clone, Serialize)]
pub struct HistResult {
    /// Name as in the text file.
    pub name: String,
    /// Separation power.
    pub separation_power: f64,
    /// Whether the histogram is one of the three extras beyond evaluate.py's default set.
    pub extra: bool,
    /// PNG file (when plotted).
    pub png: Option<String>,
    /// Bin edges.
    pub edges: Vec<f64>,
    /// Reference counts.
    pub reference_counts: Vec<u64>,
    /// Generated counts.
    pub generated_counts: Vec<u64>,
}

/// Summary of one input file.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    /// Path.
    pub path: String,
    /// Number of showers.
    pub showers: usize,
    /// Mean E_tot / E_inc after the threshold.
    pub mean_etot_einc: f64,
    /// Standard deviation of E_tot / E_inc.
    pub std_etot_einc: f64,
    /// Smallest and largest E_inc (MeV).
    pub einc_range: (f64, f64),
    /// Mean longitudinal centre of gravity, in layer ids (Σ l E_l / Σ E_l).
    pub mean_cog_layer: f64,
    /// Shower-to-shower standard deviation of the centre of gravity (layers).
    pub std_cog_layer: f64,
    /// Fraction of the total energy in each radial bin, summed over layers and angles (only
    /// when every relevant layer has the same radial binning, i.e. datasets 2 and 3).
    pub ring_fractions: Vec<f64>,
    /// Mean number of voxels above threshold per shower.
    pub mean_nonzero_voxels: f64,
}

/// All numbers of one evaluation (written to `metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    /// caloforge version.
    pub caloforge_version: String,
    /// Dataset name.
    pub dataset: String,
    /// Mode.
    pub mode: Mode,
    /// Seed.
    pub seed: u64,
    /// Generated file summary.
    pub generated: FileSummary,
    /// Reference file summary.
    pub reference: FileSummary,
    /// Warnings raised (E_inc mismatch and the like).
    pub warnings: Vec<String>,
    /// Histograms and separation powers, in text-file order.
    pub histograms: Vec<HistResult>,
    /// Mean separation power per observable group (E layer, EC Eta, …).
    pub separation_means: Vec<(String, f64)>,
    /// Classifier results.
    pub classifiers: Vec<ClassifierResult>,
    /// FPD ×10³.
    pub fpd_x1e3: Option<ValueError>,
    /// KPD ×10³.
    pub kpd_x1e3: Option<ValueError>,
    /// Average-shower PNGs.
    pub average_pngs: Vec<String>,
    /// Wall time (s).
    pub wall_seconds: f64,
}

/// A file's features and aggregates after one streaming pass.
pub struct Scan {
    /// High-level features of every shower.
    pub features: Features,
    /// Incident energies.
    pub energies: Vec<f64>,
    /// Mean thresholded shower.
    pub mean_shower: Vec<f64>,
    /// Largest thresholded voxel energy.
    pub max_voxel: f64,
    /// Every voxel energy above threshold, when asked for, the file stores float32 and they fit
    /// in [`KEEP_VOXELS_MAX`] values (saves a second pass for the voxel histogram).
    pub kept_voxels: Option<Vec<f32>>,
}

/// Most voxel values [`scan`] keeps in memory (1.5 GiB of float32).
pub const KEEP_VOXELS_MAX: usize = 400 << 20;

/// Streams `file` once: thresholds each window, computes features, the mean shower and the
/// maximum voxel, and fills `voxel_hist` with every voxel energy when given.
pub fn scan(
    file: &ShowerFile,
    g: &Geometry,
    ds: DatasetKind,
    window_bytes: usize,
    label: &str,
    progress: bool,
    mut voxel_hist: Option<&mut Hist>,
) -> Result<Scan, CoreError> {
    scan_keep(
        file,
        g,
        ds,
        window_bytes,
        label,
        progress,
        voxel_hist.as_deref_mut(),
        false,
    )
}

/// [`scan`], optionally keeping the voxel values above threshold (see [`Scan::kept_voxels`]).
#[allow(clippy::too_many_arguments)]
pub fn scan_keep(
    file: &ShowerFile,
    g: &Geometry,
    ds: DatasetKind,
    window_bytes: usize,
    label: &str,
    progress: bool,
    mut voxel_hist: Option<&mut Hist>,
    keep_voxels: bool,
) -> Result<Scan, CoreError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let keep = keep_voxels && file.precision == caloforge_core::io::Precision::F32;
    let kept_count = AtomicUsize::new(0);
    let overflow = AtomicBool::new(false);
    let min_e = ds.min_energy();
    let n = file.len();
    let v = file.n_voxels;
    let threads = rayon::current_num_threads().max(1);
    let rows = file.rows_per_window(window_bytes / threads);
    let pb = bar(progress, n as u64, label);
    let edges = voxel_hist.as_ref().map(|h| h.edges.clone());
    let parts = file.map_windows(rows, |_, mut data| {
        apply_threshold(&mut data, ds.min_energy());
        let features = Features::compute(g, &data);
        let mut sum = vec![0.0f64; v];
        for row in data.chunks(v) {
            for (s, x) in sum.iter_mut().zip(row) {
                *s += x;
            }
        }
        let max = data.iter().copied().fold(0.0f64, f64::max);
        let hist = edges.as_ref().map(|e| {
            let mut h = Hist::new(e.clone());
            h.fill_all(data.iter().copied());
            h
        });
        let kept: Vec<f32> = if keep && !overflow.load(Ordering::Relaxed) {
            let k: Vec<f32> = data
                .iter()
                .filter(|&&x| x >= min_e)
                .map(|&x| x as f32)
                .collect();
            if kept_count.fetch_add(k.len(), Ordering::Relaxed) + k.len() > KEEP_VOXELS_MAX {
                overflow.store(true, Ordering::Relaxed);
                Vec::new()
            } else {
                k
            }
        } else {
            Vec::new()
        };
        pb.inc((data.len() / v) as u64);
        Ok((features, sum, max, hist, kept))
    })?;
    pb.finish_and_clear();
    let mut features = Features::empty(g);
    let mut sum = vec![0.0f64; v];
    let mut max_voxel = 0.0f64;
    let keep_ok = keep && !overflow.load(std::sync::atomic::Ordering::Relaxed);
    let mut kept_voxels =
        keep_ok.then(|| Vec::with_capacity(kept_count.load(std::sync::atomic::Ordering::Relaxed)));
    for (f, s, m, h, k) in parts {
        if let Some(kv) = kept_voxels.as_mut() {
            kv.extend(k);
        }
        features.append(f);
        for (a, b) in sum.iter_mut().zip(&s) {
            *a += b;
        }
        max_voxel = max_voxel.max(m);
        if let (Some(total), Some(h)) = (voxel_hist.as_deref_mut(), h) {
            total.merge(&h);
        }
    }
    let mean_shower = sum.iter().map(|s| s / n as f64).collect();
    Ok(Scan {
        features,
        energies: file.energies.clone(),
        mean_shower,
        max_voxel,
        kept_voxels,
    })
}

/// Streams `file` a second time to histogram voxel energies only.
fn voxel_pass(
    file: &ShowerFile,
    ds: DatasetKind,
    window_bytes: usize,
    label: &str,
    progress: bool,
    h: &mut Hist,
) -> Result<(), CoreError> {
    let threads = rayon::current_num_threads().max(1);
    let rows = file.rows_per_window(window_bytes / threads);
    let pb = bar(progress, file.len() as u64, label);
    let min_e = ds.min_energy();
    let parts = file.map_windows(rows, |_, data| {
        let mut hh = Hist::new(h.edges.clone());
        hh.fill_all(data.iter().map(|&x| if x < min_e { 0.0 } else { x }));
        pb.inc((data.len() / file.n_voxels) as u64);
        Ok(hh)
    })?;
    pb.finish_and_clear();
    for p in parts {
        h.merge(&p);
    }
    Ok(())
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

/// Summary statistics of one sample: response, longitudinal centre of gravity, ring fractions
/// and occupancy.
pub fn file_summary(path: &Path, s: &Scan, g: &Geometry) -> FileSummary {
    let r: Vec<f64> = s
        .features
        .e_tot
        .iter()
        .zip(&s.energies)
        .map(|(a, b)| a / b)
        .collect();
    let (m, sd) = mean_std(&r);
    let lo = s.energies.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = s.energies.iter().copied().fold(0.0, f64::max);
    let cog: Vec<f64> = (0..s.energies.len())
        .filter_map(|i| {
            let (mut num, mut den) = (0.0, 0.0);
            for (c, &l) in g.relevant_layers.iter().enumerate() {
                num += l as f64 * s.features.e_layer[c][i];
                den += s.features.e_layer[c][i];
            }
            (den > 0.0).then(|| num / den)
        })
        .collect();
    let (cm, cs) = mean_std(&cog);
    let n_r: Vec<usize> = g
        .relevant_layers
        .iter()
        .map(|&l| g.layers[l].n_r())
        .collect();
    let mut ring_fractions = Vec::new();
    if n_r.windows(2).all(|w| w[0] == w[1]) && !n_r.is_empty() {
        ring_fractions = vec![0.0; n_r[0]];
        for &l in &g.relevant_layers {
            for (k, j) in g.layer_range(l).enumerate() {
                ring_fractions[k % n_r[0]] += s.mean_shower[j];
            }
        }
        let tot: f64 = ring_fractions.iter().sum();
        ring_fractions.iter_mut().for_each(|v| *v /= tot);
    }
    let nonzero: Vec<f64> = (0..s.energies.len())
        .map(|i| {
            g.relevant_layers
                .iter()
                .enumerate()
                .map(|(c, &l)| (1.0 - s.features.sparsity[c][i]) * g.layers[l].n_voxels() as f64)
                .sum()
        })
        .collect();
    FileSummary {
        path: path.display().to_string(),
        showers: s.energies.len(),
        mean_etot_einc: m,
        std_etot_einc: sd,
        einc_range: (lo, hi),
        mean_cog_layer: cm,
        std_cog_layer: cs,
        ring_fractions,
        mean_nonzero_voxels: mean_std(&nonzero).0,
    }
}

/// Two-sample Kolmogorov–Smirnov statistic.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let mut x = a.to_vec();
    let mut y = b.to_vec();
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < x.len() && j < y.len() {
        let v = x[i].min(y[j]);
        while i < x.len() && x[i] <= v {
            i += 1;
        }
        while j < y.len() && y[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / x.len() as f64 - j as f64 / y.len() as f64).abs());
    }
    d
}

/// Warning text when the incident-energy distributions differ (KS test at the 0.1 % level).
pub fn einc_warning(gen: &[f64], reference: &[f64]) -> Option<String> {
    let d = ks_statistic(gen, reference);
    let (n, m) = (gen.len() as f64, reference.len() as f64);
    let crit = (-(0.001f64 / 2.0).ln() / 2.0).sqrt() * ((n + m) / (n * m)).sqrt();
    (d > crit).then(|| {
        format!(
            "the generated incident-energy distribution differs from the reference's (KS D = {d:.4} > {crit:.4} at 0.1 %); \
             histograms may be distorted: generate with the reference energies (--energies-from)"
        )
    })
}

fn write_atomic_text(path: &Path, text: &str) -> Result<(), CoreError> {
    caloforge_core::io::write_bytes_atomic(path, text.as_bytes())
}

/// The separation-power text file in evaluate.py's format.
pub fn chi2_text(hists: &[HistResult]) -> String {
    let mut s = String::from(
        "List of chi2 of the plotted histograms, see eq. 15 of 2009.03796 for its definition.\n",
    );
    for h in hists {
        s.push_str(&format!(
            "{}: \n{}\n\n",
            h.name,
            py_float_repr(h.separation_power)
        ));
    }
    s
}

fn group_of(name: &str) -> String {
    for p in [
        "E layer",
        "EC Eta layer",
        "EC Phi layer",
        "Width Eta layer",
        "Width Phi layer",
        "Sparsity layer",
        "EC r layer",
        "Width r layer",
    ] {
        if name.starts_with(p) {
            return p.to_string();
        }
    }
    if name.starts_with("Etot / Einc at") {
        return "Etot / Einc at E".into();
    }
    name.to_string()
}

/// Mean separation power per observable group, NaN values skipped.
pub fn separation_means(hists: &[HistResult]) -> Vec<(String, f64)> {
    let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
    for h in hists {
        let g = group_of(&h.name);
        match groups.iter_mut().find(|(n, _)| *n == g) {
            Some((_, v)) => v.push(h.separation_power),
            None => groups.push((g, vec![h.separation_power])),
        }
    }
    groups
        .into_iter()
        .map(|(n, v)| {
            let f: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
            (
                n,
                if f.is_empty() {
                    f64::NAN
                } else {
                    f.iter().sum::<f64>() / f.len() as f64
                },
            )
        })
        .collect()
}

fn hist_of(o: &Observable, s: &Scan) -> Hist {
    let mut h = Hist::new(o.edges.clone());
    if h.valid() {
        h.fill_all(o.values(&s.features, &s.energies));
    }
    h
}

/// Runs the evaluation and writes every output file to `cfg.out_dir`.
pub fn evaluate(cfg: &EvalConfig) -> Result<EvalSummary, CoreError> {
    let t0 = std::time::Instant::now();
    let ds = cfg.dataset;
    let g = ds.geometry(cfg.binning.as_deref())?;
    let gen_file = ShowerFile::open(&cfg.generated, Some(ds.n_voxels()))?;
    let ref_file = ShowerFile::open(&cfg.reference, Some(ds.n_voxels()))?;
    let mut warnings = Vec::new();
    if let Some(w) = einc_warning(&gen_file.energies, &ref_file.energies) {
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    let want_hist = cfg.mode.hist_chi() || cfg.mode.hist_p();
    let mut rscan = scan_keep(
        &ref_file,
        &g,
        ds,
        cfg.window_bytes,
        "reference features",
        cfg.progress,
        None,
        want_hist,
    )?;
    let obs = observables(ds, &g, &rscan.features, rscan.max_voxel);
    let voxel_obs = obs
        .iter()
        .find(|o| o.quantity == Quantity::Voxel)
        .expect("voxel observable");
    let mut gen_vox = Hist::new(voxel_obs.edges.clone());
    let do_vox = want_hist && gen_vox.valid();
    let gscan = scan(
        &gen_file,
        &g,
        ds,
        cfg.window_bytes,
        "generated features",
        cfg.progress,
        if do_vox { Some(&mut gen_vox) } else { None },
    )?;
    let mut ref_vox = Hist::new(voxel_obs.edges.clone());
    if do_vox {
        match rscan.kept_voxels.take() {
            // Values below the threshold were zeroed and fall below the first edge: only the
            // kept ones can be counted.
            Some(kept) => {
                let edges = ref_vox.edges.clone();
                let part = kept
                    .par_chunks(1 << 20)
                    .map(|c| {
                        let mut h = Hist::new(edges.clone());
                        h.fill_all(c.iter().map(|&x| x as f64));
                        h
                    })
                    .reduce(
                        || Hist::new(edges.clone()),
                        |mut a, b| {
                            a.merge(&b);
                            a
                        },
                    );
                ref_vox.merge(&part);
            }
            None => voxel_pass(
                &ref_file,
                ds,
                cfg.window_bytes,
                "reference voxels",
                cfg.progress,
                &mut ref_vox,
            )?,
        }
    }

    // Both files were read and validated completely: only now is anything written.
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| CoreError::Write {
        file: cfg.out_dir.display().to_string(),
        msg: e.to_string(),
    })?;
    let mut histograms = Vec::new();
    if want_hist {
        let pb = bar(cfg.progress, obs.len() as u64, "histograms");
        histograms = obs
            .par_iter()
            .map(|o| {
                let (rh, gh) = if o.quantity == Quantity::Voxel {
                    (ref_vox.clone(), gen_vox.clone())
                } else {
                    (hist_of(o, &rscan), hist_of(o, &gscan))
                };
                let sep = if rh.valid() {
                    separation_power(&gh, &rh)
                } else {
                    f64::NAN
                };
                let mut png = None;
                if cfg.mode.hist_p() && rh.valid() {
                    let path = cfg.out_dir.join(&o.file);
                    let plot = plots::HistPlot {
                        title: &o.title,
                        xlabel: &o.xlabel,
                        edges: &o.edges,
                        reference: &rh.density(),
                        generated: &gh.density(),
                        log_x: o.log_x,
                        log_y: o.log_y,
                        separation: sep,
                    };
                    match plots::hist_png(&path, &plot) {
                        Ok(()) => png = Some(o.file.clone()),
                        Err(e) => eprintln!("warning: {e}"),
                    }
                }
                pb.inc(1);
                HistResult {
                    name: o.name.clone(),
                    separation_power: sep,
                    extra: o.extra,
                    png,
                    edges: o.edges.clone(),
                    reference_counts: rh.counts,
                    generated_counts: gh.counts,
                }
            })
            .collect();
        pb.finish_and_clear();
        if cfg.mode.hist_chi() {
            write_atomic_text(
                &cfg.out_dir
                    .join(format!("histogram_chi2_{}.txt", ds.name())),
                &chi2_text(&histograms),
            )?;
        }
    }

    let mut average_pngs = Vec::new();
    if cfg.mode.avg() {
        let vmax = rscan
            .mean_shower
            .iter()
            .copied()
            .fold(0.0, f64::max)
            .max(1e-2 * 10.0);
        let vmin = 1e-2f64.min(vmax / 1e4);
        let files: Vec<Option<String>> = g
            .relevant_layers
            .par_iter()
            .map(|&l| {
                let name = format!("Average_Layer_{l}_dataset_{}.png", ds.name());
                let path = cfg.out_dir.join(&name);
                match plots::layer_avg_png(
                    &path,
                    &g,
                    l,
                    &rscan.mean_shower,
                    &gscan.mean_shower,
                    vmin,
                    vmax,
                    ds.is_ds1(),
                ) {
                    Ok(()) => Some(name),
                    Err(e) => {
                        eprintln!("warning: {e}");
                        None
                    }
                }
            })
            .collect();
        average_pngs = files.into_iter().flatten().collect();
    }

    let mut classifiers = Vec::new();
    for cm in cfg.mode.classifiers() {
        let r = run_classifier_test(cm, cfg, &g, &gen_file, &ref_file, &gscan, &rscan)?;
        let text = format!(
            "Final result of classifier test (AUC / JSD):\n{:.4} / {:.4}\n",
            r.auc_mean, r.jsd_mean
        );
        write_atomic_text(
            &cfg.out_dir
                .join(format!("classifier_{}_{}.txt", cm.name(), ds.name())),
            &text,
        )?;
        classifiers.push(r);
    }

    let (mut fpd_v, mut kpd_v) = (None, None);
    if cfg.mode.fpd() {
        let to_mat = |s: &Scan| {
            let d = Features::high_level_dim(&g);
            let mut v = Vec::with_capacity(s.energies.len() * d);
            for (i, &e) in s.energies.iter().enumerate() {
                s.features.high_level_vector(i, e, &mut v);
            }
            nalgebra::DMatrix::from_row_slice(s.energies.len(), d, &v)
        };
        let (rm, gm) = (to_mat(&rscan), to_mat(&gscan));
        let pb = bar(
            cfg.progress,
            (cfg.fpd.num_points * cfg.fpd.num_batches) as u64,
            "FPD",
        );
        let f = fpd(&rm, &gm, &cfg.fpd, |d, _| pb.set_position(d as u64));
        pb.finish_and_clear();
        let pb = bar(cfg.progress, cfg.kpd.num_batches as u64, "KPD");
        let k = kpd(&rm, &gm, &cfg.kpd, |d, _| pb.set_position(d as u64));
        pb.finish_and_clear();
        let f3 = ValueError {
            value: f.value * 1e3,
            error: f.error * 1e3,
        };
        let k3 = ValueError {
            value: k.value * 1e3,
            error: k.error * 1e3,
        };
        let text = format!(
            "FPD (x10^3): {:.4} \u{b1} {:.4}\nKPD (x10^3): {:.4} \u{b1} {:.4}\n",
            f3.value, f3.error, k3.value, k3.error
        );
        write_atomic_text(
            &cfg.out_dir.join(format!("fpd_kpd_{}.txt", ds.name())),
            &text,
        )?;
        fpd_v = Some(f3);
        kpd_v = Some(k3);
    }

    let summary = EvalSummary {
        caloforge_version: env!("CARGO_PKG_VERSION").to_string(),
        dataset: ds.name().to_string(),
        mode: cfg.mode,
        seed: cfg.seed,
        generated: file_summary(&cfg.generated, &gscan, &g),
        reference: file_summary(&cfg.reference, &rscan, &g),
        warnings,
        separation_means: separation_means(&histograms),
        histograms,
        classifiers,
        fpd_x1e3: fpd_v,
        kpd_x1e3: kpd_v,
        average_pngs,
        wall_seconds: t0.elapsed().as_secs_f64(),
    };
    let json =
        serde_json::to_string_pretty(&summary).map_err(|e| CoreError::Invalid(e.to_string()))?;
    write_atomic_text(&cfg.out_dir.join("metrics.json"), &json)?;
    write_atomic_text(
        &cfg.out_dir.join("report.html"),
        &report::html(&summary, &cfg.out_dir),
    )?;
    Ok(summary)
}
