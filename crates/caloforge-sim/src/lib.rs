//! caloforge-sim: a parametric (Grindhammer–Peters / GFlash) electromagnetic shower simulator of
//! the CaloChallenge dataset-2/3 detector (Geant4 Par04: 90 alternating layers of 1.4 mm W and
//! 0.3 mm Si read out as 45 layers, electrons entering perpendicular to the layers), and of
//! photons in an ATLAS-like barrel read out on the dataset-1 photon mesh
//! ([`SimParams::ds1_photons`]: readout layers at given depths with dead material between
//! them, conversion depth drawn from the pair-production length, non-uniform radial bins).
//!
//! Per shower: the longitudinal profile is a gamma distribution whose two parameters (T, α) are
//! drawn log-normally with correlation; each layer's energy gets a sampling fluctuation
//! (Gamma-distributed, σ/E = c_S/√E); the layer energy is carried by spots whose radius follows
//! the two-component (core + tail) GFlash radial profile at the layer's depth and whose azimuth is
//! uniform; each spot's energy is shared by a few hits displaced from it by a sub-millimetre
//! Gaussian (not in GFlash: it reproduces the Geant4 occupancy of the fine dataset-3 mesh without
//! raising the dataset-2 one); hits are binned into the dataset-2 and/or dataset-3 mesh; voxels below the
//! 15.15 keV readout threshold are zeroed. All constants live in [`SimParams`], with the stock
//! GFlash values ([`Tune::Stock`]) and values tuned to the Geant4 samples of this detector
//! ([`Tune::Geant4`]).
//!
//! # What this model cannot reproduce
//! (See `shared/geant4/GFLASH.md` §9.) Spots are independent around one axis, so there is no
//! correlated sub-structure (off-axis sub-showers, late conversions); all longitudinal
//! fluctuations come from two parameters, so the deep tail and the first layers (MIP-like
//! deposits of the primary, early conversions) are underestimated, by up to 5–10× in layer 0 at
//! high energy; the voxel energy spectrum has no Landau tail; the sampling fraction does not vary
//! with depth or energy; the radial shape is two Cauchy-like components; no nuclear processes.
//! A classifier separates these showers from Geant4 easily: use them for pipelines, tests,
//! demos and benchmarks, not as a fidelity stand-in.

pub mod gamma;
pub mod points;

use caloforge_core::DatasetKind;
use gamma::gamma_p;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, StandardNormal};
use rayon::prelude::*;
use std::f64::consts::{PI, TAU};

/// Which parameter set to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tune {
    /// Grindhammer–Peters values as published (sampling-calorimeter variant).
    Stock,
    /// Tuned to the Geant4 samples of this detector (default).
    Geant4,
}

impl std::str::FromStr for Tune {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stock" => Ok(Tune::Stock),
            "geant4" => Ok(Tune::Geant4),
            _ => Err(format!("unknown tune {s:?}: expected stock or geant4")),
        }
    }
}

/// Every constant of the model (lengths in mm, energies in MeV unless stated).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SimParams {
    /// Effective radiation length of the W/Si stack (mm).
    pub x0_mm: f64,
    /// Effective Molière radius (mm).
    pub rm_mm: f64,
    /// Effective critical energy (MeV).
    pub ec_mev: f64,
    /// Effective atomic number.
    pub z_eff: f64,
    /// Sampling frequency F_S = X0 / (d_W + d_Si).
    pub fs: f64,
    /// e/mip ratio ê used in the shape corrections.
    pub ehat: f64,
    /// Depth of one readout layer (mm).
    pub layer_mm: f64,
    /// Sampling term c_S (√GeV).
    pub c_s: f64,
    /// Visible-energy scale in dataset units (Geant4 sampling fraction / 0.033).
    pub vis_scale: f64,
    /// Multiplier of the mean T (longitudinal position).
    pub t_scale: f64,
    /// Multiplier of the core radius R_C.
    pub rc_scale: f64,
    /// Multiplier of the tail radius R_T.
    pub rt_scale: f64,
    /// Shift of the core probability p.
    pub p_shift: f64,
    /// Multiplier of the GFlash spot count 10.3/c_S·E^spot_exponent (E in GeV).
    pub spot_factor: f64,
    /// Energy exponent of the spot count (GFlash: 0.959).
    pub spot_exponent: f64,
    /// Shape k of the per-spot energy Gamma(k)/k fluctuation (None: equal-energy spots).
    pub spot_gamma_k: Option<f64>,
    /// Hits per spot: each spot's energy is shared by this many hits displaced from the spot by
    /// a 2-D Gaussian of width `hit_sigma_mm` (1: GFlash, one hit at the spot). Not in GFlash:
    /// it gives the deposits a sub-millimetre clustering, so that the fine dataset-3 mesh sees
    /// more hit cells per dataset-2 cell near the axis, as in Geant4.
    #[serde(default = "one")]
    pub hits_per_spot: usize,
    /// Width (mm) of the hit displacement in x and in y.
    #[serde(default)]
    pub hit_sigma_mm: f64,

    /// Readout threshold (MeV).
    pub threshold_mev: f64,
    /// Depth span [start, end] of each readout layer in X0, in layer order, with dead material
    /// (energy not read out) between spans; empty: contiguous layers of `layer_mm / x0_mm` each
    /// from depth 0 (the dataset-2/3 stack).
    #[serde(default)]
    pub layer_spans_x0: Vec<[f64; 2]>,
    /// Photons: the shower starts at a depth drawn from the pair-production length 9/7 X0
    /// (false: electrons, which shower from the front face).
    #[serde(default)]
    pub photon: bool,
}

