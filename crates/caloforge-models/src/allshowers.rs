//! AllShowers (Buss, Day-Hall, Gaede, Kasieczka, Krüger, arXiv:2601.11716): one continuous
//! normalizing flow for the point clouds of every particle type and incident direction, with
//! PointCountFM for the number of points per layer. Reference code: FLC-QU-hep/AllShowers
//! (8bd0745) and FLC-QU-hep/PointCountFM (8f82576).
//!
//! Two parts, trained one after the other (`--flows 1,2`):
//! 1. **PointCountFM** ([`CountNet`]): flow matching of the standardised log(n_l + 0.5) of the
//!    per-layer point counts, conditioned on the standardised incident energy (no logarithm,
//!    as the reference), the one-hot particle and the direction; sampled with Heun's method
//!    (50 steps), rounded as int(max(n, 0) + 0.5).
//! 2. **The CNF transformer** ([`PointTransformer`]): flow matching of each point's
//!    standardised (x, y, log E), conditioned on the time features, the standardised log E_inc
//!    and the direction, the particle and the raw per-layer counts; the noise of every training
//!    shower is matched to its points layer by layer by exact optimal transport (Euclidean cost;
//!    [`caloforge_nn::ot`]), computed in parallel when the training file is prepared. The loss
//!    of a shower is its squared error summed over its points' features over 3 × the file's most
//!    points (the reference's padding to the file-wide maximum), averaged over the batch.
//!    Sampling integrates t = 1 → 0 with a fixed-step solver (16 midpoint steps = 32 network
//!    evaluations by default) on the CPU twin, which attends only to the keys of each layer's
//!    window and batches showers of different sizes without padding.
//!
//! Deliberate differences from the reference, for correctness: the particle labels are the
//! configuration's fixed list (the reference rebuilds it from the PDG codes present in each
//! split, so a split lacking a species shifts every label); validation uses fixed times and
//! the stored matched noise (the reference draws new times every epoch). The optimizer is the
//! reference's RangerLite (RAdam with decoupled weight decay, then Lookahead;
//! [`caloforge_nn::optim::Ranger`]) with PyTorch's global-norm gradient clipping, as the presets
//! set them.

use crate::calodiffusion::DiffusionCard;
use crate::registry::{ModelInfo, StepTiming};
use crate::{
    write_text, Generator, Incident, ModelError, ModelKind, ModelOption, Output, Preset, Progress,
    Result, SampleOptions, TrainOptions, TrainOutcome,
};
use burn::module::Module;
use burn::store::SafetensorsStore;
use burn::tensor::{Device, Int, Tensor, TensorData};
use caloforge_core::showerdata::PointFile;
use caloforge_nn::burn;
use caloforge_nn::device::{compute_device, Precision};
use caloforge_nn::flowmatch::{interpolate, target, time_features, Solver};
use caloforge_nn::ops::WindowPlan;
use caloforge_nn::pointflow::fast::{FastCountNet, FastPointTransformer, ShowerInput};
use caloforge_nn::pointflow::{
    CountNet, CountNetDims, PointBatch, PointTransformer, PointTransformerDims,
};
use caloforge_nn::train::{fit, Task, TrainSettings};
use caloforge_nn::twin::Twin;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Sampling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Solver of the transformer's flow (reference README: midpoint).
    pub solver: Solver,
    /// Its steps (16 midpoint steps = 32 evaluations).
    pub steps: usize,
    /// Heun steps of PointCountFM (50).
    pub count_steps: usize,
    /// Most points of a generated shower (the reference pads to 6016 and truncates beyond).
    pub max_points: usize,
}

/// The configuration (presets `allshowers-*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllShowersConfig {
    pub model: String,
    #[serde(default)]
    pub description: String,
    /// PDG codes in label order (the reference's 12 species: ±11, 22, 130, ±211, ±321, ±2112,
    /// ±2212).
    pub particles: Vec<i64>,
    /// Validation showers, the file's last (at most half of it).
    pub validation: usize,
    /// Showers the standardisations are fitted on (the first of the training split).
    pub fit_showers: usize,
    /// Points with at most this energy (GeV) are dropped when the training file is prepared, as
    /// a readout threshold would (0: every point with E > 0 is kept).
    #[serde(default)]
    pub min_point_energy: f64,
    pub transformer: PointTransformerDims,
    /// Hidden widths of PointCountFM.
    pub count_hidden: Vec<usize>,
    pub train_counts: TrainSettings,
    pub train_transformer: TrainSettings,
    pub sampling: Sampling,
}

impl AllShowersConfig {
    /// Parses and checks a configuration.
    pub fn from_toml(text: &str) -> Result<Self> {
        let err = |m: &str| ModelError::Config(format!("AllShowers configuration: {m}"));
        let c: AllShowersConfig = toml::from_str(text).map_err(|e| err(&e.to_string()))?;
        if c.model != "allshowers" {
            return Err(err("model must be \"allshowers\""));
        }
        c.transformer
            .validate()
            .map_err(|m| err(&format!("[transformer] {m}")))?;
        if c.particles.is_empty() || c.particles.len() != c.transformer.particles {
            return Err(err(&format!(
                "particles lists {} PDG codes but [transformer] particles is {}",
                c.particles.len(),
                c.transformer.particles
            )));
        }
        let mut seen = c.particles.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != c.particles.len() {
            return Err(err("particles lists a PDG code twice"));
        }
        if c.transformer.point_features != 3 || c.transformer.condition != 4 {
            return Err(err(
                "[transformer] point_features must be 3 and condition 4",
            ));
        }
        if c.count_hidden.is_empty() || c.count_hidden.contains(&0) {
            return Err(err("count_hidden must list positive widths"));
        }
        c.train_counts
            .validate("train_counts")
            .and_then(|_| c.train_transformer.validate("train_transformer"))
            .map_err(|e| err(&e.to_string()))?;
        if c.sampling.steps == 0 || c.sampling.count_steps == 0 || c.sampling.max_points == 0 {
            return Err(err(
                "[sampling] steps, count_steps and max_points must be > 0",
            ));
        }
        if c.validation == 0 || c.fit_showers == 0 {
            return Err(err("validation and fit_showers must be > 0"));
        }
        if !(c.min_point_energy >= 0.0 && c.min_point_energy.is_finite()) {
            return Err(err("min_point_energy must be a finite energy ≥ 0 (GeV)"));
        }
        Ok(c)
    }

