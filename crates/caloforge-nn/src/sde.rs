//! Continuous-time score-based diffusion (Song et al. 2021, as CaloScore v1 codes it): the VP,
//! sub-VP and VE stochastic differential equations, the predictor-corrector sampler, the
//! probability-flow ODE sampler and the exact log-likelihood through that ODE (Hutchinson or
//! exact trace of the Jacobian).
//!
//! Constants and formulas follow `ViniciusMikuni/CaloScore/scripts/CaloScore.py` (see
//! `docs/design/caloscore.md` §1): VP and sub-VP with β linear in [0.1, 20], VE with σ in
//! [0.01, 50], the reference's small-exponent branches of the marginal, and its
//! predictor-corrector loop, which evaluates the score once per step and uses it for both the
//! Langevin corrector and the Euler–Maruyama predictor ([`PcVariant::Reference`]).
//!
//! The samplers work on row-major batches and take the network through [`Score`] (per-row time
//! and the row's index in the batch, so a model finds its condition). Row k draws its noise from
//! its own RNG stream and, in the adaptive ODE solver, takes its own steps, so results do not
//! depend on the batch split (except with [`StepNorm::BatchMean`], the reference's batch-wide
//! Langevin step, offered for fidelity).

use crate::diffusion::normals;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A forward noising SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, 1], with f linear in x.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Sde {
    /// Variance preserving: f = −½β(t)x, g = √β(t), β(t) = β_min + t(β_max − β_min).
    Vp {
        /// β(0).
        beta_min: f64,
        /// β(1).
        beta_max: f64,
    },
    /// Sub-variance preserving: the VP drift, g = √(β(t)(1 − e^{−2∫β})), std = 1 − e^{−∫β}.
    SubVp {
        /// β(0).
        beta_min: f64,
        /// β(1).
        beta_max: f64,
    },
    /// Variance exploding: f = 0, σ(t) = σ_min (σ_max/σ_min)^t, g = σ(t)√(2 ln(σ_max/σ_min)).
    Ve {
        /// σ(0).
        sigma_min: f64,
        /// σ(1).
        sigma_max: f64,
    },
}

impl Sde {
    /// CaloScore's VP SDE (β ∈ [0.1, 20]).
    pub fn vp() -> Self {
        Sde::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }

