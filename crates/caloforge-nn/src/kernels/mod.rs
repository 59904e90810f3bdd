//! Burn-free CPU inference kernels, in one place: what generation on the CPU runs.
//!
//! Every network of caloforge is defined once, in burn (training, GPU). Its CPU sampling path is
//! assembled from the *fast twins* of its blocks ([`crate::twin::Twin`]): plain structs of `f32`
//! weights in the layout these kernels read, built once when a model is loaded. Activations are
//! channels-last (voxel-major, `[z][α][r][c]` per shower), so a convolution is a small matrix
//! product per output voxel, and each shower is computed on its own (results do not depend on
//! batch size or thread count). AVX2/FMA paths are chosen at run time.
//!
//! * [`linear::Linear`]: dense layers; [`gemm::Packed`]: dense and masked layers on batches of
//!   rows as a register-tiled matrix product (AVX-512 or AVX2);
//! * [`conv::Conv3d`] (zero or circular padding per axis) and [`conv::ConvTranspose3d`];
//! * [`norm::GroupNorm`], [`norm::LayerNorm`];
//! * [`attention::linear_attention`], [`attention::softmax_attention`] (with masks);
//! * [`simd`]: dot product and activations (exp, SiLU, GELU);
//! * [`spline::Rqs`]: the scalar rational-quadratic spline of the flows;
//! * [`buf::Buf`]: activation buffers recycled per thread;
//! * [`macs`]: the per-thread count of multiply-adds the kernels computed (for FLOP rates).
//!
//! Two kernels serve training instead, behind the burn backend extensions of [`crate::ops`]:
//! [`conv_grad`] (forward, input and weight gradients of 3-D convolutions on burn's
//! channels-first batches) and [`spline_grad`] (the spline's hand-written reverse mode).

pub mod attention;
pub mod buf;
pub mod conv;
pub mod conv_grad;
pub mod gemm;
pub mod linear;
pub mod macs;
pub mod norm;
pub mod simd;
pub mod spline;
pub mod spline_grad;

pub use attention::{layer_window_attention, linear_attention, softmax_attention, LayerWindow};
pub use buf::Buf;
pub use conv::{Conv3d, ConvTranspose3d};
pub use gemm::Packed;
pub use linear::Linear;
pub use norm::{GroupNorm, LayerNorm};
