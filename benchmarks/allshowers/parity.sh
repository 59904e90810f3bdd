#!/usr/bin/env bash
# AllShowers training parity: the transformer trained by caloforge and by the PyTorch rewrite of
# the reference (train_reference.py) on the same simulated ILD file, with the same batch size
# (32), the same number of optimizer steps (3 epochs of 2000 showers: 189 steps), the same
# optimizer and schedule (RangerLite, cosine over epochs, global-norm clip 0.2), three seeds
# each (SEEDS="1 2 3 4 5" for more); prints the validation losses side by side, with Welch's t
# of the difference of the means.
#
#   [SEEDS="1 2 3"] benchmarks/allshowers/parity.sh [OUT_DIR] [CALOFORGE_BINARY] [THREADS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-parity}"
bin="${2:-$here/../../target/release/caloforge}"
threads="${3:-1}"
mkdir -p "$out"
cd "$out"
[ -f parity.h5 ] || "$bin" simulate --points --detector ild --particle e-,gamma,pi+ --theta 0,30 \
  --energy-min 10000 --energy-max 30000 -n 2400 --seed 50 -o parity.h5 --quiet
seeds="${SEEDS:-1 2 3}"
for seed in $seeds; do
  [ -f "torch_$seed.json" ] || python3 "$here/train_reference.py" --data parity.h5 --validation 400 \
    --epochs 3 --batch 32 --seed "$seed" --threads "$threads" --particles 11,-11,22,211,-211 \
    --out "torch_$seed.json"
  [ -f "cf_$seed/.done" ] || { rm -rf "cf_$seed"; "$bin" train --preset "$here/campaign/allshowers-parity.toml" \
    --data parity.h5 --out "cf_$seed" --flows 2 --seed "$seed" --threads "$threads" --quiet && touch "cf_$seed/.done"; }
done
SEEDS="$seeds" python3 - <<'PY'
import json, os, statistics as st
seeds = [int(s) for s in os.environ["SEEDS"].split()]
rows = []
for impl in ("torch", "caloforge"):
    curves = []
    for seed in seeds:
        if impl == "torch":
            d = json.load(open(f"torch_{seed}.json"))
            v = [h["val_loss"] for h in d["history"][1:]]  # after each epoch (not step 0)
            curves.append((v, d["seconds_per_step"]))
        else:
            c = json.load(open(f"cf_{seed}/model_card.json"))["transformer"]
            curves.append((c["val_loss"], c["seconds"] / c["steps"]))
    rows.append((impl, curves))
print(f"validation loss after each epoch (steps 63, 126, 189), seeds {seeds}")
for impl, curves in rows:
    for seed, (v, sps) in zip(seeds, curves):
        print(f"{impl:9} seed {seed}: " + "  ".join(f"{x:.4f}" for x in v)
              + f"   ({sps:.2f} s per step{', validation included' if impl == 'caloforge' else ''})")
for impl, curves in rows:
    for e in range(3):
        vals = [c[0][e] for c in curves]
        print(f"{impl:9} epoch {e + 1}: mean {st.mean(vals):.4f}, min {min(vals):.4f}, "
              f"max {max(vals):.4f}, sd {st.stdev(vals):.4f}")
(_, a), (_, b) = rows
for e in range(3):
    x, y = [c[0][e] for c in a], [c[0][e] for c in b]
    se = (st.variance(x) / len(x) + st.variance(y) / len(y)) ** 0.5
    print(f"epoch {e + 1}: caloforge - torch = {st.mean(y) - st.mean(x):+.4f} "
          f"({100 * (st.mean(y) / st.mean(x) - 1):+.1f} %), Welch t {(st.mean(y) - st.mean(x)) / se:.2f}")
PY