    /// CaloScore's sub-VP SDE (β ∈ [0.1, 20]).
    pub fn sub_vp() -> Self {
        Sde::SubVp {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }

    /// CaloScore's VE SDE (σ ∈ [0.01, 50]).
    pub fn ve() -> Self {
        Sde::Ve {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
    }

    /// Log of the mean coefficient of the VP family, −¼t²(β_max − β_min) − ½tβ_min.
    fn lmc(b0: f64, b1: f64, t: f64) -> f64 {
        -0.25 * t * t * (b1 - b0) - 0.5 * t * b0
    }

    /// The marginal of x_t given x_0: x_t = m(t)·x_0 + s(t)·z; returns (m, s), with the
    /// reference's first-order branches where |log m| ≤ 1e-3.
    pub fn marginal(&self, t: f64) -> (f64, f64) {
        match *self {
            Sde::Vp { beta_min, beta_max } | Sde::SubVp { beta_min, beta_max } => {
                let l = Self::lmc(beta_min, beta_max, t);
                let small = l.abs() <= 1e-3;
                let m = if small { 1.0 + l } else { l.exp() };
                let s = match (self, small) {
                    (Sde::Vp { .. }, true) => (-2.0 * l).sqrt(),
                    (Sde::Vp { .. }, false) => (1.0 - (2.0 * l).exp()).sqrt(),
                    (_, true) => -2.0 * l,
                    (_, false) => 1.0 - (2.0 * l).exp(),
                };
                (m, s)
            }
            Sde::Ve {
                sigma_min,
                sigma_max,
            } => (1.0, sigma_min * (sigma_max / sigma_min).powf(t)),
        }
    }

    /// (c, g) with drift f(x, t) = c·x and diffusion g(t).
    pub fn drift_diffusion(&self, t: f64) -> (f64, f64) {
        match *self {
            Sde::Vp { beta_min, beta_max } => {
                let b = beta_min + t * (beta_max - beta_min);
                (-0.5 * b, b.sqrt())
            }
            Sde::SubVp { beta_min, beta_max } => {
                let b = beta_min + t * (beta_max - beta_min);
                let e = -2.0 * beta_min * t - (beta_max - beta_min) * t * t;
                let discount = if e.abs() <= 1e-3 { -e } else { 1.0 - e.exp() };
                (-0.5 * b, (b * discount).sqrt())
            }
            Sde::Ve {
                sigma_min,
                sigma_max,
            } => {
                let r = (sigma_max / sigma_min).ln();
                (
                    0.0,
                    sigma_min * (sigma_max / sigma_min).powf(t) * (2.0 * r).sqrt(),
                )
            }
        }
    }

    /// Standard deviation of the prior N(0, s²) at t = 1: 1, or σ_max for VE.
    pub fn prior_std(&self) -> f64 {
        match *self {
            Sde::Ve { sigma_max, .. } => sigma_max,
            _ => 1.0,
        }
    }

    /// log N(z; 0, prior_std²) of one row.
    pub fn prior_logp(&self, z: &[f64]) -> f64 {
        normal_logp(z, self.prior_std())
    }

    /// Per-step α of the reference's Langevin corrector (1 − β_i/N for VP and sub-VP, 1 for VE),
    /// indexed by the step from t = 0. With fewer steps than β_max (N < 20) this discretisation
    /// turns negative at large t; α is then clamped to 0 (no corrector move) instead of the
    /// reference's NaN.
    fn corrector_alphas(&self, n: usize) -> Vec<f64> {
        match *self {
            Sde::Vp { beta_min, beta_max } | Sde::SubVp { beta_min, beta_max } => (0..n)
                .map(|i| {
                    let f = if n > 1 {
                        i as f64 / (n - 1) as f64
                    } else {
                        0.0
                    };
                    (1.0 - (beta_min + f * (beta_max - beta_min)) / n as f64).max(0.0)
                })
                .collect(),
            Sde::Ve { .. } => vec![1.0; n],
        }
    }
}

/// log N(z; 0, s²·I) of one row.
pub fn normal_logp(z: &[f64], s: f64) -> f64 {
    let d = z.len() as f64;
    -0.5 * d * (2.0 * std::f64::consts::PI * s * s).ln()
        - z.iter().map(|v| v * v).sum::<f64>() / (2.0 * s * s)
}

/// A score network s(x, t) ≈ ∇ₓ log p_t(x).
pub trait Score {
    /// Scores of the rows of `x` (row-major, `rows.len()` rows); `t[k]` is row k's time and
    /// `rows[k]` its index in the batch being sampled (to look up its condition).
    fn score(&mut self, x: &[f32], t: &[f64], rows: &[usize]) -> Vec<f32>;
}

/// A score network that also gives vector-Jacobian products (for the likelihood's divergence).
pub trait ScoreVjp: Score {
    /// The scores and, per row, vᵀ ∂s/∂x (same layout as `x`).
    fn score_vjp(
        &mut self,
        x: &[f32],
        t: &[f64],
        rows: &[usize],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>);
}

/// Which predictor-corrector loop to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcVariant {
    /// CaloScore's loop: one score per step, computed before the corrector and reused by the
    /// predictor after the corrector has moved x (one network call per step).
    Reference,
    /// Song et al.'s loop: the corrector and the predictor each evaluate the score at the
    /// current x (two network calls per step).
    Fresh,
}

/// How the Langevin step size ε = 2α(snr·‖ξ‖/‖s‖)² takes its norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepNorm {
    /// Each row its own norms (samples independent of the batch split; caloforge's default).
    PerShower,
    /// The reference's batch means of the per-row norms (samples depend on the batch).
    BatchMean,
}

/// Settings of [`pc_sample`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcConfig {
    /// Predictor steps N (times linspace(1, eps, N)).
    pub steps: usize,
    /// Signal-to-noise ratio of the Langevin corrector.
    pub snr: f64,
    /// Last time of the grid.
    pub eps: f64,
    /// Loop variant.
    pub variant: PcVariant,
    /// Langevin step norms.
    pub step_norm: StepNorm,
}

impl Default for PcConfig {
    /// CaloScore's dataset-2 sampler: 200 steps, snr 0.2, eps 1e-3, the reference loop.
    fn default() -> Self {
        PcConfig {
            steps: 200,
            snr: 0.2,
            eps: 1e-3,
            variant: PcVariant::Reference,
            step_norm: StepNorm::PerShower,
        }
    }
}

impl PcConfig {
    /// Network calls per sample.
    pub fn calls(&self) -> usize {
        match self.variant {
            PcVariant::Reference => self.steps,
            PcVariant::Fresh => 2 * self.steps,
        }
    }
}

