#!/usr/bin/env python3
"""Same weights, two frameworks: a CaloDiffusion dataset-2 model trained by caloforge, loaded
into the PyTorch rewrite of the reference network (benchmarks/calodiffusion_torch.py `UNet`, the
reference's CondUnet), then
  1. its validation loss computed the reference's way (calodiffusion_reference.py: float32
     cosine schedule, R/Z images, sigma_t time input, epsilon MSE) on the model's own validation
     showers (the last `validation_fraction` of the training file), with DRAWS independent
     (t, noise) draws, beside the loss caloforge recorded in the model card;
  2. optionally (--generate N) N showers sampled with the reference's DDPM (CaloDiffu.Sample:
     the schedule rebuilt with --steps steps, the `skip` noisiest left out, ReverseNorm and the
     15.1 keV cut) for the incident energies of --energies-from, written as a CaloChallenge file
     that `caloforge evaluate` compares with caloforge's own generation from the same model.
A wrong weight mapping or a network that differs gives a loss near 1 or above (an untrained
network's) and showers nothing like caloforge's.

usage: calodiffusion_same_weights.py --model RUN --data TRAIN.h5 [--draws 3] [--threads 1]
         [--generate N --energies-from REF.h5 --steps 50 --seed 1 --out GEN.h5]
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

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, ".."))
from caloforge_files import read_safetensors  # noqa: E402
from calodiffusion_reference import (cosine_beta_schedule, preprocess,  # noqa: E402
                                     r_z_images, REF)
from calodiffusion_torch import UNet  # noqa: E402


def torch_name(name):
    """caloforge's unet.safetensors name -> the UNet state_dict name (None: no counterpart)."""
    n = name.removeprefix("unet.")
    for a, b in [("time_emb.", "temb."), ("energy_emb.", "eemb."), ("init_conv.", "init."),
                 ("down_convs.", "dconv."), ("up_convs.", "uconv."), ("mid_attn.", "mattn."),
                 ("final_res.", "fres."), ("final_conv.", "fconv.")]:
        if n.startswith(a):
            n = b + n[len(a):]
    for a, b in [(".l1.", ".0."), (".l2.", ".2."), (".l3.", ".4.")]:
        if n.startswith(("temb", "eemb")):
            n = n.replace(a, b)
    parts = n.split(".")
    if parts[0] in ("downs", "ups"):
        parts[2] = {"res1": "0", "res2": "1", "attn": "2"}[parts[2]]
    n = ".".join(parts)
    for a, b in [(".block1.", ".b1."), (".block2.", ".b2."), (".res_conv.", ".res."),
                 (".prenorm.", ".pre."), (".out_norm.", ".post."), (".to_qkv.", ".qkv."),
                 (".to_out.", ".out.")]:
        n = n.replace(a, b)
    return n.replace(".gamma", ".weight").replace(".beta", ".bias")


