#!/usr/bin/env python3
"""The iCaloFlow reference teachers (Flow-1, Flow-2, Flow-3), rewritten from
claudius-krause/inductive-caloflow (commit 328ae2a: run.py `build_flow`, `train_eval_flow_{1,2,3}`;
data.py `CaloDataLayerEnergy`, `CaloDataShowerShape`) for the parity harness: it trains one flow
on the same CaloChallenge file, with the same split, batch size, optimizer steps and schedule as
`caloforge train --flows K` with a caloforge preset, and writes its validation history as JSON.

What is the reference's, as coded there:
- nflows 0.14 `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` x 8 (8 bins, tail bound
  14, linear tails, min sizes 1e-6, ReLU, no residual blocks, no batch norm, dropout 0; the MADE
  of `nflows.transforms.made`, whose widths and heights are NOT divided by sqrt(hidden)),
  alternating ReversePermutation / RandomPermutation with the last permutation removed,
  StandardNormal base; float64 (run.py sets the default dtype to float64);
- Flow-1: features logit(ALPHA + (1 - 2 ALPHA) (E_layer + U(0, noise)) / 6.5e4), ALPHA = 1e-6,
  the noise drawn afresh for every sample of every batch; context log10(E_inc) - 4.5;
- Flow-2 (layer 0) and Flow-3 (layers 1..44, shuffled together): U(0, noise) on every voxel, the
  layer normalised to sum 1, logit; Flow-2's context (log10 E_inc - 4.5, logit(E_0 / 6.5e4) / 4),
  Flow-3's (log10 E_inc - 4.5, logit(E_i / 6.5e4), logit(E_{i-1} / 6.5e4), the previous layer's
  features, one-hot(i - 1) of 44), every energy with its own fresh noise;
- Adam (default betas, eps 1e-8), torch OneCycleLR stepped per batch, with its beta1 cycling
  (cycle_momentum=True, 0.85-0.95), shuffled mini-batches; loss = mean NLL;
- train on the first (1 - validation_fraction) of the file, validate on the rest.

Differences, all shared with caloforge so that the two are compared on equal terms:
- layer energies above the normalisation (possible above ~700 GeV) are clamped to it before the
  logit (the reference would produce NaN there);
- the validation set is at most `max_validation_samples` samples with noise drawn once (seeded);
  the reference redraws it at every evaluation;
- the permutations and the initial weights come from `--seed`.

Student mode (--student-of FLOWK.safetensors, a caloforge MAF teacher converted to nflows: same
MADE weights and permutations): run.py `build_flow_student` and `train_flow_{2,3}_student`:
IAF blocks (`IAFRQS`, the MAF-RQS with its elementwise directions swapped, wrapped in
`InverseTransform`) with the teacher's permutations; loss (1 - beta) z-pass + beta x-pass of
`chi2_loss` terms (sum over features, batch mean) on the output, every state after every
transform and every MADE output (`GuidedCompositeTransform`, `return_steps`, `return_p`); the
preset's student schedule (OneCycle with its beta1 range). Validation: chi2 of the student's x
for the teacher's z of the held-out samples (caloforge's); the reference's own selection uses
the KL of training batches.

usage: icaloflow_reference.py [--flow K] --data F.h5 --preset P.toml --seed S --out H.json [--threads 1]
       [--no-momentum-cycle] [--dtype float32] [--save-model W.pt] [--student-of FLOWK.safetensors]
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

from caloforge_files import read_safetensors

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


class IAFRQS(transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform):
    """run.py's IAF block: the MAF-RQS with its elementwise directions swapped."""

    def _elementwise_forward(self, inputs, autoregressive_params):
        return self._elementwise(inputs, autoregressive_params, inverse=True)

    def _elementwise_inverse(self, inputs, autoregressive_params):
        return self._elementwise(inputs, autoregressive_params)


