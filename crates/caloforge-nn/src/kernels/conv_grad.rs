//! 3-D convolutions for training: the forward pass, the input gradient and the weight gradient
//! of a zero-padded, strided convolution, on channels-first batches `[B, C, z, α, r]` (burn's
//! layout), as matrix products per shower (the `gemm` crate, one thread per call; showers run in
//! parallel). Stride-1 convolutions copy the shower once into a zero-padded grid and take one
//! product per kernel tap, reading tap t's im2col rows in place as a strided view of that grid
//! (no im2col matrix: building it and packing it again in the product cost a quarter of a
//! training step); strided ones build the im2col matrix.
//!
//! The transposed convolution is the adjoint of a convolution, so the same three functions serve
//! it with the roles swapped (see [`Geom`]): its forward pass is [`input_grad`], its input
//! gradient [`forward`] and its weight gradient [`weight_grad`] with `x` and `dy` exchanged.
//!
//! **Reproducibility.** A shower's output and input gradient depend on that shower alone. Weight
//! gradients are accumulated over fixed groups of [`GROUP`] showers, then the groups are added
//! in order: the result does not depend on the thread count.
//!
//! Buffers come from the per-thread pool of [`Buf`] (fresh multi-megabyte pages from the
//! allocator, zeroed by the kernel, cost a fifth of a training step otherwise).

use super::buf::Buf;
use rayon::prelude::*;

/// Showers per weight-gradient partial sum.
pub const GROUP: usize = 8;

/// A zero-padded 3-D convolution from `c_in` channels on an `input` grid to `c_out` channels on
/// the `output` grid: `y[o, p] = Σ_{c, t} w[o, c, t] · x[c, stride·p + t − pad]` (zero outside).
/// Weights are `[c_out, c_in, k_z, k_α, k_r]`.
///
/// A transposed convolution from `C` to `C'` channels (weights `[C, C', k]`, output grid
/// `(n − 1)·stride − 2·pad + k + out_pad`) is the adjoint of the convolution with
/// `c_in = C'`, `input` = its output grid, `c_out = C`, `output` = its input grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input grid.
    pub input: [usize; 3],
    /// Output grid.
    pub output: [usize; 3],
    /// Kernel.
    pub kernel: [usize; 3],
    /// Stride.
    pub stride: [usize; 3],
    /// Zero padding at both ends.
    pub pad: [usize; 3],
}

impl Geom {
    /// The convolution of `input` with `kernel`, `stride` and `pad`; `None` when the kernel does
    /// not fit the padded input or a size is zero.
    pub fn conv(
        c_in: usize,
        c_out: usize,
        input: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> Option<Geom> {
        let mut output = [0; 3];
        for d in 0..3 {
            let padded = input[d] + 2 * pad[d];
            if stride[d] == 0 || kernel[d] == 0 || input[d] == 0 || padded < kernel[d] {
                return None;
            }
            output[d] = (padded - kernel[d]) / stride[d] + 1;
        }
        Some(Geom {
            c_in,
            c_out,
            input,
            output,
            kernel,
            stride,
            pad,
        })
    }

    /// The convolution whose adjoint is the transposed convolution of `input` (`c_in` channels,
    /// weights `[c_in, c_out, k]`) with `stride`, `pad` and `out_pad`: `None` when that
    /// transposed convolution is not defined.
    pub fn transposed(
        c_in: usize,
        c_out: usize,
        input: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> Option<Geom> {
        let mut output = [0; 3];
        for d in 0..3 {
            let full = (input[d].checked_sub(1)?) * stride[d] + kernel[d] + out_pad[d];
            output[d] = full.checked_sub(2 * pad[d]).filter(|&n| n > 0)?;
        }
        let g = Geom::conv(c_out, c_in, output, kernel, stride, pad)?;
        (g.output == input).then_some(g)
    }

    /// Voxels of the input grid.
    pub fn n_in(&self) -> usize {
        self.input.iter().product()
    }
    /// Voxels of the output grid.
    pub fn n_out(&self) -> usize {
        self.output.iter().product()
    }
    /// Kernel taps.
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }
    /// Rows of the im2col matrix: `c_in · taps`.
    pub fn ck(&self) -> usize {
        self.c_in * self.taps()
    }
    /// A 1×1×1 convolution with stride 1: the input is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.taps() == 1 && self.stride == [1, 1, 1] && self.pad == [0, 0, 0]
    }
    /// Multiply-adds per shower of one of the three products.
    pub fn macs(&self) -> usize {
        self.c_out * self.ck() * self.n_out()
    }

