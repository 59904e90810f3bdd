//! Multi-head softmax attention within a layer window, over the points of a batch of showers
//! packed row after row (AllShowers' transformer in training), as one operation with a
//! hand-written backward pass.
//!
//! Each shower's points are sorted by layer, so the keys that the queries of one layer may see
//! (the window's layers, [`LayerWindow`]) are one contiguous block of the shower's rows: the
//! operation computes, per shower, head and layer, a dense attention of that layer's queries
//! against that block, never a score for a masked pair or a padding row. burn's dense version
//! ([`window_attention_dense`], on other backends) builds every shower's full score matrix under
//! a mask: for a batch of 32 ILD-like showers of up to 900 points, about 60 times more scores.
//!
//! The backward pass recomputes the probabilities block by block (nothing but the input is
//! kept): dP = dO Vᵀ, dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = s dS K, dK = s dSᵀ Q, dV = Pᵀ dO.
//! Every shower is one task that sums in a fixed order, so results do not depend on the thread
//! count.
//!
//! Layout: a row of the input is the reference's fused projection, head-major, each head
//! `[key | query | value]` (`3 · dh` wide); a row of the output is `heads × dh` wide.

use super::on_flex;
use crate::kernels::simd::{dot, exp_inplace};
use crate::kernels::LayerWindow;
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// Which keys every query sees: the showers of a batch packed row after row, each sorted by
/// layer; the queries of one layer of a shower see the rows of its window's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    /// First row of each shower, then the number of rows (showers + 1 entries).
    offsets: Vec<usize>,
    /// Per shower: blocks `[qa, qb, ka, kb]`, the query rows `qa..qb` (one layer) seeing the
    /// key rows `ka..kb`, counted from the shower's first row.
    blocks: Vec<Vec<[usize; 4]>>,
}

impl WindowPlan {
    /// The plan of showers whose points lie in `layers[s]` (sorted), packed in that order.
    pub fn new<L: AsRef<[usize]>>(layers: &[L], window: LayerWindow) -> Result<Self, String> {
        let mut offsets = vec![0usize];
        let mut blocks = Vec::with_capacity(layers.len());
        for (s, l) in layers.iter().enumerate() {
            let l = l.as_ref();
            if l.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!("shower {s}: points are not sorted by layer"));
            }
            let nl = l.last().map_or(0, |&x| x + 1);
            let mut starts = vec![0usize; nl + 1];
            for &k in l {
                starts[k + 1] += 1;
            }
            for k in 0..nl {
                starts[k + 1] += starts[k];
            }
            let mut bl = Vec::new();
            for k in 0..nl {
                if starts[k] < starts[k + 1] {
                    let (lo, hi) = window.keys(k, nl);
                    bl.push([starts[k], starts[k + 1], starts[lo], starts[hi + 1]]);
                }
            }
            blocks.push(bl);
            offsets.push(offsets[s] + l.len());
        }
        Ok(WindowPlan { offsets, blocks })
    }

    /// Rows (points) of the batch.
    pub fn rows(&self) -> usize {
        *self.offsets.last().expect("offsets")
    }

    /// Showers of the batch.
    pub fn showers(&self) -> usize {
        self.blocks.len()
    }

    /// First row of each shower, then the number of rows.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The shower of every row.
    pub fn shower_of_rows(&self) -> Vec<i64> {
        self.offsets
            .windows(2)
            .enumerate()
            .flat_map(|(s, w)| std::iter::repeat_n(s as i64, w[1] - w[0]))
            .collect()
    }

    /// Query-key pairs scored per head.
    pub fn pairs(&self) -> usize {
        self.blocks
            .iter()
            .flatten()
            .map(|b| (b[1] - b[0]) * (b[3] - b[2]))
            .sum()
    }
}

