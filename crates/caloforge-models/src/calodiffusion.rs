//! CaloDiffusion (Amram & Pedro, "Denoising diffusion models with geometry adaptation for high
//! fidelity calorimeter simulation"; reference code `OzAmram/CaloDiffusion`): a DDPM whose
//! ε-predictor is a conditional U-Net with cylindrical convolutions (`caloforge_nn::unet`),
//! sampled with `caloforge_nn::diffusion`.
//!
//! This module holds, so far, the data transforms of the reference code:
//! - voxels (MeV) → `x / (2·E_inc)` → logit with α = 1e-6 (an empty voxel maps to logit(α)) →
//!   standardised with per-dataset constants (dataset 2: mean −12.8564, std 1.9123);
//! - E_inc → `log10(E_inc / E_min) / log10(E_max / E_min)` with E_min = 1 GeV, E_max = 1 TeV;
//! - location channels: the layer index and the radial index of every voxel, each scaled to
//!   [0, 1], concatenated to the noisy shower as extra input channels;
//! - the inverse, with the 15.1 keV cut, and the reference code's optional data-dependent
//!   "always-empty voxel" mask (voxels empty in every shower of a reference file stay zero).
//!
//! The model itself (training, sampling, presets, CLI) is not wired yet.

/// Per-dataset transform constants.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    /// Logit offset α.
    pub alpha: f64,
    /// Scale: voxel / (max_dep · E_inc).
    pub max_dep: f64,
    /// Mean of the logit values.
    pub logit_mean: f64,
    /// Standard deviation of the logit values.
    pub logit_std: f64,
    /// Lowest incident energy (MeV) of the conditioning scale.
    pub e_min: f64,
    /// Highest incident energy (MeV).
    pub e_max: f64,
    /// Voxels below this (MeV) are zeroed after generation.
    pub cut_mev: f64,
}

impl Transform {
    /// The reference code's dataset-2 constants.
    pub fn ds2() -> Self {
        Transform {
            alpha: 1e-6,
            max_dep: 2.0,
            logit_mean: -12.8564,
            logit_std: 1.9123,
            e_min: 1e3,
            e_max: 1e6,
            cut_mev: 0.0151,
        }
    }

    /// Standardised logit of one voxel.
    pub fn forward(&self, v_mev: f64, e_inc_mev: f64) -> f32 {
        let x = (v_mev / (self.max_dep * e_inc_mev)).clamp(0.0, 1.0);
        let y = self.alpha + (1.0 - 2.0 * self.alpha) * x;
        (((y / (1.0 - y)).ln() - self.logit_mean) / self.logit_std) as f32
    }

    /// Voxel energy (MeV) of a network value, with the cut.
    pub fn inverse(&self, u: f32, e_inc_mev: f64) -> f32 {
        let l = u as f64 * self.logit_std + self.logit_mean;
        let s = 1.0 / (1.0 + (-l).exp());
        let x = ((s - self.alpha) / (1.0 - 2.0 * self.alpha)).clamp(0.0, 1.0);
        let v = x * self.max_dep * e_inc_mev;
        if v < self.cut_mev {
            0.0
        } else {
            v as f32
        }
    }

    /// Conditioning value of an incident energy.
    pub fn energy(&self, e_inc_mev: f64) -> f32 {
        ((e_inc_mev / self.e_min).log10() / (self.e_max / self.e_min).log10()) as f32
    }
}

/// The two location channels (layer index, radial index, each in [0, 1]) of a (z, α, r) grid,
/// channel-major.
pub fn location_channels(shape: [usize; 3]) -> Vec<f32> {
    let [nz, na, nr] = shape;
    let n = nz * na * nr;
    let mut out = vec![0.0f32; 2 * n];
    for z in 0..nz {
        for a in 0..na {
            for r in 0..nr {
                let i = (z * na + a) * nr + r;
                out[i] = z as f32 / (nz.max(2) - 1) as f32;
                out[n + i] = r as f32 / (nr.max(2) - 1) as f32;
            }
        }
    }
    out
}

/// The reference code's "always-empty voxel" mask: true where every shower of `showers`
/// (row-major, `n_voxels` per shower) is zero. Optional (it is data-dependent).
pub fn empty_voxel_mask(showers: &[f32], n_voxels: usize) -> Vec<bool> {
    let mut m = vec![true; n_voxels];
    for row in showers.chunks(n_voxels) {
        for (mi, &v) in m.iter_mut().zip(row) {
            if v != 0.0 {
                *mi = false;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_round_trips_and_cuts() {
        let t = Transform::ds2();
        for (v, e) in [(1.0, 1e4), (250.0, 1e5), (0.5, 1e3)] {
            let back = t.inverse(t.forward(v, e), e) as f64;
            assert!((back / v - 1.0).abs() < 1e-4, "{v} -> {back}");
        }
        // An empty voxel maps to logit(α) and comes back as 0.
        let u0 = t.forward(0.0, 1e4);
        assert!(
            (u0 as f64 - ((1e-6f64 / (1.0 - 1e-6)).ln() - t.logit_mean) / t.logit_std).abs() < 1e-5
        );
        assert_eq!(t.inverse(u0, 1e4), 0.0);
        // Below 15.1 keV: cut.
        assert_eq!(t.inverse(t.forward(0.01, 1e4), 1e4), 0.0);
        assert_eq!(t.energy(1e3), 0.0);
        assert!((t.energy(1e6) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn location_channels_and_mask() {
        let c = location_channels([3, 2, 5]);
        let n = 30;
        assert_eq!(c[(2 * 2 + 1) * 5 + 4], 1.0, "last layer");
        assert_eq!(c[n + 4], 1.0, "last ring");
        assert_eq!(c[n + 2], 0.5);
        let m = empty_voxel_mask(&[0.0, 1.0, 0.0, 0.0, 0.0, 2.0], 3);
        assert_eq!(m, vec![true, false, false]);
    }
}
