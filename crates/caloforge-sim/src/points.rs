//! Point-cloud showers of several particle types and incident directions in a layered sampling
//! calorimeter described by a configuration file ([`Detector`]: the built-in `ild` and
//! `calochallenge` ones, or any TOML file of the same form).
//!
//! Each shower is a list of points (x, y, layer, E): the cells of the layer's readout grid hit
//! by the shower (energy-summed, above the layer's threshold), at the cell centre, x and y in mm
//! with the particle entering the front face at x = y = 0, E in GeV; the points of a shower are
//! ordered by layer, then x, then y. This is the layout of ShowerData files (AllShowers).
//!
//! # The model
//! Depths are counted along the particle's path: a layer of `absorber_x0` radiation lengths is
//! `absorber_x0 / cos θ` of them for a particle at polar angle θ (likewise in nuclear interaction
//! lengths λ_I). Each readout layer sees the energy deposited in the absorber in front of it
//! (after its section's gap), times the section's sampling fraction.
//!
//! - **Electrons and positrons** (the same model): the GFlash electromagnetic shower of the
//!   voxel simulator ([`crate::Simulator`]): a gamma-distributed longitudinal profile with
//!   correlated log-normal parameters, per-layer sampling fluctuations (σ/E = c_S/√E of the
//!   section), energy carried by spots at the two-component GFlash radial profile scaled by the
//!   section's Molière radius, with uniform azimuth.
//! - **Photons**: the same shower starting at a depth drawn from the pair-production length
//!   (9/7 X0).
//! - **Charged pions**: a minimum-ionising track (one cell per layer, Moyal-distributed signal
//!   around the section's most probable MIP signal, scaled by the path length) up to a first
//!   interaction at an exponentially distributed depth (λ_I). There the energy splits into an
//!   electromagnetic fraction f_em (Beta-distributed around the mean 1 − (E/1 GeV)^−0.18 of
//!   Groom's parametrisation, spread 0.15 at f_em = 0.5), showering as above from the
//!   interaction point, and a hadronic rest, seen with the section's h/e: its longitudinal
//!   profile is a gamma distribution in λ_I with maximum at 0.2 ln E + 0.7 λ_I and an
//!   exponential tail of λ_I·E^0.13 (PDG's parametrisation), both drawn log-normally (30 % and
//!   20 %), its fluctuation per layer 50 %/√E, its energy carried by fewer, clumpier spots
//!   (Gamma(1/2) weights) at a Cauchy-like radial profile r²/(r² + r_h²) whose radius r_h (the
//!   section's `rh_mm`) grows by half per λ_I of depth, to twice its start. Pions that do not
//!   interact leave a track through the whole detector.
//! - **Radial extent**: every radial profile (r²/(r² + R²) in its cumulative form) is drawn
//!   within 10 R, where it holds 99 % of its energy: its tail falls so slowly (its variance is
//!   infinite) that one spot in a million would land metres away, as no calorimeter sees it.
//! - **Tilted showers**: the shower axis crosses layer l at (z_l − z_front)·tan θ·(cos φ, sin φ);
//!   a displacement across the axis is stretched by 1/cos θ along the tilt on the layer plane.
//! - **Readout**: hits are summed in the cells of each section's square grid (`cell_mm`, the grid
//!   shifted at random by up to half a cell per shower and section, as ShowerData's clustering
//!   does; 0: every hit is a point) and cells at or below `threshold_mev` are dropped.
//!
//! # What it cannot reproduce
//! Everything the voxel simulator cannot (see the crate documentation), and for hadrons: no
//! nuclear break-up, neutrons, delayed energy or time; no secondary tracks or separate
//! sub-showers (the hadronic spots are independent around one axis); the electromagnetic and
//! hadronic parts share the axis; f_em's distribution is a Beta, not the measured asymmetric
//! one; the track does not scatter; no energy is lost by the track before the interaction. Use
//! these showers to exercise point-cloud pipelines and models, not as a stand-in for Geant4.

use crate::gamma::gamma_p;
use crate::{fluctuate, log_uniform_energies, shower_rng, SimParams, Simulator, Tune};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gamma, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::f64::consts::TAU;
use std::path::Path;

