#!/usr/bin/env python3
"""Cross-check caloforge's features and separation powers against an independent NumPy
implementation of the CaloChallenge evaluation (written from ../shared/calochallenge/SPEC.md, in
the array style of the official evaluate.py: NumPy sums, np.histogram(density=True) × bin width).

usage: reference_check.py DATASET GENERATED.h5 REFERENCE.h5 CALOFORGE_EVAL_DIR CALOFORGE_FEATURES.h5
Prints the largest relative differences; exits 1 if any exceeds 1e-9.
Needs numpy and h5py (pip install numpy h5py); not used by the test suite.
"""
import json
import math
import sys
import xml.etree.ElementTree as ET

import h5py
import numpy as np

BINNING = {"1-photons": ("binning_dataset_1_photons.xml", "photon", 1.0),
           "1-pions": ("binning_dataset_1_pions.xml", "pion", 1.0),
           "2": ("binning_dataset_2.xml", "electron", 0.5e-3 / 0.033),
           "3": ("binning_dataset_3.xml", "electron", 0.5e-3 / 0.033)}


def geometry(path, particle):
    root = ET.parse(path).getroot()
    layers = []
    for b in root:
        if b.attrib.get("name") != particle:
            continue
        for l in b:
            r = [float(x) for x in l.attrib["r_edges"].split(",")]
            layers.append((r, int(l.attrib["n_bin_alpha"])))
    edges, x, y, rc = [0], [], [], []
    for r, na in layers:
        nr = len(r) - 1
        edges.append(edges[-1] + nr * na)
        mids = [r[i] + (r[i + 1] - r[i]) / 2 for i in range(nr)]
        ae = np.linspace(-math.pi, math.pi, na + 1)
        alphas = [ae[i] + (ae[i + 1] - ae[i]) / 2 for i in range(na)]
        rr = np.array([m for a in alphas for m in mids])
        aa = np.array([a for a in alphas for m in mids])
        x.append(rr * np.cos(aa)); y.append(rr * np.sin(aa)); rc.append(rr)
    relevant = [i for i, (r, na) in enumerate(layers) if len(r) > 1]
    alpha = [i for i, (r, na) in enumerate(layers) if na > 1]
    return edges, x, y, rc, relevant, alpha


def features(data, geo):
    edges, x, y, rc, relevant, alpha = geo
    f = {"E_tot": data.sum(axis=-1)}
    for key in ["E_layer", "EC_r", "W_r", "sparsity", "EC_x", "EC_y", "W_x", "W_y"]:
        f[key] = []
    for l in relevant:
        d = data[:, edges[l]:edges[l + 1]]
        e = d.sum(axis=-1)
        f["E_layer"].append(e)
        f["sparsity"].append(1. - (d > 0).mean(axis=-1))
        def cw(c):
            ec = (c * d).sum(axis=-1) / (d.sum(axis=-1) + 1e-16)
            m2 = (c * c * d).sum(axis=-1) / (d.sum(axis=-1) + 1e-16)
            return ec, np.sqrt((m2 - ec ** 2).clip(min=0.))
        a, b = cw(rc[l]); f["EC_r"].append(a); f["W_r"].append(b)
        if l in alpha:
            a, b = cw(x[l]); f["EC_x"].append(a); f["W_x"].append(b)
            a, b = cw(y[l]); f["EC_y"].append(a); f["W_y"].append(b)
    for k in f:
        if k != "E_tot":
            f[k] = np.stack(f[k], axis=1)
    return f


def sep(a, b, bins):
    h1, _ = np.histogram(a, bins=bins, density=True)
    h2, _ = np.histogram(b, bins=bins, density=True)
    h1, h2 = h1 * np.diff(bins), h2 * np.diff(bins)
    r = (h1 - h2) ** 2
    r /= h1 + h2 + 1e-16
    return 0.5 * r.sum()