    fn layers(&self) -> usize {
        self.transformer.layers
    }

    fn count_dims(&self) -> CountNetDims {
        CountNetDims {
            layers: self.layers(),
            condition: 1 + self.particles.len() + 3,
            frequencies: 3,
            hidden: self.count_hidden.clone(),
        }
    }

    fn label(&self, pdg: i64) -> Result<usize> {
        self.particles
            .iter()
            .position(|&p| p == pdg)
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "PDG code {pdg} is not one of this model's particles {:?}",
                    self.particles
                ))
            })
    }
}

/// Mean and unbiased standard deviation (1 when zero), as the reference's StandardScaler.
fn standardiser(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.collect();
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let s = var.sqrt();
    (m, if s > 0.0 && s.is_finite() { s } else { 1.0 })
}

/// Decades below the median point energy beyond which a point counts as an outlier.
const OUTLIER_DECADES: f64 = 6.0;

/// A warning when more than 0.1 % of the points lie [`OUTLIER_DECADES`] or more below the median
/// energy: ln E is standardised, so such a tail (cells without a readout threshold, down to
/// denormal energies) widens the scale of every point's energy and the generated spectrum's
/// upper tail with it.
fn energy_outliers(energies: impl Iterator<Item = f32>) -> Option<String> {
    let mut e: Vec<f32> = energies.collect();
    if e.is_empty() {
        return None;
    }
    let mid = e.len() / 2;
    let median = *e.select_nth_unstable_by(mid, f32::total_cmp).1 as f64;
    let cut = median * 10f64.powf(-OUTLIER_DECADES);
    let low = e.iter().filter(|&&x| (x as f64) < cut).count();
    let min = e.iter().copied().fold(f32::INFINITY, f32::min);
    (low * 1000 > e.len()).then(|| {
        format!(
            "{:.2} % of the points carry less than 1e-{OUTLIER_DECADES} of the median point energy \
             ({median:.3e} GeV; the smallest {min:.3e} GeV): such a tail widens the standardised \
             log-energy and the generated energies with it; re-simulate with a cell threshold \
             or set min_point_energy (GeV) in the configuration",
            100.0 * low as f64 / e.len() as f64
        )
    })
}

/// The fitted standardisations (`preprocessing.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// x and y (mm): mean and standard deviation over the points.
    pub coord: [(f64, f64); 2],
    /// ln E of the points (GeV).
    pub log_e: (f64, f64),
    /// ln E_inc (GeV), the transformer's condition.
    pub log_e_inc: (f64, f64),
    /// E_inc (GeV), PointCountFM's condition (no logarithm, as the reference).
    pub e_inc: (f64, f64),
    /// ln(n_l + 0.5) per layer.
    pub counts: Vec<(f64, f64)>,
    /// The most points of a training shower (the loss normaliser).
    pub max_points: usize,
}

/// One shower, prepared: its points sorted by layer.
struct Shower {
    /// Standardised (x, y, ln E) per point.
    x: Vec<f32>,
    /// Layer of each point.
    layer: Vec<usize>,
    counts: Vec<f32>,
    label: usize,
    /// E_inc (GeV) and direction.
    e_inc: f64,
    direction: [f64; 3],
}

/// A prepared training file.
struct Prepared {
    showers: Vec<Shower>,
    /// OT-matched noise per shower (as `x`).
    noise: Vec<Vec<f32>>,
    n_train: usize,
    prep: Preprocessing,
}

