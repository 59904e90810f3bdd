#!/usr/bin/env bash
# CaloScore generation speed, caloforge beside PyTorch, in one run (same machine, threads and
# architectures, untrained weights):
#   benchmarks/caloscore_speed.sh [THREADS] [BATCHES] [V1_PRESET] [V2_PRESET]
# e.g. benchmarks/caloscore_speed.sh 1 1,10,100 caloscore-ds2 caloscore2-ds2
# caloforge: `caloforge bench` runs the real samplers for a few steps (v1 PC: $K1 steps, v2
# DDIM: $K2 steps) and the per-shower time is scaled linearly to 200 PC steps and to 512 / 8 / 1
# DDIM steps (the samplers' cost is their network evaluations, one per step for PC and one per
# network for DDIM); PyTorch: benchmarks/caloscore_torch.py (network evaluations of the
# reference rewrites, the same scaling).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-1}
BATCHES=${2:-1,10,100}
P1=${3:-caloscore-ds2}
P2=${4:-caloscore2-ds2}
K1=${K1:-4}
K2=${K2:-2}
CF=target/release/caloforge
[ -x "$CF" ] || cargo build --release -p caloforge
OUT=$(mktemp -d)
"$CF" --threads "$THREADS" bench --preset "$P1" --batch "$BATCHES" --sampler pc --steps "$K1" \
    --min-seconds 3 --quiet --out "$OUT/v1.json"
"$CF" --threads "$THREADS" bench --preset "$P2" --batch "$BATCHES" --steps "$K2" \
    --min-seconds 3 --quiet --out "$OUT/v2.json"
python3 - "$OUT" "$K1" "$K2" <<'PY'
import json, sys
out, k1, k2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rows(p):
    d = json.load(open(p))
    return d["rows"] if isinstance(d, dict) and "rows" in d else d
print("caloforge, scaled to the full samplers (ms per shower):")
for r in rows(f"{out}/v1.json"):
    print(f"  v1 PC 200 steps     batch {r['batch']:>4}: {r['ms_per_shower'] * 200 / k1:10.2f}")
for r in rows(f"{out}/v2.json"):
    for n in (512, 8, 1):
        print(f"  v2 DDIM {n:>3} steps  batch {r['batch']:>4}: {r['ms_per_shower'] * n / k2:10.2f}")
PY
echo "== PyTorch"
python3 benchmarks/caloscore_torch.py --threads "$THREADS" --batches "$BATCHES" \
    --v1-preset "crates/caloforge-models/presets/$P1.toml" \
    --v2-preset "crates/caloforge-models/presets/$P2.toml"
