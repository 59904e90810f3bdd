//! The four CaloChallenge 2022 datasets and their constants (SPEC §1, §4).

use crate::error::{CoreError, Result};
use crate::geometry::Geometry;
use std::path::Path;
use std::str::FromStr;

/// One of the CaloChallenge 2022 datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DatasetKind {
    /// Dataset 1, photons (368 voxels).
    #[serde(rename = "1-photons")]
    Photons1,
    /// Dataset 1, charged pions (533 voxels).
    #[serde(rename = "1-pions")]
    Pions1,
    /// Dataset 2, electrons, 45 × 16 × 9 voxels.
    #[serde(rename = "2")]
    Ds2,
    /// Dataset 3, electrons, 45 × 50 × 18 voxels.
    #[serde(rename = "3")]
    Ds3,
}

const XML_PHOTONS: &str = include_str!("../binning/binning_dataset_1_photons.xml");
const XML_PIONS: &str = include_str!("../binning/binning_dataset_1_pions.xml");
const XML_DS2: &str = include_str!("../binning/binning_dataset_2.xml");
const XML_DS3: &str = include_str!("../binning/binning_dataset_3.xml");

impl DatasetKind {
    /// All datasets.
    pub const ALL: [DatasetKind; 4] = [Self::Photons1, Self::Pions1, Self::Ds2, Self::Ds3];

    /// Name as used on the command line and in output file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Photons1 => "1-photons",
            Self::Pions1 => "1-pions",
            Self::Ds2 => "2",
            Self::Ds3 => "3",
        }
    }

    /// Particle name of the binning file's `<Bin>`.
    pub fn particle(self) -> &'static str {
        match self {
            Self::Photons1 => "photon",
            Self::Pions1 => "pion",
            Self::Ds2 | Self::Ds3 => "electron",
        }
    }

    /// Number of voxels per shower.
    pub fn n_voxels(self) -> usize {
        match self {
            Self::Photons1 => 368,
            Self::Pions1 => 533,
            Self::Ds2 => 6480,
            Self::Ds3 => 40500,
        }
    }

    /// The regular (layer, α, r) grid of datasets 2 and 3 (45 × 16 × 9, 45 × 50 × 18); `None` for
    /// dataset 1, whose layers differ.
    pub fn regular_grid(self) -> Option<[usize; 3]> {
        match self {
            Self::Ds2 => Some([45, 16, 9]),
            Self::Ds3 => Some([45, 50, 18]),
            Self::Photons1 | Self::Pions1 => None,
        }
    }

    /// Per-voxel threshold (MeV) below which voxels are zeroed before any metric.
    pub fn min_energy(self) -> f64 {
        match self {
            Self::Photons1 | Self::Pions1 => 1.0,
            Self::Ds2 | Self::Ds3 => 0.5e-3 / 0.033,
        }
    }

    /// Whether this is one of the dataset-1 (ATLAS, discrete energy) sets.
    pub fn is_ds1(self) -> bool {
        matches!(self, Self::Photons1 | Self::Pions1)
    }

    /// The embedded binning XML of this dataset.
    pub fn binning_xml(self) -> &'static str {
        match self {
            Self::Photons1 => XML_PHOTONS,
            Self::Pions1 => XML_PIONS,
            Self::Ds2 => XML_DS2,
            Self::Ds3 => XML_DS3,
        }
    }

    /// File name of the official binning file of this dataset.
    pub fn binning_file_name(self) -> String {
        format!("binning_dataset_{}.xml", self.name().replace('-', "_"))
    }

    /// Geometry from the embedded binning file, or from `binning` if given.
    pub fn geometry(self, binning: Option<&Path>) -> Result<Geometry> {
        let g = match binning {
            Some(p) => Geometry::from_file(p, self.particle())?,
            None => Geometry::from_xml_str(
                self.binning_xml(),
                self.particle(),
                &self.binning_file_name(),
            )?,
        };
        if g.n_voxels() != self.n_voxels() {
            let src = binning
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| self.binning_file_name());
            return Err(CoreError::Binning {
                file: src,
                msg: format!(
                    "describes {} voxels but dataset {} has {}",
                    g.n_voxels(),
                    self.name(),
                    self.n_voxels()
                ),
            });
        }
        Ok(g)
    }

    /// Number of (train, test) events per class of the classifier split (SPEC §5).
    pub fn classifier_split(self) -> (usize, usize) {
        match self {
            Self::Photons1 | Self::Pions1 => (80_000, 20_000),
            Self::Ds2 | Self::Ds3 => (60_000, 20_000),
        }
    }
}

impl FromStr for DatasetKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "1-photons" | "1_photons" | "photons" => Ok(Self::Photons1),
            "1-pions" | "1_pions" | "pions" => Ok(Self::Pions1),
            "2" => Ok(Self::Ds2),
            "3" => Ok(Self::Ds3),
            _ => Err(CoreError::Invalid(format!(
                "unknown dataset {s:?}: expected one of 1-photons, 1-pions, 2, 3"
            ))),
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
