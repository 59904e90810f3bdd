//! GLaM, the geometry mapping of CaloDiffusion (Amram & Pedro, eq. 14): the irregular
//! dataset-1 layers (each with its own radial edges, 1 or 10 angular bins) onto one regular
//! (layer, α, r) grid that a convolutional network can read.
//!
//! The regular radial edges are the union of every relevant layer's edges, so each regular bin
//! lies inside exactly one original bin of every layer. A layer's map W (regular bins × own
//! bins) sends the energy of its bin j to the regular bins inside it in proportion to their
//! annulus areas, W[i, j] = (r²_{i+1} − r²_i)/(R²_{j+1} − R²_j), so every column sums to one
//! and energy is conserved. Layers with one angular bin are spread evenly over the α bins.
//! The way back is the pseudo-inverse W⁺ (the columns of W are orthogonal, so
//! W⁺ = diag(1/|w_j|²) Wᵀ exactly), with the α bins summed for single-bin layers: decode ∘ encode
//! is the identity. These are the fixed maps of the reference `GeomConverter` and the
//! initialisation of its learnable `NNConverter`.

use crate::error::{CoreError, Result};
use crate::geometry::Geometry;

/// The map of one relevant layer.
#[derive(Debug, Clone)]
pub struct LayerMap {
    /// Layer id in the binning file.
    pub layer: usize,
    /// First voxel of the layer in the flat shower.
    pub offset: usize,
    /// Angular bins of the layer (1 or the grid's).
    pub n_alpha: usize,
    /// Radial bins of the layer.
    pub n_r: usize,
    /// W, `[regular r][own r]`.
    pub w: Vec<f64>,
    /// W⁺, `[own r][regular r]`.
    pub w_pinv: Vec<f64>,
}

/// The regular grid and the per-layer maps onto it.
#[derive(Debug, Clone)]
pub struct Glam {
    /// Regular radial edges (mm).
    pub r_edges: Vec<f64>,
    /// Angular bins of the grid (the largest of the layers').
    pub n_alpha: usize,
    /// One map per relevant layer, in layer order.
    pub maps: Vec<LayerMap>,
    /// Voxels of an original shower.
    pub n_voxels: usize,
}

impl Glam {
    /// The maps of `g`'s relevant layers. Every layer must have 1 or the largest number of α
    /// bins.
    pub fn new(g: &Geometry) -> Result<Self> {
        let bad = |msg: String| CoreError::Binning {
            file: format!("binning of {}", g.particle),
            msg,
        };
        let rel: Vec<_> = g.relevant_layers.iter().map(|&l| &g.layers[l]).collect();
        if rel.is_empty() {
            return Err(bad("no layer with radial bins".into()));
        }
        let n_alpha = rel.iter().map(|l| l.n_alpha).max().unwrap_or(1);
        let mut r_edges: Vec<f64> = rel.iter().flat_map(|l| l.r_edges.iter().copied()).collect();
        r_edges.sort_by(f64::total_cmp);
        r_edges.dedup();
        let nr = r_edges.len() - 1;
        let idx = |e: f64| r_edges.iter().position(|&x| x == e).unwrap_or(0);
        let mut maps = Vec::new();
        for l in rel {
            if l.n_alpha != 1 && l.n_alpha != n_alpha {
                return Err(bad(format!(
                    "layer {} has {} angular bins: GLaM handles 1 or {n_alpha}",
                    l.id, l.n_alpha
                )));
            }
            let n_r = l.n_r();
            let mut w = vec![0.0; nr * n_r];
            for j in 0..n_r {
                let (lo, hi) = (l.r_edges[j], l.r_edges[j + 1]);
                let area = hi * hi - lo * lo;
                for i in idx(lo)..idx(hi) {
                    w[i * n_r + j] = (r_edges[i + 1].powi(2) - r_edges[i].powi(2)) / area;
                }
            }
            let mut w_pinv = vec![0.0; n_r * nr];
            for j in 0..n_r {
                let norm: f64 = (0..nr).map(|i| w[i * n_r + j].powi(2)).sum();
                for i in 0..nr {
                    w_pinv[j * nr + i] = w[i * n_r + j] / norm;
                }
            }
            maps.push(LayerMap {
                layer: l.id,
                offset: g.bin_edges[l.id],
                n_alpha: l.n_alpha,
                n_r,
                w,
                w_pinv,
            });
        }
        Ok(Glam {
            r_edges,
            n_alpha,
            maps,
            n_voxels: g.n_voxels(),
        })
    }

