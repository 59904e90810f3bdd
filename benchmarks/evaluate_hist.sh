#!/usr/bin/env bash
# Benchmark: `caloforge evaluate --mode hist` on N vs N dataset-2 showers (default 100k vs 100k),
# with wall time and peak memory (GNU time). Optionally (--numpy) times the same features and
# separation powers computed with NumPy (tools/reference_check.py, which loads both files in
# float64 as evaluate.py does, but makes no plots: a lower bound on evaluate.py's time).
# usage: benchmarks/evaluate_hist.sh [N] [--numpy]     (from the repo root)
set -euo pipefail
N=${1:-100000}
DIR=${BENCH_DIR:-/tmp/caloforge-bench}
mkdir -p "$DIR"
cargo build --release -q -p caloforge
BIN=./target/release/caloforge
[ -f "$DIR/ref_$N.h5" ] || $BIN --quiet simulate -d 2 -n "$N" --seed 1 --out "$DIR/ref_$N.h5"
[ -f "$DIR/gen_$N.h5" ] || $BIN --quiet simulate -d 2 --energies-from "$DIR/ref_$N.h5" --seed 2 --tune stock --out "$DIR/gen_$N.h5"
echo "== caloforge evaluate --mode hist ($N vs $N dataset-2 showers, $(nproc) cores)"
/usr/bin/time -f "wall %e s, peak RSS %M kB" $BIN --quiet evaluate -d 2 -m hist -i "$DIR/gen_$N.h5" -r "$DIR/ref_$N.h5" --out "$DIR/ev_hist" > /dev/null
echo "== caloforge evaluate --mode hist-chi (numbers only, no PNG)"
/usr/bin/time -f "wall %e s, peak RSS %M kB" $BIN --quiet evaluate -d 2 -m hist-chi -i "$DIR/gen_$N.h5" -r "$DIR/ref_$N.h5" --out "$DIR/ev_chi" > /dev/null
if [ "${2:-}" = "--numpy" ]; then
  $BIN --quiet features -d 2 -i "$DIR/gen_$N.h5" --out "$DIR/features_gen.h5"
  echo "== NumPy re-implementation of features + separation powers (no plots)"
  /usr/bin/time -f "wall %e s, peak RSS %M kB" python3 tools/reference_check.py 2 "$DIR/gen_$N.h5" "$DIR/ref_$N.h5" "$DIR/ev_chi" "$DIR/features_gen.h5" | tail -1 || true
  echo "== matplotlib: the 227 histogram figures of evaluate.py's hist mode (needs matplotlib)"
  python3 benchmarks/matplotlib_plots.py 227 "$N"
fi