def build_student(teacher, features, context, hidden, n_hidden, blocks, bins, tail_bound):
    """run.py `build_flow_student`: IAF blocks, the teacher's permutations."""
    perms = [t._permutation.clone() for t in teacher._transform._transforms
             if hasattr(t, "_permutation")]
    perms.append(perms[-1])
    layers = []
    for i in range(blocks):
        layers.append(transforms.InverseTransform(IAFRQS(
            features=features, context_features=context, hidden_features=hidden,
            num_blocks=n_hidden, use_residual_blocks=False, use_batch_norm=False,
            dropout_probability=0.0, activation=torch.nn.functional.relu, random_mask=False,
            num_bins=bins, tails="linear", tail_bound=tail_bound,
            min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6)))
        layers.append(transforms.ReversePermutation(features) if i % 2 == 0
                      else transforms.Permutation(perms[i]))
    del layers[-1]
    return flows.Flow(transforms.CompositeTransform(layers),
                      distributions.StandardNormal([features]))


def guided(flow, inputs, context, direction):
    """run.py `GuidedCompositeTransform._cascade(return_steps=True, return_p=True)`: the output,
    the state after every transform (permutations included) and every block's MADE output
    (an IAF block's from its input in the inverse direction, a MAF block's from its input in
    the forward direction)."""
    ts = list(flow._transform._transforms)
    if direction == "inverse":
        ts = ts[::-1]
    out, steps, ps = inputs, [inputs], []
    for t in ts:
        func = t.forward if direction == "forward" else t.inverse
        if isinstance(t, transforms.InverseTransform):
            if direction == "forward":
                out, _ = func(out, context)
                ps.append(t._transform.autoregressive_net(out, context))
            else:
                ps.append(t._transform.autoregressive_net(out, context))
                out, _ = func(out, context)
        elif hasattr(t, "autoregressive_net"):
            if direction == "forward":
                ps.append(t.autoregressive_net(out, context))
                out, _ = func(out, context)
            else:
                out, _ = func(out, context)
                ps.append(t.autoregressive_net(out, context))
        else:
            out, _ = func(out, context)
        steps.append(out)
    return out, steps, ps


def chi2(a, b):
    """run.py `chi2_loss`."""
    return ((a - b) ** 2).sum(dim=1).mean()


def student_loss(teacher, student, x, c, beta, gen):
    """run.py `train_flow_{2,3}_student`: (1 - beta) z-pass + beta x-pass, fully guided."""
    tz, st_t, p_t = guided(teacher, x, c, "forward")
    xs, st_s, p_s = guided(student, tz, c, "inverse")
    lx = chi2(xs, x)
    lx = lx + sum(chi2(s, st_t[-i - 1]) for i, s in enumerate(st_s))
    lx = lx + sum(chi2(p, p_t[-i - 1]) for i, p in enumerate(p_s))
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    pts, lst_s, lp_s = guided(student, noise, c, "inverse")
    tz2, lst_t, lp_t = guided(teacher, pts, c, "forward")
    lz = chi2(tz2, noise)
    lz = lz + sum(chi2(s, lst_t[-i - 1]) for i, s in enumerate(lst_s))
    lz = lz + sum(chi2(p, lp_t[-i - 1]) for i, p in enumerate(lp_s))
    return (1.0 - beta) * lz + beta * lx


def teacher_from_caloforge(path):
    """The nflows flow of a caloforge MAF (flowK.safetensors written by caloforge >= the
    permutation metadata): same MADE weights (burn stores [in, out], torch [out, in]; the masks
    are the same degree rule), same permutations."""
    w, meta = read_safetensors(path, np.float64)
    cfg = json.loads(meta["caloforge_flow_config"])
    if "caloforge_flow_permutations" not in meta:
        raise SystemExit(f"{path}: no permutations in the metadata (saved by an older caloforge)")
    perms = json.loads(meta["caloforge_flow_permutations"])
    if cfg["kind"] != "maf":
        raise SystemExit(f"{path}: a {cfg['kind']}, expected a MAF teacher")
    flow = build_flow(cfg["features"], cfg["context"], cfg["hidden"], cfg["n_hidden"],
                      cfg["blocks"], cfg["bins"], cfg["tail_bound"]).to(torch.float64)
    ts = flow._transform._transforms
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.T))
    with torch.no_grad():
        for k in range(cfg["blocks"]):
            made = ts[2 * k].autoregressive_net
            pre = f"made.{k}."
            made.initial_layer.weight.copy_(t(w[pre + "input.linear.weight"]))
            made.initial_layer.bias.copy_(torch.from_numpy(w[pre + "input.linear.bias"]))
            if cfg["context"]:
                made.context_layer.weight.copy_(t(w[pre + "context.weight"]))
                made.context_layer.bias.copy_(torch.from_numpy(w[pre + "context.bias"]))
            for j, blk in enumerate(made.blocks):
                blk.linear.weight.copy_(t(w[pre + f"hidden.{j}.linear.weight"]))
                blk.linear.bias.copy_(torch.from_numpy(w[pre + f"hidden.{j}.linear.bias"]))
            made.final_layer.weight.copy_(t(w[pre + "output.linear.weight"]))
            made.final_layer.bias.copy_(torch.from_numpy(w[pre + "output.linear.bias"]))
            if k < cfg["blocks"] - 1:
                ts[2 * k + 1]._permutation.copy_(torch.tensor(perms[k]))
    return flow, cfg


