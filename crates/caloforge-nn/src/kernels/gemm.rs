//! Dense layers on batches of rows as a register-tiled matrix product, with weights packed once
//! into panels of [`NR`] outputs: `Y = act(X Wᵀ + b [+ A])`.
//!
//! Masked (autoregressive) layers are packed with a *prefix* per output (output `j` reads inputs
//! `0..prefix[j]`, the MADE masks once units are sorted by degree): each panel stops at its
//! largest prefix, so masked weights are mostly skipped, and the few inside a panel are stored
//! as zeros.
//!
//! **Reproducibility.** Every output is the same chain of fused multiply-adds over the inputs in
//! order, starting from zero, then `+ b`, then `+ A`, then the activation: whichever kernel runs
//! (AVX-512, AVX2 or portable), whichever tile a row lands in and however many rows are
//! computed together. A row's result is therefore bit-identical for any batch size, thread count
//! or instruction set. (Zero weights add exact zeros to the chain.)

/// Outputs per packed panel.
pub const NR: usize = 32;

/// A dense layer packed for [`Packed::forward`].
#[derive(Debug, Clone)]
pub struct Packed {
    k: usize,
    m: usize,
    /// Inputs read by each panel.
    kp: Vec<usize>,
    /// Offset of each panel in `data` (panel p is kp[p] × NR, input-major).
    off: Vec<usize>,
    data: Vec<f32>,
    /// Bias, padded to a whole number of panels.
    bias: Vec<f32>,
}

/// Which instruction set runs the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code (`f32::mul_add`).
    Portable,
    /// AVX2 + FMA, 6 rows × 16 outputs.
    Avx2,
    /// AVX-512F, 12 rows × 32 outputs.
    Avx512,
}

