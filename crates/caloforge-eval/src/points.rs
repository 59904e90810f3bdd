//! Evaluation of point-cloud showers (ShowerData files): the observables of the AllShowers paper
//! and of the `showerdata` package, compared between generated and reference showers by
//! separation powers, plots and a classifier, overall and per incident particle.
//!
//! Per shower (points (x, y, layer, E) with x, y in mm and E in GeV; a point counts when its
//! energy is above its layer's threshold, as showerdata's `compute_threshold_mask`):
//! - the number of points and the energy of each layer, and their sums;
//! - the centre of energy (x, y in mm, layer);
//! - the energy-weighted mean distance √(x² + y²) from the axis of normal incidence (as
//!   showerdata's radial observable, not corrected for the incident angle).
//!
//! Over all showers: the spectrum of point energies, the mean longitudinal profile (energy per
//! layer) and the mean radial profile (energy in 2 mm rings out to 400 mm, showerdata's
//! `energy_per_radial_bin`).
//!
//! Histograms have 50 bins spanning both samples' 0.1–99.9 % quantiles (shower observables)
//! or fixed edges (point energies: 10^−6…10^1 GeV in 70 log bins; profiles: their own bins); the
//! separation power is the CaloChallenge one. The classifier (`cls-points`) sees, per shower,
//! log10 E_inc, the layer energies over E_inc, log10(1 + points per layer), the centre of
//! energy, the mean radius and the incident direction.

use crate::classifier_test::{classify, ClassifierMode, ClassifierResult};
use crate::hist::{separation_power, Hist};
use crate::plots::{hist_png, HistPlot};
use crate::progress::bar;
use caloforge_core::showerdata::PointFile;
use caloforge_core::CoreError;
pub use caloforge_nn::classifier::ClassifierConfig;
use caloforge_nn::classifier::Samples;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rings of the radial profile: 200 of 2 mm.
const RINGS: usize = 200;
const RING_MM: f64 = 2.0;

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct PointEvalConfig {
    pub generated: PathBuf,
    pub reference: PathBuf,
    pub out_dir: PathBuf,
    /// Layers (observables per layer); points in later layers are counted in no layer.
    pub layers: usize,
    /// Threshold (MeV) of each layer; empty: every point with E > 0 counts.
    pub thresholds_mev: Vec<f64>,
    /// Run the classifier.
    pub classifier: Option<ClassifierConfig>,
    pub cls_repeats: usize,
    /// Write PNG plots.
    pub plots: bool,
    pub progress: bool,
}

/// Observables of the showers of one file.
#[derive(Debug, Clone, Default)]
pub struct PointObservables {
    pub pdg: Vec<i64>,
    pub e_inc: Vec<f64>,
    pub direction: Vec<[f64; 3]>,
    /// [shower][layer].
    pub e_layer: Vec<Vec<f64>>,
    pub n_layer: Vec<Vec<f64>>,
    pub e_total: Vec<f64>,
    pub n_total: Vec<f64>,
    pub cog: Vec<[f64; 3]>,
    pub mean_r: Vec<f64>,
    /// log10 of every counted point's energy (GeV).
    pub point_log_e: Vec<f32>,
    /// Σ energy per ring (GeV), over all showers.
    pub rings: Vec<f64>,
}

impl PointObservables {
    /// Reads the observables of every shower of `path` (in batches of 1000 showers).
    pub fn from_file(
        path: &Path,
        layers: usize,
        thresholds_mev: &[f64],
        progress: bool,
    ) -> Result<Self, CoreError> {
        let f = PointFile::open(path)?;
        if f.is_empty() {
            return Err(CoreError::data(path.display(), "no showers"));
        }
        let mut o = PointObservables {
            rings: vec![0.0; RINGS],
            ..Default::default()
        };
        let pb = bar(progress, f.len() as u64, "observables");
        for start in (0..f.len()).step_by(1000) {
            let k = 1000.min(f.len() - start);
            for (j, pts) in f.read_points(start, k)?.iter().enumerate() {
                o.push(pts, f.features, layers, thresholds_mev);
                let i = start + j;
                o.pdg.push(f.pdg[i]);
                o.e_inc.push(f.energies[i]);
                o.direction.push(f.directions[i]);
            }
            pb.inc(k as u64);
        }
        pb.finish_and_clear();
        Ok(o)
    }