def student_from_caloforge(path, teacher):
    """The nflows IAF of a caloforge student flow file, with the teacher's permutations."""
    w, meta = read_safetensors(path, np.float64)
    cfg = json.loads(meta["caloforge_flow_config"])
    flow = build_student(teacher, cfg["features"], cfg["context"], cfg["hidden"],
                         cfg["n_hidden"], cfg["blocks"], cfg["bins"],
                         cfg["tail_bound"]).to(torch.float64)
    ts = flow._transform._transforms
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.T))
    names = {}
    with torch.no_grad():
        for k in range(cfg["blocks"]):
            made = ts[2 * k]._transform.autoregressive_net
            pre = f"made.{k}."
            pairs = [("input.linear", made.initial_layer), ("output.linear", made.final_layer)]
            if cfg["context"]:
                pairs.append(("context", made.context_layer))
            pairs += [(f"hidden.{j}.linear", b.linear) for j, b in enumerate(made.blocks)]
            for n, layer in pairs:
                layer.weight.copy_(t(w[pre + n + ".weight"]))
                layer.bias.copy_(torch.from_numpy(w[pre + n + ".bias"]))
                names[pre + n + ".weight"] = layer.weight
                names[pre + n + ".bias"] = layer.bias
    return flow, names


def logit(x):
    x = ALPHA + (1 - 2 * ALPHA) * x
    return torch.log(x / (1 - x))


def noisy(a, cfg, gen):
    """`a` (float64) plus U(0, noise_level) noise, drawn afresh."""
    a = a.to(torch.float64)
    return a + torch.rand(a.shape, generator=gen, dtype=torch.float64) * cfg["noise_level"]


def energy_feature(e, cfg):
    """logit of a (noisy) layer energy over the normalisation, clamped to it (see above)."""
    return logit(torch.clamp(e / cfg["normalization"], max=1.0))


def shape_feature(layer, cfg, gen):
    """data.py CaloDataShowerShape: noise on every voxel, normalise the layer to sum 1, logit."""
    v = noisy(layer, cfg, gen)
    return logit(v / v.sum(-1, keepdim=True))


class Stage:
    """The samples of one flow (run.py `train_eval_flow_{1,2,3}` with data.py's datasets) from
    showers (N, 45, L) and incident energies (N, 1): Flow-1 one sample per shower (layer
    energies), Flow-2 one per shower (layer 0), Flow-3 one per shower and layer 1..44 (row
    r = shower r // 44, layer r % 44 + 1, as caloforge numbers them)."""

    def __init__(self, flow, showers, e_inc, cfg):
        self.flow, self.showers, self.e_inc, self.cfg = flow, showers, e_inc, cfg
        self.e_layer = showers.sum(-1, dtype=torch.float64)
        l = showers.shape[-1]
        self.dims = {1: (45, 1), 2: (l, 2), 3: (l, 3 + l + 44)}[flow]

    def __len__(self):
        return len(self.e_inc) * (44 if self.flow == 3 else 1)

    def batch(self, rows, gen, dtype):
        cfg, inc = self.cfg, None
        if self.flow == 1:
            x = energy_feature(noisy(self.e_layer[rows], cfg, gen), cfg)
            c = torch.log10(self.e_inc[rows]) - 4.5
        elif self.flow == 2:
            x = shape_feature(self.showers[rows, 0], cfg, gen)
            e0 = energy_feature(noisy(self.e_layer[rows, :1], cfg, gen), cfg)
            c = torch.cat([torch.log10(self.e_inc[rows]) - 4.5, e0 / 4.0], 1)
        else:
            s, i = rows // 44, rows % 44 + 1
            x = shape_feature(self.showers[s, i], cfg, gen)
            e = energy_feature(noisy(self.e_layer[s, i].unsqueeze(1), cfg, gen), cfg)
            ep = energy_feature(noisy(self.e_layer[s, i - 1].unsqueeze(1), cfg, gen), cfg)
            prev = shape_feature(self.showers[s, i - 1], cfg, gen)
            onehot = torch.nn.functional.one_hot(i - 1, 44).to(torch.float64)
            c = torch.cat([torch.log10(self.e_inc[s]) - 4.5, e, ep, prev, onehot], 1)
        return x.to(dtype), c.to(dtype)


