//! Device selection.

use burn::tensor::{Device, FloatDType};

/// Floating-point precision for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats (default: twice as fast on CPU).
    F32,
    /// 64-bit floats (what the official evaluate.py classifier uses).
    F64,
}

/// The CPU (`flex`) device with autodiff, its default float type set to `precision` and its RNG
/// seeded. Device settings can be set once per process; later calls keep the first choice.
pub fn cpu_autodiff(precision: Precision, seed: u64) -> Device {
    let mut device = Device::flex();
    let dt = match precision {
        Precision::F32 => FloatDType::F32,
        Precision::F64 => FloatDType::F64,
    };
    // Already configured by an earlier call in this process: keep it.
    let _ = device.configure(dt);
    device.seed(seed);
    device.autodiff()
}
