//! Vector arithmetic shared by the kernels: run-time AVX2/FMA dispatch, the dot product, and
//! the activations (exp, SiLU, GELU) with vectorised exp.

#[cfg(target_arch = "x86_64")]
static HAS_AVX2_FMA: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
});

#[cfg(target_arch = "x86_64")]
static HAS_AVX512F: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| is_x86_feature_detected!("avx512f"));

/// Whether the AVX-512F kernels run (checked once at run time).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        *HAS_AVX512F
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 + FMA kernels run (checked once at run time).
pub fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        *HAS_AVX2_FMA
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `fn $name(&self, args) -> R` that runs `$imp`, compiled a second time for AVX2/FMA (as
/// `$avx`, so that its plain loops vectorise for them) and chosen at run time.
macro_rules! simd_method {
    ($(#[$meta:meta])* $vis:vis $name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $(#[$meta])*
        $vis fn $name(&self, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::simd::simd() {
                // SAFETY: AVX2/FMA present; the body is the same code, vectorised for them.
                return unsafe { self.$avx($($arg),*) };
            }
            self.$imp($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx(&self, $($arg: $ty),*) $(-> $ret)? {
            self.$imp($($arg),*)
        }
    };
}
pub(crate) use simd_method;

/// Dot product; AVX2 + FMA when the CPU has them (checked once), else portable 8-lane code.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd() {
            // SAFETY: the CPU supports AVX2 and FMA (runtime check above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i < n - 15 or i < n - 7, inside both slices.
    unsafe {
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let hi = _mm256_extractf128_ps(acc, 1);
    let lo = _mm256_castps256_ps128(acc);
    let s4 = _mm_add_ps(hi, lo);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    let mut s = _mm_cvtss_f32(s1);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[inline]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// x ← x · σ(x).
pub fn silu(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2/FMA present.
        unsafe { silu_avx2(x) };
        return;
    }
    for v in x {
        *v /= 1.0 + (-*v).exp();
    }
}

/// x ← exp(x).
pub fn exp_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2/FMA present.
        unsafe { exp_avx2_slice(x) };
        return;
    }
    for v in x {
        *v = v.exp();
    }
}

/// exp of 8 lanes (Cephes' expf: range reduction by ln 2, degree-5 polynomial; |rel err| <
/// 2e-7 on [−87, 88]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.3),
    );
    let fx = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
    }
    y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(x, x),
        _mm256_add_ps(x, _mm256_set1_ps(1.0)),
    );
    let e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2_slice(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut ch = x.chunks_exact_mut(8);
    for c in &mut ch {
        _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr())));
    }
    for v in ch.into_remainder() {
        *v = v.exp();
    }
}

/// x ← exp(x − m), returning Σ x (a softmax row before its normalisation, in one pass).
pub fn exp_shifted_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2/FMA present.
        return unsafe { exp_shifted_sum_avx2(x, m) };
    }
    x.iter_mut().for_each(|v| *v = (*v - m).exp());
    sum(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_sum_avx2(x: &mut [f32], m: f32) -> f32 {
    use std::arch::x86_64::*;
    let mv = _mm256_set1_ps(m);
    let mut acc = _mm256_setzero_ps();
    let mut ch = x.chunks_exact_mut(8);
    for c in &mut ch {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
        _mm256_storeu_ps(c.as_mut_ptr(), e);
        acc = _mm256_add_ps(acc, e);
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s: f32 = lanes.iter().sum();
    for v in ch.into_remainder() {
        *v = (*v - m).exp();
        s += *v;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let mut ch = x.chunks_exact_mut(8);
    for c in &mut ch {
        let v = _mm256_loadu_ps(c.as_ptr());
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
        _mm256_storeu_ps(c.as_mut_ptr(), _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    for v in ch.into_remainder() {
        *v /= 1.0 + (-*v).exp();
    }
}

/// erf to ~1e-7 (Numerical Recipes' erfc Chebyshev fit).
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let poly = p.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    let erfc = t * (-z * z + poly).exp();
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

/// x ← GELU(x) = x Φ(x) (the exact form, with erf; as burn's `gelu`).
pub fn gelu(x: &mut [f32]) {
    for v in x {
        *v = (0.5 * *v as f64 * (1.0 + erf(*v as f64 / std::f64::consts::SQRT_2))) as f32;
    }
}

/// x ← GELU(x) as [`gelu`], vectorised in f32 (the same erf fit, |error| ≈ 1e-6): for
/// networks whose twins are not held to bit-exact golden outputs (AllShowers).
pub fn gelu_fast(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2/FMA present.
        unsafe { gelu_avx2(x) };
        return;
    }
    gelu(x)
}

/// erf(u) in 8 lanes, the fit of [`erf`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn erf8(u: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    const P: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let one = _mm256_set1_ps(1.0);
    let sign_mask = _mm256_set1_ps(-0.0);
    let z = _mm256_andnot_ps(sign_mask, u);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5), z, one));
    let mut poly = _mm256_set1_ps(P[9]);
    for &k in P[..9].iter().rev() {
        poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(k));
    }
    let arg = _mm256_fnmadd_ps(z, z, poly);
    let erfc = _mm256_mul_ps(t, exp8(arg));
    // erf(|u|) = 1 − erfc, with u's sign.
    _mm256_or_ps(_mm256_sub_ps(one, erfc), _mm256_and_ps(u, sign_mask))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let half = _mm256_set1_ps(0.5);
    let mut ch = x.chunks_exact_mut(8);
    for c in &mut ch {
        let v = _mm256_loadu_ps(c.as_ptr());
        let e = erf8(_mm256_mul_ps(
            v,
            _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let g = _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e));
        _mm256_storeu_ps(c.as_mut_ptr(), g);
    }
    gelu(ch.into_remainder());
}

