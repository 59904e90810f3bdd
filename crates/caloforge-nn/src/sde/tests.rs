use super::*;
use crate::testutil::{moments, rngs};
use nalgebra::{Matrix3, Vector3};
use rand_distr::StandardNormal;

/// The exact score of data N(μ, Σ) (dimension 3) under `sde`:
/// s_t(x) = −(m²Σ + s²I)⁻¹(x − mμ), with (m, s) the SDE's marginal at t.
struct Gaussian {
    sde: Sde,
    mu: Vector3<f64>,
    cov: Matrix3<f64>,
}

impl Gaussian {
    fn correlated(sde: Sde) -> Self {
        Gaussian {
            sde,
            mu: Vector3::new(1.5, -0.5, 0.3),
            cov: Matrix3::new(0.16, 0.06, 0.02, 0.06, 0.25, -0.05, 0.02, -0.05, 0.09),
        }
    }
    fn precision(&self, t: f64) -> (Matrix3<f64>, Vector3<f64>) {
        let (m, s) = self.sde.marginal(t);
        let a = self.cov * (m * m) + Matrix3::identity() * (s * s);
        (a.try_inverse().unwrap(), self.mu * m)
    }
    /// log N(x; mμ, m²Σ + s²I) at t.
    fn logp(&self, x: &[f32], t: f64) -> f64 {
        let (m, s) = self.sde.marginal(t);
        let a = self.cov * (m * m) + Matrix3::identity() * (s * s);
        let r = Vector3::new(x[0] as f64, x[1] as f64, x[2] as f64) - self.mu * m;
        let q = (r.transpose() * a.try_inverse().unwrap() * r)[0];
        -0.5 * (3.0 * (2.0 * std::f64::consts::PI).ln() + a.determinant().ln() + q)
    }
}

impl Score for Gaussian {
    fn score(&mut self, x: &[f32], t: &[f64], _rows: &[usize]) -> Vec<f32> {
        x.chunks(3)
            .zip(t)
            .flat_map(|(r, &tj)| {
                let (p, mm) = self.precision(tj);
                let v = Vector3::new(r[0] as f64, r[1] as f64, r[2] as f64) - mm;
                let s = -(p * v);
                [s[0] as f32, s[1] as f32, s[2] as f32]
            })
            .collect()
    }
}

impl ScoreVjp for Gaussian {
    fn score_vjp(
        &mut self,
        x: &[f32],
        t: &[f64],
        rows: &[usize],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let s = self.score(x, t, rows);
        // ∂s/∂x = −P (symmetric), so vᵀJ = −Pv.
        let vj = v
            .chunks(3)
            .zip(t)
            .flat_map(|(r, &tj)| {
                let (p, _) = self.precision(tj);
                let u = -(p * Vector3::new(r[0] as f64, r[1] as f64, r[2] as f64));
                [u[0] as f32, u[1] as f32, u[2] as f32]
            })
            .collect();
        (s, vj)
    }
}

/// One-dimensional N(μ, sd²) with its exact score (for the samplers).
struct Normal1 {
    sde: Sde,
    mu: f64,
    sd: f64,
}

impl Score for Normal1 {
    fn score(&mut self, x: &[f32], t: &[f64], _rows: &[usize]) -> Vec<f32> {
        let d = x.len() / t.len();
        let (mu, sd) = (self.mu, self.sd);
        x.chunks(d)
            .zip(t)
            .flat_map(|(r, &tj)| {
                let (m, s) = self.sde.marginal(tj);
                let var = m * m * sd * sd + s * s;
                r.iter().map(move |&v| (-(v as f64 - m * mu) / var) as f32)
            })
            .collect()
    }
}

