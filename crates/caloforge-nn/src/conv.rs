//! Cylindrical 3-D convolution over (layer z, angle α, radius r): circular padding along α (the
//! voxel at α = 0 neighbours α = n − 1), zero padding along z and r, as CaloDiffusion's
//! `CylindricalConv`. Tensors are [batch, channels, z, α, r].

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::PaddingConfig3d;
use burn::tensor::{Device, Tensor};

/// Pads `x` circularly by `p` on both sides of dimension `dim`.
pub fn circular_pad(x: Tensor<5>, dim: usize, p: usize) -> Tensor<5> {
    if p == 0 {
        return x;
    }
    let n = x.dims()[dim];
    assert!(
        p <= n,
        "circular padding {p} exceeds the size {n} of dimension {dim}"
    );
    let lo = x.clone().narrow(dim, n - p, p);
    let hi = x.clone().narrow(dim, 0, p);
    Tensor::cat(vec![lo, x, hi], dim)
}

/// `y + b` broadcast over the channel axis of [B, C, z, α, r].
pub fn add_bias(y: Tensor<5>, b: Option<Tensor<1>>) -> Tensor<5> {
    match b {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1, 1])
        }
        None => y,
    }
}

/// A 3-D convolution that wraps around the angular axis.
#[derive(Module, Debug)]
pub struct CylindricalConv3d {
    /// The convolution (zero padding on z and r only).
    pub conv: Conv3d,
    /// Circular padding along α.
    pub pad_alpha: usize,
}

