//! The monotonic rational-quadratic spline of one feature on scalars (f64), parametrised as
//! nflows' `unconstrained_rational_quadratic_spline` (see [`crate::flow::spline`], whose
//! differentiable tensor version is tested against this one).

/// Spline settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplineConfig {
    /// Number of bins K.
    pub bins: usize,
    /// Tail bound B: the spline acts on [−B, B], identity outside.
    pub tail_bound: f64,
    /// Minimum bin width (fraction of 2B).
    pub min_width: f64,
    /// Minimum bin height.
    pub min_height: f64,
    /// Minimum derivative.
    pub min_derivative: f64,
    /// Divisor of the unnormalised widths and heights before the softmax. nflows divides by
    /// √hidden only when the autoregressive net has a `hidden_features` attribute
    /// (`nflows.nn.nde.made.MADE`); the MADE that `MaskedPiecewiseRationalQuadratic…Transform`
    /// builds (`nflows.transforms.made.MADE`, in 0.14 and on GitHub) has none, so the reference
    /// flows divide by 1.
    pub scale: f64,
}

impl SplineConfig {
    /// K bins on [−B, B] with nflows' minimum sizes (1e-6) and unscaled widths and heights, as
    /// `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` (see [`Self::scale`]).
    pub fn new(bins: usize, tail_bound: f64) -> Self {
        SplineConfig {
            bins,
            tail_bound,
            min_width: 1e-6,
            min_height: 1e-6,
            min_derivative: 1e-6,
            scale: 1.0,
        }
    }
    /// Parameters per feature, 3K − 1.
    pub fn n_params(&self) -> usize {
        3 * self.bins - 1
    }
    pub(crate) fn boundary_derivative(&self) -> f64 {
        // softplus(c) + min_d = 1
        ((1.0 - self.min_derivative).exp() - 1.0).ln()
    }
}

/// One feature's spline on scalars (f64), built from its 3K−1 raw parameters.
#[derive(Debug, Clone)]
pub struct Rqs {
    cw: Vec<f64>,
    ch: Vec<f64>,
    d: Vec<f64>,
    bound: f64,
}

/// Largest supported number of bins.
pub const MAX_BINS: usize = 64;

fn knots_scalar(u: &[f64], min: f64, bound: f64, scale: f64, out: &mut Vec<f64>) {
    let k = u.len();
    let m = u.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v / scale));
    let mut e = [0.0f64; MAX_BINS];
    for (ei, &v) in e.iter_mut().zip(u) {
        *ei = (v / scale - m).exp();
    }
    let e = &e[..k];
    let s: f64 = e.iter().sum();
    out.clear();
    out.push(-bound);
    let mut acc = 0.0;
    for &ei in e.iter().take(k - 1) {
        acc += min + (1.0 - min * k as f64) * ei / s;
        out.push(acc * 2.0 * bound - bound);
    }
    out.push(bound);
}