fn prepare(
    cfg: &AllShowersConfig,
    opts: &TrainOptions,
    progress: &dyn Progress,
) -> Result<Prepared> {
    let f = PointFile::open(&opts.data)?;
    let n = opts.max_showers.map_or(f.len(), |m| m.min(f.len()));
    let n_val = cfg.validation.min(n / 2);
    let n_train = n - n_val;
    if n_train == 0 || n_val == 0 {
        return Err(ModelError::file(
            &opts.data,
            format!("{n} showers: too few to train and validate"),
        ));
    }
    let layers = cfg.layers();
    progress.start("prepare", "read points", n as u64);
    // Raw points (x, y, layer, E) sorted by layer; points with E ≤ 0 are padding, those at or
    // below `min_point_energy` are dropped.
    let e_min = cfg.min_point_energy.max(0.0) as f32;
    let mut raw: Vec<Vec<[f32; 4]>> = Vec::with_capacity(n);
    for start in (0..n).step_by(2048) {
        let k = 2048.min(n - start);
        for (j, s) in f.read_points(start, k)?.into_iter().enumerate() {
            let mut pts: Vec<[f32; 4]> = s
                .chunks(f.features)
                .filter(|p| p[3] > e_min)
                .map(|p| [p[0], p[1], p[2], p[3]])
                .collect();
            for p in &pts {
                let l = (p[2] + 0.1).floor();
                if !(l >= 0.0 && (l as usize) < layers) {
                    return Err(ModelError::file(
                        &opts.data,
                        format!(
                            "shower {}: a point in layer {} of a {layers}-layer model",
                            start + j,
                            p[2]
                        ),
                    ));
                }
            }
            pts.sort_by_key(|p| (p[2] + 0.1) as usize);
            raw.push(pts);
        }
        progress.set("prepare", (start + k) as u64, None);
    }
    progress.finish("prepare");
    for (i, &pdg) in f.pdg[..n].iter().enumerate() {
        cfg.label(pdg)
            .map_err(|e| ModelError::file(&opts.data, format!("shower {i}: {e}")))?;
    }
    let fit = cfg.fit_showers.min(n_train);
    let pts = || raw[..fit].iter().flatten();
    if let Some(w) = energy_outliers(pts().map(|p| p[3])) {
        progress.warn(format!("{}: {w}", opts.data.display()));
    }
    let mut prep = Preprocessing {
        coord: [
            standardiser(pts().map(|p| p[0] as f64)),
            standardiser(pts().map(|p| p[1] as f64)),
        ],
        log_e: standardiser(pts().map(|p| (p[3] as f64).ln())),
        log_e_inc: standardiser(f.energies[..fit].iter().map(|e| e.ln())),
        e_inc: standardiser(f.energies[..n_train].iter().copied()),
        counts: Vec::new(), // from the showers' counts below
        max_points: raw.iter().map(Vec::len).max().unwrap_or(0).max(1),
    };
    let showers: Vec<Shower> = raw
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut counts = vec![0.0f32; layers];
            let mut x = Vec::with_capacity(3 * s.len());
            let mut layer = Vec::with_capacity(s.len());
            for p in s {
                let l = (p[2] + 0.1) as usize;
                counts[l] += 1.0;
                layer.push(l);
                x.push(((p[0] as f64 - prep.coord[0].0) / prep.coord[0].1) as f32);
                x.push(((p[1] as f64 - prep.coord[1].0) / prep.coord[1].1) as f32);
                x.push((((p[3] as f64).ln() - prep.log_e.0) / prep.log_e.1) as f32);
            }
            Shower {
                x,
                layer,
                counts,
                label: cfg.label(f.pdg[i]).expect("checked"),
                e_inc: f.energies[i],
                direction: f.directions[i],
            }
        })
        .collect();
    prep.counts = (0..layers)
        .map(|l| {
            standardiser(
                showers[..n_train]
                    .iter()
                    .map(|s| (s.counts[l] as f64 + 0.5).ln()),
            )
        })
        .collect();
    let noise = ot_noise(&showers, opts.seed, progress);
    Ok(Prepared {
        showers,
        noise,
        n_train,
        prep,
    })
}

/// Gaussian noise for every shower, matched to its points layer by layer by exact optimal
/// transport (Euclidean cost), in parallel; shower i draws from stream i of `seed`'s noise.
fn ot_noise(showers: &[Shower], seed: u64, progress: &dyn Progress) -> Vec<Vec<f32>> {
    progress.start("ot", "match noise (OT)", showers.len() as u64);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let out = showers
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = caloforge_core::rng::shower_rng(seed ^ 0x07_0a11, i as u64);
            let z: Vec<f32> = (0..s.x.len()).map(|_| rng.sample(StandardNormal)).collect();
            let mut matched = z.clone();
            let mut a = 0;
            while a < s.layer.len() {
                let mut b = a;
                while b < s.layer.len() && s.layer[b] == s.layer[a] {
                    b += 1;
                }
                if b - a > 1 {
                    let perm =
                        caloforge_nn::ot::match_euclidean(&s.x[3 * a..3 * b], &z[3 * a..3 * b], 3);
                    for (k, &p) in perm.iter().enumerate() {
                        matched[3 * (a + k)..3 * (a + k + 1)]
                            .copy_from_slice(&z[3 * (a + p)..3 * (a + p + 1)]);
                    }
                }
                a = b;
            }
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if d.is_multiple_of(1024) {
                progress.set("ot", d as u64, None);
            }
            matched
        })
        .collect();
    progress.finish("ot");
    out
}

/// The transformer's condition: [standardised ln E_inc, direction].
fn condition(prep: &Preprocessing, e_inc: f64, d: [f64; 3]) -> [f32; 4] {
    [
        ((e_inc.ln() - prep.log_e_inc.0) / prep.log_e_inc.1) as f32,
        d[0] as f32,
        d[1] as f32,
        d[2] as f32,
    ]
}

/// PointCountFM's condition: [standardised E_inc, one-hot particle, direction].
fn count_condition(
    prep: &Preprocessing,
    k: usize,
    e_inc: f64,
    label: usize,
    d: [f64; 3],
    out: &mut Vec<f32>,
) {
    out.push(((e_inc - prep.e_inc.0) / prep.e_inc.1) as f32);
    out.extend((0..k).map(|j| (j == label) as u8 as f32));
    out.extend(d.iter().map(|&v| v as f32));
}

struct TransformerTask<'a> {
    p: &'a Prepared,
    dims: &'a PointTransformerDims,
    device: &'a Device,
    val_batch: usize,
    seed: u64,
}

impl TransformerTask<'_> {
    /// The loss of showers `idx` at times `t` (one per shower) with their matched noise.
    fn loss_at(&self, net: &PointTransformer, idx: &[usize], t: &[f32], dev: &Device) -> Tensor<1> {
        let b = idx.len();
        let n: usize = idx.iter().map(|&i| self.p.showers[i].layer.len()).sum();
        let l = self.dims.layers;
        let (mut y, mut u) = (Vec::with_capacity(n * 3), Vec::with_capacity(n * 3));
        let mut layer = Vec::with_capacity(n);
        let (mut tc, mut counts, mut label) = (
            Vec::with_capacity(b * 10),
            Vec::with_capacity(b * l),
            Vec::with_capacity(b),
        );
        let mut layers = Vec::with_capacity(b);
        for (k, &i) in idx.iter().enumerate() {
            let s = &self.p.showers[i];
            let z = &self.p.noise[i];
            for (&xv, &zv) in s.x.iter().zip(z) {
                y.push(interpolate(xv, zv, t[k]));
                u.push(target(xv, zv));
            }
            layer.extend(s.layer.iter().map(|&lv| lv as i64));
            time_features(t[k], self.dims.frequencies, &mut tc);
            tc.extend_from_slice(&condition(&self.p.prep, s.e_inc, s.direction));
            counts.extend_from_slice(&s.counts);
            label.push(s.label as i64);
            layers.push(s.layer.as_slice());
        }
        let plan = WindowPlan::new(&layers, self.dims.window()).expect("sorted by layer");
        let batch = PointBatch {
            x: Tensor::from_data(TensorData::new(y, [n, 3]), dev),
            layer: Tensor::<1, Int>::from_data(TensorData::new(layer, [n]), dev),
            time_cond: Tensor::from_data(TensorData::new(tc, [b, 10]), dev),
            label: Tensor::<1, Int>::from_data(TensorData::new(label, [b]), dev),
            counts: Tensor::from_data(TensorData::new(counts, [b, l]), dev),
            plan: std::sync::Arc::new(plan),
        };
        let v = net.forward(&batch);
        let u = Tensor::<2>::from_data(TensorData::new(u, [n, 3]), dev);
        // The reference's reduction: per shower over its padded max_points × 3 values, then
        // the mean over the batch.
        (v - u)
            .powi_scalar(2)
            .sum()
            .div_scalar((self.p.prep.max_points * 3 * b) as f64)
    }
}

