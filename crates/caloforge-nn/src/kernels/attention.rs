//! Attention on rows of one sequence (a shower's voxels or points): the linear attention of
//! the CaloDiffusion U-Net and multi-head softmax attention with a mask.

use super::buf::Buf;
use super::simd::exp_inplace;

/// Linear attention (Shen et al.; the U-Net of CaloDiffusion): `qkv` holds rows of
/// `[q | k | v]`, each `heads × dh` wide. q is soft-maxed over each head's features (and
/// scaled by dh^−1/2), k over the positions; context = kᵀ v per head, out = q · context.
/// Returns the rows of out (`heads × dh` wide); `qkv` is overwritten.
pub fn linear_attention(qkv: &mut [f32], h: usize, dh: usize) -> Buf {
    #[cfg(target_arch = "x86_64")]
    if super::simd::simd() {
        // SAFETY: AVX2/FMA present; the same code, vectorised for them.
        return unsafe { linear_attention_avx2(qkv, h, dh) };
    }
    linear_attention_impl(qkv, h, dh)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_attention_avx2(qkv: &mut [f32], h: usize, dh: usize) -> Buf {
    linear_attention_impl(qkv, h, dh)
}

#[inline(always)]
fn linear_attention_impl(qkv: &mut [f32], h: usize, dh: usize) -> Buf {
    let hd = h * dh;
    let w = 3 * hd;
    let n = qkv.len() / w;
    // context = kᵀv and out = q·context.
    super::macs::add(2 * n * h * dh * dh);
    let scale = (dh as f32).powf(-0.5);
    // q: softmax over each head's dh channels, per position.
    for row in qkv.chunks_mut(w) {
        for head in 0..h {
            let q = &mut row[head * dh..(head + 1) * dh];
            let m = q.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            q.iter_mut().for_each(|v| *v -= m);
            exp_inplace(q);
            let s: f32 = q.iter().sum();
            q.iter_mut().for_each(|v| *v *= scale / s);
        }
    }
    // k: softmax over positions, per channel.
    let mut kmax = vec![f32::NEG_INFINITY; hd];
    for row in qkv.chunks(w) {
        for (m, &v) in kmax.iter_mut().zip(&row[hd..2 * hd]) {
            *m = m.max(v);
        }
    }
    let mut ksum = vec![0.0f32; hd];
    for row in qkv.chunks_mut(w) {
        let k = &mut row[hd..2 * hd];
        for (v, &m) in k.iter_mut().zip(&kmax) {
            *v -= m;
        }
        exp_inplace(k);
        for (s, &v) in ksum.iter_mut().zip(k.iter()) {
            *s += v;
        }
    }
    // context[head][d][e] = Σ_n k[n, d] v[n, e] (k normalised after the sum).
    let mut ctx = vec![0.0f32; h * dh * dh];
    for row in qkv.chunks(w) {
        for head in 0..h {
            let k = &row[hd + head * dh..hd + (head + 1) * dh];
            let v = &row[2 * hd + head * dh..2 * hd + (head + 1) * dh];
            let c = &mut ctx[head * dh * dh..(head + 1) * dh * dh];
            for (dd, &kv) in k.iter().enumerate() {
                for (cv, &vv) in c[dd * dh..(dd + 1) * dh].iter_mut().zip(v) {
                    *cv += kv * vv;
                }
            }
        }
    }
    for head in 0..h {
        for dd in 0..dh {
            let s = ksum[head * dh + dd];
            ctx[(head * dh + dd) * dh..(head * dh + dd + 1) * dh]
                .iter_mut()
                .for_each(|v| *v /= s);
        }
    }
    // out[n, head, e] = Σ_d ctx[head][d][e] q[n, head, d].
    let mut att = Buf::zeroed(n * hd);
    for (row, o) in qkv.chunks(w).zip(att.chunks_mut(hd)) {
        for head in 0..h {
            let q = &row[head * dh..(head + 1) * dh];
            let oh = &mut o[head * dh..(head + 1) * dh];
            for (dd, &qv) in q.iter().enumerate() {
                let c = &ctx[(head * dh + dd) * dh..(head * dh + dd + 1) * dh];
                for (ov, &cv) in oh.iter_mut().zip(c) {
                    *ov += qv * cv;
                }
            }
        }
    }
    att
}

/// Multi-head softmax attention: rows of q (`nq`), k and v (`nk`), each `heads × dh` wide;
/// out[i] = Σ_j softmax_j(q_i·k_j · scale) v_j per head, over the keys j with `mask[i·nk + j]`
/// set (all keys when `mask` is None). A query whose keys are all masked gets zeros.
#[allow(clippy::too_many_arguments)]
pub fn softmax_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    nk: usize,
    heads: usize,
    dh: usize,
    scale: f32,
    mask: Option<&[bool]>,
) -> Vec<f32> {
    let w = heads * dh;
    let nq = q.len() / w.max(1);
    let mut out = vec![0.0f32; nq * w];
    let mut s = vec![0.0f32; nk];
    // Scores and weighted sum over the keys a query may see.
    let seen = mask.map_or(nq * nk, |mk| mk[..nq * nk].iter().filter(|&&b| b).count());
    super::macs::add(2 * seen * heads * dh);
    for i in 0..nq {
        for hd in 0..heads {
            let qi = &q[i * w + hd * dh..][..dh];
            let mut m = f32::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate() {
                if mask.is_some_and(|mk| !mk[i * nk + j]) {
                    *sj = f32::NEG_INFINITY;
                    continue;
                }
                *sj = super::simd::dot(qi, &k[j * w + hd * dh..][..dh]) * scale;
                m = m.max(*sj);
            }
            if m == f32::NEG_INFINITY {
                continue;
            }
            s.iter_mut().for_each(|x| *x -= m);
            exp_inplace(&mut s);
            let total: f32 = s.iter().sum();
            let o = &mut out[i * w + hd * dh..][..dh];
            for (j, &p) in s.iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                let p = p / total;
                for (ov, &vv) in o.iter_mut().zip(&v[j * w + hd * dh..][..dh]) {
                    *ov += p * vv;
                }
            }
        }
    }
    out
}

