#!/usr/bin/env python3
"""Training speed, caloforge beside PyTorch, in one run: seconds per optimizer step of every
trainable part of a caloforge preset, on the same thread count, batch size and shapes.

caloforge: `caloforge bench --train --preset P --threads T --train-steps N --out J` (the one
training loop on synthetic batches). PyTorch: the same step written as the reference code does
it, on standard-normal synthetic data (a step costs the same whatever the values):
  * iCaloFlow teacher flows: nflows MAF (MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    as benchmarks/icaloflow_torch.py), loss -log_prob(x | ctx).mean(), Adam;
  * iCaloFlow student flows: run.py's IAF student and its "fully guided" distillation loss
    (benchmarks/parity/icaloflow_reference.py `build_student`, `student_loss`: x-pass and z-pass,
    every state and MADE output, beta from the preset) from an untrained MAF teacher of the
    dataset's teacher preset, when the preset has both passes and the per-MADE terms; otherwise
    the x-pass alone (teacher x -> z without grad, student z -> x', chi2 of x' and every state);
  * CaloDiffusion: the U-Net of benchmarks/calodiffusion_torch.py, epsilon-prediction MSE at a
    random step of the cosine schedule, Adam;
  * AllShowers: PointCountFM's network (flow matching of the layer counts, Adam) and the
    transformer of benchmarks/allshowers/reference.py (flow-matching loss, RangerLite of
    allshowers/train_reference.py, clip_grad_norm_) on batches of 380-point showers over the
    layer profile of caloforge's `registry::timing_counts` (every shower the same size, so
    PyTorch pads nothing; attention through SDPA with the window's dense mask).
Each part: one untimed step, then N timed steps; mean wall seconds per step.

usage: python3 benchmarks/train_speed.py --preset icaloflow-ds2 [--threads 1] [--steps 3]
         [--batch B] [--caloforge target/release/caloforge] [--out table.json]
needs: torch, nflows
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import tomllib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "parity"))
PRESETS = os.path.join(HERE, "..", "crates", "caloforge-models", "presets")


def preset(name):
    with open(os.path.join(PRESETS, name + ".toml"), "rb") as f:
        return tomllib.load(f)


def flow_dims(dataset, k):
    layer = {2: 144, 3: 900}[dataset]
    return {1: (45, 1), 2: (layer, 2), 3: (layer, 3 + layer + 44)}[k]


def time_steps(step, n):
    step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def icaloflow_parts(cfg, steps, batch):
    from icaloflow_torch import build
    ds = int(cfg["dataset"])
    student = cfg.get("role") == "student"
    teacher_cfg = preset(f"icaloflow-ds{ds}") if student else None
    rows = []
    for k in (1, 2, 3):
        st = cfg.get(f"flow{k}")
        if st is None:
            continue
        d, c = flow_dims(ds, k)
        bs = batch or st["train"]["batch_size"]
        x, ctx = torch.randn(bs, d), torch.randn(bs, c)
        if not student:
            flow = build(d, c, st["hidden"], st["n_hidden"]).train()
            opt = torch.optim.Adam(flow.parameters(), lr=1e-4)

            def step():
                opt.zero_grad()
                loss = -flow.log_prob(x, ctx).mean()
                loss.backward()
                opt.step()
            what = "maximum likelihood"
        else:
            import icaloflow_reference as ref
            ts, dist = teacher_cfg[f"flow{k}"], st["distill"]
            teacher = ref.build_flow(d, c, ts["hidden"], ts["n_hidden"], ts["blocks"], ts["bins"],
                                     ts["tail_bound"]).eval().requires_grad_(False)
            # Blocks, bins and tail bound are the teacher's (as caloforge's students).
            stu = ref.build_student(teacher, d, c, st["hidden"], st["n_hidden"], ts["blocks"],
                                    ts["bins"], ts["tail_bound"]).train()
            opt = torch.optim.Adam(stu.parameters(), lr=1e-4)
            full = dist["x_pass"] and dist["z_pass"] and dist["per_made"]
            gen = torch.Generator().manual_seed(0)

            def step():
                opt.zero_grad()
                if full:
                    loss = ref.student_loss(teacher, stu, x, ctx, dist["beta"], gen)
                else:
                    with torch.no_grad():
                        tz, st_t, _ = ref.guided(teacher, x, ctx, "forward")
                    _, st_s, _ = ref.guided(stu, tz, ctx, "inverse")
                    loss = sum(ref.chi2(s_, st_t[-i - 1]) for i, s_ in enumerate(st_s))
                loss.backward()
                opt.step()
            what = "distillation (x- and z-pass, guided)" if full else "distillation (x-pass)"
        rows.append({"part": f"flow{k}", "batch": bs, "what": what,
                     "seconds_per_step": time_steps(step, steps)})
    return rows


def calodiffusion_parts(cfg, steps, batch):
    from calodiffusion_torch import UNet, cosine
    ds = int(cfg["dataset"])
    if ds != 2:
        raise SystemExit("the PyTorch CaloDiffusion step is written for dataset 2")
    bs = batch or cfg["batch_size"]
    net = UNet(sizes=tuple(cfg["layer_sizes"])).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    n = cfg["steps"]
    abar = cosine(n)[2].float()
    x0 = torch.randn(bs, 1, 45, 16, 9)
    loc = torch.randn(bs, 2, 45, 16, 9)
    e = torch.rand(bs, 1)

    def step():
        opt.zero_grad()
        t = torch.randint(0, n, (bs,))
        a = abar[t].view(bs, 1, 1, 1, 1)
        eps = torch.randn_like(x0)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        sigma = (1 - a).sqrt().view(bs, 1)  # the reference's time input sqrt(1 - abar_t)
        pred = net(torch.cat([xt, loc], 1), sigma, e)
        loss = ((pred - eps) ** 2).mean()
        loss.backward()
        opt.step()
    return [{"part": "denoiser", "batch": bs, "what": "denoising loss",
             "seconds_per_step": time_steps(step, steps)}]


def timing_layers(n, layers):
    """caloforge's registry::timing_counts: n points over a Gaussian layer profile."""
    mu, sigma = 0.3 * layers, 0.15 * layers
    w = [math.exp(-(l - mu) ** 2 / (2 * sigma * sigma)) for l in range(layers)]
    exact = [x / sum(w) * n for x in w]
    c = [math.floor(x) for x in exact]
    order = sorted(range(layers), key=lambda l: (-(exact[l] - c[l]), l))
    for l in order[: n - sum(c)]:
        c[l] += 1
    return c


