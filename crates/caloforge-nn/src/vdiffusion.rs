//! Continuous-time v-prediction diffusion as CaloScore v2 codes it (`ViniciusMikuni/CaloScoreV2`,
//! `scripts/CaloScore.py`; `docs/design/caloscore.md` §2): the cosine log-SNR schedule
//! λ(t) = −2 ln tan(a t + b) on [−20, 20], α = √sigmoid(λ), σ = √sigmoid(−λ), the v target
//! v = α z − σ x, deterministic DDIM in (α, σ) form, and the progressive-distillation target of
//! Salimans & Ho (two teacher DDIM half-steps → one student step).

use rand_chacha::ChaCha8Rng;

/// The cosine log-SNR schedule λ(t) = −2 ln tan(a t + b), λ(0) = λ_max, λ(1) = λ_min.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogSnrCosine {
    /// λ at t = 1.
    pub logsnr_min: f64,
    /// λ at t = 0.
    pub logsnr_max: f64,
}

impl Default for LogSnrCosine {
    /// CaloScore v2: λ ∈ [−20, 20].
    fn default() -> Self {
        LogSnrCosine {
            logsnr_min: -20.0,
            logsnr_max: 20.0,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl LogSnrCosine {
    fn ab(&self) -> (f64, f64) {
        let b = (-0.5 * self.logsnr_max).exp().atan();
        let a = (-0.5 * self.logsnr_min).exp().atan() - b;
        (a, b)
    }

    /// λ(t).
    pub fn logsnr(&self, t: f64) -> f64 {
        let (a, b) = self.ab();
        -2.0 * (a * t + b).tan().ln()
    }

    /// The rate of the probability flow: with α = cos(at + b) and σ = sin(at + b),
    /// x_t = α x + σ ε moves as dx_t/dt = a (α ε − σ x) = a v, so the probability-flow ODE is
    /// dx/dt = a·v̂(x, t) (DDIM integrates it exactly in the angle for a locally constant v̂).
    pub fn flow_rate(&self) -> f64 {
        self.ab().0
    }

    /// (α, σ) at t, through λ and the sigmoid as the reference computes them.
    pub fn alpha_sigma(&self, t: f64) -> (f64, f64) {
        let l = self.logsnr(t);
        (sigmoid(l).sqrt(), sigmoid(-l).sqrt())
    }
}

/// The v target α z − σ x of clean `x` and noise `z`.
pub fn v_target(x: &[f32], z: &[f32], alpha: f64, sigma: f64) -> Vec<f32> {
    x.iter()
        .zip(z)
        .map(|(&xv, &zv)| (alpha * zv as f64 - sigma * xv as f64) as f32)
        .collect()
}

/// One deterministic DDIM move of `z` (at (α, σ)) to (α', σ') given the network's v: x̂ =
/// α z − σ v, ε̂ = (z − α x̂)/σ, z' = α' x̂ + σ' ε̂; returns (z', x̂).
pub fn ddim_step(z: &[f32], v: &[f32], from: (f64, f64), to: (f64, f64)) -> (Vec<f32>, Vec<f32>) {
    let (a, s) = from;
    let (a2, s2) = to;
    let mut zn = Vec::with_capacity(z.len());
    let mut xh = Vec::with_capacity(z.len());
    for (&zv, &vv) in z.iter().zip(v) {
        let x = a * zv as f64 - s * vv as f64;
        let e = (zv as f64 - a * x) / s;
        zn.push((a2 * x + s2 * e) as f32);
        xh.push(x as f32);
    }
    (zn, xh)
}

/// A v-prediction network over rows: v(x, per-row t, row indices in the batch).
pub type VNet<'a> = dyn FnMut(&[f32], &[f64], &[usize]) -> Vec<f32> + 'a;

/// DDIM sampling with `steps` network calls at t = k/N, k = N … 1, from x ~ N(0, 1); returns
/// the last x̂ (the reference's output). `v(x, t, rows)` is the network (per-row time, row
/// indices in the batch); row k draws its start from `rngs[k]`.
pub fn ddim_v_sample(
    sched: &LogSnrCosine,
    d: usize,
    steps: usize,
    rngs: &mut [ChaCha8Rng],
    v: &mut VNet,
) -> Vec<f32> {
    let n = rngs.len();
    let rows: Vec<usize> = (0..n).collect();
    let mut x = vec![0.0f32; n * d];
    crate::diffusion::normals(rngs, d, &mut x);
    let steps = steps.max(1);
    let mut x0 = x.clone();
    for k in (1..=steps).rev() {
        let (t, t2) = (k as f64 / steps as f64, (k - 1) as f64 / steps as f64);
        let vv = v(&x, &vec![t; n], &rows);
        let (zn, xh) = ddim_step(&x, &vv, sched.alpha_sigma(t), sched.alpha_sigma(t2));
        x = zn;
        x0 = xh;
    }
    x0
}

/// The progressive-distillation target (CaloScoreV2 `CaloScore_distill.py`): given the
/// student's input z at u (α_u, σ_u) and the teacher's result z_s after two DDIM half-steps to
/// s (α_s, σ_s), the x̃ that a single DDIM step u → s must predict to land on z_s, and the
/// matching v target ṽ = α_u ε̃ − σ_u x̃ with ε̃ = (z − α_u x̃)/σ_u. `last` (s = 0): x̃ is the
/// teacher's second x̂ instead (`x_last`).
pub fn distill_target(
    z: &[f32],
    z_s: &[f32],
    u: (f64, f64),
    s: (f64, f64),
    x_last: Option<&[f32]>,
) -> Vec<f32> {
    let (au, su) = u;
    let (as_, ss) = s;
    let frac = ss / su;
    z.iter()
        .zip(z_s)
        .enumerate()
        .map(|(i, (&zv, &zs))| {
            let x = match x_last {
                Some(xl) => xl[i] as f64,
                None => (zs as f64 - frac * zv as f64) / (as_ - frac * au),
            };
            let e = (zv as f64 - au * x) / su;
            (au * e - su * x) as f32
        })
        .collect()
}

/// log p of each row of `x` (dimension `d`, the clean data at t = 0) under a v-prediction
/// model: the probability-flow ODE dx/dt = a·v̂ (see [`LogSnrCosine::flow_rate`]) from t = 0
/// to 1 with its divergence, and N(0, 1) at t = 1 (whose true marginal is α(1)x + σ(1)ε, α(1) =
/// 4.5e-5 on [−20, 20]). `model` returns v̂ and vᵀ ∂v̂/∂x; row k draws its Hutchinson probe
/// from `rngs[k]`.
pub fn v_likelihood(
    sched: &LogSnrCosine,
    x: &[f32],
    d: usize,
    solver: &crate::sde::OdeSolver,
    trace: crate::sde::Trace,
    rngs: &mut [ChaCha8Rng],
    model: &mut dyn crate::sde::VelocityVjp,
) -> crate::sde::Likelihood {
    struct Scaled<'a> {
        a: f64,
        model: &'a mut dyn crate::sde::VelocityVjp,
    }
    impl crate::sde::VelocityVjp for Scaled<'_> {
        fn velocity_vjp(
            &mut self,
            x: &[f32],
            t: &[f64],
            rows: &[usize],
            v: &[f32],
        ) -> (Vec<f32>, Vec<f32>) {
            let (f, vj) = self.model.velocity_vjp(x, t, rows, v);
            let a = self.a as f32;
            (
                f.into_iter().map(|q| a * q).collect(),
                vj.into_iter().map(|q| a * q).collect(),
            )
        }
    }
    let normal = |z: &[f64]| crate::sde::normal_logp(z, 1.0);
    let mut scaled = Scaled {
        a: sched.flow_rate(),
        model,
    };
    crate::sde::flow_log_likelihood(x, d, solver, (0.0, 1.0), &normal, trace, rngs, &mut scaled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{moments, rngs};

    /// The exact v̂ of independent N(μ, s²) dimensions: E[αε − σx | x_t] = −σμ +
    /// ασ(1 − s²)/(α²s² + σ²)·(x_t − αμ).
    struct GaussV {
        sched: LogSnrCosine,
        mu: f64,
        s2: f64,
    }

    impl GaussV {
        fn slope(&self, t: f64) -> (f64, f64) {
            let (a, s) = self.sched.alpha_sigma(t);
            (a * s * (1.0 - self.s2) / (a * a * self.s2 + s * s), a)
        }
    }

    impl crate::sde::VelocityVjp for GaussV {
        fn velocity_vjp(
            &mut self,
            x: &[f32],
            t: &[f64],
            _rows: &[usize],
            v: &[f32],
        ) -> (Vec<f32>, Vec<f32>) {
            let d = x.len() / t.len();
            let (mut f, mut vj) = (Vec::new(), Vec::new());
            for (j, &tj) in t.iter().enumerate() {
                let (k, a) = self.slope(tj);
                let s = self.sched.alpha_sigma(tj).1;
                for q in j * d..(j + 1) * d {
                    f.push((-s * self.mu + k * (x[q] as f64 - a * self.mu)) as f32);
                    vj.push((k * v[q] as f64) as f32);
                }
            }
            (f, vj)
        }
    }

    #[test]
    fn v_likelihood_of_a_gaussian_equals_the_closed_form() {
        let sched = LogSnrCosine::default();
        for trace in [crate::sde::Trace::Exact, crate::sde::Trace::Hutchinson] {
            let mut m = GaussV {
                sched,
                mu: 0.3,
                s2: 0.25,
            };
            let x = [0.1f32, 0.9, -0.4, 0.5, 0.3, 0.0];
            let out = v_likelihood(
                &sched,
                &x,
                3,
                &crate::sde::OdeSolver::default(),
                trace,
                &mut rngs(2, 3),
                &mut m,
            );
            for (k, &lp) in out.log_likelihood.iter().enumerate() {
                // Independent N(μ, s² + σ(0)²) dimensions.
                let var = m.s2 + sched.alpha_sigma(0.0).1.powi(2);
                let want: f64 = x[3 * k..3 * k + 3]
                    .iter()
                    .map(|&v| {
                        -0.5 * (2.0 * std::f64::consts::PI * var).ln()
                            - (v as f64 - m.mu).powi(2) / (2.0 * var)
                    })
                    .sum();
                assert!(
                    (lp - want).abs() < 2e-3,
                    "{trace:?} row {k}: {lp} vs {want}"
                );
            }
        }
    }

    #[test]
    fn schedule_endpoints_and_closed_form() {
        let s = LogSnrCosine::default();
        let (a, b) = s.ab();
        assert!((a - 1.5707055269354342).abs() < 1e-15 && (b - 4.539992973129278e-5).abs() < 1e-18);
        assert!((s.logsnr(0.0) - 20.0).abs() < 1e-9 && (s.logsnr(1.0) + 20.0).abs() < 1e-9);
        assert!(s.logsnr(0.5).abs() < 1e-9);
        for t in [0.0, 0.1, 0.37, 0.5, 0.9, 1.0] {
            let (al, si) = s.alpha_sigma(t);
            assert!((al - (a * t + b).cos()).abs() < 1e-12, "t {t}");
            assert!((si - (a * t + b).sin()).abs() < 1e-12, "t {t}");
            assert!((al * al + si * si - 1.0).abs() < 1e-12);
        }
    }

    /// The exact v of data N(μ, sd²): E[x|z] = μ + α sd²(z − αμ)/(α² sd² + σ²), E[ε|z] =
    /// (z − α E[x|z])/σ, v = α E[ε|z] − σ E[x|z].
    fn exact_v(
        s: LogSnrCosine,
        mu: f64,
        sd: f64,
    ) -> impl FnMut(&[f32], &[f64], &[usize]) -> Vec<f32> {
        move |x, t, _| {
            let d = x.len() / t.len();
            x.chunks(d)
                .zip(t)
                .flat_map(|(r, &tt)| {
                    let (a, si) = s.alpha_sigma(tt);
                    r.iter()
                        .map(move |&z| {
                            let z = z as f64;
                            let ex = mu + a * sd * sd * (z - a * mu) / (a * a * sd * sd + si * si);
                            let ee = (z - a * ex) / si;
                            (a * ee - si * ex) as f32
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        }
    }

    #[test]
    fn ddim_recovers_a_gaussian_target() {
        let s = LogSnrCosine::default();
        for steps in [512, 64] {
            let x = ddim_v_sample(
                &s,
                1,
                steps,
                &mut rngs(20_000, 1),
                &mut exact_v(s, 1.5, 0.4),
            );
            let (m, sd) = moments(&x);
            assert!(
                (m - 1.5).abs() < 0.02 && (sd - 0.4).abs() < 0.02,
                "{steps}: {m} {sd}"
            );
        }
        // Batch split does not matter.
        let a = ddim_v_sample(&s, 3, 8, &mut rngs(4, 2), &mut exact_v(s, 0.0, 1.0));
        let b = ddim_v_sample(&s, 3, 8, &mut rngs(2, 2), &mut exact_v(s, 0.0, 1.0));
        assert_eq!(&a[..6], &b[..]);
    }

    /// An ideal student trained on the distillation target (here: the target itself, computed
    /// from the teacher on the fly) samples with N/2 steps exactly what the teacher samples
    /// with N.
    #[test]
    fn distillation_halves_the_steps_with_matching_samples() {
        let s = LogSnrCosine::default();
        let n_teacher = 16;
        let mut teacher = exact_v(s, 1.5, 0.4);
        let want = ddim_v_sample(&s, 2, n_teacher, &mut rngs(50, 3), &mut teacher);
        let n = n_teacher / 2;
        let mut student = |z: &[f32], t: &[f64], rows: &[usize]| -> Vec<f32> {
            let u = t[0];
            let (mid, low) = (u - 0.5 / n as f64, u - 1.0 / n as f64);
            let v1 = teacher(z, t, rows);
            let (z_mid, _) = ddim_step(z, &v1, s.alpha_sigma(u), s.alpha_sigma(mid));
            let v2 = teacher(&z_mid, &vec![mid; t.len()], rows);
            let (z_s, x2) = ddim_step(&z_mid, &v2, s.alpha_sigma(mid), s.alpha_sigma(low));
            let last = low <= 1e-12;
            distill_target(
                z,
                &z_s,
                s.alpha_sigma(u),
                s.alpha_sigma(low),
                last.then_some(&x2[..]),
            )
        };
        let got = ddim_v_sample(&s, 2, n, &mut rngs(50, 3), &mut student);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "student with {n} steps vs teacher with {n_teacher}: {worst}"
        );
        // A student that ignores the teacher's second half-step does not match.
        let mut naive = exact_v(s, 1.5, 0.4);
        let got = ddim_v_sample(&s, 2, n, &mut rngs(50, 3), &mut naive);
        assert!(got.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn v_target_by_hand() {
        assert_eq!(v_target(&[2.0], &[1.0], 0.6, 0.8), vec![(0.6 - 1.6) as f32]);
    }
}