/// The fastest kernel this CPU runs.
pub fn best_isa() -> Isa {
    if super::simd::avx512() {
        Isa::Avx512
    } else if super::simd::simd() {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

/// Whether this CPU can run `isa`.
pub fn supported(isa: Isa) -> bool {
    match isa {
        Isa::Portable => true,
        Isa::Avx2 => super::simd::simd(),
        Isa::Avx512 => super::simd::avx512(),
    }
}

impl Packed {
    /// Packs `w` (`m` rows of `k` inputs, output-major) and bias `b` (`m`). With `prefix`, output
    /// `j` reads only inputs `0..prefix[j]` (its other weights are treated as zero).
    pub fn new(w: &[f32], b: &[f32], k: usize, prefix: Option<&[usize]>) -> Self {
        let m = b.len();
        assert_eq!(w.len(), m * k, "weights are not {m} × {k}");
        if prefix.is_none() {
            // Dense: every panel reads all k inputs (the same layout, packed without the
            // per-element prefix test).
            let panels = m.div_ceil(NR);
            let mut data = vec![0.0f32; panels * k * NR];
            for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(m) {
                let (p, c) = (j / NR, j % NR);
                let panel = &mut data[p * k * NR..(p + 1) * k * NR];
                for (i, &x) in row.iter().enumerate() {
                    panel[i * NR + c] = x;
                }
            }
            let mut bias = b.to_vec();
            bias.resize(panels * NR, 0.0);
            return Packed {
                k,
                m,
                kp: vec![k; panels],
                off: (0..panels).map(|p| p * k * NR).collect(),
                data,
                bias,
            };
        }
        let pre = |j: usize| prefix.map_or(k, |p| p[j].min(k));
        let panels = m.div_ceil(NR);
        let (mut kp, mut off, mut data) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..panels {
            let cols = p * NR..((p + 1) * NR).min(m);
            let kmax = cols.clone().map(pre).max().unwrap_or(0);
            off.push(data.len());
            kp.push(kmax);
            for i in 0..kmax {
                for c in 0..NR {
                    let j = p * NR + c;
                    data.push(if j < m && i < pre(j) {
                        w[j * k + i]
                    } else {
                        0.0
                    });
                }
            }
        }
        let mut bias = b.to_vec();
        bias.resize(panels * NR, 0.0);
        Packed {
            k,
            m,
            kp,
            off,
            data,
            bias,
        }
    }

    /// Packs a layer stored input-major (`[k][m]`, burn's `Linear` weight layout).
    pub fn from_input_major(w: &[f32], b: &[f32], k: usize, prefix: Option<&[usize]>) -> Self {
        let m = b.len();
        let mut rows = vec![0.0; m * k];
        for i in 0..k {
            for j in 0..m {
                rows[j * k + i] = w[i * m + j];
            }
        }
        Self::new(&rows, b, k, prefix)
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.k
    }
    /// Output width.
    pub fn d_out(&self) -> usize {
        self.m
    }
    /// Multiply-adds per row actually computed (masked panels stop early).
    pub fn macs_per_row(&self) -> usize {
        self.kp.iter().sum::<usize>() * NR
    }

    /// `y = act(x Wᵀ + b [+ add])` for the `n` rows of `x` (`n × d_in`) into `y` (`n × d_out`);
    /// `add`, when given, is `n × d_out`. `relu` applies max(·, 0).
    pub fn forward(&self, x: &[f32], y: &mut [f32], add: Option<&[f32]>, relu: bool) {
        self.forward_with(best_isa(), x, y, add, relu)
    }

    /// [`Self::forward`] on a chosen kernel (which must be [`supported`]).
    pub fn forward_with(
        &self,
        isa: Isa,
        x: &[f32],
        y: &mut [f32],
        add: Option<&[f32]>,
        relu: bool,
    ) {
        let (k, m) = (self.k, self.m);
        let n = if k == 0 {
            y.len() / m.max(1)
        } else {
            x.len() / k
        };
        assert_eq!(x.len(), n * k, "input is not a whole number of rows of {k}");
        assert_eq!(y.len(), n * m, "output is not {n} × {m}");
        if let Some(a) = add {
            assert_eq!(a.len(), n * m, "addend is not {n} × {m}");
        }
        super::macs::add(n * self.macs_per_row());
        let panel = |p: usize| {
            let kp = self.kp[p];
            (&self.data[self.off[p]..self.off[p] + kp * NR], kp)
        };
        let rows = Rows { x, ldx: k, n };
        drive(
            isa,
            rows,
            self.kp.len(),
            panel,
            NR,
            m,
            y,
            m,
            Some(&self.bias),
            add,
            relu,
        );
    }
}

/// `n` rows of `x`, row r at `x[r·ldx..]`.
#[derive(Clone, Copy)]
struct Rows<'a> {
    x: &'a [f32],
    ldx: usize,
    n: usize,
}

/// `y = x w` without packing: `x` has `n` rows of `k` inputs at stride `ldx`, `w` has `k` rows of
/// `m` outputs at stride `ldw`, `y` gets `n` rows of `m` at stride `ldy`. The kernels read whole
/// panels of [`NR`] outputs, so `w` must hold `(k − 1)·ldw + NR·⌈m / NR⌉` floats (pad it; the
/// padding's products are computed and dropped). Each output is the fused chain of
/// [`Packed::forward`], so a row's result does not depend on the rows computed with it.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    x: &[f32],
    ldx: usize,
    n: usize,
    k: usize,
    w: &[f32],
    ldw: usize,
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    if n == 0 || m == 0 {
        return;
    }
    let panels = m.div_ceil(NR);
    assert!(ldx >= k && ldy >= m, "row strides shorter than the rows");
    assert!(x.len() >= (n - 1) * ldx + k, "x holds fewer than {n} rows");
    assert!(y.len() >= (n - 1) * ldy + m, "y holds fewer than {n} rows");
    assert!(
        k == 0 || w.len() >= (k - 1) * ldw + panels * NR,
        "w is not padded to whole panels"
    );
    super::macs::add(n * k * m);
    let panel = |p: usize| (&w[p * NR..], k);
    let rows = Rows { x, ldx, n };
    drive(
        best_isa(),
        rows,
        panels,
        panel,
        ldw,
        m,
        y,
        ldy,
        None,
        None,
        false,
    );
}

