//! Coarse voxelizations of a cylindrical mesh (SuperCalo, Pang, Raine, Shih, arXiv:2308.11700).
//!
//! A coarse voxel groups `layers × alpha × r` neighbouring fine voxels: dataset 2's
//! voxelization A groups 5 layers × 2 angular bins × 1 radial bin (648 coarse voxels of 10 fine
//! ones), voxelization B 1 layer × 4 angular × 3 radial bins (540 of 12). The grid is derived
//! from the geometry (every layer must have the same angular and radial binning, and the group
//! sizes must divide them), so dataset 3 works the same way.
//!
//! Orders (those of the reference code, so that its trained networks and ours see the same
//! vectors):
//! - coarse voxels by (z-group, radial group, angular group), angular fastest;
//! - the fine voxels inside a coarse voxel by (layer, angular bin, radial bin), radial fastest.
//!
//! Neighbours of a coarse voxel, in the reference's conditioning order: inner and outer radial
//! (absent at the edges), previous and next z-group (absent at the edges), previous and next
//! angular group (cyclic).

use crate::error::{CoreError, Result};
use crate::geometry::Geometry;

/// How many fine bins one coarse voxel spans along each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grouping {
    /// Consecutive layers per coarse voxel.
    pub layers: usize,
    /// Consecutive angular bins per coarse voxel.
    pub alpha: usize,
    /// Consecutive radial bins per coarse voxel.
    pub r: usize,
}

impl Grouping {
    /// SuperCalo's voxelization A: 5 layers × 2 angular bins × 1 radial bin.
    pub const A: Grouping = Grouping {
        layers: 5,
        alpha: 2,
        r: 1,
    };
    /// SuperCalo's voxelization B: 1 layer × 4 angular bins × 3 radial bins.
    pub const B: Grouping = Grouping {
        layers: 1,
        alpha: 4,
        r: 3,
    };
    /// Fine voxels per coarse voxel.
    pub fn size(&self) -> usize {
        self.layers * self.alpha * self.r
    }
}

/// The index map between a fine mesh and its coarse voxelization.
#[derive(Debug, Clone, PartialEq)]
pub struct CoarseGrid {
    /// The grouping.
    pub group: Grouping,
    /// Fine layers, angular and radial bins.
    pub fine: (usize, usize, usize),
    /// Coarse z-groups, angular and radial groups.
    pub coarse: (usize, usize, usize),
    /// `fine_of[c * group.size() + k]`: the flat fine voxel index of fine voxel k of coarse
    /// voxel c (a permutation of 0..n_voxels).
    fine_of: Vec<u32>,
}

/// Where a coarse voxel lies: z-group, radial group, angular group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoarseCell {
    /// z-group (layers `z·g .. (z+1)·g`).
    pub z: usize,
    /// Radial group.
    pub r: usize,
    /// Angular group.
    pub alpha: usize,
}

impl CoarseGrid {
    /// The coarse grid of `geometry` with `group`; an error when the layers differ in binning
    /// or a group size does not divide its axis.
    pub fn new(geometry: &Geometry, group: Grouping) -> Result<Self> {
        let layers: Vec<_> = geometry
            .layers
            .iter()
            .filter(|l| l.n_voxels() > 0)
            .collect();
        let bad = |msg: String| CoreError::Invalid(format!("coarse voxelization: {msg}"));
        let first = layers.first().ok_or_else(|| bad("no layers".into()))?;
        let (na, nr) = (first.n_alpha, first.n_r());
        if layers.iter().any(|l| l.n_alpha != na || l.n_r() != nr)
            || layers.len() != geometry.layers.len()
        {
            return Err(bad(
                "every layer must have the same angular and radial binning (datasets 2 and 3)"
                    .into(),
            ));
        }
        Self::regular(layers.len(), na, nr, group)
    }

    /// The coarse grid of a regular mesh of `n_layers × n_alpha × n_r` fine voxels, ordered
    /// (layer, α, r) with r fastest.
    pub fn regular(n_layers: usize, n_alpha: usize, n_r: usize, group: Grouping) -> Result<Self> {
        let bad = |msg: String| CoreError::Invalid(format!("coarse voxelization: {msg}"));
        for (name, n, g) in [
            ("layers", n_layers, group.layers),
            ("alpha", n_alpha, group.alpha),
            ("r", n_r, group.r),
        ] {
            if g == 0 || n % g != 0 {
                return Err(bad(format!(
                    "{name} = {g} does not divide the {n} fine bins along that axis"
                )));
            }
        }
        let (nz, na, nr) = (
            n_layers / group.layers,
            n_alpha / group.alpha,
            n_r / group.r,
        );
        let mut fine_of = Vec::with_capacity(n_layers * n_alpha * n_r);
        for z in 0..nz {
            for r in 0..nr {
                for a in 0..na {
                    for dl in 0..group.layers {
                        for da in 0..group.alpha {
                            for dr in 0..group.r {
                                let (l, al, rr) = (
                                    z * group.layers + dl,
                                    a * group.alpha + da,
                                    r * group.r + dr,
                                );
                                fine_of.push(((l * n_alpha + al) * n_r + rr) as u32);
                            }
                        }
                    }
                }
            }
        }
        Ok(CoarseGrid {
            group,
            fine: (n_layers, n_alpha, n_r),
            coarse: (nz, na, nr),
            fine_of,
        })
    }