/// AllShowers' layer window: a point of layer l_q attends to the points of layer l_k when
/// `lower ≤ l_q − l_k ≤ upper`. The reference computes the bounds with Python's floor division
/// from `num_layer_cond` k as `-1 * (k + 1) // 2` and `k // 2`: for k = 4, −3 and 2, so layers
/// l_q − 2 … l_q + 3 (not the symmetric ±2 its README describes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerWindow {
    pub lower: i64,
    pub upper: i64,
}

impl LayerWindow {
    /// The reference's window for `num_layer_cond` = k ≥ 0.
    pub fn reference(k: i64) -> LayerWindow {
        LayerWindow {
            lower: (-(k + 1)).div_euclid(2),
            upper: k.div_euclid(2),
        }
    }

    /// Whether a query of layer `lq` sees a key of layer `lk`.
    pub fn allows(self, lq: i64, lk: i64) -> bool {
        let d = lq - lk;
        d >= self.lower && d <= self.upper
    }

    /// The layers a query of layer `lq` sees among `0..layers`, as an inclusive range.
    pub fn keys(self, lq: usize, layers: usize) -> (usize, usize) {
        let lo = (lq as i64 - self.upper).max(0) as usize;
        let hi = ((lq as i64 - self.lower) as usize).min(layers.saturating_sub(1));
        (lo, hi)
    }
}