impl Task<PointTransformer> for TransformerTask<'_> {
    fn n_train(&self) -> usize {
        self.p.n_train
    }
    fn loss(&mut self, net: &PointTransformer, batch: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
        let t: Vec<f32> = batch.iter().map(|_| rng.random::<f32>()).collect();
        self.loss_at(net, batch, &t, self.device)
    }
    fn validate(&mut self, net: &PointTransformer) -> f64 {
        let n = self.p.showers.len();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7a1);
        let t: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let valid = net.valid();
        let dev = self.device.clone().inner();
        crate::diffusionparts::validation_loss(self.p.n_train, n, self.val_batch, |rows, _| {
            let tt: Vec<f32> = rows.iter().map(|&i| t[i]).collect();
            scalar(self.loss_at(&valid, rows, &tt, &dev))
        })
    }
}

struct CountTask<'a> {
    p: &'a Prepared,
    /// Standardised ln(n + 0.5) rows and conditions.
    x: Vec<f32>,
    c: Vec<f32>,
    layers: usize,
    cond: usize,
    device: &'a Device,
    seed: u64,
}

impl CountTask<'_> {
    fn loss_at(
        &self,
        net: &CountNet,
        idx: &[usize],
        t: &[f32],
        z: &[f32],
        dev: &Device,
    ) -> Tensor<1> {
        let (l, c) = (self.layers, self.cond);
        let b = idx.len();
        let w = 6 + l + c;
        let (mut input, mut u) = (Vec::with_capacity(b * w), Vec::with_capacity(b * l));
        for (k, &i) in idx.iter().enumerate() {
            time_features(t[k], 3, &mut input);
            for j in 0..l {
                let (x, zz) = (self.x[i * l + j], z[k * l + j]);
                input.push(interpolate(x, zz, t[k]));
                u.push(target(x, zz));
            }
            input.extend_from_slice(&self.c[i * c..(i + 1) * c]);
        }
        let v = net.forward(Tensor::from_data(TensorData::new(input, [b, w]), dev));
        let u = Tensor::<2>::from_data(TensorData::new(u, [b, l]), dev);
        (v - u).powi_scalar(2).mean()
    }
}

impl Task<CountNet> for CountTask<'_> {
    fn n_train(&self) -> usize {
        self.p.n_train
    }
    fn loss(&mut self, net: &CountNet, batch: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
        let t: Vec<f32> = batch.iter().map(|_| rng.random::<f32>()).collect();
        let z: Vec<f32> = (0..batch.len() * self.layers)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        self.loss_at(net, batch, &t, &z, self.device)
    }
    fn validate(&mut self, net: &CountNet) -> f64 {
        let n = self.p.showers.len();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xc0);
        let t: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let z: Vec<f32> = (0..n * self.layers)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        let valid = net.valid();
        let dev = self.device.clone().inner();
        crate::diffusionparts::validation_loss(self.p.n_train, n, 4096, |rows, _| {
            let tt: Vec<f32> = rows.iter().map(|&i| t[i]).collect();
            let zz: Vec<f32> = rows
                .iter()
                .flat_map(|&i| z[i * self.layers..(i + 1) * self.layers].iter().copied())
                .collect();
            scalar(self.loss_at(&valid, rows, &tt, &zz, &dev))
        })
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// The model card: one training card per part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllShowersCard {
    pub counts: Option<DiffusionCard>,
    pub transformer: Option<DiffusionCard>,
    /// Incident-energy range of the training showers (GeV).
    pub energy_range_gev: Option<(f64, f64)>,
}

/// A trained (or untrained) AllShowers model.
pub struct AllShowers {
    cfg: AllShowersConfig,
    prep: Preprocessing,
    card: AllShowersCard,
    counts: CountNet,
    transformer: PointTransformer,
    fast: std::sync::OnceLock<(FastCountNet, FastPointTransformer)>,
}

impl AllShowers {
    /// Fresh weights and identity standardisations (for timing).
    pub fn untrained(cfg: &AllShowersConfig, seed: u64) -> Result<Self> {
        let device = compute_device(Precision::F32, seed);
        // burn initialises parameters lazily from the device's RNG: draw them now, in order.
        let counts = cfg.count_dims().init(&device);
        caloforge_nn::weights::initialize(&counts);
        let transformer = cfg.transformer.init(&device);
        caloforge_nn::weights::initialize(&transformer);
        Ok(AllShowers {
            prep: Preprocessing {
                coord: [(0.0, 1.0); 2],
                log_e: (0.0, 1.0),
                log_e_inc: (0.0, 1.0),
                e_inc: (0.0, 1.0),
                counts: vec![(3.0, 1.0); cfg.layers()],
                max_points: 1,
            },
            card: AllShowersCard {
                counts: None,
                transformer: None,
                energy_range_gev: None,
            },
            counts,
            transformer,
            cfg: cfg.clone(),
            fast: std::sync::OnceLock::new(),
        })
    }

