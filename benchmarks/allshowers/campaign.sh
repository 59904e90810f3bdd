#!/usr/bin/env bash
# The AllShowers CPU campaign: one model for all particles against one model per particle, on
# caloforge's simulated showers.
#
#   benchmarks/allshowers/campaign.sh [OUT_DIR] [CALOFORGE_BINARY]
#
# Simulates the training files (the all-particle mix and one file per single particle) and the
# held-out test files (other seeds); trains the all-particle model with PRESET_ALL and each
# one-particle model with PRESET_ONE (PointCountFM, then the transformer); generates one
# sample per test file with that file's energies, directions and particles (and simulates one
# more per test particle with another seed, the noise floor); evaluates the
# point-cloud observables and the cls-points classifier against the test file, and, with
# VOXELIZE (a CaloChallenge dataset whose mesh the detector shares), bins both files into that
# mesh (`convert --voxelize`) and runs the CaloChallenge evaluation on them. Every stage is
# skipped when its output exists, so an interrupted campaign continues.
#
# The defaults are the ILD-like campaign (10-90 GeV, 0-30 degrees; 20k showers per training
# file; e-,e+,gamma,pi+,pi- for all; photons and pi+ alone). The CaloChallenge-detector
# campaign:
#   DETECTOR=calochallenge EMIN=5000 EMAX=20000 THETA=0,20 PARTICLES=e-,gamma,pi+ \
#   SINGLES="e- gamma pi+" N_ALL=15000 N_ONE=6000 N_TEST=800 VOXELIZE=2 \
#   PRESET_ALL=campaign/allshowers-cc-campaign.toml PRESET_ONE=campaign/allshowers-cc-campaign-single.toml \
#   benchmarks/allshowers/campaign.sh cc_campaign
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-campaign}"
bin="${2:-$here/../../target/release/caloforge}"
preset_all="$here/${PRESET_ALL:-campaign/allshowers-campaign.toml}"
preset_one="$here/${PRESET_ONE:-campaign/allshowers-campaign-single.toml}"
detector="${DETECTOR:-ild}"
particles="${PARTICLES:-e-,e+,gamma,pi+,pi-}"
singles="${SINGLES:-gamma pi+}"
tests="${TESTS:-gamma e- pi+}"
mkdir -p "$out"
cd "$out"
cf() { "$bin" "$@" --quiet; }
common=(--points --detector "$detector" --theta "${THETA:-0,30}" --energy-min "${EMIN:-10000}" --energy-max "${EMAX:-90000}")

[ -f train_all.h5 ] || cf simulate "${common[@]}" --particle "$particles" -n "${N_ALL:-20000}" --seed 7 -o train_all.h5
seed=8
for p in $singles; do
  [ -f "train_$p.h5" ] || cf simulate "${common[@]}" --particle "$p" -n "${N_ONE:-20000}" --seed $seed -o "train_$p.h5"
  seed=$((seed + 1))
done
seed=31
for p in $tests; do
  [ -f "test_$p.h5" ] || cf simulate "${common[@]}" --particle "$p" -n "${N_TEST:-1000}" --seed $seed -o "test_$p.h5"
  seed=$((seed + 1))
done

for m in all $singles; do
  if [ "$m" = all ]; then preset="$preset_all"; else preset="$preset_one"; fi
  # PointCountFM, then the transformer; an interrupted part resumes from its checkpoint.
  if [ ! -f "model_$m/.counts_done" ]; then
    r=; [ -f "model_$m/checkpoints/counts.ckpt" ] && r=--resume
    cf train --preset "$preset" --data "train_$m.h5" --out "model_$m" --flows 1 $r
    touch "model_$m/.counts_done"
  fi
  if [ ! -f "model_$m/.done" ]; then
    r=; [ -f "model_$m/checkpoints/transformer.ckpt" ] && r=--resume
    cf train --preset "$preset" --data "train_$m.h5" --out "model_$m" --flows 2 $r
    touch "model_$m/.done"
  fi
done

gen() { # model particle
  [ -f "gen_$1_$2.h5" ] || cf generate --model "model_$1" --energies-from "test_$2.h5" --seed 5 --out "gen_$1_$2.h5"
  [ -f "eval_$1_$2/points_metrics.json" ] || cf evaluate --points --detector "$detector" -i "gen_$1_$2.h5" -r "test_$2.h5" --out "eval_$1_$2"
  if [ -n "${VOXELIZE:-}" ]; then
    [ -f "test_$2.vox.h5" ] || cf convert "test_$2.h5" --voxelize "$VOXELIZE" -o "test_$2.vox.h5"
    [ -f "gen_$1_$2.vox.h5" ] || cf convert "gen_$1_$2.h5" --voxelize "$VOXELIZE" -o "gen_$1_$2.vox.h5"
    [ -f "evalvox_$1_$2/metrics.json" ] || cf evaluate -d "$VOXELIZE" -m "${EVAL_MODE:-all}" -i "gen_$1_$2.vox.h5" -r "test_$2.vox.h5" --out "evalvox_$1_$2"
  fi
  return 0
}
for p in $tests; do gen all "$p"; done
for p in $singles; do gen "$p" "$p"; done
# The noise floor: another simulated sample of each test particle, evaluated as a model's.
seed=61
for p in $tests; do
  [ -f "gen_sim_$p.h5" ] || cf simulate "${common[@]}" --particle "$p" -n "${N_TEST:-1000}" --seed $seed -o "gen_sim_$p.h5"
  gen sim "$p"
  seed=$((seed + 1))
done
