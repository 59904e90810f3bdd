#!/usr/bin/env bash
# CaloDiffusion (dataset 2) parity: caloforge vs the PyTorch rewrite of the paper's training
# (calodiffusion_reference.py: OzAmram/CaloDiffusionPaper's CondUnet, logit-norm preprocessing,
# cosine schedule and epsilon-MSE loss, Adam 4e-4) on the same simulator file, split, batch size
# and number of optimizer steps, three seeds each, one thread each; the validation loss of both
# is caloforge's (epsilon MSE over the validation showers with one t and one noise image per
# shower drawn once per run and reused every epoch). Prints both validation curves, the table of
# best losses (mean +- seed-to-seed sd) and a PNG.
#
# usage: benchmarks/parity/calodiffusion.sh [WORKDIR]
# Defaults (override with the environment variables of the same name):
#   N=840 simulator showers (`caloforge simulate -d 2 --seed 101`), VALFRAC=0.2 (the last 168
#   validate, 672 train), BATCH=32, EPOCHS=6: 21 steps per epoch, 126 optimizer steps, 6
#   validation points; SEEDS="1 2 3". The paper trains with batch 128 for up to 1000 epochs of
#   ~85k showers; caloforge takes ~14.8 s per step at batch 128 on one thread and PyTorch ~24 s,
#   i.e. ~3.7 s and ~6 s at batch 32: one seed is ~8-9 min for caloforge and ~13-14 min for the
#   reference (validation included), which run side by side. The validation fraction is raised
#   from the preset's 0.1 to 0.2 because one (t, noise) draw per validation shower makes the
#   validation loss of a few hundred showers carry a seed-dependent offset of a few 1e-2.
#   MAXSHOWERS=M uses only the first M showers of the file on both sides (smoke tests, e.g.
#   N=300 MAXSHOWERS=26 BATCH=8 EPOCHS=1 SEEDS=1: 21 training showers, 3 steps).
# CF=PATH runs another caloforge binary (a copy, so that rebuilding during a run changes nothing).
# Outputs go to WORKDIR (default target/parity) under a tag of the budget; runs already done
# there are kept (FORCE=1 redoes them).
# needs: a release build (cargo build --release), python3 with torch, h5py, numpy, matplotlib
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-target/parity}
N=${N:-840}; BATCH=${BATCH:-32}; EPOCHS=${EPOCHS:-6}; VALFRAC=${VALFRAC:-0.2}
MAXSHOWERS=${MAXSHOWERS:-}
SEEDS=${SEEDS:-"1 2 3"}
CF=${CF:-target/release/caloforge}
mkdir -p "$W"
DATA=$W/ds2_${N}_seed101.h5
[ -f "$DATA" ] || $CF simulate -d 2 -n "$N" --seed 101 --out "$DATA" --quiet
# MODEL=caloscore / caloscore2 (benchmarks/parity/caloscore.sh) runs the same protocol for
# CaloScore v1 / v2.
MODEL=${MODEL:-calodiffusion}
PRESET=${PRESET:-calodiffusion-ds2}
case $MODEL in
  calodiffusion) PFX=cd; REFPY=calodiffusion_reference.py; YL="epsilon MSE"; NAME=CaloDiffusion ;;
  caloscore) PFX=cs_${PRESET#caloscore-}; REFPY=caloscore_reference.py; YL="(n + z)^2 score matching"; NAME=CaloScore ;;
  caloscore2) PFX=cs2_${PRESET#caloscore2-}; REFPY=caloscore2_reference.py; YL="v-MSE, layers + voxels"; NAME="CaloScore v2" ;;
  *) echo "MODEL must be calodiffusion, caloscore or caloscore2" >&2; exit 2 ;;
esac
TAG=${PFX}_n${N}${MAXSHOWERS:+m$MAXSHOWERS}_b${BATCH}_e${EPOCHS}_v${VALFRAC}
# The calodiffusion-ds2 preset (the paper network) with the budget's batch, epochs and split.
P=$W/${TAG}.toml
python3 benchmarks/parity/budget_preset.py crates/caloforge-models/presets/$PRESET.toml \
    "$P" "$BATCH" "$EPOCHS" "$VALFRAC"
MAX=(); [ -n "$MAXSHOWERS" ] && MAX=(--max-showers "$MAXSHOWERS")
# caloforge and the reference run side by side, one thread each (one core each on a 2-core
# machine): caloforge's seeds in a background pipeline, the reference's in the foreground.
cfs=(); refs=()
for s in $SEEDS; do cfs+=("$W/${TAG}_cf_s$s/model_card.json"); refs+=("$W/${TAG}_ref_s$s.json"); done
(
  for s in $SEEDS; do
    [ -f "$W/${TAG}_cf_s$s/model_card.json" ] && [ -z "${FORCE:-}" ] && continue
    /usr/bin/time -f "caloforge seed $s: %e s" $CF train --preset "$P" --data "$DATA" \
        --out "$W/${TAG}_cf_s$s" --seed "$s" --threads 1 --force --quiet "${MAX[@]}" >/dev/null
  done
) &
cfpid=$!
for s in $SEEDS; do
  [ -f "$W/${TAG}_ref_s$s.json" ] && [ -z "${FORCE:-}" ] && continue
  python3 benchmarks/parity/$REFPY --data "$DATA" --preset "$P" \
      --seed "$s" --out "$W/${TAG}_ref_s$s.json" --threads 1 "${MAX[@]}"
done
wait "$cfpid"
python3 benchmarks/parity/compare.py --caloforge "$(IFS=,; echo "${cfs[*]}")" \
    --reference "$(IFS=,; echo "${refs[*]}")" --png "$W/${TAG}.png" --digits 4 --ypad 0.02 \
    --markers --ylabel "validation loss ($YL, fixed t and noise)" \
    --title "$NAME $PRESET, ${MAXSHOWERS:-$N} simulator showers, batch $BATCH, $EPOCHS epochs"