/// Multi-head softmax attention within a layer window over the points of one shower sorted by
/// layer: `starts[l]..starts[l + 1]` are the rows of layer l (`starts` has layers + 1 entries).
/// The queries of layer l see the keys of the window's layers, one contiguous block of rows, so
/// each layer is one dense attention of its queries against that block: no mask, no padding.
/// `qkv` holds rows of `[q | k | v]`, each `heads × dh` wide, head-major; the output's rows are
/// `heads × dh` wide.
pub fn layer_window_attention(
    qkv: &[f32],
    starts: &[usize],
    window: LayerWindow,
    heads: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::simd() {
        // SAFETY: AVX2/FMA present; the same code, vectorised for them.
        return unsafe { window_attention_avx2(qkv, starts, window, heads, dh, scale, out) };
    }
    window_attention_impl(qkv, starts, window, heads, dh, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn window_attention_avx2(
    qkv: &[f32],
    starts: &[usize],
    window: LayerWindow,
    heads: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    window_attention_impl(qkv, starts, window, heads, dh, scale, out)
}

/// Per layer and head, two matrix products straight on the shower's rows
/// ([`super::gemm::matmul_strided`], nothing packed per layer): the scores of the layer's
/// queries against the window's keys (the keys transposed once per head, `[dh][points]`), the
/// row softmax left unnormalised, the products with the window's values (read in place), then
/// each output row divided by its sum.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn window_attention_impl(
    qkv: &[f32],
    starts: &[usize],
    window: LayerWindow,
    heads: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    use super::gemm::{matmul_strided, NR};
    let w = heads * dh;
    let layers = starts.len() - 1;
    let n = starts[layers];
    // The products read whole panels of NR columns: pad the transposed keys and the values.
    let np = n + NR;
    let mut qs = Vec::with_capacity(n * w);
    let mut kt = vec![0.0f32; heads * dh * np];
    let mut vp = Vec::with_capacity(n * w + NR);
    for (j, row) in qkv[..n * 3 * w].chunks_exact(3 * w).enumerate() {
        qs.extend(row[..w].iter().map(|&x| x * scale));
        for (c, &x) in row[w..2 * w].iter().enumerate() {
            kt[c * np + j] = x;
        }
        vp.extend_from_slice(&row[2 * w..]);
    }
    vp.resize(n * w + NR, 0.0);
    let (mut s, mut inv) = (Vec::new(), Vec::new());
    for l in 0..layers {
        let (a, b) = (starts[l], starts[l + 1]);
        if a == b {
            continue;
        }
        let (lo, hi) = window.keys(l, layers);
        let (ka, kb) = (starts[lo], starts[hi + 1]);
        let nk = kb - ka;
        for h in 0..heads {
            // Queries in blocks whose scores stay in the L1 cache.
            for q0 in (a..b).step_by(QUERY_BLOCK) {
                let nb = QUERY_BLOCK.min(b - q0);
                s.resize(nb * nk, 0.0f32);
                let o = &mut out[q0 * w + h * dh..];
                let (qr, kr) = (&qs[q0 * w + h * dh..], &kt[h * dh * np + ka..]);
                matmul_strided(qr, w, nb, dh, kr, np, nk, &mut s, nk);
                inv.clear();
                for row in s.chunks_mut(nk) {
                    inv.push(1.0 / super::simd::exp_shifted_sum(row, max(row)));
                }
                matmul_strided(&s, nk, nb, nk, &vp[ka * w + h * dh..], w, dh, o, w);
                for (r, &f) in inv.iter().enumerate() {
                    o[r * w..r * w + dh].iter_mut().for_each(|x| *x *= f);
                }
            }
        }
    }
}

/// Queries whose scores [`window_attention_impl`] computes at once (two AVX2 tiles).
const QUERY_BLOCK: usize = 12;

/// The largest value (−∞ for none).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &b) in m.iter_mut().zip(c) {
            *a = if b > *a { b } else { *a };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    m.iter().fold(tail, |a, &b| a.max(b))
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_window_is_the_references_for_every_layer_pair() {
        let w = LayerWindow::reference(4);
        assert_eq!((w.lower, w.upper), (-3, 2));
        // The reference's expression, evaluated with floor division.
        let py_floor = |a: i64, b: i64| (a as f64 / b as f64).floor() as i64;
        for k in 0..7i64 {
            let w = LayerWindow::reference(k);
            for lq in 0..78i64 {
                for lk in 0..78i64 {
                    let want = (lq - lk >= py_floor(-(k + 1), 2)) && (lq - lk <= py_floor(k, 2));
                    assert_eq!(w.allows(lq, lk), want, "k {k}, ({lq}, {lk})");
                }
                let (lo, hi) = w.keys(lq as usize, 78);
                for lk in 0..78i64 {
                    let inside = (lo as i64..=hi as i64).contains(&lk);
                    assert_eq!(inside, w.allows(lq, lk), "k {k} keys of {lq}");
                }
            }
        }
        // Layer 10 sees 8 … 13.
        assert_eq!(LayerWindow::reference(4).keys(10, 78), (8, 13));
    }

    #[test]
    fn windowed_attention_equals_dense_masked_attention() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (heads, dh) = (4, 16);
        let w = heads * dh;
        // Points per layer, with empty layers and a gap.
        let counts = [3usize, 0, 5, 1, 0, 0, 7, 2, 20, 17, 4, 0, 1];
        let layer: Vec<i64> = counts
            .iter()
            .enumerate()
            .flat_map(|(l, &c)| std::iter::repeat_n(l as i64, c))
            .collect();
        let n = layer.len();
        let mut starts = vec![0];
        for c in counts {
            starts.push(starts.last().unwrap() + c);
        }
        let rnd = |r: &mut rand_chacha::ChaCha8Rng| -> Vec<f32> {
            (0..n * w).map(|_| r.random::<f32>() * 2.0 - 1.0).collect()
        };
        let (q, k, v) = (rnd(&mut r), rnd(&mut r), rnd(&mut r));
        let window = LayerWindow::reference(4);
        let mask: Vec<bool> = (0..n * n)
            .map(|ij| window.allows(layer[ij / n], layer[ij % n]))
            .collect();
        let dense = softmax_attention(&q, &k, &v, n, heads, dh, 0.25, Some(&mask));
        let mut banded = vec![0.0; n * w];
        let qkv: Vec<f32> = (0..n)
            .flat_map(|i| [&q, &k, &v].map(|m| &m[i * w..(i + 1) * w]).concat())
            .collect();
        layer_window_attention(&qkv, &starts, window, heads, dh, 0.25, &mut banded);
        for (a, b) in dense.iter().zip(&banded) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
    }
}
