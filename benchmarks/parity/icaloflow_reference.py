#!/usr/bin/env python3
"""The iCaloFlow reference Flow-1 teacher, rewritten from claudius-krause/inductive-caloflow
(commit 328ae2a: run.py `build_flow`, `train_eval_flow_1`; data.py `CaloDataset`) for the
parity harness: it trains on the same CaloChallenge file, with the same split, batch size,
optimizer steps and schedule as `caloforge train --flows 1` with a caloforge preset, and writes
its validation history as JSON.

What is the reference's, as coded there:
- nflows 0.14 `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` x 8 (8 bins, tail bound
  14, linear tails, min sizes 1e-6, ReLU, no residual blocks, no batch norm, dropout 0; the MADE
  of `nflows.transforms.made`, whose widths and heights are NOT divided by sqrt(hidden)),
  alternating ReversePermutation / RandomPermutation with the last permutation removed,
  StandardNormal base; float64 (run.py sets the default dtype to float64);
- features logit(ALPHA + (1 - 2 ALPHA) (E_layer + U(0, noise)) / 6.5e4), ALPHA = 1e-6, the noise
  drawn afresh for every sample of every batch; context log10(E_inc) - 4.5;
- Adam (default betas, eps 1e-8), torch OneCycleLR stepped per batch, with its beta1 cycling
  (cycle_momentum=True, 0.85-0.95), shuffled mini-batches; loss = mean NLL;
- train on the first (1 - validation_fraction) of the file, validate on the rest.

Differences, all shared with caloforge so that the two are compared on equal terms:
- layer energies above the normalisation (possible above ~700 GeV) are clamped to it before the
  logit (the reference would produce NaN there);
- the validation set is at most `max_validation_samples` showers with noise drawn once (seeded);
  the reference redraws it at every evaluation;
- the permutations and the initial weights come from `--seed`.

usage: icaloflow_reference.py --data F.h5 --preset P.toml --seed S --out H.json [--threads 1]
       [--no-momentum-cycle] [--dtype float32]
needs: torch, nflows, h5py, numpy
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
from nflows import distributions, flows, transforms

ALPHA = 1e-6


def build_flow(features, context, hidden, n_hidden, blocks, bins, tail_bound):
    layers = []
    for i in range(blocks):
        layers.append(transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features=features, context_features=context, hidden_features=hidden,
            num_blocks=n_hidden, use_residual_blocks=False, use_batch_norm=False,
            dropout_probability=0.0, activation=torch.nn.functional.relu, random_mask=False,
            num_bins=bins, tails="linear", tail_bound=tail_bound,
            min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6))
        layers.append(transforms.ReversePermutation(features) if i % 2 == 0
                      else transforms.RandomPermutation(features))
    del layers[-1]
    return flows.Flow(transforms.CompositeTransform(layers),
                      distributions.StandardNormal([features]))


def logit(x):
    x = ALPHA + (1 - 2 * ALPHA) * x
    return torch.log(x / (1 - x))


def features(e_layer, e_inc, cfg, gen, dtype):
    """Noisy, normalised, logit'ed layer energies and the context of rows `e_layer` (N, 45)."""
    noise = torch.rand(e_layer.shape, generator=gen, dtype=torch.float64) * cfg["noise_level"]
    e = torch.clamp((e_layer + noise) / cfg["normalization"], max=1.0)
    return logit(e).to(dtype), (torch.log10(e_inc) - 4.5).to(dtype)


def schedule(opt, sched, total_steps, momentum):
    kind = sched["type"]
    if kind != "one_cycle":
        raise SystemExit(f"schedule {kind}: only one_cycle is rewritten here")
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=sched["max_lr"], total_steps=sched.get("total_steps") or total_steps,
        pct_start=sched.get("pct_start", 0.3), anneal_strategy="cos",
        cycle_momentum=momentum, base_momentum=0.85, max_momentum=0.95,
        div_factor=sched.get("div_factor", 25.0),
        final_div_factor=sched.get("final_div_factor", 1e4),
        three_phase=sched.get("three_phase", False))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-momentum-cycle", action="store_true")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    fc, tc = cfg["flow1"], cfg["flow1"]["train"]

    with h5py.File(a.data, "r") as f:
        showers = f["showers"][:]
        e_inc = torch.from_numpy(f["incident_energies"][:].reshape(-1, 1).astype(np.float64))
    n = len(showers)
    e_layer = torch.from_numpy(showers.reshape(n, 45, -1).astype(np.float64).sum(-1))
    del showers
    n_val = min(max(round(n * cfg["validation_fraction"]), 1), n - 1)
    n_train = n - n_val
    gen = torch.Generator().manual_seed(a.seed + 1000)
    val_rows = torch.arange(n_train, n)
    if len(val_rows) > cfg["max_validation_samples"]:
        val_rows = val_rows[torch.randperm(len(val_rows), generator=gen)[: cfg["max_validation_samples"]]]
        val_rows = val_rows.sort().values
    xv, cv = features(e_layer[val_rows], e_inc[val_rows], cfg, gen, dtype)

    flow = build_flow(45, 1, fc["hidden"], fc["n_hidden"], fc["blocks"], fc["bins"],
                      fc["tail_bound"]).to(dtype)
    batch, epochs = tc["batch_size"], tc["epochs"]
    steps_per_epoch = math.ceil(n_train / batch)
    total = steps_per_epoch * epochs
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    lr = schedule(opt, tc["schedule"], total, not a.no_momentum_cycle)
    eval_every = tc.get("eval_every", 0) or steps_per_epoch

    @torch.no_grad()
    def validate():
        flow.eval()
        nll = -torch.cat([flow.log_prob(xv[i:i + 5000], cv[i:i + 5000])
                          for i in range(0, len(xv), 5000)]).mean().item()
        flow.train()
        return nll

    history = [{"step": 0, "val_loss": validate()}]
    step, t0, run = 0, time.time(), 0.0
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for b in range(steps_per_epoch):
            rows = order[b * batch:(b + 1) * batch]
            x, c = features(e_layer[rows], e_inc[rows], cfg, gen, dtype)
            loss = -flow.log_prob(x, c).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr.step()
            step += 1
            run += loss.item()
            if step % eval_every == 0 or step == total:
                history.append({"step": step, "train_loss": run / eval_every,
                                "val_loss": validate()})
                run = 0.0
                el = time.time() - t0
                print(f"\rreference seed {a.seed}: step {step}/{total}, validation NLL "
                      f"{history[-1]['val_loss']:.3f}, ETA {el / step * (total - step):.0f} s",
                      end="", file=sys.stderr, flush=True)
    wall = time.time() - t0
    best = min(h["val_loss"] for h in history)
    json.dump({"implementation": "reference (PyTorch + nflows)", "seed": a.seed,
               "dtype": a.dtype, "momentum_cycle": not a.no_momentum_cycle,
               "steps": step, "seconds_per_step": wall / max(step, 1),
               "best_val_loss": best, "history": history}, open(a.out, "w"), indent=1)
    print(file=sys.stderr)
    print(f"reference seed {a.seed}: best validation NLL {best:.3f} after {step} steps "
          f"({wall / max(step, 1) * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
