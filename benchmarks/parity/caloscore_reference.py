#!/usr/bin/env python3
"""The CaloScore v1 reference training, rewritten in PyTorch from ViniciusMikuni/CaloScore
(commit 057a7ea: scripts/CaloScore.py, utils.py, train.py, JSON/config_dataset2.json; the
reference is TensorFlow 2 + Horovod, which does not install here) for the parity harness: it
trains the reference's score network with the reference's SDE and loss on the same simulator
file, split, batch size and number of optimizer steps as `caloforge train --preset P` with a
caloforge caloscore preset, and writes its validation curve as JSON (read by compare.py).

What is the reference's, as coded there (docs/design/caloscore.md §1):
- preprocessing (utils.DataLoader, dataset 2: logE, no NORMED): GeV, x = voxel / (2 E_inc),
  logit of 1e-6 + (1 - 2e-6) x (np.ma.log(...).filled(0)), no standardisation;
  E -> log10(E / 1 GeV) / log10(100 GeV / 1 GeV);
- the SDE (CaloScore.marginal_prob, with the |log m| <= 1e-3 branches): VP / sub-VP
  (beta in [0.1, 20]) or VE (sigma in [0.01, 50]) from the preset;
- the loss (CaloScore.train_step): t ~ U(0, 1) * (1 - 1e-5) + 1e-5, z ~ N(0, 1),
  x_t = m x0 + s z, score = net / s, loss = mean((score s + z)^2) over voxels and showers;
- the network (CaloScore.ConvModel / time_conv), with the preset's channels, pooling and
  embedding: one fixed Gaussian Fourier projection W ~ N(0,1)*16 shared by t and E, Dense(swish)
  embeddings; time_conv = swish(conv3 no bias) + swish(Dense no bias)(emb), conv1, BatchNorm as
  the reference's training loop runs it (Keras inference mode: a per-channel affine, gamma
  initialised to 1/sqrt(1.001)), swish, Dropout off; average pooling / nearest up-sampling,
  skips averaged with 1/sqrt(2); Keras initialisation (Glorot uniform, zero biases);
- Adam with Keras defaults (betas 0.9 / 0.999, eps 1e-7) at the preset's constant rate.

Differences from the reference, the same as caloforge's (§5 of the design note), so that the
two runs see the same problem: the native cylindrical 45 x 16 x 9 grid with circular angular
padding (r zero-padded to 12 for the pooling, cropped after), instead of the reference's lossy
12 x 12 cartesian image; caloforge's fixed split (the first n - round(fraction n) showers train)
and its validation loss (one t and one z per validation shower drawn once per run, mean over
every voxel); no reshuffled split per epoch. Seeds: weights from torch.manual_seed(--seed),
batches and noise from a generator seeded with --seed, validation draws from --seed + 1000.

usage: caloscore_reference.py --data F.h5 --preset P.toml --seed S --out H.json [--threads 1]
       [--epochs E] [--batch B] [--steps K] [--max-showers M]
needs: torch, h5py, numpy
"""
import argparse
import json
import math
import sys
import time
import tomllib

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPE = (45, 16, 9)


def preprocess(showers_mev, e_mev, tr):
    e = e_mev.astype(np.float32).reshape(-1, 1) / 1000.0
    x = showers_mev.astype(np.float32) / 1000.0 / (tr["max_dep"] * e)
    a = tr["alpha"]
    y = a + (1 - 2 * a) * x
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.ma.log(y / (1 - y)).filled(0).astype(np.float32)
    lo, hi = tr["e_min"] / 1e3, tr["e_max"] / 1e3
    c = (np.log10(e / lo) / np.log10(hi / lo)).astype(np.float32)
    return u, c.reshape(-1)


def marginal(sde, t):
    """CaloScore.marginal_prob: (m, s) per t."""
    if sde["type"] == "ve":
        s0, s1 = sde["sigma_min"], sde["sigma_max"]
        return torch.ones_like(t), s0 * (s1 / s0) ** t
    b0, b1 = sde["beta_min"], sde["beta_max"]
    lmc = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
    small = lmc.abs() <= 1e-3
    m = torch.where(small, 1 + lmc, torch.exp(lmc))
    if sde["type"] == "vp":
        s = torch.where(small, torch.sqrt(-2 * lmc), torch.sqrt(1 - torch.exp(2 * lmc)))
    else:
        s = torch.where(small, -2 * lmc, 1 - torch.exp(2 * lmc))
    return m, s