fn softplus_scalar(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

impl Rqs {
    /// The spline of raw parameters `p` (length 3K−1).
    pub fn new(p: &[f64], cfg: &SplineConfig) -> Self {
        let mut s = Rqs {
            cw: Vec::new(),
            ch: Vec::new(),
            d: Vec::new(),
            bound: cfg.tail_bound,
        };
        s.set(p.iter().copied(), cfg);
        s
    }

    /// Rebuilds the spline in place from raw parameters (no allocation once warm).
    pub fn set(&mut self, p: impl Iterator<Item = f64>, cfg: &SplineConfig) {
        let k = cfg.bins;
        let mut raw = [0.0f64; 3 * MAX_BINS];
        let mut n = 0;
        for v in p {
            raw[n] = v;
            n += 1;
        }
        debug_assert_eq!(n, 3 * k - 1);
        knots_scalar(
            &raw[..k],
            cfg.min_width,
            cfg.tail_bound,
            cfg.scale,
            &mut self.cw,
        );
        knots_scalar(
            &raw[k..2 * k],
            cfg.min_height,
            cfg.tail_bound,
            cfg.scale,
            &mut self.ch,
        );
        let c = softplus_scalar(cfg.boundary_derivative()) + cfg.min_derivative;
        self.d.clear();
        self.d.push(c);
        self.d.extend(
            raw[2 * k..3 * k - 1]
                .iter()
                .map(|&v| softplus_scalar(v) + cfg.min_derivative),
        );
        self.d.push(c);
        self.bound = cfg.tail_bound;
    }

    fn bin(knots: &[f64], v: f64) -> usize {
        knots[1..knots.len() - 1]
            .iter()
            .filter(|&&k| v >= k)
            .count()
    }

    /// Bin i's width, height, slope and knot derivatives.
    fn bin_shape(&self, i: usize) -> (f64, f64, f64, f64, f64) {
        let (w, h) = (self.cw[i + 1] - self.cw[i], self.ch[i + 1] - self.ch[i]);
        (w, h, h / w, self.d[i], self.d[i + 1])
    }

    /// log|dy/dx| at relative position θ of a bin with slope δ and knot derivatives d0, d1.
    fn log_derivative(delta: f64, d0: f64, d1: f64, theta: f64) -> f64 {
        let tom = theta * (1.0 - theta);
        let den = delta + (d0 + d1 - 2.0 * delta) * tom;
        let dnum = delta
            * delta
            * (d1 * theta * theta + 2.0 * delta * tom + d0 * (1.0 - theta) * (1.0 - theta));
        dnum.ln() - 2.0 * den.ln()
    }

    /// y = s(x) and log|dy/dx|.
    pub fn forward(&self, x: f64) -> (f64, f64) {
        if !(x >= -self.bound && x <= self.bound) {
            return (x, 0.0);
        }
        let i = Self::bin(&self.cw, x);
        let (w, h, delta, d0, d1) = self.bin_shape(i);
        let theta = (x - self.cw[i]) / w;
        let tom = theta * (1.0 - theta);
        let den = delta + (d0 + d1 - 2.0 * delta) * tom;
        let y = self.ch[i] + h * (delta * theta * theta + d0 * tom) / den;
        (y, Self::log_derivative(delta, d0, d1, theta))
    }

    /// x = s⁻¹(y) and log|dy/dx| at x.
    pub fn inverse(&self, y: f64) -> (f64, f64) {
        if !(y >= -self.bound && y <= self.bound) {
            return (y, 0.0);
        }
        let i = Self::bin(&self.ch, y);
        let (w, h, delta, d0, d1) = self.bin_shape(i);
        let sum_d = d0 + d1 - 2.0 * delta;
        let dy = y - self.ch[i];
        let a = h * (delta - d0) + dy * sum_d;
        let b = h * d0 - dy * sum_d;
        let c = -delta * dy;
        let disc = (b * b - 4.0 * a * c).max(0.0);
        let root = 2.0 * c / (-b - disc.sqrt());
        (
            root * w + self.cw[i],
            Self::log_derivative(delta, d0, d1, root),
        )
    }
}

/// Splines evaluated together, one per vector lane.
pub const LANES: usize = 16;
const L: usize = LANES;

/// Applies `n` splines at once (f32, [`LANES`] per vector): spline `j` has raw parameters
/// `params[j·P..(j+1)·P]` (P = 3K − 1) and is evaluated at `x[j]`, forward (`y = s(x)`) or
/// inverse (`y = s⁻¹(x)`); `ld[j]` gets log|ds/dx| at the input (forward) or the output
/// (inverse). Outside [−B, B] a spline is the identity with `ld = 0`.
///
/// This is the generation path of the flows: the same arithmetic as [`Rqs`] in single
/// precision (as the burn model that was trained), with polynomial `exp`/`ln` so that it
/// vectorises (parameters are gathered into one vector per parameter). Every spline's result
/// depends only on its own parameters and input (the same operations in every lane, no fused
/// multiply-adds), so it is identical on every instruction set and for any batch.
pub fn eval_many(
    cfg: &SplineConfig,
    params: &[f32],
    x: &[f32],
    y: &mut [f32],
    ld: &mut [f32],
    inverse: bool,
) {
    let n = x.len();
    assert!(cfg.bins >= 2 && cfg.bins <= MAX_BINS, "{} bins", cfg.bins);
    assert_eq!(
        params.len(),
        n * cfg.n_params(),
        "parameters are not {n} × {}",
        cfg.n_params()
    );
    assert!(y.len() == n && ld.len() == n, "outputs are not {n} long");
    if n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::avx512() {
            // SAFETY: AVX-512F present (checked once at run time).
            return unsafe { eval_avx512(cfg, params, x, y, ld, inverse) };
        }
        if super::simd::simd() {
            // SAFETY: AVX2/FMA present.
            return unsafe { eval_avx2(cfg, params, x, y, ld, inverse) };
        }
    }
    eval_lanes(cfg, params, x, y, ld, inverse)
}

