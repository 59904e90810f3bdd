#!/usr/bin/env bash
# The AllShowers CPU campaign: one model for all particles against one model per particle, on
# caloforge's simulated ILD-like showers (10-90 GeV, polar angles 0-30 degrees).
#
#   benchmarks/allshowers/campaign.sh [OUT_DIR] [CALOFORGE_BINARY]
#
# Simulates the training files (20k showers each: e-,e+,gamma,pi+,pi- mixed; photons only;
# pi+ only) and the held-out test files (1000 showers per particle, other seeds); trains the
# five-particle model with benchmarks/allshowers/campaign/allshowers-campaign.toml
# (allshowers-small with 4 transformer epochs: 2252 optimizer steps of 32 showers) and the
# one-particle models with allshowers-campaign-single.toml (one epoch: 563 steps, about a
# quarter of that budget, the share of one particle type, rounded up); generates
# one sample per test file with that file's energies, directions and particles; evaluates
# the point-cloud observables and the cls-points classifier against the test file. Every
# stage is skipped when its output exists, so an interrupted campaign continues.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-campaign}"
bin="${2:-$here/../../target/release/caloforge}"
preset_all="$here/campaign/allshowers-campaign.toml"
preset_one="$here/campaign/allshowers-campaign-single.toml"
mkdir -p "$out"
cd "$out"
cf() { "$bin" "$@" --quiet; }
common=(--points --detector ild --theta 0,30 --energy-min 10000 --energy-max 90000)

[ -f train_all.h5 ] || cf simulate "${common[@]}" --particle e-,e+,gamma,pi+,pi- -n 20000 --seed 7 -o train_all.h5
[ -f train_gamma.h5 ] || cf simulate "${common[@]}" --particle gamma -n 20000 --seed 8 -o train_gamma.h5
[ -f train_pi+.h5 ] || cf simulate "${common[@]}" --particle pi+ -n 20000 --seed 9 -o train_pi+.h5
seed=31
for p in gamma e- pi+; do
  [ -f "test_$p.h5" ] || cf simulate "${common[@]}" --particle "$p" -n 1000 --seed $seed -o "test_$p.h5"
  seed=$((seed + 1))
done

for m in all gamma pi+; do
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
  [ -f "eval_$1_$2/points_metrics.json" ] || cf evaluate --points --detector ild -i "gen_$1_$2.h5" -r "test_$2.h5" --out "eval_$1_$2"
}
for p in gamma e- pi+; do gen all "$p"; done
gen gamma gamma
gen pi+ pi+
