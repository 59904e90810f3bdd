//! Discrete denoising diffusion (DDPM, Ho et al. 2020): noise schedules, the forward noising
//! q(x_t | x_0), the ancestral sampler (with CaloDiffusion's skip of the noisiest steps) and the
//! deterministic DDIM sampler (Song et al. 2021) for few-step generation.
//!
//! Samplers work on row-major f32 batches and take the network as an ε-predictor closure
//! `eps(x_t, t) -> ε̂`, so they serve any model (and are tested with the exact ε of a Gaussian).
//! Sample k of a batch draws its noise from its own RNG stream, so results do not depend on the
//! batch split.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A noise schedule family.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Nichol & Dhariwal cosine schedule: ᾱ(t) ∝ cos²((t/T + s)/(1 + s) · π/2), β clipped to
    /// [min_beta, max_beta] (CaloDiffusion: s = 0.008, [1e-4, 0.9999]).
    Cosine {
        /// Offset s.
        s: f64,
        /// Lower clip of β.
        min_beta: f64,
        /// Upper clip of β.
        max_beta: f64,
    },
    /// β linear from beta_start to beta_end.
    Linear {
        /// β_1.
        beta_start: f64,
        /// β_T.
        beta_end: f64,
    },
}

impl ScheduleKind {
    /// CaloDiffusion's cosine schedule.
    pub fn cosine() -> Self {
        ScheduleKind::Cosine {
            s: 0.008,
            min_beta: 1e-4,
            max_beta: 0.9999,
        }
    }
}

/// β_t, α_t = 1 − β_t and ᾱ_t = Π α for t = 0..T−1.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// β_t.
    pub betas: Vec<f64>,
    /// α_t.
    pub alphas: Vec<f64>,
    /// ᾱ_t.
    pub alpha_bar: Vec<f64>,
}

