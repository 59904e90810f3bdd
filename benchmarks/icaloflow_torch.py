#!/usr/bin/env python3
"""Times iCaloFlow dataset-2 generation in PyTorch + nflows with random weights, for comparison
with `caloforge bench --preset icaloflow-ds2` (teacher) and `--preset icaloflow-ds2-student`.

The flows are built as in the reference code (claudius-krause/inductive-caloflow, build_flow):
8 x MaskedPiecewiseRationalQuadraticAutoregressiveTransform (8 bins, tail bound 14, linear
tails) alternating with reverse/random permutations (the last one removed), standard-normal base.
Flow-1: 45 features, context 1, 1 hidden layer; Flow-2: 144 features, context 2, 2 hidden layers;
Flow-3: 144 features, context 191, 2 hidden layers (hidden 256; the student's Flow-3 uses 384).
Students are IAFs (one MADE pass per block to sample): the same transform wrapped in
InverseTransform; Flow-1 stays a MAF (it is never distilled).

Per-shower time = (T(flow-1) + T(flow-2) + 44 T(flow-3 one layer)) / B, each measured with
flow.sample(1, context) under torch.no_grad() (the reference generation loop), float32.

usage: python3 benchmarks/icaloflow_torch.py [--batches 1,10,100,1000] [--threads 1] [--student]
needs: torch, nflows (pip install torch nflows)
"""
import argparse
import time

import torch
from nflows import distributions, flows, transforms


def build(features, context, hidden, n_hidden, iaf=False):
    blocks = []
    for i in range(8):
        t = transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features=features, context_features=context, hidden_features=hidden,
            num_blocks=n_hidden, use_residual_blocks=False, use_batch_norm=False, dropout_probability=0.0,
            activation=torch.nn.functional.relu, random_mask=False, num_bins=8, tails="linear",
            tail_bound=14.0, min_bin_width=1e-6, min_bin_height=1e-6, min_derivative=1e-6)
        blocks.append(transforms.InverseTransform(t) if iaf else t)
        blocks.append(transforms.ReversePermutation(features) if i % 2 == 0 else transforms.RandomPermutation(features))
    del blocks[-1]
    return flows.Flow(transforms.CompositeTransform(blocks), distributions.StandardNormal([features])).eval()


def timed(flow, ctx, reps):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            flow.sample(1, ctx)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--student", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    f1 = build(45, 1, 256, 1)
    f2 = build(144, 2, 256, 2, iaf=a.student)
    f3 = build(144, 191, 384 if a.student else 256, 2, iaf=a.student)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'student' if a.student else 'teacher'}")
    print(f"{'batch':>8} {'flow1 s':>10} {'flow2 s':>10} {'flow3 s/layer':>14} {'ms / shower':>12}")
    for b in [int(x) for x in a.batches.split(",")]:
        c1 = torch.rand(b, 1) * 3 - 1.5
        c2 = torch.randn(b, 2)
        c3 = torch.randn(b, 191)
        t1 = timed(f1, c1, a.reps)
        t2 = timed(f2, c2, a.reps)
        t3 = timed(f3, c3, a.reps)
        per = (t1 + t2 + 44 * t3) / b * 1e3
        print(f"{b:>8} {t1:>10.4f} {t2:>10.4f} {t3:>14.4f} {per:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