fn row_norms(v: &[f32], d: usize) -> Vec<f64> {
    v.chunks(d)
        .map(|r| r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt())
        .collect()
}

/// One Langevin corrector move x ← x + ε s + √(2ε) ξ, ε = 2α(snr‖ξ‖/‖s‖)².
fn langevin(x: &mut [f32], s: &[f32], xi: &[f32], d: usize, alpha: f64, cfg: &PcConfig) {
    let (mut gn, mut nn) = (row_norms(s, d), row_norms(xi, d));
    if cfg.step_norm == StepNorm::BatchMean {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (g, n) = (mean(&gn), mean(&nn));
        gn.iter_mut().for_each(|v| *v = g);
        nn.iter_mut().for_each(|v| *v = n);
    }
    for (r, ((xr, sr), xir)) in x
        .chunks_mut(d)
        .zip(s.chunks(d))
        .zip(xi.chunks(d))
        .enumerate()
    {
        let step = if gn[r] > 0.0 {
            2.0 * alpha * (cfg.snr * nn[r] / gn[r]).powi(2)
        } else {
            0.0
        };
        let noise = (2.0 * step).sqrt();
        for ((xv, &sv), &zv) in xr.iter_mut().zip(sr).zip(xir) {
            *xv = (*xv as f64 + step * sv as f64 + noise * zv as f64) as f32;
        }
    }
}

/// Predictor-corrector sampling of `rngs.len()` samples of dimension `d` from the prior at
/// t = 1 down to t = eps (CaloScore's `PCSampler`); returns the last predictor mean (no noise on
/// the last step).
pub fn pc_sample(
    sde: &Sde,
    d: usize,
    cfg: &PcConfig,
    rngs: &mut [ChaCha8Rng],
    score: &mut dyn Score,
) -> Vec<f32> {
    let n = rngs.len();
    let steps = cfg.steps.max(2);
    let rows: Vec<usize> = (0..n).collect();
    let mut x = vec![0.0f32; n * d];
    normals(rngs, d, &mut x);
    let p = sde.prior_std() as f32;
    x.iter_mut().for_each(|v| *v *= p);
    let dt = (1.0 - cfg.eps) / (steps - 1) as f64;
    let alphas = sde.corrector_alphas(steps);
    let (mut z, mut xi) = (vec![0.0f32; n * d], vec![0.0f32; n * d]);
    let mut x_mean = x.clone();
    for i in 0..steps {
        let t = 1.0 - i as f64 * dt;
        let tv = vec![t; n];
        normals(rngs, d, &mut z);
        normals(rngs, d, &mut xi);
        let s = score.score(&x, &tv, &rows);
        langevin(&mut x, &s, &xi, d, alphas[steps - 1 - i], cfg);
        let s = match cfg.variant {
            PcVariant::Reference => s,
            PcVariant::Fresh => score.score(&x, &tv, &rows),
        };
        let (c, g) = sde.drift_diffusion(t);
        let sd = g * dt.sqrt();
        for k in 0..n * d {
            let m = x[k] as f64 - (c * x[k] as f64 - g * g * s[k] as f64) * dt;
            x_mean[k] = m as f32;
            x[k] = (m + sd * z[k] as f64) as f32;
        }
    }
    x_mean
}

/// An ODE solver for the probability flow.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OdeSolver {
    /// Explicit Euler with a fixed number of steps.
    Euler {
        /// Steps.
        steps: usize,
    },
    /// Heun's second-order method with a fixed number of steps (2 calls per step): the
    /// few-step sampler.
    Heun {
        /// Steps.
        steps: usize,
    },
    /// Adaptive Dormand–Prince 5(4), each sample with its own step size (as Song et al.'s
    /// scipy RK45, tolerances on every component).
    Rk45 {
        /// Relative tolerance.
        rtol: f64,
        /// Absolute tolerance.
        atol: f64,
    },
}

impl Default for OdeSolver {
    /// RK45 with rtol = atol = 1e-5 (Song et al.'s likelihood settings).
    fn default() -> Self {
        OdeSolver::Rk45 {
            rtol: 1e-5,
            atol: 1e-5,
        }
    }
}

const DP_C: [f64; 6] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0];
const DP_A: [[f64; 5]; 6] = [
    [0.0; 5],
    [0.2, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
];
const DP_B: [f64; 6] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];
/// 5th- minus 4th-order weights (the 7th stage's weight in the 4th-order pair is −1/40).
const DP_E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