    /// Adds one shower's observables.
    pub fn push(&mut self, pts: &[f32], features: usize, layers: usize, thr: &[f64]) {
        let (mut el, mut nl) = (vec![0.0; layers], vec![0.0; layers]);
        let (mut e, mut n, mut c, mut r) = (0.0, 0.0, [0.0; 3], 0.0);
        for p in pts.chunks_exact(features) {
            let l = (p[2] + 0.1).floor();
            let en = p[3] as f64;
            let cut = if l >= 0.0 {
                thr.get(l as usize).copied().unwrap_or(0.0)
            } else {
                0.0
            };
            if en * 1000.0 <= cut || en <= 0.0 {
                continue;
            }
            if l >= 0.0 && (l as usize) < layers {
                el[l as usize] += en;
                nl[l as usize] += 1.0;
            }
            let (x, y) = (p[0] as f64, p[1] as f64);
            e += en;
            n += 1.0;
            c[0] += en * x;
            c[1] += en * y;
            c[2] += en * p[2] as f64;
            let d = (x * x + y * y).sqrt();
            r += en * d;
            let ring = (d / RING_MM).floor();
            if ring < RINGS as f64 {
                self.rings[ring as usize] += en;
            }
            self.point_log_e.push(en.log10() as f32);
        }
        let w = if e > 0.0 { 1.0 / e } else { 0.0 };
        self.e_layer.push(el);
        self.n_layer.push(nl);
        self.e_total.push(e);
        self.n_total.push(n);
        self.cog.push([c[0] * w, c[1] * w, c[2] * w]);
        self.mean_r.push(r * w);
    }

    /// Number of showers.
    pub fn len(&self) -> usize {
        self.e_total.len()
    }

    /// Whether there are no showers.
    pub fn is_empty(&self) -> bool {
        self.e_total.is_empty()
    }

    /// The showers whose PDG code is `pdg` (the point spectrum and rings are not split).
    fn select(&self, pdg: i64) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.pdg[i] == pdg).collect()
    }

    /// The classifier's input row of shower `i`.
    fn classifier_row(&self, i: usize, row: &mut Vec<f32>) {
        let e = self.e_inc[i].max(1e-30);
        row.push(e.log10() as f32);
        row.extend(self.e_layer[i].iter().map(|&x| (x / e) as f32));
        row.extend(self.n_layer[i].iter().map(|&x| (1.0 + x).log10() as f32));
        row.extend(self.cog[i].iter().map(|&x| x as f32));
        row.push(self.mean_r[i] as f32);
        row.extend(self.direction[i].iter().map(|&x| x as f32));
    }
}

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PointHist {
    pub name: String,
    pub separation_power: f64,
    pub png: Option<String>,
}

/// The comparisons of one particle type (or of all showers).
#[derive(Debug, Clone, Serialize)]
pub struct PointTable {
    /// "all" or the PDG code.
    pub particle: String,
    pub generated_showers: usize,
    pub reference_showers: usize,
    pub mean_e_total_over_e_inc: (f64, f64),
    pub mean_points: (f64, f64),
    pub hists: Vec<PointHist>,
    /// Mean separation power of the per-layer energies and point counts (layers with energy).
    pub mean_separation_e_layer: f64,
    pub mean_separation_n_layer: f64,
}

/// Everything one evaluation produced (written to `points_metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct PointEvalSummary {
    pub caloforge_version: String,
    pub generated: String,
    pub reference: String,
    pub layers: usize,
    pub thresholds: bool,
    pub tables: Vec<PointTable>,
    /// Point-energy spectrum, longitudinal and radial profiles over all showers.
    pub profiles: Vec<PointHist>,
    pub classifier: Option<ClassifierResult>,
}

/// Edges of 50 bins over both samples' 0.1–99.9 % quantiles.
fn quantile_edges(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = a
        .iter()
        .chain(b)
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return vec![0.0, 1.0];
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (mut lo, mut hi) = (q(0.001), q(0.999));
    if hi <= lo {
        (lo, hi) = (lo - 0.5, lo + 0.5);
    }
    (0..=50).map(|k| lo + (hi - lo) * k as f64 / 50.0).collect()
}

fn hist_of(edges: &[f64], xs: impl IntoIterator<Item = f64>) -> Hist {
    let mut h = Hist::new(edges.to_vec());
    h.fill_all(xs);
    h
}

