//! Learnable GLaM (CaloDiffusion's geometry-latent mapping, the reference `NNConverter`): per
//! irregular layer, a bias-free linear map of its radial bins onto the regular grid (encoder)
//! and one back (decoder), initialised with the geometric overlap W and its pseudo-inverse W⁺
//! from `caloforge_core::glam::Glam`, and trained with the denoiser. Layers with a single
//! angular bin are spread evenly over the grid's α bins on the way in and summed on the way out.
//!
//! Tensors: showers `[B, V]` in the original voxel order ↔ grids `[B, 1, layers, α, r]`.
//! [`GlamNet::learned`] gives the trained maps back in the plain form of
//! `caloforge_core::glam::Glam`, whose `encode`/`decode` apply them to slices (CPU generation).

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

    /// The current (learned) maps in the plain form of `template` (the geometric maps they were
    /// initialised from), for `Glam::encode`/`decode` on slices (CPU generation).
    pub fn learned(&self, template: &Glam) -> Glam {
        let nr = self.grid_r;
        let mut g = template.clone();
        for (l, m) in g.maps.iter_mut().enumerate() {
            let we: Vec<f32> = self.enc[l].weight.val().into_data().iter::<f32>().collect();
            let wd: Vec<f32> = self.dec[l].weight.val().into_data().iter::<f32>().collect();
            for i in 0..nr {
                for j in 0..m.n_r {
                    m.w[i * m.n_r + j] = we[j * nr + i] as f64;
                    m.w_pinv[j * nr + i] = wd[i * m.n_r + j] as f64;
                }
            }
        }
        g
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
            // The plain-slice form agrees.
            let fast = net.learned(&g);
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