def glorot_(layer):
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class CylConv(nn.Module):
    """3-D conv, 'same' size: circular padding in alpha, zeros in z and r."""

    def __init__(self, ci, co, k, bias=True):
        super().__init__()
        self.k = k
        self.conv = glorot_(nn.Conv3d(ci, co, k, bias=bias))

    def forward(self, x):
        p = self.k // 2
        if p:
            x = torch.cat([x[:, :, :, -p:], x, x[:, :, :, :p]], 3)
            x = F.pad(x, (p, p, 0, 0, p, p))
        return self.conv(x)


class TimeConv(nn.Module):
    def __init__(self, ci, co, embed):
        super().__init__()
        self.conv = CylConv(ci, co, 3, bias=False)
        self.dense = glorot_(nn.Linear(embed, co, bias=False))
        self.conv1 = CylConv(co, co, 1)
        self.gamma = nn.Parameter(torch.full((co,), 1 / math.sqrt(1.001)))
        self.beta = nn.Parameter(torch.zeros(co))

    def forward(self, x, emb):
        h = F.silu(self.conv(x)) + F.silu(self.dense(emb))[:, :, None, None, None]
        h = self.conv1(h)
        h = h * self.gamma[None, :, None, None, None] + self.beta[None, :, None, None, None]
        return F.silu(h)