/// The gradient through GELU: `gx = gy · (Φ(x) + x φ(x))`, Φ from the erf fit of
/// [`gelu_fast`] (φ the standard normal density).
pub fn gelu_grad_fast(x: &[f32], gy: &[f32], gx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2/FMA present.
        unsafe { gelu_grad_avx2(x, gy, gx) };
        return;
    }
    gelu_grad(x, gy, gx)
}

fn gelu_grad(x: &[f32], gy: &[f32], gx: &mut [f32]) {
    for ((o, &v), &g) in gx.iter_mut().zip(x).zip(gy) {
        let v = v as f64;
        let cdf = 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
        *o = (g as f64 * (cdf + v * pdf)) as f32;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_grad_avx2(x: &[f32], gy: &[f32], gx: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(gy.len()).min(gx.len());
    let half = _mm256_set1_ps(0.5);
    let inv_sqrt_2pi = _mm256_set1_ps(0.398_942_3);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(x[i..].as_ptr());
        let e = erf8(_mm256_mul_ps(
            v,
            _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let cdf = _mm256_fmadd_ps(half, e, half);
        let pdf = _mm256_mul_ps(
            inv_sqrt_2pi,
            exp8(_mm256_mul_ps(_mm256_set1_ps(-0.5), _mm256_mul_ps(v, v))),
        );
        let d = _mm256_fmadd_ps(v, pdf, cdf);
        let g = _mm256_mul_ps(_mm256_loadu_ps(gy[i..].as_ptr()), d);
        _mm256_storeu_ps(gx[i..].as_mut_ptr(), g);
        i += 8;
    }
    gelu_grad(&x[i..n], &gy[i..n], &mut gx[i..n]);
}

/// Σ x in 8 independent lanes (vectorisable), then the lanes.
pub fn sum(x: &[f32]) -> f32 {
    sum_of(x, |v| v)
}

/// Σ f(x) in 8 independent lanes (vectorisable), then the lanes.
#[inline(always)]
pub fn sum_of(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ch = x.chunks_exact(8);
    for c in &mut ch {
        for k in 0..8 {
            acc[k] += f(c[k]);
        }
    }
    acc.iter().sum::<f32>() + ch.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gelu_matches_the_exact_one() {
        let mut x: Vec<f32> = (-1200..=1200).map(|i| i as f32 * 0.01).collect();
        let mut want = x.clone();
        gelu(&mut want);
        gelu_fast(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!((g - w).abs() <= 2e-6 * (1.0 + w.abs()), "{g} vs {w}");
        }
        let v: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        assert_eq!(sum(&v), v.iter().sum::<f32>());
    }

    #[test]
    fn fast_gelu_gradient_matches_the_exact_one() {
        let x: Vec<f32> = (-1200..=1200).map(|i| i as f32 * 0.01 + 0.003).collect();
        let gy: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let (mut fast, mut exact) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        gelu_grad_fast(&x, &gy, &mut fast);
        gelu_grad(&x, &gy, &mut exact);
        for (i, (g, w)) in fast.iter().zip(&exact).enumerate() {
            assert!(
                (g - w).abs() <= 4e-6 * (1.0 + w.abs()),
                "x {}: {g} vs {w}",
                x[i]
            );
        }
        // The exact one against central differences of GELU.
        for &v in &[-3.0f64, -0.7, 0.0, 0.4, 2.5] {
            let f = |u: f64| 0.5 * u * (1.0 + erf(u / std::f64::consts::SQRT_2));
            let fd = (f(v + 1e-4) - f(v - 1e-4)) / 2e-4;
            let mut o = [0.0f32];
            gelu_grad(&[v as f32], &[1.0], &mut o);
            assert!((o[0] as f64 - fd).abs() < 1e-5, "{v}: {} vs {fd}", o[0]);
        }
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut x: Vec<f32> = (-800..=800).map(|i| i as f32 * 0.1).collect();
        let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
        exp_inplace(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!((g - w).abs() <= 3e-7 * w, "{g} vs {w}");
        }
        for (v, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265),
        ] {
            assert!((erf(v) - e).abs() < 2e-7, "erf({v})");
        }
    }

    #[test]
    fn dot_matches_naive_sum_for_every_length() {
        for n in 0..70 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n = {n}");
            assert!((dot_portable(&a, &b) as f64 - want).abs() < 1e-4, "n = {n}");
        }
    }
}
