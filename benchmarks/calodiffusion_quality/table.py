"""The table of benchmarks/calodiffusion_quality/run.sh: one row per snapshot (optimizer steps,
training time, last validation loss) and the noise floor, from the evaluations in
snap_*/{hist,cls-low,cls-high,fpd-kpd}/metrics.json.

    python3 table.py RUN_DIR
"""
import glob
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."


def metrics(snap, mode):
    p = os.path.join(snap, mode, "metrics.json")
    return json.load(open(p)) if os.path.exists(p) else None


def num(v):
    """NaN separations (no generated value in the reference's range) are null in the JSON."""
    return "NaN" if v is None else f"{v:.4f}"


def auc(snap, mode):
    m = metrics(snap, mode)
    return f"{m['classifiers'][0]['auc_mean']:.3f}" if m and m.get("classifiers") else "-"


def pd(snap, key):
    m = metrics(snap, "fpd-kpd")
    v = m.get(key) if m else None
    return f"{v['value']:.1f} ± {v['error']:.1f}" if v else "-"


snaps = sorted(glob.glob(os.path.join(root, "snap_[0-9]*")),
               key=lambda d: int(d.rsplit("_", 1)[1]))
cols = ["Etot / Einc", "E layer", "EC Eta layer", "Width Eta layer", "EC r layer",
        "Width r layer", "Voxel distribution", "Sparsity layer"]
print("| model | steps | training h | val. loss | mean E_tot/E_inc gen / ref | "
      + " | ".join(f"sep. {c}" for c in cols) + " | cls-low AUC | cls-high AUC | FPD ×1e3 | KPD ×1e3 |")
print("|" + " --- |" * (9 + len(cols)))
for snap in snaps + [os.path.join(root, "snap_floor")]:
    h = metrics(snap, "hist")
    if h is None:
        continue
    sep = dict(h["separation_means"])
    if snap.endswith("floor"):
        head = "simulator, another seed (noise floor) | | | | "
    else:
        card = json.load(open(os.path.join(snap, "model", "model_card.json")))
        val = card.get("val_loss") or [float("nan")]
        head = (f"{card.get('model', '?')} | {card['steps']} | {card.get('seconds', 0) / 3600:.2f} | "
                f"{val[-1]:.4f} | ")
    print(f"| {head}{h['generated']['mean_etot_einc']:.4f} / {h['reference']['mean_etot_einc']:.4f} | "
          + " | ".join(num(sep.get(c)) for c in cols)
          + f" | {auc(snap, 'cls-low')} | {auc(snap, 'cls-high')}"
          + f" | {pd(snap, 'fpd_x1e3')} | {pd(snap, 'kpd_x1e3')} |")
