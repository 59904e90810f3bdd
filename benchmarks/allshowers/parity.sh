#!/usr/bin/env bash
# AllShowers training parity: the transformer trained by caloforge and by the PyTorch rewrite of
# the reference (train_reference.py) on the same simulated ILD file, with the same batch size
# (32), the same number of optimizer steps (3 epochs of 2000 showers: 189 steps), the same
# optimizer and schedule (RangerLite, cosine over epochs, global-norm clip 0.2), three seeds
# each; prints the validation losses side by side.
#
#   benchmarks/allshowers/parity.sh [OUT_DIR] [CALOFORGE_BINARY] [THREADS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-parity}"
bin="${2:-$here/../../target/release/caloforge}"
threads="${3:-1}"
mkdir -p "$out"
cd "$out"
[ -f parity.h5 ] || "$bin" simulate --points --detector ild --particle e-,gamma,pi+ --theta 0,30 \
  --energy-min 10000 --energy-max 30000 -n 2400 --seed 50 -o parity.h5 --quiet
for seed in 1 2 3; do
  [ -f "torch_$seed.json" ] || python3 "$here/train_reference.py" --data parity.h5 --validation 400 \
    --epochs 3 --batch 32 --seed "$seed" --threads "$threads" --particles 11,-11,22,211,-211 \
    --out "torch_$seed.json"
  [ -f "cf_$seed/.done" ] || { rm -rf "cf_$seed"; "$bin" train --preset "$here/campaign/allshowers-parity.toml" \
    --data parity.h5 --out "cf_$seed" --flows 2 --seed "$seed" --threads "$threads" --quiet && touch "cf_$seed/.done"; }
done
python3 - <<'PY'
import json, statistics as st
rows = []
for impl in ("torch", "cf"):
    curves = []
    for seed in (1, 2, 3):
        if impl == "torch":
            d = json.load(open(f"torch_{seed}.json"))
            curves.append(([h["step"] for h in d["history"]], [h["val_loss"] for h in d["history"]], d["seconds_per_step"]))
        else:
            c = json.load(open(f"cf_{seed}/model_card.json"))["transformer"]
            steps = c["steps"]
            v = c["val_loss"]
            curves.append(([round(i * steps / (len(v) - 1)) for i in range(len(v))], v, c["seconds"] / steps))
    rows.append((impl, curves))
print("validation loss per epoch (steps 0, 63, 126, 189), three seeds")
for impl, curves in rows:
    for seed, (s, v, sps) in zip((1, 2, 3), curves):
        print(f"{impl:6} seed {seed}: " + "  ".join(f"{x:.4f}" for x in v) + f"   ({sps:.2f} s per step)")
for impl, curves in rows:
    final = [c[1][-1] for c in curves]
    print(f"{impl:6} final: mean {st.mean(final):.4f}, min {min(final):.4f}, max {max(final):.4f}, sd {st.stdev(final):.4f}")
PY
