//! Device selection: the CPU (`flex`) backend always; a GPU through burn's Vulkan (wgpu,
//! SPIR-V) backend when built with the `gpu` feature. burn's `cuda` backend is not used: its
//! build downloads an LLVM bundle (cubecl-llvm via tracel-llvm-bundler), which fails offline,
//! while the Vulkan backend builds from crates.io alone and runs on NVIDIA's Vulkan driver.
//!
//! The choice is process-wide ([`set_backend`], the CLI's `--device`), so every model picks it
//! up through [`compute_device`] without passing it around.

use crate::train::NnError;
use burn::tensor::{Device, FloatDType};
use std::sync::OnceLock;

/// Floating-point precision for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats (default: twice as fast on CPU).
    F32,
    /// 64-bit floats (what the official evaluate.py classifier uses).
    F64,
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's pure-Rust `flex` CPU backend.
    Cpu,
    /// The first discrete GPU through Vulkan (needs the `gpu` build feature).
    Gpu,
}

static BACKEND: OnceLock<Backend> = OnceLock::new();

/// Parses "cpu" / "gpu".
pub fn parse_backend(name: &str) -> Result<Backend, NnError> {
    match name.to_ascii_lowercase().as_str() {
        "cpu" => Ok(Backend::Cpu),
        "gpu" | "vulkan" => {
            if cfg!(feature = "gpu") {
                Ok(Backend::Gpu)
            } else {
                Err(NnError::Config("this caloforge was built without GPU support: rebuild with `--features gpu` (Vulkan)".into()))
            }
        }
        other => Err(NnError::Config(format!(
            "unknown device {other:?}: use cpu or gpu"
        ))),
    }
}

/// Chooses the backend for this process (first call wins). For the GPU, a small probe runs
/// first so that a machine without a usable Vulkan GPU gets an error, not a panic later.
pub fn set_backend(b: Backend) -> Result<(), NnError> {
    if b == Backend::Gpu {
        probe_gpu().map_err(NnError::Config)?;
    }
    let _ = BACKEND.set(b);
    Ok(())
}

/// The backend chosen for this process (CPU unless [`set_backend`] said otherwise).
pub fn backend() -> Backend {
    BACKEND.get().copied().unwrap_or(Backend::Cpu)
}

#[cfg(feature = "gpu")]
fn gpu_device() -> Device {
    Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)
}

#[cfg(not(feature = "gpu"))]
fn gpu_device() -> Device {
    Device::flex()
}

fn probe_gpu() -> Result<(), String> {
    if !cfg!(feature = "gpu") {
        return parse_backend("gpu").map(|_| ()).map_err(|e| e.to_string());
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| {
        let d = gpu_device();
        let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &d);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    match r {
        Ok(v) if v == 3.0 => Ok(()),
        Ok(v) => Err(format!("the GPU computed 1 + 2 = {v}")),
        Err(_) => Err(
            "no usable Vulkan GPU found (is the NVIDIA/Vulkan driver and libvulkan installed?)"
                .into(),
        ),
    }
}

/// The device of the chosen backend (no autodiff), for inference.
pub fn inference_device() -> Device {
    match backend() {
        Backend::Cpu => Device::flex(),
        Backend::Gpu => gpu_device(),
    }
}

/// The chosen backend's device with autodiff, its default float type set to `precision` and
/// its RNG seeded. Device settings can be set once per process; later calls keep the first.
pub fn compute_device(precision: Precision, seed: u64) -> Device {
    configured(inference_device(), precision, seed)
}

/// The CPU (`flex`) device with autodiff, float type `precision`, RNG seeded (models whose
/// training is CPU-bound by design: the flows, the evaluation classifier).
pub fn cpu_autodiff(precision: Precision, seed: u64) -> Device {
    configured(Device::flex(), precision, seed)
}

fn configured(mut device: Device, precision: Precision, seed: u64) -> Device {
    let dt = match precision {
        Precision::F32 => FloatDType::F32,
        Precision::F64 => FloatDType::F64,
    };
    // Already configured by an earlier call in this process: keep it.
    let _ = device.configure(dt);
    device.seed(seed);
    device.autodiff()
}
