#!/usr/bin/env python3
"""The SuperCalo reference Flow-II (coarse voxels) and upsampler (Flow-III), rewritten from
Ian-Pang/supercalo (run_supercalo.py `build_flow_2`, `build_flow_3`, `train_eval_flow_{2,3}`;
data_supercalo.py) for the parity harness: it trains one flow on the same CaloChallenge file, with
the same split, batch size, optimizer steps and schedule as
`caloforge train --preset P --flows K`, and writes its validation history as JSON (the format of
icaloflow_reference.py, read by compare.py).

What is the reference's, as coded there:
- the flows of `build_flow` (icaloflow_reference.py): nflows MaskedPiecewiseRationalQuadratic-
  AutoregressiveTransform x 8, 8 bins, linear tails (bound 6 for Flow-II, 14 for the upsampler),
  Reverse/Random permutations, float64 by default (run_supercalo.py sets it);
- coarse voxels: the fine shower (45 layers x 16 alpha x 9 r for dataset 2) summed over groups of
  `group.layers` layers x `group.alpha` angular x `group.r` radial bins, coarse order (z, r,
  alpha), alpha fastest; the fine voxels of a coarse voxel in (layer, alpha, r) order, r fastest
  (data_supercalo.py's reshape/swapaxes chain, written here as one reshape + transpose);
- Flow-II: x = log10((coarse + U(0, noise_level)) / 28048) + 6 with the noise drawn ONCE per
  shower when the dataset is built (data_supercalo.py adds it to the array), context
  (log10 E_inc - 4.5, log10(E_zgroup) / 4) with the z-group energies summed after the noise;
  Adam + CyclicLR triangular2 (cycle_momentum=False);
- upsampler: x = logit(fine' / sum(fine')) with fine' = fine + U(0, upsampler_noise) drawn afresh,
  context (log10 E_inc - 4.5, logit(E_layer / 6.5e4) of the group's layers, logit(sum(fine') /
  28048), the 6 neighbouring coarse energies logit(c / 28048) in the order r-1, r+1, z-1, z+1,
  alpha-1, alpha+1 (r and z zero-padded, alpha cyclic), one-hot r, one-hot z); Adam + OneCycle
  three-phase with its beta1 cycling.

Shared with caloforge so that the two compare on equal terms: the validation set is at most
`max_validation_samples` samples with noise drawn once (seeded); initial weights and permutations
come from --seed. `--dtype float32` runs the same network in float32 (the harness's default, for
time: Flow-II at hidden 648 is 84 M parameters).

usage: supercalo_reference.py --flow {2,3} --data F.h5 --preset P.toml --seed S --out H.json
       [--threads 1] [--dtype float32]
needs: torch, nflows, h5py, numpy
"""
import argparse
import math
import os
import sys
import tomllib

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from icaloflow_reference import (  # noqa: E402
    build_flow, fit, logit, schedule as one_cycle, write_result)


