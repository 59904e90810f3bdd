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
/// Rows of q, k, v and the output are `heads × dh` wide.
#[allow(clippy::too_many_arguments)]
pub fn layer_window_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
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
        return unsafe { window_attention_avx2(q, k, v, starts, window, heads, dh, scale, out) };
    }
    window_attention_impl(q, k, v, starts, window, heads, dh, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn window_attention_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[usize],
    window: LayerWindow,
    heads: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    window_attention_impl(q, k, v, starts, window, heads, dh, scale, out)
}

/// Per layer and head, two packed matrix products ([`super::gemm::Packed`]): the scores of
/// the layer's queries against the window's keys (the keys packed as a layer's weights), the
/// row softmax, then the probabilities times the values (the values packed likewise).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn window_attention_impl(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[usize],
    window: LayerWindow,
    heads: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    use super::gemm::Packed;
    let w = heads * dh;
    let layers = starts.len() - 1;
    let (mut kh, mut vt, mut qh, mut s, mut o) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let zeros_dh = vec![0.0f32; dh];
    let mut zeros_k = Vec::new();
    for l in 0..layers {
        let (a, b) = (starts[l], starts[l + 1]);
        if a == b {
            continue;
        }
        let (lo, hi) = window.keys(l, layers);
        let (ka, kb) = (starts[lo], starts[hi + 1]);
        let (nq, nk) = (b - a, kb - ka);
        if nq < PACKED_MIN_QUERIES {
            // Packing the keys and values would cost more than it saves.
            window_attention_direct(q, k, v, (a, b, ka, kb), heads, dh, scale, out);
            continue;
        }
        zeros_k.resize(nk, 0.0f32);
        for h in 0..heads {
            kh.clear();
            vt.clear();
            vt.resize(dh * nk, 0.0f32);
            for j in 0..nk {
                kh.extend_from_slice(&k[(ka + j) * w + h * dh..][..dh]);
                let vr = &v[(ka + j) * w + h * dh..][..dh];
                for d in 0..dh {
                    vt[d * nk + j] = vr[d];
                }
            }
            qh.clear();
            for i in a..b {
                qh.extend(q[i * w + h * dh..][..dh].iter().map(|&x| x * scale));
            }
            let kp = Packed::new(&kh, &zeros_k[..nk], dh, None);
            s.clear();
            s.resize(nq * nk, 0.0f32);
            kp.forward(&qh, &mut s, None, false);
            for row in s.chunks_mut(nk) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                row.iter_mut().for_each(|x| *x -= m);
                exp_inplace(row);
                let inv = 1.0 / super::simd::sum(row);
                row.iter_mut().for_each(|x| *x *= inv);
            }
            let vp = Packed::new(&vt, &zeros_dh, nk, None);
            o.clear();
            o.resize(nq * dh, 0.0f32);
            vp.forward(&s, &mut o, None, false);
            for (i, r) in (a..b).zip(o.chunks(dh)) {
                out[i * w + h * dh..][..dh].copy_from_slice(r);
            }
        }
    }
}

/// Layers with fewer queries than this attend without packed products.
const PACKED_MIN_QUERIES: usize = 16;

/// The queries `a..b` of one layer against the keys `ka..kb` of its window, per head without
/// packing: the keys and values transposed (`[dh][keys]`, padded to a multiple of 8 keys), the
/// scores of 4 queries at a time as `dh` multiply-adds over 8 keys, a vectorised softmax
/// (padding scores −∞), and the outputs as products with the transposed values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn window_attention_direct(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (a, b, ka, kb): (usize, usize, usize, usize),
    heads: usize,
    dh: usize,
    scale: f32,
    out: &mut [f32],
) {
    let w = heads * dh;
    let (mut kt, mut vt, mut s) = (Vec::new(), Vec::new(), Vec::new());
    {
        let nk = kb - ka;
        let np = nk.div_ceil(8) * 8;
        super::macs::add(2 * (b - a) * nk * w);
        for h in 0..heads {
            kt.clear();
            kt.resize(dh * np, 0.0f32);
            vt.clear();
            vt.resize(dh * np, 0.0f32);
            for j in 0..nk {
                let kr = &k[(ka + j) * w + h * dh..][..dh];
                let vr = &v[(ka + j) * w + h * dh..][..dh];
                for d in 0..dh {
                    kt[d * np + j] = kr[d];
                    vt[d * np + j] = vr[d];
                }
            }
            // Queries in blocks of QB: scores and outputs as small matrix products whose
            // key and value loads serve QB queries.
            s.clear();
            s.resize(QB * np, 0.0f32);
            let mut i0 = a;
            while i0 < b {
                let nq = QB.min(b - i0);
                assert!(dh <= 64, "heads of at most 64 features");
                let mut qs = [[0.0f32; 64]; QB];
                for (qq, row) in qs.iter_mut().enumerate().take(nq) {
                    let qi = &q[(i0 + qq) * w + h * dh..][..dh];
                    for (d, r) in row.iter_mut().enumerate().take(dh) {
                        *r = qi[d] * scale;
                    }
                }
                for j0 in (0..np).step_by(8) {
                    let mut acc = [[0.0f32; 8]; QB];
                    for d in 0..dh {
                        let kv: &[f32; 8] = kt[d * np + j0..][..8].try_into().expect("8");
                        for (qq, ac) in acc.iter_mut().enumerate() {
                            let c = qs[qq][d];
                            for (x, &y) in ac.iter_mut().zip(kv) {
                                *x = c.mul_add(y, *x);
                            }
                        }
                    }
                    for (qq, ac) in acc.iter().enumerate() {
                        s[qq * np + j0..][..8].copy_from_slice(ac);
                    }
                }
                for qq in 0..nq {
                    let row = &mut s[qq * np..(qq + 1) * np];
                    row[nk..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                    let m = row[..nk].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    row.iter_mut().for_each(|x| *x -= m);
                    exp_inplace(row);
                    row[nk..].iter_mut().for_each(|x| *x = 0.0);
                    let inv = 1.0 / super::simd::sum(row);
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                for d in 0..dh {
                    let vr = &vt[d * np..(d + 1) * np];
                    let mut acc = [[0.0f32; 8]; QB];
                    for j0 in (0..np).step_by(8) {
                        let vv: &[f32; 8] = vr[j0..j0 + 8].try_into().expect("8");
                        for (qq, ac) in acc.iter_mut().enumerate() {
                            let p: &[f32; 8] = s[qq * np + j0..][..8].try_into().expect("8");
                            for k in 0..8 {
                                ac[k] = p[k].mul_add(vv[k], ac[k]);
                            }
                        }
                    }
                    for (qq, ac) in acc.iter().enumerate().take(nq) {
                        out[(i0 + qq) * w + h * dh + d] = ac.iter().sum();
                    }
                }
                i0 += nq;
            }
        }
    }
}

/// Queries per block of [`window_attention_direct`].
const QB: usize = 4;

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
        layer_window_attention(&q, &k, &v, &starts, window, heads, dh, 0.25, &mut banded);
        for (a, b) in dense.iter().zip(&banded) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
    }
}