#[test]
fn marginals_match_hand_values_and_the_sde() {
    // Hand values at t = 1: log m = −¼·19.9 − ½·0.1 = −5.025.
    let (m, s) = Sde::vp().marginal(1.0);
    assert!((m - (-5.025f64).exp()).abs() < 1e-15);
    assert!((s - (1.0 - (-10.05f64).exp()).sqrt()).abs() < 1e-15);
    let (_, s) = Sde::sub_vp().marginal(1.0);
    assert!(
        (s - (1.0 - (-10.05f64).exp())).abs() < 1e-15,
        "sub-VP std has no square root"
    );
    assert_eq!(Sde::ve().marginal(1.0), (1.0, 50.0));
    assert!((Sde::ve().marginal(0.0).1 - 0.01).abs() < 1e-15);
    // The reference's small-exponent branch near t = 0: log m = −5.004975e-7.
    let (m, s) = Sde::vp().marginal(1e-5);
    assert!((m - (1.0 - 5.004975e-7)).abs() < 1e-14 && (s - 1.000995e-6f64.sqrt()).abs() < 1e-15);
    // The drift and diffusion carry x_0 = 2 to the marginal (Euler–Maruyama, 60k paths).
    for sde in [Sde::vp(), Sde::sub_vp(), Sde::ve()] {
        let n = 60_000;
        let mut r = rngs(1, 11);
        let mut x = vec![2.0f64; n];
        let steps = 1000;
        let h = 1.0 / steps as f64;
        for i in 0..steps {
            let (c, g) = sde.drift_diffusion((i as f64 + 0.5) * h);
            for v in x.iter_mut() {
                *v += c * *v * h + g * h.sqrt() * r[0].sample::<f64, _>(StandardNormal);
            }
            let t = (i + 1) as f64 * h;
            if i + 1 == 300 || i + 1 == steps {
                let (m, s) = sde.marginal(t);
                // VE's marginal std σ(t) counts σ(0)² = 1e-4 of variance the SDE never adds.
                let var = match sde {
                    Sde::Ve { sigma_min, .. } => s * s - sigma_min * sigma_min,
                    _ => s * s,
                };
                let mean = x.iter().sum::<f64>() / n as f64;
                let v = x.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n as f64;
                let tol = 4.0 * (var / n as f64).sqrt() + 2e-3 * (2.0 * m).abs();
                assert!(
                    (mean - 2.0 * m).abs() < tol,
                    "{sde:?} t {t}: mean {mean} vs {}",
                    2.0 * m
                );
                assert!(
                    (v / var - 1.0).abs() < 0.03,
                    "{sde:?} t {t}: var {v} vs {var}"
                );
            }
        }
    }
}

#[test]
fn pc_sampler_recovers_a_gaussian_target() {
    for sde in [Sde::vp(), Sde::sub_vp(), Sde::ve()] {
        for variant in [PcVariant::Reference, PcVariant::Fresh] {
            let cfg = PcConfig {
                variant,
                ..PcConfig::default()
            };
            let mut net = Normal1 {
                sde,
                mu: 1.5,
                sd: 0.4,
            };
            // 64 independent dimensions: the per-shower Langevin step needs norms over many.
            let x = pc_sample(&sde, 64, &cfg, &mut rngs(200, 1), &mut net);
            let (m, s) = moments(&x);
            assert!(
                (m - 1.5).abs() < 0.03 && (s - 0.4).abs() < 0.03,
                "{sde:?} {variant:?}: mean {m} sd {s}"
            );
        }
    }
    // Fewer steps than β_max: the reference's corrector α = 1 − β/N would turn negative (NaN
    // steps); it is clamped to 0 there.
    let few = PcConfig {
        steps: 10,
        ..PcConfig::default()
    };
    let mut net = Normal1 {
        sde: Sde::vp(),
        mu: 1.5,
        sd: 0.4,
    };
    let x = pc_sample(&Sde::vp(), 64, &few, &mut rngs(20, 3), &mut net);
    assert!(x.iter().all(|v| v.is_finite()));
    // Per-shower step sizes: the same streams give the same samples whatever the batch split.
    let sde = Sde::vp();
    let cfg = PcConfig {
        steps: 20,
        ..PcConfig::default()
    };
    let mut net = Gaussian::correlated(sde);
    let a = pc_sample(&sde, 3, &cfg, &mut rngs(4, 9), &mut net);
    let b = pc_sample(&sde, 3, &cfg, &mut rngs(2, 9), &mut net);
    assert_eq!(&a[..6], &b[..]);
    // The reference's batch-mean step makes them depend on the batch.
    let bm = PcConfig {
        step_norm: StepNorm::BatchMean,
        ..cfg
    };
    let a = pc_sample(&sde, 3, &bm, &mut rngs(4, 9), &mut net);
    let b = pc_sample(&sde, 3, &bm, &mut rngs(2, 9), &mut net);
    assert_ne!(&a[..6], &b[..]);
}

#[test]
fn ode_sampler_recovers_a_gaussian_target() {
    for sde in [Sde::vp(), Sde::sub_vp(), Sde::ve()] {
        for solver in [OdeSolver::default(), OdeSolver::Heun { steps: 50 }] {
            let mut net = Normal1 {
                sde,
                mu: 1.5,
                sd: 0.4,
            };
            let (x, calls) = ode_sample(&sde, 1, &solver, 1e-5, &mut rngs(4000, 2), &mut net);
            let (m, s) = moments(&x);
            assert!(
                (m - 1.5).abs() < 0.03 && (s - 0.4).abs() < 0.02,
                "{sde:?} {solver:?}: mean {m} sd {s}"
            );
            assert!(calls.iter().all(|&c| c > 0 && c < 2000), "{calls:?}");
        }
    }
    // Adaptive steps per sample: batch-independent.
    let sde = Sde::sub_vp();
    let mut net = Gaussian::correlated(sde);
    let s = OdeSolver::default();
    let (a, _) = ode_sample(&sde, 3, &s, 1e-5, &mut rngs(5, 4), &mut net);
    let (b, _) = ode_sample(&sde, 3, &s, 1e-5, &mut rngs(2, 4), &mut net);
    assert_eq!(&a[..6], &b[..]);
}

