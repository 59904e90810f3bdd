//! Between point clouds and voxels: points (x, y, layer, E[, t]; x, y in mm, E in GeV, the
//! ShowerData layout) binned into a CaloChallenge mesh ([`Geometry`], energies in MeV) or into a
//! regular x-y grid ([`Grid`]), and voxels turned into points at their centres.
//!
//! A point falls into the voxel of its layer whose radial bin holds r = √(x² + y²)
//! (edges[k] ≤ r < edges[k+1]) and whose angular bin holds α = atan2(y, x) (bins of equal width
//! from −π, as the CaloChallenge geometry's voxel centres); points outside the mesh (beyond the
//! last radial edge, in a layer without voxels or past the last layer) are not binned, and their
//! energy is reported.

use crate::geometry::Geometry;
use std::f64::consts::PI;

/// Energy of the points that fell outside the binning (GeV) and how many they were.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outside {
    pub energy_gev: f64,
    pub points: usize,
}

impl std::ops::AddAssign for Outside {
    fn add_assign(&mut self, o: Outside) {
        self.energy_gev += o.energy_gev;
        self.points += o.points;
    }
}

/// Adds the points of one shower (`features` values each) into `voxels` (the shower's row of
/// `g.n_voxels()` values, MeV).
pub fn points_to_mesh(
    points: &[f32],
    features: usize,
    g: &Geometry,
    voxels: &mut [f32],
) -> Outside {
    debug_assert_eq!(voxels.len(), g.n_voxels());
    let mut out = Outside::default();
    for p in points.chunks_exact(features) {
        let (x, y, e) = (p[0] as f64, p[1] as f64, p[3] as f64);
        let layer = (p[2] + 0.1).floor();
        let bin = (layer >= 0.0)
            .then(|| g.layers.get(layer as usize))
            .flatten()
            .and_then(|l| {
                let r = (x * x + y * y).sqrt();
                let k = l.r_edges.partition_point(|&edge| edge <= r);
                if k == 0 || k >= l.r_edges.len() {
                    return None;
                }
                let u = (y.atan2(x) + PI) / (2.0 * PI);
                let a = ((u * l.n_alpha as f64) as usize).min(l.n_alpha - 1);
                Some(g.bin_edges[l.id] + a * l.n_r() + k - 1)
            });
        match bin {
            Some(i) => voxels[i] += (e * 1000.0) as f32,
            None => {
                out.energy_gev += e;
                out.points += 1;
            }
        }
    }
    out
}

/// The points (x, y, layer, E GeV) of the non-zero voxels of one shower (MeV), at the voxels'
/// centres, in voxel order.
pub fn mesh_to_points(voxels: &[f32], g: &Geometry) -> Vec<f32> {
    let mut pts = Vec::new();
    for (i, &v) in voxels.iter().enumerate() {
        if v != 0.0 {
            pts.extend_from_slice(&[
                g.x[i] as f32,
                g.y[i] as f32,
                g.voxel_layer[i] as f32,
                (v as f64 / 1000.0) as f32,
            ]);
        }
    }
    pts
}

/// A regular grid of `nx` × `ny` square cells of `cell_mm` per layer, centred on x = y = 0;
/// voxel (layer, iy, ix) at index (layer·ny + iy)·nx + ix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub layers: usize,
    pub nx: usize,
    pub ny: usize,
    pub cell_mm: f64,
}

impl Grid {
    /// Voxels per shower.
    pub fn n_voxels(&self) -> usize {
        self.layers * self.nx * self.ny
    }

