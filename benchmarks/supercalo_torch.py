#!/usr/bin/env python3
"""Times SuperCalo dataset-2 generation (voxelization A) in PyTorch + nflows with random
weights, for comparison with `caloforge bench --preset supercalo-ds2`.

The flows as in the reference (Ian-Pang/supercalo, run_supercalo.py build_flow_1/2/3): 8 x
MaskedPiecewiseRationalQuadraticAutoregressiveTransform (8 bins, linear tails) alternating with
reverse/random permutations, standard-normal base, all MAFs (SuperCalo has no students):
Flow-1 45 features, context 1, hidden 256 x 1; Flow-II 648 coarse voxels, context 10, hidden
648 x 1, tail bound 6; upsampler 10 fine voxels, context 31, hidden 128 x 2.

Per-shower time = (T(Flow-1) + T(Flow-II) + T(upsampler on 648 B coarse voxels)) / B, each
measured with flow.sample(1, context) under torch.no_grad() (the reference generation loop:
generate_flow_1/2/3 sample one value per context row), float32, best of --reps.

--per-pass times Flow-II instead as 648 x the time of one log-prob (forward) pass through its 8
blocks at the batch size: nflows' sampler inverts each block with 648 sequential passes of the
same cost (MADE + spline on the whole batch), so this is the sampling time without its Python
loop overhead, for batch sizes where one real batch takes too long (1000: about an hour);
Flow-1 and the upsampler are still sampled for real.

usage: python3 benchmarks/supercalo_torch.py [--batches 1,10,100] [--threads 1] [--reps 1]
       [--per-pass]
needs: torch, nflows
"""
import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "parity")]
from icaloflow_reference import build_flow  # noqa: E402
from icaloflow_torch import timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,100")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--per-pass", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    f1 = build_flow(45, 1, 256, 1, 8, 8, 14.0).eval()
    f2 = build_flow(648, 10, 648, 1, 8, 8, 6.0).eval()
    f3 = build_flow(10, 31, 128, 2, 8, 8, 14.0).eval()
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} thread(s), float32")
    print("batch  flow-1 s  flow-II s  upsampler s  ms/shower")
    for b in map(int, a.batches.split(",")):
        t1 = timed(f1, torch.randn(b, 1) * 0.5, a.reps)
        if a.per_pass:
            x, c = torch.randn(b, 648), torch.randn(b, 10) * 0.5
            best = float("inf")
            for _ in range(max(a.reps, 3)):
                t0 = time.perf_counter()
                with torch.no_grad():
                    f2.log_prob(x, c)
                best = min(best, time.perf_counter() - t0)
            t2 = 648 * best
        else:
            t2 = timed(f2, torch.randn(b, 10) * 0.5, a.reps)
        t3 = timed(f3, torch.randn(648 * b, 31) * 0.5, a.reps)
        print(f"{b:<6} {t1:8.3f}  {t2:9.3f}  {t3:11.3f}  {(t1 + t2 + t3) / b * 1e3:9.1f}",
              flush=True)


if __name__ == "__main__":
    main()