/// Right-hand side of an ODE over rows: dy/dt for the rows `rows` of width `w` at times `t`.
pub type Rhs<'a> = dyn FnMut(&[f64], &[f64], &[usize]) -> Vec<f64> + 'a;

/// Integrates dy/dt = rhs(y, t) for every row (width `w`) of `y` from t0 to t1; returns the
/// rows at t1 and each row's number of right-hand-side evaluations.
pub fn integrate(
    y: &mut [f64],
    w: usize,
    t0: f64,
    t1: f64,
    solver: &OdeSolver,
    rhs: &mut Rhs,
) -> Vec<usize> {
    let n = y.len() / w;
    let all: Vec<usize> = (0..n).collect();
    let mut calls = vec![0usize; n];
    match *solver {
        OdeSolver::Euler { steps } | OdeSolver::Heun { steps } => {
            let heun = matches!(solver, OdeSolver::Heun { .. });
            let steps = steps.max(1);
            let h = (t1 - t0) / steps as f64;
            for i in 0..steps {
                let t = t0 + i as f64 * h;
                let k1 = rhs(y, &vec![t; n], &all);
                if heun {
                    let y2: Vec<f64> = y.iter().zip(&k1).map(|(a, k)| a + h * k).collect();
                    let k2 = rhs(&y2, &vec![t + h; n], &all);
                    for ((v, a), b) in y.iter_mut().zip(&k1).zip(&k2) {
                        *v += 0.5 * h * (a + b);
                    }
                } else {
                    y.iter_mut().zip(&k1).for_each(|(v, k)| *v += h * k);
                }
            }
            let per = if heun { 2 * steps } else { steps };
            calls.iter_mut().for_each(|c| *c = per);
        }
        OdeSolver::Rk45 { rtol, atol } => {
            let span = t1 - t0;
            let dir = span.signum();
            let min_h = span.abs() * 1e-9;
            let mut t = vec![t0; n];
            let mut h = vec![span * 1e-2; n];
            let mut k1 = rhs(y, &t, &all);
            calls.iter_mut().for_each(|c| *c += 1);
            let mut active: Vec<usize> = (0..n).collect();
            while !active.is_empty() {
                let m = active.len();
                for &r in &active {
                    if (t[r] + h[r] - t1) * dir > 0.0 {
                        h[r] = t1 - t[r];
                    }
                }
                let y0: Vec<f64> = active
                    .iter()
                    .flat_map(|&r| y[r * w..(r + 1) * w].iter().copied())
                    .collect();
                let mut ks: Vec<Vec<f64>> = vec![active
                    .iter()
                    .flat_map(|&r| k1[r * w..(r + 1) * w].iter().copied())
                    .collect()];
                for s in 1..6 {
                    let mut ys = y0.clone();
                    for (j, &r) in active.iter().enumerate() {
                        for (p, &a) in DP_A[s][..s].iter().enumerate() {
                            if a != 0.0 {
                                for q in 0..w {
                                    ys[j * w + q] += h[r] * a * ks[p][j * w + q];
                                }
                            }
                        }
                    }
                    let ts: Vec<f64> = active.iter().map(|&r| t[r] + DP_C[s] * h[r]).collect();
                    ks.push(rhs(&ys, &ts, &active));
                }
                let mut y5 = y0.clone();
                for (j, &r) in active.iter().enumerate() {
                    for q in 0..w {
                        let mut acc = 0.0;
                        for (s, &b) in DP_B.iter().enumerate() {
                            acc += b * ks[s][j * w + q];
                        }
                        y5[j * w + q] += h[r] * acc;
                    }
                }
                let ts: Vec<f64> = active.iter().map(|&r| t[r] + h[r]).collect();
                let k7 = rhs(&y5, &ts, &active);
                let mut next = Vec::with_capacity(m);
                for (j, &r) in active.iter().enumerate() {
                    calls[r] += 6;
                    let mut err = 0.0;
                    for q in 0..w {
                        let mut e = DP_E[6] * k7[j * w + q];
                        for (s, &c) in DP_E[..6].iter().enumerate() {
                            e += c * ks[s][j * w + q];
                        }
                        let scale = atol + rtol * y0[j * w + q].abs().max(y5[j * w + q].abs());
                        err += (h[r] * e / scale).powi(2);
                    }
                    let err = (err / w as f64).sqrt();
                    let forced = h[r].abs() <= min_h;
                    if err <= 1.0 || forced {
                        t[r] += h[r];
                        y[r * w..(r + 1) * w].copy_from_slice(&y5[j * w..(j + 1) * w]);
                        k1[r * w..(r + 1) * w].copy_from_slice(&k7[j * w..(j + 1) * w]);
                        let done = (t1 - t[r]) * dir <= min_h;
                        let grow = if err > 0.0 {
                            (0.9 * err.powf(-0.2)).clamp(0.2, 10.0)
                        } else {
                            10.0
                        };
                        h[r] *= grow;
                        if !done {
                            next.push(r);
                        }
                    } else {
                        h[r] *= (0.9 * err.powf(-0.2)).clamp(0.2, 1.0);
                        if h[r].abs() < min_h {
                            h[r] = min_h * dir;
                        }
                        next.push(r);
                    }
                }
                active = next;
            }
        }
    }
    calls
}

