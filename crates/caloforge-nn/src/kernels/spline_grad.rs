//! The rational-quadratic spline of the flows (parametrised as [`crate::flow::spline`]) with its
//! hand-written reverse-mode gradient, per element in f64: what the fused training operation
//! ([`crate::ops::rqs`]) runs instead of ~60 small tensor operations per transform.
//!
//! Forward direction: `y = s(x; p)`, `ld = log s'(x; p)`. Inverse direction: `x = s⁻¹(y; p)`,
//! `ld = log s'(x; p)` at the solution (as [`crate::flow::spline::rqs_tensor`]). Outside
//! `[−B, B]` the spline is the identity with `ld = 0`.

use super::spline::{SplineConfig, MAX_BINS};

/// The knots of one spline and what their gradients need.
struct Knots {
    /// Softmax of the unnormalised widths and heights.
    sw: [f64; MAX_BINS],
    sh: [f64; MAX_BINS],
    /// Knot positions, K + 1 each.
    cw: [f64; MAX_BINS + 1],
    ch: [f64; MAX_BINS + 1],
    /// The raw derivative parameters at the knots (K + 1; the two ends fixed): softplus and
    /// sigmoid are taken only at the two knots of the bin an element falls in.
    raw_d: [f64; MAX_BINS + 1],
    min_d: f64,
}

/// Softmax of `u / scale`. Unless `EXACT`, the exponentials are taken in f32 (the training
/// tensors' precision; f64 `exp` would be most of the operation's time), the rest in f64.
fn softmax<const EXACT: bool>(u: &[f64], scale: f64, out: &mut [f64]) {
    let inv = 1.0 / scale;
    let m = u.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v)) * inv;
    let mut sum = 0.0;
    for (o, &v) in out.iter_mut().zip(u) {
        let a = v * inv - m;
        *o = if EXACT {
            a.exp()
        } else {
            (a as f32).exp() as f64
        };
        sum += *o;
    }
    let r = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= r);
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Knots {
    fn new<const EXACT: bool>(p: &[f64], cfg: &SplineConfig) -> Knots {
        let k = cfg.bins;
        let b = cfg.tail_bound;
        let mut kn = Knots {
            sw: [0.0; MAX_BINS],
            sh: [0.0; MAX_BINS],
            cw: [0.0; MAX_BINS + 1],
            ch: [0.0; MAX_BINS + 1],
            raw_d: [0.0; MAX_BINS + 1],
            min_d: cfg.min_derivative,
        };
        softmax::<EXACT>(&p[..k], cfg.scale, &mut kn.sw[..k]);
        softmax::<EXACT>(&p[k..2 * k], cfg.scale, &mut kn.sh[..k]);
        for (s, c, min) in [
            (&kn.sw, &mut kn.cw, cfg.min_width),
            (&kn.sh, &mut kn.ch, cfg.min_height),
        ] {
            c[0] = -b;
            let mut acc = 0.0;
            for i in 0..k - 1 {
                acc += s[i] * (1.0 - min * k as f64) + min;
                c[i + 1] = acc * 2.0 * b - b;
            }
            c[k] = b;
        }
        let edge = cfg.boundary_derivative();
        kn.raw_d[0] = edge;
        kn.raw_d[k] = edge;
        kn.raw_d[1..k].copy_from_slice(&p[2 * k..3 * k - 1]);
        kn
    }

    /// The derivative at knot `j`.
    fn d(&self, j: usize) -> f64 {
        softplus(self.raw_d[j]) + self.min_d
    }

    /// Bin of `v` among `knots`: the number of interior knots ≤ v.
    fn bin(knots: &[f64], v: f64, k: usize) -> usize {
        knots[1..k].iter().filter(|&&c| v >= c).count()
    }
}

