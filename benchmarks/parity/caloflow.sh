#!/usr/bin/env bash
# CaloFlow (dataset-1 photons) parity, one flow at a time: caloforge vs the PyTorch + nflows
# reference (caloflow_reference.py) on the same simulator file, split, batch, schedule and number
# of optimizer steps, three seeds each, one thread each; prints both validation curves, the table
# of best losses and a PNG.
#
# usage: benchmarks/parity/caloflow.sh FLOW [WORKDIR]      (FLOW: 1 = energy flow, 2 = teacher)
# Defaults (override with the environment variables of the same name), the caloflow-ds1-photons
# preset (the reference's networks) with its training replaced by:
#   flow 1: N=10000 showers (`caloforge simulate -d 1-photons --seed 101`), BATCH=200, EPOCHS=20
#           (700 steps), the preset's three-phase OneCycle over those steps;
#   flow 2: N=5000 showers, BATCH=200, EPOCHS=17 (306 steps), CyclicLR triangular2 between the
#           preset's rates with step_size_up = 306 x 850 / 42400 (the reference's 25 cycles);
# validation on at most MAXVAL=3000 held-out showers (30 % of N) after every epoch.
# The reference trains 100 epochs of 84,700 showers (42,400 steps) on a GPU; these budgets fit a
# 2-core machine. The reference runs in float32 here (DTYPE=float64 for the repository's dtype).
# needs: a release build (cargo build --release), python3 with torch, nflows, h5py, matplotlib
set -euo pipefail
cd "$(dirname "$0")/../.."
FLOW=${1:?usage: caloflow.sh FLOW [WORKDIR]}
W=${2:-target/parity}
case $FLOW in
  1) N=${N:-10000}; BATCH=${BATCH:-200}; EPOCHS=${EPOCHS:-20} ;;
  2) N=${N:-5000}; BATCH=${BATCH:-200}; EPOCHS=${EPOCHS:-17} ;;
  *) echo "FLOW must be 1 or 2" >&2; exit 2 ;;
esac
MAXVAL=${MAXVAL:-3000}
SEEDS=${SEEDS:-"1 2 3"}
DTYPE=${DTYPE:-float32}
CF=target/release/caloforge
mkdir -p "$W"
DATA=$W/ds1_photons_${N}_seed101.h5
[ -f "$DATA" ] || $CF simulate -d 1-photons -n "$N" --seed 101 --out "$DATA" --quiet
P=$W/caloflow_flow${FLOW}_parity.toml
python3 benchmarks/parity/budget_preset.py crates/caloforge-models/presets/caloflow-ds1-photons.toml \
    "$P" "$FLOW" "$N" "$BATCH" "$EPOCHS" 0 "$MAXVAL"
cfs=(); refs=()
for s in $SEEDS; do cfs+=("$W/cf_cf_f${FLOW}_s$s/model_card.json"); refs+=("$W/cf_ref_f${FLOW}_s$s.json"); done
(
  for s in $SEEDS; do
    [ -f "$W/cf_cf_f${FLOW}_s$s/model_card.json" ] && [ -z "${FORCE:-}" ] && continue
    /usr/bin/time -f "caloforge seed $s: %e s" $CF train --preset "$P" --flows "$FLOW" \
        --data "$DATA" --out "$W/cf_cf_f${FLOW}_s$s" --seed "$s" --threads 1 --force --quiet >/dev/null
  done
) &
for s in $SEEDS; do
  [ -f "$W/cf_ref_f${FLOW}_s$s.json" ] && [ -z "${FORCE:-}" ] && continue
  python3 benchmarks/parity/caloflow_reference.py --flow "$FLOW" --data "$DATA" --preset "$P" \
      --seed "$s" --out "$W/cf_ref_f${FLOW}_s$s.json" --threads 1 --dtype "$DTYPE"
done
wait
python3 benchmarks/parity/compare.py --flow "flow$FLOW" --caloforge "$(IFS=,; echo "${cfs[*]}")" \
    --reference "$(IFS=,; echo "${refs[*]}")" --png "$W/caloflow_flow$FLOW.png" \
    --ylabel "validation NLL (nats per shower)" \
    --title "CaloFlow $( [ "$FLOW" = 1 ] && echo "energy flow" || echo "shower flow (teacher)" ), $N simulator showers, batch $BATCH"