/// One section of identical layers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub name: String,
    /// Number of readout layers.
    pub layers: usize,
    /// Absorber in front of each layer, in radiation lengths and in nuclear interaction lengths.
    pub absorber_x0: f64,
    pub absorber_lambda: f64,
    /// Dead material in front of the section's first layer.
    #[serde(default)]
    pub gap_x0: f64,
    #[serde(default)]
    pub gap_lambda: f64,
    /// Distance between layer planes (mm), used when the file has no `layer_z_mm`.
    #[serde(default)]
    pub pitch_mm: Option<f64>,
    /// Effective Molière radius (mm) of the electromagnetic radial profile.
    pub rm_mm: f64,
    /// Radius (mm) of the hadronic radial profile at the interaction.
    pub rh_mm: f64,
    /// Visible / deposited energy of electromagnetic showers.
    pub sampling_fraction: f64,
    /// Response to the hadronic part relative to the electromagnetic one.
    #[serde(default = "unit")]
    pub h_over_e: f64,
    /// Stochastic term (√GeV) of the electromagnetic sampling fluctuations.
    pub c_s: f64,
    /// Most probable signal (MeV) of a minimum-ionising particle at normal incidence.
    pub mip_mev: f64,
    /// Cell size (mm) of the readout grid; 0: no grid, every hit is a point.
    pub cell_mm: f64,
    /// Cells at or below this signal (MeV) are not read out.
    pub threshold_mev: f64,
}

fn unit() -> f64 {
    1.0
}

/// Radius, in units of the profile's R, of the Cauchy-like radial profile r²/(r² + R²)
/// (cumulative) at quantile `u` ∈ [0, 1), the profile truncated at [`MAX_RADIUS`] R.
fn cauchy_radius(u: f64) -> f64 {
    const V_MAX: f64 = MAX_RADIUS * MAX_RADIUS / (1.0 + MAX_RADIUS * MAX_RADIUS);
    let v = u * V_MAX;
    (v / (1.0 - v)).sqrt()
}

/// Where the radial profiles are cut, in units of their radius.
pub const MAX_RADIUS: f64 = 10.0;

/// The electromagnetic (GFlash) constants of the stack: the fields of [`SimParams`] of the
/// same names; the defaults are the stock GFlash values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmModel {
    pub z_eff: f64,
    pub ec_mev: f64,
    pub fs: f64,
    pub ehat: f64,
    #[serde(default = "unit")]
    pub t_scale: f64,
    #[serde(default = "unit")]
    pub rc_scale: f64,
    #[serde(default = "unit")]
    pub rt_scale: f64,
    #[serde(default)]
    pub p_shift: f64,
    #[serde(default = "unit")]
    pub spot_factor: f64,
    #[serde(default = "spot_exponent")]
    pub spot_exponent: f64,
    #[serde(default)]
    pub spot_gamma_k: Option<f64>,
}

fn spot_exponent() -> f64 {
    0.959
}

/// A layered calorimeter (see the module documentation); read with [`Detector::load`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detector {
    pub name: String,
    /// z (mm) of the front face, where the particle enters at x = y = 0.
    pub calo_surface_mm: f64,
    /// z (mm) of each layer's plane; without it, from the sections' pitches.
    #[serde(default)]
    pub layer_z_mm: Vec<f64>,
    pub em: EmModel,
    #[serde(rename = "section")]
    pub sections: Vec<Section>,
    /// Section of each layer.
    #[serde(skip)]
    layer_section: Vec<usize>,
    /// Depth (X0, λ_I) at normal incidence where each layer's absorber starts and ends.
    #[serde(skip)]
    x0: Vec<[f64; 2]>,
    #[serde(skip)]
    lambda: Vec<[f64; 2]>,
}

/// Names of the built-in detectors.
pub const BUILTIN_DETECTORS: [&str; 2] = ["ild", "calochallenge"];

impl Detector {
    /// A built-in detector (`ild`, `calochallenge`) or a TOML file; errors name the file and
    /// the problem.
    pub fn load(spec: &str) -> Result<Detector, String> {
        match spec {
            "ild" => Self::from_toml(include_str!("../detectors/ild.toml"), "built-in ild"),
            "calochallenge" => Self::from_toml(
                include_str!("../detectors/calochallenge.toml"),
                "built-in calochallenge",
            ),
            path => {
                let p = Path::new(path);
                if !p.exists() {
                    return Err(format!(
                        "{path}: no such detector file (built-in detectors: {})",
                        BUILTIN_DETECTORS.join(", ")
                    ));
                }
                let text = std::fs::read_to_string(p).map_err(|e| format!("{path}: {e}"))?;
                Self::from_toml(&text, path)
            }
        }
    }