def coarse_grain(showers, n_alpha, n_r, g):
    """(N, V) fine showers -> (N, n_coarse, group_size): coarse order (z, r, alpha), fine order
    inside (layer, alpha, r)."""
    n = showers.shape[0]
    gl, ga, gr = g["layers"], g["alpha"], g["r"]
    nl = showers.shape[1] // (n_alpha * n_r)
    s = showers.reshape(n, nl // gl, gl, n_alpha // ga, ga, n_r // gr, gr)
    s = s.permute(0, 1, 5, 3, 2, 4, 6)
    return s.reshape(n, -1, gl * ga * gr)


def neighbours(c):
    """(N, nz, nr, na) coarse energies -> (N, nz, nr, na, 6): r-1, r+1, z-1, z+1 (zero-padded),
    alpha-1, alpha+1 (cyclic)."""
    z = torch.zeros_like(c[:, :, :1])
    rm = torch.cat([z, c[:, :, :-1]], 2)
    rp = torch.cat([c[:, :, 1:], z], 2)
    zz = torch.zeros_like(c[:, :1])
    zm = torch.cat([zz, c[:, :-1]], 1)
    zp = torch.cat([c[:, 1:], zz], 1)
    am = torch.roll(c, 1, 3)
    ap = torch.roll(c, -1, 3)
    return torch.stack([rm, rp, zm, zp, am, ap], -1)


class Stage:
    """The training samples of Flow-II (one per shower) or of the upsampler (one per shower and
    coarse voxel: row = shower * n_coarse + coarse index)."""

    def __init__(self, flow, showers, e_inc, cfg, geo, gen):
        n_alpha, n_r = geo
        g = cfg["group"]
        self.flow, self.cfg, self.e_inc = flow, cfg, e_inc
        self.fine = coarse_grain(showers.to(torch.float64), n_alpha, n_r, g)
        self.coarse = self.fine.sum(-1)
        n, nc = self.coarse.shape
        nl = showers.shape[1] // (n_alpha * n_r)
        self.nz, self.nr, self.na = nl // g["layers"], n_r // g["r"], n_alpha // g["alpha"]
        self.gl = g["layers"]
        self.nc = nc
        self.layer_e = showers.to(torch.float64).reshape(n, nl, -1).sum(-1)
        if flow == 2:
            # data_supercalo.py: the noise is added once, when the dataset is built.
            noisy = self.coarse + torch.rand(self.coarse.shape, generator=gen,
                                             dtype=torch.float64) * cfg["noise_level"]
            self.x2 = torch.log10(noisy / cfg["coarse_normalization"]) + 6.0
            groups = noisy.reshape(n, self.nz, -1).sum(-1)
            self.c2 = torch.cat([torch.log10(e_inc) - 4.5, torch.log10(groups) / 4.0], 1)
        else:
            self.nb = neighbours(self.coarse.reshape(n, self.nz, self.nr, self.na)).reshape(
                n, nc, 6)
        self.dims = (nc, 1 + self.nz) if flow == 2 else (
            self.fine.shape[-1], 1 + self.gl + 1 + 6 + self.nr + self.nz)

    def __len__(self):
        return len(self.e_inc) * (self.nc if self.flow == 3 else 1)

    def batch(self, rows, gen, dtype):
        cfg = self.cfg
        if self.flow == 2:
            return self.x2[rows].to(dtype), self.c2[rows].to(dtype)
        s, v = rows // self.nc, rows % self.nc
        f = self.fine[s, v] + torch.rand((len(rows), self.fine.shape[-1]), generator=gen,
                                         dtype=torch.float64) * cfg["upsampler_noise"]
        tot = f.sum(-1, keepdim=True)
        x = logit(f / tot)
        z, r = v // (self.nr * self.na), (v // self.na) % self.nr
        layers = z.unsqueeze(1) * self.gl + torch.arange(self.gl)
        cn = cfg["coarse_normalization"]
        c = torch.cat([
            torch.log10(self.e_inc[s]) - 4.5,
            logit(torch.clamp(self.layer_e[s.unsqueeze(1), layers] / cfg["normalization"],
                              max=1.0)),
            logit(torch.clamp(tot / cn, max=1.0)),
            logit(torch.clamp(self.nb[s, v] / cn, max=1.0)),
            torch.nn.functional.one_hot(r, self.nr).to(torch.float64),
            torch.nn.functional.one_hot(z, self.nz).to(torch.float64),
        ], 1)
        return x.to(dtype), c.to(dtype)


def schedule(opt, sched, total):
    if sched["type"] == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=sched["base_lr"], max_lr=sched["max_lr"],
            step_size_up=sched["step_size_up"], mode="triangular2", cycle_momentum=False)
    return one_cycle(opt, sched, total, sched.get("cycle_momentum", True))


def train_and_write(net, train, xv, cv, tc, gen, torch_dtype, seed, out, **fields):
    """Trains `net` by maximum likelihood on `train` (a Stage) with the batch, epochs,
    validation interval and schedule of the preset table `tc`, validating on (xv, cv) with
    dropout off, and writes the result JSON `out` (with `fields`)."""
    batch, epochs = tc["batch_size"], tc["epochs"]
    steps_per_epoch = math.ceil(len(train) / batch)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)  # the scheduler sets the rate
    lr = schedule(opt, tc["schedule"], steps_per_epoch * epochs)
    eval_every = tc.get("eval_every", 0) or steps_per_epoch

    @torch.no_grad()
    def validate():
        net.eval()
        nll = -torch.cat([net.log_prob(xv[i:i + 5000], cv[i:i + 5000])
                          for i in range(0, len(xv), 5000)]).mean().item()
        net.train()
        return nll

    history, step, wall = fit(train, lambda x, c: -net.log_prob(x, c).mean(), validate,
                              opt, lr, batch, epochs, eval_every, gen, torch_dtype, seed)
    write_result(out, seed, history, step, wall, **fields)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--flow", type=int, default=2, choices=[2, 3])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float64", "float32"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    if cfg.get("dataset") not in (2, "2"):
        raise SystemExit(f"{a.preset}: only dataset 2 is rewritten here")
    name = f"flow{a.flow}"
    fc, tc = cfg[name], cfg[name]["train"]
    with h5py.File(a.data, "r") as f:
        showers = torch.from_numpy(f["showers"][:])
        e_inc = torch.from_numpy(f["incident_energies"][:].reshape(-1, 1).astype(np.float64))
    n = len(showers)
    n_val = min(max(round(n * cfg["validation_fraction"]), 1), n - 1)
    n_train = n - n_val
    gen = torch.Generator().manual_seed(a.seed + 1000)
    geo = (16, 9)
    train = Stage(a.flow, showers[:n_train], e_inc[:n_train], cfg, geo, gen)
    val = Stage(a.flow, showers[n_train:], e_inc[n_train:], cfg, geo, gen)
    val_rows = torch.arange(len(val))
    if len(val_rows) > cfg["max_validation_samples"]:
        val_rows = torch.randperm(len(val_rows), generator=gen)[: cfg["max_validation_samples"]]
        val_rows = val_rows.sort().values
    xv, cv = val.batch(val_rows, gen, dtype)
    d, c = train.dims
    flow = build_flow(d, c, fc["hidden"], fc["n_hidden"], fc["blocks"], fc["bins"],
                      fc["tail_bound"]).to(dtype)
    train_and_write(flow, train, xv, cv, tc, gen, dtype, a.seed, a.out, model="supercalo",
                    flow=name, role="teacher", dtype=a.dtype)


if __name__ == "__main__":
    main()