/// The bin-local quantities of the forward map at `x` and their partial derivatives.
struct Local {
    bin: usize,
    theta: f64,
    w: f64,
    h: f64,
    delta: f64,
    d0: f64,
    d1: f64,
    t: f64,
    num: f64,
    den: f64,
    q: f64,
}

impl Local {
    fn new(kn: &Knots, x: f64, k: usize) -> Local {
        let bin = Knots::bin(&kn.cw[..=k], x, k);
        let w = kn.cw[bin + 1] - kn.cw[bin];
        let h = kn.ch[bin + 1] - kn.ch[bin];
        let theta = (x - kn.cw[bin]) / w;
        let delta = h / w;
        let (d0, d1) = (kn.d(bin), kn.d(bin + 1));
        let t = theta * (1.0 - theta);
        Local {
            bin,
            theta,
            w,
            h,
            delta,
            d0,
            d1,
            t,
            num: h * (delta * theta * theta + d0 * t),
            den: delta + (d0 + d1 - 2.0 * delta) * t,
            q: d1 * theta * theta + 2.0 * delta * t + d0 * (1.0 - theta) * (1.0 - theta),
        }
    }
    fn y(&self, kn: &Knots) -> f64 {
        kn.ch[self.bin] + self.num / self.den
    }
    fn log_derivative(&self) -> f64 {
        (self.delta * self.delta * self.q).ln() - 2.0 * self.den.ln()
    }
}

/// Evaluates one element: `(output, log s')`; `p` holds the 3K − 1 raw parameters. `EXACT`:
/// f64 throughout; otherwise the softmax exponentials in f32 (relative error ~1e-7).
pub fn eval<const EXACT: bool>(p: &[f64], v: f64, cfg: &SplineConfig, inverse: bool) -> (f64, f64) {
    let b = cfg.tail_bound;
    if !(-b..=b).contains(&v) {
        return (v, 0.0);
    }
    let k = cfg.bins;
    let kn = Knots::new::<EXACT>(p, cfg);
    if !inverse {
        let l = Local::new(&kn, v, k);
        return (l.y(&kn), l.log_derivative());
    }
    let bin = Knots::bin(&kn.ch[..=k], v, k);
    let (w, h) = (kn.cw[bin + 1] - kn.cw[bin], kn.ch[bin + 1] - kn.ch[bin]);
    let delta = h / w;
    let (d0, d1) = (kn.d(bin), kn.d(bin + 1));
    let sum_d = d0 + d1 - 2.0 * delta;
    let dy = v - kn.ch[bin];
    let a = h * (delta - d0) + dy * sum_d;
    let bq = h * d0 - dy * sum_d;
    let c = -delta * dy;
    let disc = (bq * bq - 4.0 * a * c).max(0.0);
    let root = (2.0 * c) / (-bq - disc.sqrt());
    let x = root * w + kn.cw[bin];
    let t = root * (1.0 - root);
    let den = delta + sum_d * t;
    let q = d1 * root * root + 2.0 * delta * t + d0 * (1.0 - root) * (1.0 - root);
    (x, (delta * delta * q).ln() - 2.0 * den.ln())
}