fn one() -> usize {
    1
}

impl SimParams {
    /// Parameters of `tune`.
    pub fn new(tune: Tune) -> Self {
        let stock = SimParams {
            x0_mm: 4.219,
            rm_mm: 10.87,
            ec_mev: 8.24,
            z_eff: 72.49,
            fs: 2.482,
            ehat: 0.704,
            layer_mm: 3.4,
            c_s: 0.11,
            vis_scale: 0.985,
            t_scale: 1.0,
            rc_scale: 1.0,
            rt_scale: 1.0,
            p_shift: 0.0,
            spot_factor: 1.0,
            spot_exponent: 0.959,
            spot_gamma_k: None,
            hits_per_spot: 1,
            hit_sigma_mm: 0.0,
            threshold_mev: 0.5e-3 / 0.033,
            layer_spans_x0: Vec::new(),
            photon: false,
        };
        match tune {
            Tune::Stock => stock,
            Tune::Geant4 => SimParams {
                t_scale: 0.022f64.exp(),
                rc_scale: 1.074,
                rt_scale: 0.818,
                p_shift: -0.197,
                // Fitted (with the hits) to the dataset-2 and dataset-3 occupancy of the Geant4
                // samples at 1/10/100 GeV.
                spot_factor: 0.75,
                spot_exponent: 1.04,
                spot_gamma_k: Some(1.5),
                hits_per_spot: 3,
                hit_sigma_mm: 0.3,
                ..stock
            },
        }
    }
}

/// One readout layer of a mesh: its voxels start at `offset`, `n_alpha` angular bins × the radial
/// bins of `r_edges` (mm, from 0), r fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshLayer {
    /// First voxel of the layer in the shower vector.
    pub offset: usize,
    /// Angular bins.
    pub n_alpha: usize,
    /// Radial bin edges (mm), increasing from 0.
    pub r_edges: Vec<f64>,
    /// 1/dr when the radial bins are uniform (a division instead of a search), else 0.
    inv_dr: f64,
}

impl MeshLayer {
    /// A layer with the given radial edges.
    pub fn new(offset: usize, n_alpha: usize, r_edges: Vec<f64>) -> Self {
        let n = r_edges.len().saturating_sub(1);
        let dr = r_edges.get(1).copied().unwrap_or(0.0) - r_edges.first().copied().unwrap_or(0.0);
        let uniform = n > 0
            && r_edges[0] == 0.0
            && r_edges
                .iter()
                .enumerate()
                .all(|(i, &e)| (e - i as f64 * dr).abs() <= 1e-9 * dr.max(1.0));
        MeshLayer {
            offset,
            n_alpha,
            inv_dr: if uniform { 1.0 / dr } else { 0.0 },
            r_edges,
        }
    }
    /// Radial bins.
    pub fn n_r(&self) -> usize {
        self.r_edges.len().saturating_sub(1)
    }
    /// The radial bin of `r_mm`, `None` beyond the outer edge.
    #[inline]
    fn r_bin(&self, r_mm: f64) -> Option<usize> {
        let n = self.n_r();
        let ir = if self.inv_dr > 0.0 {
            (r_mm * self.inv_dr) as usize
        } else {
            self.r_edges.partition_point(|&e| e <= r_mm).wrapping_sub(1)
        };
        (ir < n).then_some(ir)
    }
}

impl SimParams {
    /// The parameters of the detector of dataset `ds`: `new(tune)` for the dataset-2/3 detector,
    /// [`SimParams::ds1_photons`] for dataset-1 photons (`tune` does not apply there). Dataset-1
    /// pions need a hadronic shower model, which this simulator does not have.
    pub fn for_dataset(ds: DatasetKind, tune: Tune) -> Result<SimParams, String> {
        match ds {
            DatasetKind::Ds2 | DatasetKind::Ds3 => Ok(SimParams::new(tune)),
            DatasetKind::Photons1 => Ok(SimParams::ds1_photons()),
            DatasetKind::Pions1 => Err(
                "the simulator models electromagnetic showers only: dataset 1-pions needs a hadronic model it does not have (use -d 1-photons, 2 or 3)"
                    .into(),
            ),
        }
    }

