//! Floating-point helpers that reproduce NumPy's results bit for bit where it matters.

/// Sum of `a` in NumPy's pairwise order (`np.add.reduce` on a contiguous float64 array): blocks
/// of up to 128 values summed with eight interleaved accumulators, larger arrays split in halves
/// at a multiple of 8. Matches `a.sum()` to the last bit and is more accurate than a plain loop.
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[full..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// Pairwise sum of the element-wise product of `a` and `b` (NumPy's `(a * b).sum()`), using
/// `scratch` as the product buffer.
pub fn dot_pairwise(a: &[f64], b: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend(a.iter().zip(b).map(|(x, y)| x * y));
    pairwise_sum(scratch)
}

/// Python's `repr` of a float (what `str(np.float64)` prints): shortest round-trip digits, fixed
/// notation for decimal exponents in [-4, 16), otherwise `1.5e-05` style.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{}{}.0", digits, "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

// ---------------------------------------------------------------------------------------------
// Correctly rounded log10 and 10^x through double-double arithmetic. NumPy's float64 log10 and
// power are correctly rounded in practice (SIMD builds on AVX-512 machines), glibc's are not
// always (1 ulp): histogram edges built with logspace then differ in the last bit, and a value
// at an edge (the reference maximum is the last edge by construction) lands in another bin.

#[derive(Clone, Copy, Debug)]
struct Dd(f64, f64);

fn two_sum(a: f64, b: f64) -> Dd {
    let s = a + b;
    let bb = s - a;
    Dd(s, (a - (s - bb)) + (b - bb))
}

fn fast_two_sum(a: f64, b: f64) -> Dd {
    let s = a + b;
    Dd(s, b - (s - a))
}

fn dd_add(x: Dd, y: Dd) -> Dd {
    let s = two_sum(x.0, y.0);
    let t = two_sum(x.1, y.1);
    let s = fast_two_sum(s.0, s.1 + t.0);
    fast_two_sum(s.0, s.1 + t.1)
}

fn dd_mul(x: Dd, y: Dd) -> Dd {
    let p = x.0 * y.0;
    let e = x.0.mul_add(y.0, -p);
    fast_two_sum(p, e + (x.0 * y.1 + x.1 * y.0))
}

fn dd_mul_f(x: Dd, y: f64) -> Dd {
    dd_mul(x, Dd(y, 0.0))
}

fn dd_div(x: Dd, y: Dd) -> Dd {
    let q1 = x.0 / y.0;
    let r = dd_add(x, dd_mul_f(y, -q1));
    let q2 = r.0 / y.0;
    let r = dd_add(r, dd_mul_f(y, -q2));
    let q3 = r.0 / y.0;
    dd_add(fast_two_sum(q1, q2), Dd(q3, 0.0))
}

const LN2: Dd = Dd(std::f64::consts::LN_2, 2.319_046_813_846_299_6e-17);
const LN10: Dd = Dd(std::f64::consts::LN_10, -2.170_756_223_382_249_4e-16);

/// exp of a double-double argument (|z| < 700), relative error ~1e-31.
fn dd_exp(z: Dd) -> Dd {
    let k = (z.0 / LN2.0).round();
    let r = dd_add(z, dd_mul_f(LN2, -k));
    // exp(r) with |r| <= 0.35: reduce by 2^-8 and square 8 times.
    let r = dd_mul_f(r, 1.0 / 256.0);
    let mut term = Dd(1.0, 0.0);
    let mut sum = Dd(1.0, 0.0);
    for i in 1..=14 {
        term = dd_mul(term, r);
        term = dd_div(term, Dd(i as f64, 0.0));
        sum = dd_add(sum, term);
    }
    for _ in 0..8 {
        sum = dd_mul(sum, sum);
    }
    let scale = 2f64.powi(k as i32);
    Dd(sum.0 * scale, sum.1 * scale)
}

/// Natural log of x > 0 as a double-double (one Newton step on exp).
fn dd_ln(x: f64) -> Dd {
    let y0 = Dd(x.ln(), 0.0);
    let e = dd_exp(y0);
    // y1 = y0 + (x - e)/e
    let corr = dd_div(dd_add(Dd(x, 0.0), Dd(-e.0, -e.1)), e);
    dd_add(y0, corr)
}

/// log10(x), correctly rounded (up to astronomically rare ties); NaN for x <= 0 or NaN.
pub fn log10_cr(x: f64) -> f64 {
    if !(x > 0.0) || !x.is_finite() {
        return x.log10();
    }
    let r = dd_div(dd_ln(x), LN10);
    r.0 + r.1
}

/// 10^y, correctly rounded (up to astronomically rare ties), for |y| < 300.
pub fn exp10_cr(y: f64) -> f64 {
    if !y.is_finite() || y.abs() >= 300.0 {
        return 10f64.powf(y);
    }
    let r = dd_exp(dd_mul_f(LN10, y));
    r.0 + r.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_repr_matches_python() {
        let cases = [
            (0.5, "0.5"),
            (256.0, "256.0"),
            (4194304.0, "4194304.0"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5e-7, "-2.5e-07"),
            (f64::NAN, "nan"),
            (0.0, "0.0"),
            (123.456, "123.456"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn correctly_rounded_log10_and_exp10() {
        // Values checked with mpmath at 200 bits (glibc's log10 gives 3.9009662376438063 for
        // the first).
        assert_eq!(log10_cr(7960.974588394165), 3.900966237643807);
        assert_eq!(exp10_cr(3.900966237643807), 7960.974588394169);
        assert_eq!(exp10_cr(-1.0861451953898589), 0.08200773263543187);
        for k in -20..=20 {
            assert_eq!(
                exp10_cr(k as f64),
                format!("1e{k}").parse::<f64>().unwrap(),
                "{k}"
            );
            assert_eq!(log10_cr(format!("1e{k}").parse::<f64>().unwrap()), k as f64);
        }
        assert!((log10_cr(2.0) - std::f64::consts::LOG10_2).abs() == 0.0);
    }

    #[test]
    fn pairwise_sum_is_exact_on_integers_and_matches_order() {
        for n in [0usize, 1, 7, 8, 9, 127, 128, 129, 300, 6480] {
            let a: Vec<f64> = (0..n).map(|i| i as f64).collect();
            assert_eq!(pairwise_sum(&a), (n * n.saturating_sub(1) / 2) as f64);
        }
        // 0.1 * 10 summed pairwise: eight accumulators then two leftovers, as NumPy does.
        let a = vec![0.1; 10];
        let r = ((0.1f64 + 0.1) + (0.1 + 0.1)) + ((0.1 + 0.1) + (0.1 + 0.1)) + 0.1 + 0.1;
        assert_eq!(pairwise_sum(&a), r);
    }
}
