"""Trains the AllShowers transformer in PyTorch the way the reference does, on a ShowerData file,
for the parity runs of benchmarks/allshowers/parity.sh (caloforge trains the same network on the
same file with the same batch size and number of optimizer steps).

The network and loss are reference.py's (rewritten from FLC-QU-hep/AllShowers 8bd0745). The
training follows the reference's train.py and conf/transformer.yaml: RangerLite (RAdam with
decoupled weight decay 1e-2, betas (0.95, 0.999), eps 1e-5, then Lookahead every 6 steps with
alpha 0.5; written out here because the `rangerlite` package is not installed), CosineAnnealingLR
with T_max = epochs stepped once per epoch, clip_grad_norm_ 0.2, t ~ U(0, 1) per shower, and
noise matched to each shower's points layer by layer by exact optimal transport (Euclidean
cost), drawn once when the data are prepared. The loss is reduced as the reference's: per
shower over its points padded to the file's largest shower, then over the batch.

The preprocessing is caloforge's AllShowers preprocessing (the reference's transforms): x and y
standardised, log E standardised, the condition [standardised log E_inc, direction], the
particle's index in the model's particle list, the raw per-layer point counts. The training
set is the file's first N − V showers, the validation set its last V; the validation loss is
the mean over validation showers at one fixed t per shower (seeded).

    python3 train_reference.py --data F.h5 --validation 400 --epochs 3 --batch 32 --seed 1 \
        --particles 11,-11,22,211,-211 --out curve.json
"""
import argparse
import json
import math
import time

import h5py
import numpy as np
import torch

from reference import Transformer, cfm_loss, time_features  # noqa: F401