def allshowers_parts(cfg, steps, batch):
    sys.path.insert(0, os.path.join(HERE, "allshowers"))
    from reference import CountNet, Transformer, cfm_loss
    from train_reference import RangerLite
    layers, k = cfg["transformer"]["layers"], len(cfg["particles"])
    rows = []
    tc = cfg["train_counts"]
    bs = batch or tc["batch_size"]
    net = CountNet(dim_input=layers, dim_condition=1 + k + 3, hidden=tuple(cfg["count_hidden"]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, c = torch.randn(bs, layers), torch.randn(bs, 1 + k + 3)

    def count_step():
        opt.zero_grad()
        t = torch.rand(bs, 1)
        z = torch.randn_like(x)
        f = (torch.arange(1, 4) * torch.pi).reshape(1, -1) * t
        y = (1 - t) * x + (1e-4 + (1 - 1e-4) * t) * z
        v = net(torch.cat((f.cos(), f.sin()), -1), y, c)
        ((v - ((1 - 1e-4) * z - x)) ** 2).mean().backward()
        opt.step()
    rows.append({"part": "counts", "batch": bs, "what": "flow matching of the layer counts, Adam",
                 "seconds_per_step": time_steps(count_step, steps)})
    tt = cfg["train_transformer"]
    bs = batch or tt["batch_size"]
    d = cfg["transformer"]
    net = Transformer(dim_inputs=(3, 2 * d["frequencies"], d["condition"]), dim_embedding=d["dim"],
                      num_head=d["heads"], num_blocks=d["blocks"], num_layers=layers,
                      dim_feedforward=d["feedforward"], num_points_cond=d["count_hidden"],
                      num_layer_cond=d["layer_window"], num_particles=d["particles"])
    opt = RangerLite(net.parameters(), lr=1e-4, weight_decay=tt.get("weight_decay", 0.0))
    counts = timing_layers(380, layers)
    layer = torch.tensor([l for l, n in enumerate(counts) for _ in range(n)])
    p = len(layer)
    x, z = torch.randn(bs, p, 3), torch.randn(bs, p, 3)
    lay = layer.reshape(1, p, 1).expand(bs, p, 1).contiguous()
    padding = torch.ones(bs, p, dtype=torch.bool)
    num_points = torch.tensor(counts).reshape(1, -1).expand(bs, -1)
    cond = torch.randn(bs, d["condition"])
    label = torch.arange(bs) % d["particles"]

    def step():
        opt.zero_grad()
        loss = cfm_loss(net, x, z, torch.rand(bs), cond, num_points, lay, padding, label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tt.get("grad_clip", 0.2))
        opt.step()
    rows.append({"part": "transformer", "batch": bs,
                 "what": "flow matching of 380-point showers, RangerLite, global clip",
                 "seconds_per_step": time_steps(step, steps)})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--caloforge", default=os.path.join(HERE, "..", "target", "release", "caloforge"))
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    cfg = preset(a.preset)
    # caloforge first (its own process, same threads).
    cf_json = f"/tmp/caloforge_train_speed_{os.getpid()}.json"
    cmd = [a.caloforge, "bench", "--train", "--preset", a.preset, "--threads", str(a.threads),
           "--train-steps", str(a.steps), "--out", cf_json, "--quiet"]
    if a.batch:
        cmd += ["--batch", str(a.batch)]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    with open(cf_json) as f:
        cf = {r["part"]: r for r in json.load(f)["train"]}
    os.remove(cf_json)
    parts = {"icaloflow": icaloflow_parts, "calodiffusion": calodiffusion_parts,
             "allshowers": allshowers_parts}[cfg["model"]]
    pt = parts(cfg, a.steps, a.batch)
    print(f"preset {a.preset}, {a.threads} thread(s), torch {torch.__version__}")
    print(f"{'part':>9} {'batch':>6} {'caloforge s':>12} {'PyTorch s':>10} {'speed-up':>9}  step")
    rows = []
    for r in pt:
        c = cf.get(r["part"])
        cs = c["seconds_per_step"] if c else float("nan")
        print(f"{r['part']:>9} {r['batch']:>6} {cs:>12.4f} {r['seconds_per_step']:>10.4f} "
              f"{r['seconds_per_step'] / cs:>8.2f}x  {r['what']}")
        rows.append({"part": r["part"], "batch": r["batch"], "caloforge_s": cs,
                     "pytorch_s": r["seconds_per_step"], "pytorch_step": r["what"],
                     "caloforge_step": c["what"] if c else None})
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"preset": a.preset, "threads": a.threads, "torch": torch.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