/// Row softmax in place.
#[inline(always)]
fn softmax_row(p: &mut [f32]) {
    let m = p.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    p.iter_mut().for_each(|x| *x -= m);
    exp_inplace(p);
    let inv = 1.0 / crate::kernels::simd::sum(p);
    p.iter_mut().for_each(|x| *x *= inv);
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Heads {
    heads: usize,
    dh: usize,
}

impl Heads {
    fn d(self) -> usize {
        self.heads * self.dh
    }
    fn scale(self) -> f32 {
        1.0 / (self.dh as f32).sqrt()
    }
    /// Column of (head h, role r: 0 key, 1 query, 2 value) in an input row.
    fn col(self, h: usize, r: usize) -> usize {
        h * 3 * self.dh + r * self.dh
    }
}

/// Queries per register tile.
const QB: usize = 4;
/// Lanes of a tile's columns.
const L: usize = 8;

/// One head of one shower, gathered: row-major `[n][dp]` copies (features padded with zeros
/// to `dp`, a multiple of 8) and `[dh][np]` transposes (keys padded to `np = n + 8`, so a tile
/// of 8 keys never reads past a row).
#[derive(Default)]
struct HeadRows {
    n: usize,
    dp: usize,
    np: usize,
    /// Queries, times the scale.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    kt: Vec<f32>,
    vt: Vec<f32>,
}

impl HeadRows {
    fn gather(&mut self, kqv: &[f32], hd: Heads, h: usize, transposes: bool) {
        let (dh, w) = (hd.dh, 3 * hd.d());
        let n = kqv.len() / w;
        let dp = dh.div_ceil(L) * L;
        let np = n + L;
        self.n = n;
        self.dp = dp;
        self.np = np;
        let s = hd.scale();
        for (buf, role) in [(&mut self.k, 0), (&mut self.q, 1), (&mut self.v, 2)] {
            buf.clear();
            buf.resize(n * dp, 0.0);
            let c = hd.col(h, role);
            for (i, row) in buf.chunks_exact_mut(dp).enumerate() {
                row[..dh].copy_from_slice(&kqv[i * w + c..][..dh]);
                if role == 1 {
                    row[..dh].iter_mut().for_each(|x| *x *= s);
                }
            }
        }
        if transposes {
            for (t, src) in [(&mut self.kt, &self.k), (&mut self.vt, &self.v)] {
                t.clear();
                t.resize(dh * np, 0.0);
                for (i, row) in src.chunks_exact(dp).enumerate() {
                    for (e, &x) in row[..dh].iter().enumerate() {
                        t[e * np + i] = x;
                    }
                }
            }
        }
    }
}

/// `out[qq][j − ka] = Σ_e a[qq][e] · bt[e][j]` for the keys `ka..kb` (`bt` `[dh][np]`),
/// `a` up to QB rows of `dh` values, `out` rows `stride` wide.
#[inline(always)]
fn tile_products(
    a: &[&[f32]; QB],
    bt: &[f32],
    np: usize,
    (ka, kb): (usize, usize),
    dh: usize,
    out: &mut [f32],
    stride: usize,
) {
    let mut j0 = ka;
    while j0 < kb {
        let mut acc = [[0.0f32; L]; QB];
        for e in 0..dh {
            let bv: &[f32; L] = bt[e * np + j0..][..L].try_into().expect("lanes");
            for (ac, ar) in acc.iter_mut().zip(a) {
                let c = ar[e];
                for (x, &y) in ac.iter_mut().zip(bv) {
                    *x = c.mul_add(y, *x);
                }
            }
        }
        let m = L.min(kb - j0);
        for (qq, ac) in acc.iter().enumerate() {
            out[qq * stride + j0 - ka..][..m].copy_from_slice(&ac[..m]);
        }
        j0 += L;
    }
}

/// `out[qq][..] = Σ_j c[qq][j − ka] · rows[j][..]` over the keys `ka..kb` (`rows` `[n][dp]`,
/// `c` rows `stride` wide, `out` up to QB rows of `dp` values).
#[inline(always)]
fn tile_combine(
    c: &[f32],
    stride: usize,
    rows: &[f32],
    dp: usize,
    (ka, kb): (usize, usize),
    out: &mut [[f32; 64]; QB],
) {
    for e0 in (0..dp).step_by(L) {
        let mut acc = [[0.0f32; L]; QB];
        for j in ka..kb {
            let rv: &[f32; L] = rows[j * dp + e0..][..L].try_into().expect("lanes");
            for (qq, ac) in acc.iter_mut().enumerate() {
                let cv = c[qq * stride + j - ka];
                for (x, &y) in ac.iter_mut().zip(rv) {
                    *x = cv.mul_add(y, *x);
                }
            }
        }
        for (o, ac) in out.iter_mut().zip(&acc) {
            o[e0..e0 + L].copy_from_slice(ac);
        }
    }
}

/// `rows[j][..] += Σ_qq c[qq][j − ka] · a[qq][..]` for the keys `ka..kb` (`rows` `[n][dp]`,
/// `a` up to QB rows of `dp` values).
#[inline(always)]
fn tile_update(
    c: &[f32],
    stride: usize,
    a: &[&[f32]; QB],
    rows: &mut [f32],
    dp: usize,
    (ka, kb): (usize, usize),
) {
    for e0 in (0..dp).step_by(L) {
        let av: [&[f32; L]; QB] =
            std::array::from_fn(|qq| a[qq][e0..e0 + L].try_into().expect("lanes"));
        for j in ka..kb {
            let r: &mut [f32; L] = (&mut rows[j * dp + e0..][..L]).try_into().expect("lanes");
            let mut acc = *r;
            for (qq, ar) in av.iter().enumerate() {
                let cv = c[qq * stride + j - ka];
                for (x, &y) in acc.iter_mut().zip(ar.iter()) {
                    *x = cv.mul_add(y, *x);
                }
            }
            *r = acc;
        }
    }
}

/// Up to QB rows of a `[n][dp]` matrix from row `i0`, zero rows past `i1`.
fn rows_of<'a>(m: &'a [f32], dp: usize, i0: usize, i1: usize, zero: &'a [f32]) -> [&'a [f32]; QB] {
    std::array::from_fn(|qq| {
        let i = i0 + qq;
        if i < i1 {
            &m[i * dp..(i + 1) * dp]
        } else {
            zero
        }
    })
}

