//! Operations where burn's own CPU kernels lag, as burn backend extensions with hand-written
//! backward passes (`flex` backend; other backends run burn's own operations):
//!
//! * [`conv`]: 3-D convolutions and transposed convolutions (CaloDiffusion's U-Net);
//! * [`spline`]: the rational-quadratic spline of the flows, fused into one operation;
//! * [`norm`]: GroupNorm (+ SiLU) fused into one operation (the U-Net's blocks);
//! * [`attention`]: AllShowers' layer-window attention over packed showers;
//! * [`gelu`]: GELU with a vectorised erf.

pub mod attention;
pub mod conv;
pub mod gelu;
pub mod norm;
pub mod spline;

pub use attention::{window_attention, WindowPlan};
pub use conv::{conv3d, conv_transpose3d};
pub use gelu::gelu;
pub use norm::group_norm;
pub use spline::rqs;

use burn::backend::DispatchDevice;
use burn::tensor::Tensor;

/// Whether `t` lives on the flex backend (plain or autodiff), where the extensions run.
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}
