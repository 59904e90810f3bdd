#!/usr/bin/env python3
"""The CaloFlow dataset-1 reference energy flow (flow 1) and shower-flow teacher (flow 2),
rewritten from Ian-Pang/caloflow-for-calochallenge (run_gamma_2023.py / run_piplus_2023.py,
data_gamma.py / data_piplus.py; see docs/design/caloflow-ds1.md for line citations) for the
parity harness: it trains one flow on the same CaloChallenge file, with the same split, batch
size, optimizer steps and schedule as `caloforge train --preset P --flows K`, and writes its
validation history as JSON (the format of icaloflow_reference.py, read by compare.py).

What is the reference's, as coded there:
- energies in units of 1e5 MeV; U(0, a) noise on every voxel drawn afresh for every sample
  (a = 1e-8 units = 1 keV; the pion energy flow 1e-9); layer energies E_k summed after the noise;
- energy flow: u_0 = sum E_k / (c E_inc), u_{k+1} = E_k / sum_{j>=k} E_j (k < N-1), clamped to
  [0, 1], logit(1e-6 + (1 - 2e-6) u); context log10(3 E_inc); 6 x [nflows
  MaskedPiecewiseRationalQuadraticAutoregressiveTransform (hidden 64, num_blocks 2, 8 bins, linear
  tails at 14), RandomPermutation(N)], the last permutation kept;
- shower flow: every layer divided by (E_k + 1e-16) and logit'ed; context (log10(3 E_inc),
  log10(E_k + 1e-8) - 1); 8 MADE-RQS blocks with dropout 0.05 and, between them, the
  InversionLayer (every calorimeter layer reversed in place) after even blocks and the
  RandomPermutationLayer (a random permutation inside every layer) after odd ones, none after the
  last;
- Adam, the scheduler stepped every batch: CyclicLR triangular2 (photon teacher, no momentum
  cycling) or three-phase OneCycle with its beta1 cycling; loss -mean log p.

Shared with caloforge so that the two compare on equal terms: the validation set is at most
`max_validation_samples` showers with noise drawn once (seeded), evaluated with dropout off;
initial weights and permutations come from --seed. `--dtype float32` (the harness's default, for
time) runs the same networks in float32; the repository uses float64.

usage: caloflow_reference.py --flow {1,2} --data F.h5 --preset P.toml --seed S --out H.json
       [--threads 1] [--dtype float32]
needs: torch, nflows, h5py, numpy
"""
import argparse
import os
import sys
import tomllib

import h5py
import numpy as np
import torch
from nflows import distributions, flows, transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from icaloflow_reference import logit  # noqa: E402
from supercalo_reference import train_and_write  # noqa: E402

UNIT = 1e5
LAYERS = {"1-photons": [8, 160, 190, 5, 5], "1-pions": [8, 100, 100, 5, 150, 160, 10]}


def made_rqs(features, context, hidden, n_hidden, dropout, tail_bound, bins):
    return transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        features=features, context_features=context, hidden_features=hidden,
        num_blocks=n_hidden, use_residual_blocks=False, use_batch_norm=False,
        dropout_probability=dropout, activation=torch.nn.functional.relu, random_mask=False,
        num_bins=bins, tails="linear", tail_bound=tail_bound,
        min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6)


def within_layers(sizes, reverse):
    """InversionLayer (reverse) or RandomPermutationLayer of the reference, as a Permutation."""
    perm, off = [], 0
    for n in sizes:
        p = np.arange(n)[::-1] if reverse else np.random.permutation(n)
        perm.extend(off + p)
        off += n
    return transforms.Permutation(torch.tensor(np.array(perm), dtype=torch.long))


def build(flow, sizes, fc):
    n = len(sizes)
    layers = []
    if flow == 1:
        for _ in range(fc["blocks"]):
            layers.append(made_rqs(n, 1, fc["hidden"], fc["n_hidden"], 0.0, fc["tail_bound"],
                                   fc["bins"]))
            layers.append(transforms.RandomPermutation(n))
        d = n
    else:
        d = sum(sizes)
        for i in range(fc["blocks"]):
            layers.append(made_rqs(d, n + 1, fc["hidden"], fc["n_hidden"],
                                   fc.get("dropout", 0.0), fc["tail_bound"], fc["bins"]))
            layers.append(within_layers(sizes, reverse=(i % 2 == 0)))
        del layers[-1]
    return flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([d]))


class Stage:
    """Training samples of the energy flow or the shower flow (one per shower)."""

    def __init__(self, flow, showers, e_inc, cfg, sizes):
        self.flow, self.cfg, self.sizes = flow, cfg, sizes
        self.showers = showers.to(torch.float64) / UNIT
        self.e = e_inc / UNIT
        noise = cfg["energy_flow_noise"] if flow == 1 else cfg["noise_level"]
        self.noise = noise / UNIT

    def __len__(self):
        return len(self.e)

    def batch(self, rows, gen, dtype):
        v = self.showers[rows]
        v = v + torch.rand(v.shape, generator=gen, dtype=torch.float64) * self.noise
        e = self.e[rows]
        parts = torch.split(v, self.sizes, dim=1)
        le = torch.stack([p.sum(1) for p in parts], 1)
        if self.flow == 1:
            c = self.cfg["energy_scale"]
            tail = le.flip(1).cumsum(1).flip(1)
            u = torch.cat([le.sum(1, keepdim=True) / (c * e), le[:, :-1] / tail[:, :-1]], 1)
            x = logit(torch.clamp(u, 0.0, 1.0))
            ctx = torch.log10(3.0 * e)
        else:
            x = torch.cat([logit(p / (le[:, k:k + 1] + 1e-16)) for k, p in enumerate(parts)], 1)
            ctx = torch.cat([torch.log10(3.0 * e), torch.log10(le + 1e-8) - 1.0], 1)
        return x.to(dtype), ctx.to(dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--flow", type=int, default=2, choices=[1, 2])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float64", "float32"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    dtype = getattr(torch, a.dtype)
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    sizes = LAYERS[cfg["dataset"]]
    name = f"flow{a.flow}"
    fc, tc = cfg[name], cfg[name]["train"]
    with h5py.File(a.data, "r") as f:
        showers = torch.from_numpy(f["showers"][:])
        e_inc = torch.from_numpy(f["incident_energies"][:].reshape(-1, 1).astype(np.float64))
    if showers.shape[1] != sum(sizes):
        raise SystemExit(f"{a.data}: {showers.shape[1]} voxels, not {cfg['dataset']}")
    n = len(showers)
    n_val = min(max(round(n * cfg["validation_fraction"]), 1), n - 1)
    n_train = n - n_val
    gen = torch.Generator().manual_seed(a.seed + 1000)
    train = Stage(a.flow, showers[:n_train], e_inc[:n_train], cfg, sizes)
    val = Stage(a.flow, showers[n_train:], e_inc[n_train:], cfg, sizes)
    val_rows = torch.arange(len(val))
    if len(val_rows) > cfg["max_validation_samples"]:
        val_rows = torch.randperm(len(val_rows), generator=gen)[: cfg["max_validation_samples"]]
        val_rows = val_rows.sort().values
    xv, cv = val.batch(val_rows, gen, dtype)
    flow = build(a.flow, sizes, fc).to(dtype)
    train_and_write(flow, train, xv, cv, tc, gen, dtype, a.seed, a.out, model="caloflow",
                    flow=name, role="teacher", dtype=a.dtype)


if __name__ == "__main__":
    main()