/// A histogram built from weights per bin (a profile), as counts scaled to integers.
fn profile_hist(edges: Vec<f64>, weights: &[f64]) -> Hist {
    let total: f64 = weights.iter().sum();
    let mut h = Hist::new(edges);
    for (c, &w) in h.counts.iter_mut().zip(weights) {
        *c = if total > 0.0 {
            (w / total * 1e12).round() as u64
        } else {
            0
        };
    }
    h
}

/// A per-shower observable: (observables, shower index) → value.
type Observable = dyn Fn(&PointObservables, usize) -> f64;

struct Compare<'a> {
    dir: &'a Path,
    /// File-name prefix and title suffix ("pdg211_", " (PDG 211)") of a particle's plots.
    prefix: String,
    suffix: String,
    plots: bool,
}

impl Compare<'_> {
    fn add(
        &self,
        out: &mut Vec<PointHist>,
        name: &str,
        xlabel: &str,
        g: &Hist,
        r: &Hist,
        log: bool,
    ) {
        let sep = separation_power(g, r);
        let png = self.plots.then(|| {
            let file = format!("{}{}.png", self.prefix, name.replace([' ', '/'], "_"));
            let path = self.dir.join(&file);
            let (gd, rd) = (g.density(), r.density());
            let title = format!("{name}{}", self.suffix);
            let plot = HistPlot {
                title: &title,
                xlabel,
                edges: &g.edges,
                reference: &rd,
                generated: &gd,
                log_x: false,
                log_y: log,
                separation: sep,
            };
            match hist_png(&path, &plot) {
                Ok(()) => Some(file),
                Err(e) => {
                    eprintln!("warning: {e}");
                    None
                }
            }
        });
        out.push(PointHist {
            name: name.to_string(),
            separation_power: sep,
            png: png.flatten(),
        });
    }
}

fn table(
    label: String,
    g: &PointObservables,
    gi: &[usize],
    r: &PointObservables,
    ri: &[usize],
    cmp: &Compare,
) -> PointTable {
    let mean =
        |o: &PointObservables, idx: &[usize], f: &dyn Fn(&PointObservables, usize) -> f64| {
            idx.iter().map(|&i| f(o, i)).sum::<f64>() / idx.len().max(1) as f64
        };
    let ratio = |o: &PointObservables, i: usize| o.e_total[i] / o.e_inc[i].max(1e-30);
    let mut hists = Vec::new();
    let shower_obs: [(&str, &str, &Observable); 7] = [
        ("E_total over E_inc", "E_vis / E_inc", &ratio),
        ("number of points", "points", &|o, i| o.n_total[i]),
        ("centre of energy x", "x (mm)", &|o, i| o.cog[i][0]),
        ("centre of energy y", "y (mm)", &|o, i| o.cog[i][1]),
        ("centre of energy layer", "layer", &|o, i| o.cog[i][2]),
        ("mean radius", "r (mm)", &|o, i| o.mean_r[i]),
        ("E_total", "E_vis (GeV)", &|o, i| o.e_total[i]),
    ];
    for (name, xl, f) in shower_obs {
        let a: Vec<f64> = gi.iter().map(|&i| f(g, i)).collect();
        let b: Vec<f64> = ri.iter().map(|&i| f(r, i)).collect();
        let edges = quantile_edges(&a, &b);
        cmp.add(
            &mut hists,
            name,
            xl,
            &hist_of(&edges, a),
            &hist_of(&edges, b),
            false,
        );
    }
    // Per layer: separation powers only (78 plots would drown the report).
    let layers = g.e_layer.first().map_or(0, Vec::len);
    let per_layer = |f: &dyn Fn(&PointObservables, usize, usize) -> f64| {
        let mut seps = Vec::new();
        for l in 0..layers {
            let a: Vec<f64> = gi.iter().map(|&i| f(g, i, l)).collect();
            let b: Vec<f64> = ri.iter().map(|&i| f(r, i, l)).collect();
            if a.iter().chain(&b).all(|&x| x == 0.0) {
                continue;
            }
            let edges = quantile_edges(&a, &b);
            let s = separation_power(&hist_of(&edges, a), &hist_of(&edges, b));
            if s.is_finite() {
                seps.push(s);
            }
        }
        seps.iter().sum::<f64>() / seps.len().max(1) as f64
    };
    PointTable {
        particle: label,
        generated_showers: gi.len(),
        reference_showers: ri.len(),
        mean_e_total_over_e_inc: (mean(g, gi, &ratio), mean(r, ri, &ratio)),
        mean_points: (
            mean(g, gi, &|o, i| o.n_total[i]),
            mean(r, ri, &|o, i| o.n_total[i]),
        ),
        hists,
        mean_separation_e_layer: per_layer(&|o, i, l| o.e_layer[i][l]),
        mean_separation_n_layer: per_layer(&|o, i, l| o.n_layer[i][l]),
    }
}