    /// Adds the points of one shower into `voxels` (MeV).
    pub fn bin(&self, points: &[f32], features: usize, voxels: &mut [f32]) -> Outside {
        debug_assert_eq!(voxels.len(), self.n_voxels());
        let mut out = Outside::default();
        let (hx, hy) = (
            0.5 * self.nx as f64 * self.cell_mm,
            0.5 * self.ny as f64 * self.cell_mm,
        );
        for p in points.chunks_exact(features) {
            let (x, y, e) = (p[0] as f64, p[1] as f64, p[3] as f64);
            let layer = (p[2] + 0.1).floor();
            let ix = ((x + hx) / self.cell_mm).floor();
            let iy = ((y + hy) / self.cell_mm).floor();
            let inside = layer >= 0.0
                && (layer as usize) < self.layers
                && (0.0..self.nx as f64).contains(&ix)
                && (0.0..self.ny as f64).contains(&iy);
            if inside {
                let i = (layer as usize * self.ny + iy as usize) * self.nx + ix as usize;
                voxels[i] += (e * 1000.0) as f32;
            } else {
                out.energy_gev += e;
                out.points += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DatasetKind;

    fn ds2() -> Geometry {
        DatasetKind::Ds2.geometry(None).unwrap()
    }

    #[test]
    fn voxels_to_points_and_back_is_the_identity() {
        let g = ds2();
        let mut v = vec![0.0f32; g.n_voxels()];
        // Every 7th voxel, in every layer and bin.
        for (i, x) in v.iter_mut().enumerate().step_by(7) {
            *x = 0.5 + (i % 113) as f32 * 3.25;
        }
        let pts = mesh_to_points(&v, &g);
        assert_eq!(pts.len() / 4, v.iter().filter(|&&x| x != 0.0).count());
        let mut back = vec![0.0f32; g.n_voxels()];
        let out = points_to_mesh(&pts, 4, &g, &mut back);
        assert_eq!(out, Outside::default());
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} {b}");
        }
    }

    #[test]
    fn binning_conserves_energy_and_reports_what_falls_outside() {
        let g = ds2();
        let r_max = g.layers[0].r_edges.last().copied().unwrap();
        // Points on a spiral through every layer, some beyond the mesh, one in a layer past the
        // last and one with a negative layer.
        let mut pts = Vec::new();
        let mut inside = 0.0f64;
        for k in 0..2000 {
            let (r, a) = (k as f64 * 0.0377 * r_max / 50.0, k as f64 * 0.61);
            let e = 0.001 * (1 + k % 13) as f64;
            let l = (k % 45) as f32;
            pts.extend_from_slice(&[(r * a.cos()) as f32, (r * a.sin()) as f32, l, e as f32]);
            if r < r_max * 0.9999 {
                inside += e as f32 as f64;
            }
        }
        pts.extend_from_slice(&[0.0, 0.0, 45.0, 1.0, 0.0, 0.0, -1.0, 2.0]);
        let mut v = vec![0.0f32; g.n_voxels()];
        let out = points_to_mesh(&pts, 4, &g, &mut v);
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        let all: f64 = pts.chunks(4).map(|p| p[3] as f64).sum();
        assert!(
            (sum / 1000.0 + out.energy_gev - all).abs() < 1e-6 * all,
            "{sum} {out:?} {all}"
        );
        assert!((sum / 1000.0 - inside).abs() < 1e-6 * inside);
        assert!(out.points >= 2);
        // Angular bins: a point at α just above −π is in bin 0, just below π in the last.
        let l = &g.layers[1];
        let mut v = vec![0.0f32; g.n_voxels()];
        let r = 0.5 * (l.r_edges[3] + l.r_edges[4]);
        let eps = 1e-3f64;
        let p = [
            (r * (-PI + eps).cos()) as f32,
            (r * (-PI + eps).sin()) as f32,
            1.0,
            1.0,
            (r * (PI - eps).cos()) as f32,
            (r * (PI - eps).sin()) as f32,
            1.0,
            2.0,
        ];
        points_to_mesh(&p, 4, &g, &mut v);
        assert_eq!(v[g.voxel_index(1, 0, 3)], 1000.0);
        assert_eq!(v[g.voxel_index(1, l.n_alpha - 1, 3)], 2000.0);
    }

    #[test]
    fn the_grid_bins_by_cell_and_layer() {
        let grid = Grid {
            layers: 3,
            nx: 4,
            ny: 2,
            cell_mm: 5.0,
        };
        let pts = [
            -9.9f32, -4.9, 0.0, 1.0, // cell (0, 0) of layer 0
            9.9, 4.9, 2.0, 2.0, // cell (3, 1) of layer 2
            0.0, 0.0, 1.0, 0.5, // cell (2, 1) of layer 1
            10.1, 0.0, 1.0, 4.0, // outside
            0.0, 0.0, 3.0, 8.0, // no such layer
        ];
        let mut v = vec![0.0f32; grid.n_voxels()];
        let out = grid.bin(&pts, 4, &mut v);
        assert_eq!(v[0], 1000.0);
        assert_eq!(v[(2 * 2 + 1) * 4 + 3], 2000.0);
        assert_eq!(v[(2 + 1) * 4 + 2], 500.0);
        assert_eq!(v.iter().sum::<f32>(), 3500.0);
        assert_eq!(
            out,
            Outside {
                energy_gev: 12.0,
                points: 2
            }
        );
    }
}