    /// Parses and checks a detector description; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Detector, String> {
        let mut d: Detector = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        let bad = |m: String| Err(format!("{source}: {m}"));
        if d.sections.is_empty() {
            return bad("no [[section]]".into());
        }
        for s in &d.sections {
            let positive = [
                ("absorber_x0", s.absorber_x0),
                ("absorber_lambda", s.absorber_lambda),
                ("rm_mm", s.rm_mm),
                ("rh_mm", s.rh_mm),
                ("sampling_fraction", s.sampling_fraction),
                ("h_over_e", s.h_over_e),
                ("c_s", s.c_s),
                ("mip_mev", s.mip_mev),
            ];
            for (k, v) in positive {
                if !(v.is_finite() && v > 0.0) {
                    return bad(format!("section '{}': {k} must be > 0, got {v}", s.name));
                }
            }
            let non_negative = [
                ("gap_x0", s.gap_x0),
                ("gap_lambda", s.gap_lambda),
                ("cell_mm", s.cell_mm),
                ("threshold_mev", s.threshold_mev),
            ];
            for (k, v) in non_negative {
                if !(v.is_finite() && v >= 0.0) {
                    return bad(format!("section '{}': {k} must be ≥ 0, got {v}", s.name));
                }
            }
            if s.layers == 0 {
                return bad(format!("section '{}' has no layers", s.name));
            }
        }
        let n: usize = d.sections.iter().map(|s| s.layers).sum();
        if n > 1000 {
            return bad(format!("{n} layers; at most 1000"));
        }
        if d.layer_z_mm.is_empty() {
            let mut z = d.calo_surface_mm;
            for s in &d.sections {
                let Some(p) = s.pitch_mm.filter(|p| p.is_finite() && *p > 0.0) else {
                    return bad(format!(
                        "section '{}' needs pitch_mm > 0 when there is no layer_z_mm",
                        s.name
                    ));
                };
                for _ in 0..s.layers {
                    d.layer_z_mm.push(z + 0.5 * p);
                    z += p;
                }
            }
        }
        if d.layer_z_mm.len() != n {
            return bad(format!(
                "layer_z_mm has {} values for {n} layers",
                d.layer_z_mm.len()
            ));
        }
        let mut prev = d.calo_surface_mm;
        for (l, &z) in d.layer_z_mm.iter().enumerate() {
            if !(z.is_finite() && z > prev) {
                return bad(format!(
                    "layer_z_mm[{l}] = {z} is not behind the front face and the layer before"
                ));
            }
            prev = z;
        }
        let em = &d.em;
        for (k, v) in [
            ("z_eff", em.z_eff),
            ("ec_mev", em.ec_mev),
            ("fs", em.fs),
            ("ehat", em.ehat),
            ("t_scale", em.t_scale),
            ("rc_scale", em.rc_scale),
            ("rt_scale", em.rt_scale),
            ("spot_factor", em.spot_factor),
            ("spot_exponent", em.spot_exponent),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("[em] {k} must be > 0, got {v}"));
            }
        }
        if em.spot_gamma_k.is_some_and(|k| !(k.is_finite() && k > 0.0)) {
            return bad("[em] spot_gamma_k must be > 0".into());
        }
        let (mut x0, mut lam) = (0.0, 0.0);
        for (k, s) in d.sections.iter().enumerate() {
            x0 += s.gap_x0;
            lam += s.gap_lambda;
            for _ in 0..s.layers {
                d.layer_section.push(k);
                d.x0.push([x0, x0 + s.absorber_x0]);
                d.lambda.push([lam, lam + s.absorber_lambda]);
                x0 += s.absorber_x0;
                lam += s.absorber_lambda;
            }
        }
        Ok(d)
    }

    /// Number of readout layers.
    pub fn n_layers(&self) -> usize {
        self.layer_section.len()
    }

    /// The section of layer `l`.
    pub fn section(&self, l: usize) -> &Section {
        &self.sections[self.layer_section[l]]
    }

    /// Total depth at normal incidence in X0 and in λ_I.
    pub fn depth(&self) -> (f64, f64) {
        (
            self.x0.last().map_or(0.0, |d| d[1]),
            self.lambda.last().map_or(0.0, |d| d[1]),
        )
    }
}