/// One shower: `kqv` its `n × 3d` input rows, `out` its `n × d` output rows.
#[inline(always)]
fn shower_forward_impl(kqv: &[f32], blocks: &[[usize; 4]], hd: Heads, out: &mut [f32]) {
    let (d, dh) = (hd.d(), hd.dh);
    assert!(dh <= 64, "heads of at most 64 features");
    let mut r = HeadRows::default();
    let mut p = Vec::new();
    let zero = [0.0f32; 64];
    let mut o = [[0.0f32; 64]; QB];
    for h in 0..hd.heads {
        r.gather(kqv, hd, h, true);
        let (dp, np) = (r.dp, r.np);
        for &[qa, qb, ka, kb] in blocks {
            let nk = kb - ka;
            p.resize(QB * nk, 0.0);
            for i0 in (qa..qb).step_by(QB) {
                let nq = QB.min(qb - i0);
                let qs = rows_of(&r.q, dp, i0, qb, &zero[..dp]);
                tile_products(&qs, &r.kt, np, (ka, kb), dh, &mut p, nk);
                for row in p.chunks_exact_mut(nk).take(nq) {
                    softmax_row(row);
                }
                tile_combine(&p, nk, &r.v, dp, (ka, kb), &mut o);
                for (qq, orow) in o.iter().enumerate().take(nq) {
                    out[(i0 + qq) * d + h * dh..][..dh].copy_from_slice(&orow[..dh]);
                }
            }
        }
    }
}

