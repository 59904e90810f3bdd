#!/usr/bin/env bash
# iCaloFlow teacher parity, one flow at a time: caloforge vs the PyTorch + nflows reference
# (icaloflow_reference.py) on the same simulator file, split, batch, schedule and number of
# optimizer steps, three seeds each, one thread each; prints both validation curves, the table of
# best losses and a PNG.
#
# usage: benchmarks/parity/icaloflow.sh FLOW [WORKDIR]      (FLOW: 1, 2 or 3)
# Defaults (override with the environment variables of the same name):
#   flow 1: N=20000 showers, BATCH=1000, EPOCHS=60 (14 steps each = 840 steps), torch's default
#           OneCycle shape (max 1e-3, pct 0.3, div 25, final div 1e4);
#   flow 2: N=20000, BATCH=250, EPOCHS=8 (56 steps each = 448 steps), the preset's three-phase
#           OneCycle (max 1e-3, pct 0.4, div 50, final div 10) over those steps;
#   flow 3: N=4000, BATCH=250, EPOCHS=1 (2800 x 44 layer samples = 493 steps), validation on
#           MAXVAL=10000 of the 1200 x 44 held-out layer samples every EVAL=50 steps, the preset's
#           schedule as for flow 2.
# The papers train with batch 1000 for 35000 / 14000 / 184800 steps; these budgets fit a 2-core
# machine (about 25 / 25 / 30 minutes). Runs already done in WORKDIR are kept (FORCE=1 redoes them).
# needs: a release build (cargo build --release), python3 with torch, nflows, h5py, matplotlib
set -euo pipefail
cd "$(dirname "$0")/../.."
FLOW=${1:?usage: icaloflow.sh FLOW [WORKDIR]}
W=${2:-target/parity}
case $FLOW in
  1) N=${N:-20000}; BATCH=${BATCH:-1000}; EPOCHS=${EPOCHS:-60}; EVAL=${EVAL:-0}; MAXVAL=${MAXVAL:-30000} ;;
  2) N=${N:-20000}; BATCH=${BATCH:-250}; EPOCHS=${EPOCHS:-8}; EVAL=${EVAL:-0}; MAXVAL=${MAXVAL:-30000} ;;
  3) N=${N:-4000}; BATCH=${BATCH:-250}; EPOCHS=${EPOCHS:-1}; EVAL=${EVAL:-50}; MAXVAL=${MAXVAL:-10000} ;;
  *) echo "FLOW must be 1, 2 or 3" >&2; exit 2 ;;
esac
SEEDS=${SEEDS:-"1 2 3"}
CF=target/release/caloforge
mkdir -p "$W"
DATA=$W/ds2_${N}_seed101.h5
[ -f "$DATA" ] || $CF simulate -d 2 -n "$N" --seed 101 --out "$DATA" --quiet
# The icaloflow-ds2 preset with flow FLOW's training replaced by the budget above.
P=$W/flow${FLOW}_parity.toml
SHAPE=(); [ "$FLOW" = 1 ] && SHAPE=(--torch-default-shape)
python3 benchmarks/parity/budget_preset.py crates/caloforge-models/presets/icaloflow-ds2.toml "$P" \
    "$FLOW" "$N" "$BATCH" "$EPOCHS" "$EVAL" "$MAXVAL" "${SHAPE[@]}"
# caloforge and the reference run side by side, one thread each (one core each on this 2-core
# machine): caloforge's seeds in a background pipeline, the reference's in the foreground.
cfs=(); refs=()
for s in $SEEDS; do cfs+=("$W/cf_f${FLOW}_s$s/model_card.json"); refs+=("$W/ref_f${FLOW}_s$s.json"); done
(
  for s in $SEEDS; do
    [ -f "$W/cf_f${FLOW}_s$s/model_card.json" ] && [ -z "${FORCE:-}" ] && continue
    /usr/bin/time -f "caloforge seed $s: %e s" $CF train --preset "$P" --flows "$FLOW" \
        --data "$DATA" --out "$W/cf_f${FLOW}_s$s" --seed "$s" --threads 1 --force --quiet >/dev/null
  done
) &
for s in $SEEDS; do
  [ -f "$W/ref_f${FLOW}_s$s.json" ] && [ -z "${FORCE:-}" ] && continue
  python3 benchmarks/parity/icaloflow_reference.py --flow "$FLOW" --data "$DATA" --preset "$P" \
      --seed "$s" --out "$W/ref_f${FLOW}_s$s.json" --threads 1
done
wait
python3 benchmarks/parity/compare.py --flow "flow$FLOW" --caloforge "$(IFS=,; echo "${cfs[*]}")" \
    --reference "$(IFS=,; echo "${refs[*]}")" --png "$W/icaloflow_flow$FLOW.png" \
    --title "iCaloFlow Flow-$FLOW, $N simulator showers, batch $BATCH"