/// An incident particle type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Particle {
    Electron,
    Positron,
    Photon,
    PionPlus,
    PionMinus,
}

impl Particle {
    /// Every type, in ShowerData's label order.
    pub const ALL: [Particle; 5] = [
        Particle::Electron,
        Particle::Positron,
        Particle::Photon,
        Particle::PionPlus,
        Particle::PionMinus,
    ];

    /// The PDG code.
    pub fn pdg(self) -> i64 {
        match self {
            Particle::Electron => 11,
            Particle::Positron => -11,
            Particle::Photon => 22,
            Particle::PionPlus => 211,
            Particle::PionMinus => -211,
        }
    }

    /// The type of a PDG code, if simulated.
    pub fn from_pdg(pdg: i64) -> Option<Particle> {
        Self::ALL.into_iter().find(|p| p.pdg() == pdg)
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Particle::Electron => "e-",
            Particle::Positron => "e+",
            Particle::Photon => "gamma",
            Particle::PionPlus => "pi+",
            Particle::PionMinus => "pi-",
        }
    }

    fn is_hadron(self) -> bool {
        matches!(self, Particle::PionPlus | Particle::PionMinus)
    }
}

impl std::str::FromStr for Particle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let by_name = match t {
            "e-" | "electron" => Some(Particle::Electron),
            "e+" | "positron" => Some(Particle::Positron),
            "gamma" | "photon" => Some(Particle::Photon),
            "pi+" => Some(Particle::PionPlus),
            "pi-" => Some(Particle::PionMinus),
            _ => None,
        };
        by_name
            .or_else(|| t.parse::<i64>().ok().and_then(Particle::from_pdg))
            .ok_or_else(|| {
                format!("unknown particle '{t}': use e-, e+, gamma, pi+, pi- or their PDG codes")
            })
    }
}

/// One incident particle: energy (GeV), unit direction (z into the detector), type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Incident {
    pub energy_gev: f64,
    pub direction: [f64; 3],
    pub particle: Particle,
}

/// Largest polar angle (degrees) the simulator takes: beyond it the path through one layer
/// grows without bound.
pub const MAX_THETA_DEG: f64 = 80.0;

/// `n` incident particles: energies log-uniform in [lo, hi] GeV (the energy stream of `seed`,
/// as the voxel simulator's), each particle's type uniform over `particles`, polar angle uniform
/// in `theta_deg`, azimuth uniform in `phi_deg` (a stream of their own).
pub fn incidents(
    n: usize,
    particles: &[Particle],
    energy_gev: [f64; 2],
    theta_deg: [f64; 2],
    phi_deg: [f64; 2],
    seed: u64,
) -> Vec<Incident> {
    draw_incidents(n, particles, energy_gev, theta_deg, phi_deg, seed)
        .into_iter()
        .map(|(energy_gev, direction, particle)| Incident {
            energy_gev,
            direction,
            particle,
        })
        .collect()
}

/// The draws of [`incidents`] for any kind of particle label: (energy GeV, unit direction,
/// label) per particle.
pub fn draw_incidents<T: Copy>(
    n: usize,
    kinds: &[T],
    energy_gev: [f64; 2],
    theta_deg: [f64; 2],
    phi_deg: [f64; 2],
    seed: u64,
) -> Vec<(f64, [f64; 3], T)> {
    let energies = log_uniform_energies(n, energy_gev[0], energy_gev[1], seed);
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(u64::MAX - 1);
    let uniform = |[a, b]: [f64; 2], r: &mut ChaCha8Rng| a + (b - a) * r.random::<f64>();
    energies
        .into_iter()
        .map(|e| {
            let kind = kinds[r.random_range(0..kinds.len())];
            let theta = uniform(theta_deg, &mut r).to_radians();
            let phi = uniform(phi_deg, &mut r).to_radians();
            let d = [
                theta.sin() * phi.cos(),
                theta.sin() * phi.sin(),
                theta.cos(),
            ];
            (e, d, kind)
        })
        .collect()
}

/// The point-cloud simulator of one detector.
#[derive(Debug, Clone)]
pub struct PointSimulator {
    pub detector: Detector,
    em: Simulator,
}