    /// Photons in an ATLAS-like barrel (dataset 1, |η| ≈ 0.2): a lead/liquid-argon sampling
    /// calorimeter read out as the presampler (layer 0), strips (1), middle (2) and back (3)
    /// layers and the first tile layer (12). Depths (X0) are rough figures of the ATLAS barrel
    /// at this η: 2 X0 of material before the presampler, 0.6 X0 between it and the strips, then
    /// 4.3 / 16 / 2 X0, and 2.2 X0 of cryostat before the tile calorimeter; energy deposited in
    /// dead material is lost. The energy scale is calibrated (vis_scale 1), the sampling term is
    /// ATLAS' 10 %/√E, the Molière radius 40 mm, GFlash's shapes for a Pb/LAr mixture
    /// (Z_eff 60, E_c 10 MeV, F_S 3). Not tuned to any Geant4 sample.
    pub fn ds1_photons() -> SimParams {
        SimParams {
            x0_mm: 20.0,
            rm_mm: 40.0,
            ec_mev: 10.0,
            z_eff: 60.0,
            fs: 3.0,
            ehat: 0.7,
            layer_mm: 20.0,
            c_s: 0.10,
            vis_scale: 1.0,
            t_scale: 1.0,
            rc_scale: 1.0,
            rt_scale: 1.0,
            p_shift: 0.0,
            spot_factor: 1.0,
            spot_exponent: 0.959,
            spot_gamma_k: None,
            hits_per_spot: 1,
            hit_sigma_mm: 0.0,
            threshold_mev: 1e-2,
            layer_spans_x0: vec![
                [2.0, 2.4],
                [3.0, 7.3],
                [7.3, 23.3],
                [23.3, 25.3],
                [27.5, 60.0],
            ],
            photon: true,
        }
    }
}

/// A readout mesh: the relevant (voxelised) layers of a dataset, in depth order.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    /// Readout layers.
    pub layers: Vec<MeshLayer>,
}

impl Mesh {
    /// The mesh of a dataset, from its embedded binning file (the layers with voxels).
    pub fn of(ds: DatasetKind) -> Result<Mesh, String> {
        let g = ds.geometry(None).map_err(|e| e.to_string())?;
        let mut layers = Vec::new();
        for &l in &g.relevant_layers {
            let gl = &g.layers[l];
            layers.push(MeshLayer::new(
                g.bin_edges[l],
                gl.n_alpha,
                gl.r_edges.clone(),
            ));
        }
        Ok(Mesh { layers })
    }
    /// `n_layers` identical layers of `n_alpha` × `n_r` bins of width `dr` (mm).
    pub fn uniform(n_layers: usize, n_alpha: usize, n_r: usize, dr: f64) -> Mesh {
        let edges: Vec<f64> = (0..=n_r).map(|i| i as f64 * dr).collect();
        Mesh {
            layers: (0..n_layers)
                .map(|l| MeshLayer::new(l * n_alpha * n_r, n_alpha, edges.clone()))
                .collect(),
        }
    }
    /// Readout layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }
    /// Voxels per shower.
    pub fn n_voxels(&self) -> usize {
        self.layers
            .last()
            .map(|l| l.offset + l.n_alpha * l.n_r())
            .unwrap_or(0)
    }
}

/// The per-shower longitudinal parameters and layer energies before spots (for tests and the
/// mean mode).
#[derive(Debug, Clone)]
pub struct Longitudinal {
    /// Shower depth parameter T (X0).
    pub t: f64,
    /// Shape α.
    pub alpha: f64,
    /// Mean ᾱ = exp⟨ln α⟩ (enters τ).
    pub alpha_mean: f64,
    /// Depth (X0) where the shower starts (photon conversion; 0 for electrons).
    pub start_x0: f64,
    /// Layer energies (MeV) before the sampling fluctuation.
    pub layer_energy: Vec<f64>,
}

/// The simulator.
#[derive(Debug, Clone)]
pub struct Simulator {
    /// Parameters.
    pub p: SimParams,
    /// Meshes to fill (the same spots are binned into each).
    pub meshes: Vec<Mesh>,
}

/// The GFlash radial profile at one depth: core and tail radii (Molière radii) and the core
/// probability.
pub(crate) struct Radial {
    pub(crate) rc: f64,
    pub(crate) rt: f64,
    pub(crate) p: f64,
}

impl Simulator {
    /// A simulator filling `meshes` with parameters `p`.
    pub fn new(p: SimParams, meshes: Vec<Mesh>) -> Self {
        Simulator { p, meshes }
    }

    pub(crate) fn means(&self, e_mev: f64) -> (f64, f64, f64, f64, f64) {
        let p = &self.p;
        let l = (e_mev / p.ec_mev).ln();
        let t_hom = (l - 0.812).max(0.1);
        let a_hom = (0.81 + (0.458 + 2.26 / p.z_eff) * l).max(0.1);
        let t_mean = (t_hom - 0.55 / p.fs - 0.69 * (1.0 - p.ehat)).max(0.1) * p.t_scale;
        let a_mean = (a_hom - 0.476 / p.fs).max(1.1);
        let s_t = (1.0 / (-2.50 + 1.25 * l)).clamp(0.0, 0.5);
        let s_a = (1.0 / (-0.82 + 0.79 * l)).clamp(0.0, 0.5);
        let s_t = if s_t <= 0.0 { 0.5 } else { s_t };
        let s_a = if s_a <= 0.0 { 0.5 } else { s_a };
        (t_mean, a_mean, s_t, s_a, l)
    }

