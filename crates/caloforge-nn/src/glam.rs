//! Learnable GLaM (CaloDiffusion's geometry-latent mapping, the reference `NNConverter`): per
//! irregular layer, a bias-free linear map of its radial bins onto the regular grid (encoder)
//! and one back (decoder), initialised with the geometric overlap W and its pseudo-inverse W⁺
//! from `caloforge_core::glam::Glam`, and trained with the denoiser. Layers with a single
//! angular bin are spread evenly over the grid's α bins on the way in and summed on the way out.
//!
//! Tensors: showers `[B, V]` in the original voxel order ↔ grids `[B, 1, layers, α, r]`.
//! [`FastGlam`] applies the same maps to plain slices (CPU generation).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use caloforge_core::glam::Glam;

/// The learnable maps.
#[derive(Module, Debug)]
pub struct GlamNet {
    enc: Vec<Linear>,
    dec: Vec<Linear>,
    offsets: Vec<usize>,
    n_alpha: Vec<usize>,
    n_r: Vec<usize>,
    grid_alpha: usize,
    grid_r: usize,
}

fn linear(w: Vec<f32>, d_in: usize, d_out: usize, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out).with_bias(false).init(device);
    l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device));
    l
}

impl GlamNet {
    /// Initialised from the geometric maps (encoder W, decoder W⁺).
    pub fn new(g: &Glam, device: &Device) -> Self {
        let [_, na, nr] = g.shape();
        let (mut enc, mut dec) = (Vec::new(), Vec::new());
        for m in &g.maps {
            // burn's Linear weight is [in, out]: Wᵀ for the encoder, (W⁺)ᵀ for the decoder.
            let mut we = vec![0.0f32; m.n_r * nr];
            let mut wd = vec![0.0f32; nr * m.n_r];
            for i in 0..nr {
                for j in 0..m.n_r {
                    we[j * nr + i] = m.w[i * m.n_r + j] as f32;
                    wd[i * m.n_r + j] = m.w_pinv[j * nr + i] as f32;
                }
            }
            enc.push(linear(we, m.n_r, nr, device));
            dec.push(linear(wd, nr, m.n_r, device));
        }
        GlamNet {
            enc,
            dec,
            offsets: g.maps.iter().map(|m| m.offset).collect(),
            n_alpha: g.maps.iter().map(|m| m.n_alpha).collect(),
            n_r: g.maps.iter().map(|m| m.n_r).collect(),
            grid_alpha: na,
            grid_r: nr,
        }
    }

    /// `[B, V]` → `[B, 1, layers, α, r]`.
    pub fn encode(&self, x: Tensor<2>) -> Tensor<5> {
        let b = x.dims()[0];
        let (na, nr) = (self.grid_alpha, self.grid_r);
        let layers: Vec<Tensor<3>> = (0..self.enc.len())
            .map(|l| {
                let (a, r) = (self.n_alpha[l], self.n_r[l]);
                let xl: Tensor<3> = x
                    .clone()
                    .narrow(1, self.offsets[l], a * r)
                    .reshape([b, a, r]);
                let o = self.enc[l].forward(xl);
                if a == 1 {
                    o.repeat_dim(1, na).div_scalar(na as f64)
                } else {
                    o
                }
            })
            .collect();
        let n = layers.len();
        Tensor::stack::<4>(layers, 1).reshape([b, 1, n, na, nr])
    }

    /// `[B, 1, layers, α, r]` → `[B, V]`.
    pub fn decode(&self, y: Tensor<5>) -> Tensor<2> {
        let [b, _, nl, na, nr] = y.dims();
        let y: Tensor<4> = y.reshape([b, nl, na, nr]);
        let parts: Vec<Tensor<2>> = (0..nl)
            .map(|l| {
                let (a, r) = (self.n_alpha[l], self.n_r[l]);
                let yl: Tensor<3> = y.clone().narrow(1, l, 1).reshape([b, na, nr]);
                let o = self.dec[l].forward(yl);
                let o = if a == 1 { o.sum_dim(1) } else { o };
                o.reshape([b, a * r])
            })
            .collect();
        Tensor::cat(parts, 1)
    }
}

/// The maps of a [`GlamNet`] on plain slices, for CPU generation.
#[derive(Debug, Clone)]
pub struct FastGlam {
    enc: Vec<Vec<f32>>,
    dec: Vec<Vec<f32>>,
    offsets: Vec<usize>,
    n_alpha: Vec<usize>,
    n_r: Vec<usize>,
    grid_alpha: usize,
    grid_r: usize,
    n_voxels: usize,
}