/// A hit: layer, x, y (mm), visible energy (MeV).
type Hit = (usize, f64, f64, f64);

/// Geometry of one shower: its path factor and the axis.
struct Track {
    /// 1 / cos θ.
    path: f64,
    /// tan θ (cos φ, sin φ).
    slope: [f64; 2],
    /// Unit vector of the tilt on the layer plane.
    tilt: [f64; 2],
}

impl Track {
    fn new(d: [f64; 3]) -> Track {
        let norm = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        let (dx, dy, dz) = (d[0] / norm, d[1] / norm, d[2] / norm);
        let s = (dx * dx + dy * dy).sqrt();
        Track {
            path: 1.0 / dz,
            slope: [dx / dz, dy / dz],
            tilt: if s > 1e-12 {
                [dx / s, dy / s]
            } else {
                [1.0, 0.0]
            },
        }
    }
}

impl PointSimulator {
    /// The simulator of `detector`.
    pub fn new(detector: Detector) -> PointSimulator {
        let m = &detector.em;
        let p = SimParams {
            z_eff: m.z_eff,
            ec_mev: m.ec_mev,
            fs: m.fs,
            ehat: m.ehat,
            t_scale: m.t_scale,
            rc_scale: m.rc_scale,
            rt_scale: m.rt_scale,
            p_shift: m.p_shift,
            spot_factor: m.spot_factor,
            spot_exponent: m.spot_exponent,
            spot_gamma_k: m.spot_gamma_k,
            ..SimParams::new(Tune::Stock)
        };
        PointSimulator {
            em: Simulator::new(p, Vec::new()),
            detector,
        }
    }

    /// The points (x, y, layer, E GeV; 4 values each) of one shower drawn with `rng`.
    pub fn shower(&self, inc: &Incident, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let tr = Track::new(inc.direction);
        let mut hits: Vec<Hit> = Vec::new();
        match inc.particle {
            Particle::Electron | Particle::Positron => {
                self.em_shower(inc.energy_gev, 0.0, &tr, rng, &mut hits)
            }
            Particle::Photon => {
                let t0 = -(1.0 - rng.random::<f64>()).ln() * 9.0 / 7.0;
                self.em_shower(inc.energy_gev, t0, &tr, rng, &mut hits)
            }
            Particle::PionPlus | Particle::PionMinus => {
                self.hadron_shower(inc.energy_gev, &tr, rng, &mut hits)
            }
        }
        debug_assert!(inc.particle.is_hadron() || !hits.is_empty() || inc.energy_gev <= 0.0);
        self.read_out(hits, rng)
    }

    /// Adds the hits of an electromagnetic shower of `e_gev` starting `t0` X0 along the path.
    fn em_shower(
        &self,
        e_gev: f64,
        t0: f64,
        tr: &Track,
        rng: &mut ChaCha8Rng,
        hits: &mut Vec<Hit>,
    ) {
        let det = &self.detector;
        let p = &self.em.p;
        let e_mev = e_gev * 1000.0;
        let z1: f64 = rng.sample(StandardNormal);
        let z2: f64 = rng.sample(StandardNormal);
        let (t, alpha, a_mean) = self.em.profile(e_mev, z1, z2);
        let beta = (alpha - 1.0) / t;
        let t_s = t * (0.813 + 0.0019 * p.z_eff);
        let a_s = (alpha * (0.844 + 0.0026 * p.z_eff)).max(1.01);
        let b_s = (a_s - 1.0) / t_s;
        let n_spots = p.spot_factor * 10.3 / det.section(0).c_s * e_gev.powf(p.spot_exponent);
        let spot_gamma = p.spot_gamma_k.and_then(|k| Gamma::new(k, 1.0 / k).ok());
        let frac = |shape: f64, rate: f64, [lo, hi]: [f64; 2]| {
            let (a, b) = (lo * tr.path - t0, hi * tr.path - t0);
            let c = |d: f64| {
                if d <= 0.0 {
                    0.0
                } else {
                    gamma_p(shape, rate * d)
                }
            };
            c(b) - c(a)
        };
        for l in 0..det.n_layers() {
            let sec = det.section(l);
            let f = frac(alpha, beta, det.x0[l]);
            if f <= 0.0 {
                continue;
            }
            let dep = fluctuate(e_gev * f, sec.c_s, rng) * 1000.0;
            let vis = dep * sec.sampling_fraction;
            if vis <= 0.0 {
                continue;
            }
            let n_l = ((n_spots * frac(a_s, b_s, det.x0[l])).round() as usize).max(1);
            let mid = (0.5 * (det.x0[l][0] + det.x0[l][1]) * tr.path - t0).max(1e-3);
            let tau = (mid / t) * ((alpha - 1.0) / alpha) * (a_mean / (a_mean - 1.0));
            let rad = self.em.radial(e_gev, tau);
            let weights: Vec<f64> = match &spot_gamma {
                Some(g) => (0..n_l).map(|_| g.sample(rng)).collect(),
                None => vec![1.0; n_l],
            };
            let scale = vis / weights.iter().sum::<f64>();
            for w in weights {
                let r0 = if rng.random::<f64>() < rad.p {
                    rad.rc
                } else {
                    rad.rt
                };
                let r = sec.rm_mm * r0 * cauchy_radius(rng.random());
                self.push_hit(hits, tr, l, r, rng.random(), w * scale);
            }
        }
    }