/// `eval_lanes` compiled for an instruction set (the same code, vectorised for it).
macro_rules! eval_for {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            c: &SplineConfig,
            p: &[f32],
            x: &[f32],
            y: &mut [f32],
            ld: &mut [f32],
            inv: bool,
        ) {
            eval_lanes(c, p, x, y, ld, inv)
        }
    };
}
eval_for!(eval_avx512, "avx512f");
eval_for!(eval_avx2, "avx2,fma");

type V = [f32; L];

/// `[f(0), …, f(L−1)]` as a plain loop (which vectorises; `std::array::from_fn` may not).
macro_rules! map {
    (|$l:ident| $e:expr) => {{
        let mut o = [0.0f32; L];
        for $l in 0..L {
            o[$l] = $e;
        }
        o
    }};
}

/// exp of each lane (Cephes' expf; plain multiplies and adds, |rel err| < 3e-7).
#[inline(always)]
fn exp_v(x: &V) -> V {
    map!(|l| {
        // max/min map NaN to a bound (so the conversion below is defined); NaN is restored last.
        let v = x[l].max(-87.3).min(88.3);
        let fx = (v * std::f32::consts::LOG2_E + 0.5).floor();
        let r = v - fx * 0.693_359_4 - fx * -2.121_944_4e-4;
        let mut q = 1.987_569_1e-4f32;
        q = q * r + 1.398_199_9e-3;
        q = q * r + 8.333_452e-3;
        q = q * r + 4.166_579_6e-2;
        q = q * r + 0.166_666_65;
        q = q * r + 0.5;
        let e = q * (r * r) + (r + 1.0);
        // SAFETY: fx is an integer in [−126, 127].
        let n = unsafe { fx.to_int_unchecked::<i32>() };
        let r = e * f32::from_bits(((n + 127) << 23) as u32);
        if x[l].is_nan() {
            x[l]
        } else {
            r
        }
    })
}

/// Natural log of each (positive, normal) lane (Cephes' logf, |rel err| < 2e-7).
#[inline(always)]
fn ln_v(x: &V) -> V {
    map!(|l| {
        let b = x[l].max(f32::MIN_POSITIVE).to_bits();
        let mut e = ((b >> 23) & 0xff) as i32 - 126;
        let m0 = f32::from_bits((b & 0x007f_ffff) | 0x3f00_0000);
        let small = m0 < std::f32::consts::FRAC_1_SQRT_2;
        e -= small as i32;
        let m = if small { m0 + m0 - 1.0 } else { m0 - 1.0 };
        let z = m * m;
        let mut q = 7.037_683_6e-2f32;
        for c in [
            -1.151_461_1e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333_1e-1,
        ] {
            q = q * m + c;
        }
        let ef = e as f32;
        let r = q * m * z + ef * -2.121_944_4e-4 - 0.5 * z;
        m + r + ef * 0.693_359_4
    })
}

/// softplus(v) = max(v, 0) + ln(1 + e^−|v|), with ln(1 + t) accurate for small t.
#[inline(always)]
fn softplus_v(v: &V) -> V {
    let t = exp_v(&map!(|l| -v[l].abs()));
    let u = map!(|l| 1.0 + t[l]);
    let lu = ln_v(&u);
    map!(|l| {
        let lp = if u[l] == 1.0 {
            t[l]
        } else {
            lu[l] * (t[l] / (u[l] - 1.0))
        };
        v[l].max(0.0) + lp
    })
}