    /// The longitudinal parameters (T, α, mean α) of a shower of `e_inc` MeV from two standard
    /// normal numbers (log-normal, correlated as in GFlash).
    pub(crate) fn profile(&self, e_inc: f64, z1: f64, z2: f64) -> (f64, f64, f64) {
        let (t_mean, a_mean, s_t, s_a, l) = self.means(e_inc);
        let rho = (0.784 - 0.023 * l).clamp(-1.0, 1.0);
        let (cp, cm) = (((1.0 + rho) / 2.0).sqrt(), ((1.0 - rho) / 2.0).sqrt());
        let t = (t_mean.ln() + s_t * (cp * z1 + cm * z2)).exp().max(1.0);
        let alpha = (a_mean.ln() + s_a * (cp * z1 - cm * z2)).exp().max(1.1);
        (t, alpha, a_mean)
    }

    /// Draws the longitudinal profile of one shower of `e_inc` MeV (`rng = None`: the mean one).
    pub fn longitudinal(&self, e_inc: f64, mut rng: Option<&mut ChaCha8Rng>) -> Longitudinal {
        let p = &self.p;
        let e_vis = e_inc * p.vis_scale;
        let (z1, z2) = match rng.as_deref_mut() {
            Some(r) => (
                r.sample::<f64, _>(StandardNormal),
                r.sample::<f64, _>(StandardNormal),
            ),
            None => (0.0, 0.0),
        };
        let (t, alpha, a_mean) = self.profile(e_inc, z1, z2);
        let beta = (alpha - 1.0) / t;
        let start_x0 = match rng {
            // Pair-production length 9/7 X0 (drawn after the profile, so electron streams are
            // unchanged).
            Some(r) if p.photon => -(1.0 - r.random::<f64>()).ln() * 9.0 / 7.0,
            _ => 0.0,
        };
        let n = self.n_layers();
        let layer_energy = (0..n)
            .map(|i| e_vis * self.layer_fraction(alpha, beta, i, start_x0))
            .collect();
        Longitudinal {
            t,
            alpha,
            alpha_mean: a_mean,
            start_x0,
            layer_energy,
        }
    }

    /// Readout layers (those of the first mesh; 45 without a mesh).
    pub fn n_layers(&self) -> usize {
        self.meshes.first().map(|m| m.n_layers()).unwrap_or(45)
    }

    /// The gamma(shape, rate) depth distribution of a shower starting at `t0` X0, integrated to
    /// the start (`end` false) or end of readout layer `i`.
    fn depth_cdf(&self, shape: f64, rate: f64, i: usize, end: bool, t0: f64) -> f64 {
        let p = &self.p;
        let d = match p.layer_spans_x0.get(i) {
            Some(span) => span[end as usize] - t0,
            None => {
                let step = p.layer_mm / p.x0_mm;
                let k = (i + end as usize) as f64;
                if t0 == 0.0 {
                    // Kept in this form so dataset-2/3 showers stay bit-identical.
                    return gamma_p(shape, rate * step * k);
                }
                step * k - t0
            }
        };
        if d <= 0.0 {
            0.0
        } else {
            gamma_p(shape, rate * d)
        }
    }

    /// Fraction of the profile inside readout layer `i`.
    fn layer_fraction(&self, shape: f64, rate: f64, i: usize, t0: f64) -> f64 {
        self.depth_cdf(shape, rate, i, true, t0) - self.depth_cdf(shape, rate, i, false, t0)
    }

    /// Depth (X0) of the middle of readout layer `i`, measured from the shower start `t0`.
    fn layer_middle(&self, i: usize, t0: f64) -> f64 {
        let p = &self.p;
        let mid = match p.layer_spans_x0.get(i) {
            Some(s) => 0.5 * (s[0] + s[1]),
            None => (i as f64 + 0.5) * (p.layer_mm / p.x0_mm),
        };
        (mid - t0).max(1e-3)
    }

    pub(crate) fn radial(&self, e_gev: f64, tau: f64) -> Radial {
        let p = &self.p;
        let z = p.z_eff;
        let ln_e = e_gev.ln();
        let mut rc = (0.0251 + 0.00319 * ln_e) + (0.1162 - 0.000381 * z) * tau;
        let k1 = 0.659 - 0.00309 * z;
        let (k2, k3, k4) = (0.645, -2.59, 0.3585 + 0.0412 * ln_e);
        let mut rt = k1 * ((k3 * (tau - k2)).exp() + (k4 * (tau - k2)).exp());
        let (p1, p2, p3) = (
            2.632 - 0.00094 * z,
            0.401 + 0.00187 * z,
            1.313 - 0.0686 * ln_e,
        );
        let arg = (p2 - tau) / p3;
        let mut pc = p1 * (arg - arg.exp()).exp();
        let e_tau = (-tau).exp();
        rc += -0.0203 * (1.0 - p.ehat) + 0.0397 / p.fs * e_tau;
        rt += -0.14 * (1.0 - p.ehat) - 0.495 / p.fs * e_tau;
        pc += (1.0 - p.ehat) * (0.348 - 0.642 / p.fs * (-(tau - 1.0).powi(2)).exp());
        Radial {
            rc: (rc * p.rc_scale).max(1e-4),
            rt: (rt * p.rt_scale).max(1e-4),
            p: (pc + p.p_shift).clamp(0.0, 1.0),
        }
    }

