"""PyTorch side of benchmarks/allshowers/speed.sh: the reference AllShowers transformer
(reference.py, the paper's sizes, random weights) generating showers of N points with the same
fixed Gaussian layer profile as `caloforge bench --points N` (registry::timing_counts), attention
through scaled_dot_product_attention with the dense window mask (the reference's flex_attention
needs torch.compile on CPU). Prints ms per shower for full sampling (16 midpoint steps = 32
network evaluations): measured at batch 1, one forward × 32 at larger batches.

    python3 speed.py --threads 1 --points 2300 --batches 1,10
"""
import argparse
import math
import time

import torch

from reference import Transformer, time_features, window_mask


def timing_counts(n, layers):
    mu, sigma = 0.3 * layers, 0.15 * layers
    w = [math.exp(-((l - mu) ** 2) / (2 * sigma * sigma)) for l in range(layers)]
    total = sum(w)
    exact = [x / total * n for x in w]
    c = [math.floor(x) for x in exact]
    order = sorted(range(layers), key=lambda l: (-(exact[l] - c[l]), l))
    for l in order[: n - sum(c)]:
        c[l] += 1
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points", type=int, default=2300)
    ap.add_argument("--batches", default="1,10")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    L = 78
    net = Transformer().eval()
    counts = timing_counts(a.points, L)
    layer1 = torch.repeat_interleave(torch.arange(L), torch.tensor(counts))
    print(f"torch {torch.__version__}, {a.threads} threads, {a.points} points per shower")
    print(f"{'batch':>6} {'forward ms':>11} {'ms / shower (32 evaluations)':>30}")
    for b in [int(x) for x in a.batches.split(",")]:
        layer = layer1.repeat(b, 1)
        padding = torch.ones(b, a.points, dtype=torch.bool)
        mask = window_mask(layer, padding, 4)
        x = torch.randn(b, a.points, 3)
        cond = torch.randn(b, 4)
        num_points = torch.tensor(counts).repeat(b, 1)
        label = torch.zeros(b, dtype=torch.long)
        with torch.no_grad():
            f = lambda t, y: net(time_features(t).expand(b, -1), y, cond, num_points, layer[..., None], mask, label)
            best = float("inf")
            for _ in range(a.reps):
                t0 = time.perf_counter()
                f(torch.tensor(0.5), x)
                best = min(best, time.perf_counter() - t0)
            if b == 1:
                t0 = time.perf_counter()
                z = x
                t, dt = torch.tensor(1.0), torch.tensor(-1.0 / 16)
                for _ in range(16):
                    z = z + dt * f(t + dt / 2, z + dt / 2 * f(t, z))
                    t = t + dt
                full = (time.perf_counter() - t0) * 1e3
                how = "measured"
            else:
                full = best * 1e3 * 32 / b
                how = "forward x 32"
        print(f"{b:>6} {best * 1e3:>11.1f} {full:>22.1f} ({how})")


if __name__ == "__main__":
    main()