#[test]
fn solvers_have_their_order_of_accuracy() {
    // dy/dt = −2ty from 0 to 1, y(0) = 1: y(1) = e^{−1}.
    let exact = (-1.0f64).exp();
    let err = |solver: OdeSolver| {
        let mut y = vec![1.0];
        integrate(&mut y, 1, 0.0, 1.0, &solver, &mut |y, t, _| {
            y.iter().zip(t).map(|(v, t)| -2.0 * t * v).collect()
        });
        (y[0] - exact).abs()
    };
    let e1 = err(OdeSolver::Euler { steps: 50 }) / err(OdeSolver::Euler { steps: 100 });
    let e2 = err(OdeSolver::Heun { steps: 50 }) / err(OdeSolver::Heun { steps: 100 });
    assert!((e1 - 2.0).abs() < 0.1, "Euler ratio {e1}");
    assert!((e2 - 4.0).abs() < 0.2, "Heun ratio {e2}");
    assert!(err(OdeSolver::default()) < 1e-4);
    let tight = OdeSolver::Rk45 {
        rtol: 1e-10,
        atol: 1e-10,
    };
    assert!(err(tight) < 1e-10);
}

#[test]
fn likelihood_of_a_gaussian_equals_the_closed_form() {
    let eps = 1e-5;
    let mut rx = rngs(1, 5);
    for sde in [Sde::vp(), Sde::sub_vp(), Sde::ve()] {
        // A centred target: the likelihood assumes p_1 = N(0, prior²), while the true marginal
        // at t = 1 is centred on m(1)μ (m(1) = 0.0066 for VP), which would cost ≈ x·m(1)μ nats.
        let mut net = Gaussian::correlated(sde);
        net.mu = Vector3::zeros();
        // Data rows from N(μ, Σ) via its Cholesky factor.
        let l = net.cov.cholesky().unwrap().l();
        let x: Vec<f32> = (0..12)
            .flat_map(|_| {
                let z = Vector3::from_fn(|_, _| rx[0].sample::<f64, _>(StandardNormal));
                let v = net.mu + l * z;
                [v[0] as f32, v[1] as f32, v[2] as f32]
            })
            .collect();
        let out = log_likelihood(
            &sde,
            &x,
            3,
            &OdeSolver::default(),
            eps,
            Trace::Exact,
            &mut rngs(12, 6),
            &mut net,
        );
        for (k, &lp) in out.log_likelihood.iter().enumerate() {
            let want = net.logp(&x[3 * k..3 * k + 3], 0.0);
            assert!(
                (lp - want).abs() < 0.01 * want.abs().max(1.0),
                "{sde:?} row {k}: {lp} vs {want}"
            );
            // Against the marginal at eps itself (only the prior's mismatch at t = 1 remains).
            let at_eps = net.logp(&x[3 * k..3 * k + 3], eps);
            assert!(
                (lp - at_eps).abs() < 2e-3,
                "{sde:?} row {k}: {lp} vs {at_eps}"
            );
        }
    }
}

#[test]
fn hutchinson_trace_is_unbiased_against_the_exact_trace() {
    let sde = Sde::vp();
    let mut net = Gaussian::correlated(sde);
    let n = 400;
    let x: Vec<f32> = (0..n).flat_map(|_| [1.4f32, -0.3, 0.2]).collect();
    let heun = OdeSolver::Heun { steps: 40 };
    let run = |trace, net: &mut Gaussian| {
        log_likelihood(&sde, &x, 3, &heun, 1e-5, trace, &mut rngs(n, 8), net).log_likelihood
    };
    let exact = run(Trace::Exact, &mut net);
    let hutch = run(Trace::Hutchinson, &mut net);
    // Identical trajectories: the rows differ only by the trace estimate's noise.
    assert!(exact.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-9));
    let diff: Vec<f64> = hutch.iter().zip(&exact).map(|(h, e)| h - e).collect();
    let mean = diff.iter().sum::<f64>() / n as f64;
    let sd = (diff.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    assert!(
        sd > 1e-3,
        "the correlated target gives the estimator real noise ({sd})"
    );
    assert!(
        mean.abs() < 4.0 * sd / (n as f64).sqrt(),
        "bias {mean} ± {sd}"
    );
}

#[test]
fn bits_per_dim_by_hand() {
    assert!((bits_per_dim(-2.0 * std::f64::consts::LN_2 * 10.0, 10) - 2.0).abs() < 1e-12);
    let z = [0.0, 1.0];
    let want = -(2.0 * std::f64::consts::PI).ln() - 0.5;
    assert!((Sde::vp().prior_logp(&z) - want).abs() < 1e-12);
}