/// Runs the point-cloud evaluation; writes `points_metrics.json` (and plots) to `out_dir`.
pub fn evaluate_points(cfg: &PointEvalConfig) -> Result<PointEvalSummary, CoreError> {
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| CoreError::write(cfg.out_dir.display(), e.to_string()))?;
    let g = PointObservables::from_file(
        &cfg.generated,
        cfg.layers,
        &cfg.thresholds_mev,
        cfg.progress,
    )?;
    let r = PointObservables::from_file(
        &cfg.reference,
        cfg.layers,
        &cfg.thresholds_mev,
        cfg.progress,
    )?;
    let all = |o: &PointObservables| (0..o.len()).collect::<Vec<_>>();
    let cmp = |pdg: Option<i64>| Compare {
        dir: &cfg.out_dir,
        prefix: pdg.map_or(String::new(), |p| format!("pdg{p}_")),
        suffix: pdg.map_or(String::new(), |p| format!(" (PDG {p})")),
        plots: cfg.plots,
    };
    let mut tables = vec![table("all".into(), &g, &all(&g), &r, &all(&r), &cmp(None))];
    let pdgs: BTreeMap<i64, ()> = r.pdg.iter().map(|&p| (p, ())).collect();
    if pdgs.len() > 1 {
        for &p in pdgs.keys() {
            let (gi, ri) = (g.select(p), r.select(p));
            if gi.is_empty() {
                eprintln!("warning: no generated showers of PDG {p}, which the reference has");
                continue;
            }
            tables.push(table(p.to_string(), &g, &gi, &r, &ri, &cmp(Some(p))));
        }
    }
    // Profiles over all showers.
    let c = cmp(None);
    let mut profiles = Vec::new();
    let edges: Vec<f64> = (0..=70).map(|k| -6.0 + k as f64 * 0.1).collect();
    c.add(
        &mut profiles,
        "point energy spectrum",
        "log10 E (GeV)",
        &hist_of(&edges, g.point_log_e.iter().map(|&x| x as f64)),
        &hist_of(&edges, r.point_log_e.iter().map(|&x| x as f64)),
        true,
    );
    let lsum = |o: &PointObservables| {
        (0..cfg.layers)
            .map(|l| o.e_layer.iter().map(|v| v[l]).sum::<f64>())
            .collect::<Vec<f64>>()
    };
    let ledges: Vec<f64> = (0..=cfg.layers).map(|l| l as f64 - 0.5).collect();
    c.add(
        &mut profiles,
        "longitudinal profile",
        "layer",
        &profile_hist(ledges.clone(), &lsum(&g)),
        &profile_hist(ledges, &lsum(&r)),
        true,
    );
    let redges: Vec<f64> = (0..=RINGS).map(|k| k as f64 * RING_MM).collect();
    c.add(
        &mut profiles,
        "radial profile",
        "r (mm)",
        &profile_hist(redges.clone(), &g.rings),
        &profile_hist(redges, &r.rings),
        true,
    );
    let classifier = match &cfg.classifier {
        None => None,
        Some(cc) => {
            let samples = |o: &PointObservables| {
                let mut x = Vec::new();
                let mut row = Vec::new();
                for i in 0..o.len() {
                    row.clear();
                    o.classifier_row(i, &mut row);
                    x.extend_from_slice(&row);
                }
                Samples {
                    x,
                    y: Vec::new(),
                    dim: row.len(),
                }
            };
            let (gs, rs) = (samples(&g), samples(&r));
            Some(classify(
                ClassifierMode::Points,
                cc,
                cfg.cls_repeats,
                cfg.progress,
                (usize::MAX / 4, usize::MAX / 4),
                &gs,
                &rs,
            )?)
        }
    };
    let summary = PointEvalSummary {
        caloforge_version: env!("CARGO_PKG_VERSION").into(),
        generated: cfg.generated.display().to_string(),
        reference: cfg.reference.display().to_string(),
        layers: cfg.layers,
        thresholds: !cfg.thresholds_mev.is_empty(),
        tables,
        profiles,
        classifier,
    };
    let json = serde_json::to_string_pretty(&summary).expect("serialisable");
    caloforge_core::io::write_bytes_atomic(
        &cfg.out_dir.join("points_metrics.json"),
        json.as_bytes(),
    )?;
    Ok(summary)
}