    /// Energy fraction of a layer at depth τ inside radius `r_mm` (mean radial profile).
    pub fn radial_cdf(&self, e_inc: f64, tau: f64, r_mm: f64) -> f64 {
        let rad = self.radial(e_inc / 1000.0, tau);
        let x = r_mm / self.p.rm_mm;
        let f = |r0: f64| x * x / (x * x + r0 * r0);
        rad.p * f(rad.rc) + (1.0 - rad.p) * f(rad.rt)
    }

    /// Simulates one shower of `e_inc` MeV with `rng`, adding voxel energies (MeV, thresholded)
    /// into `out[k]` for mesh k. Returns the total energy deposited by spots before the
    /// threshold and before lateral leakage (the sum of the fluctuated layer energies).
    pub fn shower(&self, e_inc: f64, rng: &mut ChaCha8Rng, out: &mut [&mut [f32]]) -> f64 {
        let p = &self.p;
        let e_gev = e_inc / 1000.0;
        let lon = self.longitudinal(e_inc, Some(rng));
        let layer_e: Vec<f64> = lon
            .layer_energy
            .iter()
            .map(|&e| fluctuate(e / 1000.0, p.c_s, rng) * 1000.0)
            .collect();
        // Spot counts from the spot longitudinal profile.
        let n_spots = p.spot_factor * 10.3 / p.c_s * e_gev.powf(p.spot_exponent);
        let t_s = lon.t * (0.813 + 0.0019 * p.z_eff);
        let a_s = (lon.alpha * (0.844 + 0.0026 * p.z_eff)).max(1.01);
        let b_s = (a_s - 1.0) / t_s;
        let spot_gamma = p.spot_gamma_k.and_then(|k| Gamma::new(k, 1.0 / k).ok());
        let normals = &*NORMAL_PAIRS;
        let mut weights: Vec<f64> = Vec::new();
        let mut total = 0.0;
        for (i, &e_i) in layer_e.iter().enumerate() {
            if e_i <= 0.0 {
                continue;
            }
            let frac = self.layer_fraction(a_s, b_s, i, lon.start_x0);
            total += e_i;
            let n_i = ((n_spots * frac).round() as usize).max(1);
            let t_mid = self.layer_middle(i, lon.start_x0);
            let tau = (t_mid / lon.t)
                * ((lon.alpha - 1.0) / lon.alpha)
                * (lon.alpha_mean / (lon.alpha_mean - 1.0));
            let rad = self.radial(e_gev, tau);
            weights.clear();
            match &spot_gamma {
                Some(gm) => weights.extend((0..n_i).map(|_| gm.sample(rng))),
                None => weights.resize(n_i, 1.0),
            }
            let wsum: f64 = weights.iter().sum();
            let scale = e_i / wsum;
            for &w in weights.iter() {
                let r0 = if rng.random::<f64>() < rad.p {
                    rad.rc
                } else {
                    rad.rt
                };
                let u: f64 = rng.random::<f64>();
                let r_mm = p.rm_mm * r0 * (u / (1.0 - u)).sqrt();
                let phi_u: f64 = rng.random::<f64>();
                let e_spot = w * scale;
                if p.hits_per_spot <= 1 {
                    self.deposit(out, i, r_mm, phi_u, e_spot as f32);
                    continue;
                }
                let e_hit = (e_spot / p.hits_per_spot as f64) as f32;
                let sigma = p.hit_sigma_mm;
                let mut bits = 0u64;
                let mut next_normals = |h: usize| {
                    if h % 5 == 0 {
                        bits = rng.random::<u64>();
                    }
                    let pair = normals[(bits & 0xfff) as usize];
                    bits >>= 12;
                    pair
                };
                if r_mm < 3.0 * sigma {
                    // Near the axis: exact displacement in x, y.
                    let (sn, cs) = (TAU * phi_u - PI).sin_cos();
                    let (x0, y0) = (r_mm * cs, r_mm * sn);
                    for h in 0..p.hits_per_spot {
                        let [nx, ny] = next_normals(h);
                        let (x, y) = (x0 + sigma * nx, y0 + sigma * ny);
                        let u = (fast_atan2(y, x) + PI) * (1.0 / TAU);
                        self.deposit(out, i, (x * x + y * y).sqrt(), u, e_hit);
                    }
                } else {
                    // Further out: the same displacement to first order in σ/r, radial and
                    // tangential (no sqrt or atan2 per hit).
                    let k = sigma / (r_mm * TAU);
                    for h in 0..p.hits_per_spot {
                        let [nx, ny] = next_normals(h);
                        let u = phi_u + k * ny;
                        self.deposit(out, i, (r_mm + sigma * nx).abs(), u - u.floor(), e_hit);
                    }
                }
            }
        }
        let thr = p.threshold_mev as f32;
        for buf in out.iter_mut() {
            for v in buf.iter_mut() {
                if *v < thr {
                    *v = 0.0;
                }
            }
        }
        total
    }