def load(run):
    with open(os.path.join(run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    if cfg.get("model") != "calodiffusion" or str(cfg.get("dataset")) != "2":
        raise SystemExit(f"{run}: a caloforge calodiffusion model of dataset 2 is needed")
    net = UNet(sizes=tuple(cfg["layer_sizes"]), groups=cfg["groups"],
               block_attn=cfg.get("block_attention", True)).eval()
    sd = net.state_dict()
    w, _ = read_safetensors(os.path.join(run, "unet.safetensors"))
    seen = set()
    for name, a in w.items():
        t = torch_name(name)
        if t not in sd:
            raise SystemExit(f"{name} -> {t}: not in the PyTorch network")
        if a.ndim == 2:  # burn's Linear is [in, out], torch's [out, in]
            a = a.T
        if tuple(a.shape) != tuple(sd[t].shape):
            raise SystemExit(f"{name} {a.shape} -> {t} {tuple(sd[t].shape)}")
        sd[t] = torch.from_numpy(np.ascontiguousarray(a))
        seen.add(t)
    missing = set(sd) - seen
    if missing:
        raise SystemExit(f"no caloforge weight for {sorted(missing)}")
    net.load_state_dict(sd)
    return cfg, net


def inputs(x, R, Z):
    b = x.shape[0]
    return torch.cat([x, R.expand(b, -1, -1, -1, -1), Z.expand(b, -1, -1, -1, -1)], 1)


@torch.no_grad()
def validation_loss(net, cfg, data, draws, batch, seed):
    with h5py.File(data, "r") as f:
        n = len(f["incident_energies"])
        n_val = min(max(math.floor(n * cfg["validation_fraction"] + 0.5), 1), n - 1)
        x, e = preprocess(f["showers"][n - n_val:], f["incident_energies"][n - n_val:])
    x, e = torch.from_numpy(x), torch.from_numpy(e)
    ab = torch.cumprod(1.0 - cosine_beta_schedule(cfg["steps"]), 0)
    R, Z = r_z_images()
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(draws):
        t = torch.randint(0, cfg["steps"], (n_val,), generator=g)
        eps = torch.randn(x.shape, generator=g)
        s = 0.0
        for i in range(0, n_val, batch):
            sl = slice(i, i + batch)
            sa, sm = ab[t[sl]].sqrt().view(-1, 1, 1, 1, 1), (1 - ab[t[sl]]).sqrt()
            xt = sa * x[sl] + sm.view(-1, 1, 1, 1, 1) * eps[sl]
            pred = net(inputs(xt, R, Z), sm.view(-1, 1), e[sl].view(-1, 1))
            s += float(((pred - eps[sl]) ** 2).sum())
        losses.append(s / eps.numel())
    return n_val, losses


@torch.no_grad()
def generate(net, cfg, e_mev, steps, seed, batch):
    """CaloDiffu.Sample ('ddpm') and utils.ReverseNorm + the cut, as the reference."""
    b = cosine_beta_schedule(steps)
    a = 1.0 - b
    ab = torch.cumprod(a, 0)
    R, Z = r_z_images()
    tr = cfg["transform"]
    g = torch.Generator().manual_seed(seed)
    out = []
    t0 = time.time()
    for i in range(0, len(e_mev), batch):
        eg = torch.from_numpy(e_mev[i:i + batch].astype(np.float32)).view(-1, 1) / 1000.0
        cond = torch.log10(eg / REF["EMIN"]) / math.log10(REF["EMAX"] / REF["EMIN"])
        x = torch.randn((len(eg), 1, 45, 16, 9), generator=g)
        for t in reversed(range(steps - cfg.get("skip", 2))):
            sig = torch.full((len(eg), 1), float((1 - ab[t]).sqrt()))
            eps = net(inputs(x, R, Z), sig, cond)
            x = (x - b[t] / (1 - ab[t]).sqrt() * eps) / a[t].sqrt()
            if t > 0:
                var = b[t] * (1 - ab[t - 1]) / (1 - ab[t])
                x = x + var.sqrt() * torch.randn(x.shape, generator=g)
        y = torch.sigmoid(x * tr["logit_std"] + tr["logit_mean"])
        y = (y - tr["alpha"]) / (1 - 2 * tr["alpha"]) * tr["max_dep"] * eg.view(-1, 1, 1, 1, 1)
        y[y < tr["cut_mev"] / 1000.0] = 0
        out.append((y * 1000.0).reshape(len(eg), -1).numpy())
        done = i + len(eg)
        eta = (time.time() - t0) / done * (len(e_mev) - done)
        print(f"  {done} / {len(e_mev)} showers, ETA {eta:.0f} s", file=sys.stderr)
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the model's training file")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--generate", type=int, default=0)
    ap.add_argument("--energies-from")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, net = load(a.model)
    with open(os.path.join(a.model, "model_card.json")) as f:
        card = json.load(f)
    t0 = time.time()
    if a.draws > 0:
        n_val, losses = validation_loss(net, cfg, a.data, a.draws, a.batch, a.seed)
        print(f"validation loss over the last {n_val} showers of {a.data}, the reference's "
              f"network and schedule in PyTorch with caloforge's weights ({a.draws} draws): "
              + ", ".join(f"{v:.4f}" for v in losses)
              + f"; mean {np.mean(losses):.4f}; caloforge's model card: best "
              f"{min(card.get('val_loss') or [float('nan')]):.4f} ({time.time() - t0:.0f} s)")
    if a.generate:
        if not (a.energies_from and a.out):
            raise SystemExit("--generate needs --energies-from and --out")
        with h5py.File(a.energies_from, "r") as f:
            e = f["incident_energies"][:a.generate].reshape(-1)
        t0 = time.time()
        showers = generate(net, cfg, e, a.steps, a.seed, a.batch)
        with h5py.File(a.out, "w") as f:
            f.create_dataset("incident_energies", data=e.reshape(-1, 1).astype(np.float32))
            f.create_dataset("showers", data=showers.astype(np.float32))
        ratio = showers.sum(1) / e
        print(f"wrote {a.out}: {len(e)} showers, {a.steps}-step DDPM, "
              f"{(time.time() - t0) / len(e) * 1000:.0f} ms per shower; mean E_tot/E_inc "
              f"{ratio.mean():.4f}, {np.mean(ratio > 2) * 100:.1f} % with E_tot > 2 E_inc, "
              f"{np.mean((showers > e[:, None]).any(1)) * 100:.1f} % with a voxel above E_inc")


if __name__ == "__main__":
    main()