def main():
    ds, gen_path, ref_path, eval_dir, feat_path = sys.argv[1:6]
    xml, particle, min_e = BINNING[ds]
    geo = geometry(f"{sys.path[0]}/../crates/caloforge-core/binning/{xml}", particle)
    edges, x, y, rc, relevant, alpha = geo
    load = lambda p: (np.asarray(h5py.File(p)["showers"][:], dtype=np.float64),
                      np.asarray(h5py.File(p)["incident_energies"][:], dtype=np.float64).reshape(-1))
    g, ge = load(gen_path)
    r, re = load(ref_path)
    g[g < min_e] = 0.0
    r[r < min_e] = 0.0
    fg, fr = features(g, geo), features(r, geo)
    worst = 0.0
    # Features of the generated file against caloforge features.
    cf = h5py.File(feat_path)
    for k in fg:
        mine, theirs = np.asarray(cf[k][:]), fg[k]
        d = np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-300)
        d[(mine == 0) & (theirs == 0)] = 0
        big = np.max(np.where(np.abs(theirs) > 1e-12, d, np.abs(mine - theirs)))
        print(f"feature {k:9s} max rel diff {big:.3e}")
        worst = max(worst, big)
    # Separation powers.
    seps = {}
    seps["Etot / Einc"] = sep(fr["E_tot"] / re, fg["E_tot"] / ge, np.linspace(0.5, 1.5, 101))
    for c, l in enumerate(relevant):
        bins = np.logspace(np.log10(min_e), np.log10(fr["E_layer"][:, c].max()), 40)
        seps[f"E layer {l}"] = sep(fr["E_layer"][:, c], fg["E_layer"][:, c], bins)
    for name, key, centred in [("EC Eta", "EC_x", 1), ("EC Phi", "EC_y", 1), ("Width Eta", "W_x", 0), ("Width Phi", "W_y", 0)]:
        for c, l in enumerate(alpha):
            if ds in ["2", "3"]:
                lim = (-30., 30.) if centred else (0., 30.)
            elif l in [12, 13]:
                lim = (-500., 500.) if centred else (0., 400.)
            else:
                lim = (-100., 100.) if centred else (0., 100.)
            seps[f"{name} layer {l}"] = sep(fr[key][:, c], fg[key][:, c], np.linspace(*lim, 101))
    if ds.startswith("1"):
        t = 2 ** np.linspace(8, 23, 16)
        for i in range(15):
            bins = np.linspace(0.9, 1.1, 21) if (i > 3 and "photons" in ds) else np.linspace(0.4, 1.4, 21)
            mr = (re >= t[i]) & (re < t[i + 1]); mg = (ge >= t[i]) & (ge < t[i + 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                seps[f"Etot / Einc at E = {t[i]}"] = sep(fr["E_tot"][mr] / re[mr], fg["E_tot"][mg] / ge[mg], bins)
    bins = np.logspace(np.log10(min_e), np.log10(r.max()), 50)
    seps["Voxel distribution"] = sep(r.flatten(), g.flatten(), bins)
    for c, l in enumerate(relevant):
        seps[f"Sparsity layer {l}"] = sep(fr["sparsity"][:, c], fg["sparsity"][:, c], np.linspace(0, 1, 21))
        big = l in [12, 13, 14]
        hi = 42. if ds in ["2", "3"] else (1500. if big else 500.)
        seps[f"EC r layer {l}"] = sep(fr["EC_r"][:, c], fg["EC_r"][:, c], np.linspace(0, hi, 101))
        hi = 20. if ds in ["2", "3"] else (1500. if big else 500.)
        seps[f"Width r layer {l}"] = sep(fr["W_r"][:, c], fg["W_r"][:, c], np.linspace(0, hi, 101))
    mine = {h["name"]: h["separation_power"] for h in json.load(open(f"{eval_dir}/metrics.json"))["histograms"]}
    # The text file must hold the same numbers, printed as Python prints floats.
    text = open(f"{eval_dir}/histogram_chi2_{ds}.txt").read().split("\n")
    txt = {text[i][:-2]: text[i + 1] for i in range(1, len(text) - 1, 3) if text[i].endswith(": ")}
    worst_sep, n_exact, n = 0.0, 0, 0
    for k, v in seps.items():
        if k not in mine:
            print("missing", k); worst = 1; continue
        m = mine[k]
        n += 1
        if m is None and math.isnan(v):
            n_exact += 1; continue
        d = abs(m - v) / max(abs(v), 1e-300) if v != 0 else abs(m)
        n_exact += (m == v)
        worst_sep = max(worst_sep, d)
        if d > 1e-9:
            print(f"differs: {k}: caloforge {txt.get(k)} vs numpy {v}")
    print(f"{n} separation powers: max rel diff {worst_sep:.3e}, {n_exact} bit-identical")
    worst = max(worst, worst_sep)
    sys.exit(0 if worst <= 1e-9 else 1)


if __name__ == "__main__":
    main()