    /// Adds `e` MeV at radius `r_mm`, azimuth fraction `phi_u` ∈ [0, 1) of readout layer
    /// `layer` to every mesh (dropped outside the outer radius).
    #[inline]
    fn deposit(&self, out: &mut [&mut [f32]], layer: usize, r_mm: f64, phi_u: f64, e: f32) {
        for (m, buf) in self.meshes.iter().zip(out.iter_mut()) {
            let Some(l) = m.layers.get(layer) else {
                continue;
            };
            let Some(ir) = l.r_bin(r_mm) else {
                continue;
            };
            let ia = ((phi_u * l.n_alpha as f64) as usize).min(l.n_alpha - 1);
            buf[l.offset + ia * l.n_r() + ir] += e;
        }
    }

    /// Simulates showers for `energies` (MeV): shower k uses its own RNG stream (seed, k), so the
    /// result does not depend on the number of threads. Returns one row-major f32 buffer per
    /// mesh. `progress` is called with the number of showers finished in each block.
    pub fn simulate(
        &self,
        energies: &[f64],
        seed: u64,
        first_index: u64,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Vec<Vec<f32>> {
        let sizes: Vec<usize> = self.meshes.iter().map(|m| m.n_voxels()).collect();
        let mut outs: Vec<Vec<f32>> = sizes
            .iter()
            .map(|&v| vec![0.0f32; v * energies.len()])
            .collect();
        const BLOCK: usize = 16;
        let n_blocks = energies.len().div_ceil(BLOCK);
        // Split every output buffer into per-block chunks so blocks can run in parallel.
        let mut per_block: Vec<Vec<&mut [f32]>> = (0..n_blocks).map(|_| Vec::new()).collect();
        for (k, out) in outs.iter_mut().enumerate() {
            for (b, chunk) in out.chunks_mut(BLOCK * sizes[k]).enumerate() {
                per_block[b].push(chunk);
            }
        }
        per_block
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut bufs)| {
                let start = b * BLOCK;
                let end = (start + BLOCK).min(energies.len());
                for j in start..end {
                    let mut rng = shower_rng(seed, first_index + j as u64);
                    let mut views: Vec<&mut [f32]> = bufs
                        .iter_mut()
                        .zip(&sizes)
                        .map(|(buf, &v)| &mut buf[(j - start) * v..(j - start + 1) * v])
                        .collect();
                    self.shower(energies[j], &mut rng, &mut views);
                }
                progress(end - start);
            });
        outs
    }
}

/// 4096 pairs of standard-normal numbers (fixed seed) from which the hit displacements are
/// picked by a 12-bit random index: a fifth of a u64 per hit instead of two normal draws, and a
/// table that stays in cache.
static NORMAL_PAIRS: std::sync::LazyLock<Vec<[f64; 2]>> = std::sync::LazyLock::new(|| {
    let mut r = ChaCha8Rng::seed_from_u64(0x6e6f726d616c73);
    (0..1 << 12)
        .map(|_| [r.sample(StandardNormal), r.sample(StandardNormal)])
        .collect()
});

/// atan2 to about 1e-5 rad (a minimax polynomial of atan on [0, 1]; glibc's atan2 was 17 % of
/// the simulation time). Hits within 1e-5 rad of an angular bin edge (a fraction ~1e-4) may
/// change bin.
#[inline]
fn fast_atan2(y: f64, x: f64) -> f64 {
    let (ax, ay) = (x.abs(), y.abs());
    let (mn, mx) = if ax < ay { (ax, ay) } else { (ay, ax) };
    if mx == 0.0 {
        return 0.0;
    }
    let z = mn / mx;
    let z2 = z * z;
    let mut a = z
        * (0.99997726
            + z2 * (-0.33262347
                + z2 * (0.19354346 + z2 * (-0.11643287 + z2 * (0.05265332 + z2 * -0.01172120)))));
    if ay > ax {
        a = std::f64::consts::FRAC_PI_2 - a;
    }
    if x < 0.0 {
        a = PI - a;
    }
    if y < 0.0 {
        -a
    } else {
        a
    }
}

/// A layer's energy (GeV) after its sampling fluctuation: Gamma(E/c², c²) keeps the mean, with
/// σ² = c² E.
pub(crate) fn fluctuate(e_gev: f64, c: f64, rng: &mut ChaCha8Rng) -> f64 {
    if e_gev <= 0.0 {
        return 0.0;
    }
    let c2 = c * c;
    Gamma::new(e_gev / c2, c2)
        .map(|g| g.sample(rng))
        .unwrap_or(e_gev)
}

/// The RNG stream of shower `index` under `seed` (the workspace's one per-shower stream).
pub use caloforge_core::rng::shower_rng;