def schedule(opt, sched, total_steps, momentum):
    kind = sched["type"]
    if kind != "one_cycle":
        raise SystemExit(f"schedule {kind}: only one_cycle is rewritten here")
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=sched["max_lr"], total_steps=sched.get("total_steps") or total_steps,
        pct_start=sched.get("pct_start", 0.3), anneal_strategy="cos",
        cycle_momentum=momentum, base_momentum=sched.get("base_momentum", 0.85),
        max_momentum=sched.get("max_momentum", 0.95),
        div_factor=sched.get("div_factor", 25.0),
        final_div_factor=sched.get("final_div_factor", 1e4),
        three_phase=sched.get("three_phase", False))


def fit(train, loss_fn, validate, opt, lr, batch, epochs, eval_every, gen, dtype, seed,
        on_eval=None):
    """The reference's training loop: shuffled mini-batches of `train` (a Stage), Adam step and
    scheduler step per batch, validation at step 0, every `eval_every` steps and at the end
    (`on_eval(val_loss)` after each but the first). Returns (history, steps, seconds)."""
    steps_per_epoch = math.ceil(len(train) / batch)
    total = steps_per_epoch * epochs
    history = [{"step": 0, "val_loss": validate()}]
    step, t0, run = 0, time.time(), 0.0
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for b in range(steps_per_epoch):
            x, c = train.batch(order[b * batch:(b + 1) * batch], gen, dtype)
            loss = loss_fn(x, c)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr.step()
            step += 1
            run += loss.item()
            if step % eval_every == 0 or step == total:
                history.append({"step": step, "train_loss": run / eval_every,
                                "val_loss": validate()})
                if on_eval:
                    on_eval(history[-1]["val_loss"])
                run = 0.0
                el = time.time() - t0
                print(f"\rreference seed {seed}: step {step}/{total}, validation loss "
                      f"{history[-1]['val_loss']:.3f}, ETA {el / step * (total - step):.0f} s",
                      end="", file=sys.stderr, flush=True)
    return history, step, time.time() - t0


