#!/usr/bin/env bash
# iCaloFlow student parity, one flow at a time: caloforge's distillation vs the PyTorch + nflows
# reference (icaloflow_reference.py --student-of: run.py's IAF student and its "fully guided"
# loss) distilling THE SAME teacher, the caloforge MAF of `icaloflow.sh FLOW` seed 1 (converted
# to nflows by the reference script, which also prints the teacher's validation NLL in PyTorch),
# on the same simulator file, batch, schedule and number of optimizer steps, three seeds each
# (11, 12, 13),
# one thread each; prints both validation curves (chi2 of the student's x for the teacher's z of
# held-out data), the table of best losses and a PNG.
#
# usage: benchmarks/parity/icaloflow_student.sh FLOW [WORKDIR]     (FLOW: 2 or 3)
#   needs WORKDIR/cf_fFLOW_s1 (or seed TEACHER_SEED) from `benchmarks/parity/icaloflow.sh FLOW
#   WORKDIR`.
# Defaults (override with the environment variables of the same name):
#   flow 2: N=20000, BATCH=250, EPOCHS=2 (56 steps each = 112 steps), validation every EVAL=14;
#   flow 3: N=800, BATCH=250, EPOCHS=1 (560 x 44 layer samples = 99 steps), validation on
#           MAXVAL=5000 of the 240 x 44 held-out layer samples every EVAL=11 steps.
# The student's file is `simulate -d 2 -n N --seed 101` (made here if missing; the first N
# showers of the teacher's file).
# Student networks and schedule shapes are the icaloflow-ds2-student preset's (the reference's
# run.py `build_flow_student`: OneCycle, three phases; beta1 0.95 -> 0.85 (Flow-2) or 0.80
# (Flow-3)), the loss its [flowK.distill] (x-pass, z-pass, every state and MADE output, beta 0.5).
# Runs already done in WORKDIR are kept (FORCE=1 redoes them).
# needs: a release build (cargo build --release), python3 with torch, nflows, h5py, matplotlib
set -euo pipefail
cd "$(dirname "$0")/../.."
FLOW=${1:?usage: icaloflow_student.sh FLOW [WORKDIR]}
W=${2:-target/parity}
case $FLOW in
  2) N=${N:-20000}; BATCH=${BATCH:-250}; EPOCHS=${EPOCHS:-2}; EVAL=${EVAL:-14}; MAXVAL=${MAXVAL:-30000} ;;
  3) N=${N:-800}; BATCH=${BATCH:-250}; EPOCHS=${EPOCHS:-1}; EVAL=${EVAL:-11}; MAXVAL=${MAXVAL:-5000} ;;
  *) echo "FLOW must be 2 or 3 (Flow-1 is never distilled)" >&2; exit 2 ;;
esac
# Student seeds differ from the teacher's (1): a student of seed 1 would start from the weights
# the teacher started from.
SEEDS=${SEEDS:-"11 12 13"}
CF=${CF:-target/release/caloforge}
DATA=$W/ds2_${N}_seed101.h5
TEACHER=$W/cf_f${FLOW}_s${TEACHER_SEED:-1}
if [ ! -f "$TEACHER/flow$FLOW.safetensors" ]; then
  echo "no teacher $TEACHER/flow$FLOW.safetensors: run benchmarks/parity/icaloflow.sh $FLOW $W first" >&2
  exit 1
fi
[ -f "$DATA" ] || $CF simulate -d 2 -n "$N" --seed 101 --out "$DATA" --quiet
P=$W/flow${FLOW}_student_parity.toml
python3 benchmarks/parity/budget_preset.py crates/caloforge-models/presets/icaloflow-ds2-student.toml \
    "$P" "$FLOW" "$N" "$BATCH" "$EPOCHS" "$EVAL" "$MAXVAL"
cfs=(); refs=()
for s in $SEEDS; do cfs+=("$W/cfs_f${FLOW}_s$s/model_card.json"); refs+=("$W/refs_f${FLOW}_s$s.json"); done
(
  for s in $SEEDS; do
    [ -f "$W/cfs_f${FLOW}_s$s/model_card.json" ] && [ -z "${FORCE:-}" ] && continue
    /usr/bin/time -f "caloforge student seed $s: %e s" $CF train --preset "$P" --flows "$FLOW" \
        --teacher "$TEACHER" --data "$DATA" --out "$W/cfs_f${FLOW}_s$s" --seed "$s" \
        --threads 1 --force --quiet >/dev/null
  done
) &
for s in $SEEDS; do
  [ -f "$W/refs_f${FLOW}_s$s.json" ] && [ -z "${FORCE:-}" ] && continue
  python3 benchmarks/parity/icaloflow_reference.py --flow "$FLOW" --data "$DATA" --preset "$P" \
      --student-of "$TEACHER/flow$FLOW.safetensors" --seed "$s" \
      --out "$W/refs_f${FLOW}_s$s.json" --threads 1
done
wait
python3 benchmarks/parity/compare.py --flow "flow$FLOW" --caloforge "$(IFS=,; echo "${cfs[*]}")" \
    --reference "$(IFS=,; echo "${refs[*]}")" --png "$W/icaloflow_student_flow$FLOW.png" --log \
    --ylabel "validation chi2 of x for the teacher's z" \
    --title "iCaloFlow Flow-$FLOW student, $N simulator showers, batch $BATCH"
