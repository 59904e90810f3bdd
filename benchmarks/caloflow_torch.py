#!/usr/bin/env python3
"""Times CaloFlow dataset-1 photon generation in PyTorch + nflows with random weights, for
comparison with `caloforge bench --preset caloflow-ds1-photons[-student]`.

The flows of the reference (Ian-Pang/caloflow-for-calochallenge, run_gamma_2023.py): the energy
flow (5 features, context 1, hidden 64 x 2, 6 MADE-RQS blocks), the teacher MAF (368 voxels,
context 6, hidden 378 x 1, 8 blocks) and the student IAF (hidden 736, 8 blocks); 8 bins, linear
tails at 14. The permutations between blocks (which cost nothing) are nflows' reverse/random
here instead of the reference's within-layer ones.

Per-shower time = (T(energy flow) + T(shower flow)) / B, each measured with
flow.sample(1, context) under torch.no_grad() (the reference's generation: sample_rec_flow and
the shower flow's sample, one value per context row), float32, best of --reps. The teacher MAF
samples with D = 368 sequential MADE passes per block, the student with one.

usage: python3 benchmarks/caloflow_torch.py [--batches 1,10,100,1000] [--threads 1] [--student]
       [--reps 1]
needs: torch, nflows
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "parity")]
from icaloflow_reference import build_flow, build_student  # noqa: E402
from icaloflow_torch import timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--student", action="store_true")
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    f1 = build_flow(5, 1, 64, 2, 6, 8, 14.0).eval()
    teacher = build_flow(368, 6, 378, 1, 8, 8, 14.0).eval()
    f2 = build_student(teacher, 368, 6, 736, 1, 8, 8, 14.0).eval() if a.student else teacher
    kind = "student (IAF, hidden 736)" if a.student else "teacher (MAF, hidden 378)"
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, {kind}")
    print("batch  energy flow s  shower flow s  ms/shower")
    for b in map(int, a.batches.split(",")):
        t1 = timed(f1, torch.randn(b, 1) * 0.5, a.reps)
        t2 = timed(f2, torch.randn(b, 6) * 0.5, a.reps)
        print(f"{b:<6} {t1:12.3f}  {t2:13.3f}  {(t1 + t2) / b * 1e3:9.2f}", flush=True)


if __name__ == "__main__":
    main()
