//! Conditional flow matching as AllShowers and PointCountFM train it (t = 0 data, t = 1
//! noise, σ_min = 1e-4), its time features, and the fixed-step ODE solvers that integrate the
//! learnt velocity from noise to data.

/// σ_min of the straight path.
pub const SIGMA_MIN: f32 = 1e-4;

/// Time features: cos(π k t) for k = 1…`freqs`, then sin(π k t) (AllShowers: 3 frequencies,
/// 6 features), computed as the reference does (f32 products of π·k and t).
pub fn time_features(t: f32, freqs: usize, out: &mut Vec<f32>) {
    let f: Vec<f32> = (1..=freqs)
        .map(|k| std::f32::consts::PI * k as f32 * t)
        .collect();
    out.extend(f.iter().map(|x| x.cos()));
    out.extend(f.iter().map(|x| x.sin()));
}

/// The point of the path at time t between data x and noise z:
/// y = (1 − t) x + (σ_min + (1 − σ_min) t) z.
pub fn interpolate(x: f32, z: f32, t: f32) -> f32 {
    (1.0 - t) * x + (SIGMA_MIN + (1.0 - SIGMA_MIN) * t) * z
}

/// The velocity the network learns to predict: u = (1 − σ_min) z − x.
pub fn target(x: f32, z: f32) -> f32 {
    (1.0 - SIGMA_MIN) * z - x
}

/// A fixed-step solver (the reference's `ode_solvers.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// x ← x + dt f(t, x).
    Euler,
    /// x ← x + dt/2 (f(t, x) + f(t + dt, x + dt f(t, x))).
    Heun,
    /// x ← x + dt f(t + dt/2, x + dt/2 f(t, x)).
    Midpoint,
}

impl Solver {
    /// Every solver.
    pub const ALL: [Solver; 3] = [Solver::Euler, Solver::Heun, Solver::Midpoint];

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Solver::Euler => "euler",
            Solver::Heun => "heun",
            Solver::Midpoint => "midpoint",
        }
    }

    /// Network evaluations of `steps` steps.
    pub fn evaluations(self, steps: usize) -> usize {
        match self {
            Solver::Euler => steps,
            Solver::Heun | Solver::Midpoint => 2 * steps,
        }
    }

    /// Integrates dx/dt = f(t, x) from `t0` to `t1` in `steps` equal steps, t advanced by
    /// repeated addition of dt in f32 as the reference does. `f(t, x, out)` writes the velocity
    /// of state `x` into `out`.
    pub fn integrate(
        self,
        x: &mut [f32],
        t0: f32,
        t1: f32,
        steps: usize,
        mut f: impl FnMut(f32, &[f32], &mut [f32]),
    ) {
        let dt = (t1 - t0) / steps as f32;
        let n = x.len();
        let (mut k1, mut k2, mut y) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut t = t0;
        for _ in 0..steps {
            f(t, x, &mut k1);
            match self {
                Solver::Euler => {
                    for (xv, &d) in x.iter_mut().zip(&k1) {
                        *xv += dt * d;
                    }
                }
                Solver::Heun => {
                    for ((yv, &xv), &d) in y.iter_mut().zip(x.iter()).zip(&k1) {
                        *yv = xv + dt * d;
                    }
                    f(t + dt, &y, &mut k2);
                    for ((xv, &a), &b) in x.iter_mut().zip(&k1).zip(&k2) {
                        *xv += dt / 2.0 * (a + b);
                    }
                }
                Solver::Midpoint => {
                    for ((yv, &xv), &d) in y.iter_mut().zip(x.iter()).zip(&k1) {
                        *yv = xv + dt / 2.0 * d;
                    }
                    f(t + dt / 2.0, &y, &mut k2);
                    for (xv, &d) in x.iter_mut().zip(&k2) {
                        *xv += dt * d;
                    }
                }
            }
            t += dt;
        }
    }
}

impl std::str::FromStr for Solver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Solver::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("unknown solver '{s}': use euler, heun or midpoint"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error at t = 0 of integrating dx/dt = x cos t + t from x(1) = 1 (against RK4 with 10⁵ steps).
    fn error(s: Solver, steps: usize) -> f64 {
        let f = |t: f64, x: f64| x * t.cos() + t;
        let mut exact = 1.0f64;
        let n = 100_000;
        let h = -1.0 / n as f64;
        let mut t = 1.0;
        for _ in 0..n {
            let k1 = f(t, exact);
            let k2 = f(t + h / 2.0, exact + h / 2.0 * k1);
            let k3 = f(t + h / 2.0, exact + h / 2.0 * k2);
            let k4 = f(t + h, exact + h * k3);
            exact += h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
            t += h;
        }
        let mut x = [1.0f32];
        s.integrate(&mut x, 1.0, 0.0, steps, |t, x, out| {
            out[0] = x[0] * t.cos() + t;
        });
        (x[0] as f64 - exact).abs()
    }

    #[test]
    fn solvers_have_their_orders_of_accuracy() {
        for (s, order) in [
            (Solver::Euler, 1.0),
            (Solver::Heun, 2.0),
            (Solver::Midpoint, 2.0),
        ] {
            let (e1, e2) = (error(s, 16), error(s, 32));
            let measured = (e1 / e2).log2();
            assert!(
                (measured - order).abs() < 0.15,
                "{s:?}: order {measured} ({e1}, {e2})"
            );
        }
        assert_eq!(Solver::Midpoint.evaluations(16), 32);
        assert_eq!("heun".parse::<Solver>().unwrap(), Solver::Heun);
        assert!("rk4".parse::<Solver>().is_err());
    }

    #[test]
    fn the_path_runs_from_data_to_noise_with_the_target_velocity() {
        let (x, z) = (0.7f32, -1.3f32);
        assert_eq!(interpolate(x, z, 0.0), x + SIGMA_MIN * z);
        assert!((interpolate(x, z, 1.0) - z).abs() < 1e-7);
        // d/dt of the path is the target.
        let h = 1e-3;
        let d = (interpolate(x, z, 0.5 + h) - interpolate(x, z, 0.5 - h)) / (2.0 * h);
        assert!((d - target(x, z)).abs() < 1e-3);
        let mut tf = Vec::new();
        time_features(0.5, 3, &mut tf);
        let want = [0.0f32, -1.0, 0.0, 1.0, 0.0, -1.0];
        for (a, b) in tf.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{tf:?}");
        }
    }
}
