"""The per-particle quality tables of benchmarks/allshowers/campaign.sh, as Markdown: one row per
(model, test particle) from eval_<model>_<particle>/points_metrics.json (separation powers of
the point-cloud observables and the cls-points AUC) and, where the campaign ran with VOXELIZE,
from evalvox_<model>_<particle>/metrics.json (the CaloChallenge evaluation of both files binned
into the dataset's mesh).

    python3 campaign_table.py CAMPAIGN_DIR
"""
import glob
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "campaign"


def pairs(prefix):
    """(model, particle) of every evaluation directory: the all-particle model first."""
    found = []
    for d in glob.glob(os.path.join(root, prefix + "_*")):
        model, particle = os.path.basename(d)[len(prefix) + 1:].split("_", 1)
        found.append((particle, {"all": 0, "sim": 2}.get(model, 1), model))
    return [(m, p) for p, _, m in sorted(found)]


def name(model):
    if model == "sim":
        return "simulator, another seed (noise floor)"
    return "one for all" if model == "all" else f"{model} only"


cols = ["E_total over E_inc", "number of points", "centre of energy layer", "mean radius"]
print("Point-cloud observables (`evaluate --points`):\n")
print("| model | test particle | ⟨E_tot/E_inc⟩ gen / ref | ⟨points⟩ gen / ref | "
      + " | ".join(f"sep. {c}" for c in cols)
      + " | mean sep. E per layer | mean sep. points per layer | sep. longitudinal profile"
      " | sep. point-energy spectrum | cls-points AUC |")
print("|" + " --- |" * (9 + len(cols)))
for model, particle in pairs("eval"):
    path = os.path.join(root, f"eval_{model}_{particle}", "points_metrics.json")
    if not os.path.exists(path):
        continue
    d = json.load(open(path))
    if "tables" not in d:
        continue
    t = next(x for x in d["tables"] if x["particle"] == "all")
    hist = {h["name"]: h["separation_power"] for h in t["hists"]}
    prof = {p["name"]: p["separation_power"] for p in d["profiles"]}
    e, n = t["mean_e_total_over_e_inc"], t["mean_points"]
    auc = d["classifier"]["auc_mean"] if d.get("classifier") else float("nan")
    print(f"| {name(model)} | {particle} | {e[0]:.3f} / {e[1]:.3f} | {n[0]:.0f} / {n[1]:.0f} | "
          + " | ".join(f"{hist.get(c, float('nan')):.3f}" for c in cols)
          + f" | {t['mean_separation_e_layer']:.3f} | {t['mean_separation_n_layer']:.3f}"
          f" | {prof.get('longitudinal profile', float('nan')):.3f}"
          f" | {prof.get('point energy spectrum', float('nan')):.3f} | {auc:.3f} |")

vox = [(m, p) for m, p in pairs("evalvox")
       if os.path.exists(os.path.join(root, f"evalvox_{m}_{p}", "metrics.json"))]
if vox:
    seps = ["Etot / Einc", "E layer", "EC Eta layer", "EC Phi layer", "Width Eta layer",
            "Width Phi layer", "EC r layer", "Width r layer", "Sparsity layer"]
    print("\nVoxelised into the CaloChallenge mesh (`convert --voxelize`, then `evaluate -d`;"
          " separation powers, per-layer ones averaged over the layers):\n")
    print("| model | test particle | ⟨E_tot/E_inc⟩ gen / ref | "
          + " | ".join(f"sep. {s}" for s in seps)
          + " | cls-low AUC | cls-high AUC | FPD ×1e3 | KPD ×1e3 |")
    print("|" + " --- |" * (7 + len(seps)))
    for model, particle in vox:
        d = json.load(open(os.path.join(root, f"evalvox_{model}_{particle}", "metrics.json")))
        sep = dict(d["separation_means"])
        cls = {str(c["mode"]).lower(): c["auc_mean"] for c in d.get("classifiers", [])}
        fpd, kpd = d.get("fpd_x1e3"), d.get("kpd_x1e3")
        fmt = lambda v: f"{v['value']:.3g} ± {v['error']:.2g}" if v else "-"
        auc = lambda m: f"{cls[m]:.3f}" if m in cls else "-"
        print(f"| {name(model)} | {particle} | {d['generated']['mean_etot_einc']:.3f} / "
              f"{d['reference']['mean_etot_einc']:.3f} | "
              + " | ".join(f"{sep.get(s, float('nan')):.3f}" for s in seps)
              + f" | {auc('low')} | {auc('high')}"
              f" | {fmt(fpd)} | {fmt(kpd)} |")
