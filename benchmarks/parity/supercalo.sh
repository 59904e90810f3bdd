#!/usr/bin/env bash
# SuperCalo parity, one flow at a time: caloforge vs the PyTorch + nflows reference
# (supercalo_reference.py) on the same simulator file, split, batch, schedule and number of
# optimizer steps, three seeds each, one thread each; prints both validation curves, the table of
# best losses and a PNG.
#
# usage: benchmarks/parity/supercalo.sh FLOW [WORKDIR]      (FLOW: 2 = Flow-II, 3 = upsampler)
# Defaults (override with the environment variables of the same name), the supercalo-ds2 preset
# (voxelization A, the paper's networks) with its training replaced by:
#   flow 2: N=3000 showers, BATCH=100, EPOCHS=12 (21 steps each = 252 steps), CyclicLR
#           triangular2 between the preset's rates with step_size_up = 252 / 8;
#   flow 3: N=1000 showers (700 x 648 training samples), BATCH=3000, EPOCHS=2 (304 steps),
#           validation on MAXVAL=20000 held-out coarse voxels every EVAL=50 steps, the preset's
#           three-phase OneCycle over those steps.
# The paper trains with batch 1000 (Flow-II, 2800 steps) and 60000 (upsampler, 30240 steps) on
# 70k showers; these budgets fit a 2-core machine. The reference runs in float32 here
# (DTYPE=float64 for the repository's dtype; Flow-II has 84 M parameters).
# needs: a release build (cargo build --release), python3 with torch, nflows, h5py, matplotlib
set -euo pipefail
cd "$(dirname "$0")/../.."
FLOW=${1:?usage: supercalo.sh FLOW [WORKDIR]}
W=${2:-target/parity}
case $FLOW in
  2) N=${N:-3000}; BATCH=${BATCH:-100}; EPOCHS=${EPOCHS:-12}; EVAL=${EVAL:-0}; MAXVAL=${MAXVAL:-2000} ;;
  3) N=${N:-1000}; BATCH=${BATCH:-3000}; EPOCHS=${EPOCHS:-2}; EVAL=${EVAL:-50}; MAXVAL=${MAXVAL:-20000} ;;
  *) echo "FLOW must be 2 or 3" >&2; exit 2 ;;
esac
SEEDS=${SEEDS:-"1 2 3"}
DTYPE=${DTYPE:-float32}
CF=target/release/caloforge
mkdir -p "$W"
DATA=$W/ds2_${N}_seed101.h5
[ -f "$DATA" ] || $CF simulate -d 2 -n "$N" --seed 101 --out "$DATA" --quiet
P=$W/supercalo_flow${FLOW}_parity.toml
python3 benchmarks/parity/budget_preset.py crates/caloforge-models/presets/supercalo-ds2.toml "$P" \
    "$FLOW" "$N" "$BATCH" "$EPOCHS" "$EVAL" "$MAXVAL"
cfs=(); refs=()
for s in $SEEDS; do cfs+=("$W/sc_cf_f${FLOW}_s$s/model_card.json"); refs+=("$W/sc_ref_f${FLOW}_s$s.json"); done
(
  for s in $SEEDS; do
    [ -f "$W/sc_cf_f${FLOW}_s$s/model_card.json" ] && [ -z "${FORCE:-}" ] && continue
    /usr/bin/time -f "caloforge seed $s: %e s" $CF train --preset "$P" --flows "$FLOW" \
        --data "$DATA" --out "$W/sc_cf_f${FLOW}_s$s" --seed "$s" --threads 1 --force --quiet >/dev/null
  done
) &
for s in $SEEDS; do
  [ -f "$W/sc_ref_f${FLOW}_s$s.json" ] && [ -z "${FORCE:-}" ] && continue
  python3 benchmarks/parity/supercalo_reference.py --flow "$FLOW" --data "$DATA" --preset "$P" \
      --seed "$s" --out "$W/sc_ref_f${FLOW}_s$s.json" --threads 1 --dtype "$DTYPE"
done
wait
python3 benchmarks/parity/compare.py --flow "flow$FLOW" --caloforge "$(IFS=,; echo "${cfs[*]}")" \
    --reference "$(IFS=,; echo "${refs[*]}")" --png "$W/supercalo_flow$FLOW.png" \
    --ylabel "validation NLL (nats per $( [ "$FLOW" = 2 ] && echo shower || echo coarse voxel ))" \
    --title "SuperCalo $( [ "$FLOW" = 2 ] && echo Flow-II || echo upsampler ), $N simulator showers, batch $BATCH"