/// Incident energies log-uniform in [lo, hi] MeV (or all equal to lo when lo == hi), drawn from
/// the dedicated energy stream of `seed`.
pub fn log_uniform_energies(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(u64::MAX);
    let (a, b) = (lo.ln(), hi.ln());
    (0..n)
        .map(|_| {
            if lo == hi {
                lo
            } else {
                (a + (b - a) * r.random::<f64>()).exp()
            }
        })
        .collect()
}

/// Showers per incident energy 2^8 … 2^22 MeV in a dataset-1 photon file (121,000 in all).
pub const DS1_ENERGY_COUNTS: [u32; 15] = [
    10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 5_000,
    3_000, 2_000, 1_000,
];

/// `n` incident energies drawn from dataset 1's 15 discrete values 2^8 … 2^22 MeV with the
/// proportions of its photon files ([`DS1_ENERGY_COUNTS`]), from the energy stream of `seed`.
pub fn ds1_energies(n: usize, seed: u64) -> Vec<f64> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(u64::MAX);
    let total: u32 = DS1_ENERGY_COUNTS.iter().sum();
    (0..n)
        .map(|_| {
            let mut u = r.random_range(0..total);
            let mut k = 0;
            while u >= DS1_ENERGY_COUNTS[k] {
                u -= DS1_ENERGY_COUNTS[k];
                k += 1;
            }
            (1u64 << (8 + k)) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(tune: Tune) -> Simulator {
        Simulator::new(
            SimParams::new(tune),
            vec![
                Mesh::of(DatasetKind::Ds2).unwrap(),
                Mesh::of(DatasetKind::Ds3).unwrap(),
            ],
        )
    }

    #[test]
    fn longitudinal_profile_integrates_to_visible_energy() {
        let s = sim(Tune::Stock);
        for e in [1e3, 1e4, 1e5, 1e6] {
            let lon = s.longitudinal(e, None);
            let tot: f64 = lon.layer_energy.iter().sum();
            // 45 layers = 36.3 X0: leakage behind the calorimeter is negligible.
            assert!((tot / (e * s.p.vis_scale) - 1.0).abs() < 1e-3, "{e}: {tot}");
            // Infinite depth integrates exactly to 1.
            let beta = (lon.alpha - 1.0) / lon.t;
            assert!((gamma::gamma_p(lon.alpha, beta * 1e4) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn radial_cdf_is_normalised() {
        let s = sim(Tune::Geant4);
        for tau in [0.1, 0.5, 1.0, 2.0, 4.0] {
            assert!(s.radial_cdf(1e4, tau, 0.0).abs() < 1e-15);
            assert!((s.radial_cdf(1e4, tau, 1e9) - 1.0).abs() < 1e-9);
            let a = s.radial_cdf(1e4, tau, 5.0);
            let b = s.radial_cdf(1e4, tau, 10.0);
            assert!(a > 0.0 && b > a && b < 1.0);
        }
    }

    #[test]
    fn energy_is_conserved_before_threshold_and_leakage() {
        let mut s = sim(Tune::Geant4);
        s.p.threshold_mev = 0.0;
        // A huge mesh radius catches every spot: voxel sum = deposited energy.
        s.meshes = vec![Mesh::uniform(45, 4, 1, 1e12)];
        let mut buf = vec![0.0f32; s.meshes[0].n_voxels()];
        let mut rng = shower_rng(7, 0);
        let dep = s.shower(2e4, &mut rng, &mut [&mut buf]);
        let sum: f64 = buf.iter().map(|&v| v as f64).sum();
        assert!((sum / dep - 1.0).abs() < 1e-5, "{sum} vs {dep}");
        assert!((dep / 2e4 - 0.985).abs() < 0.1);
    }

    #[test]
    fn voxel_layout_is_layer_alpha_r_with_r_fastest() {
        // A one-layer mesh with spots only in the first radial ring shows r fastest.
        let mut s = sim(Tune::Geant4);
        s.p.threshold_mev = 0.0;
        let m = Mesh::uniform(45, 3, 2, 1e12);
        s.meshes = vec![m.clone()];
        let mut buf = vec![0.0f32; m.n_voxels()];
        s.shower(5e3, &mut shower_rng(1, 0), &mut [&mut buf]);
        // Every spot falls in r bin 0 (dr huge): odd indices (r = 1) stay empty.
        assert!(buf.iter().skip(1).step_by(2).all(|&v| v == 0.0));
        // Energy in (layer, alpha) = index (l*3 + a)*2.
        let layer_sum = |l: usize| (0..3).map(|a| buf[(l * 3 + a) * 2] as f64).sum::<f64>();
        assert!(layer_sum(5) > layer_sum(40));
    }

    #[test]
    fn fast_atan2_matches_libm() {
        let mut r = shower_rng(5, 0);
        let mut worst = 0.0f64;
        for _ in 0..100_000 {
            let x: f64 = r.sample::<f64, _>(StandardNormal);
            let y: f64 = r.sample::<f64, _>(StandardNormal);
            worst = worst.max((fast_atan2(y, x) - y.atan2(x)).abs());
        }
        for (y, x) in [
            (0.0, 1.0),
            (1.0, 0.0),
            (0.0, -1.0),
            (-1.0, 0.0),
            (1.0, 1.0),
            (-1.0, -1.0),
        ] {
            worst = worst.max((fast_atan2(y, x) - f64::atan2(y, x)).abs());
        }
        assert!(worst < 2e-5, "{worst}");
    }

    #[test]
    fn deterministic_and_thread_independent() {
        let s = sim(Tune::Geant4);
        let e = log_uniform_energies(40, 1e3, 1e5, 3);
        let a = s.simulate(&e, 11, 0, &|_| {});
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| s.simulate(&e, 11, 0, &|_| {}));
        assert_eq!(a, b);
        let c = s.simulate(&e, 12, 0, &|_| {});
        assert_ne!(a, c);
        // Shower k only depends on (seed, k): simulating a suffix alone gives the same rows.
        let tail = s.simulate(&e[30..], 11, 30, &|_| {});
        assert_eq!(&a[0][30 * 6480..], &tail[0][..]);
    }

    #[test]
    fn mesh_of_dataset1_follows_the_binning() {
        let m = Mesh::of(DatasetKind::Photons1).unwrap();
        assert_eq!(m.n_layers(), 5);
        assert_eq!(m.n_voxels(), 368);
        let offs: Vec<usize> = m.layers.iter().map(|l| l.offset).collect();
        assert_eq!(offs, [0, 8, 168, 358, 363]);
        // Non-uniform radial edges: bins by search, beyond the last edge dropped.
        let l2 = &m.layers[2];
        assert_eq!(l2.n_alpha, 10);
        assert_eq!(l2.r_bin(0.0), Some(0));
        assert_eq!(l2.r_bin(1.99), Some(0));
        assert_eq!(l2.r_bin(2.0), Some(1));
        assert_eq!(l2.r_bin(399.0), Some(18));
        assert_eq!(l2.r_bin(400.0), None);
        // Uniform meshes take the division path and agree with the search.
        let u = &Mesh::of(DatasetKind::Ds2).unwrap().layers[0];
        assert!(u.inv_dr > 0.0);
        let searched = MeshLayer {
            inv_dr: 0.0,
            ..u.clone()
        };
        for r in [0.0, 1.0, 4.64, 20.0, 60.0, 1e3] {
            assert_eq!(u.r_bin(r), searched.r_bin(r), "{r}");
        }
    }

    #[test]
    fn dataset1_photons_conserve_energy_and_convert() {
        let mut p = SimParams::ds1_photons();
        p.threshold_mev = 0.0;
        let mut s = Simulator::new(p, vec![Mesh::of(DatasetKind::Photons1).unwrap()]);
        // Mean profile: the layers and the dead material between them share the energy; the
        // readout sees most of it, and the middle layer the largest part.
        let lon = s.longitudinal(65536.0, None);
        let seen: f64 = lon.layer_energy.iter().sum::<f64>() / 65536.0;
        assert!(seen > 0.85 && seen < 1.0, "{seen}");
        let max = lon.layer_energy.iter().cloned().fold(0.0, f64::max);
        assert_eq!(max, lon.layer_energy[2]);
        // A mesh with huge radii catches every spot: voxel sum = deposited energy.
        s.meshes = vec![Mesh {
            layers: (0..5)
                .map(|l| MeshLayer::new(l * 10, 10, vec![0.0, 1e12]))
                .collect(),
        }];
        let mut buf = vec![0.0f32; 50];
        let dep = s.shower(16384.0, &mut shower_rng(3, 0), &mut [&mut buf]);
        let sum: f64 = buf.iter().map(|&v| v as f64).sum();
        assert!((sum / dep - 1.0).abs() < 1e-5, "{sum} vs {dep}");
        // Conversion depths follow the pair-production length: mean 9/7 X0.
        let n = 4000;
        let mean = (0..n)
            .map(|k| s.longitudinal(1e4, Some(&mut shower_rng(9, k))).start_x0)
            .sum::<f64>()
            / n as f64;
        assert!((mean / (9.0 / 7.0) - 1.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn dataset1_energies_have_the_file_proportions() {
        let e = ds1_energies(121_000, 4);
        assert_eq!(e, ds1_energies(121_000, 4));
        let count = |v: f64| e.iter().filter(|&&x| x == v).count() as f64;
        assert!((count(256.0) / 10_000.0 - 1.0).abs() < 0.05);
        assert!((count(4_194_304.0) / 1_000.0 - 1.0).abs() < 0.15);
        assert_eq!(
            e.iter()
                .filter(|&&x| !(256.0..=4_194_304.0).contains(&x))
                .count(),
            0
        );
    }

    #[test]
    fn pions_are_refused() {
        let err = SimParams::for_dataset(DatasetKind::Pions1, Tune::Geant4).unwrap_err();
        assert!(err.contains("hadronic"), "{err}");
    }
}
