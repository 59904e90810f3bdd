//! caloforge-nn: the shared neural-network blocks of caloforge, on burn 0.22 (`flex` CPU backend).
//!
//! All tensor-framework code of caloforge lives here so that hot paths can later receive
//! hand-written kernels without touching the model or evaluation crates.
//!
//! * [`mlp`]: fully connected networks (the CaloChallenge classifier DNN).
//! * [`classifier`]: the binary-classifier training loop of the CaloChallenge evaluation.
//! * [`device`]: device selection (CPU `flex`, autodiff) and dtype configuration.
//! * [`kernels`]: burn-free CPU inference kernels; [`twin`]: each burn block's fast CPU twin.

pub mod classifier;
pub mod conv;
pub mod device;
pub mod diffusion;
pub mod flow;
pub mod flowmatch;
pub mod glam;
pub mod kernels;
pub mod mlp;
pub mod ops;
pub mod optim;
pub mod ot;
pub mod pointflow;
pub mod schedule;
pub mod sde;
#[cfg(test)]
mod testutil;
pub mod train;
pub mod twin;
pub mod unet;
pub mod vdiffusion;
pub mod weights;

pub use burn;