    /// Adds the hits of a charged pion of `e_gev`: its track, then (if it interacts inside the
    /// detector) its electromagnetic and hadronic parts.
    fn hadron_shower(&self, e_gev: f64, tr: &Track, rng: &mut ChaCha8Rng, hits: &mut Vec<Hit>) {
        let det = &self.detector;
        let t_int = -(1.0 - rng.random::<f64>()).ln(); // λ_I along the path
        let n = det.n_layers();
        // The track: every layer whose absorber starts before the interaction.
        let mut first = n;
        for l in 0..n {
            let [lo, hi] = det.lambda[l].map(|d| d * tr.path);
            if lo >= t_int {
                first = l;
                break;
            }
            let z: f64 = rng.sample(StandardNormal);
            let moyal = -(z * z).max(1e-300).ln();
            let sec = det.section(l);
            let e = sec.mip_mev * tr.path * (1.0 + 0.1 * moyal).clamp(0.2, 20.0);
            self.push_hit(hits, tr, l, 0.0, 0.0, e);
            if hi >= t_int {
                first = l;
                break;
            }
        }
        if first == n {
            return; // no interaction in the detector
        }
        // Depth of the interaction in X0 along the path.
        let [llo, lhi] = det.lambda[first];
        let [xlo, xhi] = det.x0[first];
        let along = ((t_int / tr.path - llo) / (lhi - llo)).clamp(0.0, 1.0);
        let x0_int = (xlo + along * (xhi - xlo)) * tr.path;
        // Electromagnetic fraction.
        let m = (1.0 - e_gev.max(1.0).powf(-0.18)).clamp(0.05, 0.95);
        let kappa = 10.0;
        let f_em = Beta::new(kappa * m, kappa * (1.0 - m))
            .map(|b| b.sample(rng))
            .unwrap_or(m);
        self.em_shower(f_em * e_gev, x0_int, tr, rng, hits);
        // The hadronic rest.
        let e_h = (1.0 - f_em) * e_gev;
        if e_h <= 0.0 {
            return;
        }
        let z3: f64 = rng.sample(StandardNormal);
        let z4: f64 = rng.sample(StandardNormal);
        let e_ref = e_gev.max(1.0);
        let t_max = (0.2 * e_ref.ln() + 0.7) * (0.3 * z3).exp();
        let lam_att = e_ref.powf(0.13) * (0.2 * z4).exp();
        let beta = 1.0 / lam_att;
        let alpha = 1.0 + t_max * beta;
        let n_spots = (30.0 * e_h.powf(0.8)).max(1.0);
        let clump = Gamma::new(0.5, 2.0).expect("valid Gamma");
        for l in first..n {
            let sec = det.section(l);
            let [lo, hi] = det.lambda[l].map(|d| d * tr.path - t_int);
            let c = |d: f64| {
                if d <= 0.0 {
                    0.0
                } else {
                    gamma_p(alpha, beta * d)
                }
            };
            let f = c(hi) - c(lo);
            if f <= 0.0 {
                continue;
            }
            let vis = fluctuate(e_h * f, 0.5, rng) * 1000.0 * sec.sampling_fraction * sec.h_over_e;
            if vis <= 0.0 {
                continue;
            }
            let n_l = ((n_spots * f).round() as usize).max(1);
            let depth = (0.5 * (lo + hi)).max(0.0);
            let r_h = sec.rh_mm * (1.0 + 0.5 * depth).min(2.0);
            let weights: Vec<f64> = (0..n_l).map(|_| clump.sample(rng) + 1e-12).collect();
            let scale = vis / weights.iter().sum::<f64>();
            for w in weights {
                let r = r_h * cauchy_radius(rng.random());
                self.push_hit(hits, tr, l, r, rng.random(), w * scale);
            }
        }
    }

