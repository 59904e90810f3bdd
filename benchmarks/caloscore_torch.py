#!/usr/bin/env python3
"""Times CaloScore generation in PyTorch with random weights, for comparison with
`caloforge bench --preset caloscore-ds2` (v1) and `--preset caloscore2-ds2` (v2).

The networks are the parity harness's PyTorch rewrites of the references
(benchmarks/parity/caloscore_reference.py, caloscore2_reference.py), float32, under
torch.no_grad(), on dataset 2's native grid:
- v1: the score network of the preset; the reference's predictor-corrector sampler makes one
  network evaluation per step (its corrector reuses the predictor's score), so a 200-step
  shower costs 200 evaluations;
- v2: per DDIM step one layer-network and one voxel-network evaluation, so N steps cost N of
  each.
Per-shower time = (seconds of one evaluation at batch B) x evaluations / B: the network work of
the sampler; its element-wise updates are not counted (they are well under 1 % of a step).
Each evaluation is repeated for at least --min-seconds (after one untimed call).

usage: python3 benchmarks/caloscore_torch.py [--batches 1,10,100] [--threads 1]
       [--v1-preset P.toml] [--v2-preset P.toml] [--pc-steps 200] [--ddim-steps 512,8,1]
needs: torch, numpy, h5py
"""
import argparse
import os
import sys
import time
import tomllib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "parity"))
from caloscore_reference import ScoreNet  # noqa: E402
from caloscore2_reference import Nets  # noqa: E402

PRESETS = os.path.join(HERE, "..", "crates", "caloforge-models", "presets")


def per_call(f, min_seconds):
    f()
    n, t0 = 0, time.perf_counter()
    while True:
        f()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return dt / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,100")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--v1-preset", default=os.path.join(PRESETS, "caloscore-ds2.toml"))
    ap.add_argument("--v2-preset", default=os.path.join(PRESETS, "caloscore2-ds2.toml"))
    ap.add_argument("--pc-steps", type=int, default=200)
    ap.add_argument("--ddim-steps", default="512,8,1")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c1 = tomllib.load(open(a.v1_preset, "rb"))
    c2 = tomllib.load(open(a.v2_preset, "rb"))
    v1 = ScoreNet(c1["channels"], c1["pool"], c1["embed"]).eval()
    v2 = Nets(c2).eval()
    ddim = [int(s) for s in a.ddim_steps.split(",")]
    print(f"PyTorch {torch.__version__}, {a.threads} thread(s); ms per shower (network work)")
    print(f"{'model':>28} {'batch':>6} {'ms/eval':>10} {'ms/shower':>11}")
    with torch.no_grad():
        for b in (int(x) for x in a.batches.split(",")):
            x = torch.randn(b, 6480)
            t = torch.rand(b, 1)
            e = torch.rand(b, 1)
            lay = torch.randn(b, 45)
            s1 = per_call(lambda: v1(x, t, e), a.min_seconds)
            print(f"{'v1 PC ' + str(a.pc_steps) + ' steps':>28} {b:>6} {1e3 * s1:>10.2f} "
                  f"{1e3 * s1 * a.pc_steps / b:>11.2f}")
            sl = per_call(lambda: v2.layer(lay, t, e), a.min_seconds)
            sv = per_call(lambda: v2.voxel(x, t, e, lay), a.min_seconds)
            for n in ddim:
                print(f"{'v2 DDIM ' + str(n) + ' steps':>28} {b:>6} {1e3 * (sl + sv):>10.2f} "
                      f"{1e3 * (sl + sv) * n / b:>11.2f}")


if __name__ == "__main__":
    main()