def hungarian(cost):
    """Exact minimum-cost assignment of a square matrix (shortest augmenting paths with
    potentials, vectorised over columns): row i gets column result[i]."""
    n = cost.shape[0]
    inf = np.inf
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    p = np.zeros(n + 1, dtype=np.int64)
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(n + 1, inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    result = np.zeros(n, dtype=np.int64)
    for j in range(1, n + 1):
        result[p[j] - 1] = j - 1
    return result


def standardiser(values):
    values = np.asarray(values, dtype=np.float64)
    sd = values.std(ddof=1) if len(values) > 1 else 1.0
    return float(values.mean()), float(sd if sd > 0 else 1.0)


def prepare(path, validation, particles, layers, seed):
    with h5py.File(path, "r") as f:
        raw = [np.asarray(s, dtype=np.float32).reshape(-1, 4) for s in f["showers"][:]]
        energies = f["energies"][:].reshape(-1).astype(np.float64)
        directions = f["directions"][:].astype(np.float64)
        pdg = f["pdg"][:].reshape(-1)
    n = len(raw)
    n_val = min(validation, n // 2)
    n_train = n - n_val
    showers = []
    for s in raw:
        s = s[s[:, 3] > 0]
        layer = np.floor(s[:, 2] + 0.1).astype(np.int64)
        order = np.argsort(layer, kind="stable")
        showers.append((s[order], layer[order]))
    fit = showers[:n_train]
    allp = np.concatenate([s for s, _ in fit])
    coord = [standardiser(allp[:, 0]), standardiser(allp[:, 1])]
    log_e = standardiser(np.log(allp[:, 3]))
    log_e_inc = standardiser(np.log(energies[:n_train]))
    max_points = max(len(s) for s, _ in showers)
    data = []
    rng = np.random.default_rng(seed ^ 0x07A11)
    for i, (s, layer) in enumerate(showers):
        x = np.stack(
            [
                (s[:, 0] - coord[0][0]) / coord[0][1],
                (s[:, 1] - coord[1][0]) / coord[1][1],
                (np.log(s[:, 3]) - log_e[0]) / log_e[1],
            ],
            axis=1,
        ).astype(np.float32)
        z = rng.standard_normal(x.shape).astype(np.float32)
        matched = z.copy()
        for lv in np.unique(layer):
            idx = np.nonzero(layer == lv)[0]
            if len(idx) > 1:
                a, b = x[idx].astype(np.float64), z[idx].astype(np.float64)
                cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
                matched[idx] = z[idx][hungarian(cost)]
        counts = np.bincount(layer, minlength=layers).astype(np.float32)
        cond = np.array(
            [(math.log(energies[i]) - log_e_inc[0]) / log_e_inc[1], *directions[i]],
            dtype=np.float32,
        )
        data.append((x, matched, layer, counts, cond, particles.index(int(pdg[i]))))
    return data, n_train, max_points


def batch(data, idx, max_points):
    b = len(idx)
    p = max(len(data[i][0]) for i in idx)
    x = torch.zeros(b, p, 3)
    z = torch.zeros(b, p, 3)
    layer = torch.zeros(b, p, 1, dtype=torch.long)
    padding = torch.zeros(b, p, dtype=torch.bool)
    for k, i in enumerate(idx):
        n = len(data[i][0])
        x[k, :n] = torch.from_numpy(data[i][0])
        z[k, :n] = torch.from_numpy(data[i][1])
        layer[k, :n, 0] = torch.from_numpy(data[i][2])
        padding[k, :n] = True
    counts = torch.from_numpy(np.stack([data[i][3] for i in idx]))
    cond = torch.from_numpy(np.stack([data[i][4] for i in idx]))
    label = torch.tensor([data[i][5] for i in idx])
    return x, z, layer, padding, counts, cond, label, p


def loss_of(net, data, idx, t, max_points):
    x, z, layer, padding, counts, cond, label, p = batch(data, idx, max_points)
    # cfm_loss averages over the batch's padded p points; the reference pads to max_points.
    return cfm_loss(net, x, z, t, cond, counts, layer, padding, label) * (p / max_points)


class RangerLite(torch.optim.RAdam):
    """rangerlite 1.0's RangerLite: RAdam (decoupled weight decay), then Lookahead."""

    def __init__(self, params, lr, weight_decay, k=6, alpha=0.5):
        super().__init__(params, lr=lr, betas=(0.95, 0.999), eps=1e-5,
                         weight_decay=weight_decay, decoupled_weight_decay=True)
        self.k, self.alpha = k, alpha
        self.slow = [[q.detach().clone() for q in g["params"]] for g in self.param_groups]

    def step(self, closure=None):
        loss = super().step(closure)
        for g, slows in zip(self.param_groups, self.slow):
            for q, s in zip(g["params"], slows):
                if q.grad is None:
                    continue
                if int(self.state[q]["step"].item() + 0.1) % self.k == 0:
                    q.data.mul_(self.alpha).add_(s, alpha=1.0 - self.alpha)
                    s.copy_(q.data)
        return loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--validation", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--particles", default="11,-11,22,211,-211")
    ap.add_argument("--layers", type=int, default=78)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dump", help="directory for a replay of this run (replay.py): the initial "
                    "weights, the prepared showers and matched noise, every step's showers, "
                    "times, learning rate and loss, the validation times and losses")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    particles = [int(v) for v in a.particles.split(",")]
    t0 = time.perf_counter()
    data, n_train, max_points = prepare(a.data, a.validation, particles, a.layers, a.seed)
    prep_s = time.perf_counter() - t0
    net = Transformer(dim_inputs=(3, 6, 4), dim_embedding=64, num_head=4, num_blocks=4,
                      num_layers=a.layers, dim_feedforward=256, num_points_cond=512,
                      num_layer_cond=4, num_particles=len(particles))
    opt = RangerLite(net.parameters(), lr=a.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs)
    gen = torch.Generator().manual_seed(a.seed ^ 0x7A1)
    val_idx = list(range(n_train, len(data)))
    val_t = torch.rand(len(val_idx), generator=gen)

    def validate():
        net.eval()
        total = 0.0
        with torch.no_grad():
            for s in range(0, len(val_idx), a.batch):
                idx = val_idx[s:s + a.batch]
                total += float(loss_of(net, data, idx, val_t[s:s + a.batch], max_points)) * len(idx)
        net.train()
        return total / len(val_idx)

    init = {k: {"shape": list(v.shape), "values": v.flatten().tolist()}
            for k, v in net.state_dict().items()} if a.dump else None
    steps = []
    history = [{"step": 0, "val_loss": validate()}]
    step, train_s = 0, 0.0
    for epoch in range(a.epochs):
        order = torch.randperm(n_train, generator=gen).tolist()
        losses = []
        for s in range(0, n_train, a.batch):
            idx = order[s:s + a.batch]
            ts = time.perf_counter()
            t = torch.rand(len(idx), generator=gen)
            loss = loss_of(net, data, idx, t, max_points)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.2)
            opt.step()
            train_s += time.perf_counter() - ts
            losses.append(float(loss))
            if a.dump:
                steps.append({"idx": idx, "t": t.tolist(), "lr": opt.param_groups[0]["lr"],
                              "loss": float(loss)})
            step += 1
        sched.step()
        history.append({"step": step, "train_loss": float(np.mean(losses)), "val_loss": validate()})
        print(json.dumps(history[-1]), flush=True)
    doc = {
        "torch": torch.__version__, "threads": a.threads, "seed": a.seed, "data": a.data,
        "n_train": n_train, "n_validation": len(val_idx), "batch": a.batch, "epochs": a.epochs,
        "steps": step, "seconds_per_step": train_s / max(step, 1), "prepare_seconds": prep_s,
        "history": history, "best_val_loss": min(h["val_loss"] for h in history),
    }
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1)
    if a.dump:
        dump(a, data, n_train, max_points, init, steps, val_t, history, len(particles))


def dump(a, data, n_train, max_points, init, steps, val_t, history, particles):
    """The replay of this run: replay.json and points.f32 (per shower its standardised points,
    then their matched noise, n × 3 each, little-endian float32)."""
    import os
    os.makedirs(a.dump, exist_ok=True)
    with open(os.path.join(a.dump, "points.f32"), "wb") as fh:
        for x, z, *_ in data:
            fh.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
            fh.write(np.ascontiguousarray(z, dtype="<f4").tobytes())
    doc = {
        "layers": a.layers, "particles": particles, "max_points": max_points,
        "n_train": n_train, "batch": a.batch, "epochs": a.epochs, "clip": 0.2,
        "weight_decay": 1e-2, "init": init,
        "showers": [{"n": len(x), "layer": layer.tolist(), "counts": counts.tolist(),
                     "cond": cond.tolist(), "label": label}
                    for x, _, layer, counts, cond, label in data],
        "steps": steps, "val_t": val_t.tolist(),
        "val_losses": [h["val_loss"] for h in history],
        "steps_per_epoch": len(steps) // a.epochs,
    }
    with open(os.path.join(a.dump, "replay.json"), "w") as fh:
        json.dump(doc, fh)


if __name__ == "__main__":
    main()
