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
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
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
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
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
