//! Plain-Rust inference of the U-Net on the weights of a trained [`UNet`]: what generation on the
//! CPU runs, 398 network calls per shower for the paper's sampler, where burn's per-op
//! overhead and its conv3d dominate.
//!
//! Activations are channels-last (voxel-major, `[z][α][r][c]`) per shower, so a convolution is,
//! for every output voxel and kernel tap, a small (C_in × C_out) matrix-vector product. The hot
//! kernel computes tiles of up to 4 output voxels × 16 output channels in AVX2/FMA registers
//! (runtime-detected, plain loops otherwise), over an input copied once into a buffer padded
//! circularly along α and with zeros along z and r. Exp (SiLU, softmax) is vectorised too.
//! Every shower of a batch is independent (computed in parallel with rayon), so results do not
//! depend on batch split or thread count. Tests check every block, and the whole network,
//! against burn's forward on the same weights.

use super::{
    ConvBlock, CylindricalConvTranspose3d, LinearAttention, ResnetBlock, ScalarEmbedding, UNet,
};
use crate::conv::CylindricalConv3d;
use burn::nn::{GroupNorm, Linear, PaddingConfig3d};
use burn::tensor::Tensor;
use rayon::prelude::*;

/// An activation buffer recycled through a per-thread pool when dropped: a forward pass
/// allocates the same ~60 buffers of up to a few MB every call, and fresh pages from the
/// allocator (zeroed by the kernel) cost a quarter of the time otherwise.
struct Buf(Vec<f32>);

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buf {
    /// `len` zeros.
    fn zeroed(len: usize) -> Self {
        let mut v = POOL
            .with(|p| {
                let mut p = p.borrow_mut();
                // Best fit: the smallest buffer that holds `len`.
                let i = (0..p.len())
                    .filter(|&i| p[i].capacity() >= len)
                    .min_by_key(|&i| p[i].capacity())?;
                Some(p.swap_remove(i))
            })
            .unwrap_or_else(|| Vec::with_capacity(len));
        v.clear();
        v.resize(len, 0.0);
        Buf(v)
    }
    /// A copy of `x`.
    fn copy(x: &[f32]) -> Self {
        let mut b = Self::zeroed(x.len());
        b.copy_from_slice(x);
        b
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // During thread teardown the pool may be gone: then just free.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 64 {
                p.push(v);
            }
        });
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[cfg(target_arch = "x86_64")]
static HAS_AVX2_FMA: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
});