/// Reverse mode through the forward map at `x` (inside the bound): adds `gy·∂y/∂· + gl·∂ld/∂·`
/// to `gp` (raw parameters) and returns the part for `x`.
fn forward_grad(kn: &Knots, x: f64, cfg: &SplineConfig, gy: f64, gl: f64, gp: &mut [f64]) -> f64 {
    let k = cfg.bins;
    let b = cfg.tail_bound;
    let l = Local::new(kn, x, k);
    let (theta, t, delta, d0, d1) = (l.theta, l.t, l.delta, l.d0, l.d1);
    let dt = 1.0 - 2.0 * theta;
    let sum_d = d0 + d1 - 2.0 * delta;
    // y = ch + num / den
    let g_num = gy / l.den;
    let mut g_den = -gy * l.num / (l.den * l.den);
    let g_ch = gy;
    // ld = 2 ln δ + ln q − 2 ln den
    let g_q = gl / l.q;
    g_den += -2.0 * gl / l.den;
    let mut g_delta = 2.0 * gl / delta;
    // num = H (δθ² + d0 t)
    let mut g_h = g_num * (delta * theta * theta + d0 * t);
    g_delta += g_num * l.h * theta * theta;
    let mut g_theta = g_num * l.h * (2.0 * delta * theta + d0 * dt);
    let mut g_d0 = g_num * l.h * t;
    let mut g_d1 = 0.0;
    // den = δ + (d0 + d1 − 2δ) t
    g_delta += g_den * (1.0 - 2.0 * t);
    g_d0 += g_den * t;
    g_d1 += g_den * t;
    g_theta += g_den * sum_d * dt;
    // q = d1 θ² + 2δ t + d0 (1 − θ)²
    g_d1 += g_q * theta * theta;
    g_delta += g_q * 2.0 * t;
    g_d0 += g_q * (1.0 - theta) * (1.0 - theta);
    g_theta += g_q * (2.0 * d1 * theta + 2.0 * delta * dt - 2.0 * d0 * (1.0 - theta));
    // θ = (x − cw) / W, δ = H / W
    let gx = g_theta / l.w;
    let g_cw = -g_theta / l.w;
    let g_w = -g_theta * theta / l.w - g_delta * delta / l.w;
    g_h += g_delta / l.w;
    // Knots: c_j = −B + 2B Σ_{i<j} w_i (0 < j < K), c_0 = −B, c_K = B, and the bin size
    // c_{bin+1} − c_bin; w = min + (1 − K·min)·softmax(u / scale).
    let bin = l.bin;
    let mut gw = [0.0f64; MAX_BINS];
    let mut gh = [0.0f64; MAX_BINS];
    for (g, g_pos, g_size) in [(&mut gw, g_cw, g_w), (&mut gh, g_ch, g_h)] {
        // position c_bin, and −c_bin inside the size
        let at_bin = g_pos - g_size;
        if bin >= 1 {
            for gi in g.iter_mut().take(bin) {
                *gi += 2.0 * b * at_bin;
            }
        }
        // +c_{bin+1} inside the size (c_K is constant)
        if bin + 1 < k {
            for gi in g.iter_mut().take(bin + 1) {
                *gi += 2.0 * b * g_size;
            }
        }
    }
    for (g, s, min, off) in [
        (&gw, &kn.sw, cfg.min_width, 0),
        (&gh, &kn.sh, cfg.min_height, k),
    ] {
        let f = 1.0 - min * k as f64;
        let dot: f64 = (0..k).map(|i| s[i] * g[i] * f).sum();
        for i in 0..k {
            gp[off + i] += s[i] * (g[i] * f - dot) / cfg.scale;
        }
    }
    // Interior derivatives d_j = min + softplus(raw_j), raw_j = p[2K + j − 1].
    for (j, gd) in [(bin, g_d0), (bin + 1, g_d1)] {
        if j >= 1 && j < k {
            gp[2 * k + j - 1] += gd * sigmoid(kn.raw_d[j]);
        }
    }
    gx
}