/// The input gradient `g` (`n × 3d`) of one shower from its output gradient `gy` (`n × d`).
#[inline(always)]
fn shower_backward_impl(kqv: &[f32], blocks: &[[usize; 4]], hd: Heads, gy: &[f32], g: &mut [f32]) {
    let (d, w, dh, s) = (hd.d(), 3 * hd.d(), hd.dh, hd.scale());
    assert!(dh <= 64, "heads of at most 64 features");
    let mut r = HeadRows::default();
    let (mut p, mut dp_) = (Vec::new(), Vec::new());
    let (mut go, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
    let zero = [0.0f32; 64];
    let mut dq = [[0.0f32; 64]; QB];
    for h in 0..hd.heads {
        r.gather(kqv, hd, h, true);
        let (n, dp, np) = (r.n, r.dp, r.np);
        go.clear();
        go.resize(n * dp, 0.0f32);
        for (i, row) in go.chunks_exact_mut(dp).enumerate() {
            row[..dh].copy_from_slice(&gy[i * d + h * dh..][..dh]);
        }
        dk.clear();
        dk.resize(n * dp, 0.0f32);
        dv.clear();
        dv.resize(n * dp, 0.0f32);
        for &[qa, qb, ka, kb] in blocks {
            let nk = kb - ka;
            p.resize(QB * nk, 0.0);
            dp_.resize(QB * nk, 0.0);
            for i0 in (qa..qb).step_by(QB) {
                let nq = QB.min(qb - i0);
                let qs = rows_of(&r.q, dp, i0, qb, &zero[..dp]);
                let gos = rows_of(&go, dp, i0, qb, &zero[..dp]);
                tile_products(&qs, &r.kt, np, (ka, kb), dh, &mut p, nk);
                tile_products(&gos, &r.vt, np, (ka, kb), dh, &mut dp_, nk);
                for (qq, (pr, dr)) in p
                    .chunks_exact_mut(nk)
                    .zip(dp_.chunks_exact_mut(nk))
                    .enumerate()
                {
                    if qq < nq {
                        softmax_row(pr);
                        let delta = dot(pr, dr);
                        for (x, &pv) in dr.iter_mut().zip(pr.iter()) {
                            *x = pv * (*x - delta);
                        }
                    } else {
                        pr.fill(0.0);
                        dr.fill(0.0);
                    }
                }
                // dp_ now holds dS, the gradient of the scaled scores.
                tile_combine(&dp_, nk, &r.k, dp, (ka, kb), &mut dq);
                for (qq, row) in dq.iter().enumerate().take(nq) {
                    for (o, &x) in g[(i0 + qq) * w + hd.col(h, 1)..][..dh].iter_mut().zip(row) {
                        *o = s * x;
                    }
                }
                tile_update(&dp_, nk, &qs, &mut dk, dp, (ka, kb));
                tile_update(&p, nk, &gos, &mut dv, dp, (ka, kb));
            }
        }
        for i in 0..n {
            g[i * w + hd.col(h, 0)..][..dh].copy_from_slice(&dk[i * dp..][..dh]);
            g[i * w + hd.col(h, 2)..][..dh].copy_from_slice(&dv[i * dp..][..dh]);
        }
    }
}

fn shower_forward(kqv: &[f32], blocks: &[[usize; 4]], hd: Heads, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::simd() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(kqv: &[f32], blocks: &[[usize; 4]], hd: Heads, out: &mut [f32]) {
            shower_forward_impl(kqv, blocks, hd, out)
        }
        // SAFETY: AVX2/FMA present; the same code, vectorised for them.
        return unsafe { avx2(kqv, blocks, hd, out) };
    }
    shower_forward_impl(kqv, blocks, hd, out)
}

fn shower_backward(kqv: &[f32], blocks: &[[usize; 4]], hd: Heads, gy: &[f32], g: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::simd() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(kqv: &[f32], blocks: &[[usize; 4]], hd: Heads, gy: &[f32], g: &mut [f32]) {
            shower_backward_impl(kqv, blocks, hd, gy, g)
        }
        // SAFETY: AVX2/FMA present; the same code, vectorised for them.
        return unsafe { avx2(kqv, blocks, hd, gy, g) };
    }
    shower_backward_impl(kqv, blocks, hd, gy, g)
}

/// Splits `v` into the showers' row ranges (`width` values per row).
fn split_rows<'a>(mut v: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (a, rest) = v.split_at_mut((w[1] - w[0]) * width);
        out.push(a);
        v = rest;
    }
    out
}