/// The probability-flow drift F(x, t) = f(x, t) − ½g(t)² s(x, t) of the rows of `x`.
fn flow_drift(sde: &Sde, x: &[f64], s: &[f32], t: &[f64], d: usize, w: usize, out: &mut [f64]) {
    for (j, &tj) in t.iter().enumerate() {
        let (c, g) = sde.drift_diffusion(tj);
        for q in 0..d {
            out[j * w + q] = c * x[j * w + q] - 0.5 * g * g * s[j * d + q] as f64;
        }
    }
}

fn to_f32_rows(y: &[f64], w: usize, d: usize) -> Vec<f32> {
    y.chunks(w)
        .flat_map(|r| r[..d].iter().map(|&v| v as f32))
        .collect()
}

/// Samples by integrating the probability-flow ODE from the prior at t = 1 down to t = eps;
/// returns the samples and each one's number of network calls.
pub fn ode_sample(
    sde: &Sde,
    d: usize,
    solver: &OdeSolver,
    eps: f64,
    rngs: &mut [ChaCha8Rng],
    score: &mut dyn Score,
) -> (Vec<f32>, Vec<usize>) {
    let n = rngs.len();
    let mut z = vec![0.0f32; n * d];
    normals(rngs, d, &mut z);
    let p = sde.prior_std();
    let mut y: Vec<f64> = z.iter().map(|&v| v as f64 * p).collect();
    let calls = integrate(&mut y, d, 1.0, eps, solver, &mut |y, t, rows| {
        let s = score.score(&to_f32_rows(y, d, d), t, rows);
        let mut out = vec![0.0; y.len()];
        flow_drift(sde, y, &s, t, d, d, &mut out);
        out
    });
    (y.iter().map(|&v| v as f32).collect(), calls)
}

/// How the likelihood takes the divergence of the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trace {
    /// Hutchinson's estimator vᵀ(∂s/∂x)v with one Rademacher v per row, fixed along the ODE
    /// (one vector-Jacobian product per evaluation; unbiased).
    Hutchinson,
    /// The exact trace (d vector-Jacobian products per evaluation; small dimensions).
    Exact,
}

/// The result of [`log_likelihood`].
#[derive(Debug, Clone)]
pub struct Likelihood {
    /// log p_eps(x) per row, nats.
    pub log_likelihood: Vec<f64>,
    /// Network evaluations per row.
    pub calls: Vec<usize>,
}

/// An ODE velocity field F(x, t) with vector-Jacobian products: the probability flow of a
/// diffusion model, for [`flow_log_likelihood`].
pub trait VelocityVjp {
    /// F of the rows of `x` (row-major, `rows.len()` rows, times `t`, batch indices `rows`, as
    /// in [`Score::score`]) and, per row, vᵀ ∂F/∂x (same layout as `x`).
    fn velocity_vjp(
        &mut self,
        x: &[f32],
        t: &[f64],
        rows: &[usize],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>);
}

/// log p(x) of each row of `x` (dimension `d`) under the model: the probability-flow ODE
/// integrated from t = eps to 1 with the divergence of its drift,
/// log p_eps(x) = log p_1(x(1)) + ∫_eps^1 ∇·F(x(t), t) dt.
#[allow(clippy::too_many_arguments)]
pub fn log_likelihood(
    sde: &Sde,
    x: &[f32],
    d: usize,
    solver: &OdeSolver,
    eps: f64,
    trace: Trace,
    rngs: &mut [ChaCha8Rng],
    model: &mut dyn ScoreVjp,
) -> Likelihood {
    let mut flow = ScoreFlow { sde, model };
    flow_log_likelihood(
        x,
        d,
        solver,
        (eps, 1.0),
        &|z| sde.prior_logp(z),
        trace,
        rngs,
        &mut flow,
    )
}