class ScoreNet(nn.Module):
    def __init__(self, channels, pool, embed):
        super().__init__()
        s0, s1, s2 = channels
        self.pool = tuple(pool)
        self.padded = tuple(-(-n // (f * f)) * f * f for n, f in zip(SHAPE, pool))
        self.register_buffer("W", torch.randn(embed // 2) * 16)
        lin = lambda i, o: glorot_(nn.Linear(i, o))  # noqa: E731
        self.dense_t, self.dense_e = lin(embed // 2 * 2, embed), lin(embed // 2 * 2, embed)
        self.dense1, self.dense2 = lin(2 * embed, embed), lin(embed, embed)
        self.down = nn.ModuleList([TimeConv(1, s0, embed), TimeConv(s0, s1, embed),
                                   TimeConv(s1, s2, embed)])
        self.mid = TimeConv(s2, s2, embed)
        self.up_tc = nn.ModuleList([TimeConv(s2, s1, embed), TimeConv(s1, s0, embed)])
        self.up_conv = nn.ModuleList([CylConv(s1, s1, 3), CylConv(s0, s0, 3)])
        self.up_conv1 = nn.ModuleList([CylConv(s1, s1, 1), CylConv(s0, s0, 1)])
        self.last = TimeConv(s0, s0, embed)
        self.out = CylConv(s0, 1, 3)

    def fourier(self, v):
        p = 2 * math.pi * v * self.W[None, :]
        return torch.cat([torch.sin(p), torch.cos(p)], 1)

    def forward(self, x, t, e):
        b = x.shape[0]
        emb_t = F.silu(self.dense_t(self.fourier(t)))
        emb_e = F.silu(self.dense_e(self.fourier(e)))
        emb = F.silu(self.dense2(F.silu(self.dense1(torch.cat([emb_t, emb_e], 1)))))
        z, a, r = SHAPE
        pz, pa, pr = self.padded
        h = F.pad(x.view(b, 1, z, a, r), (0, pr - r, 0, pa - a, 0, pz - z))
        e0 = self.down[0](h, emb)
        e1 = F.avg_pool3d(self.down[1](e0, emb), self.pool)
        e2 = F.avg_pool3d(self.down[2](e1, emb), self.pool)
        d = self.mid(e2, emb)
        for i, skip in enumerate([e1, e0]):
            d = self.up_tc[i](d, emb)
            for dim, f in zip((2, 3, 4), self.pool):
                d = d.repeat_interleave(f, dim)
            d = F.silu(self.up_conv[i](d))
            d = (d + skip) / math.sqrt(2)
            d = F.silu(self.up_conv1[i](d))
        d = self.out(self.last(d, emb))
        return d[:, :, :z, :a, :r].reshape(b, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    ap.add_argument("--max-showers", type=int)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(a.threads)
    except RuntimeError:
        pass
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    if cfg.get("model") != "caloscore" or str(cfg.get("dataset")) != "2":
        raise SystemExit(f"{a.preset}: a caloscore preset of dataset 2 is needed")
    sde = cfg["sde"]
    batch = a.batch or cfg["batch_size"]
    epochs = a.epochs or cfg["epochs"]
    with h5py.File(a.data, "r") as f:
        m = len(f["incident_energies"]) if a.max_showers is None else a.max_showers
        showers = f["showers"][:m]
        e_inc = f["incident_energies"][:m]
    x_all, e_all = preprocess(showers, e_inc, cfg["transform"])
    del showers
    n = len(e_all)
    n_val = min(max(math.floor(n * cfg["validation_fraction"] + 0.5), 1), n - 1)
    n_train = n - n_val
    x_tr, e_tr = torch.from_numpy(x_all[:n_train]), torch.from_numpy(e_all[:n_train])
    x_va, e_va = torch.from_numpy(x_all[n_train:]), torch.from_numpy(e_all[n_train:])

    torch.manual_seed(a.seed)
    net = ScoreNet(cfg["channels"], cfg["pool"], cfg["embed"])
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], eps=1e-7)
    gen = torch.Generator().manual_seed(a.seed)
    vgen = torch.Generator().manual_seed(a.seed + 1000)
    val_t = torch.rand(n_val, generator=vgen, dtype=torch.float64) * (1 - 1e-5) + 1e-5
    val_z = torch.randn(x_va.shape, generator=vgen)

    def loss_of(x0, e, t, z):
        m_, s_ = marginal(sde, t)
        xt = (m_[:, None] * x0.double() + s_[:, None] * z.double()).float()
        out = net(xt, t.float()[:, None], e[:, None])
        return ((out + z) ** 2).mean()

    @torch.no_grad()
    def validate():
        tot = 0.0
        for i in range(0, n_val, batch):
            j = min(i + batch, n_val)
            tot += loss_of(x_va[i:j], e_va[i:j], val_t[i:j], val_z[i:j]).item() * (j - i)
        return tot / n_val

    spe = math.ceil(n_train / batch)
    total = spe * epochs if a.steps is None else a.steps
    epochs = math.ceil(total / spe)
    print(f"reference seed {a.seed}: {n_params} parameters, {n_train} training / {n_val} "
          f"validation showers, batch {batch}, {total} steps ({spe} per epoch)", file=sys.stderr)
    v0 = validate()
    history, best_val = [], math.inf
    step, t0 = 0, time.time()
    for ep in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        run, nb = 0.0, 0
        for b in range(spe):
            if step >= total:
                break
            rows = order[b * batch:(b + 1) * batch]
            t = torch.rand(len(rows), generator=gen, dtype=torch.float64) * (1 - 1e-5) + 1e-5
            z = torch.randn(x_tr[rows].shape, generator=gen)
            opt.zero_grad()
            loss = loss_of(x_tr[rows], e_tr[rows], t, z)
            loss.backward()
            opt.step()
            step += 1
            run += loss.item()
            nb += 1
        point = {"step": step, "epoch": ep + 1, "train_loss": run / max(nb, 1),
                 "val_loss": validate()}
        history.append(point)
        best_val = min(best_val, point["val_loss"])
        el = time.time() - t0
        print(f"\rreference seed {a.seed}: step {step}/{total}, validation loss "
              f"{point['val_loss']:.4f}, ETA {el / step * (total - step):.0f} s",
              end="", file=sys.stderr, flush=True)
    wall = time.time() - t0
    json.dump({"implementation": "reference (PyTorch rewrite of ViniciusMikuni/CaloScore v1)",
               "model": "caloscore", "seed": a.seed, "data": a.data, "preset": a.preset,
               "sde": sde, "n_train": n_train, "n_validation": n_val, "batch_size": batch,
               "parameters": n_params, "steps": step, "epochs": len(history),
               "torch": torch.__version__, "threads": a.threads, "seconds": wall,
               "seconds_per_step": wall / max(step, 1), "val_loss_step0": v0,
               "best_val_loss": best_val, "history": history}, open(a.out, "w"), indent=1)
    print(file=sys.stderr)
    print(f"reference seed {a.seed}: best validation loss {best_val:.4f} after {step} steps "
          f"({wall / max(step, 1):.2f} s/step; step-0 validation loss {v0:.4f})")


if __name__ == "__main__":
    main()