/// Knot positions (K + 1 per lane) from K unnormalised sizes per lane.
#[inline(always)]
fn knots_v(u: &[V], min: f32, bound: f32, scale: f32, out: &mut [V]) {
    let k = u.len();
    let mut mx = [f32::NEG_INFINITY; L];
    for uj in u {
        for l in 0..L {
            mx[l] = mx[l].max(uj[l] / scale);
        }
    }
    // out[j + 1] holds e_j = exp(u_j / scale − max) until it is turned into knot j + 1.
    let mut s = [0.0f32; L];
    for (j, uj) in u.iter().enumerate() {
        out[j + 1] = exp_v(&map!(|l| uj[l] / scale - mx[l]));
        for l in 0..L {
            s[l] += out[j + 1][l];
        }
    }
    let a = 1.0 - min * k as f32;
    let r = map!(|l| a / s[l]);
    let mut acc = [0.0f32; L];
    out[0] = [-bound; L];
    for j in 0..k - 1 {
        for l in 0..L {
            acc[l] += min + out[j + 1][l] * r[l];
        }
        out[j + 1] = map!(|l| acc[l] * 2.0 * bound - bound);
    }
    out[k] = [bound; L];
}

#[inline(always)]
fn eval_lanes(
    cfg: &SplineConfig,
    params: &[f32],
    x: &[f32],
    y: &mut [f32],
    ld: &mut [f32],
    inverse: bool,
) {
    let (k, np, n) = (cfg.bins, cfg.n_params(), x.len());
    let bound = cfg.tail_bound as f32;
    let scale = cfg.scale as f32;
    let dc = (softplus_scalar(cfg.boundary_derivative()) + cfg.min_derivative) as f32;
    let md = cfg.min_derivative as f32;
    // Exactly sized (zeroing MAX_BINS-sized arrays would cost more than a small group's splines).
    let mut cw = vec![[0.0f32; L]; k + 1];
    let mut ch = vec![[0.0f32; L]; k + 1];
    let mut d = vec![[0.0f32; L]; k + 1];
    let mut ub = vec![[0.0f32; L]; np];
    let mut j0 = 0;
    while j0 < n {
        let m = L.min(n - j0);
        // The group's parameters as np vectors of L lanes (gathered; rows past the end repeat
        // the last spline).
        let u = &mut ub[..];
        for (q, uq) in u.iter_mut().enumerate() {
            *uq = map!(|l| {
                let j = (j0 + l).min(n - 1);
                // SAFETY: j < n and q < np, so the index is inside params (length n·np).
                unsafe { *params.get_unchecked(j * np + q) }
            });
        }
        let u = &*u;
        let xv: V = map!(|l| if l < m { x[j0 + l] } else { 0.0 });
        knots_v(&u[..k], cfg.min_width as f32, bound, scale, &mut cw);
        knots_v(&u[k..2 * k], cfg.min_height as f32, bound, scale, &mut ch);
        d[0] = [dc; L];
        d[k] = [dc; L];
        for j in 1..k {
            let sp = softplus_v(&u[2 * k + j - 1]);
            d[j] = map!(|l| sp[l] + md);
        }
        // Bin of each lane and its shape.
        let knots = if inverse { &ch } else { &cw };
        let mut bin = [0u32; L];
        for kn in &knots[1..k] {
            for l in 0..L {
                bin[l] += (xv[l] >= kn[l]) as u32;
            }
        }
        let (mut x0, mut x1, mut y0, mut y1, mut d0, mut d1) = (
            [0.0f32; L],
            [0.0f32; L],
            [0.0f32; L],
            [0.0f32; L],
            [0.0f32; L],
            [0.0f32; L],
        );
        // One-hot sums (exact: one term is the value, the others are zeros), not conditional
        // stores, so that the loop vectorises.
        for j in 0..k {
            let jj = j as u32;
            for l in 0..L {
                let s = (bin[l] == jj) as u32 as f32;
                x0[l] += s * cw[j][l];
                x1[l] += s * cw[j + 1][l];
                y0[l] += s * ch[j][l];
                y1[l] += s * ch[j + 1][l];
                d0[l] += s * d[j][l];
                d1[l] += s * d[j + 1][l];
            }
        }
        let w = map!(|l| x1[l] - x0[l]);
        let h = map!(|l| y1[l] - y0[l]);
        let delta = map!(|l| h[l] / w[l]);
        let sum_d = map!(|l| d0[l] + d1[l] - 2.0 * delta[l]);
        let (out, theta) = if inverse {
            let theta = map!(|l| {
                let dy = xv[l] - y0[l];
                let a = h[l] * (delta[l] - d0[l]) + dy * sum_d[l];
                let b = h[l] * d0[l] - dy * sum_d[l];
                let c = -delta[l] * dy;
                let disc = (b * b - 4.0 * a * c).max(0.0);
                2.0 * c / (-b - disc.sqrt())
            });
            (map!(|l| theta[l] * w[l] + x0[l]), theta)
        } else {
            let theta = map!(|l| (xv[l] - x0[l]) / w[l]);
            let out = map!(|l| {
                let t = theta[l];
                let tom = t * (1.0 - t);
                y0[l] + h[l] * (delta[l] * t * t + d0[l] * tom) / (delta[l] + sum_d[l] * tom)
            });
            (out, theta)
        };
        // log|ds/dx| = ln(δ² (d1 θ² + 2δ θ(1−θ) + d0 (1−θ)²)) − 2 ln(δ + (d0 + d1 − 2δ) θ(1−θ)).
        let num = map!(|l| {
            let t = theta[l];
            let tom = t * (1.0 - t);
            delta[l]
                * delta[l]
                * (d1[l] * t * t + 2.0 * delta[l] * tom + d0[l] * (1.0 - t) * (1.0 - t))
        });
        let den = map!(|l| {
            let t = theta[l];
            delta[l] + sum_d[l] * (t * (1.0 - t))
        });
        let lr = ln_v(&map!(|l| num[l] / (den[l] * den[l])));
        for l in 0..m {
            let inside = xv[l] >= -bound && xv[l] <= bound;
            y[j0 + l] = if inside { out[l] } else { xv[l] };
            ld[j0 + l] = if inside { lr[l] } else { 0.0 };
        }
        j0 += m;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` splines' raw parameters (`p` each), uniform in [−3, 3).
    pub(crate) fn random_params(n: usize, p: usize, seed: u64) -> Vec<f64> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * p).map(|_| r.random_range(-3.0..3.0)).collect()
    }

    #[test]
    fn scalar_spline_inverts_and_logdet_matches_finite_difference() {
        let cfg = SplineConfig {
            scale: 2.0,
            ..SplineConfig::new(8, 3.0)
        };
        let p = random_params(1, cfg.n_params(), 1);
        let s = Rqs::new(&p, &cfg);
        for i in 0..400 {
            let x = -4.0 + 8.0 * i as f64 / 399.0;
            let (y, ld) = s.forward(x);
            let (x2, ld2) = s.inverse(y);
            assert!((x - x2).abs() < 1e-9, "{x} -> {y} -> {x2}");
            assert!((ld - ld2).abs() < 1e-7);
            let h = 1e-6;
            if (x.abs() - 3.0).abs() > 2e-6 {
                let num = ((s.forward(x + h).0 - s.forward(x - h).0) / (2.0 * h)).ln();
                assert!((num - ld).abs() < 1e-4, "x {x}: {num} vs {ld}");
            }
        }
        // Identity tails and continuity at the bounds.
        assert_eq!(s.forward(5.0), (5.0, 0.0));
        assert!((s.forward(3.0).0 - 3.0).abs() < 1e-12 && (s.forward(-3.0).0 + 3.0).abs() < 1e-12);
    }

    #[test]
    fn vector_splines_match_the_f64_spline_for_any_batch() {
        for (bins, scale) in [(8, 1.0), (5, 2.0), (2, 1.0)] {
            let cfg = SplineConfig {
                scale,
                ..SplineConfig::new(bins, 3.0)
            };
            let np = cfg.n_params();
            let n = 37;
            let p64 = random_params(n, np, 3);
            let p: Vec<f32> = p64.iter().map(|&v| v as f32).collect();
            // Inputs across the whole range, tails and bounds included.
            let x: Vec<f32> = (0..n)
                .map(|i| -3.5 + 7.0 * i as f32 / (n - 1) as f32)
                .collect();
            let mut x = x;
            x[3] = 3.0;
            x[4] = -3.0;
            x[5] = f32::NAN;
            for inverse in [false, true] {
                let (mut y, mut ld) = (vec![0.0; n], vec![0.0; n]);
                eval_many(&cfg, &p, &x, &mut y, &mut ld, inverse);
                let mut back = vec![0.0; n];
                let mut ld2 = vec![0.0; n];
                eval_many(&cfg, &p, &y, &mut back, &mut ld2, !inverse);
                for j in 0..n {
                    if x[j].is_nan() {
                        assert!(y[j].is_nan() && ld[j] == 0.0);
                        continue;
                    }
                    let pj: Vec<f64> = p[j * np..(j + 1) * np].iter().map(|&v| v as f64).collect();
                    let s = Rqs::new(&pj, &cfg);
                    let (wy, wl) = if inverse {
                        s.inverse(x[j] as f64)
                    } else {
                        s.forward(x[j] as f64)
                    };
                    assert!(
                        (y[j] as f64 - wy).abs() < 2e-5,
                        "{bins} bins, x {}: {} vs {wy}",
                        x[j],
                        y[j]
                    );
                    assert!(
                        (ld[j] as f64 - wl).abs() < 2e-4,
                        "{bins} bins, x {}: ld {} vs {wl}",
                        x[j],
                        ld[j]
                    );
                    // f32 round trip: an error of y is magnified by the slope of the way back.
                    let tol = 2e-5 * (ld[j].abs() as f64).exp().max(1.0);
                    assert!(
                        ((back[j] - x[j]).abs() as f64) < tol,
                        "round trip {} -> {} -> {}",
                        x[j],
                        y[j],
                        back[j]
                    );
                    assert!((ld[j] - ld2[j]).abs() < 2e-4);
                    // Each spline alone gives the same bits as in the batch.
                    let (mut y1, mut l1) = ([0.0], [0.0]);
                    eval_many(
                        &cfg,
                        &p[j * np..(j + 1) * np],
                        &x[j..j + 1],
                        &mut y1,
                        &mut l1,
                        inverse,
                    );
                    assert_eq!(
                        (y1[0].to_bits(), l1[0].to_bits()),
                        (y[j].to_bits(), ld[j].to_bits())
                    );
                }
            }
        }
        // Portable lanes give the same bits as the vectorised dispatch.
        let cfg = SplineConfig::new(8, 3.0);
        let p: Vec<f32> = random_params(40, cfg.n_params(), 9)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let x: Vec<f32> = (0..40).map(|i| -3.0 + 0.15 * i as f32).collect();
        let (mut a, mut la, mut b, mut lb) =
            (vec![0.0; 40], vec![0.0; 40], vec![0.0; 40], vec![0.0; 40]);
        eval_many(&cfg, &p, &x, &mut a, &mut la, true);
        eval_lanes(&cfg, &p, &x, &mut b, &mut lb, true);
        assert_eq!((a, la), (b, lb));
    }

    #[test]
    fn vector_exp_and_ln_are_accurate() {
        let xs: Vec<f32> = (-80..80).map(|i| i as f32 * 1.03).collect();
        for c in xs.chunks_exact(L) {
            let v: V = c.try_into().unwrap();
            let e = exp_v(&v);
            for l in 0..L {
                assert!((e[l] as f64 - (v[l] as f64).exp()).abs() <= 4e-7 * (v[l] as f64).exp());
            }
            let pos: V = map!(|l| (v[l] * 0.2).exp());
            let g = ln_v(&pos);
            for l in 0..L {
                assert!(
                    (g[l] as f64 - (pos[l] as f64).ln()).abs()
                        < 3e-7 * (1.0 + (pos[l] as f64).ln().abs())
                );
            }
        }
    }
}
