#!/usr/bin/env python3
"""The CaloScore v2 reference training, rewritten in PyTorch from ViniciusMikuni/CaloScoreV2
(scripts/CaloScore.py, architectures.py, utils.py, train.py, JSON/config_dataset2.json; the
reference is TensorFlow 2 + Horovod, which does not install here) for the parity harness and
the speed benchmark: it trains the reference's two v-prediction networks on the same simulator
file, split, batch size and number of optimizer steps as `caloforge train --preset P` with a
caloforge caloscore2 preset, and writes its validation curve as JSON (read by compare.py).

What is the reference's, as coded there (docs/design/caloscore.md section 2):
- preprocessing (utils.py): layer energies E_l = sum of the layer's voxels; voxels divided by
  their layer's energy (0 for an empty layer); the stick-breaking code u_0 = sum E / (MAXDEP E_inc),
  u_i = E_{i-1} / sum_{j >= i-1} E_j; both through a per-dimension min-max -> logit(1e-6) ->
  standardisation (population std) fitted on the training showers; the condition
  log10(E / EMIN) / log10(EMAX / EMIN);
- the cosine log-SNR schedule in [-20, 20], alpha = sqrt(sigmoid(lambda)), sigma =
  sqrt(sigmoid(-lambda)); one t ~ U[0, 1) per shower shared by both networks, independent noise;
  loss = mean((v_layer - v_target)^2) + mean((v_voxel - v_target)^2), v = alpha z - sigma x; the
  voxel network conditioned on the clean (normalised) layer codes;
- the networks (CaloScore.py, architectures.py Unet / Resnet): sinusoidal time embedding of
  1000 t (Dense 2E, swish, Dense E); c_voxel = Dense(E)([t_emb, swish(Dense(E)(layers)),
  swish(Dense(E)(E_cond))]), c_layer = Dense(E)([t_emb, swish(Dense(E)(E_cond))]); the U-Net
  (1x1x1 input conv, residual blocks swish-conv3-+Dense(c)-swish-conv3 without normalisation,
  1x1x1 conv skip where the width changes, single-head attention after a non-affine
  GroupNorm(4) where enabled, 2x average pooling, nearest 2x up-sampling with concatenated
  skips, zero-initialised 1x1x1 output conv); the FiLM ResNet with LeakyReLU(0.01);
  Keras initialisation (Glorot uniform, zero biases);
- the optimiser of the preset: Keras Adamax (eps 1e-7, eps added to u) or Adam (eps 1e-7);
  per-tensor clip_by_norm; Keras CosineDecay reaching 0 after decay_fraction of the steps; an
  EMA of the weights (which samples; validation uses the trained weights, as the reference).

Differences from the reference, the same as caloforge's (docs/design/caloscore.md): the native
cylindrical 45 x 16 x 9 grid with circular angular padding (z and r zero-padded at the end to
48 x 16 x 12, cropped after); the energy Dense not shared between the two networks; caloforge's
fixed split (the first n - round(fraction n) showers train) and its validation loss (one t and
one noise draw per validation shower drawn once per run). Seeds: weights from
torch.manual_seed(--seed), batches and noise from a generator seeded with --seed, validation
draws from --seed + 1000.

usage: caloscore2_reference.py --data F.h5 --preset P.toml --seed S --out H.json [--threads 1]
       [--epochs E] [--batch B] [--steps K] [--max-showers M]
needs: torch, h5py, numpy
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from caloscore_reference import SHAPE, CylConv, glorot_  # noqa: E402

ALPHA = 1e-6


def logit(y):
    v = ALPHA + (1 - 2 * ALPHA) * y
    return np.log(v / (1 - v))


class Normaliser:
    """utils.CalcPreprocessing / ApplyPreprocessing: min-max, logit, standardisation."""

    def __init__(self, rows):
        self.lo, self.hi = rows.min(0), rows.max(0)
        w = self.hi - self.lo
        self.w = np.where(w > 0, w, 1.0)
        lg = logit(self.scaled(rows))
        self.mean, self.std = lg.mean(0), lg.std(0)
        self.std[w <= 0] = 0.0

    def scaled(self, x):
        return np.where(self.hi > self.lo, np.clip((x - self.lo) / self.w, 0, 1), 0.0)

    def __call__(self, x):
        s = np.where(self.std > 0, self.std, 1.0)
        return np.where(self.std > 0, (logit(self.scaled(x)) - self.mean) / s, 0.0)


def preprocess(showers_mev, e_mev, n_train, cfg):
    n = len(e_mev)
    z, a, r = SHAPE
    vox = showers_mev.astype(np.float64).reshape(n, z, a * r)
    layers = vox.sum(2)
    frac = np.divide(vox, layers[:, :, None], out=np.zeros_like(vox),
                     where=layers[:, :, None] > 0).reshape(n, -1)
    e = e_mev.reshape(-1).astype(np.float64)
    u = np.zeros((n, z))
    u[:, 0] = layers.sum(1) / (cfg["max_dep"] * e)
    rest = layers[:, ::-1].cumsum(1)[:, ::-1]  # sum_{j >= i} E_j
    with np.errstate(divide="ignore", invalid="ignore"):
        u[:, 1:] = np.where(rest[:, :-1] > 0, np.clip(layers[:, :-1] / rest[:, :-1], 0, 1), 0.0)
    nl, nv = Normaliser(u[:n_train]), Normaliser(frac[:n_train])
    c = np.log10(e / cfg["e_min"]) / np.log10(cfg["e_max"] / cfg["e_min"])
    return (nl(u).astype(np.float32), nv(frac).astype(np.float32), c.astype(np.float32))


def alpha_sigma(t, lo=-20.0, hi=20.0):
    b = math.atan(math.exp(-0.5 * hi))
    a = math.atan(math.exp(-0.5 * lo)) - b
    lam = -2 * torch.log(torch.tan(a * t + b))
    return torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam))


def lin(i, o):
    return glorot_(nn.Linear(i, o))


class TimeEmbedding(nn.Module):
    def __init__(self, embed):
        super().__init__()
        h = embed // 2
        self.register_buffer("f", torch.exp(-math.log(1e4) * torch.arange(h) / max(h - 1, 1)))
        self.d1, self.d2 = lin(2 * h, 2 * embed), lin(2 * embed, embed)

    def forward(self, t):
        p = 1000.0 * t * self.f[None, :]
        return self.d2(F.silu(self.d1(torch.cat([torch.sin(p), torch.cos(p)], 1))))


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(4, c, eps=1e-3, affine=False)
        self.q, self.k, self.v, self.o = lin(c, c), lin(c, c), lin(c, c), lin(c, c)

    def forward(self, x):
        b, c = x.shape[:2]
        g = self.norm(x).reshape(b, c, -1).transpose(1, 2)
        w = torch.softmax(self.q(g) @ self.k(g).transpose(1, 2) / math.sqrt(c), 2)
        return x + self.o(w @ self.v(g)).transpose(1, 2).reshape(x.shape)


class ResBlock(nn.Module):
    def __init__(self, ci, co, embed, attention):
        super().__init__()
        self.skip = CylConv(ci, co, 1) if ci != co else None
        self.conv1, self.conv2 = CylConv(ci, co, 3), CylConv(co, co, 3)
        self.cond = lin(embed, co)
        self.attn = Attention(co) if attention else None

    def forward(self, x, c):
        res = x if self.skip is None else self.skip(x)
        h = self.conv1(F.silu(x)) + self.cond(c)[:, :, None, None, None]
        x = res + self.conv2(F.silu(h))
        return x if self.attn is None else self.attn(x)


class VoxelNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        u, e = cfg["unet"], cfg["embed"]
        w, depth, att = u["widths"], u["depth"], u["attention"]
        m = 2 ** (len(w) - 1)
        self.padded = tuple(-(-s // m) * m for s in SHAPE)
        self.depth = depth
        self.temb = TimeEmbedding(e)
        self.dense_layer, self.dense_e, self.cond = lin(SHAPE[0], e), lin(1, e), lin(3 * e, e)
        self.input = CylConv(1, u["in_emb"], 1)
        ch, skips, down = u["in_emb"], [], []
        for wi, ai in zip(w[:-1], att):
            for _ in range(depth):
                down.append(ResBlock(ch, wi, e, ai))
                ch = wi
                skips.append(ch)
        mid = []
        for _ in range(depth):
            mid.append(ResBlock(ch, w[-1], e, att[-1]))
            ch = w[-1]
        up = []
        for wi, ai in reversed(list(zip(w[:-1], att))):
            for _ in range(depth):
                up.append(ResBlock(ch + skips.pop(), wi, e, ai))
                ch = wi
        self.down, self.mid, self.up = nn.ModuleList(down), nn.ModuleList(mid), nn.ModuleList(up)
        self.out = CylConv(ch, 1, 1)
        nn.init.zeros_(self.out.conv.weight)

    def forward(self, x, t, e, layers):
        b = x.shape[0]
        z, a, r = SHAPE
        pz, pa, pr = self.padded
        c = self.cond(torch.cat([self.temb(t), F.silu(self.dense_layer(layers)),
                                 F.silu(self.dense_e(e))], 1))
        h = self.input(F.pad(x.view(b, 1, z, a, r), (0, pr - r, 0, pa - a, 0, pz - z)))
        skips = []
        for i, blk in enumerate(self.down):
            h = blk(h, c)
            skips.append(h)
            if (i + 1) % self.depth == 0:
                h = F.avg_pool3d(h, 2)
        for blk in self.mid:
            h = blk(h, c)
        for i, blk in enumerate(self.up):
            if i % self.depth == 0:
                for dim in (2, 3, 4):
                    h = h.repeat_interleave(2, dim)
            h = blk(torch.cat([h, skips.pop()], 1), c)
        return self.out(h)[:, :, :z, :a, :r].reshape(b, -1)


class LayerNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        e, m, L = cfg["embed"], cfg["mlp"], SHAPE[0]
        self.m = m
        self.temb = TimeEmbedding(e)
        self.dense_e, self.cond = lin(1, e), lin(2 * e, e)
        self.emb, self.input, self.out = lin(e, m), lin(L, m), lin(m, L)
        self.blocks = nn.ModuleList(nn.ModuleList([lin(m, m), lin(m, 2 * m), lin(m, m), lin(m, m)])
                                    for _ in range(cfg["blocks"]))

    def forward(self, x, t, e):
        act = lambda v: F.leaky_relu(v, 0.01)  # noqa: E731
        c = self.cond(torch.cat([self.temb(t), F.silu(self.dense_e(e))], 1))
        emb = act(self.emb(c))
        h = self.input(x)
        for res, film, d1, d2 in self.blocks:
            r = res(h)
            scale, shift = film(emb).split(self.m, 1)
            y = act(d1(act(h)))
            y = act((1 + scale) * y + shift)
            h = d2(y) + r
        return self.out(h)


class Nets(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer, self.voxel = LayerNet(cfg), VoxelNet(cfg)

    def loss(self, xl, xv, c, t, zl, zv):
        al, sg = alpha_sigma(t.double())
        al, sg = al.float()[:, None], sg.float()[:, None]
        tt, cc = t.float()[:, None], c[:, None]
        ol = self.layer(al * xl + sg * zl, tt, cc)
        ov = self.voxel(al * xv + sg * zv, tt, cc, xl)
        return ((ol - (al * zl - sg * xl)) ** 2).mean() + ((ov - (al * zv - sg * xv)) ** 2).mean()


class KerasAdamax(torch.optim.Optimizer):
    """Keras Adamax: m = b1 m + (1 - b1) g, u = max(b2 u, |g|), p -= lr/(1 - b1^t) m/(u + eps)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-7):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                s = self.state[p]
                if not s:
                    s["t"], s["m"], s["u"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                s["t"] += 1
                s["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                torch.maximum(s["u"].mul_(b2), p.grad.abs(), out=s["u"])
                p.sub_(g["lr"] / (1 - b1 ** s["t"]) * s["m"] / (s["u"] + g["eps"]))


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
    if cfg.get("model") != "caloscore2" or str(cfg.get("dataset")) != "2" or "distill" in cfg:
        raise SystemExit(f"{a.preset}: a caloscore2 base preset of dataset 2 is needed")
    batch = a.batch or cfg["batch_size"]
    epochs = a.epochs or cfg["epochs"]
    with h5py.File(a.data, "r") as f:
        m = len(f["incident_energies"]) if a.max_showers is None else a.max_showers
        showers = f["showers"][:m]
        e_inc = f["incident_energies"][:m]
    n = len(e_inc)
    n_val = min(max(math.floor(n * cfg["validation_fraction"] + 0.5), 1), n - 1)
    n_train = n - n_val
    xl, xv, c = (torch.from_numpy(v) for v in preprocess(showers, e_inc, n_train, cfg))
    del showers

    torch.manual_seed(a.seed)
    net = Nets(cfg)
    ema = Nets(cfg)
    ema.load_state_dict(net.state_dict())
    n_params = sum(p.numel() for p in net.parameters())
    if cfg["optimizer"] == "adamax":
        opt = KerasAdamax(net.parameters(), lr=cfg["lr"])
    else:
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], eps=1e-7)
    gen = torch.Generator().manual_seed(a.seed)
    vgen = torch.Generator().manual_seed(a.seed + 1000)
    val_t = torch.rand(n_val, generator=vgen, dtype=torch.float64)
    val_zl = torch.randn(n_val, xl.shape[1], generator=vgen)
    val_zv = torch.randn(n_val, xv.shape[1], generator=vgen)

    @torch.no_grad()
    def validate():
        tot = 0.0
        for i in range(0, n_val, batch):
            j = min(i + batch, n_val)
            s = slice(n_train + i, n_train + j)
            tot += net.loss(xl[s], xv[s], c[s], val_t[i:j], val_zl[i:j],
                            val_zv[i:j]).item() * (j - i)
        return tot / n_val

    spe = math.ceil(n_train / batch)
    total = spe * epochs if a.steps is None else a.steps
    epochs = math.ceil(total / spe)
    decay = max(round(spe * epochs * cfg["decay_fraction"]), 1)
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
            t = torch.rand(len(rows), generator=gen, dtype=torch.float64)
            zl = torch.randn(len(rows), xl.shape[1], generator=gen)
            zv = torch.randn(len(rows), xv.shape[1], generator=gen)
            for g in opt.param_groups:
                g["lr"] = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(step, decay) / decay))
            opt.zero_grad()
            loss = net.loss(xl[rows], xv[rows], c[rows], t, zl, zv)
            loss.backward()
            if cfg.get("grad_clip"):
                for p in net.parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_([p], cfg["grad_clip"])
            opt.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.mul_(cfg["ema"]).add_(p, alpha=1 - cfg["ema"])
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
    json.dump({"implementation": "reference (PyTorch rewrite of ViniciusMikuni/CaloScoreV2)",
               "model": "caloscore2", "seed": a.seed, "data": a.data, "preset": a.preset,
               "n_train": n_train, "n_validation": n_val, "batch_size": batch,
               "parameters": n_params, "steps": step, "epochs": len(history),
               "torch": torch.__version__, "threads": a.threads, "seconds": wall,
               "seconds_per_step": wall / max(step, 1), "val_loss_step0": v0,
               "best_val_loss": best_val, "history": history}, open(a.out, "w"), indent=1)
    print(file=sys.stderr)
    print(f"reference seed {a.seed}: best validation loss {best_val:.4f} after {step} steps "
          f"({wall / max(step, 1):.2f} s/step; step-0 validation loss {v0:.4f})")


if __name__ == "__main__":
    main()