    /// A hit at distance `r` (mm, across the axis) and azimuth fraction `phi_u` from the axis in
    /// layer `l`, projected onto the layer's plane.
    fn push_hit(&self, hits: &mut Vec<Hit>, tr: &Track, l: usize, r: f64, phi_u: f64, e: f64) {
        let depth = self.detector.layer_z_mm[l] - self.detector.calo_surface_mm;
        let (s, c) = (TAU * phi_u).sin_cos();
        // Across the axis: along the tilt (stretched by 1/cos θ) and perpendicular to it.
        let (a, b) = (r * c * tr.path, r * s);
        let x = depth * tr.slope[0] + a * tr.tilt[0] - b * tr.tilt[1];
        let y = depth * tr.slope[1] + a * tr.tilt[1] + b * tr.tilt[0];
        hits.push((l, x, y, e));
    }

    /// Sums the hits into cells (each section's grid shifted at random), drops the cells at or
    /// below threshold, and returns the points.
    fn read_out(&self, hits: Vec<Hit>, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let det = &self.detector;
        let shifts: Vec<[f64; 2]> = det
            .sections
            .iter()
            .map(|s| {
                let c = s.cell_mm;
                [
                    (rng.random::<f64>() - 0.5) * c,
                    (rng.random::<f64>() - 0.5) * c,
                ]
            })
            .collect();
        // (layer, cell x, cell y, energy), or the hit itself without a grid.
        let mut cells: Vec<(usize, i64, i64, f64, f64, f64)> = hits
            .into_iter()
            .map(|(l, x, y, e)| {
                let k = det.layer_section[l];
                let c = det.sections[k].cell_mm;
                if c > 0.0 {
                    let [sx, sy] = shifts[k];
                    let (ix, iy) = (((x + sx) / c).floor(), ((y + sy) / c).floor());
                    (
                        l,
                        ix as i64,
                        iy as i64,
                        (ix + 0.5) * c - sx,
                        (iy + 0.5) * c - sy,
                        e,
                    )
                } else {
                    (l, i64::MIN, i64::MIN, x, y, e)
                }
            })
            .collect();
        cells.sort_by(|a, b| {
            (a.0, a.1, a.2)
                .cmp(&(b.0, b.1, b.2))
                .then(a.3.total_cmp(&b.3))
                .then(a.4.total_cmp(&b.4))
        });
        let mut points = Vec::with_capacity(4 * cells.len());
        let mut i = 0;
        while i < cells.len() {
            let (l, ix, iy, x, y, mut e) = cells[i];
            let mut j = i + 1;
            if ix != i64::MIN {
                while j < cells.len() && (cells[j].0, cells[j].1, cells[j].2) == (l, ix, iy) {
                    e += cells[j].5;
                    j += 1;
                }
            }
            if e > det.section(l).threshold_mev {
                points.extend_from_slice(&[x as f32, y as f32, l as f32, (e / 1000.0) as f32]);
            }
            i = j;
        }
        points
    }

    /// Simulates `incidents`: shower k uses RNG stream (seed, first_index + k), so the result
    /// does not depend on the number of threads. `progress` gets the showers finished per block.
    pub fn simulate(
        &self,
        incidents: &[Incident],
        seed: u64,
        first_index: u64,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Vec<Vec<f32>> {
        const BLOCK: usize = 16;
        incidents
            .par_chunks(BLOCK)
            .enumerate()
            .flat_map_iter(|(b, chunk)| {
                let out: Vec<Vec<f32>> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, inc)| {
                        let k = first_index + (b * BLOCK + j) as u64;
                        self.shower(inc, &mut shower_rng(seed, k))
                    })
                    .collect();
                progress(chunk.len());
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