impl NoiseSchedule {
    /// The schedule of `kind` with `steps` steps.
    pub fn new(kind: ScheduleKind, steps: usize) -> Self {
        assert!(steps > 0, "a schedule needs at least one step");
        let betas: Vec<f64> = match kind {
            ScheduleKind::Cosine {
                s,
                min_beta,
                max_beta,
            } => {
                let f = |t: f64| {
                    (((t / steps as f64) + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..steps)
                    .map(|t| (1.0 - f(t as f64 + 1.0) / f(t as f64)).clamp(min_beta, max_beta))
                    .collect()
            }
            ScheduleKind::Linear {
                beta_start,
                beta_end,
            } => {
                if steps == 1 {
                    vec![beta_start]
                } else {
                    (0..steps)
                        .map(|t| {
                            beta_start + (beta_end - beta_start) * t as f64 / (steps - 1) as f64
                        })
                        .collect()
                }
            }
        };
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bar = Vec::with_capacity(steps);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alpha_bar.push(acc);
        }
        NoiseSchedule {
            betas,
            alphas,
            alpha_bar,
        }
    }

    /// Number of steps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Whether empty (never: a schedule has at least one step).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// σ_t = √(1 − ᾱ_t) (CaloDiffusion's time input).
    pub fn sigma(&self, t: usize) -> f64 {
        (1.0 - self.alpha_bar[t]).sqrt()
    }

    /// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.
    pub fn q_sample(&self, x0: &[f32], eps: &[f32], t: usize) -> Vec<f32> {
        let (a, b) = (self.alpha_bar[t].sqrt(), (1.0 - self.alpha_bar[t]).sqrt());
        x0.iter()
            .zip(eps)
            .map(|(&x, &e)| (a * x as f64 + b * e as f64) as f32)
            .collect()
    }

    /// Posterior variance β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (0 at t = 0).
    pub fn posterior_variance(&self, t: usize) -> f64 {
        if t == 0 {
            0.0
        } else {
            self.betas[t] * (1.0 - self.alpha_bar[t - 1]) / (1.0 - self.alpha_bar[t])
        }
    }
}

/// Fills row k of `out` (width `d`) with standard normals from `rngs[k]` (the samplers' one
/// per-shower noise draw).
pub(crate) fn normals(rngs: &mut [ChaCha8Rng], d: usize, out: &mut [f32]) {
    for (r, row) in rngs.iter_mut().zip(out.chunks_mut(d)) {
        for v in row {
            *v = r.sample::<f32, _>(StandardNormal);
        }
    }
}

/// Ancestral DDPM sampling of `rngs.len()` samples of dimension `d`: x_T ~ N(0, 1), then for
/// t = T − 1 − skip down to 0: x ← (x − β_t ε̂/√(1 − ᾱ_t))/√α_t + √β̃_t z (no noise at t = 0).
/// `skip` drops the noisiest steps (CaloDiffusion: 2).
pub fn ddpm_sample(
    sched: &NoiseSchedule,
    d: usize,
    skip: usize,
    rngs: &mut [ChaCha8Rng],
    eps: &mut dyn FnMut(&[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let n = rngs.len();
    let mut x = vec![0.0f32; n * d];
    normals(rngs, d, &mut x);
    let mut z = vec![0.0f32; n * d];
    for t in (0..ddpm_calls(sched.len(), skip)).rev() {
        let e = eps(&x, t);
        let (a, b, ab) = (sched.alphas[t], sched.betas[t], sched.alpha_bar[t]);
        let c = b / (1.0 - ab).sqrt();
        let sd = sched.posterior_variance(t).sqrt();
        if t > 0 {
            normals(rngs, d, &mut z);
        }
        for i in 0..n * d {
            let mean = (x[i] as f64 - c * e[i] as f64) / a.sqrt();
            x[i] = (mean + if t > 0 { sd * z[i] as f64 } else { 0.0 }) as f32;
        }
    }
    x
}

/// Network calls of [`ddpm_sample`] on a schedule of `len` steps: timesteps len − 1 − skip … 0.
pub fn ddpm_calls(len: usize, skip: usize) -> usize {
    len.saturating_sub(skip)
}

/// The timesteps [`ddim_sample`] evaluates (one network call each), ascending: `steps` (at
/// least 1, at most T − skip) evenly spaced over [0, T − 1 − skip] for a schedule of T = `len`.
pub fn ddim_timesteps(len: usize, steps: usize, skip: usize) -> Vec<usize> {
    let top = len.saturating_sub(skip + 1);
    let k = steps.clamp(1, top + 1);
    let mut ts: Vec<usize> = (0..k)
        .map(|i| {
            if k == 1 {
                top
            } else {
                (top as f64 * i as f64 / (k - 1) as f64).round() as usize
            }
        })
        .collect();
    ts.dedup();
    ts
}

/// Deterministic DDIM sampling (η = 0) with `steps` network calls on timesteps evenly spaced
/// over [0, T − 1 − skip]: x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'}) ε̂, x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t.
pub fn ddim_sample(
    sched: &NoiseSchedule,
    d: usize,
    steps: usize,
    skip: usize,
    rngs: &mut [ChaCha8Rng],
    eps: &mut dyn FnMut(&[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let n = rngs.len();
    let mut x = vec![0.0f32; n * d];
    normals(rngs, d, &mut x);
    let ts = ddim_timesteps(sched.len(), steps, skip);
    for (j, &t) in ts.iter().enumerate().rev() {
        let e = eps(&x, t);
        let ab = sched.alpha_bar[t];
        let ab_next = if j == 0 {
            1.0
        } else {
            sched.alpha_bar[ts[j - 1]]
        };
        for i in 0..n * d {
            let x0 = (x[i] as f64 - (1.0 - ab).sqrt() * e[i] as f64) / ab.sqrt();
            x[i] = (ab_next.sqrt() * x0 + (1.0 - ab_next).sqrt() * e[i] as f64) as f32;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{moments, rngs};

    #[test]
    fn cosine_schedule_matches_closed_form() {
        let s = NoiseSchedule::new(ScheduleKind::cosine(), 400);
        let f = |t: f64| {
            ((t / 400.0 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        // Unclipped steps: ᾱ_t = f(t + 1)/f(0).
        for t in [0usize, 10, 100, 200, 300] {
            assert!(
                (s.alpha_bar[t] - f(t as f64 + 1.0) / f(0.0)).abs() < 1e-9,
                "t = {t}"
            );
        }
        assert!(s.betas.iter().all(|&b| (1e-4..=0.9999).contains(&b)));
        assert_eq!(s.betas[399], 0.9999, "last beta is clipped");
        assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]));
        let l = NoiseSchedule::new(
            ScheduleKind::Linear {
                beta_start: 1e-4,
                beta_end: 0.02,
            },
            5,
        );
        assert!((l.betas[2] - (1e-4 + 0.02) / 2.0).abs() < 1e-15);
        assert!((l.alpha_bar[1] - (1.0 - 1e-4) * (1.0 - l.betas[1])).abs() < 1e-15);
    }

    #[test]
    fn forward_noising_has_the_right_moments() {
        let s = NoiseSchedule::new(ScheduleKind::cosine(), 100);
        let n = 200_000;
        let mut r = rngs(1, 3);
        let x0 = vec![2.0f32; n];
        let mut eps = vec![0.0f32; n];
        normals(&mut r, n, &mut eps);
        for t in [5usize, 50, 95] {
            let xt = s.q_sample(&x0, &eps, t);
            let m = xt.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let v = xt.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
            assert!(
                (m - 2.0 * s.alpha_bar[t].sqrt()).abs() < 0.01,
                "t {t}: mean {m}"
            );
            assert!((v - (1.0 - s.alpha_bar[t])).abs() < 0.01, "t {t}: var {v}");
        }
    }

    /// Exact ε for data N(mu, sd²): E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ sd² + 1 − ᾱ).
    fn exact_eps(
        s: &NoiseSchedule,
        mu: f64,
        sd: f64,
    ) -> impl FnMut(&[f32], usize) -> Vec<f32> + '_ {
        move |x: &[f32], t: usize| {
            let ab = s.alpha_bar[t];
            x.iter()
                .map(|&v| {
                    ((1.0 - ab).sqrt() * (v as f64 - ab.sqrt() * mu) / (ab * sd * sd + 1.0 - ab))
                        as f32
                })
                .collect()
        }
    }

    #[test]
    fn samplers_recover_a_gaussian_target() {
        let (mu, sd) = (1.5, 0.4);
        let s = NoiseSchedule::new(ScheduleKind::cosine(), 400);
        let n = 20_000;
        let x = ddpm_sample(&s, 1, 0, &mut rngs(n, 1), &mut exact_eps(&s, mu, sd));
        let (m, v) = moments(&x);
        assert!(
            (m - mu).abs() < 0.02 && (v - sd).abs() < 0.02,
            "DDPM: {m} {v}"
        );
        // Skipping the two noisiest steps (CaloDiffusion) changes nothing visible.
        let x = ddpm_sample(&s, 1, 2, &mut rngs(n, 2), &mut exact_eps(&s, mu, sd));
        let (m, v) = moments(&x);
        assert!(
            (m - mu).abs() < 0.02 && (v - sd).abs() < 0.02,
            "DDPM skip 2: {m} {v}"
        );
        // DDIM with 50 deterministic steps.
        let x = ddim_sample(&s, 1, 50, 0, &mut rngs(n, 3), &mut exact_eps(&s, mu, sd));
        let (m, v) = moments(&x);
        assert!(
            (m - mu).abs() < 0.02 && (v - sd).abs() < 0.03,
            "DDIM: {m} {v}"
        );
        // The same streams give the same samples whatever the batch split.
        let a = ddpm_sample(&s, 1, 2, &mut rngs(4, 9), &mut exact_eps(&s, mu, sd));
        let b = ddpm_sample(&s, 1, 2, &mut rngs(2, 9), &mut exact_eps(&s, mu, sd));
        assert_eq!(&a[..2], &b[..]);
    }
}