/// The probability flow F = f(x, t) − ½g(t)² s(x, t) of a score model.
struct ScoreFlow<'a> {
    sde: &'a Sde,
    model: &'a mut dyn ScoreVjp,
}

impl VelocityVjp for ScoreFlow<'_> {
    fn velocity_vjp(
        &mut self,
        x: &[f32],
        t: &[f64],
        rows: &[usize],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let d = x.len() / t.len().max(1);
        let (mut s, mut vj) = self.model.score_vjp(x, t, rows, v);
        for (j, &tj) in t.iter().enumerate() {
            let (c, g) = self.sde.drift_diffusion(tj);
            let h = 0.5 * g * g;
            for q in j * d..(j + 1) * d {
                s[q] = (c * x[q] as f64 - h * s[q] as f64) as f32;
                vj[q] = (c * v[q] as f64 - h * vj[q] as f64) as f32;
            }
        }
        (s, vj)
    }
}

/// log p(x) of each row of `x` (dimension `d`) under an ODE flow dx/dt = F(x, t) whose
/// marginal at `span.1` has the log-density `prior_logp`: x is carried from `span.0` to
/// `span.1` with the divergence of F, log p(x) = prior_logp(x(span.1)) + ∫ ∇·F dt
/// (Hutchinson's estimator with one Rademacher probe per row drawn from its stream in `rngs`,
/// fixed along the path, or the exact trace).
#[allow(clippy::too_many_arguments)]
pub fn flow_log_likelihood(
    x: &[f32],
    d: usize,
    solver: &OdeSolver,
    span: (f64, f64),
    prior_logp: &dyn Fn(&[f64]) -> f64,
    trace: Trace,
    rngs: &mut [ChaCha8Rng],
    model: &mut dyn VelocityVjp,
) -> Likelihood {
    let w = d + 1;
    let probes: Vec<f32> = rngs
        .iter_mut()
        .flat_map(|r| {
            (0..d)
                .map(|_| if r.random::<bool>() { 1.0f32 } else { -1.0 })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut y: Vec<f64> = x
        .chunks(d)
        .flat_map(|r| r.iter().map(|&v| v as f64).chain(std::iter::once(0.0)))
        .collect();
    let calls = integrate(&mut y, w, span.0, span.1, solver, &mut |y, t, rows| {
        let m = rows.len();
        let xs = to_f32_rows(y, w, d);
        let (f, div) = match trace {
            Trace::Hutchinson => {
                let v: Vec<f32> = rows
                    .iter()
                    .flat_map(|&r| probes[r * d..(r + 1) * d].iter().copied())
                    .collect();
                let (f, vj) = model.velocity_vjp(&xs, t, rows, &v);
                let div: Vec<f64> = vj
                    .chunks(d)
                    .zip(v.chunks(d))
                    .map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum())
                    .collect();
                (f, div)
            }
            Trace::Exact => {
                let mut xr = Vec::with_capacity(m * d * d);
                let (mut tr, mut rr) = (Vec::with_capacity(m * d), Vec::with_capacity(m * d));
                let mut v = vec![0.0f32; m * d * d];
                for j in 0..m {
                    for k in 0..d {
                        xr.extend_from_slice(&xs[j * d..(j + 1) * d]);
                        tr.push(t[j]);
                        rr.push(rows[j]);
                        v[(j * d + k) * d + k] = 1.0;
                    }
                }
                let (f, vj) = model.velocity_vjp(&xr, &tr, &rr, &v);
                let div = (0..m)
                    .map(|j| (0..d).map(|k| vj[(j * d + k) * d + k] as f64).sum())
                    .collect();
                let f = (0..m)
                    .flat_map(|j| f[j * d * d..j * d * d + d].iter().copied())
                    .collect();
                (f, div)
            }
        };
        let mut out = vec![0.0; y.len()];
        for j in 0..m {
            for q in 0..d {
                out[j * w + q] = f[j * d + q] as f64;
            }
            out[j * w + d] = div[j];
        }
        out
    });
    let log_likelihood = y.chunks(w).map(|r| prior_logp(&r[..d]) + r[d]).collect();
    Likelihood {
        log_likelihood,
        calls,
    }
}

/// Bits per dimension of a log-likelihood in nats over `d` dimensions.
pub fn bits_per_dim(log_likelihood: f64, d: usize) -> f64 {
    -log_likelihood / (d as f64 * std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests;
