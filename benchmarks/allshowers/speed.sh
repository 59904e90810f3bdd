#!/usr/bin/env bash
# AllShowers generation speed, caloforge vs the reference network in PyTorch, side by side in
# one run: showers of POINTS points (fixed Gaussian layer profile), 16 midpoint steps = 32
# network evaluations, the paper's sizes, random weights.
#   benchmarks/allshowers/speed.sh [THREADS] [POINTS] [CALOFORGE_BATCHES] [TORCH_BATCHES]
set -euo pipefail
cd "$(dirname "$0")"
T=${1:-1}
P=${2:-2300}
CB=${3:-1,10,100}
TB=${4:-1,10}
BIN=../../target/release/caloforge
[ -x "$BIN" ] || (cd ../.. && cargo build --release -q)
echo "== caloforge ($(git rev-parse --short HEAD)), $T thread(s)"
# One warm-up shower per batch size as speed.py's warm forwards, except at batch 100 (minutes).
for b in ${CB//,/ }; do
  warm=(); [ "$b" -ge 100 ] && warm=(--no-warmup)
  "$BIN" --threads "$T" bench --preset allshowers-ild --points "$P" --batch "$b" --min-seconds 0 "${warm[@]}" | { [ "$b" = "${CB%%,*}" ] && cat || tail -n 1; }
done
echo "== PyTorch reference"
python3 speed.py --threads "$T" --points "$P" --batches "$TB"