    /// The regular grid's shape (layers, α, r).
    pub fn shape(&self) -> [usize; 3] {
        [self.maps.len(), self.n_alpha, self.r_edges.len() - 1]
    }

    /// One shower (flat, original voxel order) → the regular grid, `[layer][α][r]`.
    pub fn encode(&self, shower: &[f32]) -> Vec<f32> {
        let [_, na, nr] = self.shape();
        let mut out = vec![0.0f32; self.maps.len() * na * nr];
        for (li, m) in self.maps.iter().enumerate() {
            for a in 0..na {
                // Single-bin layers: the one row, spread evenly over α.
                let (src_a, share) = if m.n_alpha == 1 {
                    (0, 1.0 / na as f64)
                } else {
                    (a, 1.0)
                };
                let x = &shower[m.offset + src_a * m.n_r..][..m.n_r];
                let o = &mut out[(li * na + a) * nr..][..nr];
                for (i, ov) in o.iter_mut().enumerate() {
                    let s: f64 = (0..m.n_r).map(|j| m.w[i * m.n_r + j] * x[j] as f64).sum();
                    *ov = (s * share) as f32;
                }
            }
        }
        out
    }

    /// The regular grid → one shower in the original voxel order (W⁺, α summed for single-bin
    /// layers).
    pub fn decode(&self, reg: &[f32]) -> Vec<f32> {
        let [_, na, nr] = self.shape();
        let mut out = vec![0.0f32; self.n_voxels];
        for (li, m) in self.maps.iter().enumerate() {
            for a in 0..na {
                let y = &reg[(li * na + a) * nr..][..nr];
                let dst_a = if m.n_alpha == 1 { 0 } else { a };
                let o = &mut out[m.offset + dst_a * m.n_r..][..m.n_r];
                for (j, ov) in o.iter_mut().enumerate() {
                    let s: f64 = (0..nr).map(|i| m.w_pinv[j * nr + i] * y[i] as f64).sum();
                    *ov += s as f32;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DatasetKind;

    #[test]
    fn glam_conserves_energy_and_inverts() {
        for (kind, shape) in [
            (DatasetKind::Photons1, [5, 10, 30]),
            (DatasetKind::Pions1, [7, 10, 23]),
        ] {
            let g = kind.geometry(None).unwrap();
            let m = Glam::new(&g).unwrap();
            // The reference code's regular grids: photons 30 radial bins, pions 23.
            assert_eq!(m.shape(), shape, "{kind:?}");
            for lm in &m.maps {
                for j in 0..lm.n_r {
                    let col: f64 = (0..shape[2]).map(|i| lm.w[i * lm.n_r + j]).sum();
                    assert!((col - 1.0).abs() < 1e-12, "column sums to {col}");
                }
            }
            let shower: Vec<f32> = (0..g.n_voxels())
                .map(|i| ((i * 7919) % 101) as f32 * 0.37)
                .collect();
            let reg = m.encode(&shower);
            // Energy: per layer and in total.
            for (li, lm) in m.maps.iter().enumerate() {
                let n = lm.n_alpha * lm.n_r;
                let e_in: f64 = shower[lm.offset..lm.offset + n]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
                let e_out: f64 = reg[li * shape[1] * shape[2]..(li + 1) * shape[1] * shape[2]]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
                assert!(
                    (e_in - e_out).abs() < 1e-4 * e_in.max(1.0),
                    "layer {li}: {e_in} vs {e_out}"
                );
            }
            let back = m.decode(&reg);
            for (a, b) in shower.iter().zip(&back) {
                assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn glam_refuses_odd_angular_binning() {
        let mut g = DatasetKind::Photons1.geometry(None).unwrap();
        let l = g.relevant_layers[1];
        g.layers[l].n_alpha = 3;
        let g = Geometry::from_layers("photon", g.layers.clone());
        assert!(Glam::new(&g).is_err());
    }
}
