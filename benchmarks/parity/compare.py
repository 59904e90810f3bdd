#!/usr/bin/env python3
"""Prints the validation-loss curves of caloforge and reference runs side by side, the table of
best validation losses (mean +- spread over seeds) and draws them into a PNG.

usage: compare.py --caloforge cf1.json,cf2.json,... --reference ref1.json,... --png out.png
       [--flow flow1] [--title T] [--ylabel L] [--log] [--ypad 2] [--digits 3] [--markers]
A caloforge file is an iCaloFlow model_card.json (its flows.<flow>.report.history is read), a
copy of one flow's report (benchmarks/parity/results) or a CaloDiffusion model_card.json (its
per-epoch val_loss; --flow is ignored); a reference file is the JSON written by
icaloflow_reference.py or calodiffusion_reference.py (its history).

A CaloDiffusion card lists one validation loss per epoch (the step-0 value dropped, a last one
after a partial epoch when a time budget stopped the run) with no step numbers: epoch i ends at
step i * ceil(n_train / batch_size), batch_size read from the config.toml beside the card (else
steps / epochs), and a partial last epoch ends at the card's `steps`.
"""
import argparse
import json
import math
import os
import tomllib

import numpy as np


def diffusion_card(path, d):
    """(step, val_loss) of a CaloDiffusion model card."""
    vals = d["val_loss"]
    cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.toml")
    if os.path.exists(cfg):
        with open(cfg, "rb") as f:
            spe = math.ceil(d["n_train"] / tomllib.load(f)["batch_size"])
    else:
        spe = d["steps"] // max(d["epochs"], 1) or d["steps"]
    steps = [(i + 1) * spe for i in range(len(vals))]
    if vals and len(vals) > d["epochs"]:
        steps[-1] = d["steps"]
    return [(s, v) for s, v in zip(steps, vals) if v is not None]


def history(path, flow):
    d = json.load(open(path))
    if d.get("model") in ("calodiffusion", "caloscore", "caloscore2") and "val_loss" in d and "history" not in d:
        return diffusion_card(path, d)
    if "flows" in d:
        h = d["flows"][flow]["report"]["history"]
    elif "report" in d:  # benchmarks/parity/results/*_caloforge_*.json
        h = d["report"]["history"]
    else:
        h = d["history"]
    return [(p["step"], p["val_loss"]) for p in h if p.get("val_loss") is not None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--caloforge", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--flow", default="flow1")
    ap.add_argument("--png")
    ap.add_argument("--title", default="")
    ap.add_argument("--ylabel", default="validation NLL (nats per shower)")
    ap.add_argument("--log", action="store_true", help="logarithmic loss axis")
    ap.add_argument("--ypad", type=float, default=2.0,
                    help="loss-axis margin below the lowest and above the 90th-percentile value")
    ap.add_argument("--digits", type=int, default=3, help="decimals printed")
    ap.add_argument("--markers", action="store_true", help="mark every validation point")
    a = ap.parse_args()
    runs = {
        "caloforge": [history(p, a.flow) for p in a.caloforge.split(",")],
        "reference": [history(p, a.flow) for p in a.reference.split(",")],
    }
    steps = sorted({s for h in runs["caloforge"] + runs["reference"] for s, _ in h})
    print("step   " + "  ".join(f"cf{i}" .rjust(9) for i in range(len(runs["caloforge"])))
          + "  " + "  ".join(f"ref{i}".rjust(9) for i in range(len(runs["reference"]))))
    for s in steps:
        row = []
        for name in ("caloforge", "reference"):
            for h in runs[name]:
                v = dict(h).get(s)
                row.append(f"{v:9.{a.digits}f}" if v is not None else " " * 9)
        print(f"{s:<6} " + "  ".join(row))
    best = {k: np.array([min(v for _, v in h) for h in hs]) for k, hs in runs.items()}
    g = a.digits
    for k, b in best.items():
        sd = f" +- {b.std(ddof=1):.{g}f}" if len(b) > 1 else ""
        print(f"{k:9s} best validation loss: mean {b.mean():.{g}f}{sd}, min {b.min():.{g}f}, "
              f"max {b.max():.{g}f} over {len(b)} seeds  ({', '.join(f'{x:.{g}f}' for x in b)})")
    lo, hi = best["reference"].min(), best["reference"].max()
    inside = all(lo - 1e-9 <= x <= hi + 1e-9 for x in best["caloforge"])
    print(f"caloforge within the reference's seed range [{lo:.{g}f}, {hi:.{g}f}]: every seed "
          f"{inside}, mean {lo - 1e-9 <= best['caloforge'].mean() <= hi + 1e-9}")
    c, r = best["caloforge"], best["reference"]
    if len(c) > 1 and len(r) > 1:
        se = np.sqrt(c.var(ddof=1) / len(c) + r.var(ddof=1) / len(r))
        print(f"difference of the means {c.mean() - r.mean():+.{g}f} "
              f"(Welch t = {(c.mean() - r.mean()) / se if se > 0 else float('nan'):+.2f}); "
              f"seed-to-seed standard deviation caloforge {c.std(ddof=1):.{g}f}, "
              f"reference {r.std(ddof=1):.{g}f}")
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, color in (("caloforge", "tab:red"), ("reference", "tab:blue")):
            for i, h in enumerate(runs[name]):
                s, v = zip(*h)
                ax.plot(s, v, color=color, alpha=0.8, marker="o" if a.markers else None,
                        ms=3, label=name if i == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(a.ylabel)
        vals = [v for hs in runs.values() for h in hs for _, v in h[1:]]
        if a.log:
            ax.set_yscale("log")
        elif vals:
            ax.set_ylim(min(vals) - a.ypad, np.percentile(vals, 90) + a.ypad)
        ax.set_title(a.title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)
        print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