/// The values of a contiguous f32 tensor, borrowed.
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the windowed attention runs on contiguous f32 tensors")
}

fn check(shape: &[usize], plan: &WindowPlan, heads: usize) -> Heads {
    assert!(
        shape.len() == 2
            && shape[0] == plan.rows()
            && heads > 0
            && shape[1].is_multiple_of(3 * heads),
        "windowed attention: input {shape:?} for {} rows and {heads} heads",
        plan.rows()
    );
    Heads {
        heads,
        dh: shape[1] / (3 * heads),
    }
}

/// Windowed attention (see the module documentation): `kqv` `[rows, 3d]` → `[rows, d]`.
#[backend_extension(Flex, Autodiff)]
pub trait WindowAttentionOps: Backend {
    /// See the trait.
    fn cf_window_attention(
        kqv: FloatTensor<Self>,
        plan: Arc<WindowPlan>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

impl WindowAttentionOps for Flex {
    fn cf_window_attention(kqv: FlexTensor, plan: Arc<WindowPlan>, heads: usize) -> FlexTensor {
        let hd = check(kqv.shape().as_ref(), &plan, heads);
        let kqv = kqv.to_contiguous();
        let x = f32s(&kqv);
        let (d, w) = (hd.d(), 3 * hd.d());
        let mut y = vec![0.0f32; plan.rows() * d];
        split_rows(&mut y, &plan.offsets, d)
            .into_par_iter()
            .enumerate()
            .for_each(|(s, out)| {
                let rows = &x[plan.offsets[s] * w..plan.offsets[s + 1] * w];
                shower_forward(rows, &plan.blocks[s], hd, out);
            });
        FlexTensor::from_data(TensorData::new(y, [plan.rows(), d]))
    }
}

#[derive(Debug)]
struct WindowAttentionBackward;

impl Backward<Flex, 1> for WindowAttentionBackward {
    type State = (FlexTensor, Arc<WindowPlan>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let (kqv, plan, heads) = ops.state;
        let hd = check(kqv.shape().as_ref(), &plan, heads);
        let (kqv, gy) = (kqv.to_contiguous(), gy.to_contiguous());
        let (x, gyv) = (f32s(&kqv), f32s(&gy));
        let (d, w) = (hd.d(), 3 * hd.d());
        let mut g = vec![0.0f32; plan.rows() * w];
        split_rows(&mut g, &plan.offsets, w)
            .into_par_iter()
            .enumerate()
            .for_each(|(s, gs)| {
                let (a, b) = (plan.offsets[s], plan.offsets[s + 1]);
                shower_backward(
                    &x[a * w..b * w],
                    &plan.blocks[s],
                    hd,
                    &gyv[a * d..b * d],
                    gs,
                );
            });
        grads.register::<Flex>(
            node.id,
            FlexTensor::from_data(TensorData::new(g, [plan.rows(), w])),
        );
    }
}

impl<C: CheckpointStrategy> WindowAttentionOps for Autodiff<Flex, C> {
    fn cf_window_attention(
        kqv: FloatTensor<Self>,
        plan: Arc<WindowPlan>,
        heads: usize,
    ) -> FloatTensor<Self> {
        match WindowAttentionBackward
            .prepare::<C>([kqv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = kqv.into_primitive();
                let out = Flex::cf_window_attention(x.clone(), plan.clone(), heads);
                prep.finish((x, plan, heads), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::cf_window_attention(kqv.into_primitive(), plan, heads))
            }
        }
    }
}

/// Windowed attention, differentiable: `kqv` `[rows, 3d]` (rows packed as `plan` says, each
/// head's `[key | query | value]`) → `[rows, d]`. One fused operation on the flex backend for
/// f32 tensors; elsewhere [`window_attention_dense`].
pub fn window_attention(kqv: Tensor<2>, plan: &Arc<WindowPlan>, heads: usize) -> Tensor<2> {
    if on_flex(&kqv) && kqv.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as WindowAttentionOps>::cf_window_attention(
            kqv.into_dispatch(),
            plan.clone(),
            heads,
        ))
    } else {
        window_attention_dense(kqv, plan, heads)
    }
}

