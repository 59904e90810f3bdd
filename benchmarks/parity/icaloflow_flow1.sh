#!/usr/bin/env bash
# iCaloFlow Flow-1 parity: caloforge vs the PyTorch + nflows reference (icaloflow_reference.py)
# on the same simulator file, split, batch, schedule and number of optimizer steps, three seeds
# each, one thread each; prints both validation curves, the table of best losses and a PNG.
#
# usage: benchmarks/parity/icaloflow_flow1.sh [WORKDIR] [EPOCHS]
#   (default: target/parity, 60 epochs of 14 steps = 840 steps on 20k showers)
# Runs already done in WORKDIR are kept (FORCE=1 redoes them).
# needs: a release build (cargo build --release), python3 with torch, nflows, h5py, matplotlib
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-target/parity}
EPOCHS=${2:-60}
SEEDS=${SEEDS:-"1 2 3"}
CF=target/release/caloforge
mkdir -p "$W"
DATA=$W/ds2_20k_seed101.h5
[ -f "$DATA" ] || $CF simulate -d 2 -n 20000 --seed 101 --out "$DATA" --quiet
# The icaloflow-ds2 preset with Flow-1 trained for EPOCHS epochs (14 steps each: 14000 showers,
# batch 1000) under torch's default OneCycle shape (max 1e-3, pct 0.3, div 25, final div 1e4).
P=$W/flow1_parity.toml
python3 - "$P" "$EPOCHS" <<'PY'
import re, sys
p, epochs = sys.argv[1], int(sys.argv[2])
s = open("crates/caloforge-models/presets/icaloflow-ds2.toml").read()
head, rest = s.split("[flow1.train]", 1)
_, after = rest.split("[flow2]", 1)
s = head + f"""[flow1.train]
batch_size = 1000
epochs = {epochs}
eval_every = 0
[flow1.train.schedule]
type = "one_cycle"
max_lr = 1e-3
total_steps = {14 * epochs}
pct_start = 0.3
div_factor = 25.0
final_div_factor = 1e4

[flow2]""" + after
open(p, "w").write(s)
PY
# caloforge and the reference run side by side, one thread each (one core each on this 2-core
# machine): caloforge's seeds in a background pipeline, the reference's in the foreground.
cfs=(); refs=()
for s in $SEEDS; do cfs+=("$W/cf_s$s/model_card.json"); refs+=("$W/ref_s$s.json"); done
(
  for s in $SEEDS; do
    [ -f "$W/cf_s$s/model_card.json" ] && [ -z "${FORCE:-}" ] && continue
    /usr/bin/time -f "caloforge seed $s: %e s" $CF train --preset "$P" --flows 1 --data "$DATA" \
        --out "$W/cf_s$s" --seed "$s" --threads 1 --force --quiet >/dev/null
  done
) &
for s in $SEEDS; do
  [ -f "$W/ref_s$s.json" ] && [ -z "${FORCE:-}" ] && continue
  python3 benchmarks/parity/icaloflow_reference.py --data "$DATA" --preset "$P" --seed "$s" \
      --out "$W/ref_s$s.json" --threads 1
done
wait
python3 benchmarks/parity/compare.py --caloforge "$(IFS=,; echo "${cfs[*]}")" \
    --reference "$(IFS=,; echo "${refs[*]}")" --png "$W/icaloflow_flow1.png" \
    --title "iCaloFlow Flow-1, 20k simulator showers, $((14 * EPOCHS)) steps, batch 1000"
