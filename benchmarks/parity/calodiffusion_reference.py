#!/usr/bin/env python3
"""The CaloDiffusion reference training for dataset 2, rewritten from OzAmram/CaloDiffusionPaper
(commit dba6640, the paper's frozen code: scripts/train_diffu.py, CaloDiffu.py, models.py,
utils.py, consts.py, configs/config_dataset2.json) for the parity harness: it trains the paper's
denoiser on the same simulator file, with the same train/validation split, batch size and
number of optimizer steps as `caloforge train --preset P` with a caloforge calodiffusion preset,
and writes its validation curve as JSON (read by compare.py).
(OzAmram/CaloDiffusion HEAD is "CaloDiffusion 2.0": per-layer logit, a layer-energy model,
EDM-style log-sigma noise and x0 preconditioning for dataset 2; not what caloforge implements.)

What is the reference's, as coded there:
- data (utils.DataLoader / preprocess_shower, 'logit-norm'), in float32 as there: voxels and
  E_inc divided by 1000 (GeV), x = voxel / (MAXDEP 2 * E_inc), logit of 1e-6 + (1 - 2e-6) x with
  np.ma.log(...).filled(0) (an invalid logit, x > 1, becomes 0), standardised with consts.py's
  dataset-2 constants (mean -12.8564, std 1.9123); E = log10(E_inc / 1 GeV) / log10(1000);
- the network: CondUnet(cond_dim 128, layer sizes from the preset = [16, 16, 16, 32], GroupNorm
  groups from the preset = 8, cylindrical, compress_Z, block and mid attention; TIME_EMBED
  'sigma', COND_EMBED 'id'), i.e. benchmarks/calodiffusion_torch.py `UNet` (same layer list,
  517 969 parameters, PyTorch default initialisation); 3 input channels in the reference's
  order [x, R, Z] with its images (utils.create_R_Z_image): R = r-bin centre / last r-bin
  centre = (r + 0.5) / 8.5, Z = layer / 45;
- the schedule (models.cosine_beta_schedule, computed in float32 as there): T = preset `steps`
  (400), s = 0.008, betas = 1 - abar(t+1)/abar(t) clipped to [1e-4, 0.9999]; network time
  input sigma_t = sqrt(1 - alphas_cumprod[t]);
- the loss (CaloDiffu.compute_loss, 'noise_pred', 'l2'): t ~ U{0..T-1} per shower,
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, MSE(eps_hat, eps) averaged over all voxels;
  including the reference's quirk in CaloDiffu.noise_image: `if t[0] <= 0: return data`, i.e.
  when the FIRST shower of a batch draws t = 0, the whole batch goes in un-noised (with the
  noise still the target); --no-t0-quirk turns it off;
- Adam (torch defaults: betas 0.9/0.999, eps 1e-8) at the preset's lr (4e-4), shuffled
  mini-batches of the preset's batch size, the last one partial (DataLoader drop_last=False);
  ReduceLROnPlateau(factor 0.1, patience 15) stepped once per epoch on the epoch's mean TRAINING
  loss (as train_diffu.py; the validation-loss line is commented out there), --no-plateau turns
  it off; it cannot act before epoch 17.

Differences from the reference, all so that the two numbers are comparable with caloforge's:
- the split: caloforge's (the first n - round(validation_fraction * n) showers of the file train,
  the rest validate); the reference draws a random 85 / 15 split (random_split, --frac 0.85);
- the validation loss is caloforge's (calodiffusion.rs `DiffusionTask::validate`): one t and one
  noise image per validation shower, drawn ONCE for the run (seeded) and reused at every
  evaluation, plain q_sample (no t[0] quirk), the epsilon MSE averaged over every voxel of every
  validation shower (chunks of the batch size weighted by their size); evaluated after every
  epoch (and at the end of a --steps run), not at step 0 in the history (caloforge's model card
  drops its step-0 value; ours is kept as "val_loss_step0"). The reference instead draws t and
  noise afresh at every evaluation, applies the t[0] quirk, and averages the per-batch means of
  shuffled batches of 128 (the last, smaller batch weighted as a full one);
  --reference-validation also records that number ("reference_val_loss");
- no early stopping (train_diffu.py's EarlyStopper(patience 20, mode 'diff') stops after 20
  consecutive epochs with validation >= training loss; caloforge runs every epoch and keeps the
  best validation epoch, as the reference's best_val.pth);
- the seed: initial weights from torch.manual_seed(--seed); shuffles and noise from a generator
  seeded with --seed; the validation draws from one seeded with --seed + 1000 (caloforge draws
  its own from its seed, so the two sides never share draws: compare seed distributions).

usage: calodiffusion_reference.py --data F.h5 --preset P.toml --seed S --out H.json [--threads 1]
       [--epochs E] [--batch B] [--steps K] [--max-showers M] [--no-plateau] [--no-t0-quirk]
       [--reference-validation] [--save-model W.pt]
  --epochs / --batch override the preset's (the harness writes them into the preset so that
  caloforge gets the same); --steps K stops after K optimizer steps (smoke tests; validated at
  the end); --max-showers M uses the first M showers of the file (caloforge's --max-showers).
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
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from calodiffusion_torch import UNet  # noqa: E402

# configs/config_dataset2.json and consts.py (dataset 2), as coded in the reference.
REF = {"MAXDEP": 2.0, "EMIN": 1.0, "EMAX": 1000.0, "ALPHA": 1e-6,
       "logit_mean": -12.8564, "logit_std": 1.9123}
R_BINS = [0, 4.65, 9.3, 13.95, 18.6, 23.25, 27.9, 32.55, 37.2, 41.85]


def preprocess(showers_mev, e_mev):
    """utils.DataLoader + preprocess_shower('logit-norm'), float32 as there."""
    e = e_mev.astype(np.float32).reshape(-1, 1) / 1000.0
    shower = showers_mev.astype(np.float32) / 1000.0
    shower = shower / (REF["MAXDEP"] * e)
    a = REF["ALPHA"]
    x = a + (1 - 2 * a) * shower
    with np.errstate(divide="ignore", invalid="ignore"):
        shower = np.ma.log(x / (1 - x)).filled(0)
    shower = ((shower - REF["logit_mean"]) / REF["logit_std"]).astype(np.float32)
    e_pre = (np.log10(e / REF["EMIN"]) / np.log10(REF["EMAX"] / REF["EMIN"])).astype(np.float32)
    return shower.reshape(-1, 1, 45, 16, 9), e_pre.reshape(-1)


def r_z_images():
    """utils.create_R_Z_image(scaled=True) for shape (1, 45, 16, 9): [1, 1, 45, 16, 9] each."""
    r_avgs = [(R_BINS[i] + R_BINS[i + 1]) / 2.0 for i in range(9)]
    R = torch.zeros(1, 45, 16, 9)
    Z = torch.zeros(1, 45, 16, 9)
    for z in range(45):
        Z[:, z] = z
    for r in range(9):
        R[:, :, :, r] = r_avgs[r]
    return (R / r_avgs[-1])[None], (Z / 45)[None]


def cosine_beta_schedule(nsteps, s=0.008):
    """models.cosine_beta_schedule (float32, as there)."""
    x = torch.linspace(0, nsteps, nsteps + 1)
    ac = torch.cos(((x / nsteps) + s) / (1 + s) * np.pi * 0.5) ** 2
    ac = ac / ac[0]
    return torch.clip(1 - (ac[1:] / ac[:-1]), 0.0001, 0.9999)


class Reference:
    def __init__(self, net, nsteps, sched):
        self.net = net
        betas = cosine_beta_schedule(nsteps, sched.get("s", 0.008))
        if (sched.get("min_beta", 1e-4), sched.get("max_beta", 0.9999)) != (1e-4, 0.9999):
            print("warning: the preset's beta clip differs from the reference's [1e-4, 0.9999]; "
                  "using the reference's", file=sys.stderr)
        abar = torch.cumprod(1.0 - betas, 0)
        self.nsteps = nsteps
        self.sqrt_ab = torch.sqrt(abar)
        self.sqrt_1m_ab = torch.sqrt(1.0 - abar)
        self.R, self.Z = r_z_images()

    def loss(self, x0, e, t, noise, quirk):
        """CaloDiffu.compute_loss ('noise_pred', 'l2'); `quirk`: noise_image's t[0] test."""
        if quirk and t[0] <= 0:
            xt = x0
        else:
            xt = (self.sqrt_ab[t].view(-1, 1, 1, 1, 1) * x0
                  + self.sqrt_1m_ab[t].view(-1, 1, 1, 1, 1) * noise)
        b = x0.shape[0]
        inp = torch.cat([xt, self.R.expand(b, -1, -1, -1, -1),
                         self.Z.expand(b, -1, -1, -1, -1)], 1)
        pred = self.net(inp, self.sqrt_1m_ab[t].view(-1, 1), e.view(-1, 1))
        return F.mse_loss(noise, pred)


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
    ap.add_argument("--no-plateau", action="store_true")
    ap.add_argument("--no-t0-quirk", action="store_true")
    ap.add_argument("--reference-validation", action="store_true",
                    help="also record the reference's own validation loss (random draws)")
    ap.add_argument("--save-model", help="write the best weights (torch state_dict) here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(a.threads)
    except RuntimeError:
        pass
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    if cfg.get("model") != "calodiffusion" or str(cfg.get("dataset")) != "2":
        raise SystemExit(f"{a.preset}: a calodiffusion preset of dataset 2 is needed")
    if cfg.get("objective", "noise_pred") != "noise_pred":
        raise SystemExit(f"{a.preset}: only the noise_pred objective (the paper's ds2) is rewritten")
    if cfg["schedule"]["type"] != "cosine":
        raise SystemExit(f"{a.preset}: only the cosine schedule (the paper's) is rewritten")
    if not cfg.get("block_attention", True):
        raise SystemExit(f"{a.preset}: the reference has block attention")
    tr = cfg.get("transform", {})
    ours = {"MAXDEP": tr.get("max_dep"), "EMIN": tr.get("e_min", 0) / 1e3,
            "EMAX": tr.get("e_max", 0) / 1e3, "ALPHA": tr.get("alpha"),
            "logit_mean": tr.get("logit_mean"), "logit_std": tr.get("logit_std")}
    if any(ours[k] is None or abs(ours[k] - v) > 1e-9 * abs(v) for k, v in REF.items()):
        print(f"warning: the preset's transform {ours} differs from the reference's {REF}; "
              "using the reference's", file=sys.stderr)
    batch = a.batch or cfg["batch_size"]
    epochs = a.epochs or cfg["epochs"]

    with h5py.File(a.data, "r") as f:
        m = len(f["incident_energies"]) if a.max_showers is None else a.max_showers
        showers = f["showers"][:m]
        e_inc = f["incident_energies"][:m]
    x_all, e_all = preprocess(showers, e_inc)
    del showers
    n = len(e_all)
    # caloforge: n_val = round(n * validation_fraction) (half away from zero), clamped to [1, n-1].
    n_val = min(max(math.floor(n * cfg["validation_fraction"] + 0.5), 1), n - 1)
    n_train = n - n_val
    x_tr, e_tr = torch.from_numpy(x_all[:n_train]), torch.from_numpy(e_all[:n_train])
    x_va, e_va = torch.from_numpy(x_all[n_train:]), torch.from_numpy(e_all[n_train:])

    torch.manual_seed(a.seed)
    net = UNet(sizes=tuple(cfg["layer_sizes"]), groups=cfg["groups"]).train()
    n_params = sum(p.numel() for p in net.parameters())
    ref = Reference(net, cfg["steps"], cfg["schedule"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    plateau = None if a.no_plateau else torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.1, patience=15)
    gen = torch.Generator().manual_seed(a.seed)
    vgen = torch.Generator().manual_seed(a.seed + 1000)
    # caloforge's validation draws: one t and one noise image per validation shower, fixed.
    val_t = torch.randint(0, cfg["steps"], (n_val,), generator=vgen)
    val_eps = torch.randn(x_va.shape, generator=vgen)
    rgen = torch.Generator().manual_seed(a.seed + 2000)

    @torch.no_grad()
    def validate():
        net.eval()
        tot = 0.0
        for i in range(0, n_val, batch):
            j = min(i + batch, n_val)
            tot += ref.loss(x_va[i:j], e_va[i:j], val_t[i:j], val_eps[i:j], False).item() * (j - i)
        net.train()
        return tot / n_val

    @torch.no_grad()
    def validate_reference():
        """train_diffu.py's own: shuffled batches of `batch`, fresh t and noise, the t[0]
        quirk, the mean of the per-batch means."""
        net.eval()
        order = torch.randperm(n_val, generator=rgen)
        vals = []
        for i in range(0, n_val, batch):
            rows = order[i:i + batch]
            t = torch.randint(0, cfg["steps"], (len(rows),), generator=rgen)
            noise = torch.randn(x_va[rows].shape, generator=rgen)
            vals.append(ref.loss(x_va[rows], e_va[rows], t, noise, True).item())
        net.train()
        return float(np.mean(vals))

    spe = math.ceil(n_train / batch)
    total = spe * epochs if a.steps is None else a.steps
    epochs = math.ceil(total / spe)
    print(f"reference seed {a.seed}: {n_params} parameters, {n_train} training / {n_val} "
          f"validation showers, batch {batch}, {total} steps ({spe} per epoch)", file=sys.stderr)
    v0 = validate()
    history, best_val, best_state = [], math.inf, None
    lrs, quirk_batches = [], 0
    step, t0 = 0, time.time()
    for ep in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        run, nb = 0.0, 0
        for b in range(spe):
            if step >= total:
                break
            rows = order[b * batch:(b + 1) * batch]
            x0, e = x_tr[rows], e_tr[rows]
            t = torch.randint(0, cfg["steps"], (len(rows),), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            quirk_batches += int(not a.no_t0_quirk and t[0].item() == 0)
            opt.zero_grad()
            loss = ref.loss(x0, e, t, noise, not a.no_t0_quirk)
            loss.backward()
            opt.step()
            step += 1
            run += loss.item()
            nb += 1
        point = {"step": step, "epoch": ep + 1, "train_loss": run / max(nb, 1),
                 "val_loss": validate(), "lr": opt.param_groups[0]["lr"]}
        if a.reference_validation:
            point["reference_val_loss"] = validate_reference()
        history.append(point)
        if point["val_loss"] < best_val:
            best_val = point["val_loss"]
            if a.save_model:
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
        if plateau is not None and nb == spe:
            plateau.step(point["train_loss"])
        lrs.append(opt.param_groups[0]["lr"])
        el = time.time() - t0
        print(f"\rreference seed {a.seed}: step {step}/{total}, validation loss "
              f"{point['val_loss']:.4f}, ETA {el / step * (total - step):.0f} s",
              end="", file=sys.stderr, flush=True)
    wall = time.time() - t0
    if a.save_model:
        torch.save(best_state or net.state_dict(), a.save_model)
    json.dump({"implementation": "reference (PyTorch rewrite of OzAmram/CaloDiffusionPaper)",
               "model": "calodiffusion", "seed": a.seed, "data": a.data, "preset": a.preset,
               "n_train": n_train, "n_validation": n_val, "batch_size": batch,
               "parameters": n_params, "steps": step, "epochs": len(history),
               "t0_quirk": not a.no_t0_quirk, "t0_quirk_batches": quirk_batches,
               "plateau": not a.no_plateau, "torch": torch.__version__, "threads": a.threads,
               "seconds": wall, "seconds_per_step": wall / max(step, 1),
               "val_loss_step0": v0, "best_val_loss": best_val, "history": history},
              open(a.out, "w"), indent=1)
    print(file=sys.stderr)
    print(f"reference seed {a.seed}: best validation loss {best_val:.4f} after {step} steps "
          f"({wall / max(step, 1):.2f} s/step; step-0 validation loss {v0:.4f})")


if __name__ == "__main__":
    main()
