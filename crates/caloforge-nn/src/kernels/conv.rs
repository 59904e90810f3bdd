//! 3-D convolutions on channels-last grids (`[z][α][r][c]` for one shower): zero or circular
//! padding chosen per axis, and the transposed form.
//!
//! A convolution is, for every output voxel and kernel tap, a small (C_in × C_out)
//! matrix-vector product. The hot kernel computes tiles of up to 6 output voxels × 16 output
//! channels in AVX2/FMA registers (runtime-detected, plain loops otherwise), over an input copied
//! once into a padded buffer.

use super::buf::Buf;
use super::simd::simd;

/// burn's convolution weight `[cout][cin][taps]` (or, `transposed`, `[cin][cout][taps]`), of
/// dimensions `dims` = (d0, d1, kz, kα, kr), as `[taps][cin][cout]`, the layout the kernels read.
pub fn tap_major(w0: &[f32], dims: [usize; 5], transposed: bool) -> Vec<f32> {
    let [d0, d1, kz, ka, kr] = dims;
    let (cin, cout) = if transposed { (d0, d1) } else { (d1, d0) };
    let taps = kz * ka * kr;
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

/// A 3-D convolution, weights `[kz][kα][kr][cin][cout]` ([`tap_major`]); each axis is padded by
/// `pad` zeros, or circularly where `circular` is set.
#[derive(Debug, Clone)]
pub struct Conv3d {
    pub cin: usize,
    pub cout: usize,
    pub k: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub circular: [bool; 3],
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Conv3d {
    /// The output grid for input grid `d`.
    pub fn out_dims(&self, d: [usize; 3]) -> [usize; 3] {
        std::array::from_fn(|i| (d[i] + 2 * self.pad[i] - self.k[i]) / self.stride[i] + 1)
    }

    /// Channels-last `x` of grid `d` → (output, output grid).
    pub fn forward(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        let od = self.out_dims(d);
        super::macs::add(
            od.iter().product::<usize>() * self.k.iter().product::<usize>() * self.cin * self.cout,
        );
        let pd: [usize; 3] = std::array::from_fn(|i| d[i] + 2 * self.pad[i]);
        let padded;
        let p: &[f32] = if self.pad == [0, 0, 0] {
            x
        } else {
            padded = pad_input(x, d, self.pad, self.circular, self.cin);
            &padded
        };
        // Every output is written by the kernels (bias, then sums).
        let mut out = Buf::overwritten(od.iter().product::<usize>() * self.cout);
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

/// Copies `x` (grid `d`, `c` channels) into a buffer padded by `pad` on each axis: circularly
/// where `circular` is set, with zeros elsewhere.
fn pad_input(x: &[f32], d: [usize; 3], pad: [usize; 3], circular: [bool; 3], c: usize) -> Buf {
    let pd: [usize; 3] = std::array::from_fn(|i| d[i] + 2 * pad[i]);
    let mut p = Buf::zeroed(pd.iter().product::<usize>() * c);
    // The source index of padded index i along `ax`, or None for a zero.
    let src = |i: usize, ax: usize| -> Option<usize> {
        let j = i as isize - pad[ax] as isize;
        if circular[ax] {
            Some(j.rem_euclid(d[ax] as isize) as usize)
        } else {
            (0..d[ax] as isize).contains(&j).then_some(j as usize)
        }
    };
    for pz in 0..pd[0] {
        let Some(z) = src(pz, 0) else { continue };
        for pa in 0..pd[1] {
            let Some(a) = src(pa, 1) else { continue };
            let row = &x[((z * d[1] + a) * d[2]) * c..][..d[2] * c];
            let dst = ((pz * pd[1] + pa) * pd[2]) * c;
            if circular[2] {
                for pr in 0..pd[2] {
                    let r = src(pr, 2).unwrap_or(0);
                    p[dst + pr * c..][..c].copy_from_slice(&row[r * c..][..c]);
                }
            } else {
                p[dst + pad[2] * c..][..d[2] * c].copy_from_slice(row);
            }
        }
    }
    p
}

/// Offset in the padded input (grid `pd`) of the first input of output voxel `v` (grid `od`).
#[inline]
fn first_input(v: usize, od: [usize; 3], pd: [usize; 3], c: &Conv3d) -> usize {
    let (z, a, r) = (v / (od[1] * od[2]), (v / od[2]) % od[1], v % od[2]);
    let s = c.stride;
    (((z * s[0]) * pd[1] + a * s[1]) * pd[2] + r * s[2]) * c.cin
}

/// "Valid" convolution over the padded input `p` (grid `pd`): `taps` are the input offsets of
/// the kernel taps relative to an output voxel's first input.
fn conv_valid(
    p: &[f32],
    pd: [usize; 3],
    c: &Conv3d,
    taps: &[usize],
    od: [usize; 3],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if c.cout.is_multiple_of(16) && super::simd::avx512() {
        // SAFETY: AVX-512F is present (checked at run time); indices as below.
        unsafe { avx512::conv_valid(p, pd, c, taps, od, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() && c.cout.is_multiple_of(8) {
        // SAFETY: AVX2 and FMA are present (checked at run time); every index is in bounds by
        // construction of `pd`, `taps` and `od`.
        unsafe { conv_valid_avx2(p, pd, c, taps, od, out) };
        return;
    }
    // Fewer than 8 output channels (a network's one-channel output conv), or widths the tiles
    // do not take: dot products over the inputs.
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA are present (checked at run time).
        unsafe { conv_valid_dot_avx2(p, pd, c, taps, od, out) };
        return;
    }
    conv_valid_dot(p, pd, c, taps, od, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_valid_dot_avx2(
    p: &[f32],
    pd: [usize; 3],
    c: &Conv3d,
    taps: &[usize],
    od: [usize; 3],
    out: &mut [f32],
) {
    conv_valid_dot(p, pd, c, taps, od, out)
}

/// [`conv_valid`] without register tiles: each output is a dot product over taps × input
/// channels, in eight independent lanes that the compiler vectorises (for few output channels
/// this beats a loop over them).
#[inline(always)]
fn conv_valid_dot(
    p: &[f32],
    pd: [usize; 3],
    c: &Conv3d,
    taps: &[usize],
    od: [usize; 3],
    out: &mut [f32],
) {
    let (cin, cout, s, nt) = (c.cin, c.cout, c.stride, taps.len());
    // Weights as [co][tap][ci]: the stored [tap][ci][co] itself for one output channel.
    let w: std::borrow::Cow<[f32]> = if cout == 1 {
        std::borrow::Cow::Borrowed(&c.w)
    } else {
        let mut w = vec![0.0f32; cout * nt * cin];
        for t in 0..nt {
            for ci in 0..cin {
                for co in 0..cout {
                    w[(co * nt + t) * cin + ci] = c.w[(t * cin + ci) * cout + co];
                }
            }
        }
        std::borrow::Cow::Owned(w)
    };
    let split = cin / 8 * 8;
    for z in 0..od[0] {
        for a in 0..od[1] {
            for r in 0..od[2] {
                let base = (((z * s[0]) * pd[1] + a * s[1]) * pd[2] + r * s[2]) * cin;
                let o = &mut out[((z * od[1] + a) * od[2] + r) * cout..][..cout];
                for (co, ov) in o.iter_mut().enumerate() {
                    let wc = &w[co * nt * cin..(co + 1) * nt * cin];
                    let mut acc = [0.0f32; 8];
                    let mut tail = 0.0f32;
                    for (t, &off) in taps.iter().enumerate() {
                        let xin = &p[base + off..base + off + cin];
                        let wt = &wc[t * cin..(t + 1) * cin];
                        for (xa, wa) in xin[..split]
                            .chunks_exact(8)
                            .zip(wt[..split].chunks_exact(8))
                        {
                            for l in 0..8 {
                                acc[l] += xa[l] * wa[l];
                            }
                        }
                        for (xv, wv) in xin[split..].iter().zip(&wt[split..]) {
                            tail += xv * wv;
                        }
                    }
                    *ov = c.b[co] + acc.iter().sum::<f32>() + tail;
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
    c: &Conv3d,
    taps: &[usize],
    od: [usize; 3],
    out: &mut [f32],
) {
    let (cin, cout) = (c.cin, c.cout);
    let pp = p.as_ptr();
    let op = out.as_mut_ptr();
    // Output voxels in order, with the offset of their first input in `p`; tiles of 6 voxels
    // (rows of r are short: 9, 4, 2) × 16 channels fill 12 of the 16 ymm registers.
    let nv = od[0] * od[1] * od[2];
    let mut v = 0;
    while v < nv {
        let m = (nv - v).min(6);
        let mut bases = [0usize; 6];
        for (j, b) in bases.iter_mut().enumerate().take(m) {
            *b = first_input(v + j, od, pd, c);
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

/// The AVX-512 form of `conv_valid_avx2`: tiles of 12 voxels × 16 or 32 channels in zmm
/// registers. Every output is the same chain (bias, then fused multiply-adds over
/// taps and input channels in order) as on AVX2 and in the portable loop's order, so the results
/// are bit-identical to the AVX2 kernel's.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{first_input, Conv3d};
    use std::arch::x86_64::*;

    super::register_tile!(
        Tile,
        12,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );

    macro_rules! dispatch {
        ($tile:expr, $m:expr, $nb:literal, [$($k:literal)*]) => {
            match $m {
                $($k => $tile.run::<$k, $nb>(),)*
                _ => unreachable!("tile of {} voxels", $m),
            }
        };
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn conv_valid(
        p: &[f32],
        pd: [usize; 3],
        c: &Conv3d,
        taps: &[usize],
        od: [usize; 3],
        out: &mut [f32],
    ) {
        let (cin, cout) = (c.cin, c.cout);
        // 32 channels per tile where they divide cout, else 16; 12 voxels (their 12 input
        // pointers still fit in general registers: with more they spill).
        let nb = if cout.is_multiple_of(32) { 2 } else { 1 };
        let nv = od[0] * od[1] * od[2];
        assert!(out.len() >= nv * cout && c.w.len() >= taps.len() * cin * cout);
        let mut v = 0;
        while v < nv {
            let m = (nv - v).min(12);
            let mut bases = [0usize; 12];
            for (j, b) in bases.iter_mut().enumerate().take(m) {
                *b = first_input(v + j, od, pd, c);
            }
            for cb in (0..cout).step_by(16 * nb) {
                // SAFETY: cb + 16·nb ≤ cout; v + m ≤ nv.
                let tile = unsafe {
                    Tile {
                        p: p.as_ptr(),
                        bases,
                        taps,
                        cin,
                        cout,
                        w: c.w.as_ptr().add(cb),
                        b: c.b.as_ptr().add(cb),
                        out: out.as_mut_ptr().add(v * cout + cb),
                    }
                };
                // SAFETY: see Tile::run.
                unsafe {
                    if nb == 2 {
                        dispatch!(tile, m, 2, [1 2 3 4 5 6 7 8 9 10 11 12])
                    } else {
                        dispatch!(tile, m, 1, [1 2 3 4 5 6 7 8 9 10 11 12])
                    }
                }
            }
            v += m;
        }
    }
}

/// A register tile type `$tile`: M consecutive output voxels (first inputs at `bases`, at most
/// `$maxm`) × NB vectors of `$w` output channels, accumulated as bias, then fused multiply-adds
/// over taps and input channels in order (the same chain on every instruction set).
macro_rules! register_tile {
    ($tile:ident, $maxm:literal, $v:ty, $w:literal, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
        struct $tile<'a> {
            p: *const f32,
            bases: [usize; $maxm],
            taps: &'a [usize],
            cin: usize,
            cout: usize,
            w: *const f32,
            b: *const f32,
            out: *mut f32,
        }

        impl $tile<'_> {
            /// SAFETY (caller): bases + taps + cin stay inside p; w has taps × cin × cout floats
            /// from the tile's first channel on; out has M voxels × cout floats.
            #[inline(always)]
            unsafe fn run<const M: usize, const NB: usize>(&self) {
                // SAFETY: see above.
                unsafe {
                    let mut acc: [[$v; NB]; M] = [[$zero(); NB]; M];
                    for j in 0..NB {
                        let bv = $load(self.b.add($w * j));
                        for row in acc.iter_mut() {
                            row[j] = bv;
                        }
                    }
                    for (t, &off) in self.taps.iter().enumerate() {
                        let wt = self.w.add(t * self.cin * self.cout);
                        let xb: [*const f32; M] =
                            std::array::from_fn(|m| self.p.add(self.bases[m] + off));
                        for ci in 0..self.cin {
                            let wr = wt.add(ci * self.cout);
                            let mut wv: [$v; NB] = [$zero(); NB];
                            for (j, v) in wv.iter_mut().enumerate() {
                                *v = $load(wr.add($w * j));
                            }
                            for (m, row) in acc.iter_mut().enumerate() {
                                let xv = $set1(*xb[m].add(ci));
                                for j in 0..NB {
                                    row[j] = $fma(xv, wv[j], row[j]);
                                }
                            }
                        }
                    }
                    for (m, row) in acc.iter().enumerate() {
                        for (j, v) in row.iter().enumerate() {
                            $store(self.out.add(m * self.cout + $w * j), *v);
                        }
                    }
                }
            }
        }
    };
}
use register_tile;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
#[cfg(target_arch = "x86_64")]
register_tile!(
    Tile,
    6,
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

/// A transposed 3-D convolution: out[o] = Σ over input i and tap k with o = i·s − p + k of
/// in[i]·W[k] (burn's and PyTorch's `ConvTranspose3d`), the input first padded circularly by
/// `wrap` on each axis (the cylindrical up-sampling pads α by one). Weights as [`Conv3d`].
#[derive(Debug, Clone)]
pub struct ConvTranspose3d {
    pub cin: usize,
    pub cout: usize,
    pub k: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub out_pad: [usize; 3],
    pub wrap: [usize; 3],
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl ConvTranspose3d {
    /// Channels-last `x` of grid `d` → (output, output grid). The same plain loops compiled for
    /// AVX-512, AVX2 or neither (no fused or reordered arithmetic, so the same results).
    pub fn forward(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::avx512() {
            // SAFETY: AVX-512F present (checked once).
            return unsafe { self.forward_avx512(x, d) };
        }
        #[cfg(target_arch = "x86_64")]
        if simd() {
            // SAFETY: AVX2/FMA present.
            return unsafe { self.forward_avx2(x, d) };
        }
        self.forward_impl(x, d)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_avx512(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        self.forward_impl(x, d)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        self.forward_impl(x, d)
    }

    #[inline(always)]
    fn forward_impl(&self, x: &[f32], d: [usize; 3]) -> (Buf, [usize; 3]) {
        // Every input voxel meets every tap.
        super::macs::add(
            d.iter().product::<usize>() * self.k.iter().product::<usize>() * self.cin * self.cout,
        );
        // The input padded circularly by `wrap`: padded index i ↔ original (i − wrap) mod n.
        let di: [usize; 3] = std::array::from_fn(|i| d[i] + 2 * self.wrap[i]);
        let src = |i: usize, ax: usize| (i + d[ax] * self.wrap[ax] - self.wrap[ax]) % d[ax];
        let od: [usize; 3] = std::array::from_fn(|i| {
            (di[i] - 1) * self.stride[i] + self.k[i] + self.out_pad[i] - 2 * self.pad[i]
        });
        let (cin, cout) = (self.cin, self.cout);
        let mut out = Buf::overwritten(od.iter().product::<usize>() * cout);
        for o in out.chunks_mut(cout) {
            o.copy_from_slice(&self.b);
        }
        // Scatter: each input voxel adds W[k]ᵀ x to the outputs it reaches.
        let mut tmp = vec![0.0f32; cout];
        for iz in 0..di[0] {
            let z0 = src(iz, 0);
            for ia in 0..di[1] {
                let a0 = src(ia, 1);
                for ir in 0..di[2] {
                    let xin = &x[((z0 * d[1] + a0) * d[2] + src(ir, 2)) * cin..][..cin];
                    for kz in 0..self.k[0] {
                        let Some(oz) = (iz * self.stride[0] + kz).checked_sub(self.pad[0]) else {
                            continue;
                        };
                        if oz >= od[0] {
                            continue;
                        }
                        for ka in 0..self.k[1] {
                            let Some(oa) = (ia * self.stride[1] + ka).checked_sub(self.pad[1])
                            else {
                                continue;
                            };
                            if oa >= od[1] {
                                continue;
                            }
                            for kr in 0..self.k[2] {
                                let Some(or) = (ir * self.stride[2] + kr).checked_sub(self.pad[2])
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