/// Score added where attention is not allowed (finite: a row that sees nothing would average
/// instead of giving NaN; every real query sees at least its own layer).
pub const MASKED: f32 = -1e9;

/// The same attention from burn's tensor operations: per shower, the full score matrix under
/// the window's mask. The reference for [`window_attention`] and its path on other backends.
pub fn window_attention_dense(kqv: Tensor<2>, plan: &WindowPlan, heads: usize) -> Tensor<2> {
    let [rows, cols] = kqv.dims();
    let hd = check(&[rows, cols], plan, heads);
    let (d, dh) = (hd.d(), hd.dh);
    let device = kqv.device();
    if plan.showers() == 0 {
        return kqv.slice([0..rows, 0..d]);
    }
    let parts: Vec<Tensor<2>> = (0..plan.showers())
        .map(|s| {
            let (a, b) = (plan.offsets[s], plan.offsets[s + 1]);
            let n = b - a;
            let x = kqv
                .clone()
                .slice([a..b, 0..cols])
                .reshape([n, heads, 3, dh]);
            let part = |r: usize| {
                x.clone()
                    .slice([0..n, 0..heads, r..r + 1, 0..dh])
                    .reshape([n, heads, dh])
                    .swap_dims(0, 1)
            };
            let (k, q, v) = (part(0), part(1), part(2));
            let mut bias = vec![MASKED; n * n];
            for &[qa, qb, ka, kb] in &plan.blocks[s] {
                for i in qa..qb {
                    bias[i * n + ka..i * n + kb].fill(0.0);
                }
            }
            let bias = Tensor::<3>::from_data(TensorData::new(bias, [1, n, n]), &device);
            let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar(hd.scale() as f64) + bias;
            softmax(scores, 2).matmul(v).swap_dims(0, 1).reshape([n, d])
        })
        .collect();
    Tensor::cat(parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};

    /// Showers with sorted random layers (some layers empty, one shower of one point).
    fn layers(sizes: &[usize], nl: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        sizes
            .iter()
            .map(|&n| {
                let mut l: Vec<usize> = (0..n).map(|_| r.random_range(0..nl)).collect();
                l.sort();
                l
            })
            .collect()
    }

    fn input(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| r.random::<f32>() * 3.0 - 1.5)
            .collect()
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn the_plan_is_the_windows_blocks() {
        let w = LayerWindow::reference(4);
        let plan = WindowPlan::new(&[vec![0, 0, 3, 4, 4, 9], vec![], vec![2]], w).unwrap();
        assert_eq!(plan.offsets(), &[0, 6, 6, 7]);
        assert_eq!(plan.shower_of_rows(), vec![0, 0, 0, 0, 0, 0, 2]);
        // Layer 0 sees layers 0..=3 (rows 0..3); 3 sees 1..=6 (2..5); 4 sees 2..=7 (2..5);
        // 9 sees 7..=9 (5..6).
        assert_eq!(
            plan.blocks[0],
            vec![[0, 2, 0, 3], [2, 3, 2, 5], [3, 5, 2, 5], [5, 6, 5, 6]]
        );
        assert_eq!(plan.blocks[2], vec![[0, 1, 0, 1]]);
        assert_eq!(plan.pairs(), 2 * 3 + 3 + 2 * 3 + 1 + 1);
        // Every block is the window's mask: query i sees key j iff the window allows it.
        let l = layers(&[40], 12, 3).remove(0);
        let plan = WindowPlan::new(std::slice::from_ref(&l), w).unwrap();
        let mut seen = vec![vec![false; 40]; 40];
        for &[qa, qb, ka, kb] in &plan.blocks[0] {
            for row in &mut seen[qa..qb] {
                row[ka..kb].fill(true);
            }
        }
        for i in 0..40 {
            for j in 0..40 {
                assert_eq!(seen[i][j], w.allows(l[i] as i64, l[j] as i64), "{i} {j}");
            }
        }
        let err = WindowPlan::new(&[vec![0, 2, 1]], w).unwrap_err();
        assert!(err.contains("not sorted"), "{err}");
    }

    /// Output and input gradient of a weighted sum against burn's dense masked attention.
    #[test]
    fn windowed_attention_matches_dense_masked_attention() {
        let dev = Device::flex().autodiff();
        let (heads, dh) = (3, 5);
        let cols = 3 * heads * dh;
        let plan = Arc::new(
            WindowPlan::new(&layers(&[23, 1, 40, 7], 10, 1), LayerWindow::reference(4)).unwrap(),
        );
        let rows = plan.rows();
        let x0 = input(rows, cols, 2);
        let wv = input(rows, heads * dh, 3);
        let run = |fused: bool| {
            let x = Tensor::<2>::from_data(TensorData::new(x0.clone(), [rows, cols]), &dev)
                .require_grad();
            let y = if fused {
                window_attention(x.clone(), &plan, heads)
            } else {
                window_attention_dense(x.clone(), &plan, heads)
            };
            let w = Tensor::<2>::from_data(TensorData::new(wv.clone(), [rows, heads * dh]), &dev);
            let grads = (y.clone() * w).sum().backward();
            (values(y), values(x.grad(&grads).unwrap()))
        };
        let (a, b) = (run(true), run(false));
        for (name, u, v) in [("y", &a.0, &b.0), ("dx", &a.1, &b.1)] {
            assert_eq!(u.len(), v.len());
            for (i, (p, q)) in u.iter().zip(v).enumerate() {
                assert!(
                    (p - q).abs() <= 2e-5 * (1.0 + q.abs()),
                    "{name}[{i}]: windowed {p} vs dense {q}"
                );
            }
        }
    }

    /// The input gradient against central finite differences (f64 sums).
    #[test]
    fn windowed_attention_gradient_matches_finite_differences() {
        let (heads, dh) = (2, 3);
        let cols = 3 * heads * dh;
        let plan =
            Arc::new(WindowPlan::new(&layers(&[9, 5], 6, 4), LayerWindow::reference(2)).unwrap());
        let rows = plan.rows();
        let x0 = input(rows, cols, 5);
        let wv = input(rows, heads * dh, 6);
        let dev = Device::flex();
        let f = |x: &[f32]| -> f64 {
            let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [rows, cols]), &dev);
            values(window_attention(t, &plan, heads))
                .iter()
                .zip(&wv)
                .map(|(&y, &w)| y as f64 * w as f64)
                .sum()
        };
        let ad = Device::flex().autodiff();
        let x =
            Tensor::<2>::from_data(TensorData::new(x0.clone(), [rows, cols]), &ad).require_grad();
        let w = Tensor::<2>::from_data(TensorData::new(wv.clone(), [rows, heads * dh]), &ad);
        let grads = (window_attention(x.clone(), &plan, heads) * w)
            .sum()
            .backward();
        let g = values(x.grad(&grads).unwrap());
        crate::testutil::check_finite_differences(&x0, &g, f, 1e-2, 2e-3, 1);
    }

    /// The same numbers whatever the number of threads.
    #[test]
    fn windowed_attention_is_thread_independent() {
        let dev = Device::flex().autodiff();
        let heads = 4;
        let plan = Arc::new(
            WindowPlan::new(
                &layers(&[30, 12, 50, 3, 25], 20, 7),
                LayerWindow::reference(4),
            )
            .unwrap(),
        );
        let rows = plan.rows();
        let x0 = input(rows, 3 * heads * 4, 8);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let x = Tensor::<2>::from_data(TensorData::new(x0.clone(), [rows, 48]), &dev)
                        .require_grad();
                    let y = window_attention(x.clone(), &plan, heads);
                    let grads = (y.clone() * y.clone()).sum().backward();
                    (values(y), values(x.grad(&grads).unwrap()))
                })
        };
        assert_eq!(run(1), run(3));
    }
}