    /// The range of output positions `o` along axis `d` whose input `o·s + t − p` lies inside.
    fn valid(&self, d: usize, t: usize) -> (usize, usize) {
        let (s, p, n, o) = (self.stride[d], self.pad[d], self.input[d], self.output[d]);
        // o·s + t ≥ p  ⇔  o ≥ ceil((p − t) / s)
        let lo = if t >= p { 0 } else { (p - t).div_ceil(s) };
        // o·s + t − p ≤ n − 1  ⇔  o ≤ (n − 1 + p − t) / s
        let hi = if n + p > t {
            ((n - 1 + p - t) / s + 1).min(o)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Calls `f(row, out_offset, in_offset, run)` for every contiguous piece of the im2col map of
    /// one channel: im2col row `row` (tap-major within the channel) at output voxels
    /// `out_offset + i` reads input voxel `in_offset + i·stride_r`, for `i < run`. Output voxels
    /// not visited read zero padding.
    fn for_runs(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let [_, na, nr] = self.input;
        let [_, oa, or] = self.output;
        let [kz, ka, kr] = self.kernel;
        let [sz, sa, _] = self.stride;
        let [pz, pa, _] = self.pad;
        for tz in 0..kz {
            let (z0, z1) = self.valid(0, tz);
            for ta in 0..ka {
                let (a0, a1) = self.valid(1, ta);
                for tr in 0..kr {
                    let (r0, r1) = self.valid(2, tr);
                    let row = (tz * ka + ta) * kr + tr;
                    if r1 <= r0 {
                        continue;
                    }
                    let ir0 = r0 * self.stride[2] + tr - self.pad[2];
                    for z in z0..z1 {
                        let iz = z * sz + tz - pz;
                        for a in a0..a1 {
                            let ia = a * sa + ta - pa;
                            f(
                                row,
                                (z * oa + a) * or + r0,
                                (iz * na + ia) * nr + ir0,
                                r1 - r0,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// im2col of one shower: `cols[c·taps + t][p] = x[c][stride·p + t − pad]` (zero outside).
fn im2col(g: &Geom, x: &[f32], cols: &mut [f32]) {
    let (n_in, n_out, taps) = (g.n_in(), g.n_out(), g.taps());
    cols.fill(0.0);
    let sr = g.stride[2];
    for c in 0..g.c_in {
        let xc = &x[c * n_in..(c + 1) * n_in];
        let cc = &mut cols[c * taps * n_out..(c + 1) * taps * n_out];
        g.for_runs(|row, o, i, run| {
            let dst = &mut cc[row * n_out + o..row * n_out + o + run];
            if sr == 1 {
                dst.copy_from_slice(&xc[i..i + run]);
            } else {
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = xc[i + k * sr];
                }
            }
        });
    }
}

/// The adjoint of [`im2col`]: `x[c][stride·p + t − pad] += cols[c·taps + t][p]`.
fn col2im(g: &Geom, cols: &[f32], x: &mut [f32]) {
    let (n_in, n_out, taps) = (g.n_in(), g.n_out(), g.taps());
    let sr = g.stride[2];
    for c in 0..g.c_in {
        let xc = &mut x[c * n_in..(c + 1) * n_in];
        let cc = &cols[c * taps * n_out..(c + 1) * taps * n_out];
        g.for_runs(|row, o, i, run| {
            let src = &cc[row * n_out + o..row * n_out + o + run];
            if sr == 1 {
                for (d, s) in xc[i..i + run].iter_mut().zip(src) {
                    *d += s;
                }
            } else {
                for (k, s) in src.iter().enumerate() {
                    xc[i + k * sr] += s;
                }
            }
        });
    }
}

/// Stride-1 convolutions as one product over a zero-padded copy of each shower: output voxel
/// (z, α, r) is computed at the flat position (z·A_p + α)·R_p + r of the padded grid, so every
/// im2col row is one contiguous slice of it, copied whole (positions with α or r past the output
/// grid are computed too and dropped: a few more multiply-adds instead of thousands of short
/// copies).
struct Shifted {
    /// The padded grid.
    grid: [usize; 3],
    /// Flat positions computed: up to the last output voxel.
    len: usize,
    /// Flat offset of every tap.
    offs: Vec<usize>,
}

impl Shifted {
    /// Elements of the padded grid.
    fn n_pad(&self) -> usize {
        self.grid.iter().product()
    }
}

impl Geom {
    fn shifted(&self) -> Option<Shifted> {
        if self.stride != [1, 1, 1] || self.pointwise() {
            return None;
        }
        let grid: [usize; 3] = std::array::from_fn(|d| self.input[d] + 2 * self.pad[d]);
        let [_, ap, rp] = grid;
        let [oz, oa, or] = self.output;
        let len = ((oz - 1) * ap + oa - 1) * rp + or;
        let [_, ka, kr] = self.kernel;
        let offs = (0..self.taps())
            .map(|t| ((t / (ka * kr)) * ap + t / kr % ka) * rp + t % kr)
            .collect();
        Some(Shifted { grid, len, offs })
    }

    /// The convolution computing the input gradient of this stride-1 convolution as a forward
    /// pass (kernel flipped, channels swapped, padding k − 1 − p); `None` when p > k − 1.
    fn flipped(&self) -> Option<Geom> {
        let pad: [usize; 3] = std::array::from_fn(|d| {
            (self.kernel[d] - 1)
                .checked_sub(self.pad[d])
                .unwrap_or(usize::MAX)
        });
        if self.stride != [1, 1, 1] || pad.contains(&usize::MAX) {
            return None;
        }
        let g = Geom::conv(
            self.c_out,
            self.c_in,
            self.output,
            self.kernel,
            [1, 1, 1],
            pad,
        )?;
        (g.output == self.input).then_some(g)
    }
}

/// `w'[c][o][t] = w[o][c][taps − 1 − t]`: the weights of [`Geom::flipped`].
fn flip_weights(g: &Geom, w: &[f32]) -> Vec<f32> {
    let taps = g.taps();
    let mut f = vec![0.0; w.len()];
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            for t in 0..taps {
                f[(c * g.c_out + o) * taps + taps - 1 - t] = w[(o * g.c_in + c) * taps + t];
            }
        }
    }
    f
}

/// Moves rows of `r` values between a grid of `dims` and the same grid inside a larger one
/// (`outer`, starting at `at`): `f(inner_offset, outer_offset)` for each row.
fn rows_in(dims: [usize; 3], outer: [usize; 3], at: [usize; 3], mut f: impl FnMut(usize, usize)) {
    for z in 0..dims[0] {
        for a in 0..dims[1] {
            f(
                (z * dims[1] + a) * dims[2],
                ((z + at[0]) * outer[1] + a + at[1]) * outer[2] + at[2],
            );
        }
    }
}

/// The shower `x` `[c_in, input]` copied into the zero-padded grid of [`Shifted`]: `[c_in,
/// n_pad]`. Tap t's im2col rows are then the strided view at offset `offs[t]` (row stride n_pad).
fn padded(g: &Geom, s: &Shifted, x: &[f32]) -> Buf {
    let (n_pad, n_in, r) = (s.n_pad(), g.n_in(), g.input[2]);
    let mut xp = Buf::zeroed(g.c_in * n_pad);
    for c in 0..g.c_in {
        let (xc, pc) = (
            &x[c * n_in..(c + 1) * n_in],
            &mut xp[c * n_pad..(c + 1) * n_pad],
        );
        rows_in(g.input, s.grid, g.pad, |i, o| {
            pc[o..o + r].copy_from_slice(&xc[i..i + r]);
        });
    }
    xp
}

/// A row-major matrix operand: element (i, j) at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl Mat {
    fn rows(s: &[f32], ld: usize) -> Mat {
        Mat {
            ptr: s.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }
    /// The transpose of the row-major matrix `s` with leading dimension `ld`.
    fn transposed(s: &[f32], ld: usize) -> Mat {
        Mat {
            ptr: s.as_ptr(),
            rs: 1,
            cs: ld as isize,
        }
    }
    /// Element (i, j) at `s[start + i·rs + j·cs]`.
    fn strided(s: &[f32], start: usize, rs: usize, cs: usize) -> Mat {
        Mat {
            ptr: s[start..].as_ptr(),
            rs: rs as isize,
            cs: cs as isize,
        }
    }
}

/// `c[m×n] (row-major) = (accumulate ? c : 0) + a[m×k] · b[k×n]`, on the calling thread.
fn matmul(m: usize, n: usize, k: usize, c: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    assert!(c.len() >= m * n);
    matmul_into(m, n, k, c, 0, [n, 1], accumulate, a, b);
}

/// As [`matmul`], with c's element (i, j) at `c[start + i·cst[0] + j·cst[1]]`; every element
/// touched must lie in `c` and every operand element in its slice (the callers' strides).
#[allow(clippy::too_many_arguments)]
fn matmul_into(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    start: usize,
    cst: [usize; 2],
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(start + (m - 1) * cst[0] + (n - 1) * cst[1] < c.len());
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[start + i * cst[0] + j * cst[1]] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: every element of `c` addressed lies inside it (checked above); `a` and `b` point
    // into slices that the callers size for m×k and k×n with the given strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(start),
            cst[1] as isize,
            cst[0] as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn check(g: &Geom, batch: usize, x: usize, w: usize, y: usize) {
    assert_eq!(x, batch * g.c_in * g.n_in(), "conv input size");
    assert_eq!(w, g.c_out * g.ck(), "conv weight size");
    assert_eq!(y, batch * g.c_out * g.n_out(), "conv output size");
}

/// `y = conv(x, w)` for a batch: x `[B, c_in, input]`, w `[c_out, c_in, kernel]`, y `[B, c_out,
/// output]` (overwritten).
pub fn forward(g: &Geom, batch: usize, x: &[f32], w: &[f32], y: &mut [f32]) {
    check(g, batch, x.len(), w.len(), y.len());
    let (ck, n_in, n_out) = (g.ck(), g.n_in(), g.n_out());
    if batch == 0 {
        return;
    }
    let shifted = g.shifted();
    y.par_chunks_mut(g.c_out * n_out)
        .zip(x.par_chunks(g.c_in * n_in))
        .for_each(|(yb, xb)| {
            if let Some(s) = &shifted {
                // One product per tap, accumulated: w[:, :, t] · (the padded shower at offs[t]).
                let xp = padded(g, s, xb);
                let (n_pad, taps) = (s.n_pad(), g.taps());
                let mut full = Buf::overwritten(g.c_out * s.len);
                for (t, &off) in s.offs.iter().enumerate() {
                    matmul(
                        g.c_out,
                        s.len,
                        g.c_in,
                        &mut full,
                        t > 0,
                        Mat::strided(w, t, ck, taps),
                        Mat::strided(&xp, off, n_pad, 1),
                    );
                }
                let or = g.output[2];
                for o in 0..g.c_out {
                    let (src, dst) = (&full[o * s.len..], &mut yb[o * n_out..(o + 1) * n_out]);
                    rows_in(g.output, s.grid, [0; 3], |i, f| {
                        dst[i..i + or].copy_from_slice(&src[f..f + or]);
                    });
                }
            } else if g.pointwise() {
                matmul(
                    g.c_out,
                    n_out,
                    ck,
                    yb,
                    false,
                    Mat::rows(w, ck),
                    Mat::rows(xb, n_out),
                );
            } else {
                let mut cols = Buf::overwritten(ck * n_out);
                im2col(g, xb, &mut cols);
                matmul(
                    g.c_out,
                    n_out,
                    ck,
                    yb,
                    false,
                    Mat::rows(w, ck),
                    Mat::rows(&cols, n_out),
                );
            }
        });
}

/// The input gradient `dx = convᵀ(dy, w)` for a batch: dy `[B, c_out, output]`, dx `[B, c_in,
/// input]` (overwritten).
pub fn input_grad(g: &Geom, batch: usize, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    check(g, batch, dx.len(), w.len(), dy.len());
    let (ck, n_in, n_out) = (g.ck(), g.n_in(), g.n_out());
    if batch == 0 {
        return;
    }
    if let (Some(f), None) = (g.flipped(), g.pointwise().then_some(())) {
        return forward(&f, batch, dy, &flip_weights(g, w), dx);
    }
    dx.par_chunks_mut(g.c_in * n_in)
        .zip(dy.par_chunks(g.c_out * n_out))
        .for_each(|(dxb, dyb)| {
            let wt = Mat::transposed(w, ck);
            if g.pointwise() {
                matmul(ck, n_out, g.c_out, dxb, false, wt, Mat::rows(dyb, n_out));
            } else {
                let mut cols = Buf::overwritten(ck * n_out);
                matmul(
                    ck,
                    n_out,
                    g.c_out,
                    &mut cols,
                    false,
                    wt,
                    Mat::rows(dyb, n_out),
                );
                dxb.fill(0.0);
                col2im(g, &cols, dxb);
            }
        });
}

/// The weight gradient `dw = Σ_b dy_b · im2col(x_b)ᵀ`: x `[B, c_in, input]`, dy `[B, c_out,
/// output]`, dw `[c_out, c_in, kernel]` (overwritten).
pub fn weight_grad(g: &Geom, batch: usize, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    check(g, batch, x.len(), dw.len(), dy.len());
    let (ck, n_in, n_out) = (g.ck(), g.n_in(), g.n_out());
    let nw = g.c_out * ck;
    let groups = batch.div_ceil(GROUP);
    let mut partial = vec![0.0f32; groups * nw];
    let shifted = g.shifted();
    partial
        .par_chunks_mut(nw)
        .enumerate()
        .for_each(|(gi, acc)| {
            if let Some(s) = &shifted {
                let mut full = Buf::zeroed(g.c_out * s.len);
                let (n_pad, taps) = (s.n_pad(), g.taps());
                let or = g.output[2];
                for b in gi * GROUP..((gi + 1) * GROUP).min(batch) {
                    let xp = padded(g, s, &x[b * g.c_in * n_in..(b + 1) * g.c_in * n_in]);
                    let dyb = &dy[b * g.c_out * n_out..(b + 1) * g.c_out * n_out];
                    // dy at the computed positions (the dropped ones stay zero).
                    for o in 0..g.c_out {
                        let (src, dst) = (&dyb[o * n_out..], &mut full[o * s.len..(o + 1) * s.len]);
                        rows_in(g.output, s.grid, [0; 3], |i, f| {
                            dst[f..f + or].copy_from_slice(&src[i..i + or]);
                        });
                    }
                    // dw[:, :, t] (+)= dy · (the padded shower at offs[t])ᵀ.
                    let first = b == gi * GROUP;
                    for (t, &off) in s.offs.iter().enumerate() {
                        matmul_into(
                            g.c_out,
                            g.c_in,
                            s.len,
                            acc,
                            t,
                            [ck, taps],
                            !first,
                            Mat::rows(&full, s.len),
                            Mat::strided(&xp, off, 1, n_pad),
                        );
                    }
                }
                return;
            }
            let mut cols = (!g.pointwise()).then(|| Buf::overwritten(ck * n_out));
            for b in gi * GROUP..((gi + 1) * GROUP).min(batch) {
                let xb = &x[b * g.c_in * n_in..(b + 1) * g.c_in * n_in];
                let dyb = &dy[b * g.c_out * n_out..(b + 1) * g.c_out * n_out];
                let colsb: &[f32] = match cols.as_mut() {
                    Some(c) => {
                        im2col(g, xb, c);
                        c
                    }
                    None => xb,
                };
                let first = b == gi * GROUP;
                matmul(
                    g.c_out,
                    ck,
                    n_out,
                    acc,
                    !first,
                    Mat::rows(dyb, n_out),
                    Mat::transposed(colsb, n_out),
                );
            }
        });
    dw.fill(0.0);
    for p in partial.chunks(nw) {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    /// y by explicit loops (f64).
    fn naive(g: &Geom, batch: usize, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (ni, no) = (g.n_in(), g.n_out());
        let mut y = vec![0.0f64; batch * g.c_out * no];
        for b in 0..batch {
            for o in 0..g.c_out {
                for oz in 0..g.output[0] {
                    for oa in 0..g.output[1] {
                        for or in 0..g.output[2] {
                            let mut acc = 0.0f64;
                            for c in 0..g.c_in {
                                for t in 0..g.taps() {
                                    let tk = [
                                        t / (g.kernel[1] * g.kernel[2]),
                                        t / g.kernel[2] % g.kernel[1],
                                        t % g.kernel[2],
                                    ];
                                    let o3 = [oz, oa, or];
                                    let mut idx = [0usize; 3];
                                    let mut inside = true;
                                    for d in 0..3 {
                                        let i = (o3[d] * g.stride[d] + tk[d]) as isize
                                            - g.pad[d] as isize;
                                        inside &= i >= 0 && i < g.input[d] as isize;
                                        idx[d] = i.max(0) as usize;
                                    }
                                    if inside {
                                        let xi = (b * g.c_in + c) * ni
                                            + (idx[0] * g.input[1] + idx[1]) * g.input[2]
                                            + idx[2];
                                        acc += x[xi] as f64
                                            * w[(o * g.c_in + c) * g.taps() + t] as f64;
                                    }
                                }
                            }
                            y[(b * g.c_out + o) * no
                                + (oz * g.output[1] + oa) * g.output[2]
                                + or] = acc;
                        }
                    }
                }
            }
        }
        y
    }

    fn geoms() -> Vec<Geom> {
        vec![
            Geom::conv(2, 3, [4, 5, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1]).unwrap(),
            Geom::conv(3, 2, [5, 6, 5], [3, 4, 4], [2, 2, 2], [1, 0, 1]).unwrap(),
            Geom::conv(3, 4, [3, 2, 4], [1, 1, 1], [1, 1, 1], [0, 0, 0]).unwrap(),
            Geom::conv(2, 2, [6, 3, 7], [2, 1, 3], [1, 1, 3], [0, 0, 2]).unwrap(),
            // Stride 1, uneven kernel and padding: the shifted and flipped paths.
            Geom::conv(2, 3, [4, 5, 6], [2, 3, 1], [1, 1, 1], [0, 1, 0]).unwrap(),
            Geom::conv(3, 2, [3, 4, 5], [3, 2, 3], [1, 1, 1], [2, 1, 0]).unwrap(),
        ]
    }

    #[test]
    fn forward_matches_naive_loops() {
        for (i, g) in geoms().into_iter().enumerate() {
            let batch = 3;
            let x = randv(batch * g.c_in * g.n_in(), 1);
            let w = randv(g.c_out * g.ck(), 2);
            let mut y = vec![7.0; batch * g.c_out * g.n_out()];
            forward(&g, batch, &x, &w, &mut y);
            for (a, e) in y.iter().zip(naive(&g, batch, &x, &w)) {
                assert!((*a as f64 - e).abs() < 1e-4, "geometry {i}: {a} vs {e}");
            }
        }
    }

    /// ⟨dy, conv(x, w)⟩ is bilinear: its gradients in x and w are `input_grad` and
    /// `weight_grad`; checked on every coordinate through the naive (linear) convolution.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_pass() {
        for (i, g) in geoms().into_iter().enumerate() {
            let batch = GROUP + 3; // two weight-gradient groups
            let x = randv(batch * g.c_in * g.n_in(), 3);
            let w = randv(g.c_out * g.ck(), 4);
            let dy = randv(batch * g.c_out * g.n_out(), 5);
            let mut dx = vec![7.0; x.len()];
            input_grad(&g, batch, &dy, &w, &mut dx);
            let mut dw = vec![7.0; w.len()];
            weight_grad(&g, batch, &x, &dy, &mut dw);
            let dot = |y: Vec<f64>| y.iter().zip(&dy).map(|(a, b)| a * *b as f64).sum::<f64>();
            // Linear in x: d⟨dy, y⟩/dx_j = ⟨dy, conv(e_j, w)⟩.
            for j in (0..x.len()).step_by(5) {
                let mut e = vec![0.0; x.len()];
                e[j] = 1.0;
                let want = dot(naive(&g, batch, &e, &w));
                assert!(
                    (dx[j] as f64 - want).abs() < 1e-4,
                    "geometry {i}: dx[{j}] {} vs {want}",
                    dx[j]
                );
            }
            for j in 0..w.len() {
                let mut e = vec![0.0; w.len()];
                e[j] = 1.0;
                let want = dot(naive(&g, batch, &x, &e));
                assert!(
                    (dw[j] as f64 - want).abs() < 1e-3,
                    "geometry {i}: dw[{j}] {} vs {want}",
                    dw[j]
                );
            }
        }
    }

    #[test]
    fn transposed_geometry_inverts_the_output_size() {
        // ConvTranspose3d of a [2, 3, 4] grid, kernel (3, 4, 4), stride 2, padding 1, output
        // padding (1, 0, 0): (n − 1)·2 − 2 + k + out_pad = (4, 6, 8) + (1, 0, 0).
        let g =
            Geom::transposed(5, 6, [2, 3, 4], [3, 4, 4], [2, 2, 2], [1, 1, 1], [1, 0, 0]).unwrap();
        assert_eq!(g.input, [4, 6, 8]);
        assert_eq!(g.output, [2, 3, 4]);
        assert_eq!((g.c_in, g.c_out), (6, 5));
        assert!(Geom::conv(1, 1, [2, 2, 2], [5, 1, 1], [1, 1, 1], [1, 0, 0]).is_none());
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = Geom::conv(3, 4, [5, 6, 4], [3, 3, 3], [1, 1, 1], [1, 1, 1]).unwrap();
        let batch = 2 * GROUP + 1;
        let x = randv(batch * g.c_in * g.n_in(), 6);
        let dy = randv(batch * g.c_out * g.n_out(), 7);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut dw = vec![0.0; g.c_out * g.ck()];
                weight_grad(&g, batch, &x, &dy, &mut dw);
                dw
            })
        };
        assert_eq!(run(1), run(3));
    }
}