def write_result(path, seed, history, steps, wall, **fields):
    """Writes a reference run's JSON (read by compare.py) and prints its summary line."""
    best = min(h["val_loss"] for h in history)
    json.dump({"implementation": "reference (PyTorch + nflows)", "seed": seed, **fields,
               "steps": steps, "seconds_per_step": wall / max(steps, 1),
               "best_val_loss": best, "history": history}, open(path, "w"), indent=1)
    print(file=sys.stderr)
    print(f"reference seed {seed}: best validation loss {best:.3f} after {steps} steps "
          f"({wall / max(steps, 1) * 1e3:.1f} ms/step)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--flow", type=int, default=1, choices=[1, 2, 3])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-momentum-cycle", action="store_true")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--save-model", help="write the best weights (torch state_dict) here")
    ap.add_argument("--student-of", metavar="FLOWK.safetensors",
                    help="distil an IAF student (the preset's [flowK] and [flowK.distill]) "
                         "from this caloforge teacher flow, as run.py --student_mode")
    ap.add_argument("--student-init", metavar="STUDENT.safetensors",
                    help="start the student from these caloforge weights (e.g. an untrained "
                         "caloforge student: `examples/distill_grad init`) instead of nflows' "
                         "initialisation")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    name = f"flow{a.flow}"
    fc, tc = cfg[name], cfg[name]["train"]

    with h5py.File(a.data, "r") as f:
        showers = torch.from_numpy(f["showers"][:].reshape(-1, 45, f["showers"].shape[1] // 45))
        e_inc = torch.from_numpy(f["incident_energies"][:].reshape(-1, 1).astype(np.float64))
    n = len(showers)
    n_val = min(max(round(n * cfg["validation_fraction"]), 1), n - 1)
    n_train = n - n_val
    train = Stage(a.flow, showers[:n_train], e_inc[:n_train], cfg)
    val = Stage(a.flow, showers[n_train:], e_inc[n_train:], cfg)
    gen = torch.Generator().manual_seed(a.seed + 1000)
    val_rows = torch.arange(len(val))
    if len(val_rows) > cfg["max_validation_samples"]:
        val_rows = torch.randperm(len(val_rows), generator=gen)[: cfg["max_validation_samples"]]
        val_rows = val_rows.sort().values
    xv, cv = val.batch(val_rows, gen, dtype)

    d, c = train.dims
    teacher = None
    if a.student_of:
        teacher, tcfg = teacher_from_caloforge(a.student_of)
        if (tcfg["features"], tcfg["context"]) != (d, c):
            raise SystemExit(f"{a.student_of}: a flow of {tcfg['features']} features and "
                             f"{tcfg['context']} context inputs, not flow {a.flow}'s {d} and {c}")
        dist = fc.get("distill") or {}
        if not (dist.get("x_pass") and dist.get("z_pass") and dist.get("per_made")):
            raise SystemExit(f"{a.preset}: [{name}.distill] must have x_pass, z_pass and "
                             "per_made (the reference's loss has every term)")
        beta = dist["beta"]
        teacher = teacher.to(dtype)
        teacher.eval()
        teacher.requires_grad_(False)
        if a.student_init:
            flow, _ = student_from_caloforge(a.student_init, teacher)
            flow = flow.to(dtype)
        else:
            flow = build_student(teacher, d, c, fc["hidden"], fc["n_hidden"], fc["blocks"],
                                 fc["bins"], fc["tail_bound"]).to(dtype)
    else:
        flow = build_flow(d, c, fc["hidden"], fc["n_hidden"], fc["blocks"], fc["bins"],
                          fc["tail_bound"]).to(dtype)
    batch, epochs = tc["batch_size"], tc["epochs"]
    steps_per_epoch = math.ceil(len(train) / batch)
    total = steps_per_epoch * epochs
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    lr = schedule(opt, tc["schedule"], total, not a.no_momentum_cycle)
    eval_every = tc.get("eval_every", 0) or steps_per_epoch

    @torch.no_grad()
    def validate():
        flow.eval()
        if teacher is None:
            nll = -torch.cat([flow.log_prob(xv[i:i + 5000], cv[i:i + 5000])
                              for i in range(0, len(xv), 5000)]).mean().item()
        else:
            # caloforge's student validation: chi2 of the student's x for the teacher's z.
            nll = torch.cat([
                ((flow._transform.inverse(teacher._transform(xv[i:i + 5000], cv[i:i + 5000])[0],
                                          cv[i:i + 5000])[0] - xv[i:i + 5000]) ** 2).sum(1)
                for i in range(0, len(xv), 5000)]).mean().item()
        flow.train()
        return nll

    extra = {}
    if teacher is not None:
        with torch.no_grad():
            extra["teacher_val_nll"] = -torch.cat([
                teacher.log_prob(xv[i:i + 5000], cv[i:i + 5000])
                for i in range(0, len(xv), 5000)]).mean().item()
        print(f"teacher {a.student_of}: validation NLL {extra['teacher_val_nll']:.3f} "
              "in PyTorch", file=sys.stderr)
    if teacher is None:
        loss_fn = lambda x, c: -flow.log_prob(x, c).mean()  # noqa: E731
    else:
        loss_fn = lambda x, c: student_loss(teacher, flow, x, c, beta, gen)  # noqa: E731
    best_state, best_val = None, math.inf

    def on_eval(val_loss):
        nonlocal best_state, best_val
        if a.save_model and val_loss < best_val:
            best_val = val_loss
            best_state = {k: v.clone() for k, v in flow.state_dict().items()}

    history, step, wall = fit(train, loss_fn, validate, opt, lr, batch, epochs, eval_every,
                              gen, dtype, a.seed, on_eval)
    if a.save_model:
        torch.save(best_state or flow.state_dict(), a.save_model)
    write_result(a.out, a.seed, history, step, wall, flow=name,
                 role="student" if teacher is not None else "teacher", **extra, dtype=a.dtype,
                 momentum_cycle=not a.no_momentum_cycle)


if __name__ == "__main__":
    main()