    /// Number of coarse voxels.
    pub fn n_coarse(&self) -> usize {
        self.coarse.0 * self.coarse.1 * self.coarse.2
    }
    /// Number of fine voxels.
    pub fn n_fine(&self) -> usize {
        self.fine_of.len()
    }
    /// Fine voxels per coarse voxel.
    pub fn group_size(&self) -> usize {
        self.group.size()
    }
    /// Coarse voxels per z-group.
    pub fn per_z_group(&self) -> usize {
        self.coarse.1 * self.coarse.2
    }
    /// The flat fine indices of the fine voxels of coarse voxel `c`, in order.
    pub fn fine_indices(&self, c: usize) -> &[u32] {
        let g = self.group_size();
        &self.fine_of[c * g..(c + 1) * g]
    }
    /// The position of coarse voxel `c`.
    pub fn cell(&self, c: usize) -> CoarseCell {
        let (_, na, nr) = self.coarse;
        CoarseCell {
            z: c / (na * nr),
            r: (c / na) % nr,
            alpha: c % na,
        }
    }
    /// The index of the coarse voxel at (z, r, α).
    pub fn index(&self, z: usize, r: usize, alpha: usize) -> usize {
        let (_, na, nr) = self.coarse;
        (z * nr + r) * na + alpha
    }
    /// The six neighbours of coarse voxel `c` in the reference's order: r − 1, r + 1, z − 1,
    /// z + 1 (None beyond the mesh), α − 1, α + 1 (cyclic).
    pub fn neighbours(&self, c: usize) -> [Option<usize>; 6] {
        let (nz, na, nr) = self.coarse;
        let p = self.cell(c);
        let at = |z: usize, r: usize, a: usize| Some(self.index(z, r, a));
        [
            if p.r > 0 {
                at(p.z, p.r - 1, p.alpha)
            } else {
                None
            },
            if p.r + 1 < nr {
                at(p.z, p.r + 1, p.alpha)
            } else {
                None
            },
            if p.z > 0 {
                at(p.z - 1, p.r, p.alpha)
            } else {
                None
            },
            if p.z + 1 < nz {
                at(p.z + 1, p.r, p.alpha)
            } else {
                None
            },
            at(p.z, p.r, (p.alpha + na - 1) % na),
            at(p.z, p.r, (p.alpha + 1) % na),
        ]
    }
    /// Sums a fine shower into its coarse voxels (`out` has `n_coarse()` entries).
    pub fn coarse_grain(&self, fine: &[f32], out: &mut [f32]) {
        let g = self.group_size();
        for (o, idx) in out.iter_mut().zip(self.fine_of.chunks(g)) {
            *o = idx.iter().map(|&i| fine[i as usize] as f64).sum::<f64>() as f32;
        }
    }
    /// The fine voxels of a shower gathered coarse voxel by coarse voxel
    /// (`out[c·g + k] = fine[fine_indices(c)[k]]`).
    pub fn gather(&self, fine: &[f32], out: &mut [f32]) {
        for (o, &i) in out.iter_mut().zip(&self.fine_of) {
            *o = fine[i as usize];
        }
    }
    /// The inverse of [`CoarseGrid::gather`]: writes grouped values back to fine positions.
    pub fn scatter(&self, grouped: &[f32], fine: &mut [f32]) {
        for (&v, &i) in grouped.iter().zip(&self.fine_of) {
            fine[i as usize] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DatasetKind;

    fn ds2() -> CoarseGrid {
        let g = DatasetKind::Ds2.geometry(None).unwrap();
        CoarseGrid::new(&g, Grouping::A).unwrap()
    }

    #[test]
    fn dataset_2_voxelizations_have_the_papers_sizes() {
        let a = ds2();
        assert_eq!(
            (a.n_coarse(), a.group_size(), a.coarse),
            (648, 10, (9, 8, 9))
        );
        let g = DatasetKind::Ds2.geometry(None).unwrap();
        let b = CoarseGrid::new(&g, Grouping::B).unwrap();
        assert_eq!(
            (b.n_coarse(), b.group_size(), b.coarse),
            (540, 12, (45, 4, 3))
        );
        let g3 = DatasetKind::Ds3.geometry(None).unwrap();
        let c = CoarseGrid::new(&g3, Grouping::A).unwrap();
        assert_eq!((c.n_coarse(), c.group_size()), (9 * 25 * 18, 10));
        let e = CoarseGrid::new(
            &g,
            Grouping {
                layers: 4,
                alpha: 2,
                r: 1,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("layers = 4") && e.contains("45"), "{e}");
    }

    #[test]
    fn index_map_is_a_permutation_and_round_trips() {
        for grid in [
            ds2(),
            CoarseGrid::regular(45, 16, 9, Grouping::B).unwrap(),
            CoarseGrid::regular(
                6,
                6,
                4,
                Grouping {
                    layers: 3,
                    alpha: 3,
                    r: 2,
                },
            )
            .unwrap(),
        ] {
            let n = grid.n_fine();
            let mut seen = vec![false; n];
            for c in 0..grid.n_coarse() {
                for &i in grid.fine_indices(c) {
                    assert!(!seen[i as usize]);
                    seen[i as usize] = true;
                }
            }
            assert!(seen.iter().all(|&s| s));
            let fine: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut g = vec![0.0; n];
            grid.gather(&fine, &mut g);
            let mut back = vec![0.0; n];
            grid.scatter(&g, &mut back);
            assert_eq!(back, fine);
            for c in 0..grid.n_coarse() {
                let p = grid.cell(c);
                assert_eq!(grid.index(p.z, p.r, p.alpha), c);
            }
        }
    }

    #[test]
    fn reference_swapaxes_chain_gives_the_same_order() {
        // data_supercalo.py: showers (45, 16, 9) -> (9, 5, 8, 2, 9) -> swapaxes(2,3),
        // (4,5), (3,4), (2,3) -> (9 z, 9 r, 8 α, 5 layers, 2 α'), flattened.
        let grid = ds2();
        let mut expect = Vec::new();
        for z in 0..9 {
            for r in 0..9 {
                for a in 0..8 {
                    for l in 0..5 {
                        for da in 0..2 {
                            expect.push(((z * 5 + l) * 16 + a * 2 + da) * 9 + r);
                        }
                    }
                }
            }
        }
        let got: Vec<usize> = (0..648)
            .flat_map(|c| grid.fine_indices(c).iter().map(|&i| i as usize))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn coarse_graining_conserves_energy_per_group() {
        let grid = ds2();
        let fine: Vec<f32> = (0..6480).map(|i| ((i * 37) % 101) as f32 * 0.5).collect();
        let mut coarse = vec![0.0; 648];
        grid.coarse_grain(&fine, &mut coarse);
        let total: f64 = fine.iter().map(|&v| v as f64).sum();
        let ctotal: f64 = coarse.iter().map(|&v| v as f64).sum();
        assert!((total - ctotal).abs() < 1e-3 * total);
        // z-group sums equal the sums of the group's five layers.
        for z in 0..9 {
            let layers: f64 = fine[z * 720..(z + 1) * 720].iter().map(|&v| v as f64).sum();
            let c: f64 = coarse[z * 72..(z + 1) * 72].iter().map(|&v| v as f64).sum();
            assert!((layers - c).abs() < 1e-3 * layers.max(1.0), "z-group {z}");
        }
        // Coarse voxel (z 1, r 3, α 5) by hand.
        let mut hand = 0.0f64;
        for l in 5..10 {
            for a in 10..12 {
                hand += fine[(l * 16 + a) * 9 + 3] as f64;
            }
        }
        assert!((coarse[grid.index(1, 3, 5)] as f64 - hand).abs() < 1e-3);
    }

    #[test]
    fn neighbours_match_the_reference_padding_and_roll() {
        let grid = ds2();
        let c = grid.index(0, 0, 0);
        assert_eq!(
            grid.neighbours(c),
            [
                None,
                Some(grid.index(0, 1, 0)),
                None,
                Some(grid.index(1, 0, 0)),
                Some(grid.index(0, 0, 7)),
                Some(grid.index(0, 0, 1)),
            ]
        );
        let c = grid.index(8, 8, 7);
        assert_eq!(
            grid.neighbours(c),
            [
                Some(grid.index(8, 7, 7)),
                None,
                Some(grid.index(7, 8, 7)),
                None,
                Some(grid.index(8, 8, 6)),
                Some(grid.index(8, 8, 0)),
            ]
        );
    }
}