/// The gradient of one element: given the input `v`, the output `out` (from [`eval`]) and the
/// upstream gradients `g_out`, `g_ld`, returns the gradient for `v` and adds the parameters' to
/// `gp` (3K − 1).
#[allow(clippy::too_many_arguments)]
pub fn grad<const EXACT: bool>(
    p: &[f64],
    v: f64,
    out: f64,
    cfg: &SplineConfig,
    inverse: bool,
    g_out: f64,
    g_ld: f64,
    gp: &mut [f64],
) -> f64 {
    let b = cfg.tail_bound;
    if !(-b..=b).contains(&v) {
        return g_out;
    }
    let kn = Knots::new::<EXACT>(p, cfg);
    if !inverse {
        return forward_grad(&kn, v, cfg, g_out, g_ld, gp);
    }
    // x = s⁻¹(y; p), ld = L(x; p): with G = g_x + g_ld·∂L/∂x, dy = G / s'(x) and
    // dp = −G·(∂s/∂p) / s'(x) + g_ld·∂L/∂p.
    let x = out;
    let mut scratch = [0.0f64; 3 * MAX_BINS];
    let dl_dx = forward_grad(&kn, x, cfg, 0.0, 1.0, &mut scratch[..gp.len()]);
    let l = Local::new(&kn, x, cfg.bins);
    let slope = l.log_derivative().exp();
    let big_g = g_out + g_ld * dl_dx;
    forward_grad(&kn, x, cfg, -big_g / slope, g_ld, gp);
    big_g / slope
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::spline::tests::random_params;
    use crate::kernels::spline::Rqs;

    fn cfg() -> SplineConfig {
        SplineConfig {
            scale: 1.7,
            ..SplineConfig::new(6, 3.0)
        }
    }

    #[test]
    fn eval_matches_the_scalar_spline() {
        let c = cfg();
        let p = random_params(40, c.n_params(), 5);
        for i in 0..40 {
            let pi = &p[i * c.n_params()..(i + 1) * c.n_params()];
            let v = -3.5 + 7.0 * i as f64 / 39.0;
            let s = Rqs::new(pi, &c);
            for (inv, want) in [(false, s.forward(v)), (true, s.inverse(v))] {
                let got = eval::<true>(pi, v, &c, inv);
                let fast = eval::<false>(pi, v, &c, inv);
                assert!((fast.0 - got.0).abs() < 1e-5 && (fast.1 - got.1).abs() < 1e-5);
                assert!(
                    (got.0 - want.0).abs() < 1e-10,
                    "{inv} {i}: {got:?} vs {want:?}"
                );
                assert!(
                    (got.1 - want.1).abs() < 1e-8,
                    "{inv} {i}: {got:?} vs {want:?}"
                );
            }
        }
    }

    /// Every partial derivative against central differences of [`eval`], both directions.
    #[test]
    fn gradients_match_finite_differences() {
        let c = cfg();
        let np = c.n_params();
        let p = random_params(30, np, 9);
        let (go, gl) = (0.7, -1.3);
        let f = |pi: &[f64], v: f64, inv: bool| {
            let (o, l) = eval::<true>(pi, v, &c, inv);
            go * o + gl * l
        };
        for i in 0..30 {
            let pi = &p[i * np..(i + 1) * np];
            let v = -2.9 + 5.8 * (i as f64 + 0.37) / 30.0;
            for inv in [false, true] {
                let (out, _) = eval::<true>(pi, v, &c, inv);
                let mut gp = vec![0.0; np];
                let gv = grad::<true>(pi, v, out, &c, inv, go, gl, &mut gp);
                let e = 1e-6;
                let num = (f(pi, v + e, inv) - f(pi, v - e, inv)) / (2.0 * e);
                assert!(
                    (gv - num).abs() < 1e-5 * (1.0 + num.abs()),
                    "{inv} {i} v: {gv} vs {num}"
                );
                for j in 0..np {
                    let (mut a, mut b) = (pi.to_vec(), pi.to_vec());
                    a[j] += e;
                    b[j] -= e;
                    let num = (f(&a, v, inv) - f(&b, v, inv)) / (2.0 * e);
                    assert!(
                        (gp[j] - num).abs() < 1e-5 * (1.0 + num.abs()),
                        "{inv} {i} p[{j}]: {} vs {num}",
                        gp[j]
                    );
                }
            }
        }
        // Outside the bound: identity, no parameter gradient.
        let mut gp = vec![0.0; np];
        assert_eq!(
            grad::<false>(&p[..np], 3.2, 3.2, &c, false, go, gl, &mut gp),
            go
        );
        assert!(gp.iter().all(|&g| g == 0.0));
    }
}
