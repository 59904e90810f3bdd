#!/usr/bin/env python3
"""Writes random dataset-1-like shower files with h5py (float64, gzip, chunked) for cross-checks.
usage: make_ds1_fixture.py {1-photons,1-pions,3} OUT.h5 N SEED [--flat-energies]"""
import sys
import h5py
import numpy as np

V = {"1-photons": 368, "1-pions": 533, "2": 6480, "3": 40500}
ds, out, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(seed)
if ds.startswith("1"):
    e = 2.0 ** rng.integers(8, 23, size=n)
    scale = 30.0
else:
    e = 10 ** rng.uniform(3, 6, size=n)
    scale = 0.5
v = V[ds]
# Sparse exponential deposits whose total scales with the incident energy.
mask = rng.random((n, v)) < 0.3
sh = rng.exponential(scale, size=(n, v)) * mask * (e[:, None] / e.mean()) ** 0.5
with h5py.File(out, "w") as f:
    f.create_dataset("incident_energies", data=(e if "--flat-energies" in sys.argv else e.reshape(-1, 1)),
                     compression="gzip", chunks=True)
    f.create_dataset("showers", data=sh, compression="gzip", chunks=True)