impl FastGlam {
    /// Copies the weights of `g`.
    pub fn new(g: &GlamNet) -> Self {
        let v = |l: &Linear| -> Vec<f32> { l.weight.val().into_data().iter::<f32>().collect() };
        FastGlam {
            enc: g.enc.iter().map(v).collect(),
            dec: g.dec.iter().map(v).collect(),
            offsets: g.offsets.clone(),
            n_alpha: g.n_alpha.clone(),
            n_r: g.n_r.clone(),
            grid_alpha: g.grid_alpha,
            grid_r: g.grid_r,
            n_voxels: g.n_alpha.iter().zip(&g.n_r).map(|(a, r)| a * r).sum(),
        }
    }

    /// One shower `[V]` → grid `[layers][α][r]`.
    pub fn encode(&self, x: &[f32]) -> Vec<f32> {
        let (na, nr) = (self.grid_alpha, self.grid_r);
        let mut out = vec![0.0f32; self.enc.len() * na * nr];
        for l in 0..self.enc.len() {
            let (a, r) = (self.n_alpha[l], self.n_r[l]);
            for ga in 0..na {
                let (src, share) = if a == 1 {
                    (0, 1.0 / na as f32)
                } else {
                    (ga, 1.0)
                };
                let xl = &x[self.offsets[l] + src * r..][..r];
                let o = &mut out[(l * na + ga) * nr..][..nr];
                for (j, &xv) in xl.iter().enumerate() {
                    for (ov, &w) in o.iter_mut().zip(&self.enc[l][j * nr..(j + 1) * nr]) {
                        *ov += xv * w * share;
                    }
                }
            }
        }
        out
    }

    /// Grid `[layers][α][r]` → one shower `[V]`.
    pub fn decode(&self, y: &[f32]) -> Vec<f32> {
        let (na, nr) = (self.grid_alpha, self.grid_r);
        let mut out = vec![0.0f32; self.n_voxels];
        for l in 0..self.dec.len() {
            let (a, r) = (self.n_alpha[l], self.n_r[l]);
            for ga in 0..na {
                let dst = if a == 1 { 0 } else { ga };
                let yl = &y[(l * na + ga) * nr..][..nr];
                let o = &mut out[self.offsets[l] + dst * r..][..r];
                for (i, &yv) in yl.iter().enumerate() {
                    for (ov, &w) in o.iter_mut().zip(&self.dec[l][i * r..(i + 1) * r]) {
                        *ov += yv * w;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caloforge_core::DatasetKind;

    #[test]
    fn initial_maps_are_the_geometric_ones_and_conserve_energy() {
        let dev = Device::flex();
        for kind in [DatasetKind::Photons1, DatasetKind::Pions1] {
            let geo = kind.geometry(None).unwrap();
            let g = Glam::new(&geo).unwrap();
            let net = GlamNet::new(&g, &dev);
            let v = geo.n_voxels();
            let x: Vec<f32> = (0..2 * v).map(|i| ((i * 31) % 17) as f32 * 0.5).collect();
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [2, v]), &dev);
            let enc = net.encode(xt);
            let grid: Vec<f32> = enc.clone().into_data().iter::<f32>().collect();
            let per = grid.len() / 2;
            for b in 0..2 {
                let want = g.encode(&x[b * v..(b + 1) * v]);
                let got = &grid[b * per..(b + 1) * per];
                for (p, q) in got.iter().zip(&want) {
                    assert!((p - q).abs() < 1e-4 * q.abs().max(1.0));
                }
                let (e_in, e_out): (f32, f32) =
                    (x[b * v..(b + 1) * v].iter().sum(), got.iter().sum());
                assert!((e_in - e_out).abs() < 1e-4 * e_in, "{e_in} vs {e_out}");
            }
            let back: Vec<f32> = net.decode(enc).into_data().iter::<f32>().collect();
            for (p, q) in back.iter().zip(&x) {
                assert!((p - q).abs() < 1e-3 * q.abs().max(1.0), "{p} vs {q}");
            }
            // The plain-slice copy agrees.
            let fast = FastGlam::new(&net);
            let fe = fast.encode(&x[..v]);
            for (p, q) in fe.iter().zip(&grid[..per]) {
                assert!((p - q).abs() < 1e-4 * q.abs().max(1.0));
            }
            let fd = fast.decode(&fe);
            for (p, q) in fd.iter().zip(&x[..v]) {
                assert!((p - q).abs() < 1e-3 * q.abs().max(1.0));
            }
        }
    }
}