    fn fast(&self) -> &(FastCountNet, FastPointTransformer) {
        self.fast
            .get_or_init(|| (self.counts.twin(), self.transformer.twin()))
    }

    /// Reads a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let cp = dir.join("config.toml");
        let cfg = AllShowersConfig::from_toml(
            &std::fs::read_to_string(&cp).map_err(|e| ModelError::file(&cp, e))?,
        )
        .map_err(|e| ModelError::file(&cp, e))?;
        let card: AllShowersCard = crate::read_card(&dir.join("model_card.json"))?;
        if card.counts.is_none() || card.transformer.is_none() {
            return Err(ModelError::file(
                dir,
                "not every part is trained yet (--flows 1: PointCountFM, 2: the transformer)",
            ));
        }
        let pp = dir.join("preprocessing.json");
        let prep: Preprocessing = crate::read_card(&pp)?;
        if prep.counts.len() != cfg.layers() {
            return Err(ModelError::file(
                &pp,
                format!("needs {} layers", cfg.layers()),
            ));
        }
        let device = compute_device(Precision::F32, 0);
        let counts = caloforge_nn::weights::load(
            cfg.count_dims().init(&device),
            &dir.join("counts.safetensors"),
            "this PointCountFM network (config.toml)",
        )?;
        let transformer = caloforge_nn::weights::load(
            cfg.transformer.init(&device),
            &dir.join("transformer.safetensors"),
            "this AllShowers transformer (config.toml)",
        )?;
        Ok(AllShowers {
            cfg,
            prep,
            card,
            counts,
            transformer,
            fast: std::sync::OnceLock::new(),
        })
    }

    /// Trains the parts `opts.parts` (1: PointCountFM, 2: the transformer; default both) into
    /// `opts.out`.
    pub fn train(
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        let cfg = AllShowersConfig::from_toml(config)?;
        let parts: Vec<usize> = if opts.parts.is_empty() {
            vec![1, 2]
        } else {
            opts.parts.clone()
        };
        if let Some(&p) = parts.iter().find(|&&p| !(1..=2).contains(&p)) {
            return Err(ModelError::Config(format!(
                "--flows {p}: AllShowers has parts 1 (PointCountFM) and 2 (the transformer)"
            )));
        }
        let t0 = Instant::now();
        let p = prepare(&cfg, opts, progress)?;
        // Continue a directory that holds a trained part (or start fresh).
        let mut model = match AllShowers::load_partial(&opts.out, &cfg, opts.seed) {
            Some(m) => m,
            None => AllShowers::untrained(&cfg, opts.seed)?,
        };
        let trained_before = model.card.counts.is_some() || model.card.transformer.is_some();
        let both = parts.contains(&1) && parts.contains(&2);
        if trained_before && model.prep != p.prep && !both {
            return Err(ModelError::file(
                &opts.out,
                "holds a part trained on other data (its preprocessing differs): train both parts (--flows 1,2)",
            ));
        }
        model.prep = p.prep.clone();
        let energies: Vec<f64> = p.showers[..p.n_train].iter().map(|s| s.e_inc).collect();
        model.card.energy_range_gev = Some(crate::energy_range(&energies));
        let all_e: Vec<f64> = p.showers.iter().map(|s| s.e_inc).collect();
        let mut lines = Vec::new();
        let mut interrupted = false;
        let device = compute_device(Precision::F32, opts.seed);
        for &part in &parts {
            if interrupted {
                break;
            }
            match part {
                1 => {
                    let l = cfg.layers();
                    let k = cfg.particles.len();
                    let mut x = Vec::with_capacity(p.showers.len() * l);
                    let mut c = Vec::new();
                    for s in &p.showers {
                        for (j, &n) in s.counts.iter().enumerate() {
                            let (m, sd) = p.prep.counts[j];
                            x.push((((n as f64 + 0.5).ln() - m) / sd) as f32);
                        }
                        count_condition(&p.prep, k, s.e_inc, s.label, s.direction, &mut c);
                    }
                    let mut task = CountTask {
                        p: &p,
                        x,
                        c,
                        layers: l,
                        cond: 1 + k + 3,
                        device: &device,
                        seed: opts.seed,
                    };
                    let (net, card) = train_part(
                        &model.counts,
                        &mut task,
                        ("allshowers-counts", "counts.ckpt"),
                        &settings(&cfg.train_counts, p.n_train),
                        (opts, t0, &all_e, p.n_train),
                        &device,
                        progress,
                    )?;
                    model.counts = net;
                    interrupted |= card.interrupted;
                    lines.extend(crate::diffusionparts::outcome(&card).lines);
                    model.card.counts = Some(card);
                }
                _ => {
                    let mut task = TransformerTask {
                        p: &p,
                        dims: &cfg.transformer,
                        device: &device,
                        val_batch: cfg.train_transformer.batch_size,
                        seed: opts.seed,
                    };
                    let (net, card) = train_part(
                        &model.transformer,
                        &mut task,
                        ("allshowers-transformer", "transformer.ckpt"),
                        &settings(&cfg.train_transformer, p.n_train),
                        (opts, t0, &all_e, p.n_train),
                        &device,
                        progress,
                    )?;
                    model.transformer = net;
                    interrupted |= card.interrupted;
                    lines.extend(crate::diffusionparts::outcome(&card).lines);
                    model.card.transformer = Some(card);
                }
            }
            model.save(&opts.out)?;
        }
        Ok(TrainOutcome {
            lines,
            complete: model.card.counts.is_some() && model.card.transformer.is_some(),
            interrupted,
        })
    }

    /// Times `steps` optimizer steps of each part of `cfg` (untrained) through the one training
    /// loop with the preset's optimizer and clipping, at a constant rate: synthetic showers of
    /// [`TIMING_POINTS`] points over [`crate::registry::timing_counts`]' layer profile with
    /// standard-normal features and noise (a step costs the same whatever the values).
    pub fn bench_train(
        cfg: &AllShowersConfig,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let layers = cfg.layers();
        let counts = crate::registry::timing_counts(TIMING_POINTS, layers);
        let layer: Vec<usize> = counts
            .iter()
            .enumerate()
            .flat_map(|(l, &n)| std::iter::repeat_n(l, n))
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut normal =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.sample(StandardNormal)).collect() };
        let mut out = Vec::new();
        let device = compute_device(Precision::F32, seed);
        for (part, s) in [
            ("counts", &cfg.train_counts),
            ("transformer", &cfg.train_transformer),
        ] {
            let bs = batch.unwrap_or(s.batch_size).max(1);
            let n = bs * (steps + 1) + 1;
            // PointCountFM sees only the counts and conditions: no points to draw for it.
            let features = if part == "counts" {
                0
            } else {
                3 * TIMING_POINTS
            };
            let showers: Vec<Shower> = (0..n)
                .map(|i| Shower {
                    x: normal(features),
                    layer: layer[..features / 3].to_vec(),
                    counts: counts.iter().map(|&c| c as f32).collect(),
                    label: i % cfg.particles.len(),
                    e_inc: 50.0,
                    direction: [0.0, 0.0, 1.0],
                })
                .collect();
            let noise = (0..n).map(|_| normal(features)).collect();
            let p = Prepared {
                showers,
                noise,
                n_train: n - 1,
                prep: Preprocessing {
                    coord: [(0.0, 1.0); 2],
                    log_e: (0.0, 1.0),
                    log_e_inc: (0.0, 1.0),
                    e_inc: (0.0, 1.0),
                    counts: vec![(0.0, 1.0); layers],
                    max_points: TIMING_POINTS,
                },
            };
            let mut settings = TrainSettings::timing(bs, 1e-4);
            settings.optimizer = s.optimizer;
            settings.weight_decay = s.weight_decay;
            settings.grad_clip = s.grad_clip;
            settings.clip = s.clip;
            let control = caloforge_nn::train::Control {
                seed,
                ..Default::default()
            };
            let mut timer = crate::registry::PartTimer::new(part, steps + 1, progress);
            let backend = format!("{:?}", caloforge_nn::device::backend()).to_lowercase();
            if part == "counts" {
                let k = cfg.particles.len();
                let x = normal(n * layers);
                let mut c = Vec::new();
                for sh in &p.showers {
                    count_condition(&p.prep, k, sh.e_inc, sh.label, sh.direction, &mut c);
                }
                let mut task = CountTask {
                    p: &p,
                    x,
                    c,
                    layers,
                    cond: 1 + k + 3,
                    device: &device,
                    seed,
                };
                let net =
                    caloforge_nn::weights::trainable_copy(&cfg.count_dims().init(&device), &device);
                fit(net, &mut task, &settings, &control, &mut |q| timer.tick(&q))?;
                out.push(timer.finish(
                    &format!("flow matching of the layer counts ({backend} backend)"),
                    bs,
                )?);
            } else {
                let mut task = TransformerTask {
                    p: &p,
                    dims: &cfg.transformer,
                    device: &device,
                    val_batch: bs,
                    seed,
                };
                let net =
                    caloforge_nn::weights::trainable_copy(&cfg.transformer.init(&device), &device);
                fit(net, &mut task, &settings, &control, &mut |q| timer.tick(&q))?;
                out.push(timer.finish(
                    &format!("flow matching of {TIMING_POINTS}-point showers ({backend} backend)"),
                    bs,
                )?);
            }
        }
        Ok(out)
    }

    /// The parts already trained in `dir` (same configuration), if any.
    fn load_partial(dir: &Path, cfg: &AllShowersConfig, seed: u64) -> Option<AllShowers> {
        let card: AllShowersCard = crate::read_card(&dir.join("model_card.json")).ok()?;
        let prep: Preprocessing = crate::read_card(&dir.join("preprocessing.json")).ok()?;
        let device = compute_device(Precision::F32, 0);
        let mut m = AllShowers::untrained(cfg, seed).ok()?;
        if card.counts.is_some() {
            m.counts = caloforge_nn::weights::load(
                cfg.count_dims().init(&device),
                &dir.join("counts.safetensors"),
                "PointCountFM",
            )
            .ok()?;
        }
        if card.transformer.is_some() {
            m.transformer = caloforge_nn::weights::load(
                cfg.transformer.init(&device),
                &dir.join("transformer.safetensors"),
                "transformer",
            )
            .ok()?;
        }
        m.card = card;
        m.prep = prep;
        Some(m)
    }

    /// Per-layer point counts of each incident particle (PointCountFM, Heun), drawn from `rngs`.
    fn sample_counts(
        &self,
        inc: &[(usize, &Incident)],
        rngs: &mut [ChaCha8Rng],
        steps: usize,
    ) -> Vec<Vec<usize>> {
        let (net, _) = self.fast();
        let l = self.cfg.layers();
        let k = self.cfg.particles.len();
        let b = inc.len();
        let mut c = Vec::new();
        for &(label, i) in inc {
            count_condition(&self.prep, k, i.energy_gev, label, i.direction, &mut c);
        }
        let cw = 1 + k + 3;
        let mut x: Vec<f32> = rngs
            .iter_mut()
            .flat_map(|r| {
                (0..l)
                    .map(|_| r.sample::<f32, _>(StandardNormal))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut input = Vec::with_capacity(b * (6 + l + cw));
        Solver::Heun.integrate(&mut x, 1.0, 0.0, steps, |t, s, out| {
            input.clear();
            for j in 0..b {
                time_features(t, 3, &mut input);
                input.extend_from_slice(&s[j * l..(j + 1) * l]);
                input.extend_from_slice(&c[j * cw..(j + 1) * cw]);
            }
            out.copy_from_slice(&net.forward(&input));
        });
        x.chunks(l)
            .map(|row| {
                row.iter()
                    .zip(&self.prep.counts)
                    .map(|(&v, &(m, sd))| {
                        let n = (v as f64 * sd + m).exp() - 0.5;
                        (n.max(0.0) + 0.5) as usize
                    })
                    .collect()
            })
            .collect()
    }

    /// Showers of one chunk (sequentially; the caller parallelises over chunks).
    fn sample_chunk(
        &self,
        inc: &[Incident],
        seed: u64,
        first: u64,
        (solver, steps, points): (Solver, usize, Option<usize>),
    ) -> Result<Vec<Vec<f32>>> {
        let labelled: Vec<(usize, &Incident)> = inc
            .iter()
            .map(|i| Ok((self.cfg.label(i.pdg)?, i)))
            .collect::<Result<_>>()?;
        let mut rngs: Vec<ChaCha8Rng> = (0..inc.len())
            .map(|j| crate::shower_rng(seed, first + j as u64))
            .collect();
        let counts = match points {
            Some(n) => vec![crate::registry::timing_counts(n, self.cfg.layers()); inc.len()],
            None => self.sample_counts(&labelled, &mut rngs, self.cfg.sampling.count_steps),
        };
        let l = self.cfg.layers();
        // Layer starts, truncated to max_points as the reference's padding does.
        let mut starts = Vec::with_capacity(inc.len());
        let mut raw_counts = Vec::with_capacity(inc.len());
        for c in &counts {
            let mut st = vec![0usize; l + 1];
            for j in 0..l {
                st[j + 1] = (st[j] + c[j]).min(self.cfg.sampling.max_points);
            }
            starts.push(st);
            raw_counts.push(c.iter().map(|&v| v as f32).collect::<Vec<f32>>());
        }
        let sizes: Vec<usize> = starts.iter().map(|s| s[l]).collect();
        let offs: Vec<usize> = sizes
            .iter()
            .scan(0, |a, &n| {
                let o = *a;
                *a += 3 * n;
                Some(o)
            })
            .collect();
        let mut z: Vec<f32> = Vec::with_capacity(3 * sizes.iter().sum::<usize>());
        for (r, &n) in rngs.iter_mut().zip(&sizes) {
            z.extend((0..3 * n).map(|_| r.sample::<f32, _>(StandardNormal)));
        }
        let (_, net) = self.fast();
        let conds: Vec<[f32; 4]> = inc
            .iter()
            .map(|i| condition(&self.prep, i.energy_gev, i.direction))
            .collect();
        let freq = self.cfg.transformer.frequencies;
        solver.integrate(&mut z, 1.0, 0.0, steps, |t, s, out| {
            let tcs: Vec<Vec<f32>> = conds
                .iter()
                .map(|c| {
                    let mut v = Vec::with_capacity(2 * freq + 4);
                    time_features(t, freq, &mut v);
                    v.extend_from_slice(c);
                    v
                })
                .collect();
            let inputs: Vec<ShowerInput> = (0..inc.len())
                .map(|j| ShowerInput {
                    x: &s[offs[j]..offs[j] + 3 * sizes[j]],
                    starts: &starts[j],
                    time_cond: &tcs[j],
                    label: labelled[j].0,
                    counts: &raw_counts[j],
                })
                .collect();
            out.copy_from_slice(&net.forward(&inputs));
        });
        let p = &self.prep;
        Ok((0..inc.len())
            .map(|j| {
                let mut pts = Vec::with_capacity(4 * sizes[j]);
                for li in 0..l {
                    for q in starts[j][li]..starts[j][li + 1] {
                        let v = &z[offs[j] + 3 * q..offs[j] + 3 * q + 3];
                        pts.push((v[0] as f64 * p.coord[0].1 + p.coord[0].0) as f32);
                        pts.push((v[1] as f64 * p.coord[1].1 + p.coord[1].0) as f32);
                        pts.push(li as f32);
                        pts.push((v[2] as f64 * p.log_e.1 + p.log_e.0).exp() as f32);
                    }
                }
                pts
            })
            .collect())
    }

    fn solver_steps(&self, opts: &SampleOptions) -> Result<(Solver, usize)> {
        let solver = match &opts.sampler {
            Some(s) => s.parse::<Solver>().map_err(ModelError::Config)?,
            None => self.cfg.sampling.solver,
        };
        let steps = opts.steps.unwrap_or(self.cfg.sampling.steps);
        if steps == 0 {
            return Err(ModelError::Config("--steps must be > 0".into()));
        }
        Ok((solver, steps))
    }
}

/// Trains one part from `net`'s weights through the one loop (checkpoint
/// `checkpoints/<ckpt>`); returns the best weights and the part's card.
fn train_part<M: Module, T: Task<M>>(
    net: &M,
    task: &mut T,
    (name, ckpt): (&str, &str),
    settings: &TrainSettings,
    (opts, t0, energies, n_train): (&TrainOptions, Instant, &[f64], usize),
    device: &Device,
    progress: &dyn Progress,
) -> Result<(M, DiffusionCard)> {
    let net = caloforge_nn::weights::trainable_copy(net, device);
    let mut card = crate::diffusionparts::card_of(name, net.num_params(), opts, energies, n_train)?;
    let best =
        crate::diffusionparts::run(net, task, settings, opts, t0, ckpt, &mut card, progress)?;
    Ok((best, card))
}

/// The settings of a run on `n_train` showers: a per-epoch cosine learns its steps per epoch,
/// a OneCycle with `total_steps = 0` spans all epochs (PointCountFM: one cycle over the run).
fn settings(s: &TrainSettings, n_train: usize) -> TrainSettings {
    use caloforge_nn::schedule::LrSchedule;
    let mut s = s.clone();
    let per_epoch = n_train.div_ceil(s.batch_size.clamp(1, n_train.max(1)));
    match &mut s.schedule {
        LrSchedule::CosineEpochs {
            steps_per_epoch, ..
        } => *steps_per_epoch = per_epoch,
        LrSchedule::OneCycle { total_steps, .. } if *total_steps == 0 => {
            *total_steps = per_epoch * s.epochs
        }
        _ => {}
    }
    s
}

/// Points per synthetic shower of [`AllShowers::bench_train`] (about the mean of simulated
/// 10–90 GeV ILD-like showers of electrons, photons and pions).
pub const TIMING_POINTS: usize = 380;

/// Most showers integrated together by one thread when sampling.
const SLICE: usize = 4;

/// The model family.
pub struct AllShowersKind;

/// AllShowers' embedded presets.
pub const PRESETS: &[Preset] =
    crate::presets!("allshowers-ild", "allshowers-small", "allshowers-tiny");

impl ModelKind for AllShowersKind {
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "allshowers",
            paper: "Buss, Day-Hall, Gaede, Kasieczka, Krüger, arXiv 2601.11716 (point clouds, CNF transformer, all particles)",
            presets: PRESETS,
            options: &[ModelOption::Parts, ModelOption::Sampler, ModelOption::Steps],
        }
    }
    fn canonical(&self, config: &str) -> Result<(Output, String)> {
        let c = AllShowersConfig::from_toml(config)?;
        Ok((Output::Points { layers: c.layers() }, crate::to_toml(&c)?))
    }
    fn train(
        &self,
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        AllShowers::train(config, opts, progress)
    }
    fn load(&self, dir: &Path) -> Result<Box<dyn Generator>> {
        Ok(Box::new(AllShowers::load(dir)?))
    }
    fn untrained(&self, config: &str, seed: u64) -> Result<Box<dyn Generator>> {
        Ok(Box::new(AllShowers::untrained(
            &AllShowersConfig::from_toml(config)?,
            seed,
        )?))
    }
    fn bench_train(
        &self,
        config: &str,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        AllShowers::bench_train(
            &AllShowersConfig::from_toml(config)?,
            steps,
            batch,
            seed,
            progress,
        )
    }
}

