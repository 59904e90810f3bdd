#!/usr/bin/env python3
"""Times the plotting part of evaluate.py's hist mode for dataset 2 on this machine: 227 figures,
each with two plt.hist calls (reference filled, generated step, density=True) of 100k entries,
log y axis, saved as PNG at dpi 300, as evaluate_plotting_helper does (without LaTeX text,
which needs a TeX installation). Random data: only the cost is measured.
usage: matplotlib_plots.py [N_FIGURES] [N_ENTRIES]"""
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

n_fig = int(sys.argv[1]) if len(sys.argv) > 1 else 227
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
rng = np.random.default_rng(0)
bins = np.linspace(-30, 30, 101)
t0 = time.time()
for i in range(n_fig):
    a, b = rng.normal(0, 5, n), rng.normal(0.1, 5, n)
    plt.figure(figsize=(6, 6))
    plt.hist(a, bins=bins, label="reference", density=True, histtype="stepfilled", alpha=0.2, linewidth=2.)
    plt.hist(b, bins=bins, label="generated", density=True, histtype="step", linewidth=3., alpha=1.)
    plt.yscale("log")
    plt.legend(fontsize=20)
    plt.tight_layout()
    plt.savefig(f"/tmp/mpl_bench_{i % 4}.png", dpi=300)
    plt.close()
print(f"{n_fig} figures: {time.time() - t0:.1f} s")