/// The summary as text (one block per particle table).
pub fn summary_text(s: &PointEvalSummary) -> String {
    let mut t = String::new();
    for tb in &s.tables {
        t += &format!(
            "particle {}: {} generated vs {} reference showers\n  mean E_vis/E_inc: generated {:.4}, reference {:.4}\n  mean points: generated {:.1}, reference {:.1}\n",
            tb.particle,
            tb.generated_showers,
            tb.reference_showers,
            tb.mean_e_total_over_e_inc.0,
            tb.mean_e_total_over_e_inc.1,
            tb.mean_points.0,
            tb.mean_points.1
        );
        for h in &tb.hists {
            t += &format!("  separation power {}: {:.5}\n", h.name, h.separation_power);
        }
        t += &format!(
            "  mean separation power energy per layer: {:.5}\n  mean separation power points per layer: {:.5}\n",
            tb.mean_separation_e_layer, tb.mean_separation_n_layer
        );
    }
    for h in &s.profiles {
        t += &format!("separation power {}: {:.5}\n", h.name, h.separation_power);
    }
    if let Some(c) = &s.classifier {
        t += &format!(
            "cls-points AUC {:.4} ± {:.4}, JSD {:.4}\n",
            c.auc_mean, c.auc_std, c.jsd_mean
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observables_match_hand_computed_values() {
        let mut o = PointObservables {
            rings: vec![0.0; RINGS],
            ..Default::default()
        };
        // Layer 0: (3, 4) 2 GeV and (0, 0) 1 GeV; layer 2: (−6, 8) 1 GeV; one point below its
        // layer's 0.5 MeV threshold; one in a layer past the last (counted in totals only).
        let pts = [
            3.0f32, 4.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0, -6.0, 8.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0004,
            0.0, 0.0, 5.0, 1.0,
        ];
        o.push(&pts, 4, 3, &[0.0, 0.5, 0.0]);
        assert_eq!(o.e_layer[0], vec![3.0, 0.0, 1.0]);
        assert_eq!(o.n_layer[0], vec![2.0, 0.0, 1.0]);
        assert_eq!((o.e_total[0], o.n_total[0]), (5.0, 4.0));
        let c = o.cog[0];
        assert!((c[0] - (6.0 - 6.0) / 5.0).abs() < 1e-12 && (c[1] - 16.0 / 5.0).abs() < 1e-12);
        assert!((c[2] - (2.0 + 5.0) / 5.0).abs() < 1e-12);
        assert!((o.mean_r[0] - (2.0 * 5.0 + 1.0 * 10.0) / 5.0).abs() < 1e-12);
        // Rings: r = 5 → ring 2, r = 0 → ring 0 (twice), r = 10 → ring 5.
        assert_eq!((o.rings[0], o.rings[2], o.rings[5]), (2.0, 2.0, 1.0));
        assert_eq!(o.point_log_e.len(), 4);
    }

    #[test]
    fn identical_samples_separate_by_nothing() {
        let a: Vec<f64> = (0..500).map(|i| (i as f64 * 0.37).sin()).collect();
        let e = quantile_edges(&a, &a);
        assert_eq!(e.len(), 51);
        assert_eq!(
            separation_power(&hist_of(&e, a.clone()), &hist_of(&e, a.clone())),
            0.0
        );
        let shifted: Vec<f64> = a.iter().map(|x| x + 10.0).collect();
        let e = quantile_edges(&a, &shifted);
        let s = separation_power(&hist_of(&e, a), &hist_of(&e, shifted));
        assert!((s - 1.0).abs() < 1e-9, "{s}");
    }
}