impl Generator for AllShowers {
    fn kind(&self) -> &'static dyn ModelKind {
        &AllShowersKind
    }
    fn output(&self) -> Output {
        Output::Points {
            layers: self.cfg.layers(),
        }
    }
    fn sample(
        &self,
        _: &[f64],
        _: u64,
        _: u64,
        _: usize,
        _: &SampleOptions,
        _: &dyn Progress,
    ) -> Result<Vec<f32>> {
        Err(ModelError::Config(
            "allshowers generates point clouds: caloforge generate writes them as ShowerData (or voxels with --voxelize)".into(),
        ))
    }
    fn sample_points(
        &self,
        incidents: &[Incident],
        seed: u64,
        first: u64,
        batch: usize,
        opts: &SampleOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let (solver, steps) = self.solver_steps(opts)?;
        let batch = batch.max(1);
        progress.start("generate", "generate", incidents.len() as u64);
        let mut out = Vec::with_capacity(incidents.len());
        for (ci, chunk) in incidents.chunks(batch).enumerate() {
            let base = first + (ci * batch) as u64;
            // Threads take slices of the batch; each shower's result does not depend on them.
            // Slices of at most SLICE showers keep a forward pass's activations in cache.
            let per = chunk
                .len()
                .div_ceil(rayon::current_num_threads().max(1))
                .clamp(1, SLICE);
            let parts: Vec<Result<Vec<Vec<f32>>>> = chunk
                .par_chunks(per)
                .enumerate()
                .map(|(k, c)| {
                    self.sample_chunk(
                        c,
                        seed,
                        base + (k * per) as u64,
                        (solver, steps, opts.points),
                    )
                })
                .collect();
            for p in parts {
                out.extend(p?);
            }
            progress.set("generate", (ci * batch + chunk.len()) as u64, None);
        }
        progress.finish("generate");
        Ok(out)
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        caloforge_nn::weights::save(
            &self.counts.valid(),
            SafetensorsStore::from_bytes(None),
            &dir.join("counts.safetensors"),
        )?;
        caloforge_nn::weights::save(
            &self.transformer.valid(),
            SafetensorsStore::from_bytes(None),
            &dir.join("transformer.safetensors"),
        )?;
        crate::write_json(&dir.join("preprocessing.json"), &self.prep)?;
        write_text(&dir.join("config.toml"), &crate::to_toml(&self.cfg)?)?;
        crate::write_json(&dir.join("model_card.json"), &self.card)
    }
    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range_gev.map(|(a, b)| (a * 1e3, b * 1e3))
    }
    /// With `opts.points`: the transformer's multiply-adds over the flow's evaluations
    /// (PointCountFM's are not counted).
    fn macs_per_shower(&self, opts: &SampleOptions) -> Option<f64> {
        let n = opts.points?;
        let (solver, steps) = self.solver_steps(opts).ok()?;
        let l = self.cfg.layers();
        let counts = crate::registry::timing_counts(n, l);
        let mut starts = vec![0usize; l + 1];
        for j in 0..l {
            starts[j + 1] = starts[j] + counts[j];
        }
        let x = vec![0.1f32; 3 * n];
        let tc = vec![0.0f32; 2 * self.cfg.transformer.frequencies + 4];
        let c: Vec<f32> = counts.iter().map(|&v| v as f32).collect();
        let (_, net) = self.fast();
        let per = caloforge_nn::kernels::macs::count(|| {
            net.forward(&[ShowerInput {
                x: &x,
                starts: &starts,
                time_cond: &tc,
                label: 0,
                counts: &c,
            }])
        })
        .1;
        Some(per as f64 * solver.evaluations(steps) as f64)
    }
}

#[cfg(test)]
mod tests;
