#!/usr/bin/env python3
"""Writes the h5py-made fixtures of crates/caloforge-core/tests/fixtures (run from the repo root).
Values follow value(i, j) = ((7 i + j) % 13) * 0.25 so the Rust tests can recompute them."""
import h5py
import numpy as np

out = "crates/caloforge-core/tests/fixtures"


def showers(n, v, dtype):
    i, j = np.meshgrid(np.arange(n), np.arange(v), indexing="ij")
    return (((7 * i + j) % 13) * 0.25).astype(dtype)


e = np.array([1000.0, 2000.0, 5000.0, 1e4, 1e5])
with h5py.File(f"{out}/h5py_ds2_f32_gzip_chunked.h5", "w") as f:
    f.create_dataset("incident_energies", data=e.reshape(-1, 1), compression="gzip")
    f.create_dataset("showers", data=showers(5, 6480, np.float32), compression="gzip",
                     compression_opts=9, shuffle=True, chunks=(2, 6480))
with h5py.File(f"{out}/h5py_photons_f64_contiguous_flat_energies.h5", "w") as f:
    f.create_dataset("incident_energies", data=2.0 ** np.array([8, 12, 16, 22]))
    f.create_dataset("showers", data=showers(4, 368, np.float64))
with h5py.File(f"{out}/h5py_pions_f32_energies_f32.h5", "w") as f:
    f.create_dataset("incident_energies", data=np.array([[256.0], [65536.0], [4194304.0]], dtype=np.float32))
    f.create_dataset("showers", data=showers(3, 533, np.float32), chunks=(1, 533), compression="gzip")