impl CylindricalConv3d {
    /// `kernel`, `stride` and `padding` are (z, α, r); α is padded circularly.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        device: &Device,
    ) -> Self {
        let conv = Conv3dConfig::new([c_in, c_out], kernel)
            .with_stride(stride)
            .with_padding(PaddingConfig3d::Explicit(padding[0], 0, padding[2]))
            .init(device);
        CylindricalConv3d {
            conv,
            pad_alpha: padding[1],
        }
    }

    /// [B, C_in, Z, A, R] → [B, C_out, Z', A', R'].
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = circular_pad(x, 3, self.pad_alpha);
        let pad = match &self.conv.padding {
            PaddingConfig3d::Explicit(z, a, r) => [*z, *a, *r],
            PaddingConfig3d::Valid => [0, 0, 0],
            PaddingConfig3d::Same => return self.conv.forward(x),
        };
        let y = crate::ops::conv3d(x, self.conv.weight.val(), self.conv.stride, pad);
        add_bias(y, self.conv.bias.as_ref().map(|b| b.val()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::TensorData;
    use rand::{Rng, SeedableRng};

    fn randv(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    /// out[b,o,z,a,r] by explicit loops with circular α and zero z/r padding, stride 1.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        s: [usize; 5],
        co: usize,
        k: [usize; 3],
        p: [usize; 3],
    ) -> Vec<f32> {
        let [nb, ci, nz, na, nr] = s;
        let oz = nz + 2 * p[0] - k[0] + 1;
        let oa = na + 2 * p[1] - k[1] + 1;
        let or = nr + 2 * p[2] - k[2] + 1;
        let mut out = vec![0.0f32; nb * co * oz * oa * or];
        for b in 0..nb {
            for o in 0..co {
                for z in 0..oz {
                    for a in 0..oa {
                        for r in 0..or {
                            let mut acc = bias[o] as f64;
                            for c in 0..ci {
                                for dz in 0..k[0] {
                                    for da in 0..k[1] {
                                        for dr in 0..k[2] {
                                            let zz = z as isize + dz as isize - p[0] as isize;
                                            let rr = r as isize + dr as isize - p[2] as isize;
                                            if zz < 0
                                                || zz >= nz as isize
                                                || rr < 0
                                                || rr >= nr as isize
                                            {
                                                continue;
                                            }
                                            let aa = (a as isize + da as isize - p[1] as isize)
                                                .rem_euclid(na as isize)
                                                as usize;
                                            let xi = (((b * ci + c) * nz + zz as usize) * na + aa)
                                                * nr
                                                + rr as usize;
                                            let wi = (((o * ci + c) * k[0] + dz) * k[1] + da)
                                                * k[2]
                                                + dr;
                                            acc += x[xi] as f64 * w[wi] as f64;
                                        }
                                    }
                                }
                            }
                            out[(((b * co + o) * oz + z) * oa + a) * or + r] = acc as f32;
                        }
                    }
                }
            }
        }
        out
    }

    fn conv_with(
        w: Vec<f32>,
        bias: Vec<f32>,
        ci: usize,
        co: usize,
        k: [usize; 3],
        p: [usize; 3],
        dev: &Device,
    ) -> CylindricalConv3d {
        let mut c = CylindricalConv3d::new(ci, co, k, [1, 1, 1], p, dev);
        c.conv.weight = Param::from_tensor(Tensor::<5>::from_data(
            TensorData::new(w, [co, ci, k[0], k[1], k[2]]),
            dev,
        ));
        c.conv.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(bias, [co]),
            dev,
        )));
        c
    }

    #[test]
    fn angle_zero_sees_its_neighbour_at_the_last_angle() {
        let dev = Device::flex();
        let (nz, na, nr) = (3, 6, 4);
        let mut x = vec![0.0f32; nz * na * nr];
        x[(na - 1) * nr + 2] = 1.0; // z = 0, α = n − 1, r = 2
        let c = conv_with(vec![1.0; 27], vec![0.0], 1, 1, [3, 3, 3], [1, 1, 1], &dev);
        let y: Vec<f32> = c
            .forward(Tensor::<5>::from_data(
                TensorData::new(x, [1, 1, nz, na, nr]),
                &dev,
            ))
            .into_data()
            .iter::<f32>()
            .collect();
        assert_eq!(y.len(), nz * na * nr);
        assert_eq!(y[2], 1.0, "α = 0 sees α = n − 1");
        assert_eq!(y[(na - 2) * nr + 2], 1.0);
        assert_eq!(y[3 * nr + 2], 0.0, "α = 3 is two bins away");
    }

    #[test]
    fn forward_and_gradient_match_naive_loops() {
        let dev = Device::flex().autodiff();
        let (s, co, k, p) = ([2usize, 2, 4, 5, 3], 3usize, [3usize, 3, 2], [1usize, 1, 0]);
        let nx: usize = s.iter().product();
        let x = randv(nx, 1);
        let w = randv(co * s[1] * k.iter().product::<usize>(), 2);
        let bias = randv(co, 3);
        let c = conv_with(w.clone(), bias.clone(), s[1], co, k, p, &dev);
        let xt = Tensor::<5>::from_data(TensorData::new(x.clone(), s), &dev).require_grad();
        let y = c.forward(xt.clone());
        let got: Vec<f32> = y.clone().into_data().iter::<f32>().collect();
        let want = naive(&x, &w, &bias, s, co, k, p);
        assert_eq!(got.len(), want.len());
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-4, "{g} vs {e}");
        }
        // d/dx of Σ y·m for a fixed random m, against central differences of the naive conv.
        let m = randv(want.len(), 4);
        let mt = Tensor::<5>::from_data(TensorData::new(m.clone(), y.dims()), &dev);
        let grads = (y * mt).sum().backward();
        let gx: Vec<f32> = xt.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        let f = |xv: &[f32]| {
            naive(xv, &w, &bias, s, co, k, p)
                .iter()
                .zip(&m)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        };
        for i in (0..nx).step_by(7) {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += 1e-2;
            xm[i] -= 1e-2;
            let num = (f(&xp) - f(&xm)) / 2e-2;
            assert!(
                (num - gx[i] as f64).abs() < 1e-3,
                "x[{i}]: numeric {num} vs autodiff {}",
                gx[i]
            );
        }
    }
}