fn simd() -> bool {
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
    ($name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name(&self, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if simd() {
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

/// burn's conv weight `[cout][cin][taps]` (or, `transposed`, `[cin][cout][taps]`) as
/// `[taps][cin][cout]`, the layout the kernels read.
fn tap_major(wt: Tensor<5>, transposed: bool) -> Vec<f32> {
    let [d0, d1, kz, ka, kr] = wt.dims();
    let (cin, cout) = if transposed { (d0, d1) } else { (d1, d0) };
    let taps = kz * ka * kr;
    let w0 = vals(wt);
    let mut w = vec![0.0f32; taps * cin * cout];
    for co in 0..cout {
        for ci in 0..cin {
            let src = if transposed {
                ci * cout + co
            } else {
                co * cin + ci
            };
            for t in 0..taps {
                w[(t * cin + ci) * cout + co] = w0[src * taps + t];
            }
        }
    }
    w
}

fn bias_or_zero(b: Option<&burn::module::Param<Tensor<1>>>, n: usize) -> Vec<f32> {
    b.map(|b| vals(b.val())).unwrap_or_else(|| vec![0.0; n])
}

/// A convolution with circular α padding and zero z/r padding, weights `[kz][kα][kr][cin][cout]`.
#[derive(Debug, Clone)]
struct Conv {
    cin: usize,
    cout: usize,
    k: [usize; 3],
    s: [usize; 3],
    pad: [usize; 3],
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Conv {
    fn from_cyl(c: &CylindricalConv3d) -> Self {
        let [cout, cin, kz, ka, kr] = c.conv.weight.val().dims();
        let w = tap_major(c.conv.weight.val(), false);
        let b = bias_or_zero(c.conv.bias.as_ref(), cout);
        let (pz, pr) = match c.conv.padding {
            PaddingConfig3d::Explicit(z, _, r) => (z, r),
            _ => (0, 0),
        };
        Conv {
            cin,
            cout,
            k: [kz, ka, kr],
            s: c.conv.stride,
            pad: [pz, c.pad_alpha, pr],
            w,
            b,
        }
    }

    fn out_dims(&self, d: [usize; 3]) -> [usize; 3] {
        std::array::from_fn(|i| (d[i] + 2 * self.pad[i] - self.k[i]) / self.s[i] + 1)
    }

    /// Channels-last `x` of grid `d` → (output, output grid).
    fn forward(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        let od = self.out_dims(d);
        let pd: [usize; 3] = std::array::from_fn(|i| d[i] + 2 * self.pad[i]);
        let padded;
        let p: &[f32] = if self.pad == [0, 0, 0] {
            x
        } else {
            padded = pad_input(x, d, self.pad, self.cin);
            &padded
        };
        let mut out = Buf::zeroed(od.iter().product::<usize>() * self.cout);
        let taps: Vec<usize> = (0..self.k[0])
            .flat_map(|z| {
                (0..self.k[1])
                    .flat_map(move |a| (0..self.k[2]).map(move |r| (z * pd[1] + a) * pd[2] + r))
            })
            .map(|v| v * self.cin)
            .collect();
        conv_valid(p, pd, self, &taps, od, &mut out);
        (out, od)
    }
}

/// Copies `x` (grid `d`, `c` channels) into a buffer padded by `pad`: circularly along α, with
/// zeros along z and r.
fn pad_input(x: &[f32], d: [usize; 3], pad: [usize; 3], c: usize) -> Buf {
    let pd: [usize; 3] = std::array::from_fn(|i| d[i] + 2 * pad[i]);
    let mut p = Buf::zeroed(pd.iter().product::<usize>() * c);
    for z in 0..d[0] {
        for pa in 0..pd[1] {
            let a = (pa + d[1] * pad[1] - pad[1]) % d[1];
            let src = ((z * d[1] + a) * d[2]) * c;
            let dst = (((z + pad[0]) * pd[1] + pa) * pd[2] + pad[2]) * c;
            p[dst..dst + d[2] * c].copy_from_slice(&x[src..src + d[2] * c]);
        }
    }
    p
}

/// "Valid" convolution over the padded input `p` (grid `pd`): `taps` are the input offsets of
/// the kernel taps relative to an output voxel's first input.
fn conv_valid(
    p: &[f32],
    pd: [usize; 3],
    c: &Conv,
    taps: &[usize],
    od: [usize; 3],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd() && c.cout % 8 == 0 {
        // SAFETY: AVX2 and FMA are present (checked at run time); every index below is in
        // bounds by construction of `pd`, `taps` and `od`.
        unsafe { conv_valid_avx2(p, pd, c, taps, od, out) };
        return;
    }
    let (cin, cout, s) = (c.cin, c.cout, c.s);
    for z in 0..od[0] {
        for a in 0..od[1] {
            for r in 0..od[2] {
                let base = (((z * s[0]) * pd[1] + a * s[1]) * pd[2] + r * s[2]) * cin;
                let o = &mut out[((z * od[1] + a) * od[2] + r) * cout..][..cout];
                o.copy_from_slice(&c.b);
                for (t, &off) in taps.iter().enumerate() {
                    let xin = &p[base + off..base + off + cin];
                    let wt = &c.w[t * cin * cout..(t + 1) * cin * cout];
                    for (ci, &xv) in xin.iter().enumerate() {
                        for (ov, &wv) in o.iter_mut().zip(&wt[ci * cout..(ci + 1) * cout]) {
                            *ov += xv * wv;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_valid_avx2(
    p: &[f32],
    pd: [usize; 3],
    c: &Conv,
    taps: &[usize],
    od: [usize; 3],
    out: &mut [f32],
) {
    let (cin, cout, s) = (c.cin, c.cout, c.s);
    let pp = p.as_ptr();
    let op = out.as_mut_ptr();
    // Output voxels in order, with the offset of their first input in `p`; tiles of 6 voxels
    // (rows of r are short: 9, 4, 2) × 16 channels fill 12 of the 16 ymm registers.
    let nv = od[0] * od[1] * od[2];
    let base = |v: usize| {
        let (z, a, r) = (v / (od[1] * od[2]), (v / od[2]) % od[1], v % od[2]);
        (((z * s[0]) * pd[1] + a * s[1]) * pd[2] + r * s[2]) * cin
    };
    let mut v = 0;
    while v < nv {
        let m = (nv - v).min(6);
        let mut bases = [0usize; 6];
        for (j, b) in bases.iter_mut().enumerate().take(m) {
            *b = base(v + j);
        }
        let mut cb = 0;
        while cb < cout {
            let nb16 = cout - cb >= 16;
            let tile = Tile {
                p: pp,
                bases,
                taps,
                cin,
                cout,
                w: c.w.as_ptr().add(cb),
                b: c.b.as_ptr().add(cb),
                out: op.add(v * cout + cb),
            };
            match (m, nb16) {
                (6, true) => tile.run::<6, 2>(),
                (5, true) => tile.run::<5, 2>(),
                (4, true) => tile.run::<4, 2>(),
                (3, true) => tile.run::<3, 2>(),
                (2, true) => tile.run::<2, 2>(),
                (1, true) => tile.run::<1, 2>(),
                (6, false) => tile.run::<6, 1>(),
                (5, false) => tile.run::<5, 1>(),
                (4, false) => tile.run::<4, 1>(),
                (3, false) => tile.run::<3, 1>(),
                (2, false) => tile.run::<2, 1>(),
                _ => tile.run::<1, 1>(),
            }
            cb += if nb16 { 16 } else { 8 };
        }
        v += m;
    }
}

/// One register tile: M consecutive output voxels (first inputs at `bases`) × NB·8 output
/// channels.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    p: *const f32,
    bases: [usize; 6],
    taps: &'a [usize],
    cin: usize,
    cout: usize,
    w: *const f32,
    b: *const f32,
    out: *mut f32,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    #[inline(always)]
    unsafe fn run<const M: usize, const NB: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); NB]; M];
        for j in 0..NB {
            let bv = _mm256_loadu_ps(self.b.add(8 * j));
            for row in acc.iter_mut() {
                row[j] = bv;
            }
        }
        for (t, &off) in self.taps.iter().enumerate() {
            let wt = self.w.add(t * self.cin * self.cout);
            let xb: [*const f32; M] = std::array::from_fn(|m| self.p.add(self.bases[m] + off));
            for ci in 0..self.cin {
                let wr = wt.add(ci * self.cout);
                let mut wv = [_mm256_setzero_ps(); NB];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(wr.add(8 * j));
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(*xb[m].add(ci));
                    for j in 0..NB {
                        row[j] = _mm256_fmadd_ps(xv, wv[j], row[j]);
                    }
                }
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm256_storeu_ps(self.out.add(m * self.cout + 8 * j), *v);
            }
        }
    }
}

/// The cylindrical transposed convolution: out[o] = Σ over input i and tap k with
/// o = i·s − p + k of in[i]·W[k], the input padded circularly by one along α first.
#[derive(Debug, Clone)]
struct ConvT {
    cin: usize,
    cout: usize,
    k: [usize; 3],
    s: [usize; 3],
    pad: [usize; 3],
    out_pad: [usize; 3],
    w: Vec<f32>,
    b: Vec<f32>,
}

impl ConvT {
    fn from_cyl(c: &CylindricalConvTranspose3d) -> Self {
        let [cin, cout, kz, ka, kr] = c.conv.weight.val().dims();
        let w = tap_major(c.conv.weight.val(), true);
        let b = bias_or_zero(c.conv.bias.as_ref(), cout);
        ConvT {
            cin,
            cout,
            k: [kz, ka, kr],
            s: c.conv.stride,
            pad: c.conv.padding,
            out_pad: c.conv.padding_out,
            w,
            b,
        }
    }

    simd_method!(forward, forward_avx2, forward_impl, (x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]));

    #[inline(always)]
    fn forward_impl(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        // α padded circularly by 1: padded index i ↔ original (i − 1) mod A.
        let di = [d[0], d[1] + 2, d[2]];
        let od: [usize; 3] = std::array::from_fn(|i| {
            (di[i] - 1) * self.s[i] + self.k[i] + self.out_pad[i] - 2 * self.pad[i]
        });
        let (cin, cout) = (self.cin, self.cout);
        let mut out = Buf::zeroed(od.iter().product::<usize>() * cout);
        for o in out.chunks_mut(cout) {
            o.copy_from_slice(&self.b);
        }
        // Scatter: each input voxel adds W[k]ᵀ x to the outputs it reaches.
        let mut tmp = vec![0.0f32; cout];
        for iz in 0..di[0] {
            for ia in 0..di[1] {
                let a0 = (ia + d[1] - 1) % d[1];
                for ir in 0..di[2] {
                    let xin = &x[((iz * d[1] + a0) * d[2] + ir) * cin..][..cin];
                    for kz in 0..self.k[0] {
                        let Some(oz) = (iz * self.s[0] + kz).checked_sub(self.pad[0]) else {
                            continue;
                        };
                        if oz >= od[0] {
                            continue;
                        }
                        for ka in 0..self.k[1] {
                            let Some(oa) = (ia * self.s[1] + ka).checked_sub(self.pad[1]) else {
                                continue;
                            };
                            if oa >= od[1] {
                                continue;
                            }
                            for kr in 0..self.k[2] {
                                let Some(or) = (ir * self.s[2] + kr).checked_sub(self.pad[2])
                                else {
                                    continue;
                                };
                                if or >= od[2] {
                                    continue;
                                }
                                let t = (kz * self.k[1] + ka) * self.k[2] + kr;
                                let wt = &self.w[t * cin * cout..(t + 1) * cin * cout];
                                tmp.fill(0.0);
                                for (ci, &xv) in xin.iter().enumerate() {
                                    for (tv, &wv) in tmp.iter_mut().zip(&wt[ci * cout..][..cout]) {
                                        *tv += xv * wv;
                                    }
                                }
                                let o = &mut out[((oz * od[1] + oa) * od[2] + or) * cout..][..cout];
                                for (ov, tv) in o.iter_mut().zip(&tmp) {
                                    *ov += tv;
                                }
                            }
                        }
                    }
                }
            }
        }
        (out, od)
    }
}

/// GroupNorm (biased variance, ε inside the square root, per-channel affine).
#[derive(Debug, Clone)]
struct Gn {
    groups: usize,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
}

impl Gn {
    fn from(g: &GroupNorm) -> Self {
        let c = g.num_channels;
        Gn {
            groups: g.num_groups,
            gamma: g
                .gamma
                .as_ref()
                .map(|p| vals(p.val()))
                .unwrap_or_else(|| vec![1.0; c]),
            beta: bias_or_zero(g.beta.as_ref(), c),
            eps: g.epsilon,
        }
    }

    // Normalises channels-last `x` in place, then SiLU if `act`.
    simd_method!(apply, apply_avx2, apply_impl, (x: &mut [f32], act: bool));

    #[inline(always)]
    fn apply_impl(&self, x: &mut [f32], act: bool) {
        let c = self.gamma.len();
        let n = x.len() / c;
        let cg = c / self.groups;
        // Per-channel sums in f32 (vectorised), group totals in f64; two passes as burn.
        let mut sum = vec![0.0f32; c];
        for row in x.chunks_exact(c) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        let cnt = (n * cg) as f64;
        let mean: Vec<f64> = (0..self.groups)
            .map(|g| {
                sum[g * cg..(g + 1) * cg]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / cnt
            })
            .collect();
        let mc: Vec<f32> = (0..c).map(|ch| mean[ch / cg] as f32).collect();
        let mut sq = vec![0.0f32; c];
        for row in x.chunks_exact(c) {
            for ((s, &v), &m) in sq.iter_mut().zip(row).zip(&mc) {
                let dv = v - m;
                *s += dv * dv;
            }
        }
        let inv: Vec<f64> = (0..self.groups)
            .map(|g| {
                let var = sq[g * cg..(g + 1) * cg]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / cnt;
                1.0 / (var + self.eps).sqrt()
            })
            .collect();
        let scale: Vec<f32> = (0..c)
            .map(|ch| (inv[ch / cg] * self.gamma[ch] as f64) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| {
                (self.beta[ch] as f64 - mean[ch / cg] * inv[ch / cg] * self.gamma[ch] as f64) as f32
            })
            .collect();
        for row in x.chunks_exact_mut(c) {
            for ((v, &a), &b) in row.iter_mut().zip(&scale).zip(&shift) {
                *v = *v * a + b;
            }
        }
        if act {
            silu(x);
        }
    }
}

/// x ← x · σ(x).
fn silu(x: &mut [f32]) {
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
fn exp_inplace(x: &mut [f32]) {
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

/// A dense layer, weights `[in][out]` (burn's layout).
#[derive(Debug, Clone)]
struct Lin {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Lin {
    fn from(l: &Linear) -> Self {
        let w = vals(l.weight.val());
        let dout = l.weight.val().dims()[1];
        Lin {
            w,
            b: l.bias
                .as_ref()
                .map(|b| vals(b.val()))
                .unwrap_or_else(|| vec![0.0; dout]),
        }
    }
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let dout = self.b.len();
        let mut y: Vec<f64> = self.b.iter().map(|&v| v as f64).collect();
        for (i, &xv) in x.iter().enumerate() {
            for (yv, &wv) in y.iter_mut().zip(&self.w[i * dout..(i + 1) * dout]) {
                *yv += xv as f64 * wv as f64;
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }
}

/// erf to ~1e-7 (Numerical Recipes' erfc Chebyshev fit).
fn erf(x: f64) -> f64 {
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

fn gelu(x: Vec<f32>) -> Vec<f32> {
    x.into_iter()
        .map(|v| (0.5 * v as f64 * (1.0 + erf(v as f64 / std::f64::consts::SQRT_2))) as f32)
        .collect()
}

#[derive(Debug, Clone)]
struct Emb {
    l: [Lin; 3],
}

impl Emb {
    fn from(e: &ScalarEmbedding) -> Self {
        Emb {
            l: [Lin::from(&e.l1), Lin::from(&e.l2), Lin::from(&e.l3)],
        }
    }
    fn forward(&self, x: f32) -> Vec<f32> {
        self.l[2].forward(&gelu(self.l[1].forward(&gelu(self.l[0].forward(&[x])))))
    }
}

#[derive(Debug, Clone)]
struct Block {
    conv: Conv,
    norm: Gn,
}

impl Block {
    fn from(b: &ConvBlock) -> Self {
        Block {
            conv: Conv::from_cyl(&b.conv),
            norm: Gn::from(&b.norm),
        }
    }
    fn forward(&self, x: &[f32], d: [usize; 3]) -> Buf {
        let (mut y, _) = self.conv.forward(x, d);
        self.norm.apply(&mut y, true);
        y
    }
}

#[derive(Debug, Clone)]
struct Res {
    b1: Block,
    b2: Block,
    cond: Option<Lin>,
    res: Option<Conv>,
}

impl Res {
    fn from(r: &ResnetBlock) -> Self {
        Res {
            b1: Block::from(&r.block1),
            b2: Block::from(&r.block2),
            cond: r.cond.as_ref().map(Lin::from),
            res: r.res_conv.as_ref().map(Conv::from_cyl),
        }
    }
    /// `c_act` is SiLU of the conditioning vector.
    fn forward(&self, x: &[f32], d: [usize; 3], c_act: &[f32]) -> Buf {
        let mut h = self.b1.forward(x, d);
        if let Some(l) = &self.cond {
            let bias = l.forward(c_act);
            for row in h.chunks_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(&bias) {
                    *v += b;
                }
            }
        }
        let mut h = self.b2.forward(&h, d);
        match &self.res {
            Some(r) => {
                let (rx, _) = r.forward(x, d);
                for (v, s) in h.iter_mut().zip(rx.iter()) {
                    *v += s;
                }
            }
            None => {
                for (v, s) in h.iter_mut().zip(x) {
                    *v += s;
                }
            }
        }
        h
    }
}

#[derive(Debug, Clone)]
struct Attn {
    pre: Gn,
    qkv: Conv,
    out: Conv,
    post: Gn,
    heads: usize,
    dh: usize,
}

impl Attn {
    fn from(a: &LinearAttention) -> Self {
        Attn {
            pre: Gn::from(&a.prenorm),
            qkv: Conv::from_cyl(&a.to_qkv),
            out: Conv::from_cyl(&a.to_out),
            post: Gn::from(&a.out_norm),
            heads: a.heads,
            dh: a.dim_head,
        }
    }

    simd_method!(forward, forward_avx2, forward_impl, (x: &[f32], d: [usize; 3]) -> Buf);

    #[inline(always)]
    fn forward_impl(&self, x: &[f32], d: [usize; 3]) -> Buf {
        let mut xn = Buf::copy(x);
        self.pre.apply(&mut xn, false);
        let (mut qkv, _) = self.qkv.forward(&xn, d);
        let (h, dh) = (self.heads, self.dh);
        let hd = h * dh;
        let w = 3 * hd;
        let n = qkv.len() / w;
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
        let (mut y, _) = self.out.forward(&att, d);
        self.post.apply(&mut y, false);
        for (v, s) in y.iter_mut().zip(x) {
            *v += s;
        }
        y
    }
}

#[derive(Debug, Clone)]
struct Lvl {
    r1: Res,
    r2: Res,
    attn: Option<Attn>,
}

impl Lvl {
    fn from(l: &super::Level) -> Self {
        Lvl {
            r1: Res::from(&l.res1),
            r2: Res::from(&l.res2),
            attn: l.attn.as_ref().map(Attn::from),
        }
    }
    fn forward(&self, x: &[f32], d: [usize; 3], c: &[f32]) -> Buf {
        let h = self.r2.forward(&self.r1.forward(x, d, c), d, c);
        match &self.attn {
            Some(a) => a.forward(&h, d),
            None => h,
        }
    }
}

/// The U-Net's weights in the layouts above; [`FastUNet::forward`] is [`UNet::forward`].
#[derive(Debug, Clone)]
pub struct FastUNet {
    temb: Emb,
    eemb: Emb,
    init: Conv,
    downs: Vec<Lvl>,
    dconv: Vec<Conv>,
    mid1: Res,
    mattn: Option<Attn>,
    mid2: Res,
    ups: Vec<Lvl>,
    uconv: Vec<ConvT>,
    fres: Res,
    fconv: Conv,
    /// Input channels.
    pub in_channels: usize,
}

/// Concatenates channels-last `a` (ca channels) and `b` (cb channels) voxel by voxel.
fn concat(a: &[f32], ca: usize, b: &[f32], cb: usize) -> Buf {
    let mut out = Buf::zeroed(a.len() + b.len());
    for ((o, ra), rb) in out
        .chunks_exact_mut(ca + cb)
        .zip(a.chunks(ca))
        .zip(b.chunks(cb))
    {
        o[..ca].copy_from_slice(ra);
        o[ca..].copy_from_slice(rb);
    }
    out
}

impl FastUNet {
    /// Copies the weights of `net`.
    pub fn new(net: &UNet) -> Self {
        FastUNet {
            temb: Emb::from(&net.time_emb),
            eemb: Emb::from(&net.energy_emb),
            init: Conv::from_cyl(&net.init_conv),
            downs: net.downs.iter().map(Lvl::from).collect(),
            dconv: net.down_convs.iter().map(Conv::from_cyl).collect(),
            mid1: Res::from(&net.mid1),
            mattn: net.mid_attn.as_ref().map(Attn::from),
            mid2: Res::from(&net.mid2),
            ups: net.ups.iter().map(Lvl::from).collect(),
            uconv: net.up_convs.iter().map(ConvT::from_cyl).collect(),
            fres: Res::from(&net.final_res),
            fconv: Conv::from_cyl(&net.final_conv),
            in_channels: net.init_conv.conv.weight.val().dims()[1],
        }
    }

    /// One shower: `x` channel-major `[in_channels][z][α][r]` (as burn's input), σ_t and the
    /// energy input → ε̂ `[z][α][r]`.
    pub fn forward_one(&self, x: &[f32], shape: [usize; 3], t: f32, e: f32) -> Vec<f32> {
        let v: usize = shape.iter().product();
        let ci = self.in_channels;
        let mut xl = Buf::zeroed(v * ci);
        for c in 0..ci {
            for i in 0..v {
                xl[i * ci + c] = x[c * v + i];
            }
        }
        let mut c = self.temb.forward(t);
        c.extend(self.eemb.forward(e));
        silu(&mut c);
        let (mut h, mut d) = self.init.forward(&xl, shape);
        let mut skips = Vec::new();
        for (l, lev) in self.downs.iter().enumerate() {
            h = lev.forward(&h, d, &c);
            match self.dconv.get(l) {
                Some(dc) => {
                    let (hd, dd) = dc.forward(&h, d);
                    skips.push((std::mem::replace(&mut h, hd), d));
                    d = dd;
                }
                None => skips.push((Buf::copy(&h), d)),
            }
        }
        h = self.mid1.forward(&h, d, &c);
        if let Some(a) = &self.mattn {
            h = a.forward(&h, d);
        }
        h = self.mid2.forward(&h, d, &c);
        for (j, lev) in self.ups.iter().enumerate() {
            let (skip, sd) = skips.pop().expect("one skip per level");
            debug_assert_eq!(sd, d);
            let ch = h.len() / d.iter().product::<usize>();
            let cs = skip.len() / d.iter().product::<usize>();
            h = lev.forward(&concat(&h, ch, &skip, cs), d, &c);
            if let Some(u) = self.uconv.get(j) {
                (h, d) = u.forward(&h, d);
            }
        }
        let h = self.fres.forward(&h, d, &[]);
        self.fconv.forward(&h, d).0.to_vec()
    }

    /// A batch: `x` `[n][in_channels][z][α][r]`, per-shower σ and energy inputs → `[n][z][α][r]`.
    pub fn forward(&self, x: &[f32], shape: [usize; 3], t: &[f32], e: &[f32]) -> Vec<f32> {
        let n = t.len();
        let per = x.len() / n.max(1);
        let outs: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|b| self.forward_one(&x[b * per..(b + 1) * per], shape, t[b], e[b]))
            .collect();
        outs.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;
    use burn::tensor::{Device, Distribution, TensorData};

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tol * scale, "max |diff| {worst} vs scale {scale}");
    }

    fn to_channels_last(x: &[f32], c: usize) -> Vec<f32> {
        let v = x.len() / c;
        let mut o = vec![0.0; x.len()];
        for ch in 0..c {
            for i in 0..v {
                o[i * c + ch] = x[ch * v + i];
            }
        }
        o
    }

    #[test]
    fn convolutions_match_burn() {
        let dev = Device::flex();
        // (cin, cout, kernel, stride, padding, grid): stride-1 3×3×3 with both code paths
        // (cout 16 = AVX tiles, cout 3 = plain loops), the (3,4,4) stride-2 down-sampling,
        // and a 1×1×1.
        for (cin, cout, k, s, p, d) in [
            (5, 16, [3, 3, 3], [1, 1, 1], [1, 1, 1], [7, 6, 9]),
            (4, 3, [3, 3, 3], [1, 1, 1], [1, 1, 1], [5, 4, 3]),
            (8, 8, [3, 4, 4], [2, 2, 2], [1, 1, 1], [45, 16, 9]),
            (6, 24, [1, 1, 1], [1, 1, 1], [0, 0, 0], [3, 4, 5]),
        ] {
            let c = CylindricalConv3d::new(cin, cout, k, s, p, &dev);
            let x = Tensor::<5>::random(
                [1, cin, d[0], d[1], d[2]],
                Distribution::Normal(0.0, 1.0),
                &dev,
            );
            let want = vals(c.forward(x.clone()));
            let (got, od) = Conv::from_cyl(&c).forward(&to_channels_last(&vals(x), cin), d);
            close(&got, &to_channels_last(&want, cout), 1e-5);
            assert_eq!(od.iter().product::<usize>() * cout, want.len());
        }
        let t =
            CylindricalConvTranspose3d::new(6, 5, [3, 4, 4], [2, 2, 2], [1, 1, 1], [0, 0, 1], &dev);
        let x = Tensor::<5>::random([1, 6, 23, 8, 4], Distribution::Normal(0.0, 1.0), &dev);
        let want = vals(t.forward(x.clone()));
        let (got, od) = ConvT::from_cyl(&t).forward(&to_channels_last(&vals(x), 6), [23, 8, 4]);
        assert_eq!(od, [45, 16, 9]);
        close(&got, &to_channels_last(&want, 5), 1e-5);
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
    fn whole_network_matches_burn() {
        let dev = Device::flex();
        for (sizes, shape) in [(vec![8, 8, 8, 16], [45, 16, 9]), (vec![4, 4, 8], [9, 6, 5])] {
            let cfg = UNetConfig {
                in_channels: 3,
                layer_sizes: sizes,
                groups: 4,
                block_attention: true,
                mid_attention: true,
                shape,
            };
            let net = UNet::new(&cfg, &dev).unwrap();
            let v: usize = shape.iter().product();
            let n = 2;
            let x = Tensor::<5>::random(
                [n, 3, shape[0], shape[1], shape[2]],
                Distribution::Normal(0.0, 1.0),
                &dev,
            );
            let (t, e) = (vec![0.3f32, 0.9], vec![0.1f32, 0.7]);
            let want = vals(net.forward(
                x.clone(),
                Tensor::<2>::from_data(TensorData::new(t.clone(), [n, 1]), &dev),
                Tensor::<2>::from_data(TensorData::new(e.clone(), [n, 1]), &dev),
            ));
            let fast = FastUNet::new(&net);
            let got = fast.forward(&vals(x), shape, &t, &e);
            assert_eq!(got.len(), n * v);
            close(&got, &want, 2e-4);
        }
    }
}
