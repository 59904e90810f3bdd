"""The per-particle quality table of benchmarks/allshowers/campaign.sh: one row per (model,
particle) from eval_<model>_<particle>/points_metrics.json (separation powers of the point-cloud
observables and the cls-points AUC), as a Markdown table.

    python3 campaign_table.py CAMPAIGN_DIR
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "campaign"
rows = [("all", "gamma"), ("gamma", "gamma"), ("all", "e-"), ("all", "pi+"), ("pi+", "pi+")]
cols = ["E_total over E_inc", "number of points", "centre of energy layer", "mean radius"]
print("| model | test particle | ⟨E_tot/E_inc⟩ gen / ref | ⟨points⟩ gen / ref | "
      + " | ".join(f"sep. {c}" for c in cols)
      + " | mean sep. E per layer | mean sep. points per layer | sep. longitudinal profile"
      " | sep. point-energy spectrum | cls-points AUC |")
print("|" + " --- |" * (9 + len(cols)))
for model, particle in rows:
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
    name = "one for all" if model == "all" else f"{model} only"
    print(f"| {name} | {particle} | {e[0]:.3f} / {e[1]:.3f} | {n[0]:.0f} / {n[1]:.0f} | "
          + " | ".join(f"{hist.get(c, float('nan')):.3f}" for c in cols)
          + f" | {t['mean_separation_e_layer']:.3f} | {t['mean_separation_n_layer']:.3f}"
          f" | {prof.get('longitudinal profile', float('nan')):.3f}"
          f" | {prof.get('point energy spectrum', float('nan')):.3f} | {auc:.3f} |")