/// No bias.
static ZEROS: [f32; NR] = [0.0; NR];

/// The tile loop shared by [`Packed::forward_with`] and [`matmul_strided`]: for each panel p of
/// NR outputs (`panel(p)` = its weights, input i's NR outputs at `i·ldw`, and the inputs it
/// reads), tiles of rows.
#[allow(clippy::too_many_arguments)]
fn drive<'w>(
    isa: Isa,
    x: Rows,
    panels: usize,
    panel: impl Fn(usize) -> (&'w [f32], usize),
    ldw: usize,
    m: usize,
    y: &mut [f32],
    ldy: usize,
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
    relu: bool,
) {
    assert!(supported(isa), "{isa:?} kernels do not run on this CPU");
    let rows = match isa {
        Isa::Avx512 => 12,
        Isa::Avx2 => 6,
        Isa::Portable => 4,
    };
    let mut tile = [0.0f32; 12 * NR];
    let n = x.n;
    // Blocks of rows (about 128 KiB of inputs, kept in L2), and within a block each panel
    // (k × NR weights, kept in L1) over the block's tiles: neither a large batch nor a large
    // layer is streamed from memory once per panel or per tile.
    let kmax = (0..panels).map(|p| panel(p).1).max().unwrap_or(0);
    let block = ((32 * 1024 / kmax.max(1)) / rows).max(1) * rows;
    for b0 in (0..n).step_by(block) {
        let b1 = (b0 + block).min(n);
        for p in 0..panels {
            let (w, kp) = panel(p);
            let c0 = p * NR;
            let nc = NR.min(m - c0);
            let bias = bias.map_or(&ZEROS[..], |b| &b[c0..c0 + NR]);
            let mut r0 = b0;
            while r0 < b1 {
                let nr = rows.min(b1 - r0);
                let xs = &x.x[r0 * x.ldx..];
                let out = Out {
                    y: &mut y[r0 * ldy + c0..],
                    add: add.map(|a| &a[r0 * ldy + c0..]),
                    ld: ldy,
                    bias,
                    nc,
                    relu,
                };
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported` checked the CPU; the kernel reads nr rows of kp inputs
                    // of xs at stride ldx and kp rows of NR weights of w at stride ldw (the
                    // callers checked both), and writes nr rows of nc outputs.
                    Isa::Avx512 => unsafe { avx512::tile(xs, x.ldx, w, ldw, kp, nr, out) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { avx2::tile(xs, x.ldx, w, ldw, kp, nr, out) },
                    _ => {
                        tile[..nr * NR].iter_mut().for_each(|v| *v = 0.0);
                        portable_tile(xs, x.ldx, w, ldw, kp, nr, &mut tile);
                        out.finish(&tile, nr)
                    }
                }
                r0 += nr;
            }
        }
    }
}

/// Where a tile's sums go: row r, column c (c < nc) of the tile is written to `y[r·ld + c]` as
/// `act((sum + bias[c]) + add[r·ld + c])`.
struct Out<'a> {
    y: &'a mut [f32],
    add: Option<&'a [f32]>,
    ld: usize,
    bias: &'a [f32],
    nc: usize,
    relu: bool,
}

impl Out<'_> {
    /// Writes the sums `tile` (nr × NR).
    fn finish(mut self, tile: &[f32], nr: usize) {
        for r in 0..nr {
            for c in 0..self.nc {
                self.put(r, c, tile[r * NR + c]);
            }
        }
    }

    /// Writes one sum.
    #[inline(always)]
    fn put(&mut self, r: usize, c: usize, sum: f32) {
        let mut v = sum + self.bias[c];
        if let Some(a) = self.add {
            v += a[r * self.ld + c];
        }
        self.y[r * self.ld + c] = if self.relu { v.max(0.0) } else { v };
    }
}

/// tile[r][c] = Σ_i x[r][i] · w[i][c] (fused, in order of i) for r < nr, c < NR.
fn portable_tile(
    x: &[f32],
    ldx: usize,
    w: &[f32],
    ldw: usize,
    kp: usize,
    nr: usize,
    tile: &mut [f32],
) {
    for r in 0..nr {
        let xr = &x[r * ldx..r * ldx + kp];
        let t = &mut tile[r * NR..(r + 1) * NR];
        for (i, &xv) in xr.iter().enumerate() {
            let wi = &w[i * ldw..i * ldw + NR];
            for c in 0..NR {
                t[c] = xv.mul_add(wi[c], t[c]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Out, NR};
    use std::arch::x86_64::*;

    /// R rows × 32 outputs in 2R zmm accumulators, then bias, addend and activation, stored
    /// straight to the output (masked for a partial panel).
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(
        x: *const f32,
        ldx: usize,
        w: *const f32,
        ldw: usize,
        kp: usize,
        o: Out,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        // SAFETY (caller): x has R rows of ≥ kp floats at stride ldx; w has kp rows of NR floats
        // at stride ldw; the output (and addend) have R rows of o.nc floats at stride o.ld; bias
        // has NR floats.
        unsafe {
            for i in 0..kp {
                let w0 = _mm512_loadu_ps(w.add(i * ldw));
                let w1 = _mm512_loadu_ps(w.add(i * ldw + 16));
                for r in 0..R {
                    let xv = _mm512_set1_ps(*x.add(r * ldx + i));
                    acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
                }
            }
            let full = (1u64 << o.nc) - 1;
            let masks = [full as u16, (full >> 16) as u16];
            let b = [
                _mm512_loadu_ps(o.bias.as_ptr()),
                _mm512_loadu_ps(o.bias.as_ptr().add(16)),
            ];
            let y = o.y.as_mut_ptr();
            for r in 0..R {
                for h in 0..2 {
                    let at = r * o.ld + 16 * h;
                    let mut v = _mm512_add_ps(acc[r][h], b[h]);
                    if let Some(a) = o.add {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[h], a.as_ptr().add(at)));
                    }
                    if o.relu {
                        v = _mm512_max_ps(v, _mm512_setzero_ps());
                    }
                    _mm512_mask_storeu_ps(y.add(at), masks[h], v);
                }
            }
        }
    }

    /// One tile of nr ≤ 12 rows; see [`super::portable_tile`] and [`Out`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        x: &[f32],
        ldx: usize,
        w: &[f32],
        ldw: usize,
        kp: usize,
        nr: usize,
        o: Out,
    ) {
        debug_assert!(nr <= 12 && (kp == 0 || w.len() >= (kp - 1) * ldw + NR));
        debug_assert!(o.bias.len() >= NR);
        debug_assert!(o.y.len() >= (nr - 1) * o.ld + o.nc);
        let (x, w) = (x.as_ptr(), w.as_ptr());
        // SAFETY: forwarded from the caller.
        unsafe {
            match nr {
                12 => rows::<12>(x, ldx, w, ldw, kp, o),
                11 => rows::<11>(x, ldx, w, ldw, kp, o),
                10 => rows::<10>(x, ldx, w, ldw, kp, o),
                9 => rows::<9>(x, ldx, w, ldw, kp, o),
                8 => rows::<8>(x, ldx, w, ldw, kp, o),
                7 => rows::<7>(x, ldx, w, ldw, kp, o),
                6 => rows::<6>(x, ldx, w, ldw, kp, o),
                5 => rows::<5>(x, ldx, w, ldw, kp, o),
                4 => rows::<4>(x, ldx, w, ldw, kp, o),
                3 => rows::<3>(x, ldx, w, ldw, kp, o),
                2 => rows::<2>(x, ldx, w, ldw, kp, o),
                _ => rows::<1>(x, ldx, w, ldw, kp, o),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Out, NR};
    use std::arch::x86_64::*;

    /// R rows × 16 outputs (half `h` of the panel) in 2R ymm accumulators, then bias, addend
    /// and activation, stored straight to the output (a partial 8-column group through
    /// [`Out::put`]).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const R: usize>(
        x: *const f32,
        ldx: usize,
        w: *const f32,
        ldw: usize,
        kp: usize,
        o: &mut Out,
        h: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // SAFETY (caller): as avx512::rows; the output and addend have R rows of o.nc floats at
        // stride o.ld.
        unsafe {
            for i in 0..kp {
                let w0 = _mm256_loadu_ps(w.add(i * ldw + 16 * h));
                let w1 = _mm256_loadu_ps(w.add(i * ldw + 16 * h + 8));
                for r in 0..R {
                    let xv = _mm256_set1_ps(*x.add(r * ldx + i));
                    acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
                }
            }
            for (j, c) in [16 * h, 16 * h + 8].into_iter().enumerate() {
                if c >= o.nc {
                    break;
                }
                let b = _mm256_loadu_ps(o.bias.as_ptr().add(c));
                for (r, a) in acc.iter().enumerate() {
                    let at = r * o.ld + c;
                    if c + 8 <= o.nc {
                        let mut v = _mm256_add_ps(a[j], b);
                        if let Some(ad) = o.add {
                            v = _mm256_add_ps(v, _mm256_loadu_ps(ad.as_ptr().add(at)));
                        }
                        if o.relu {
                            v = _mm256_max_ps(v, _mm256_setzero_ps());
                        }
                        _mm256_storeu_ps(o.y.as_mut_ptr().add(at), v);
                    } else {
                        let mut t = [0.0f32; 8];
                        _mm256_storeu_ps(t.as_mut_ptr(), a[j]);
                        for (cc, &sum) in t.iter().enumerate().take(o.nc - c) {
                            o.put(r, c + cc, sum);
                        }
                    }
                }
            }
        }
    }

    /// One tile of nr ≤ 6 rows; see [`super::portable_tile`] and [`Out`]. The panel's second
    /// half is skipped when it holds no outputs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        x: &[f32],
        ldx: usize,
        w: &[f32],
        ldw: usize,
        kp: usize,
        nr: usize,
        mut o: Out,
    ) {
        debug_assert!(
            nr <= 6 && (kp == 0 || w.len() >= (kp - 1) * ldw + NR.min(o.nc.div_ceil(16) * 16))
        );
        debug_assert!(o.y.len() >= (nr - 1) * o.ld + o.nc && o.bias.len() >= NR);
        let (x, w) = (x.as_ptr(), w.as_ptr());
        let halves = o.nc.div_ceil(16);
        // SAFETY: forwarded from the caller.
        unsafe {
            for h in 0..halves {
                let o = &mut o;
                match nr {
                    6 => rows::<6>(x, ldx, w, ldw, kp, o, h),
                    5 => rows::<5>(x, ldx, w, ldw, kp, o, h),
                    4 => rows::<4>(x, ldx, w, ldw, kp, o, h),
                    3 => rows::<3>(x, ldx, w, ldw, kp, o, h),
                    2 => rows::<2>(x, ldx, w, ldw, kp, o, h),
                    _ => rows::<1>(x, ldx, w, ldw, kp, o, h),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn packed_layer_matches_naive_product_on_every_kernel_and_batch() {
        for &(k, m, masked) in &[
            (45, 70, true),
            (384, 100, true),
            (7, 3, false),
            (0, 5, false),
        ] {
            let w = random(m * k, 1);
            let b = random(m, 2);
            let prefix: Vec<usize> = (0..m).map(|j| (j * k).div_ceil(m.max(1))).collect();
            let pre = masked.then_some(prefix.as_slice());
            let p = Packed::new(&w, &b, k, pre);
            let n = 29;
            let x = random(n * k, 3);
            let add = random(n * m, 4);
            // Naive f64 reference.
            let mut want = vec![0.0f64; n * m];
            for r in 0..n {
                for j in 0..m {
                    let kk = pre.map_or(k, |p| p[j]);
                    let s: f64 = (0..kk)
                        .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                        .sum();
                    want[r * m + j] = (s + b[j] as f64 + add[r * m + j] as f64).max(0.0);
                }
            }
            // Without addend and activation: plain x Wᵀ + b.
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if supported(isa) {
                    let mut y = vec![0.0; n * m];
                    p.forward_with(isa, &x, &mut y, None, false);
                    for r in 0..n {
                        for j in 0..m {
                            let kk = pre.map_or(k, |p| p[j]);
                            let s: f64 = (0..kk)
                                .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                                .sum::<f64>()
                                + b[j] as f64;
                            assert!((y[r * m + j] as f64 - s).abs() < 1e-4 * (1.0 + s.abs()));
                        }
                    }
                }
            }
            let mut first: Option<Vec<f32>> = None;
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if !supported(isa) {
                    continue;
                }
                let mut y = vec![0.0; n * m];
                p.forward_with(isa, &x, &mut y, Some(&add), true);
                for (g, w) in y.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "{isa:?}: {g} vs {w}"
                    );
                }
                // Bit-identical across kernels and for every row computed alone.
                match &first {
                    None => first = Some(y.clone()),
                    Some(f) => assert_eq!(f, &y, "{isa:?} differs from the portable kernel"),
                }
                for r in [0, 5, n - 1] {
                    let mut y1 = vec![0.0; m];
                    p.forward_with(
                        isa,
                        &x[r * k..(r + 1) * k],
                        &mut y1,
                        Some(&add[r * m..(r + 1) * m]),
                        true,
                    );
                    assert_eq!(y1, y[r * m..(r + 1) * m], "{isa:?}: row {r} alone differs");
                }
            }
        }
    }

    #[test]
    fn strided_product_matches_naive_product_and_the_packed_layer() {
        // Sub-blocks of larger matrices, as the window attention uses them; m = 16 and 40 skip
        // or keep a panel's second half, 3 is a partial group of 8.
        for &(n, k, m) in &[(13, 16, 40), (7, 37, 16), (1, 5, 3), (6, 64, 32)] {
            let (ldx, ldw, ldy) = (k + 3, m + 9, m + 5);
            let x = random(n * ldx, 11);
            let w = random((k - 1) * ldw + m.div_ceil(NR) * NR, 12);
            let mut y = vec![7.0f32; (n - 1) * ldy + m + 2];
            matmul_strided(&x, ldx, n, k, &w, ldw, m, &mut y, ldy);
            for r in 0..n {
                for j in 0..m {
                    let s: f64 = (0..k)
                        .map(|i| x[r * ldx + i] as f64 * w[i * ldw + j] as f64)
                        .sum();
                    assert!((y[r * ldy + j] as f64 - s).abs() < 1e-4 * (1.0 + s.abs()));
                }
                // Nothing outside the rows' m outputs is written.
                if r + 1 < n {
                    assert!(y[r * ldy + m..(r + 1) * ldy].iter().all(|&v| v == 7.0));
                }
            }
            assert!(y[(n - 1) * ldy + m..].iter().all(|&v| v == 7.0));
            // The same chain as the packed layer of the same weights, bit for bit.
            let wc: Vec<f32> = (0..k * m).map(|im| w[(im / m) * ldw + im % m]).collect();
            let xc: Vec<f32> = (0..n * k).map(|rk| x[(rk / k) * ldx + rk % k]).collect();
            let p = Packed::from_input_major(&wc, &vec![0.0; m], k, None);
            let mut yp = vec![0.0; n * m];
            p.forward(&xc, &mut yp, None, false);
            for r in 0..n {
                assert_eq!(yp[r * m..(r + 1) * m], y[r * ldy..r * ldy + m]);
            }
        }
    }

    #[test]
    fn input_major_packing_is_the_transpose() {
        let (k, m) = (5, 9);
        let w = random(k * m, 7);
        let b = random(m, 8);
        let x = random(2 * k, 9);
        let p = Packed::from_input_major(&w, &b, k, None);
        let mut y = vec![0.0; 2 * m];
        p.forward(&x, &mut y, None, false);
        let lin = super::super::Linear { w, b };
        let want = lin.forward_rows(&x);
        for (g, w) in y.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5);
        }
    }
}
