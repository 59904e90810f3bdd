//! caloforge-core: CaloChallenge geometry, HDF5 shower IO and high-level features.
//!
//! Data flows one way through caloforge: io → preprocess → model → postprocess → io/eval. This
//! crate holds the first and last pieces that need no tensor framework: the detector geometry
//! read from the binning XML files ([`geometry`]), the four datasets and their constants
//! ([`dataset`]), the HDF5 reader and writer ([`io`]) and the high-level features ([`features`]).

pub mod coarse;
pub mod dataset;
pub mod error;
pub mod features;
pub mod geometry;
pub mod glam;
pub mod h5stream;
pub mod io;
pub mod numeric;
pub mod rng;
pub mod showerdata;
pub mod voxelize;

pub use coarse::{CoarseGrid, Grouping};
pub use dataset::DatasetKind;
pub use error::{CoreError, Result};
pub use features::{apply_threshold, Features};
pub use geometry::Geometry;
pub use io::{ShowerFile, ShowerWriter};
